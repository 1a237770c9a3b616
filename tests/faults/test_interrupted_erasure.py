"""The sweeper, the erasure of a deletion request and the release of a legal hold, each killed by
SIGKILL half way (through the fault hook, in `callrec sweep`, `callrec worker` and `callrec serve`
subprocesses): a rerun finishes the work, and nothing a hold covers is touched, in the database
or in the bucket (S3 Object Lock legal holds included)."""

from __future__ import annotations

import json
import signal
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fault_support import (
    audio_digest,
    bucket_versions,
    free_port,
    listen_token,
    make_bucket,
    new_twilio_sid,
    post_twilio,
    process_env,
    run_cli,
    s3_storage,
    serving,
    wait_until,
    workers,
)

from callrec.app import create_app, worker_key
from callrec.appkeys import config_key, db_key, store_key
from callrec.db import audit, tokens
from callrec.faults import KILL_AT_ENV, ONCE_DIR_ENV

PREFIX = "recordings/"


@pytest.fixture
async def held_client(app_config: Any, moto_endpoint: str, aiohttp_client: Any) -> Any:
    """The app (workers off) on a bucket with Object Lock, where holds are mirrored as S3 legal holds."""
    bucket = make_bucket(moto_endpoint, object_lock=True)
    cfg = app_config(
        storage=s3_storage(moto_endpoint, bucket),
        ingest={"lease": "2s", "heartbeat": "1s", "retry_base": "1s", "workers": 1},
        retention={"sweep_in_serve": False},
    )
    client = await aiohttp_client(create_app(cfg, run_workers=False))
    client.bucket = bucket
    client.endpoint = moto_endpoint
    return client


async def drain(client: Any, *, limit: int = 100) -> int:
    """Run the in-process worker until no job is due (at most ``limit`` jobs)."""
    done = 0
    while done < limit and await client.app[worker_key].run_once():
        done += 1
    return done


async def ingest(client: Any, fake: Any, audio: bytes, n: int) -> list[Any]:
    for _ in range(n):
        sid = new_twilio_sid()
        fake.media[sid] = audio
        assert (await post_twilio(client, fake, sid)).status == 202
    await drain(client)
    async with client.app[db_key].acquire() as conn:
        rows = await conn.fetch(
            """SELECT id, object_key, object_version, sha256 FROM recordings
               WHERE state = 'stored' ORDER BY stored_at"""
        )
    assert len(rows) == n
    return list(rows)


async def token(client: Any, *scopes: str) -> str:
    async with client.app[db_key].acquire() as conn:
        _, secret = await tokens.create(
            conn, tenant="acme", name=f"t-{uuid.uuid4().hex[:6]}", scopes=list(scopes)
        )
    return secret


async def place_hold(client: Any, bearer: str, rows: list[Any], *, base: str = "") -> str:
    body = {"matter": "M-7", "reason": "claim", "scope": {"recording_ids": [str(r["id"]) for r in rows]}}
    headers = {"Authorization": f"Bearer {bearer}"}
    resp = await client.post("/api/v1/legal-holds", json=body, headers=headers)
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["id"])


async def assert_untouched(client: Any, held: list[Any], *, locked: bool = True) -> None:
    """Held recordings: still stored, every version of their object there and (mirrored holds)
    under an S3 legal hold, and the audio decrypts to what was stored."""
    app = client.app
    listen = await listen_token(app)
    objects = bucket_versions(client.endpoint, client.bucket, PREFIX)
    async with app[db_key].acquire() as conn:
        for row in held:
            now = await conn.fetchrow(
                "SELECT state, object_key, object_version FROM recordings WHERE id = $1", row["id"]
            )
            assert (now["state"], now["object_key"], now["object_version"]) == (
                "stored",
                row["object_key"],
                row["object_version"],
            )
            assert objects[row["object_key"]] == [row["object_version"]]
            if locked:
                assert await app[store_key].legal_hold(row["object_key"], version_id=row["object_version"])
            assert await audio_digest(client, listen, row["id"]) == row["sha256"]


async def time_passes_for_held_back_object_jobs(client: Any) -> int:
    """The object.delete jobs a killed sweeper or worker held back for its own batch become due
    after erasure.INLINE_DELETE_GRACE (10 minutes): move their clock instead of waiting."""
    async with client.app[db_key].acquire() as conn:
        status = await conn.execute(
            """UPDATE jobs SET run_at = now()
               WHERE kind = 'object.delete' AND state = 'queued' AND run_at > now()"""
        )
    return int(status.split()[-1])


