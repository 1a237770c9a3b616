"""The ingest path on S3 + AWS KMS (moto over HTTP), and what happens when a dependency is down."""

from __future__ import annotations

import hashlib
import socket
import uuid
from pathlib import Path
from typing import Any

import boto3
from twilio.request_validator import RequestValidator

from callrec.app import create_app, worker_key
from callrec.appkeys import db_key, store_key
from callrec.db import tokens

TWILIO_SID = "AC" + "0123456789abcdef" * 2
TWILIO_TOKEN = "twilio-auth-token-for-tests"


def form_for(fake: Any, sid: str) -> dict[str, str]:
    return {
        "AccountSid": TWILIO_SID,
        "CallSid": "CA" + uuid.uuid4().hex,
        "RecordingSid": sid,
        "RecordingUrl": fake.recording_url(sid),
        "RecordingStatus": "completed",
    }


async def post(client: Any, form: dict[str, str]) -> Any:
    path = "/webhooks/twilio/acme?consent=granted&basis=contract"
    sig = RequestValidator(TWILIO_TOKEN).compute_signature("https://callrec.example.test" + path, form)
    return await client.post(path, data=form, headers={"X-Twilio-Signature": sig})


def s3_and_kms(moto_endpoint: str) -> tuple[str, str]:
    bucket = f"callrec-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    kms = boto3.client("kms", endpoint_url=moto_endpoint, region_name="us-east-1")
    arn = kms.create_key(Description="callrec test KEK")["KeyMetadata"]["Arn"]
    return bucket, arn


