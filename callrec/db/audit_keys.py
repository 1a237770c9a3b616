"""The audit data keys as the database keeps them: wrapped, so that the rows are useless without
the audit key-encryption key (``callrec.crypto.auditkeys``)."""

from __future__ import annotations

from callrec.db import Conn


async def stored(conn: Conn, *, after: int = 0) -> list[tuple[int, bytes]]:
    """(key id, wrapped key) of every key newer than ``after``, oldest first."""
    rows = await conn.fetch("SELECT key_id, wrapped FROM audit_keys WHERE key_id > $1 ORDER BY key_id", after)
    return [(int(r["key_id"]), bytes(r["wrapped"])) for r in rows]


async def newest_id(conn: Conn) -> int:
    """The highest key id stored; 0 when there is none."""
    value = await conn.fetchval("SELECT coalesce(max(key_id), 0) FROM audit_keys")
    return int(value)


async def add(conn: Conn, key_id: int, wrapped: bytes) -> bool:
    """Store a new key; False when another process stored that id first."""
    status = await conn.execute(
        "INSERT INTO audit_keys (key_id, wrapped) VALUES ($1, $2) ON CONFLICT (key_id) DO NOTHING",
        key_id,
        wrapped,
    )
    return status.endswith(" 1")