async def test_a_sweep_killed_half_way_is_finished_by_the_next_and_never_touches_held_recordings(
    held_client: Any, fake_twilio: Any, audio_fixtures: Path, counts: dict[str, Any]
) -> None:
    client = held_client
    config = client.app[config_key]
    rows = await ingest(
        client, fake_twilio, (audio_fixtures / "call-without-announcement.wav").read_bytes(), 8
    )
    held, free = rows[:2], rows[2:]
    await place_hold(client, await token(client, "holds:write"), held)
    await drain(client)  # the hold is mirrored onto the objects (Object Lock legal hold)
    async with client.app[db_key].acquire() as conn:
        await conn.execute("UPDATE recordings SET expires_at = now() - interval '1 day'")

    # Batches of two; killed once the second batch's tombstones have committed, before any object goes.
    env = process_env(config, CALLREC_RETENTION__SWEEP_BATCH="2")
    code, _, err = await run_cli({**env, KILL_AT_ENV: "sweep.batch:2"}, "sweep")
    assert code == -signal.SIGKILL, err
    async with client.app[db_key].acquire() as conn:
        destroyed_first = await conn.fetchval("SELECT count(*) FROM recordings WHERE state = 'destroyed'")
    assert destroyed_first == 4
    await assert_untouched(client, held)

    code, out, err = await run_cli(env, "sweep")  # the rerun
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["destroyed"] == len(free) - destroyed_first and report["held"] == len(held)
    held_back = await time_passes_for_held_back_object_jobs(client)
    assert held_back == destroyed_first  # the killed run's objects wait for their durable jobs
    await drain(client)

    async with client.app[db_key].acquire() as conn:
        states = {r["id"]: r["state"] for r in await conn.fetch("SELECT id, state FROM recordings")}
        open_jobs = await conn.fetchval("SELECT count(*) FROM jobs WHERE state NOT IN ('done')")
        chain = await audit.verify(conn)
    assert all(states[r["id"]] == "destroyed" for r in free)
    assert set(bucket_versions(client.endpoint, client.bucket, PREFIX)) == {r["object_key"] for r in held}
    assert open_jobs == 0 and chain.ok, chain.problems
    await assert_untouched(client, held)
    counts.update(
        recordings=len(rows),
        held=len(held),
        destroyed_before_kill=destroyed_first,
        destroyed_by_rerun=report["destroyed"],
        objects_left_to_jobs=held_back,
        objects_remaining=len(held),
        held_touched=0,
    )


async def test_erasure_of_a_deletion_request_killed_half_way_is_finished_by_a_restarted_worker(
    held_client: Any, fake_twilio: Any, audio_fixtures: Path, tmp_path: Path, counts: dict[str, Any]
) -> None:
    client = held_client
    config = client.app[config_key]
    rows = await ingest(
        client, fake_twilio, (audio_fixtures / "call-without-announcement.wav").read_bytes(), 6
    )
    held = rows[:1]
    await place_hold(client, await token(client, "holds:write"), held)
    await drain(client)
    resp = await client.post(
        "/api/v1/deletion-requests",
        json={"subject": {"recording_ids": [str(r["id"]) for r in rows]}},
        headers={"Authorization": f"Bearer {await token(client, 'deletions:write', 'deletions:read')}"},
    )
    assert resp.status == 202, await resp.text()
    request_id = (await resp.json())["id"]

    # The first worker dies inside the decision (after three recordings: all of it rolls back),
    # the second after the decision committed and the objects went, before their jobs were closed.
    once = tmp_path / "kills"
    once.mkdir()
    env = process_env(config, **{KILL_AT_ENV: "deletion.decide:3,erasure.objects", ONCE_DIR_ENV: str(once)})

    async def settled() -> bool:
        async with client.app[db_key].acquire() as conn:
            status = await conn.fetchval(
                "SELECT status FROM deletion_requests WHERE id = $1", uuid.UUID(request_id)
            )
            running = await conn.fetchval("SELECT count(*) FROM jobs WHERE state = 'running'")
        return bool(status == "partially_completed" and running == 0 and len(list(once.iterdir())) == 2)

    async with workers(env, max_starts=4) as group:
        finished = await wait_until(settled, timeout=90, step=0.5, tend=group)
    assert finished, group.log_tail()
    assert group.kills == 2
    await assert_untouched(client, held)
    await time_passes_for_held_back_object_jobs(client)
    await drain(client)

    async with client.app[db_key].acquire() as conn:
        outcomes = sorted(
            r["outcome"]
            for r in await conn.fetch(
                "SELECT outcome FROM deletion_outcomes WHERE request_id = $1", uuid.UUID(request_id)
            )
        )
        destroyed = await conn.fetchval("SELECT count(*) FROM recordings WHERE state = 'destroyed'")
        chain = await audit.verify(conn)
    assert outcomes == ["deleted"] * 5 + ["withheld_legal_hold"]  # each decided once, none twice
    assert destroyed == 5 and chain.ok, chain.problems
    assert set(bucket_versions(client.endpoint, client.bucket, PREFIX)) == {r["object_key"] for r in held}
    await assert_untouched(client, held)
    counts.update(recordings=len(rows), held=len(held), kills=group.kills, deleted=destroyed, held_touched=0)


