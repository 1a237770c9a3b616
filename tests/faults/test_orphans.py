"""Intent rows and the orphan collector: an object whose reference never committed is found
through its intent (never by listing the bucket) and deleted after the grace period, every version
of it; an object a recording or a queued job references is never deleted, however the commit and
the collector interleave; a recording under a legal hold is referenced, so never an orphan."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fault_support import (
    audio_digest,
    bucket_versions,
    listen_token,
    make_bucket,
    new_twilio_sid,
    post_twilio,
    post_upload,
    s3_storage,
    upload_metadata,
)

from callrec.app import create_app, worker_key
from callrec.appkeys import db_key, store_key
from callrec.db import intents, jobs
from callrec.ingest.webhooks import seal_and_store
from callrec.retention import service
from callrec.storage.orphans import collect

PREFIX = "recordings/"


@pytest.fixture
async def s3_client(app_config: Any, moto_endpoint: str, aiohttp_client: Any) -> Any:
    """The app on a versioned bucket of its own, background workers off."""
    bucket = make_bucket(moto_endpoint)
    cfg = app_config(storage=s3_storage(moto_endpoint, bucket))
    client = await aiohttp_client(create_app(cfg, run_workers=False))
    client.bucket = bucket
    return client


def versions(client: Any, moto_endpoint: str) -> dict[str, list[str]]:
    return bucket_versions(moto_endpoint, client.bucket, PREFIX)


async def intent_keys(client: Any) -> set[str]:
    async with client.app[db_key].acquire() as conn:
        return {r["object_key"] for r in await conn.fetch("SELECT object_key FROM object_intents")}


async def age_intents(client: Any, by: timedelta) -> None:
    """Make every intent older, as if the grace period had passed (instead of sleeping an hour)."""
    async with client.app[db_key].acquire() as conn:
        await conn.execute("UPDATE object_intents SET created_at = created_at - $1::interval", by)


async def test_an_object_put_without_its_commit_is_collected_after_the_grace_period(
    s3_client: Any, moto_endpoint: str, audio_fixtures: Path, tmp_path: Path, counts: dict[str, Any]
) -> None:
    app = s3_client.app
    source = audio_fixtures / "call-without-announcement.wav"
    # A writer that died after its put: the intent is committed, the object is there, nothing names it.
    stored = await seal_and_store(
        app, tenant="acme", recording_id=str(uuid.uuid4()), source=source, by="test"
    )
    key = stored["object_key"]
    await app[store_key].put_file(key, source)  # a second version of the key: all of them must go
    assert await intent_keys(s3_client) == {key}
    assert len(versions(s3_client, moto_endpoint)[key]) == 2

    within = await collect(app[db_key], app[store_key], grace=timedelta(hours=1))
    assert within.deleted == 0 and key in versions(s3_client, moto_endpoint)  # still within the grace

    await asyncio.sleep(1.1)
    dry = await collect(app[db_key], app[store_key], grace=timedelta(seconds=1), dry_run=True)
    assert dry.keys == [key] and key in versions(s3_client, moto_endpoint)
    report = await collect(app[db_key], app[store_key], grace=timedelta(seconds=1))
    assert report.deleted == 1 and report.versions == 2 and report.keys == [key]
    assert key not in versions(s3_client, moto_endpoint)
    assert await intent_keys(s3_client) == set()
    counts.update(orphans=1, orphan_versions_deleted=report.versions)


async def test_referenced_objects_are_never_collected_and_held_ones_least_of_all(
    s3_client: Any, moto_endpoint: str, fake_twilio: Any, audio_fixtures: Path, counts: dict[str, Any]
) -> None:
    """Intents left behind for objects that a stored recording, a held recording and a queued
    upload job reference: the collector drops the rows and keeps every object."""
    app, worker = s3_client.app, s3_client.app[worker_key]
    audio = (audio_fixtures / "call-without-announcement.wav").read_bytes()
    sids = [new_twilio_sid() for _ in range(2)]
    for sid in sids:
        fake_twilio.media[sid] = audio
        assert (await post_twilio(s3_client, fake_twilio, sid)).status == 202
        assert await worker.run_once()
    resp = await post_upload(s3_client, upload_metadata("queued-upload"), audio)
    assert resp.status == 202  # its job stays queued: the worker does not run again
    assert await intent_keys(s3_client) == set()  # every reference committed with its intent's removal

    async with app[db_key].acquire() as conn:
        rows = await conn.fetch("SELECT id, object_key FROM recordings ORDER BY provider_recording_id")
        upload_key = await conn.fetchval(
            "SELECT payload->>'object_key' FROM jobs WHERE kind = 'ingest.upload'"
        )
        held_id = rows[0]["id"]
        async with conn.transaction():
            await service.place_hold(
                conn,
                tenant="acme",
                matter="M-1",
                reason="litigation",
                actor="test",
                review_at=None,
                recording_ids=[held_id],
                call_ids=None,
                phone_hashes=None,
                time_from=None,
                time_to=None,
                agent=None,
                max_attempts=3,
            )
        keys = [r["object_key"] for r in rows] + [upload_key]
        # As if each writer had committed its reference and left the intent behind (a bug, or a
        # crash the protocol does not allow): old enough to be collected, were it an orphan.
        for key in keys:
            await intents.record(conn, tenant="acme", object_key=key, by="test")
    await age_intents(s3_client, timedelta(days=1))
    before = versions(s3_client, moto_endpoint)

    report = await collect(app[db_key], app[store_key], grace=timedelta(hours=1))
    assert report.deleted == 0 and report.referenced == 3
    assert versions(s3_client, moto_endpoint) == before
    assert await intent_keys(s3_client) == set()
    token = await listen_token(app)
    async with app[db_key].acquire() as conn:
        digests = {r["id"]: r["sha256"] for r in await conn.fetch("SELECT id, sha256 FROM recordings")}
    for rid, digest in digests.items():
        assert await audio_digest(s3_client, token, rid) == digest  # the held one included
    counts.update(referenced_intents=report.referenced, held=1, orphans_deleted=report.deleted)


async def test_a_commit_and_the_collector_racing_never_lose_a_referenced_object(
    s3_client: Any, moto_endpoint: str, audio_fixtures: Path
) -> None:
    """Both orders, forced: a commit that removed the intent first keeps its object (the collector
    skips the row it has locked); a collector that claimed first makes the commit fail."""
    app = s3_client.app
    source = audio_fixtures / "call-without-announcement.wav"
    pool = app[db_key]
    first = await seal_and_store(app, tenant="acme", recording_id=str(uuid.uuid4()), source=source, by="test")
    await age_intents(s3_client, timedelta(days=1))

    # 1. The commit has removed the intent and not yet committed when the collector runs.
    async with pool.acquire() as writer:
        tx = writer.transaction()
        await tx.start()
        await intents.clear(writer, first["object_key"])
        await writer.execute(
            """INSERT INTO jobs (tenant, kind, dedupe_key, payload, max_attempts)
               VALUES ('acme', 'test.reference', 'r1', jsonb_build_object('object_key', $1::text), 1)""",
            first["object_key"],
        )
        during = await asyncio.wait_for(collect(pool, app[store_key], grace=timedelta(hours=1)), 30)
        await tx.commit()
    assert first["object_key"] not in during.keys
    assert first["object_key"] in versions(s3_client, moto_endpoint)

    # 2. The collector has claimed the intent (and is about to delete) when the commit comes.
    second = await seal_and_store(
        app, tenant="acme", recording_id=str(uuid.uuid4()), source=source, by="test"
    )
    await age_intents(s3_client, timedelta(days=1))
    async with pool.acquire() as conn, conn.transaction():
        claimed = await intents.claim_orphans(conn, grace=timedelta(hours=1), limit=10)
    assert [i.object_key for i in claimed] == [second["object_key"]]
    with pytest.raises(intents.ObjectCollected):
        async with pool.acquire() as writer, writer.transaction():
            await writer.execute(
                """INSERT INTO jobs (tenant, kind, dedupe_key, payload, max_attempts)
                   VALUES ('acme', 'test.reference', 'r2', jsonb_build_object('object_key', $1::text), 1)""",
                second["object_key"],
            )
            await intents.clear(writer, second["object_key"])
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM jobs WHERE dedupe_key = 'r2'") == 0  # rolled back
    report = await collect(pool, app[store_key], grace=timedelta(hours=1))  # a claimed intent is taken again
    assert report.keys == [second["object_key"]]
    assert second["object_key"] not in versions(s3_client, moto_endpoint)
    assert first["object_key"] in versions(s3_client, moto_endpoint)


async def test_ingest_racing_an_eager_collector_keeps_every_committed_recording_whole(
    s3_client: Any, moto_endpoint: str, fake_twilio: Any, audio_fixtures: Path, counts: dict[str, Any]
) -> None:
    """The worst case: the collector runs in a loop with no grace at all while the worker ingests,
    so every object is an orphan candidate from its put to its commit. A commit that loses the race
    fails (the job retries, or goes dead after its attempts); whatever committed has its object, and
    nothing else remains. With the collector stopped, the dead jobs retried finish the work."""
    app, worker = s3_client.app, s3_client.app[worker_key]
    audio = (audio_fixtures / "call-without-announcement.wav").read_bytes()
    sids = [new_twilio_sid() for _ in range(8)]
    for sid in sids:
        fake_twilio.media[sid] = audio
        assert (await post_twilio(s3_client, fake_twilio, sid)).status == 202
    stop = asyncio.Event()
    collected: list[str] = []

    async def eager() -> None:
        while not stop.is_set():
            report = await collect(app[db_key], app[store_key], grace=timedelta(0))
            collected.extend(report.keys)
            await asyncio.sleep(random.uniform(0, 0.03))

    async def ingest() -> None:
        for _ in range(200):
            async with app[db_key].acquire() as conn:
                await conn.execute("UPDATE jobs SET run_at = now() WHERE state = 'queued'")  # no backoff wait
            if not await worker.run_once():
                return

    collector = asyncio.create_task(eager())
    try:
        await asyncio.wait_for(ingest(), 90)
    finally:
        stop.set()
        await collector
    await collect(app[db_key], app[store_key], grace=timedelta(0))

    token = await listen_token(app)

    async def check_store_against_rows() -> int:
        async with app[db_key].acquire() as conn:
            rows = await conn.fetch("SELECT id, object_key, sha256 FROM recordings")
        for row in rows:
            assert await audio_digest(s3_client, token, row["id"]) == row["sha256"]  # its object is whole
        assert set(versions(s3_client, moto_endpoint)) == {r["object_key"] for r in rows}  # nothing else
        return len(rows)

    during = await check_store_against_rows()
    async with app[db_key].acquire() as conn:
        lost = await conn.fetchval(
            "SELECT coalesce(sum(attempts - 1), 0) + count(*) FILTER (WHERE state = 'dead') FROM jobs"
        )
        dead = [r["id"] for r in await conn.fetch("SELECT id, last_error FROM jobs WHERE state = 'dead'")]
        errors = {
            r["last_error"] for r in await conn.fetch("SELECT last_error FROM jobs WHERE state = 'dead'")
        }
        assert errors <= {
            "ObjectCollected: the object was collected as an orphan before its reference committed"
        }
        for job_id in dead:
            await jobs.retry_dead(conn, job_id)
    await ingest()
    assert await check_store_against_rows() == len(sids)
    counts.update(
        sent=len(sids),
        stored_during_race=during,
        commits_refused=lost,
        orphans_collected=len(collected),
        stored=len(sids),
    )


async def test_the_sweeper_runs_the_collector(
    s3_client: Any, moto_endpoint: str, audio_fixtures: Path
) -> None:
    """`callrec serve` and `callrec sweep` collect through sweep(orphan_grace=...); the intent's
    age is the database's clock."""
    from callrec.retention.sweeper import sweep

    app = s3_client.app
    source = audio_fixtures / "call-without-announcement.wav"
    stored = await seal_and_store(
        app, tenant="acme", recording_id=str(uuid.uuid4()), source=source, by="test"
    )
    async with app[db_key].acquire() as conn:
        created = await conn.fetchval("SELECT created_at FROM object_intents")
    assert abs(created - datetime.now(UTC)) < timedelta(minutes=1)
    await age_intents(s3_client, timedelta(hours=2))
    report = await sweep(
        app[db_key], app[store_key], tenants=["acme"], max_attempts=3, orphan_grace=timedelta(hours=1)
    )
    assert report.as_json()["orphans_deleted"] == 1
    assert stored["object_key"] not in versions(s3_client, moto_endpoint)
