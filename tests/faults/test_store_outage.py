"""The object store (moto's S3 server, an instance of this test's own) stopped for OUTAGE_S seconds
under load: provider callbacks are still acknowledged (their jobs need no store until they run),
uploads whose bytes cannot be staged get 503 with Retry-After and leave no job, the jobs retry
and complete once the store is back, and nothing is lost or stored twice."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from fault_support import (
    RssSampler,
    audio_digest,
    bucket_versions,
    listen_token,
    make_bucket,
    new_twilio_sid,
    peak_rss_mib,
    post_twilio,
    post_upload,
    process_env,
    run_cli,
    s3_storage,
    upload_metadata,
    wait_until,
)

from callrec.app import create_app
from callrec.appkeys import config_key, db_key

OUTAGE_S = 30
PREFIX = "recordings/"


async def test_a_store_outage_delays_ingest_and_loses_nothing(
    app_config: Any,
    own_moto: Any,
    aiohttp_client: Any,
    fake_twilio: Any,
    audio_fixtures: Path,
    counts: dict[str, Any],
) -> None:
    bucket = make_bucket(own_moto.endpoint)
    cfg = app_config(
        storage=s3_storage(own_moto.endpoint, bucket),
        # Backoff 1, 2, 4, 8, 16 s: a job that failed at any moment of the outage is due again
        # at most 16 s after it ends; ten attempts outlast it with room to spare.
        ingest={"retry_base": "1s", "max_attempts": 10, "workers": 2},
        retention={"sweep_in_serve": False},
    )
    client = await aiohttp_client(create_app(cfg, run_workers=True))  # workers in this process
    app = client.app
    audio = (audio_fixtures / "call-without-announcement.wav").read_bytes()
    acknowledged: set[str] = set()
    sent = 0
    refused_uploads: list[str] = []
    statuses: dict[str, list[int]] = {"twilio_during": [], "upload_during": []}

    async def twilio() -> int:
        nonlocal sent
        sid = new_twilio_sid()
        fake_twilio.media[sid] = audio
        sent += 1
        resp = await post_twilio(client, fake_twilio, sid)
        if resp.status == 202:
            acknowledged.add(sid)
        return int(resp.status)

    async def upload(name: str) -> Any:
        nonlocal sent
        sent += 1
        resp = await post_upload(client, upload_metadata(name), audio)
        if resp.status == 202:
            acknowledged.add(name)
        return resp

    async with RssSampler() as rss:
        for i in range(4):  # before: everything goes through
            assert await twilio() == 202
            assert (await upload(f"before-{i}")).status == 202

        own_moto.stop()
        outage_started = time.monotonic()
        ready = await client.get("/readyz")
        assert ready.status == 503 and (await ready.json())["checks"]["store"].startswith("unavailable")
        for i in range(8):
            statuses["twilio_during"].append(await twilio())
            statuses["twilio_during"].append(await twilio())
            resp = await upload(f"during-{i}")
            statuses["upload_during"].append(resp.status)
            if resp.status == 503:
                body = await resp.json()
                assert body["error"]["code"] == "unavailable" and int(resp.headers["Retry-After"]) > 0
                refused_uploads.append(f"during-{i}")
            assert (await client.get("/healthz")).status == 200  # the service itself keeps answering
            await asyncio.sleep(max(0.0, outage_started + (i + 1) * OUTAGE_S / 9 - time.monotonic()))
        assert statuses["twilio_during"] == [202] * 16  # callbacks need only the database
        assert statuses["upload_during"] == [503] * 8  # bytes that cannot be staged are refused
        async with app[db_key].acquire() as conn:
            refused_jobs = await conn.fetchval(
                "SELECT count(*) FROM jobs WHERE dedupe_key = ANY($1::text[])", refused_uploads
            )
            waiting = await conn.fetchval("SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')")
        assert refused_jobs == 0  # a refused upload left no job behind
        assert waiting >= 16  # the callbacks' jobs wait for the store
        await asyncio.sleep(max(0.0, outage_started + OUTAGE_S - time.monotonic()))
        own_moto.start()
        outage_s = round(time.monotonic() - outage_started, 1)

        for name in refused_uploads:  # the PBX sends again after Retry-After
            assert (await upload(name)).status == 202
        for i in range(4):
            assert await twilio() == 202
            assert (await upload(f"after-{i}")).status == 202

        async def drained() -> bool:
            async with app[db_key].acquire() as conn:
                n = await conn.fetchval("SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')")
            return bool(n == 0)

        assert await wait_until(drained, timeout=90, step=0.5)

    async with app[db_key].acquire() as conn:
        rows = await conn.fetch(
            "SELECT id, provider_recording_id, object_key, object_version, sha256 FROM recordings"
        )
        jobs = await conn.fetch("SELECT state, attempts FROM jobs")
        failed_puts = await conn.fetchval("SELECT count(*) FROM object_intents")
    stored = [r["provider_recording_id"] for r in rows]
    assert sorted(stored) == sorted(acknowledged)  # nothing lost, nothing twice
    assert {j["state"] for j in jobs} == {"done"}
    retried = sum(1 for j in jobs if j["attempts"] > 1)
    assert retried >= 16  # the callbacks' jobs did meet the outage

    # Puts refused during the outage left their intents (a put that timed out may have landed);
    # the collector clears them and finds no object to delete.
    await asyncio.sleep(1.1)
    code, out, err = await run_cli(
        process_env(app[config_key], CALLREC_STORAGE__ORPHAN_GRACE="1s"), "storage", "orphans"
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["orphans_deleted"] == failed_puts and report["orphan_versions_deleted"] == 0
    objects = bucket_versions(own_moto.endpoint, bucket, PREFIX)
    assert objects == {r["object_key"]: [r["object_version"]] for r in rows}
    token = await listen_token(app)
    for row in rows:
        assert await audio_digest(client, token, row["id"]) == row["sha256"]

    counts.update(
        outage_s=outage_s,
        sent=sent,
        acknowledged=len(acknowledged),
        refused_503=len(refused_uploads),
        resent_after_503=len(refused_uploads),
        stored=len(rows),
        duplicates=len(stored) - len(set(stored)),
        jobs_retried=retried,
        max_attempts_used=max(j["attempts"] for j in jobs),
        orphans=report["orphan_versions_deleted"],
        failed_put_intents=failed_puts,
        peak_rss_mib_test_process=peak_rss_mib(rss.peak_kib),
    )
