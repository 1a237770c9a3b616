"""Announcement prompts registered through the CLI (prompts in the config file are read from disk)."""

from __future__ import annotations

import hashlib

from callrec.db import Conn


async def add(
    conn: Conn, *, tenant: str, announcement_id: str, version: str, language: str, audio: bytes
) -> bool:
    """Register a prompt; False if that (tenant, id, version) exists already (versions are immutable)."""
    status = await conn.execute(
        """INSERT INTO announcements (tenant, id, version, language, audio, sha256)
           VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING""",
        tenant,
        announcement_id,
        version,
        language,
        audio,
        hashlib.sha256(audio).hexdigest(),
    )
    return status.endswith(" 1")


async def get_audio(
    conn: Conn, *, tenant: str, announcement_id: str, version: str | None
) -> tuple[str, bytes] | None:
    """The prompt's (version, audio): the given version, or the newest when version is None."""
    row = await conn.fetchrow(
        """SELECT version, audio FROM announcements
           WHERE tenant = $1 AND id = $2 AND ($3::text IS NULL OR version = $3)
           ORDER BY created_at DESC LIMIT 1""",
        tenant,
        announcement_id,
        version,
    )
    return (row["version"], bytes(row["audio"])) if row else None


async def list_for(conn: Conn, *, tenant: str) -> list[tuple[str, str, str, str]]:
    """(id, version, language, registered date) of every prompt registered through the CLI."""
    rows = await conn.fetch(
        "SELECT id, version, language, created_at FROM announcements WHERE tenant = $1 ORDER BY id, version",
        tenant,
    )
    return [(r["id"], r["version"], r["language"], f"{r['created_at']:%Y-%m-%d}") for r in rows]
