"""The audit chain's status for the auditor's page: incremental walks between full ones, the same
verdicts as a full walk, and a break that stays shown."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from audit_support import rewrite_as_owner, truncate_as_owner

from callrec.anchoring.filesystem import FileAnchorStore
from callrec.anchoring.service import anchor_chain
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
        rest = await audit.verify(
            conn, batch=7, after_seq=first.last_seq, prev_hash=first.last_hash, prev_mac=first.last_mac
        )
        whole = await audit.verify(conn, batch=7)
        assert rest.ok and rest.entries == 12 and (rest.last_seq, rest.last_hash) == (42, whole.last_hash)
        assert rest.last_mac == whole.last_mac is not None
        nothing_new = await audit.verify(
            conn, after_seq=42, prev_hash=whole.last_hash, prev_mac=whole.last_mac
        )
        assert nothing_new.ok and nothing_new.entries == 0
        # A wrong starting hash, a gap and a truncation after the checkpoint are all found.
        assert not (await audit.verify(conn, after_seq=30, prev_hash=b"\x01" * 32)).ok
        assert not (
            await audit.verify(conn, after_seq=30, prev_hash=first.last_hash, prev_mac=b"\x01" * 32)
        ).ok
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


async def test_the_full_walk_reports_a_rewrite_and_a_truncation_through_the_anchors(
    db: asyncpg.Pool, tmp_path: Path
) -> None:
    store = FileAnchorStore(tmp_path / "anchors.jsonl")
    status = ChainStatus(full_every=timedelta(0))  # every check a full walk
    await add(db, 20)
    await anchor_chain(db, store, interval=timedelta(hours=1), force=True, wait=True)
    report = await status.check(db, store)
    assert report.ok and report.authenticated and report.anchors == 1
    async with db.acquire() as conn:
        await truncate_as_owner(conn, keep=15)
    cut = await status.check(db, store)
    assert not cut.ok
    assert any(
        "the log ends at entry 15, but the anchor of" in p and "(entry 20) is newer" in p
        for p in cut.problems
    )
    async with db.acquire() as conn:
        await rewrite_as_owner(conn, seq=7, actor="someone-else")
    rewritten = await status.check(db, store)
    assert "entry 7: MAC does not match (edited, or rewritten without the audit key)" in rewritten.problems


async def test_the_auditors_page_shows_the_last_anchor_and_its_age(
    browser: Any, staff_factory: Any, portal: Any
) -> None:
    from callrec.appkeys import anchors_key, db_key

    auditor = await staff_factory("auditor")
    b = browser()
    await b.login(auditor)
    page = await (await b.get("/portal/audit")).text()
    assert "No anchor yet" in page
    outcome = await anchor_chain(
        portal.app[db_key], portal.app[anchors_key], interval=timedelta(hours=1), force=True, wait=True
    )
    assert outcome.anchor is not None
    page = await (await b.get("/portal/audit")).text()
    assert f"Last anchor: entry {outcome.anchor.seq}," in page and "0 min ago" in page
    assert "Anchoring is late" not in page
    async with portal.app[db_key].acquire() as conn:  # a row forged to look recent
        await conn.execute("UPDATE audit_anchor_last SET at = now() + interval '1 minute'")
    assert "is not authentic" in await (await b.get("/portal/audit")).text()
