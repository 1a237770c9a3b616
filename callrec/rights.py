"""A data subject's rights over their recordings, for the API and the portal alike:

- access and portability (GDPR Art. 15/20): the subject's recordings as a ZIP behind a
  short-lived link; the link is the capability, only its hash is stored;
- restriction of processing (GDPR Art. 18): the recording is kept, but only the privacy and legal
  roles open it.

Both write their audit entry in the caller's transaction, so the change and its record land
together or not at all.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from callrec.db import Conn, access, audit, recordings

LINK_LIFETIME = timedelta(hours=1)


@dataclass(frozen=True)
class AccessGrant:
    request: access.AccessRequest
    secret: str  # shown once, in the download link; never stored
    recordings: int

    def download_path(self) -> str:
        return f"/api/v1/access-requests/{self.request.id}/download?token={self.secret}"


def token_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


async def grant_access(
    conn: Conn, *, tenant: str, subject: dict[str, Any], actor: str, via: str
) -> AccessGrant:
    """Find the subject's live recordings and open a one-hour download link for them."""
    found = await recordings.for_subject(
        conn,
        tenant=tenant,
        phone_hash=subject.get("subject_phone_hash"),
        call_id=subject.get("subject_call_id"),
        recording_ids=subject.get("subject_recording_ids"),
    )
    secret = secrets.token_urlsafe(32)
    request = await access.create(
        conn,
        tenant=tenant,
        subject=subject,
        recording_ids=[r.id for r in found],
        token_hash=token_hash(secret),
        created_by=actor,
        expires_at=datetime.now(UTC) + LINK_LIFETIME,
    )
    await audit.record(
        conn,
        tenant=tenant,
        actor=actor,
        action=audit.AuditAction.ACCESS_REQUESTED,
        details={
            "request_id": str(request.id),
            "subject_kind": subject["subject_kind"],
            "recording_ids": [str(r.id) for r in found],
            "via": via,
        },
    )
    return AccessGrant(request, secret, len(found))


async def set_restriction(
    conn: Conn,
    *,
    tenant: str,
    recording_id: uuid.UUID,
    restricted: bool,
    actor: str,
    reason: str,
    via: str,
) -> recordings.Recording | None:
    """Restrict or lift the restriction; None when there is no such live recording.

    Setting the state it already has changes nothing and writes no audit entry."""
    rec = await recordings.get(conn, tenant=tenant, recording_id=recording_id)
    if rec is None or rec.state not in ("stored", "quarantined"):
        return None
    if await recordings.set_restricted(conn, tenant=tenant, recording_id=recording_id, restricted=restricted):
        await audit.record(
            conn,
            tenant=tenant,
            actor=actor,
            action=audit.AuditAction.RECORDING_RESTRICTED
            if restricted
            else audit.AuditAction.RECORDING_UNRESTRICTED,
            recording_id=recording_id,
            details={"reason": reason, "via": via},
        )
        rec = await recordings.get(conn, tenant=tenant, recording_id=recording_id)
    return rec
