"""The job queue against a real PostgreSQL: concurrency, leases, backoff, dead letters, wake-ups."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import asyncpg

from callrec.db import jobs

LEASE = timedelta(minutes=5)


async def enqueue(conn: asyncpg.Connection, key: str, *, max_attempts: int = 3) -> int:
    job_id, created = await jobs.enqueue(
        conn, tenant="acme", kind="test", dedupe_key=key, payload={"k": key}, max_attempts=max_attempts
    )
    assert created
    return job_id


async def test_enqueue_is_idempotent_per_dedupe_key(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        first = await enqueue(conn, "a")
        again, created = await jobs.enqueue(
            conn, tenant="acme", kind="test", dedupe_key="a", payload={}, max_attempts=3
        )
        assert (again, created) == (first, False)
        other, created = await jobs.enqueue(
            conn, tenant="other", kind="test", dedupe_key="a", payload={}, max_attempts=3
        )
        assert created and other != first


async def test_concurrent_claims_never_share_a_job(db: asyncpg.Pool, database_url: str) -> None:
    async with db.acquire() as conn:
        for i in range(40):
            await enqueue(conn, f"j{i}")
    conns = [await asyncpg.connect(database_url) for _ in range(4)]
    claimed: list[int] = []

    async def worker(conn: asyncpg.Connection, name: str) -> None:
        while (job := await jobs.claim(conn, worker_id=name, lease=LEASE)) is not None:
            claimed.append(job.id)
            assert await jobs.complete(conn, job.id, worker_id=name)

    try:
        await asyncio.wait_for(asyncio.gather(*(worker(c, f"w{i}") for i, c in enumerate(conns))), 30)
    finally:
        for c in conns:
            await c.close()
    assert len(claimed) == 40 and len(set(claimed)) == 40


async def test_expired_lease_is_taken_over_and_the_old_worker_cannot_complete(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        job_id = await enqueue(conn, "x")
        first = await jobs.claim(conn, worker_id="dead-worker", lease=LEASE)
        assert first is not None and first.id == job_id
        assert await jobs.claim(conn, worker_id="w2", lease=LEASE) is None  # still leased
        await conn.execute("UPDATE jobs SET lease_until = now() - interval '1 second'")  # the worker died
        second = await jobs.claim(conn, worker_id="w2", lease=LEASE)
        assert second is not None and second.id == job_id and second.attempts == 2
        assert not await jobs.complete(conn, job_id, worker_id="dead-worker")
        # Nor can it record a failure: None, and the job is the new worker's as it was.
        late = await jobs.fail(
            conn,
            first,
            worker_id="dead-worker",
            error="late",
            retry_base=timedelta(seconds=1),
            permanent=True,
        )
        assert late is None
        assert await conn.fetchval("SELECT state FROM jobs WHERE id = $1", job_id) == "running"
        assert await jobs.complete(conn, job_id, worker_id="w2")


async def test_renewal_extends_the_claims_still_held_and_names_the_lost_ones(db: asyncpg.Pool) -> None:
    short = timedelta(seconds=30)
    async with db.acquire() as conn:
        for key in ("held", "taken", "finished", "expired"):
            await enqueue(conn, key)
        claims = {}
        for key in ("held", "taken", "finished", "expired"):
            job = await jobs.claim(conn, worker_id=f"w/{key}", lease=short)
            assert job is not None and job.payload == {"k": key}
            claims[key] = job
        # "taken": its lease ran out and another claim took it; "finished": its handler completed
        # it; "expired": its lease ran out but nobody took it yet, so it is still ours.
        await conn.execute(
            "UPDATE jobs SET lease_until = now() - interval '1 second' WHERE id = ANY($1::bigint[])",
            [claims["taken"].id, claims["expired"].id],
        )
        await conn.execute("UPDATE jobs SET locked_by = 'other/1' WHERE id = $1", claims["taken"].id)
        assert await jobs.complete(conn, claims["finished"].id, worker_id="w/finished")
        mine = [(j.id, j.locked_by or "") for j in claims.values()] + [(10**9, "w/gone")]

        renewal = await jobs.renew(conn, mine, lease=timedelta(minutes=2))

        assert renewal.renewed == {"w/held", "w/expired"}
        assert renewal.lost == {"w/taken", "w/gone"}
        rows = {
            r["id"]: r
            for r in await conn.fetch("SELECT id, lease_until - now() AS left, locked_by, state FROM jobs")
        }
        for key in ("held", "expired"):
            assert timedelta(seconds=90) < rows[claims[key].id]["left"] <= timedelta(minutes=2)
        assert rows[claims["taken"].id]["left"] < timedelta(0)  # the other claim's lease: untouched
        assert rows[claims["finished"].id]["state"] == "done"
        assert await jobs.renew(conn, [], lease=short) == jobs.Renewal(frozenset(), frozenset())


async def test_release_gives_the_job_back_without_spending_its_attempt(
    db: asyncpg.Pool, database_url: str
) -> None:
    listener = await asyncpg.connect(database_url)
    woke = asyncio.Event()
    await listener.add_listener(jobs.NOTIFY_CHANNEL, lambda *_: woke.set())
    try:
        async with db.acquire() as conn:
            job_id = await enqueue(conn, "r", max_attempts=1)
            for _ in range(3):  # released more often than it may be attempted: never dead for it
                job = await jobs.claim(conn, worker_id="stopping", lease=LEASE)
                assert job is not None and job.id == job_id and job.attempts == 1
                woke.clear()
                assert await jobs.release(conn, job, worker_id="stopping")
                await asyncio.wait_for(woke.wait(), 5)  # the other workers are woken
                row = await conn.fetchrow(
                    "SELECT state, attempts, lease_until, run_at <= now() AS due FROM jobs WHERE id = $1",
                    job_id,
                )
                assert dict(row) == {"state": "queued", "attempts": 0, "lease_until": None, "due": True}
            # A claim that no longer holds the job releases nothing.
            job = await jobs.claim(conn, worker_id="new", lease=LEASE)
            assert job is not None
            assert not await jobs.release(conn, job, worker_id="stopping")
            assert await conn.fetchval("SELECT state FROM jobs WHERE id = $1", job_id) == "running"
            assert await jobs.complete(conn, job_id, worker_id="new")
            assert not await jobs.release(conn, job, worker_id="new")  # done stays done
            assert await conn.fetchval("SELECT state FROM jobs WHERE id = $1", job_id) == "done"
    finally:
        await listener.close()


async def test_failures_back_off_then_go_dead_and_can_be_retried(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        job_id = await enqueue(conn, "y", max_attempts=2)
        job = await jobs.claim(conn, worker_id="w", lease=LEASE)
        assert job is not None
        state = await jobs.fail(conn, job, worker_id="w", error="boom 1", retry_base=timedelta(seconds=30))
        assert state == "queued"
        delay = await conn.fetchval("SELECT run_at - now() FROM jobs WHERE id = $1", job_id)
        assert timedelta(seconds=25) < delay <= timedelta(seconds=30)
        assert await jobs.claim(conn, worker_id="w", lease=LEASE) is None  # not due yet
        await conn.execute("UPDATE jobs SET run_at = now()")
        job = await jobs.claim(conn, worker_id="w", lease=LEASE)
        assert job is not None and job.attempts == 2
        assert (
            await jobs.fail(conn, job, worker_id="w", error="boom 2", retry_base=timedelta(seconds=30))
            == "dead"
        )
        dead = await jobs.list_jobs(conn, state="dead")
        assert [(j.id, j.last_error) for j in dead] == [(job_id, "boom 2")]
        assert await jobs.claim(conn, worker_id="w", lease=LEASE) is None
        assert await jobs.retry_dead(conn, job_id, tenant="other") is None  # tenant-scoped
        again = await jobs.retry_dead(conn, job_id)
        assert again is not None and again.state == "queued" and again.attempts == 0
        assert (await jobs.claim(conn, worker_id="w", lease=LEASE)) is not None


def test_backoff_is_exponential_and_capped() -> None:
    base = timedelta(seconds=5)
    assert [jobs.backoff(n, base).total_seconds() for n in (1, 2, 3, 4)] == [5, 10, 20, 40]
    assert jobs.backoff(30, base) == timedelta(hours=1)


async def test_notify_wakes_a_listener_at_commit(db: asyncpg.Pool, database_url: str) -> None:
    listener = await asyncpg.connect(database_url)
    woke = asyncio.Event()
    await listener.add_listener(jobs.NOTIFY_CHANNEL, lambda *_: woke.set())
    try:
        async with db.acquire() as conn, conn.transaction():
            await enqueue(conn, "z")
            await asyncio.sleep(0.2)
            assert not woke.is_set()  # not before the commit
        await asyncio.wait_for(woke.wait(), 5)
    finally:
        await listener.close()


async def test_background_worker_picks_up_a_webhook_job_at_once(
    aiohttp_client: Any, config: Any, fake_twilio: Any, audio_fixtures: Any
) -> None:
    """With workers running, a queued job is processed without polling delay (LISTEN/NOTIFY)."""
    from twilio.request_validator import RequestValidator

    from callrec.app import create_app
    from callrec.appkeys import db_key

    client = await aiohttp_client(create_app(config, run_workers=True))
    await asyncio.sleep(0.3)  # let the workers reach their idle wait
    sid = "RE" + "ab" * 16
    fake_twilio.media[sid] = (audio_fixtures / "call-with-announcement.wav").read_bytes()
    form = {
        "AccountSid": "AC" + "0123456789abcdef" * 2,
        "CallSid": "CA" + "cd" * 16,
        "RecordingSid": sid,
        "RecordingUrl": fake_twilio.recording_url(sid),
        "RecordingStatus": "completed",
    }
    path = "/webhooks/twilio/acme?consent=granted&basis=contract"
    sig = RequestValidator("twilio-auth-token-for-tests").compute_signature(
        "https://callrec.example.test" + path, form
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await client.post(path, data=form, headers={"X-Twilio-Signature": sig})).status == 202
    async with client.app[db_key].acquire() as conn:
        for _ in range(100):
            if await conn.fetchval("SELECT count(*) FROM recordings"):
                break
            await asyncio.sleep(0.05)
        assert await conn.fetchval("SELECT count(*) FROM recordings") == 1
    # Well inside the 5 s idle poll: the notification woke the worker.
    assert loop.time() - started < 4


# --- object.delete jobs: held back, made due, finished inline ---------------------------------


async def enqueue_object_delete(conn: asyncpg.Connection, tenant: str, key: str) -> int:
    job_id, created = await jobs.enqueue(
        conn,
        tenant=tenant,
        kind=jobs.DELETE_OBJECT,
        dedupe_key=key,
        payload={"object_key": key, "recording_id": str(uuid.uuid4())},
        max_attempts=3,
    )
    assert created
    return job_id


async def job_states(conn: asyncpg.Connection) -> dict[tuple[str, str], tuple[str, bool]]:
    rows = await conn.fetch("SELECT tenant, dedupe_key, state, run_at <= now() AS due FROM jobs")
    return {(r["tenant"], r["dedupe_key"]): (r["state"], r["due"]) for r in rows}


async def test_finishing_object_deletions_is_scoped_to_the_tenant(db: asyncpg.Pool) -> None:
    """Two tenants may queue the same dedupe key (the jobs are unique per tenant): finishing one
    tenant's deletion leaves the other tenant's job queued, for its own worker to do."""
    shared = "recordings/2026/one-key"
    async with db.acquire() as conn:
        await enqueue_object_delete(conn, "acme", shared)
        await enqueue_object_delete(conn, "globex", shared)
        await enqueue_object_delete(conn, "acme", "acme/other")
        await enqueue(conn, shared)  # another kind with the same key: never touched

        finished = await jobs.finish_object_deletions(conn, [("acme", shared), ("acme", "acme/missing")])

        assert list(finished) == [("acme", shared)]
        assert isinstance(finished["acme", shared], uuid.UUID)
        states = await job_states(conn)
        assert states[("acme", shared)][0] == "done"
        assert states[("globex", shared)][0] == "queued"
        assert states[("acme", "acme/other")][0] == "queued"
        assert await conn.fetchval("SELECT state FROM jobs WHERE kind = 'test'") == "queued"
        result = await conn.fetchval(
            "SELECT result FROM jobs WHERE tenant = 'acme' AND dedupe_key = $1", shared
        )
        assert result == '{"inline": true}'
        assert await jobs.finish_object_deletions(conn, []) == {}


async def test_a_running_object_deletion_is_left_to_its_worker(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        await enqueue_object_delete(conn, "acme", "acme/taken")
        taken = await jobs.claim(conn, worker_id="w", lease=LEASE)
        assert taken is not None
        assert await jobs.finish_object_deletions(conn, [("acme", "acme/taken")]) == {}
        assert await jobs.set_object_deletions_due(conn, [("acme", "acme/taken")], after=timedelta(0)) == 0
        assert await jobs.complete(conn, taken.id, worker_id="w")


async def test_object_deletions_are_held_back_then_made_due_with_a_wake_up(
    db: asyncpg.Pool, database_url: str
) -> None:
    async with db.acquire() as conn:
        await enqueue_object_delete(conn, "acme", "acme/a")
        await enqueue_object_delete(conn, "globex", "acme/a")  # same key, other tenant: not named
        await enqueue_object_delete(conn, "acme", "acme/b")

        held = await jobs.set_object_deletions_due(
            conn, [("acme", "acme/a"), ("acme", "acme/b")], after=timedelta(minutes=10)
        )
        assert held == 2
        states = await job_states(conn)
        assert states[("acme", "acme/a")] == states[("acme", "acme/b")] == ("queued", False)
        assert states[("globex", "acme/a")] == ("queued", True)
        assert await jobs.set_object_deletions_due(conn, [], after=timedelta(0)) == 0

    listener = await asyncpg.connect(database_url)
    woke = asyncio.Event()
    await listener.add_listener(jobs.NOTIFY_CHANNEL, lambda *_: woke.set())
    try:
        async with db.acquire() as conn:
            assert await jobs.set_object_deletions_due(conn, [("acme", "acme/a")], after=timedelta(0)) == 1
            await asyncio.wait_for(woke.wait(), 5)  # due now: the workers are woken
            states = await job_states(conn)
        assert states[("acme", "acme/a")] == ("queued", True)
        assert states[("acme", "acme/b")] == ("queued", False)
    finally:
        await listener.close()