async def test_ingest_and_listen_on_s3_with_aws_kms(
    aiohttp_client: Any, app_config: Any, fake_twilio: Any, moto_endpoint: str, audio_fixtures: Path
) -> None:
    bucket, arn = s3_and_kms(moto_endpoint)
    cfg = app_config(
        storage={
            "backend": "s3",
            "bucket": bucket,
            "endpoint_url": moto_endpoint,
            "region": "us-east-1",
            "sse": "AES256",
        },
        keys={
            "provider": "aws-kms",
            "kms_key_id": arn,
            "kms_endpoint_url": moto_endpoint,
            "kms_region": "us-east-1",
        },
    )
    client = await aiohttp_client(create_app(cfg, run_workers=False))
    original = (audio_fixtures / "call-stereo-agent-left-caller-right.wav").read_bytes()
    sid = "RE" + uuid.uuid4().hex
    fake_twilio.media[sid] = original
    assert (await post(client, form_for(fake_twilio, sid))).status == 202
    assert await client.app[worker_key].run_once()

    async with client.app[db_key].acquire() as conn:
        row = await conn.fetchrow("SELECT id, object_key, object_version FROM recordings")
        _, token = await tokens.create(conn, tenant="acme", name="t", scopes=["recordings:listen"])
    assert row["object_version"]  # versioned bucket: the exact version is recorded
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    obj = s3.get_object(Bucket=bucket, Key="recordings/" + row["object_key"], VersionId=row["object_version"])
    body = obj["Body"].read()
    assert obj.get("Metadata") == {}  # nothing about the call in object metadata
    assert obj["ServerSideEncryption"] == "AES256"
    assert (
        original[5000:5100] not in body
        and hashlib.sha256(body).hexdigest() != hashlib.sha256(original).hexdigest()
    )
    assert "RE" not in row["object_key"] and "+44" not in row["object_key"]

    resp = await client.get(
        f"/api/v1/recordings/{row['id']}/audio", headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status == 200
    assert await resp.read() == original


async def test_webhook_answers_503_and_keeps_nothing_when_the_database_is_down(
    aiohttp_client: Any, app_config: Any, fake_twilio: Any
) -> None:
    client = await aiohttp_client(create_app(app_config(), run_workers=False))
    await client.app[db_key].close()  # the database goes away under the running service
    resp = await post(client, form_for(fake_twilio, "RE" + uuid.uuid4().hex))
    assert resp.status == 503
    body = await resp.json()
    assert body["error"]["code"] == "unavailable"
    assert resp.headers["Retry-After"]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_upload_answers_503_when_the_store_is_down_and_queues_nothing(
    aiohttp_client: Any, app_config: Any, audio_fixtures: Path
) -> None:
    import hmac
    import json
    import time

    import aiohttp

    cfg = app_config(
        storage={
            "backend": "s3",
            "bucket": "callrec-down",
            "region": "us-east-1",
            "endpoint_url": f"http://127.0.0.1:{closed_port()}",
        }
    )
    client = await aiohttp_client(create_app(cfg, run_workers=False))
    writer = aiohttp.MultipartWriter("form-data", boundary="b0undary")
    part = writer.append(json.dumps({"call_id": "c1", "recording_id": "r1"}))
    part.set_content_disposition("form-data", name="metadata")
    part = writer.append((audio_fixtures / "call-with-announcement.wav").read_bytes())
    part.set_content_disposition("form-data", name="audio")

    class Sink:
        data = bytearray()

        async def write(self, chunk: bytes) -> None:
            self.data.extend(chunk)

    sink = Sink()
    await writer.write(sink)  # type: ignore[arg-type]
    body = bytes(sink.data)
    t = int(time.time())
    sig = hmac.new(b"pbx-shared-secret-for-tests", f"{t}.".encode() + body, "sha256").hexdigest()
    resp = await client.post(
        "/webhooks/upload/acme",
        data=body,
        headers={"Content-Type": writer.headers["Content-Type"], "Callrec-Signature": f"t={t},v1={sig}"},
    )
    assert resp.status == 503
    async with client.app[db_key].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM jobs") == 0
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["checks"]["store"].startswith("unavailable")


async def test_store_outage_during_ingest_delays_the_job_and_loses_nothing(
    aiohttp_client: Any, app_config: Any, fake_twilio: Any, audio_fixtures: Path
) -> None:
    """The worker cannot store: the job stays queued with its error and succeeds once the store is back."""
    client = await aiohttp_client(create_app(app_config(), run_workers=False))
    store = client.app[store_key]
    sid = "RE" + uuid.uuid4().hex
    fake_twilio.media[sid] = (audio_fixtures / "call-with-announcement.wav").read_bytes()
    assert (await post(client, form_for(fake_twilio, sid))).status == 202

    from callrec.storage.base import StoreUnavailable

    real_put = store.put_file

    async def broken_put(key: str, path: Path) -> Any:
        raise StoreUnavailable("store down for the test")

    store.put_file = broken_put  # type: ignore[method-assign]
    await client.app[worker_key].run_once()
    async with client.app[db_key].acquire() as conn:
        job = await conn.fetchrow("SELECT state, last_error FROM jobs")
        assert job["state"] == "queued" and "store down" in job["last_error"]
        await conn.execute("UPDATE jobs SET run_at = now()")
    store.put_file = real_put  # type: ignore[method-assign]
    assert await client.app[worker_key].run_once()
    async with client.app[db_key].acquire() as conn:
        assert await conn.fetchval("SELECT state FROM jobs") == "done"
        assert await conn.fetchval("SELECT count(*) FROM recordings") == 1


async def test_healthz_and_readyz(client: Any) -> None:
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["checks"] == {"database": "ok", "store": "ok"}


async def test_metrics_report_requests_jobs_and_queue(
    client: Any, fake_twilio: Any, audio_fixtures: Path
) -> None:
    sid = "RE" + uuid.uuid4().hex
    fake_twilio.media[sid] = (audio_fixtures / "call-with-announcement.wav").read_bytes()
    assert (await post(client, form_for(fake_twilio, sid))).status == 202
    bad = "RE" + uuid.uuid4().hex
    fake_twilio.media[bad] = b"not audio" * 100
    assert (await post(client, form_for(fake_twilio, bad))).status == 202
    assert (await client.post("/webhooks/twilio/acme", data={"x": "y"})).status == 403
    text = await (await client.get("/metrics")).text()
    assert 'callrec_queue_jobs{state="queued"} 2.0' in text
    while await client.app[worker_key].run_once():
        pass
    text = await (await client.get("/metrics")).text()
    assert (
        'callrec_http_requests_total{method="POST",route="/webhooks/twilio/{tenant}",status="202"} 2.0'
        in text
    )
    assert (
        'callrec_http_requests_total{method="POST",route="/webhooks/twilio/{tenant}",status="403"} 1.0'
        in text
    )
    assert 'callrec_jobs_finished_total{kind="ingest.twilio",outcome="done"} 1.0' in text
    assert 'callrec_jobs_finished_total{kind="ingest.twilio",outcome="dead"} 1.0' in text
    assert 'callrec_queue_jobs{state="dead"} 1.0' in text
    assert "callrec_queue_oldest_runnable_seconds 0.0" in text
    assert sid not in text and "acme" not in text
