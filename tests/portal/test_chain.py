"""The audit chain's status for the auditor's page: incremental walks between full ones, the same
verdicts as a full walk, and a break that stays shown."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from callrec.db import audit
from callrec.portal.chain import ChainStatus


async def add(db: asyncpg.Pool, n: int) -> None:
    async with db.acquire() as conn, conn.transaction():
        for i in range(n):
            await audit.record(
                conn,
                tenant="acme",
                actor="token:t",
                action=audit.AuditAction.RECORDING_VIEWED,
                details={"i": i},
            )


async def test_verifying_from_a_checkpoint_matches_the_full_walk(db: asyncpg.Pool) -> None:
    await add(db, 30)
    async with db.acquire() as conn:
        first = await audit.verify(conn, batch=7)
        assert first.ok and first.entries == 30 and first.last_seq == 30
        await add(db, 12)
        rest = await audit.verify(conn, batch=7, after_seq=first.last_seq, prev_hash=first.last_hash)
        whole = await audit.verify(conn, batch=7)
        assert rest.ok and rest.entries == 12 and (rest.last_seq, rest.last_hash) == (42, whole.last_hash)
        nothing_new = await audit.verify(conn, after_seq=42, prev_hash=whole.last_hash)
        assert nothing_new.ok and nothing_new.entries == 0
        # A wrong starting hash, a gap and a truncation after the checkpoint are all found.
        assert not (await audit.verify(conn, after_seq=30, prev_hash=b"\x01" * 32)).ok
        await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
        await conn.execute("DELETE FROM audit_log WHERE seq = 35")
        gap = await audit.verify(conn, after_seq=30, prev_hash=first.last_hash)
        assert any("entries 35..35 are missing" in p for p in gap.problems)
        await conn.execute("DELETE FROM audit_log WHERE seq > 40")
        cut = await audit.verify(conn, after_seq=30, prev_hash=first.last_hash)
        assert any("chain head says entry 42" in p for p in cut.problems)


async def test_the_status_walks_only_new_entries_until_a_full_walk_is_due(
    db: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    status = ChainStatus(full_every=timedelta(hours=1))
    await add(db, 20)
    first = await status.check(db)
    assert first.ok and first.through_seq == 20
    await add(db, 5)
    calls: list[int] = []
    real = audit.verify

    async def counting(conn: Any, **kw: Any) -> audit.VerifyResult:
        result = await real(conn, **kw)
        calls.append(result.entries)
        return result

    monkeypatch.setattr(audit, "verify", counting)
    second = await status.check(db)
    assert second.ok and second.through_seq == 25 and calls == [5]  # only the new ones
    assert second.full_walk_at == first.full_walk_at
    async with db.acquire() as conn:  # an old entry edited: not seen until the full walk
        await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
        await conn.execute("UPDATE audit_log SET details = '{}' WHERE seq = 3")
    assert (await status.check(db)).ok and calls[-1] == 0
    status.full_every = timedelta(0)
    broken = await status.check(db)
    assert not broken.ok and calls[-1] == 25
    assert broken.problems == [
        "entry 3: content does not match its hash (edited)",
        "entry 3: MAC does not match (edited, or rewritten without the audit key)",
    ]
    status.full_every = timedelta(hours=1)
    again = await status.check(db)  # a break is walked in full again, never forgotten
    assert not again.ok and calls[-1] == 25
