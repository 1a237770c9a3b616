"""Erasing a recording: crypto-shred first, then delete every stored copy through a durable job.

The wrapped key, the sealed phone numbers and their hashes are removed in the same transaction
as the audit entry, which leaves a tombstone (ids, dates, reason). From that commit on the
ciphertext is unreadable everywhere (backups included). The object versions themselves are then
deleted by an ``object.delete`` job, so a store outage delays their removal but never loses it.
"""

from __future__ import annotations

import uuid

from callrec.db import Conn, audit, jobs, recordings

DELETE_OBJECT = "object.delete"


async def erase_in_transaction(
    conn: Conn, *, tenant: str, recording_id: uuid.UUID, reason: str, actor: str, max_attempts: int
) -> bool:
    """Tombstone the recording and queue the deletion of its objects; False if already gone.
    Must run inside the caller's transaction (the audit entry commits with the change)."""
    before = await recordings.destroy(conn, tenant=tenant, recording_id=recording_id, reason=reason)
    if before is None:
        return False
    await audit.record(
        conn,
        tenant=tenant,
        actor=actor,
        action=audit.AuditAction.RECORDING_DESTROYED,
        recording_id=recording_id,
        details={"reason": reason, "previous_state": before.state},
    )
    if before.object_key:
        await jobs.enqueue(
            conn,
            tenant=tenant,
            kind=DELETE_OBJECT,
            dedupe_key=before.object_key,
            payload={"object_key": before.object_key, "recording_id": str(recording_id)},
            max_attempts=max_attempts,
        )
    return True
