"""Erasing a recording: crypto-shred first, then delete every stored copy.

Rule 1 (DESIGN.md): a recording under a legal hold is never deleted, by expiry, by request or by
hand. So the check for holds and the destruction of the key happen in one transaction, and that
transaction holds the tenant's hold lock in shared mode while placing a hold takes it exclusively
(:func:`lock_for_hold_change`): an erasure either finishes before a new hold commits or sees it.

The wrapped key, the sealed phone numbers and their hashes go in that transaction, together with
the audit entry, leaving a tombstone (ids, dates, reason). From that commit on the ciphertext is
unreadable everywhere, backups included. The object versions are deleted after the commit: by the
caller at once where it can (the sweeper does), and in any case by a durable ``object.delete`` job
queued in the same transaction, so a store outage delays their removal but never loses it.

Why the key goes first although the object goes too: deleting objects before the hold check is
committed could destroy audio that a hold placed a moment later should have kept; once the
tombstone has committed no hold can cover the recording any more, and removing its objects is safe.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from callrec.db import Conn, audit, holds, jobs, recordings
from callrec.storage.base import ObjectLocked, ObjectStore

DELETE_OBJECT = "object.delete"


async def delete_erased_object(store: ObjectStore, key: str) -> int:
    """Delete every version of an erased recording's object. Called only after its tombstone has
    committed, so no active hold covers it: an S3 Object Lock legal hold still on a version is a
    mirror not yet updated (its hold was just released) and is lifted first."""
    try:
        return await store.delete_all_versions(key)
    except ObjectLocked:
        await store.set_legal_hold(key, version_id=None, on=False)
        return await store.delete_all_versions(key)


async def lock_for_erasure(conn: Conn, tenant: str) -> None:
    """Shared hold lock: many erasures at once, none while a hold is being placed or released."""
    await conn.execute("SELECT pg_advisory_xact_lock_shared(hashtext('callrec-holds:' || $1))", tenant)


async def lock_for_hold_change(conn: Conn, tenant: str) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('callrec-holds:' || $1))", tenant)


@dataclass(frozen=True)
class Erasure:
    """What happened: ``erased``, ``held`` (with the holds that stopped it) or ``gone`` (nothing left)."""

    outcome: str
    holds: tuple[holds.Hold, ...] = ()
    audit_seq: int | None = None
    object_key: str | None = None


async def erase_in_transaction(
    conn: Conn, *, tenant: str, recording_id: uuid.UUID, reason: str, actor: str, max_attempts: int
) -> Erasure:
    """Tombstone the recording unless a legal hold covers it, and queue the deletion of its
    objects. Must run inside the caller's transaction (the audit entry commits with the change)."""
    await lock_for_erasure(conn, tenant)
    covering = await holds.active_covering(conn, tenant=tenant, recording_id=recording_id)
    if covering:
        return Erasure("held", holds=tuple(covering))
    before = await recordings.destroy(conn, tenant=tenant, recording_id=recording_id, reason=reason)
    if before is None:
        return Erasure("gone")
    entry = await audit.record(
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
    return Erasure("erased", audit_seq=entry.seq, object_key=before.object_key)
