"""Recording metadata rows. Phone numbers appear only sealed (ciphertext) and as keyed hashes."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from callrec.db import Conn


@dataclass(frozen=True)
class Recording:
    id: uuid.UUID
    tenant: str
    provider: str
    call_id: str
    provider_recording_id: str
    state: str
    started_at: datetime | None
    stored_at: datetime
    expires_at: datetime
    duration_ms: int
    channels: int
    sample_rate: int
    format: str
    codec: str
    size_bytes: int
    sha256: str
    object_key: str | None
    object_version: str | None
    ciphertext_bytes: int | None
    wrapped_key: bytes | None
    direction: str | None
    from_sealed: bytes | None
    to_sealed: bytes | None
    from_hash: bytes | None
    to_hash: bytes | None
    announcement: dict[str, Any] = field(default_factory=dict)
    consent: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, Any] = field(default_factory=dict)
    agent: str | None = None
    source: dict[str, Any] = field(default_factory=dict)


_JSON_FIELDS = ("announcement", "consent", "tags", "source")
_FIELDS = tuple(Recording.__dataclass_fields__)
_COLUMNS = ", ".join(_FIELDS)


def _recording(row: asyncpg.Record) -> Recording:
    values = dict(row)
    for name in _JSON_FIELDS:
        values[name] = json.loads(values[name])
    for name in ("wrapped_key", "from_sealed", "to_sealed", "from_hash", "to_hash"):
        if values[name] is not None:
            values[name] = bytes(values[name])
    return Recording(**values)


async def insert(conn: Conn, rec: Recording) -> bool:
    """Insert; False when the provider's recording is already stored (a duplicate)."""
    values = [getattr(rec, name) for name in _FIELDS]
    for i, name in enumerate(_FIELDS):
        if name in _JSON_FIELDS:
            values[i] = json.dumps(values[i])
    placeholders = ", ".join(f"${i + 1}" for i in range(len(_FIELDS)))
    status = await conn.execute(
        f"""INSERT INTO recordings ({_COLUMNS}) VALUES ({placeholders})
            ON CONFLICT (tenant, provider, provider_recording_id) DO NOTHING""",
        *values,
    )
    return status.endswith(" 1")


async def get(conn: Conn, *, tenant: str, recording_id: uuid.UUID) -> Recording | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM recordings WHERE tenant = $1 AND id = $2", tenant, recording_id
    )
    return _recording(row) if row else None


async def get_by_provider_id(
    conn: Conn, *, tenant: str, provider: str, provider_recording_id: str
) -> Recording | None:
    row = await conn.fetchrow(
        f"""SELECT {_COLUMNS} FROM recordings
            WHERE tenant = $1 AND provider = $2 AND provider_recording_id = $3""",
        tenant,
        provider,
        provider_recording_id,
    )
    return _recording(row) if row else None


@dataclass(frozen=True)
class RecordingFilter:
    call_id: str | None = None
    stored_from: datetime | None = None
    stored_to: datetime | None = None
    phone_hash: bytes | None = None
    agent: str | None = None
    state: str | None = None


async def page(
    conn: Conn,
    *,
    tenant: str,
    filters: RecordingFilter,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Recording]:
    """Newest first; ``after`` is the (stored_at, id) of the last row of the previous page."""
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM recordings
            WHERE tenant = $1
              AND ($2::text IS NULL OR call_id = $2)
              AND ($3::timestamptz IS NULL OR stored_at >= $3)
              AND ($4::timestamptz IS NULL OR stored_at < $4)
              AND ($5::bytea IS NULL OR from_hash = $5 OR to_hash = $5)
              AND ($6::text IS NULL OR agent = $6)
              AND ($7::text IS NULL OR state = $7)
              AND ($8::timestamptz IS NULL OR (stored_at, id) < ($8, $9::uuid))
            ORDER BY stored_at DESC, id DESC
            LIMIT $10""",
        tenant,
        filters.call_id,
        filters.stored_from,
        filters.stored_to,
        filters.phone_hash,
        filters.agent,
        filters.state,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
    return [_recording(r) for r in rows]
