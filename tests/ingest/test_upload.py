"""PBX uploads: multipart metadata + audio, signed with a timestamped HMAC-SHA256."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from callrec.app import worker_key
from callrec.appkeys import config_key, db_key

SECRET = "pbx-shared-secret-for-tests"
PBX_CLIENT = Path(__file__).resolve().parents[2] / "infra" / "pbx" / "callrec-upload"


def multipart_body(metadata: dict[str, Any] | bytes, audio: bytes | None) -> tuple[bytes, str]:
    writer = aiohttp.MultipartWriter("form-data", boundary="callrec-test-boundary")
    meta = metadata if isinstance(metadata, bytes) else json.dumps(metadata).encode()
    part = writer.append(meta, {"Content-Type": "application/json"})
    part.set_content_disposition("form-data", name="metadata")
    if audio is not None:
        part = writer.append(audio, {"Content-Type": "audio/wav"})
        part.set_content_disposition("form-data", name="audio", filename="call.wav")

    class Sink:
        def __init__(self) -> None:
            self.data = bytearray()

        async def write(self, chunk: bytes) -> None:
            self.data.extend(chunk)

    import asyncio

    sink = Sink()
    asyncio.get_event_loop()
    return writer, sink  # type: ignore[return-value]


async def encode(metadata: dict[str, Any] | bytes, audio: bytes | None) -> tuple[bytes, str]:
    writer, sink = multipart_body(metadata, audio)
    await writer.write(sink)  # type: ignore[attr-defined]
    return bytes(sink.data), writer.headers["Content-Type"]  # type: ignore[attr-defined]


def sign(body: bytes, *, secret: str = SECRET, t: int | None = None) -> str:
    ts = int(time.time()) if t is None else t
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


async def upload(
    client: Any,
    metadata: dict[str, Any] | bytes,
    audio: bytes | None,
    *,
    tenant: str = "acme",
    signature: str | None = None,
    secret: str = SECRET,
    t: int | None = None,
) -> Any:
    body, content_type = await encode(metadata, audio)
    sig = signature if signature is not None else sign(body, secret=secret, t=t)
    return await client.post(
        f"/webhooks/upload/{tenant}",
        data=body,
        headers={"Content-Type": content_type, "Callrec-Signature": sig},
    )


META = {
    "call_id": "pbx-call-1",
    "recording_id": "pbx-rec-1",
    "started_at": "2026-11-23T10:00:00+00:00",
    "from": "+1 212 555 0123",  # New York: one-party consent
    "to": "+16465550199",
    "direction": "inbound",
    "consent": "granted",
    "basis": "consent",
    "announcement": "notice-nb",
    "language": "nb-NO",
}


async def test_signed_upload_is_stored(client: Any, audio_fixtures: Path) -> None:
    audio = (audio_fixtures / "call-stereo-agent-left-caller-right.wav").read_bytes()
    resp = await upload(client, META, audio)
    assert resp.status == 202, await resp.text()
    assert await client.app[worker_key].run_once()
    async with client.app[db_key].acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM recordings")
        job = await conn.fetchrow("SELECT state, payload::text AS payload FROM jobs")
    assert job["state"] == "done"
    assert "5550123" not in job["payload"] and "6465550199" not in job["payload"]
    assert row["provider"] == "upload" and row["call_id"] == "pbx-call-1"
    assert row["channels"] == 2 and row["sample_rate"] == 8000
    assert row["sha256"] == hashlib.sha256(audio).hexdigest()
    consent = json.loads(row["consent"])
    assert (consent["status"], consent["basis"]) == ("granted", "consent")
    assert row["state"] == "stored"
    assert row["from_hash"] is not None and row["to_hash"] is not None


async def test_duplicate_upload_is_not_stored_twice(client: Any, audio_fixtures: Path) -> None:
    audio = (audio_fixtures / "call-with-announcement.wav").read_bytes()
    assert (await upload(client, META, audio)).status == 202
    again = await upload(client, META, audio)
    assert again.status == 200 and (await again.json())["status"] == "duplicate"
    storage = client.app[config_key].storage_path
    assert len([p for p in storage.rglob("*") if p.is_file()]) == 1


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"signature": "t=1,v1=" + "0" * 64}, "signature_expired"),
        ({"t_offset": -301}, "signature_expired"),
        ({"t_offset": 400}, "signature_expired"),
        ({"secret": "wrong-secret"}, "invalid_signature"),
        ({"signature": "garbage"}, "invalid_signature"),
        ({"signature": ""}, "invalid_signature"),
    ],
)
async def test_bad_signatures_are_403(
    client: Any, audio_fixtures: Path, kwargs: dict[str, Any], code: str
) -> None:
    audio = (audio_fixtures / "call-with-announcement.wav").read_bytes()
    if "t_offset" in kwargs:  # taken now, not when the tests were collected minutes ago
        kwargs = {"t": int(time.time()) + kwargs["t_offset"]}
    resp = await upload(client, META, audio, **kwargs)
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == code
    async with client.app[db_key].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM jobs") == 0


async def test_body_changed_after_signing_is_403(client: Any, audio_fixtures: Path) -> None:
    audio = (audio_fixtures / "call-with-announcement.wav").read_bytes()
    body, content_type = await encode(META, audio)
    sig = sign(body)
    tampered = body.replace(b"pbx-call-1", b"pbx-call-2")
    resp = await client.post(
        "/webhooks/upload/acme",
        data=tampered,
        headers={"Content-Type": content_type, "Callrec-Signature": sig},
    )
    assert resp.status == 403


@pytest.mark.parametrize(
    ("metadata", "audio", "code"),
    [
        (b"{not json", b"RIFF....", "invalid_metadata"),
        ({**META, "caller_name": "Alice"}, b"RIFF....", "invalid_metadata"),
        ({k: v for k, v in META.items() if k != "call_id"}, b"RIFF....", "invalid_metadata"),
        ({**META, "from": "call me"}, b"RIFF....", "invalid_phone"),
        ({**META, "consent": "perhaps"}, b"RIFF....", "invalid_tag"),
        ({**META, "started_at": "yesterday"}, b"RIFF....", "invalid_metadata"),
        (META, None, "invalid_multipart"),
        (META, b"", "empty_audio"),
    ],
)
async def test_bad_uploads_are_400_and_change_nothing(
    client: Any, metadata: Any, audio: Any, code: str
) -> None:
    resp = await upload(client, metadata, audio)
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["error"]["code"] == code
    async with client.app[db_key].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM jobs") == 0
    storage = client.app[config_key].storage_path
    assert not [p for p in storage.rglob("*") if p.is_file()]


async def test_oversized_upload_is_413(aiohttp_client: Any, app_config: Any, audio_fixtures: Path) -> None:
    from callrec.app import create_app

    cfg = app_config(ingest={"media_hosts": ["127.0.0.1"], "max_media_mb": 1})
    client = await aiohttp_client(create_app(cfg, run_workers=False))
    audio = b"\0" * (3 * 1024 * 1024)
    resp = await upload(client, META, audio)
    assert resp.status == 413


async def test_non_audio_upload_ends_dead_and_leaves_no_object(client: Any) -> None:
    resp = await upload(client, META, b"%PDF-1.7 this is not audio at all" * 100)
    assert resp.status == 202
    await client.app[worker_key].run_once()
    async with client.app[db_key].acquire() as conn:
        job = await conn.fetchrow("SELECT state, last_error FROM jobs")
        assert await conn.fetchval("SELECT count(*) FROM recordings") == 0
    assert job["state"] == "dead" and "undecodable" in job["last_error"]
    storage = client.app[config_key].storage_path
    assert not [p for p in storage.rglob("*") if p.is_file()]


async def test_a_truncated_upload_is_dead_after_one_attempt(client: Any, audio_fixtures: Path) -> None:
    """The bytes were received whole and hashed at the webhook: a file that was cut short before it
    was sent stays cut short, so retrying cannot help (a truncated *download* is fetched again:
    tests/ingest/test_twilio.py)."""
    whole = (audio_fixtures / "call-with-announcement.wav").read_bytes()
    assert (await upload(client, META, whole[: len(whole) // 2])).status == 202
    assert await client.app[worker_key].run_once()
    async with client.app[db_key].acquire() as conn:
        job = await conn.fetchrow("SELECT state, attempts, last_error FROM jobs")
        assert await conn.fetchval("SELECT count(*) FROM recordings") == 0
        assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'ingest:failed'") == 1
    assert (job["state"], job["attempts"]) == ("dead", 1)
    assert "truncated" in job["last_error"]
    assert not await client.app[worker_key].run_once()  # nothing left to retry
    storage = client.app[config_key].storage_path
    assert not [p for p in storage.rglob("*") if p.is_file()]  # the staged ciphertext is gone


async def test_the_shipped_pbx_client_uploads(aiohttp_server: Any, config: Any, audio_fixtures: Path) -> None:
    """infra/pbx/callrec-upload, run as a PBX would, against the real app on 127.0.0.1."""
    import asyncio
    import os
    import socket
    import sys

    from callrec.app import create_app

    app = create_app(config, run_workers=False)
    server = await aiohttp_server(app)
    script = PBX_CLIENT
    argv = [
        sys.executable,
        str(script),
        "--url",
        str(server.make_url("/webhooks/upload/acme")),
        "--call-id",
        "ast-1",
        "--recording-id",
        "ast-1-r1",
        "--from",
        "+12125550123",
        "--basis",
        "contract",
        "--consent",
        "granted",
        str(audio_fixtures / "call-with-announcement.wav"),
    ]
    env = {**os.environ, "CALLREC_WEBHOOK_SECRET": SECRET}
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert json.loads(out)["status"] == "queued"
    env["CALLREC_WEBHOOK_SECRET"] = "wrong"
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    # Refused: retrying the same bytes cannot help, so the PBX must not loop on it (exit 3, not 1).
    assert proc.returncode == 3 and b"invalid_signature" in err
    with socket.socket() as closed:  # a port nobody listens on: callrec unreachable, retry later
        closed.bind(("127.0.0.1", 0))
        argv[3] = f"http://127.0.0.1:{closed.getsockname()[1]}/webhooks/upload/acme"
        proc = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1, err.decode()
    assert await app[worker_key].run_once()
    async with app[db_key].acquire() as conn:
        assert await conn.fetchval("SELECT provider_recording_id FROM recordings") == "ast-1-r1"


async def test_a_claim_whose_lease_ran_out_does_not_fail_the_job_or_drop_the_upload(
    client: Any, audio_fixtures: Path
) -> None:
    """A slow loop whose lease ran out finds the job claimed again, by another loop of the same
    worker (same worker id) or by another worker: its failure is not recorded, its completion does
    not count, and the uploaded ciphertext the new holder is using stays."""
    from callrec.db import jobs

    audio = (audio_fixtures / "call-with-announcement.wav").read_bytes()
    assert (await upload(client, META, audio)).status == 202
    storage = client.app[config_key].storage_path
    stored = [p for p in storage.rglob("*") if p.is_file()]
    assert len(stored) == 1
    worker = client.app[worker_key]
    stale = await worker.claim()
    assert stale is not None
    async with client.app[db_key].acquire() as conn:
        await conn.execute("UPDATE jobs SET lease_until = now() - interval '1 second'")
    again = await worker.claim()  # the same worker, another of its loops
    assert again is not None and again.id == stale.id and again.locked_by != stale.locked_by
    assert await worker._failed(stale, "audio undecodable: late", permanent=True) == "lease_lost"
    async with client.app[db_key].acquire() as conn:
        assert not await jobs.complete(conn, stale.id, worker_id=stale.locked_by or "")
        row = await conn.fetchrow("SELECT state, locked_by, last_error FROM jobs WHERE id = $1", stale.id)
        failed = await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'ingest:failed'")
    assert [p for p in storage.rglob("*") if p.is_file()] == stored
    assert (row["state"], row["locked_by"], row["last_error"]) == ("running", again.locked_by, None)
    assert failed == 0
    # The new holder finishes the job as usual.
    await worker.process(again)
    async with client.app[db_key].acquire() as conn:
        assert await conn.fetchval("SELECT state FROM jobs WHERE id = $1", stale.id) == "done"
        assert await conn.fetchval("SELECT count(*) FROM recordings") == 1
