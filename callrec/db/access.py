"""Subject access requests (GDPR Art. 15/20): what was granted, behind which link, until when."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from callrec.db import Conn


@dataclass(frozen=True)
class AccessRequest:
    id: uuid.UUID
    tenant: str
    recording_ids: list[uuid.UUID]
    created_by: str
    created_at: datetime
    expires_at: datetime
    downloaded_at: datetime | None


async def create(
    conn: Conn,
    *,
    tenant: str,
    subject: dict[str, object],
    recording_ids: list[uuid.UUID],
    token_hash: bytes,
    created_by: str,
    expires_at: datetime,
) -> AccessRequest:
    row = await conn.fetchrow(
        """INSERT INTO access_requests
               (id, tenant, subject_kind, subject_phone_hash, subject_call_id, subject_recording_ids,
                recording_ids, token_hash, created_by, expires_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
           RETURNING id, tenant, recording_ids, created_by, created_at, expires_at, downloaded_at""",
        uuid.uuid4(),
        tenant,
        subject["subject_kind"],
        subject.get("subject_phone_hash"),
        subject.get("subject_call_id"),
        subject.get("subject_recording_ids"),
        recording_ids,
        token_hash,
        created_by,
        expires_at,
    )
    assert row is not None
    return AccessRequest(**dict(row))


async def for_download(conn: Conn, *, request_id: uuid.UUID, token_hash: bytes) -> AccessRequest | None:
    """The request if the token is its own and the link has not expired; stamps the download."""
    row = await conn.fetchrow(
        """UPDATE access_requests SET downloaded_at = now()
           WHERE id = $1 AND token_hash = $2 AND expires_at > now()
           RETURNING id, tenant, recording_ids, created_by, created_at, expires_at, downloaded_at""",
        request_id,
        token_hash,
    )
    return AccessRequest(**dict(row)) if row else None


async def list_for(conn: Conn, *, tenant: str, limit: int) -> list[AccessRequest]:
    rows = await conn.fetch(
        """SELECT id, tenant, recording_ids, created_by, created_at, expires_at, downloaded_at
           FROM access_requests WHERE tenant = $1 ORDER BY created_at DESC LIMIT $2""",
        tenant,
        limit,
    )
    return [AccessRequest(**dict(r)) for r in rows]
