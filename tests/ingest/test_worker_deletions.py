"""The worker's ``deletion.process`` job: a deletion request decided and its objects deleted in one
pass, in a batch after the commit that destroyed the keys (as the sweeper does), with the
``object.delete`` jobs as the fallback when the store or the database fails.

Recordings come in through the real Twilio path (signed webhooks, fake Twilio on loopback), on
the filesystem store and on S3 (moto over HTTP, a small versioned bucket)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from twilio_support import TWILIO_SID, TWILIO_TOKEN, ingest_twilio

from callrec.app import create_app, worker_key
from callrec.appkeys import config_key, db_key, store_key
from callrec.db import audit, jobs, tokens
from callrec.storage import StoreUnavailable

ALICE, BOB = "+12125550123", "+12125550777"  # callers (New York: one-party consent)


@pytest.fixture(params=["filesystem", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
async def client(
    aiohttp_client: Any, app_config: Any, fake_twilio: Any, moto_endpoint: str, backend: str
) -> Any:
    storage: dict[str, Any] = {}
    if backend == "s3":
        bucket = f"callrec-{uuid.uuid4().hex[:12]}"
        s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket=bucket)
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        storage = {"backend": "s3", "bucket": bucket, "endpoint_url": moto_endpoint, "region": "us-east-1"}
    cfg = app_config(
        tenants={
            "acme": {
                "twilio_account_sid": TWILIO_SID,
                "twilio_auth_token": TWILIO_TOKEN,
                "twilio_api_base": fake_twilio.base,
                "webhook_secret": "pbx-shared-secret-for-tests",
            },
        },
        **({"storage": storage} if storage else {}),
    )
    return await aiohttp_client(create_app(cfg, run_workers=False))


@pytest.fixture
def audio(audio_fixtures: Path) -> bytes:
    return (audio_fixtures / "call-without-announcement.wav").read_bytes()


async def ingest(client: Any, fake: Any, audio: bytes, *, caller: str) -> tuple[uuid.UUID, str]:
    """One stored recording (twilio_support.ingest_twilio): (id, object key)."""
    rid = await ingest_twilio(client, fake, audio, caller=caller, agent=None)
    async with client.app[db_key].acquire() as conn:
        key = await conn.fetchval("SELECT object_key FROM recordings WHERE id = $1 AND state = 'stored'", rid)
    assert key is not None
    return rid, key


async def bearer(client: Any, *scopes: str) -> dict[str, str]:
    async with client.app[db_key].acquire() as conn:
        _, token = await tokens.create(conn, tenant="acme", name="t", scopes=list(scopes))
    return {"Authorization": f"Bearer {token}"}


async def request_deletion(client: Any, phone: str) -> uuid.UUID:
    dpo = await bearer(client, "deletions:write")
    resp = await client.post("/api/v1/deletion-requests", headers=dpo, json={"subject": {"phone": phone}})
    assert resp.status == 202, await resp.text()
    return uuid.UUID((await resp.json())["id"])


async def versions(client: Any, key: str) -> int:
    return len(await client.app[store_key].list_versions(key))


async def object_jobs(client: Any) -> list[Any]:
    async with client.app[db_key].acquire() as conn:
        return list(
            await conn.fetch(
                "SELECT dedupe_key, state, result, run_at <= now() AS due FROM jobs WHERE kind = $1",
                jobs.DELETE_OBJECT,
            )
        )


async def object_deleted_entries(client: Any) -> list[Any]:
    async with client.app[db_key].acquire() as conn:
        return list(
            await conn.fetch(
                "SELECT actor, recording_id, details FROM audit_log WHERE action = $1 ORDER BY seq",
                audit.AuditAction.OBJECT_DELETED.value,
            )
        )


async def drain(client: Any) -> None:
    for _ in range(50):
        if not await client.app[worker_key].run_once():
            return


def spy_on_batches(client: Any, monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], list[Any]]]:
    """Record each ``delete_objects`` call: its keys, and the rows of those keys' recordings as
    another connection sees them at that moment (what has committed)."""
    store, pool = client.app[store_key], client.app[db_key]
    real = store.delete_objects
    calls: list[tuple[list[str], list[Any]]] = []

    async def spy(keys: list[str]) -> dict[str, int]:
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT state, wrapped_key, from_sealed, from_hash FROM recordings"
                " WHERE id IN (SELECT recording_id FROM audit_log WHERE action = 'recording:destroyed')"
            )
        calls.append((list(keys), list(rows)))
        result: dict[str, int] = await real(keys)
        return result

    monkeypatch.setattr(store, "delete_objects", spy)
    return calls


async def test_a_deletion_request_is_finished_in_one_pass(
    client: Any, fake_twilio: Any, audio: bytes, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = [await ingest(client, fake_twilio, audio, caller=ALICE) for _ in range(3)]
    bob_id, bob_key = await ingest(client, fake_twilio, audio, caller=BOB)
    batches = spy_on_batches(client, monkeypatch)
    request_id = await request_deletion(client, ALICE)

    assert await client.app[worker_key].run_once()  # the deletion.process job, and nothing else

    # One batch with every object of the subject, sent only once the keys were destroyed.
    assert len(batches) == 1
    keys, seen = batches[0]
    assert sorted(keys) == sorted(key for _, key in alice)
    assert len(seen) == 3
    assert all(r["state"] == "destroyed" and r["wrapped_key"] is None for r in seen)
    assert all(r["from_sealed"] is None and r["from_hash"] is None for r in seen)
    for _, key in alice:
        assert await versions(client, key) == 0
    assert await versions(client, bob_key) == 1
    if backend == "filesystem":  # no empty per-recording directory is left behind either
        root = client.app[config_key].storage_path
        assert [p for p in root.rglob("*") if p.is_dir() and not any(p.iterdir())] == []
        assert {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} == {bob_key}

    async with client.app[db_key].acquire() as conn:
        status = await conn.fetchval("SELECT status FROM deletion_requests WHERE id = $1", request_id)
        open_jobs = await conn.fetch("SELECT kind, state FROM jobs WHERE state <> 'done'")
        bob_state = await conn.fetchval("SELECT state FROM recordings WHERE id = $1", bob_id)
        assert (await audit.verify(conn)).ok
    assert status == "completed" and bob_state == "stored"
    assert open_jobs == []  # nothing left for a second pass
    object_job_rows = await object_jobs(client)
    assert sorted(r["dedupe_key"] for r in object_job_rows) == sorted(key for _, key in alice)
    assert {(r["state"], r["result"]) for r in object_job_rows} == {("done", '{"inline": true}')}
    entries = await object_deleted_entries(client)
    assert sorted(e["recording_id"] for e in entries) == sorted(rid for rid, _ in alice)
    assert {e["actor"] for e in entries} == {"system:worker"}
    assert {e["details"] for e in entries} == {'{"versions": 1}'}


async def test_a_held_recording_never_reaches_the_batch(
    client: Any, fake_twilio: Any, audio: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    (held, held_key), (free, free_key) = [
        await ingest(client, fake_twilio, audio, caller=ALICE) for _ in range(2)
    ]
    legal = await bearer(client, "holds:write")
    resp = await client.post(
        "/api/v1/legal-holds",
        headers=legal,
        json={"matter": "Case 7", "reason": "litigation", "scope": {"recording_ids": [str(held)]}},
    )
    assert resp.status == 201
    hold_id = (await resp.json())["id"]
    await drain(client)  # the hold's sync job
    batches = spy_on_batches(client, monkeypatch)
    request_id = await request_deletion(client, ALICE)

    assert await client.app[worker_key].run_once()

    assert [keys for keys, _ in batches] == [[free_key]]
    assert await versions(client, held_key) == 1 and await versions(client, free_key) == 0
    async with client.app[db_key].acquire() as conn:
        status = await conn.fetchval("SELECT status FROM deletion_requests WHERE id = $1", request_id)
        held_row = await conn.fetchrow("SELECT state, wrapped_key FROM recordings WHERE id = $1", held)
        free_state = await conn.fetchval("SELECT state FROM recordings WHERE id = $1", free)
    assert status == "partially_completed" and free_state == "destroyed"
    assert held_row["state"] == "stored" and held_row["wrapped_key"] is not None
    assert [r["dedupe_key"] for r in await object_jobs(client)] == [free_key]

    # Released: the waiting deletion happens, its object through its object.delete job.
    resp = await client.post(
        f"/api/v1/legal-holds/{hold_id}/release", headers=legal, json={"reason": "settled"}
    )
    assert resp.status == 200 and (await resp.json())["erased_now"] == [str(held)]
    await drain(client)
    assert await versions(client, held_key) == 0
    async with client.app[db_key].acquire() as conn:
        assert (
            await conn.fetchval("SELECT status FROM deletion_requests WHERE id = $1", request_id)
            == "completed"
        )
        assert (await audit.verify(conn)).ok


async def test_a_store_failure_leaves_the_objects_to_their_jobs_due_at_once(
    client: Any, fake_twilio: Any, audio: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = [await ingest(client, fake_twilio, audio, caller=ALICE) for _ in range(2)]
    store = client.app[store_key]

    async def down(keys: list[str]) -> dict[str, int]:
        raise StoreUnavailable("the store is down")

    monkeypatch.setattr(store, "delete_objects", down)
    request_id = await request_deletion(client, ALICE)
    assert await client.app[worker_key].run_once()

    async with client.app[db_key].acquire() as conn:
        status = await conn.fetchval("SELECT status FROM deletion_requests WHERE id = $1", request_id)
        keys_left = await conn.fetchval(
            "SELECT count(*) FROM recordings WHERE id = ANY($1::uuid[]) AND wrapped_key IS NOT NULL",
            [rid for rid, _ in alice],
        )
    assert status == "completed" and keys_left == 0  # the keys are gone: the objects are unreadable
    for _, key in alice:
        assert await versions(client, key) == 1
    rows = await object_jobs(client)
    assert {(r["state"], r["due"]) for r in rows} == {("queued", True)}  # not held back: due now
    assert await object_deleted_entries(client) == []

    monkeypatch.undo()  # the store is back: the workers take the jobs one by one
    await drain(client)
    for _, key in alice:
        assert await versions(client, key) == 0
    assert {r["state"] for r in await object_jobs(client)} == {"done"}
    entries = await object_deleted_entries(client)
    assert sorted(e["recording_id"] for e in entries) == sorted(rid for rid, _ in alice)
    async with client.app[db_key].acquire() as conn:
        assert (await audit.verify(conn)).ok


async def test_a_database_failure_after_the_batch_leaves_the_held_back_jobs(
    client: Any, fake_twilio: Any, audio: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The objects went, but marking their jobs done failed: the request's own job stays done
    (it is not failed or retried), and the object.delete jobs still run once their grace is up,
    finding nothing more to delete."""
    alice = [await ingest(client, fake_twilio, audio, caller=ALICE) for _ in range(2)]

    async def broken(conn: Any, erased: Any) -> Any:
        raise ConnectionResetError("the database went away")

    monkeypatch.setattr(jobs, "finish_object_deletions", broken)
    request_id = await request_deletion(client, ALICE)
    assert await client.app[worker_key].run_once()
    monkeypatch.undo()

    for _, key in alice:
        assert await versions(client, key) == 0
    async with client.app[db_key].acquire() as conn:
        status = await conn.fetchval("SELECT status FROM deletion_requests WHERE id = $1", request_id)
        process_job = await conn.fetchrow(
            "SELECT state, last_error FROM jobs WHERE kind = 'deletion.process'"
        )
        failures = await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'ingest:failed'")
        assert await jobs.claim(conn, worker_id="w", lease=timedelta(minutes=1)) is None  # held back
        await conn.execute("UPDATE jobs SET run_at = now() WHERE kind = $1", jobs.DELETE_OBJECT)  # grace over
    assert status == "completed" and failures == 0
    assert (process_job["state"], process_job["last_error"]) == ("done", None)
    await drain(client)
    assert {r["state"] for r in await object_jobs(client)} == {"done"}
    entries = await object_deleted_entries(client)
    assert sorted(e["recording_id"] for e in entries) == sorted(rid for rid, _ in alice)
    assert {e["details"] for e in entries} == {'{"versions": 0}'}
