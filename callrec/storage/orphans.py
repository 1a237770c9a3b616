"""The orphan collector: objects that were put but whose reference never committed.

A process that dies between an object put and the commit of the row that names it (or whose
commit fails and whose clean-up fails too) leaves ciphertext that no recording and no job
names. Its wrapped key was never committed, so it is unreadable, but it still takes space and
must not stay for ever. Every put is preceded by an intent row (:mod:`callrec.db.intents`); the
collector reads the intents older than ``[storage] orphan_grace`` whose key nothing references,
deletes every version of those objects, and removes the intents. It never lists the bucket:
what callrec did not write (audit anchors, other tenants' prefixes, an operator's files) is never
a candidate.

An object a committed recording or a queued or running job references is never deleted, however
old its intent (see the protocol in :mod:`callrec.db.intents`), so a recording under a legal hold,
which its row references, is never an orphan. The grace period must exceed the longest time a
writer can spend between its put and its commit; an hour is far beyond what an upload or a job
takes (a writer that is slower still has its commit refused, not its object lost).

Run by the sweeper (``callrec serve`` and ``callrec sweep``) and by ``callrec storage orphans``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

import asyncpg

from callrec import faults
from callrec.db import intents
from callrec.storage.base import ObjectStore, StoreError

log = logging.getLogger(__name__)

BATCH = 500


@dataclass
class OrphanReport:
    deleted: int = 0  # orphans whose every version is gone, their intents removed
    versions: int = 0  # object versions (and delete markers) those deletions removed
    referenced: int = 0  # old intents whose key turned out to be referenced: only the row went
    deferred: int = 0  # orphans the store refused to delete now; the next run tries again
    keys: list[str] = field(default_factory=list)  # what was (or, dry run, would be) deleted

    def as_json(self) -> dict[str, object]:
        return {
            "orphans_deleted": self.deleted,
            "orphan_versions_deleted": self.versions,
            "intents_referenced": self.referenced,
            "orphans_deferred": self.deferred,
        }


async def collect(
    pool: asyncpg.Pool,
    store: ObjectStore,
    *,
    grace: timedelta,
    dry_run: bool = False,
    max_batches: int = 100,
) -> OrphanReport:
    """Delete the objects of intents older than ``grace`` that nothing references, in batches of
    :data:`BATCH` (at most ``max_batches`` per run; the next run takes the rest). ``dry_run``
    claims and deletes nothing and reports the keys it would delete."""
    report = OrphanReport()
    if dry_run:
        async with pool.acquire() as conn:
            found = await intents.orphans(conn, grace=grace, limit=BATCH * max_batches)
        report.keys = [i.object_key for i in found]
        return report
    async with pool.acquire() as conn:
        report.referenced = await intents.drop_referenced(conn, grace=grace)
    for _ in range(max_batches):
        async with pool.acquire() as conn, conn.transaction():
            claimed = await intents.claim_orphans(conn, grace=grace, limit=BATCH)
        if not claimed:
            break
        faults.point("orphans.claimed")
        gone: list[str] = []
        for intent in claimed:
            try:
                report.versions += await store.delete_all_versions(intent.object_key)
            except StoreError as exc:
                # Object Lock retention, or the store down: the claim stays, the next run retries.
                log.warning("orphan %s not deleted now: %s", intent.object_key, exc.__class__.__name__)
                report.deferred += 1
                continue
            gone.append(intent.object_key)
        async with pool.acquire() as conn:
            await intents.finish(conn, gone)
        report.deleted += len(gone)
        report.keys += gone
        if len(claimed) < BATCH or len(gone) < len(claimed):
            break
    if report.deleted or report.deferred or report.referenced:
        log.info("orphan collector: %s", report.as_json())
    return report
