"""The audit chain: append-only in the database, and verify finds every kind of tampering."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from callrec.db import audit


async def write(conn: asyncpg.Connection, n: int) -> None:
    for i in range(n):
        async with conn.transaction():
            await audit.record(
                conn,
                tenant="acme",
                actor="test",
                action=audit.AuditAction.RECORDING_VIEWED,
                recording_id=uuid.uuid4(),
                details={"i": i},
            )


async def test_intact_chain_verifies(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        await write(conn, 25)
        result = await audit.verify(conn, batch=7)  # crosses batch boundaries
    assert result.ok and result.entries == 25 and result.head_seq == 25


async def test_entries_need_a_transaction(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        with pytest.raises(RuntimeError):
            await audit.record(conn, tenant="acme", actor="t", action=audit.AuditAction.RECORDING_VIEWED)


async def test_update_and_delete_are_refused_by_the_database(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        await write(conn, 2)
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("UPDATE audit_log SET actor = 'someone-else'")
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("DELETE FROM audit_log WHERE seq = 1")
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("TRUNCATE audit_log")


async def tamper(conn: asyncpg.Connection, sql: str) -> audit.VerifyResult:
    # A superuser can switch the triggers off; verify must still notice.
    await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
    await conn.execute(sql)
    await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")
    return await audit.verify(conn)


@pytest.mark.parametrize(
    ("sql", "expect"),
    [
        ("UPDATE audit_log SET details = '{\"i\": 99}' WHERE seq = 4", "entry 4: content does not match"),
        ("UPDATE audit_log SET actor = 'nobody' WHERE seq = 1", "entry 1: content does not match"),
        ("DELETE FROM audit_log WHERE seq = 5", "entries 5..5 are missing"),
        ("DELETE FROM audit_log WHERE seq = 10", "chain head says entry 10"),
        ("UPDATE audit_log SET at = at + interval '1 hour' WHERE seq = 7", "entry 7: content does not match"),
    ],
)
async def test_verify_detects_edits_and_removals(db: asyncpg.Pool, sql: str, expect: str) -> None:
    async with db.acquire() as conn:
        await write(conn, 10)
        result = await tamper(conn, sql)
    assert not result.ok
    assert any(expect in p for p in result.problems), result.problems


async def test_rewriting_an_entry_and_its_hash_breaks_the_next_link(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        await write(conn, 5)
        result = await tamper(conn, "UPDATE audit_log SET hash = sha256(hash) WHERE seq = 3")
    assert any("entry 3: content" in p for p in result.problems)
    assert any("entry 4: link" in p for p in result.problems)


async def test_concurrent_writers_keep_one_chain(db: asyncpg.Pool) -> None:
    import asyncio

    async def writer() -> None:
        async with db.acquire() as conn:
            await write(conn, 10)

    await asyncio.gather(*(writer() for _ in range(4)))
    async with db.acquire() as conn:
        result = await audit.verify(conn)
    assert result.ok and result.entries == 40
