"""`callrec worker` processes killed by SIGKILL at each stage of ingest while signed webhooks and
uploads flow, then started again: every acknowledged request ends as exactly one recording, every
row has its object and every object its row, and the objects a crash left between put and commit
are found through their intent rows and removed after the grace period. A job whose worker dies
on every attempt goes dead with the reason, and `callrec jobs retry` finishes it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from fault_support import (
    WORKER_STAGES,
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
    spool_leftovers,
    upload_metadata,
    wait_until,
    workers,
)

from callrec.app import create_app, worker_key
from callrec.appkeys import config_key, db_key
from callrec.db import audit
from callrec.faults import KILL_AT_ENV, ONCE_DIR_ENV

PREFIX = "recordings/"
REDACT = [{"start_ms": 1000, "end_ms": 2500}]


@pytest.fixture
async def crash_client(app_config: Any, moto_endpoint: str, aiohttp_client: Any) -> Any:
    """The web side in the test's process (no workers: those run as `callrec worker`), on a bucket
    of its own. Leases of 3 s (renewed every second by the heartbeat) instead of 30 s, so that a
    killed worker's jobs are taken over in seconds."""
    bucket = make_bucket(moto_endpoint)
    cfg = app_config(
        storage=s3_storage(moto_endpoint, bucket, orphan_grace="1h"),
        ingest={"lease": "3s", "heartbeat": "1s", "retry_base": "1s", "max_attempts": 8, "workers": 2},
    )
    client = await aiohttp_client(create_app(cfg, run_workers=False))
    client.bucket = bucket
    return client


class Traffic:
    """Signed requests sent, what was acknowledged, and the duplicates sent on purpose."""

    def __init__(self, client: Any, fake: Any, audio: bytes) -> None:
        self.client, self.fake, self.audio = client, fake, audio
        self.sent = 0
        self.acknowledged: set[str] = set()  # provider recording ids answered 202
        self.duplicates_sent = 0
        self.duplicates_answered_200 = 0
        self.statuses: list[int] = []

    async def twilio(self) -> str:
        sid = new_twilio_sid()
        self.fake.media[sid] = self.audio
        await self._send(sid, lambda: post_twilio(self.client, self.fake, sid))
        return sid

    async def upload(self, name: str, *, redact: bool) -> str:
        meta = upload_metadata(name, redact=REDACT if redact else None)
        await self._send(name, lambda: post_upload(self.client, meta, self.audio))
        return name

    async def _send(self, rid: str, send: Any) -> None:
        self.sent += 1
        resp = await send()
        self.statuses.append(resp.status)
        assert resp.status == 202, await resp.text()
        self.acknowledged.add(rid)

    async def repeat_twilio(self, sid: str) -> None:
        self.duplicates_sent += 1
        resp = await post_twilio(self.client, self.fake, sid)
        self.duplicates_answered_200 += resp.status == 200

    async def repeat_upload(self, name: str, *, redact: bool) -> None:
        self.duplicates_sent += 1
        meta = upload_metadata(name, redact=REDACT if redact else None)
        resp = await post_upload(self.client, meta, self.audio)
        self.duplicates_answered_200 += resp.status == 200


async def open_jobs(client: Any) -> int:
    async with client.app[db_key].acquire() as conn:
        n: int = await conn.fetchval("SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')")
    return n


