"""Group commit of webhook jobs: every caller gets its own committed job (or the failure)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from callrec.db import jobs
from callrec.ingest.batcher import JobBatcher


async def test_concurrent_enqueues_are_grouped_and_each_answered_after_commit(db: asyncpg.Pool) -> None:
    batcher = JobBatcher(db)
    keys = [f"RE{i % 150}" for i in range(200)]  # 50 repeats among 200 callers
    results = await asyncio.gather(
        *(
            batcher.enqueue(
                tenant="acme", kind="ingest.twilio", dedupe_key=k, payload={"k": k}, max_attempts=3
            )
            for k in keys
        )
    )
    async with db.acquire() as conn:
        rows = {r["dedupe_key"]: r["id"] for r in await conn.fetch("SELECT id, dedupe_key FROM jobs")}
    assert len(rows) == 150
    assert sum(created for _, created in results) == 150  # exactly one caller per key made the job
    for key, (job_id, _) in zip(keys, results, strict=True):
        assert rows[key] == job_id  # everyone got the committed job's id
    again = await batcher.enqueue(
        tenant="acme", kind="ingest.twilio", dedupe_key="RE7", payload={}, max_attempts=3
    )
    assert again == (rows["RE7"], False)


async def test_a_failed_flush_fails_every_caller_in_it(db: asyncpg.Pool) -> None:
    batcher = JobBatcher(db)
    await db.close()  # the database goes away
    outcomes = await asyncio.gather(
        *(
            batcher.enqueue(tenant="acme", kind="k", dedupe_key=str(i), payload={}, max_attempts=3)
            for i in range(5)
        ),
        return_exceptions=True,
    )
    assert all(isinstance(o, Exception) for o in outcomes)


async def test_enqueue_many_keeps_order_and_reports_repeats(db: asyncpg.Pool) -> None:
    items = [jobs.NewJob("acme", "k", key, {"n": n}, 3) for n, key in enumerate(["a", "b", "a", "c"])]
    async with db.acquire() as conn:
        first = await jobs.enqueue_many(conn, items)
        second = await jobs.enqueue_many(conn, items[:2])
    assert [created for _, created in first] == [True, True, False, True]
    assert first[0][0] == first[2][0]
    assert second == [(first[0][0], False), (first[1][0], False)]


@pytest.mark.parametrize("n", [1, 3])
async def test_single_callers_are_not_delayed_into_batches(db: asyncpg.Pool, n: int) -> None:
    batcher = JobBatcher(db)
    for i in range(n):
        job_id, created = await batcher.enqueue(
            tenant="acme", kind="k", dedupe_key=f"x{i}", payload={}, max_attempts=3
        )
        assert created and job_id > 0
