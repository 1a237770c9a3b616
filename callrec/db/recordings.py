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
    duration_ms: int | None
    channels: int | None
    sample_rate: int | None
    format: str | None
    codec: str | None
    size_bytes: int | None
    sha256: str | None
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
    jurisdiction: dict[str, Any] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)
    redactions: list[dict[str, int]] = field(default_factory=list)
    destroyed_at: datetime | None = None
    destroy_reason: str | None = None
    restricted: bool = False


_JSON_FIELDS = ("announcement", "consent", "tags", "source", "jurisdiction", "policy", "redactions")
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
    states: tuple[str, ...] = ("stored",)
    include_restricted: bool = False
    consent_status: str | None = None
    announcement_verified: bool | None = None
    held: bool | None = None
    expires_before: datetime | None = None
    min_duration_ms: int | None = None
    max_duration_ms: int | None = None


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
              AND state = ANY($7::text[])
              AND ($11 OR NOT restricted)
              AND ($12::text IS NULL OR consent->>'status' = $12)
              AND ($13::boolean IS NULL OR coalesce((announcement->>'verified')::boolean, false) = $13)
              AND ($14::timestamptz IS NULL OR expires_at < $14)
              AND ($15::boolean IS NULL OR EXISTS (
                       SELECT 1 FROM legal_holds h
                       WHERE h.tenant = recordings.tenant AND h.released_at IS NULL
                         AND hold_covers(h, recordings)
                   ) = $15)
              AND ($16::integer IS NULL OR duration_ms > $16)
              AND ($17::integer IS NULL OR duration_ms < $17)
              AND ($8::timestamptz IS NULL OR (stored_at, id) < ($8, $9::uuid))
            ORDER BY stored_at DESC, id DESC
            LIMIT $10""",
        tenant,
        filters.call_id,
        filters.stored_from,
        filters.stored_to,
        filters.phone_hash,
        filters.agent,
        list(filters.states),
        after[0] if after else None,
        after[1] if after else None,
        limit,
        filters.include_restricted,
        filters.consent_status,
        filters.announcement_verified,
        filters.expires_before,
        filters.held,
        filters.min_duration_ms,
        filters.max_duration_ms,
    )
    return [_recording(r) for r in rows]


async def agents(conn: Conn, *, tenant: str, limit: int = 500) -> list[str]:
    """The agents named on the tenant's live recordings, for the supervisors' agent filter.

    A loose index scan over ``recordings_agent``: one index probe per distinct agent, however many
    recordings each has."""
    rows = await conn.fetch(
        """WITH RECURSIVE a(agent) AS (
               (SELECT agent FROM recordings
                WHERE tenant = $1 AND agent IS NOT NULL AND state IN ('stored', 'quarantined')
                ORDER BY agent LIMIT 1)
               UNION ALL
               SELECT (SELECT r.agent FROM recordings r
                       WHERE r.tenant = $1 AND r.agent > a.agent AND r.state IN ('stored', 'quarantined')
                       ORDER BY r.agent LIMIT 1)
               FROM a WHERE a.agent IS NOT NULL
           )
           SELECT agent FROM a WHERE agent IS NOT NULL LIMIT $2""",
        tenant,
        limit,
    )
    return [r["agent"] for r in rows]


# Everything that could identify a person or decrypt the audio; a tombstone keeps none of it.
_ERASED = """object_key = NULL, object_version = NULL, ciphertext_bytes = NULL, wrapped_key = NULL,
             from_sealed = NULL, to_sealed = NULL, from_hash = NULL, to_hash = NULL"""


async def destroy(conn: Conn, *, tenant: str, recording_id: uuid.UUID, reason: str) -> Recording | None:
    """Turn a recording into a tombstone, returning the row as it was (so the caller can delete the
    object versions it named). None if it is not there or already a tombstone."""
    before = await conn.fetchrow(
        f"""SELECT {_COLUMNS} FROM recordings
            WHERE tenant = $1 AND id = $2 AND state IN ('stored', 'quarantined') FOR UPDATE""",
        tenant,
        recording_id,
    )
    if before is None:
        return None
    await conn.execute(
        f"""UPDATE recordings SET state = 'destroyed', destroyed_at = now(), destroy_reason = $3, {_ERASED}
            WHERE tenant = $1 AND id = $2""",
        tenant,
        recording_id,
        reason,
    )
    return _recording(before)


async def release_from_quarantine(
    conn: Conn, *, tenant: str, recording_id: uuid.UUID, expires_at: datetime, policy: dict[str, Any]
) -> bool:
    status = await conn.execute(
        """UPDATE recordings SET state = 'stored', expires_at = $3, policy = $4
           WHERE tenant = $1 AND id = $2 AND state = 'quarantined'""",
        tenant,
        recording_id,
        expires_at,
        json.dumps(policy),
    )
    return status.endswith(" 1")


async def set_restricted(conn: Conn, *, tenant: str, recording_id: uuid.UUID, restricted: bool) -> bool:
    status = await conn.execute(
        """UPDATE recordings SET restricted = $3
           WHERE tenant = $1 AND id = $2 AND restricted <> $3 AND state IN ('stored', 'quarantined')""",
        tenant,
        recording_id,
        restricted,
    )
    return status.endswith(" 1")


async def for_subject(
    conn: Conn,
    *,
    tenant: str,
    phone_hash: bytes | None,
    call_id: str | None,
    recording_ids: list[uuid.UUID] | None,
) -> list[Recording]:
    """Live recordings (audio still held) that a data subject's request names."""
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM recordings
            WHERE tenant = $1 AND state IN ('stored', 'quarantined')
              AND (($2::bytea IS NOT NULL AND (from_hash = $2 OR to_hash = $2))
                   OR ($3::text IS NOT NULL AND call_id = $3)
                   OR ($4::uuid[] IS NOT NULL AND id = ANY($4::uuid[])))
            ORDER BY stored_at""",
        tenant,
        phone_hash,
        call_id,
        recording_ids,
    )
    return [_recording(r) for r in rows]


async def for_call(conn: Conn, *, tenant: str, call_id: str) -> list[Recording]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM recordings WHERE tenant = $1 AND call_id = $2 ORDER BY stored_at",
        tenant,
        call_id,
    )
    return [_recording(r) for r in rows]


async def expired_batch(conn: Conn, *, now: datetime, limit: int) -> list[tuple[str, uuid.UUID]]:
    """(tenant, id) of live recordings past their expiry that no active hold covers, locked for
    this transaction; rows other sweepers hold are skipped, so sweepers share the work."""
    rows = await conn.fetch(
        """SELECT r.tenant, r.id FROM recordings r
           WHERE r.state IN ('stored', 'quarantined') AND r.expires_at <= $1
             AND NOT EXISTS (SELECT 1 FROM legal_holds h
                             WHERE h.tenant = r.tenant AND h.released_at IS NULL AND hold_covers(h, r))
           ORDER BY r.expires_at
           LIMIT $2
           FOR UPDATE OF r SKIP LOCKED""",
        now,
        limit,
    )
    return [(r["tenant"], r["id"]) for r in rows]


async def expired_but_held(conn: Conn, *, now: datetime) -> int:
    return int(
        await conn.fetchval(
            """SELECT count(*) FROM recordings r
               WHERE r.state IN ('stored', 'quarantined') AND r.expires_at <= $1
                 AND EXISTS (SELECT 1 FROM legal_holds h
                             WHERE h.tenant = r.tenant AND h.released_at IS NULL AND hold_covers(h, r))""",
            now,
        )
    )
