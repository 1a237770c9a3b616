"""Deletion requests (GDPR Art. 17, CCPA) and their per-recording outcomes."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from callrec.db import Conn

OPEN_STATUSES = ("received", "processing", "partially_completed")


@dataclass(frozen=True)
class DeletionRequest:
    id: uuid.UUID
    tenant: str
    subject_kind: str
    subject_phone_hash: bytes | None
    subject_call_id: str | None
    subject_recording_ids: list[uuid.UUID] | None
    law: str
    reason: str | None
    external_ref: str | None
    callback_url: str | None
    idempotency_key: str | None
    request_hash: str
    status: str
    rejection_reason: str | None
    created_by: str
    received_at: datetime
    due_at: datetime
    completed_at: datetime | None
    updated_at: datetime


@dataclass(frozen=True)
class Outcome:
    request_id: uuid.UUID
    recording_id: uuid.UUID
    outcome: str
    hold_id: uuid.UUID | None
    decided_at: datetime
    deleted_at: datetime | None
    audit_seq: int | None


_FIELDS = tuple(DeletionRequest.__dataclass_fields__)
_COLUMNS = ", ".join(_FIELDS)


def _request(row: asyncpg.Record) -> DeletionRequest:
    values = dict(row)
    if values["subject_phone_hash"] is not None:
        values["subject_phone_hash"] = bytes(values["subject_phone_hash"])
    return DeletionRequest(**values)


async def insert(conn: Conn, req: DeletionRequest) -> tuple[DeletionRequest, bool]:
    """Insert, or return the request already made with the same Idempotency-Key (created=False)."""
    values = [getattr(req, f) for f in _FIELDS]
    placeholders = ", ".join(f"${i + 1}" for i in range(len(_FIELDS)))
    row = await conn.fetchrow(
        f"""INSERT INTO deletion_requests ({_COLUMNS}) VALUES ({placeholders})
            ON CONFLICT (tenant, idempotency_key) DO NOTHING RETURNING {_COLUMNS}""",
        *values,
    )
    if row is not None:
        return _request(row), True
    existing = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM deletion_requests WHERE tenant = $1 AND idempotency_key = $2",
        req.tenant,
        req.idempotency_key,
    )
    assert existing is not None
    return _request(existing), False


async def get(
    conn: Conn, *, tenant: str, request_id: uuid.UUID, for_update: bool = False
) -> DeletionRequest | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM deletion_requests WHERE tenant = $1 AND id = $2{lock}", tenant, request_id
    )
    return _request(row) if row else None


async def list_requests(
    conn: Conn, *, tenant: str, status: str | None, overdue: bool | None, limit: int
) -> list[DeletionRequest]:
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM deletion_requests
            WHERE tenant = $1 AND ($2::text IS NULL OR status = $2)
              AND ($3::boolean IS NULL
                   OR (due_at < now() AND status = ANY($5::text[])) = $3)
            ORDER BY due_at, received_at LIMIT $4""",
        tenant,
        status,
        overdue,
        limit,
        list(OPEN_STATUSES),
    )
    return [_request(r) for r in rows]


async def set_status(
    conn: Conn, *, request_id: uuid.UUID, status: str, rejection_reason: str | None = None
) -> bool:
    """Change the status; False when it already had it. Final statuses stamp completed_at."""
    result = await conn.execute(
        """UPDATE deletion_requests SET status = $2, rejection_reason = coalesce($3, rejection_reason),
                  completed_at = CASE WHEN $2 IN ('completed', 'rejected') THEN now() ELSE NULL END,
                  updated_at = now()
           WHERE id = $1 AND status <> $2""",
        request_id,
        status,
        rejection_reason,
    )
    return result.endswith(" 1")


async def matching_recordings(conn: Conn, req: DeletionRequest) -> list[tuple[uuid.UUID, str]]:
    """(id, state) of every recording of the tenant that the request's subject names."""
    rows = await conn.fetch(
        """SELECT id, state FROM recordings r
           WHERE r.tenant = $1
             AND CASE $2
                   WHEN 'phone' THEN r.from_hash = $3 OR r.to_hash = $3
                   WHEN 'call_id' THEN r.call_id = $4
                   ELSE r.id = ANY($5::uuid[])
                 END
           ORDER BY r.stored_at""",
        req.tenant,
        req.subject_kind,
        req.subject_phone_hash,
        req.subject_call_id,
        req.subject_recording_ids,
    )
    return [(r["id"], r["state"]) for r in rows]


async def open_requests_for(
    conn: Conn,
    *,
    tenant: str,
    call_id: str,
    recording_id: uuid.UUID,
    hashes: list[bytes],
    arrived_at: datetime,
) -> list[DeletionRequest]:
    """Requests whose subject names this new recording: those still open, and those received after
    the recording's webhook arrived even if they have completed since (it was in flight then, and
    the request covers everything the subject had when it was made)."""
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM deletion_requests
            WHERE tenant = $1 AND status <> 'rejected'
              AND (status = ANY($2::text[]) OR received_at >= $6)
              AND (subject_call_id = $3 OR $4 = ANY(subject_recording_ids)
                   OR subject_phone_hash = ANY($5::bytea[]))""",
        tenant,
        list(OPEN_STATUSES),
        call_id,
        recording_id,
        hashes,
        arrived_at,
    )
    return [_request(r) for r in rows]


async def record_outcome(
    conn: Conn,
    *,
    request_id: uuid.UUID,
    recording_id: uuid.UUID,
    outcome: str,
    hold_id: uuid.UUID | None = None,
    audit_seq: int | None = None,
) -> None:
    await conn.execute(
        """INSERT INTO deletion_outcomes (request_id, recording_id, outcome, hold_id, audit_seq, deleted_at)
           VALUES ($1, $2, $3, $4, $5, CASE WHEN $3 = 'deleted' THEN now() END)
           ON CONFLICT (request_id, recording_id) DO UPDATE
             SET outcome = EXCLUDED.outcome, hold_id = EXCLUDED.hold_id, audit_seq = EXCLUDED.audit_seq,
                 deleted_at = EXCLUDED.deleted_at, decided_at = now()""",
        request_id,
        recording_id,
        outcome,
        hold_id,
        audit_seq,
    )


async def outcomes(conn: Conn, *, request_id: uuid.UUID) -> list[Outcome]:
    rows = await conn.fetch(
        """SELECT request_id, recording_id, outcome, hold_id, decided_at, deleted_at, audit_seq
           FROM deletion_outcomes WHERE request_id = $1 ORDER BY decided_at, recording_id""",
        request_id,
    )
    return [Outcome(**dict(r)) for r in rows]


async def withheld_by_released_holds(conn: Conn, *, tenant: str) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """(request_id, recording_id) of withheld recordings that no active hold covers any more."""
    rows = await conn.fetch(
        """SELECT o.request_id, o.recording_id FROM deletion_outcomes o
           JOIN deletion_requests d ON d.id = o.request_id
           JOIN recordings r ON r.id = o.recording_id AND r.tenant = d.tenant
           WHERE d.tenant = $1 AND o.outcome = 'withheld_legal_hold'
             AND NOT EXISTS (SELECT 1 FROM legal_holds h
                             WHERE h.tenant = d.tenant AND h.released_at IS NULL AND hold_covers(h, r))""",
        tenant,
    )
    return [(r["request_id"], r["recording_id"]) for r in rows]