async def test_workers_killed_at_every_stage_lose_nothing_and_duplicate_nothing(
    crash_client: Any, fake_twilio: Any, audio_fixtures: Path, tmp_path: Path, counts: dict[str, Any]
) -> None:
    client = crash_client
    app = client.app
    config = app[config_key]
    audio = (audio_fixtures / "call-without-announcement.wav").read_bytes()
    traffic = Traffic(client, fake_twilio, audio)
    once = tmp_path / "kills"
    once.mkdir()
    env = process_env(config, **{KILL_AT_ENV: ",".join(WORKER_STAGES), ONCE_DIR_ENV: str(once)})

    twilio_sids = [await traffic.twilio() for _ in range(5)]
    uploads = [await traffic.upload(f"up-a{i}", redact=i % 2 == 0) for i in range(4)]
    async with workers(env, count=2, max_starts=2 + len(WORKER_STAGES) + 2) as group:
        # More traffic, and the providers' and PBXs' own retries, while workers die and come back.
        for i in range(4):
            twilio_sids.append(await traffic.twilio())
            uploads.append(await traffic.upload(f"up-b{i}", redact=i % 2 == 1))
            await traffic.repeat_twilio(twilio_sids[i])
            await group.tend()
            await asyncio.sleep(0.3)
        await traffic.repeat_upload(uploads[0], redact=True)
        await traffic.repeat_upload(uploads[1], redact=False)

        async def finished() -> bool:
            return len(list(once.iterdir())) == len(WORKER_STAGES) and await open_jobs(client) == 0

        done = await wait_until(finished, timeout=150, step=0.5, tend=group)
    assert done, (sorted(p.name for p in once.iterdir()), await open_jobs(client), group.log_tail())
    assert sorted(p.name for p in once.iterdir()) == sorted(WORKER_STAGES)  # each stage was hit
    assert group.kills == len(WORKER_STAGES), group.exits
    assert traffic.duplicates_answered_200 == traffic.duplicates_sent

    async with app[db_key].acquire() as conn:
        rows = await conn.fetch(
            "SELECT id, provider_recording_id, state, object_key, object_version, sha256 FROM recordings"
        )
        job_states = {r["state"] for r in await conn.fetch("SELECT state FROM jobs")}
        intents_before = {r["object_key"] for r in await conn.fetch("SELECT object_key FROM object_intents")}
        chain = await audit.verify(conn)
    stored = [r["provider_recording_id"] for r in rows]
    assert sorted(stored) == sorted(traffic.acknowledged)  # every acknowledged request, exactly once
    assert {r["state"] for r in rows} == {"stored"} and job_states == {"done"}
    assert chain.ok, chain.problems

    objects = bucket_versions(config.storage.endpoint_url, client.bucket, PREFIX)
    referenced = {r["object_key"]: r["object_version"] for r in rows}
    for key, version in referenced.items():
        assert objects.get(key) == [version]  # no row without its object (and one version of it)
    orphans = set(objects) - set(referenced)
    assert orphans, "a kill after a put and before its commit leaves an object behind"
    assert orphans <= intents_before  # each one announced by its intent row

    # Within the grace period the collector leaves them; after it, they go (`callrec sweep`).
    env_plain = process_env(config)
    code, out, err = await run_cli(env_plain, "storage", "orphans", "--dry-run")
    assert code == 0 and out.split() == [], err
    await asyncio.sleep(2.1)
    short = process_env(config, CALLREC_STORAGE__ORPHAN_GRACE="2s")
    code, out, err = await run_cli(short, "storage", "orphans", "--dry-run")
    assert code == 0 and set(out.split()) == intents_before, err
    code, out, err = await run_cli(short, "sweep")
    assert code == 0, err
    swept = json.loads(out.strip().splitlines()[-1])
    assert swept["orphans_deleted"] == len(intents_before) and swept["destroyed"] == 0

    objects_after = bucket_versions(config.storage.endpoint_url, client.bucket, PREFIX)
    assert {k: v for k, v in objects_after.items()} == {k: [v] for k, v in referenced.items()}
    async with app[db_key].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM object_intents") == 0
    token = await listen_token(app)
    for row in rows:  # every row's object decrypts to what the row says was stored
        assert await audio_digest(client, token, row["id"]) == row["sha256"]
    # The plaintext the killed workers had in their spool went when their successors started.
    assert spool_leftovers(config) == []

    counts.update(
        sent=traffic.sent,
        acknowledged=len(traffic.acknowledged),
        duplicates_sent=traffic.duplicates_sent,
        duplicates_stored=len(stored) - len(set(stored)),
        stored=len(rows),
        kills=group.kills,
        worker_starts=group.starts,
        orphans=len(orphans),
        orphan_intents_collected=swept["orphans_deleted"],
        peak_rss_mib_worker=peak_rss_mib(group.peak_rss_kib),
    )


async def test_a_job_whose_worker_dies_on_every_attempt_goes_dead_and_jobs_retry_finishes_it(
    app_config: Any, aiohttp_client: Any, fake_twilio: Any, audio_fixtures: Path, counts: dict[str, Any]
) -> None:
    cfg = app_config(
        ingest={"lease": "2s", "heartbeat": "1s", "retry_base": "1s", "max_attempts": 2, "workers": 1}
    )
    client = await aiohttp_client(create_app(cfg, run_workers=False))
    sid = new_twilio_sid()
    fake_twilio.media[sid] = (audio_fixtures / "call-without-announcement.wav").read_bytes()
    assert (await post_twilio(client, fake_twilio, sid)).status == 202

    async def state() -> tuple[str, int, str | None]:
        async with client.app[db_key].acquire() as conn:
            row = await conn.fetchrow("SELECT state, attempts, last_error FROM jobs")
        return row["state"], row["attempts"], row["last_error"]

    async with client.app[db_key].acquire() as conn:
        job_id = await conn.fetchval("SELECT id FROM jobs")

    async def dead() -> bool:
        return (await state())[0] == "dead"

    # Each start dies at its first decode: the job's two attempts both end in a SIGKILL.
    async with workers(process_env(cfg, **{KILL_AT_ENV: "decode"}), max_starts=4) as group:
        became_dead = await wait_until(dead, timeout=60, step=0.5, tend=group)
    assert became_dead, (await state(), group.log_tail())
    assert group.kills == 2
    _, attempts, reason = await state()
    assert reason == "PermanentError: the job's worker stopped (lease expired) on every attempt"
    async with client.app[db_key].acquire() as conn:  # and the audit log says why
        details = await conn.fetchval("SELECT details FROM audit_log WHERE action = 'ingest:failed'")
    assert reason in details

    code, out, err = await run_cli(process_env(cfg), "jobs", "retry", str(job_id))
    assert code == 0 and "queued again" in out, err
    assert await client.app[worker_key].run_once()  # any worker finishes it now
    assert (await state())[0] == "done"
    async with client.app[db_key].acquire() as conn:
        assert (
            await conn.fetchval("SELECT count(*) FROM recordings WHERE provider_recording_id = $1", sid) == 1
        )
    counts.update(sent=1, acknowledged=1, kills=2, dead_after_attempts=attempts, stored=1, duplicates=0)
