"""The worker's runner in one process: leases renewed by the heartbeat, a lost lease stopping the
handler, and how attempts are counted. Handlers that block on an event stand in for long jobs, so
that nothing here depends on how fast the machine is. `callrec worker` processes killed and
stopped with signals are in test_worker_processes.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from callrec.app import create_app, worker_key
from callrec.appkeys import db_key
from callrec.config import TenantConfig
from callrec.db import jobs
from callrec.ingest.worker import LeaseLost, Worker
from callrec.metrics import metrics_key

KIND = "test.long"


class LongJob:
    """A handler that runs until the test lets it finish, then completes its job like the real
    handlers do (matching its claim)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.started = asyncio.Event()
        self.finish = asyncio.Event()
        self.cancelled = False

    async def __call__(self, job: jobs.Job, tenant: TenantConfig) -> None:
        self.started.set()
        try:
            await self.finish.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        async with self.pool.acquire() as conn:
            if not await jobs.complete(conn, job.id, worker_id=job.locked_by or ""):
                raise LeaseLost


async def enqueue(pool: asyncpg.Pool, *, max_attempts: int = 3) -> int:
    async with pool.acquire() as conn:
        job_id, _ = await jobs.enqueue(
            conn, tenant="acme", kind=KIND, dedupe_key="one", payload={}, max_attempts=max_attempts
        )
    return job_id


def finished(client: Any, outcome: str) -> float:
    value = client.app[metrics_key].registry.get_sample_value(
        "callrec_jobs_finished_total", {"kind": KIND, "outcome": outcome}
    )
    return value or 0.0


async def until(check: Callable[[], Any], *, tries: int = 100, pause: float = 0.2) -> None:
    """Wait for ``check()`` (sync or async) to be true, at most ``tries`` times ``pause``."""
    for _ in range(tries):
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(pause)
    raise AssertionError("the condition did not come true in time")


async def test_the_heartbeat_keeps_a_long_job_from_being_taken_over(
    aiohttp_client: Any, app_config: Any
) -> None:
    cfg = app_config(ingest={"lease": "3s", "heartbeat": "1s", "shutdown_grace": "1s"})
    client = await aiohttp_client(create_app(cfg, run_workers=True))
    pool = client.app[db_key]
    handler = LongJob(pool)
    client.app[worker_key].register(KIND, handler)
    job_id = await enqueue(pool)
    await asyncio.wait_for(handler.started.wait(), 30)
    async with pool.acquire() as conn:
        first = await conn.fetchval("SELECT lease_until FROM jobs WHERE id = $1", job_id)

        async def past_the_first_lease() -> bool:
            # Another worker polling all the while never gets the job.
            assert await jobs.claim(conn, worker_id="other/1", lease=timedelta(minutes=1)) is None
            return bool(await conn.fetchval("SELECT now() > $1::timestamptz + interval '1 second'", first))

        await until(past_the_first_lease)
        row = await conn.fetchrow("SELECT state, attempts, lease_until FROM jobs WHERE id = $1", job_id)
    assert (row["state"], row["attempts"]) == ("running", 1)
    assert row["lease_until"] > first  # renewed, by the heartbeat alone
    handler.finish.set()
    async with pool.acquire() as conn:

        async def done() -> bool:
            return await conn.fetchval("SELECT state FROM jobs WHERE id = $1", job_id) == "done"

        await until(done)
        assert await conn.fetchval("SELECT attempts FROM jobs WHERE id = $1", job_id) == 1
    assert not handler.cancelled and finished(client, "done") == 1


async def test_a_lost_lease_stops_the_handler(client: Any) -> None:
    pool = client.app[db_key]
    worker: Worker = client.app[worker_key]
    handler = LongJob(pool)
    worker.register(KIND, handler)
    job_id = await enqueue(pool)
    job = await worker.claim()
    assert job is not None
    running = asyncio.create_task(worker.process(job))
    await asyncio.wait_for(handler.started.wait(), 10)
    async with pool.acquire() as conn:  # our lease ran out (a stall) and another worker took the job
        await conn.execute("UPDATE jobs SET lease_until = now() - interval '1 second'")
        other = await jobs.claim(conn, worker_id="other/1", lease=timedelta(minutes=1))
    assert other is not None and other.id == job_id

    assert await worker.renew_leases()  # the heartbeat finds the job another claim's

    await asyncio.wait_for(running, 10)
    assert handler.cancelled
    assert finished(client, "lease_lost") == 1
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT state, attempts, locked_by, last_error FROM jobs")
    # Nothing recorded by the lost claim: the job is the other worker's, as it was.
    assert dict(row) == {"state": "running", "attempts": 2, "locked_by": "other/1", "last_error": None}


