"""The retention sweeper: destroys every recording past ``expires_at`` that no legal hold covers.

Batched and idempotent. Each batch is one transaction that locks its rows with ``SKIP LOCKED``
(several sweepers share the work without waiting on each other) and, per recording, checks the
holds and destroys the wrapped key, sealed numbers and hashes, leaving a tombstone and an audit
entry (:mod:`callrec.erasure`). After the commit the sweeper deletes the object versions itself,
many keys per store call (S3: a prefix or per-key listing, then DeleteObjects of 1,000 versions at
a time), every ``object_batch`` erased recordings and at the end; the ``object.delete`` jobs
queued in the same transaction are the durable fallback if the store fails or the process dies
half way, so a crash at any point is resumed, never lost. Objects wait at most a few batches
after their tombstone, and their key is gone by then: they are already unreadable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from callrec import erasure, faults
from callrec.db import recordings
from callrec.retention import service
from callrec.storage import orphans
from callrec.storage.base import ObjectStore

log = logging.getLogger(__name__)
SWEEPER_ACTOR = "system:sweeper"


@dataclass
class SweepReport:
    expired: int = 0
    destroyed: int = 0
    objects_deleted: int = 0
    object_deletions_deferred: int = 0
    held: int = 0
    withheld_released: int = 0
    orphans: orphans.OrphanReport = field(default_factory=orphans.OrphanReport)
    tenants: set[str] = field(default_factory=set)

    def as_json(self) -> dict[str, object]:
        return {
            "expired": self.expired,
            "destroyed": self.destroyed,
            "objects_deleted": self.objects_deleted,
            "object_deletions_deferred": self.object_deletions_deferred,
            "held": self.held,
            "withheld_released": self.withheld_released,
            **self.orphans.as_json(),
        }


async def sweep(
    pool: asyncpg.Pool,
    store: ObjectStore,
    *,
    tenants: list[str],
    max_attempts: int,
    batch: int = 500,
    object_batch: int = 5_000,
    dry_run: bool = False,
    now: datetime | None = None,
    max_batches: int | None = None,
    orphan_grace: timedelta | None = None,
) -> SweepReport:
    """Run until nothing expired and unheld is left (or ``max_batches``). ``batch`` recordings
    are erased per transaction; their objects are deleted once ``object_batch`` have gathered
    (more keys per store call lets the S3 store list a shared prefix instead of each key).
    With ``orphan_grace``, the orphan collector runs afterwards (:mod:`callrec.storage.orphans`)."""
    now = now or datetime.now(UTC)
    report = SweepReport()
    async with pool.acquire() as conn:
        report.held = await recordings.expired_but_held(conn, now=now)
    if dry_run:
        async with pool.acquire() as conn, conn.transaction():
            report.expired = len(await recordings.expired_batch(conn, now=now, limit=1_000_000))
        if orphan_grace is not None:
            report.orphans = await orphans.collect(pool, store, grace=orphan_grace, dry_run=True)
        return report

    batches = 0
    erased: list[tuple[str, str]] = []  # (tenant, object key) of tombstones committed, objects left
    while max_batches is None or batches < max_batches:
        batches += 1
        first = len(erased)
        async with pool.acquire() as conn, conn.transaction():
            due = await recordings.expired_batch(conn, now=now, limit=batch)
            for tenant, recording_id in due:
                result = await erasure.erase_in_transaction(
                    conn,
                    tenant=tenant,
                    recording_id=recording_id,
                    reason="retention_expired",
                    actor=SWEEPER_ACTOR,
                    max_attempts=max_attempts,
                )
                if result.outcome == "erased":
                    report.destroyed += 1
                    report.tenants.add(tenant)
                    if result.object_key:
                        erased.append((tenant, result.object_key))
            # This sweeper deletes these objects itself: workers leave their jobs alone meanwhile.
            await erasure.hold_back_object_jobs(conn, erased[first:])
        faults.point("sweep.batch")
        report.expired += len(due)
        if len(erased) >= object_batch:
            await _delete_objects(pool, store, erased, report)
            erased = []
        if len(due) < batch:
            break
    if erased:
        await _delete_objects(pool, store, erased, report)

    # Deletions that were waiting on holds released since the last sweep.
    for tenant in tenants:
        async with pool.acquire() as conn, conn.transaction():
            released = await service.resolve_withheld(
                conn, tenant=tenant, actor=SWEEPER_ACTOR, max_attempts=max_attempts
            )
        report.withheld_released += len(released)
    if orphan_grace is not None:
        report.orphans = await orphans.collect(pool, store, grace=orphan_grace)
    log.info("sweep: %s", report.as_json())
    return report


async def _delete_objects(
    pool: asyncpg.Pool, store: ObjectStore, erased: list[tuple[str, str]], report: SweepReport
) -> None:
    """Delete the erased recordings' objects now; on failure their queued jobs retry later."""
    faults.point("sweep.objects")
    result = await erasure.delete_objects_now(pool, store, erased, actor=SWEEPER_ACTOR)
    report.objects_deleted += len(result.deleted)
    report.object_deletions_deferred += len(result.deferred)
