"""The audit chain: append-only in the database, and verify finds every kind of tampering."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest
from audit_support import legacy_append, rewrite_as_owner

from callrec.crypto.auditkeys import AuditKeyError
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


# --- authenticated with a key the database never holds (issue 9, defect 3) -------------------------


async def test_entries_carry_a_mac_chained_from_the_checkpoint(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        await write(conn, 3)
        rows = await conn.fetch("SELECT seq, key_id, mac FROM audit_log ORDER BY seq")
        checkpoint = await conn.fetchrow("SELECT seq, hash FROM audit_checkpoints")
        result = await audit.verify(conn)
    assert [r["key_id"] for r in rows] == [1, 1, 1] and all(len(r["mac"]) == 32 for r in rows)
    assert (checkpoint["seq"], bytes(checkpoint["hash"])) == (0, audit.GENESIS)  # a new database
    assert result.ok and result.checkpoint_seq == 0 and result.key_ids == (1,)


async def test_a_rewrite_with_callrecs_own_functions_is_detected(db: asyncpg.Pool) -> None:
    """Issue 9: the owner disables the trigger, changes an actor, recomputes every later hash with
    callrec's functions, fixes audit_head. The hash chain is consistent again; the MACs are not."""
    async with db.acquire() as conn:
        await write(conn, 30)
        assert await rewrite_as_owner(conn, seq=12, actor="someone-else") == 19
        result = await audit.verify(conn)
    assert not result.ok
    assert not any("hash" in p or "link" in p for p in result.problems)  # the hashes do agree
    assert result.problems == ["entry 12: MAC does not match (edited, or rewritten without the audit key)"]


