"""The durable job queue in PostgreSQL.

Claiming uses ``FOR UPDATE SKIP LOCKED`` so any number of worker processes share one table
without blocking each other. A claimed job carries a short lease that its worker renews while the
job runs (:func:`renew`, the worker's heartbeat): a worker that dies stops renewing and leaves the
job ``running`` with a lease that soon expires, and the next claim takes it over. Every claim has
an id of its own (``locked_by``) that renewal, completion, failure, deferral and release match, so
a claim whose lease ran out can change nothing once another claim holds the job. Failures retry
with exponential backoff; after ``max_attempts`` the job is ``dead`` with its last error, until an
operator retries it. A worker shutting down puts back what it cannot finish (:func:`release`)
without spending the attempt. ``pg_notify`` on enqueue wakes idle workers at commit time.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from callrec.db import Conn

NOTIFY_CHANNEL = "callrec_jobs"
# The kind of the job that deletes every version of an erased or superseded object
# (callrec.erasure queues it; the functions at the end of this module reschedule and finish it).
DELETE_OBJECT = "object.delete"


@dataclass(frozen=True)
class Job:
    id: int
    tenant: str
    kind: str
    dedupe_key: str
    payload: dict[str, Any]
    state: str
    attempts: int
    max_attempts: int
    run_at: datetime
    lease_until: datetime | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    # Who holds the job: the id the claim was made with. complete(), fail() and defer() match it,
    # so a claim whose lease ran out cannot touch the job once another claim has taken it.
    locked_by: str | None = None


_COLUMNS = (
    "id, tenant, kind, dedupe_key, payload, state, attempts, max_attempts, run_at, lease_until, "
    "last_error, created_at, updated_at, locked_by"
)


def _job(row: asyncpg.Record) -> Job:
    values = dict(row)
    values["payload"] = json.loads(values["payload"])
    return Job(**values)


async def enqueue(
    conn: Conn,
    *,
    tenant: str,
    kind: str,
    dedupe_key: str,
    payload: dict[str, Any],
    max_attempts: int,
) -> tuple[int, bool]:
    """Insert a job unless one with the same (tenant, kind, dedupe_key) exists.

    Returns ``(job_id, created)``. The notification is delivered when the caller's
    transaction commits, never before, so a worker cannot see an uncommitted job.
    """
    row = await conn.fetchrow(
        """INSERT INTO jobs (tenant, kind, dedupe_key, payload, max_attempts)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (tenant, kind, dedupe_key) DO NOTHING
           RETURNING id""",
        tenant,
        kind,
        dedupe_key,
        json.dumps(payload),
        max_attempts,
    )
    if row is None:
        existing = await conn.fetchval(
            "SELECT id FROM jobs WHERE tenant = $1 AND kind = $2 AND dedupe_key = $3",
            tenant,
            kind,
            dedupe_key,
        )
        return int(existing), False
    await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
    return int(row["id"]), True


async def claim(conn: Conn, *, worker_id: str, lease: timedelta) -> Job | None:
    """Take the oldest runnable job: queued and due, or running with an expired lease."""
    row = await conn.fetchrow(
        f"""UPDATE jobs SET state = 'running', attempts = attempts + 1,
                   lease_until = now() + $2, locked_by = $1, updated_at = now()
            WHERE id = (
                SELECT id FROM jobs
                WHERE (state = 'queued' AND run_at <= now())
                   OR (state = 'running' AND lease_until < now())
                ORDER BY run_at
                LIMIT 1
                FOR UPDATE SKIP LOCKED)
            RETURNING {_COLUMNS}""",
        worker_id,
        lease,
    )
    return _job(row) if row else None


@dataclass(frozen=True)
class Renewal:
    """What a heartbeat found, by claim id (``locked_by``)."""

    # Claims whose lease now runs until the database's now() + the lease.
    renewed: frozenset[str]
    # Claims whose job another claim holds now (the lease ran out and it was taken over) or that
    # no longer exists: their work must stop, nothing they do counts any more.
    lost: frozenset[str]


async def renew(conn: Conn, claims: Sequence[tuple[int, str]], *, lease: timedelta) -> Renewal:
    """Extend the leases of the jobs one worker holds, given as ``(job id, claim id)``, in one
    statement: the worker's heartbeat.

    A lease is renewed only while the job is ``running`` under the same claim id, even when it
    has just expired and nobody took the job yet. A claim that is neither renewed nor lost is
    one whose job its own handler has just completed, failed, deferred or released: it carries
    that claim id still, but is no longer running."""
    if not claims:
        return Renewal(frozenset(), frozenset())
    rows = await conn.fetch(
        """WITH mine AS (SELECT * FROM unnest($1::bigint[], $2::text[]) AS m(id, claim)),
                renewed AS (
                    UPDATE jobs j SET lease_until = now() + $3
                    FROM mine m
                    WHERE j.id = m.id AND j.locked_by = m.claim AND j.state = 'running'
                    RETURNING j.id, j.locked_by)
           SELECT m.claim, r.id IS NOT NULL AS renewed, j.locked_by IS DISTINCT FROM m.claim AS lost
           FROM mine m
           LEFT JOIN renewed r ON r.id = m.id AND r.locked_by = m.claim
           LEFT JOIN jobs j ON j.id = m.id""",
        [job_id for job_id, _ in claims],
        [claim for _, claim in claims],
        lease,
    )
    return Renewal(
        renewed=frozenset(r["claim"] for r in rows if r["renewed"]),
        lost=frozenset(r["claim"] for r in rows if r["lost"]),
    )


async def release(conn: Conn, job: Job, *, worker_id: str) -> bool:
    """Put a job this claim holds back in the queue, due now, without spending the attempt the
    claim counted (a worker shutting down gives back what it could not finish: the job did not
    fail). The lease is cleared so that any worker takes it at once; the notification wakes them.
    False when the claim no longer holds the job."""
    released = await conn.fetchval(
        """UPDATE jobs SET state = 'queued', attempts = GREATEST(attempts - 1, 0), lease_until = NULL,
                  run_at = now(), updated_at = now()
           WHERE id = $1 AND locked_by = $2 AND state = 'running'
           RETURNING id""",
        job.id,
        worker_id,
    )
    if released is None:
        return False
    await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
    return True


async def complete(conn: Conn, job_id: int, *, worker_id: str, result: dict[str, Any] | None = None) -> bool:
    """Mark done; False if the lease was lost to another worker meanwhile."""
    status = await conn.execute(
        """UPDATE jobs SET state = 'done', lease_until = NULL, last_error = NULL, result = $3,
                  updated_at = now()
           WHERE id = $1 AND state = 'running' AND locked_by = $2""",
        job_id,
        worker_id,
        json.dumps(result or {}),
    )
    return status.endswith(" 1")


def backoff(attempts: int, base: timedelta, *, cap: timedelta = timedelta(hours=1)) -> timedelta:
    """Exponential backoff: base, 2*base, 4*base, ... capped."""
    delay: timedelta = base * (2 ** max(attempts - 1, 0))
    return min(delay, cap)


async def fail(
    conn: Conn,
    job: Job,
    *,
    worker_id: str,
    error: str,
    retry_base: timedelta,
    permanent: bool = False,
) -> str | None:
    """Record a failure: schedule a retry, or move to ``dead`` after the last attempt
    (or at once when ``permanent``: retrying an undecodable file cannot help).

    Returns the new state, or None when this worker no longer holds the job (its lease ran out and
    another worker took it, or it is done): then nothing is recorded and the caller must not act
    on the failure (no audit entry, no clean-up of what the other worker is using)."""
    dead = permanent or job.attempts >= job.max_attempts
    state = "dead" if dead else "queued"
    updated = await conn.fetchval(
        """UPDATE jobs SET state = $3, last_error = $4, lease_until = NULL,
                  run_at = now() + $5, updated_at = now()
           WHERE id = $1 AND locked_by = $2 AND state = 'running'
           RETURNING id""",
        job.id,
        worker_id,
        state,
        error[:2000],
        timedelta(0) if dead else backoff(job.attempts, retry_base),
    )
    return state if updated is not None else None


async def list_jobs(conn: Conn, *, state: str, tenant: str | None = None, limit: int = 100) -> list[Job]:
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM jobs
            WHERE state = $1 AND ($2::text IS NULL OR tenant = $2)
            ORDER BY updated_at DESC LIMIT $3""",
        state,
        tenant,
        limit,
    )
    return [_job(r) for r in rows]


