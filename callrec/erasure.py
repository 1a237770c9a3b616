"""Erasing a recording: crypto-shred first, then delete every stored copy.

Rule 1 (DESIGN.md): a recording under a legal hold is never deleted, by expiry, by request or by
hand. So the check for holds and the destruction of the key happen in one transaction, and that
transaction holds the tenant's hold lock in shared mode while placing a hold takes it exclusively
(:func:`lock_for_hold_change`): an erasure either finishes before a new hold commits or sees it.

The wrapped key, the sealed phone numbers and their hashes go in that transaction, together with
the audit entry, leaving a tombstone (ids, dates, reason). From that commit on the ciphertext is
unreadable everywhere, backups included. The object versions are deleted after the commit: by the
caller at once where it can (the sweeper and the worker deciding a deletion request do, many keys
per store call through :func:`delete_objects_now`), and in any case by a durable ``object.delete``
job queued in the same transaction, so a store outage delays their removal but never loses it.

Why the key goes first although the object goes too: deleting objects before the hold check is
committed could destroy audio that a hold placed a moment later should have kept; once the
tombstone has committed no hold can cover the recording any more, and removing its objects is safe.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import asyncpg

from callrec import faults
from callrec.db import Conn, audit, holds, jobs, recordings
from callrec.storage.base import ObjectLocked, ObjectStore

log = logging.getLogger(__name__)

DELETE_OBJECT = jobs.DELETE_OBJECT
# How long the object.delete jobs of a caller that deletes the objects itself (in a batch, after
# its commit) wait before workers may take them: see hold_back_object_jobs.
INLINE_DELETE_GRACE = timedelta(minutes=10)
_FINISH_CHUNK = 500


async def delete_erased_object(store: ObjectStore, key: str) -> int:
    """Delete every version of an erased recording's object. Called only after its tombstone has
    committed, so no active hold covers it: an S3 Object Lock legal hold still on a version is a
    mirror not yet updated (its hold was just released) and is lifted first."""
    try:
        return await store.delete_all_versions(key)
    except ObjectLocked:
        await store.set_legal_hold(key, version_id=None, on=False)
        return await store.delete_all_versions(key)


async def delete_erased_objects(store: ObjectStore, keys: list[str]) -> dict[str, int]:
    """:func:`delete_erased_object` for many keys in one :meth:`ObjectStore.delete_objects` call
    (S3: DeleteObjects in batches of 1,000). The same rule for stale Object Lock legal holds: the
    keys that kept locked versions lose their lock and are deleted again. Returns versions
    deleted per key; raises what the store raises when it refused (nothing is lost: every key
    still has its ``object.delete`` job)."""
    try:
        return await store.delete_objects(keys)
    except ObjectLocked as exc:
        deleted = dict(exc.deleted)
        for key in exc.locked:
            await store.set_legal_hold(key, version_id=None, on=False)
        for key, versions in (await store.delete_objects(list(exc.locked))).items():
            deleted[key] = deleted.get(key, 0) + versions
        return deleted


async def hold_back_object_jobs(conn: Conn, erased: Sequence[tuple[str, str]]) -> None:
    """For a caller that will delete these objects itself once its transaction commits
    (:func:`delete_objects_now`): their ``object.delete`` jobs, queued in that transaction, become
    due only after :data:`INLINE_DELETE_GRACE`, so that workers do not take them one by one while
    the batch is under way. They stay the fallback: if the caller dies first they run after the
    grace, and if the store fails :func:`delete_objects_now` makes them due at once."""
    await jobs.set_object_deletions_due(conn, erased, after=INLINE_DELETE_GRACE)


@dataclass
class ObjectDeletions:
    """What :func:`delete_objects_now` did: versions deleted per key, and the keys whose deletion
    was left to their ``object.delete`` job because the store failed."""

    deleted: dict[str, int] = field(default_factory=dict)
    deferred: list[str] = field(default_factory=list)


async def delete_objects_now(
    pool: asyncpg.Pool, store: ObjectStore, erased: Sequence[tuple[str, str]], *, actor: str
) -> ObjectDeletions:
    """Delete the objects of recordings whose tombstones have committed, ``erased`` being
    (tenant, object key) pairs, in one batch; then mark their queued ``object.delete`` jobs done
    and audit each deletion (in transactions of at most 500 keys). When the store fails, nothing
    is marked and the jobs (queued with the tombstones, held back by
    :func:`hold_back_object_jobs`) are made due at once: a store outage delays removal, never
    loses it. A job a worker has already taken is left to it (it finds nothing more to delete)."""
    pairs = list(dict.fromkeys(erased))
    keys = list(dict.fromkeys(key for _, key in pairs))
    if not keys:
        return ObjectDeletions()
    try:
        deleted = await delete_erased_objects(store, keys)
    except Exception:
        log.warning("deletion of %d object(s) deferred to their jobs", len(keys), exc_info=True)
        async with pool.acquire() as conn:
            # Held back for us: due now (and the workers are woken).
            await jobs.set_object_deletions_due(conn, pairs, after=timedelta(0))
        return ObjectDeletions(deferred=keys)
    faults.point("erasure.objects")
    # In transactions of at most _FINISH_CHUNK keys: each holds the audit chain's lock to its end.
    for start in range(0, len(pairs), _FINISH_CHUNK):
        chunk = pairs[start : start + _FINISH_CHUNK]
        async with pool.acquire() as conn, conn.transaction():
            finished = await jobs.finish_object_deletions(conn, chunk)
            for tenant, key in chunk:
                if (tenant, key) in finished:
                    await audit.record(
                        conn,
                        tenant=tenant,
                        actor=actor,
                        action=audit.AuditAction.OBJECT_DELETED,
                        recording_id=finished[tenant, key],
                        details={"versions": deleted.get(key, 0)},
                    )
    return ObjectDeletions(deleted=deleted)


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