async def test_renewal_is_retried_while_the_database_is_away_then_the_handler_stops(
    aiohttp_client: Any, app_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = app_config(ingest={"lease": "4s", "heartbeat": "2s"})
    client = await aiohttp_client(create_app(cfg, run_workers=False))
    pool = client.app[db_key]
    worker: Worker = client.app[worker_key]
    handler = LongJob(pool)
    worker.register(KIND, handler)
    await enqueue(pool)
    renew = jobs.renew
    down = True

    async def renew_unless_down(conn: Any, claims: Any, *, lease: timedelta) -> jobs.Renewal:
        if down:
            raise ConnectionRefusedError("the database is away")
        return await renew(conn, claims, lease=lease)

    monkeypatch.setattr(jobs, "renew", renew_unless_down)
    job = await worker.claim()
    assert job is not None
    running = asyncio.create_task(worker.process(job))
    await asyncio.wait_for(handler.started.wait(), 10)
    async with pool.acquire() as conn:
        first = await conn.fetchval("SELECT lease_until FROM jobs")

    assert not await worker.renew_leases()  # failed, but the lease has not run out: keep going
    assert not running.done() and not handler.cancelled
    down = False
    assert await worker.renew_leases()
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT lease_until FROM jobs") > first

    down = True  # and now for longer than the lease

    async def stopped() -> bool:
        await worker.renew_leases()
        return running.done()

    await until(stopped, tries=100, pause=0.1)
    assert handler.cancelled and finished(client, "lease_lost") == 1
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT state, locked_by, lease_until <= now() + interval '1 second' AS over FROM jobs"
        )
    # Still ours in the database (nobody could take it), and free to take over as its lease ends.
    assert dict(row) == {"state": "running", "locked_by": job.locked_by, "over": True}


async def test_attempts_count_only_claims_that_ended_without_an_outcome(client: Any) -> None:
    """A release at shutdown gives its attempt back; a job whose worker died (its lease ran out)
    on every attempt goes dead at the next claim, with the reason."""
    pool = client.app[db_key]
    worker: Worker = client.app[worker_key]
    handler = LongJob(pool)
    worker.register(KIND, handler)
    job_id = await enqueue(pool, max_attempts=2)
    async with pool.acquire() as conn:
        for _ in range(3):
            job = await worker.claim()
            assert job is not None
            assert await jobs.release(conn, job, worker_id=job.locked_by or "")
        for attempt in (1, 2):  # the worker is killed mid-job: its lease runs out
            job = await worker.claim()
            assert job is not None and job.attempts == attempt
            await conn.execute("UPDATE jobs SET lease_until = now() - interval '1 second'")
    job = await worker.claim()
    assert job is not None and job.attempts == 3
    await worker.process(job)
    assert not handler.started.is_set()
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT state, last_error FROM jobs WHERE id = $1", job_id)
        failed = await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'ingest:failed'")
    assert row["state"] == "dead" and "on every attempt" in row["last_error"]
    assert failed == 1


async def test_an_unexpected_error_in_a_claim_does_not_end_the_loop(
    aiohttp_client: Any, app_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncpg's InternalClientError (a session ended by a database restart under a statement) from
    a claim ended the worker's run loop: the process went on serving HTTP but never claimed again."""
    cfg = app_config(ingest={"workers": 1, "lease": "3s", "heartbeat": "1s", "shutdown_grace": "1s"})
    app = create_app(cfg, run_workers=True)
    failures = 0
    real_claim = Worker.claim

    async def claim_failing_once(self: Worker) -> jobs.Job | None:
        nonlocal failures
        if failures == 0:
            failures += 1
            raise asyncpg.InternalClientError("cannot switch to state 12; another operation is in progress")
        return await real_claim(self)

    monkeypatch.setattr(Worker, "claim", claim_failing_once)
    client = await aiohttp_client(app)
    worker = client.app[worker_key]
    pool = client.app[db_key]
    handler = LongJob(pool)
    worker.register(KIND, handler)
    await until(lambda: failures == 1)
    job_id = await enqueue(pool)
    handler.finish.set()
    async with pool.acquire() as conn:

        async def done() -> bool:
            return await conn.fetchval("SELECT state FROM jobs WHERE id = $1", job_id) == "done"

        await until(done)
    assert failures == 1 and handler.started.is_set()