async def retry_dead(conn: Conn, job_id: int, *, tenant: str | None = None) -> Job | None:
    """Put a dead job back in the queue with a fresh attempt budget."""
    row = await conn.fetchrow(
        f"""UPDATE jobs SET state = 'queued', attempts = 0, run_at = now(), updated_at = now()
            WHERE id = $1 AND state = 'dead' AND ($2::text IS NULL OR tenant = $2)
            RETURNING {_COLUMNS}""",
        job_id,
        tenant,
    )
    if row is not None:
        await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
    return _job(row) if row else None


async def counts(conn: Conn) -> dict[str, int]:
    rows = await conn.fetch("SELECT state, count(*) AS n FROM jobs GROUP BY state")
    return {r["state"]: int(r["n"]) for r in rows}


async def defer(conn: Conn, job: Job, *, worker_id: str, until: datetime, note: str) -> bool:
    """Put a job back to wait (e.g. for late consent events) without spending an attempt."""
    status = await conn.execute(
        """UPDATE jobs SET state = 'queued', attempts = attempts - 1, deferrals = deferrals + 1,
                  run_at = $3, lease_until = NULL, last_error = $4, updated_at = now()
           WHERE id = $1 AND locked_by = $2 AND state = 'running'""",
        job.id,
        worker_id,
        until,
        note,
    )
    return status.endswith(" 1")


