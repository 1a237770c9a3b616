"""The privacy reviewer's decision on a quarantined recording, shared by the API and the portal.

Approve: the recording is kept with normal retention (the tenant's, shortened for its purpose),
counted from when it was stored. Reject: it is destroyed like any erasure, unless a legal hold
covers it. Each decision is an audit entry in the same transaction, carrying the reviewer's reason.
"""

from __future__ import annotations

from callrec import erasure
from callrec.config import Config
from callrec.consent.retention import retention_for
from callrec.db import Conn, audit, recordings


async def approve(
    conn: Conn, config: Config, rec: recordings.Recording, *, actor: str, reason: str, via: str | None = None
) -> None:
    retention = retention_for(config, rec.tenant, rec.consent.get("purpose"))
    expires_at = rec.stored_at + retention
    policy = {**rec.policy, "decision": "store", "reviewed": {"by": actor, "decision": "approve"}}
    await recordings.release_from_quarantine(
        conn, tenant=rec.tenant, recording_id=rec.id, expires_at=expires_at, policy=policy
    )
    details = {"reason": reason, "expires_at": expires_at.isoformat()}
    await audit.record(
        conn,
        tenant=rec.tenant,
        actor=actor,
        action=audit.AuditAction.RECORDING_APPROVED,
        recording_id=rec.id,
        details={**details, "via": via} if via else details,
    )


async def reject(
    conn: Conn, config: Config, rec: recordings.Recording, *, actor: str, reason: str, via: str | None = None
) -> erasure.Erasure:
    """Destroy it; the result's outcome is ``held`` when a legal hold stops that (the caller then
    rolls back, so the rejection's audit entry goes too)."""
    details = {"reason": reason, "stage": "quarantine_review"}
    await audit.record(
        conn,
        tenant=rec.tenant,
        actor=actor,
        action=audit.AuditAction.RECORDING_REJECTED,
        recording_id=rec.id,
        details={**details, "via": via} if via else details,
    )
    return await erasure.erase_in_transaction(
        conn,
        tenant=rec.tenant,
        recording_id=rec.id,
        reason="quarantine_rejected",
        actor=actor,
        max_attempts=config.ingest.max_attempts,
    )