async def test_a_hold_release_killed_half_way_is_finished_by_a_rerun_and_keeps_what_another_hold_covers(
    held_client: Any, fake_twilio: Any, audio_fixtures: Path, tmp_path: Path, counts: dict[str, Any]
) -> None:
    """Hold A covers r0-r6 and hold B covers r3; a deletion request waits on r0-r3. Releasing A in
    `callrec serve` is killed in the middle of erasing what waited on it (the transaction rolls
    back: A is still in force); released again, r0-r2 go and r3 stays under B. Mirroring the
    release onto S3 Object Lock in `callrec worker` is killed after its first object; the
    restarted worker unlocks r4-r6 and leaves r3 locked."""
    client = held_client
    config = client.app[config_key]
    rows = await ingest(
        client, fake_twilio, (audio_fixtures / "call-without-announcement.wav").read_bytes(), 7
    )
    legal = await token(client, "holds:write", "holds:read")
    hold_a = await place_hold(client, legal, rows)
    await place_hold(client, legal, rows[3:4])
    await drain(client)
    resp = await client.post(
        "/api/v1/deletion-requests",
        json={"subject": {"recording_ids": [str(r["id"]) for r in rows[:4]]}},
        headers={"Authorization": f"Bearer {await token(client, 'deletions:write')}"},
    )
    assert resp.status == 202
    await drain(client)
    await assert_untouched(client, rows)  # all withheld so far

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    release = {"reason": "settled"}
    headers = {"Authorization": f"Bearer {legal}"}
    env = process_env(config)
    async with (
        serving({**env, KILL_AT_ENV: "hold.release:2"}, port=port) as server,
        aiohttp.ClientSession() as http,
    ):
        with pytest.raises(aiohttp.ClientError):
            await http.post(f"{base}/api/v1/legal-holds/{hold_a}/release", json=release, headers=headers)
        await server.wait()
    assert server.returncode == -signal.SIGKILL
    async with client.app[db_key].acquire() as conn:
        active = await conn.fetchval(
            "SELECT released_at IS NULL FROM legal_holds WHERE id = $1", uuid.UUID(hold_a)
        )
    assert active  # the killed release rolled back whole
    await assert_untouched(client, rows)

    again = await client.post(f"/api/v1/legal-holds/{hold_a}/release", json=release, headers=headers)
    assert again.status == 200, await again.text()  # the rerun, in any web process
    erased_now = (await again.json())["erased_now"]
    assert sorted(erased_now) == sorted(str(r["id"]) for r in rows[:3])

    # Mirroring the release: killed after unlocking the first object; a restarted worker finishes.
    once = tmp_path / "kills"
    once.mkdir()

    async def mirrored() -> bool:
        async with client.app[db_key].acquire() as conn:
            n = await conn.fetchval(
                "SELECT count(*) FROM jobs WHERE state IN ('queued', 'running') AND run_at <= now()"
            )
        return bool(n == 0 and len(list(once.iterdir())) == 1)

    async with workers({**env, KILL_AT_ENV: "hold.sync:2", ONCE_DIR_ENV: str(once)}, max_starts=3) as group:
        finished = await wait_until(mirrored, timeout=90, step=0.5, tend=group)
    assert finished and group.kills == 1, group.log_tail()

    store = client.app[store_key]
    for row in rows[4:]:
        assert not await store.legal_hold(row["object_key"], version_id=row["object_version"])
    await assert_untouched(client, rows[3:4])  # still under hold B: stored, whole and locked
    await assert_untouched(client, rows[4:], locked=False)
    async with client.app[db_key].acquire() as conn:
        destroyed = {r["id"] for r in await conn.fetch("SELECT id FROM recordings WHERE state = 'destroyed'")}
        chain = await audit.verify(conn)
    assert destroyed == {r["id"] for r in rows[:3]} and chain.ok, chain.problems
    objects = bucket_versions(client.endpoint, client.bucket, PREFIX)
    assert not any(r["object_key"] in objects for r in rows[:3])
    counts.update(recordings=len(rows), kills=2, erased_after_release=len(erased_now), held_touched=0)