async def wake_for_call(conn: Conn, *, tenant: str, call_id: str) -> int:
    """Make the queued jobs of a call due now (they may be waiting for late consent events)."""
    status = await conn.execute(
        """UPDATE jobs SET run_at = now(), updated_at = now()
           WHERE tenant = $1 AND state = 'queued' AND payload->>'call_id' = $2 AND run_at > now()""",
        tenant,
        call_id,
    )
    woken = int(status.split()[-1])
    if woken:
        await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
    return woken


@dataclass(frozen=True)
class NewJob:
    tenant: str
    kind: str
    dedupe_key: str
    payload: dict[str, Any]
    max_attempts: int


async def enqueue_many(conn: Conn, items: list[NewJob]) -> list[tuple[int, bool]]:
    """Insert many jobs in one statement (group commit); ``(job_id, created)`` per item, in order.

    Run outside an explicit transaction: the insert commits on its own, then one notification
    wakes the workers. Items repeating a (tenant, kind, dedupe_key), in the batch or in the
    table, get the existing job's id and ``created=False``.
    """
    rows = await conn.fetch(
        """INSERT INTO jobs (tenant, kind, dedupe_key, payload, max_attempts)
           SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::int[])
           ON CONFLICT (tenant, kind, dedupe_key) DO NOTHING
           RETURNING id, tenant, kind, dedupe_key""",
        [i.tenant for i in items],
        [i.kind for i in items],
        [i.dedupe_key for i in items],
        [json.dumps(i.payload) for i in items],
        [i.max_attempts for i in items],
    )
    created = {(r["tenant"], r["kind"], r["dedupe_key"]): int(r["id"]) for r in rows}
    if created:
        await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
    existing: dict[tuple[str, str, str], int] = {}
    missing = [i for i in items if (i.tenant, i.kind, i.dedupe_key) not in created]
    if missing:
        found = await conn.fetch(
            """SELECT j.id, j.tenant, j.kind, j.dedupe_key FROM jobs j
               JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(tenant, kind, dedupe_key)
                 USING (tenant, kind, dedupe_key)""",
            [i.tenant for i in missing],
            [i.kind for i in missing],
            [i.dedupe_key for i in missing],
        )
        existing = {(r["tenant"], r["kind"], r["dedupe_key"]): int(r["id"]) for r in found}
    results: list[tuple[int, bool]] = []
    claimed: set[tuple[str, str, str]] = set()
    for item in items:
        key = (item.tenant, item.kind, item.dedupe_key)
        if key in created and key not in claimed:
            claimed.add(key)  # the first of a repeated key in the batch is the one that made it
            results.append((created[key], True))
        else:
            results.append((created.get(key) or existing[key], False))
    return results


async def set_object_deletions_due(conn: Conn, erased: Sequence[tuple[str, str]], *, after: timedelta) -> int:
    """Make the queued ``object.delete`` jobs of these (tenant, object key) pairs due ``after``
    from now: later, to hold them back while a caller deletes the objects itself, or at once
    (``after`` zero), when that caller could not. A job a worker has taken is left alone. Wakes
    the workers when the jobs are due now; returns how many jobs were rescheduled."""
    if not erased:
        return 0
    status = await conn.execute(
        """UPDATE jobs j SET run_at = now() + $3, updated_at = now()
           FROM unnest($1::text[], $2::text[]) AS k(tenant, object_key)
           WHERE j.tenant = k.tenant AND j.kind = $4 AND j.dedupe_key = k.object_key
             AND j.state = 'queued'""",
        [tenant for tenant, _ in erased],
        [key for _, key in erased],
        after,
        DELETE_OBJECT,
    )
    rescheduled = int(status.split()[-1])
    if rescheduled and after <= timedelta(0):
        await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
    return rescheduled


async def finish_object_deletions(
    conn: Conn, erased: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], uuid.UUID | None]:
    """Mark the queued ``object.delete`` jobs of these (tenant, object key) pairs done (their
    objects were deleted inline). Returns (tenant, key) -> recording id for the jobs finished
    here (a worker may have taken some). Matched on the tenant as well as the key, like the
    jobs' own uniqueness (tenant, kind, dedupe_key): one tenant's deletion never finishes
    another tenant's job."""
    if not erased:
        return {}
    rows = await conn.fetch(
        """UPDATE jobs j SET state = 'done', updated_at = now(), result = '{"inline": true}'
           FROM unnest($1::text[], $2::text[]) AS k(tenant, object_key)
           WHERE j.tenant = k.tenant AND j.kind = $3 AND j.dedupe_key = k.object_key
             AND j.state = 'queued'
           RETURNING j.tenant, j.dedupe_key, j.payload->>'recording_id' AS recording_id""",
        [tenant for tenant, _ in erased],
        [key for _, key in erased],
        DELETE_OBJECT,
    )
    return {
        (r["tenant"], r["dedupe_key"]): uuid.UUID(r["recording_id"]) if r["recording_id"] else None
        for r in rows
    }