async def test_removing_the_macs_is_detected(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        await write(conn, 6)
        await rewrite_as_owner(conn, seq=4, actor="someone-else")
        await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
        await conn.execute("UPDATE audit_log SET mac = NULL, key_id = NULL WHERE seq >= 4")
        await conn.execute("UPDATE audit_head SET mac = NULL")
        result = await audit.verify(conn)
    assert any("entry 4: no MAC after the checkpoint" in p for p in result.problems), result.problems
    assert any("chain head's MAC" in p for p in result.problems)


async def test_one_removed_mac_is_named_and_the_next_entry_cannot_be_checked(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        await write(conn, 6)
        result = await tamper(conn, "UPDATE audit_log SET mac = NULL, key_id = NULL WHERE seq = 3")
    assert result.problems == [
        "entry 3: no MAC after the checkpoint (written without the audit key, or its MAC removed)",
        "entry 4: its MAC cannot be checked, the MAC before it is missing",
    ]


async def test_a_connection_without_the_key_cannot_add_to_an_authenticated_chain(
    db: asyncpg.Pool, database_url: str
) -> None:
    async with db.acquire() as conn:
        await write(conn, 1)
    plain = await asyncpg.connect(database_url)  # no audit keys attached
    try:
        with pytest.raises(RuntimeError, match="audit key"):
            await write(plain, 1)
        with pytest.raises(asyncpg.RaiseError, match="need a MAC"):  # nor past callrec, in SQL
            await plain.execute(
                """INSERT INTO audit_log (seq, at, tenant, actor, action, details, prev_hash, hash)
                   VALUES (2, now(), 'acme', 'x', 'recording:viewed', '{}', '', '')"""
            )
        with pytest.raises(AuditKeyError):
            await audit.verify(plain)
    finally:
        await plain.close()


async def test_rotation_keeps_old_entries_verifiable(db: asyncpg.Pool, config: Any) -> None:
    from callrec.db.pool import create_pool

    async with db.acquire() as conn:
        await write(conn, 4)
        keyring = audit.keyring_of(conn)
        assert keyring is not None and keyring.keys.primary_id == 1
        assert await keyring.rotate(conn) == 2
        await write(conn, 4)
        ids = [r["key_id"] for r in await conn.fetch("SELECT key_id FROM audit_log ORDER BY seq")]
        result = await audit.verify(conn)
    assert ids == [1] * 4 + [2] * 4
    assert result.ok and result.key_ids == (1, 2)
    later = await create_pool(config)  # a process started after the rotation signs with key 2
    try:
        async with later.acquire() as conn:
            keyring = audit.keyring_of(conn)
            assert keyring is not None and keyring.keys.primary_id == 2 and 1 in keyring.keys
            await write(conn, 1)
            assert (await audit.verify(conn)).ok
    finally:
        await later.close()


async def test_a_process_meeting_a_newer_key_loads_it(db: asyncpg.Pool, config: Any) -> None:
    from callrec.db.pool import create_pool

    older = await create_pool(config)  # holds key 1 only
    try:
        async with db.acquire() as conn:
            keyring = audit.keyring_of(conn)
            assert keyring is not None
            await keyring.rotate(conn)
            await write(conn, 3)
        async with older.acquire() as conn:
            assert 2 not in audit.keyring_of(conn).keys  # type: ignore[union-attr]
            result = await audit.verify(conn)
            assert 2 in audit.keyring_of(conn).keys  # type: ignore[union-attr]
        assert result.ok and result.key_ids == (2,)
    finally:
        await older.close()


async def test_deleted_audit_keys_stop_start_up_instead_of_a_fresh_key(db: asyncpg.Pool, config: Any) -> None:
    from callrec.db.pool import create_pool

    async with db.acquire() as conn:
        await write(conn, 2)
        await conn.execute("DELETE FROM audit_keys")
    with pytest.raises(AuditKeyError, match="holds no audit key"):
        await create_pool(config)


async def test_entries_written_before_the_migration_are_covered_by_the_checkpoint(
    pg_root_url: str, config: Any
) -> None:
    """A database at migration 0006 with a hash chain of the old kind; the first start of this
    version migrates it, makes the key and checkpoints the old head; a rewrite of the old part
    afterwards (consistent hashes, as in issue 9) breaks the checkpoint."""
    from dataclasses import replace
    from urllib.parse import urlsplit, urlunsplit

    from callrec.db.migrate import available_migrations
    from callrec.db.pool import create_pool

    name = f"callrec_legacy_{uuid.uuid4().hex[:10]}"
    root = await asyncpg.connect(pg_root_url)
    await root.execute(f'CREATE DATABASE "{name}"')
    await root.close()
    url = urlunsplit(urlsplit(pg_root_url)._replace(path="/" + name))
    try:
        conn = await asyncpg.connect(url)
        try:  # what callrec at 0006 left: its migrations and its entries (record() of that version)
            await conn.execute(
                "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
                "applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for migration in available_migrations()[:6]:
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            await legacy_append(conn, 10)
        finally:
            await conn.close()

        cfg = replace(config, database=replace(config.database, url=url))
        pool = await create_pool(cfg)  # the first start: 0007, the key, the checkpoint
        try:
            async with pool.acquire() as conn:
                cp = await conn.fetchrow("SELECT seq, hash FROM audit_checkpoints")
                assert cp["seq"] == 10
                assert bytes(cp["hash"]) == await conn.fetchval("SELECT hash FROM audit_log WHERE seq = 10")
                await write(conn, 5)
                result = await audit.verify(conn)
                assert result.ok and result.checkpoint_seq == 10 and result.entries == 15
                assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE mac IS NULL") == 10

                await rewrite_as_owner(conn, seq=3, actor="someone-else")  # the whole chain, again
                broken = await audit.verify(conn)
        finally:
            await pool.close()
        # Entries 11 on chain their MACs to the checkpoint, not to the hashes: only it can tell.
        assert broken.problems == [
            "checkpoint at entry 10: the hash chain there differs (entries up to 10 were rewritten)"
        ]
    finally:
        root = await asyncpg.connect(pg_root_url)
        await root.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await root.close()
