"""Hostile input against the caps (issue 9, defect 1 and the fault suite's resource caps): a
decompression bomb through redaction, a WAV that declares 2 GiB, a slow-loris upload and a media host
that trickles bytes. Each ends as a bounded, clear failure while /healthz keeps answering, and each
test prints its counts (sent, acknowledged, stored, peak RSS).

Everything runs in this process against the real app (aiohttp's test server on 127.0.0.1, the real
worker, a real PostgreSQL); RSS is this process's own, its peak reset (/proc/self/clear_refs) just
before the work measured. ffmpeg's own peak is not taken here: a child's ru_maxrss starts at its
parent's RSS when forked; bench/redaction_memory.py measures it.

    PYTHONPATH=$PWD .venv/bin/pytest -s tests/faults/test_resource_caps.py
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import struct
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import imageio_ffmpeg
import pytest
from twilio.request_validator import RequestValidator
from twilio_support import PUBLIC_BASE, TWILIO_SID, TWILIO_TOKEN

from callrec import spool
from callrec.app import create_app, worker_key
from callrec.appkeys import config_key, db_key
from callrec.config import ConfigError, config_from_mapping

WEBHOOK_SECRET = "pbx-shared-secret-for-tests"  # tenant acme's, as tests/conftest.py configures it
# How much this process's RSS may grow while the worker handles one hostile file. The decode runs in
# ffmpeg; what grows here is the spool and a few MiB of buffers. Before the fix: +1,970 MiB.
RSS_GROWTH_LIMIT_MIB = 128


# --- measuring -----------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


class Peak:
    """This process's peak RSS over a stretch of work: VmHWM after resetting it to the current RSS."""

    def __enter__(self) -> Peak:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux >= 4.0)
        self.before_mib = _status_kib("VmRSS") / 1024
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak_mib = _status_kib("VmHWM") / 1024
        self.growth_mib = self.peak_mib - self.before_mib


async def _work_while_watching(client: Any) -> tuple[bool, int]:
    """One worker step, while /healthz is asked every 50 ms: (worked, health answers)."""
    task = asyncio.create_task(client.app[worker_key].run_once())
    answers = 0
    async with asyncio.timeout(50):
        while not task.done():
            resp = await client.get("/healthz")
            assert resp.status == 200
            answers += 1
            await asyncio.sleep(0.05)
    return await task, answers


async def _job(client: Any) -> Any:
    async with client.app[db_key].acquire() as conn:
        return await conn.fetchrow("SELECT state, attempts, last_error FROM jobs WHERE kind LIKE 'ingest.%'")


async def _recordings(client: Any) -> int:
    async with client.app[db_key].acquire() as conn:
        count: int = await conn.fetchval("SELECT count(*) FROM recordings WHERE state <> 'rejected'")
        return count


def _stored_objects(client: Any) -> int:
    root = client.app[config_key].storage_path
    return len([p for p in root.rglob("*") if p.is_file()]) if root.exists() else 0


# --- inputs --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The file from the issue: 12 hours of 8 kHz mono digital silence as FLAC, a few MB on disk
    and 691 MB once decoded. Made in a temporary directory, never committed."""
    path = tmp_path_factory.mktemp("bomb") / "silence-12h.flac"
    silence = ["-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", str(12 * 3600)]
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", *silence, "-c:a", "flac", str(path)], check=True
    )
    yield path


def _wav_declaring(data_bytes: int, present: bytes, *, tag: int, bits: int) -> bytes:
    """A mono 8 kHz WAV whose header announces ``data_bytes`` of audio followed by ``present``."""
    block = bits // 8
    fmt = struct.pack("<HHIIHH", tag, 1, 8000, 8000 * block, block, bits)
    riff = min(4 + 8 + len(fmt) + 8 + data_bytes, 0xFFFFFFFF)
    return (
        b"RIFF"
        + struct.pack("<I", riff)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", data_bytes)
        + present
    )


def _multipart(metadata: dict[str, Any], audio: bytes, boundary: str) -> bytes:
    return (
        (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="metadata"\r\n'
            "Content-Type: application/json\r\n\r\n"
            f"{json.dumps(metadata)}\r\n"
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="audio"; filename="call"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + audio
        + f"\r\n--{boundary}--\r\n".encode()
    )


def _signature(body: bytes) -> str:
    t = int(time.time())
    mac = hmac.new(WEBHOOK_SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


async def _upload(client: Any, audio: bytes, *, redact: list[dict[str, int]] | None = None) -> Any:
    metadata: dict[str, Any] = {
        "call_id": "caps-" + uuid.uuid4().hex[:8],
        "recording_id": "caps-" + uuid.uuid4().hex[:8],
        "started_at": "2026-11-23T10:00:00+00:00",
        "from": "+12125550123",  # New York: one-party consent, so the policy stores
        "to": "+16465550199",
        "direction": "inbound",
        "consent": "granted",
        "basis": "consent",
    }
    if redact is not None:
        metadata["redact"] = redact
    boundary = "caps-" + uuid.uuid4().hex
    body = _multipart(metadata, audio, boundary)
    return await client.post(
        "/webhooks/upload/acme",
        data=body,
        headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Callrec-Signature": _signature(body),
        },
    )


@pytest.fixture
async def caps_client(aiohttp_client: Any, app_config: Any) -> AsyncIterator[Any]:
    """The app as in the issue's report: max_media_mb = 64, the default max_duration (6 h)."""
    config = app_config(ingest={"max_media_mb": 64, "upload_timeout": "2s", "fetch_timeout": "2s"})
    yield await aiohttp_client(create_app(config, run_workers=False))


# --- the tests -----------------------------------------------------------------------------------


def test_max_duration_is_configured() -> None:
    assert config_from_mapping({}).ingest.max_duration == timedelta(hours=6)
    assert config_from_mapping({"ingest": {"max_duration": "90m"}}).ingest.max_duration == timedelta(
        minutes=90
    )
    with pytest.raises(ConfigError, match=r"ingest\.max_duration"):
        config_from_mapping({"ingest": {"max_duration": "6 hours"}})
    assert config_from_mapping({}).ingest.upload_timeout == timedelta(minutes=10)


async def test_decompression_bomb_through_redaction_is_refused(caps_client: Any, bomb: Path) -> None:
    """Before: 202, RSS 200 -> 2,172 MB, a 691 MB object stored over the 64 MiB cap. Now the worker's
    probe stops decoding a second past 6 h and the job dies at once with too_long; nothing is stored."""
    client = caps_client
    data = await asyncio.to_thread(bomb.read_bytes)
    resp = await _upload(client, data, redact=[{"start_ms": 1000, "end_ms": 2000}])
    acknowledged = int(resp.status == 202)
    with Peak() as peak:
        worked, health = await _work_while_watching(client)
    job = await _job(client)
    stored, objects = await _recordings(client), _stored_objects(client)
    print(
        f"\nbomb: {len(data) / 1e6:.1f} MB FLAC of 12 h; sent 1, acknowledged {acknowledged},"
        f" stored {stored}, objects left {objects}; job {job['state']} after {job['attempts']}"
        f" attempt(s): {job['last_error']!r}; /healthz answered {health} times meanwhile;"
        f" RSS {peak.before_mib:.0f} MiB -> peak {peak.peak_mib:.0f} MiB (+{peak.growth_mib:.0f})"
    )
    assert resp.status == 202 and worked
    assert job["state"] == "dead" and job["attempts"] == 1
    assert "too_long" in job["last_error"] and "21600000 ms" in job["last_error"]
    assert stored == 0 and objects == 0
    assert health > 0
    assert peak.growth_mib < RSS_GROWTH_LIMIT_MIB


@pytest.mark.parametrize(("name", "tag", "bits"), [("pcm16", 1, 16), ("mulaw", 7, 8)])
async def test_wav_declaring_2_gib_is_a_clear_permanent_failure(
    caps_client: Any, name: str, tag: int, bits: int
) -> None:
    """A small WAV whose header announces 2 GiB of audio: nothing reads or allocates by the header;
    the upload fails at once as truncated (its bytes will never change), nothing is stored."""
    client = caps_client
    one_second = bytes(range(256)) * (8000 * bits // 8 // 256)
    data = _wav_declaring(2 << 30, one_second, tag=tag, bits=bits)
    resp = await _upload(client, data)
    with Peak() as peak:
        worked, health = await _work_while_watching(client)
    job = await _job(client)
    stored, objects = await _recordings(client), _stored_objects(client)
    print(
        f"\n2 GiB {name} WAV ({len(data)} bytes): sent 1, status {resp.status}, stored {stored}, objects left"
        f" {objects}; job {job['state']} after {job['attempts']} attempt(s): {job['last_error']!r};"
        f" /healthz {health}; RSS +{peak.growth_mib:.0f} MiB"
    )
    assert resp.status == 202 and worked
    assert job["state"] == "dead" and job["attempts"] == 1
    assert "truncated" in job["last_error"]
    assert stored == 0 and objects == 0
    assert peak.growth_mib < RSS_GROWTH_LIMIT_MIB


async def test_slow_loris_upload_is_cut_off(caps_client: Any) -> None:
    """A client that sends an upload's body ten bytes at a time gets 408 once [ingest]
    upload_timeout (2 s here) has passed, instead of holding a handler for ever; /healthz answers
    all along, and nothing is queued or left in the spool."""
    client = caps_client
    host, port = client.server.host, client.server.port
    boundary = "slowloris"
    head = (
        f"POST /webhooks/upload/acme HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 1000000\r\n"
        f"Callrec-Signature: t={int(time.time())},v1={'0' * 64}\r\n\r\n"
        # A well-formed start, so that only the pace is wrong.
        f'--{boundary}\r\nContent-Disposition: form-data; name="audio"; filename="a"\r\n\r\n'
    ).encode()
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(head)
    sent, health, answer = len(head), 0, b""
    started = time.monotonic()
    try:
        for _ in range(60):  # at most ~12 s, against a 2 s deadline
            try:
                writer.write(b"RIFF\x00\x00\x00\x00WA")
                await writer.drain()
                sent += 10
            except ConnectionError:
                pass  # the server has answered and is closing
            assert (await client.get("/healthz")).status == 200
            health += 1
            try:
                answer += await asyncio.wait_for(reader.read(65536), 0.2)
            except TimeoutError:
                continue
            if b"\r\n\r\n" in answer:
                break
    finally:
        writer.close()
    elapsed = time.monotonic() - started
    async with client.app[db_key].acquire() as conn:
        queued = await conn.fetchval("SELECT count(*) FROM jobs")
    left = [p.name for p in spool.files(client.app[config_key].data_dir)]
    status_line, _, rest = answer.partition(b"\r\n")
    print(
        f"\nslow loris: sent {sent} of 1,000,000 bytes, answer {status_line!r} after {elapsed:.1f} s;"
        f" /healthz answered {health} times meanwhile; jobs queued {queued}, spool {left}"
    )
    assert status_line.startswith(b"HTTP/1.1 408")
    body = rest.split(b"\r\n\r\n", 1)[1]
    assert json.loads(body)["error"]["code"] == "upload_timeout"
    assert health > 0 and queued == 0 and left == []


class Trickle:
    """A media body served a few bytes at a time (aiohttp streams an async iterable); counts what it
    got out. Each request gets a fresh stream."""

    def __init__(self) -> None:
        self.sent = 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._stream()

    async def _stream(self) -> AsyncIterator[bytes]:
        yield b"RIFF\xff\xff\xff\x7fWAVE"
        self.sent += 12
        for _ in range(200):  # 20 s at most, whoever stops reading
            await asyncio.sleep(0.1)
            yield b"\x00" * 8
            self.sent += 8


async def test_trickling_media_host_is_cut_off_and_the_job_retries(
    caps_client: Any, fake_twilio: Any
) -> None:
    """A media host that sends a few bytes every 100 ms: [ingest] fetch_timeout (2 s here) cuts the
    download, the job is retried (not dead, nothing stored), and a retry is cut off the same way."""
    client = caps_client
    trickle = Trickle()
    sid, csid = "RE" + uuid.uuid4().hex, "CA" + uuid.uuid4().hex
    fake_twilio.media[sid] = trickle
    fake_twilio.calls[csid] = {
        "from": "+12125550123",
        "to": "+16465550199",
        "direction": "inbound",
        "start_time": "Mon, 23 Nov 2026 10:00:00 +0000",
    }
    form = {
        "AccountSid": TWILIO_SID,
        "CallSid": csid,
        "RecordingSid": sid,
        "RecordingUrl": fake_twilio.recording_url(sid),
        "RecordingStatus": "completed",
    }
    path = "/webhooks/twilio/acme?" + urlencode({"consent": "granted", "basis": "contract"})
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(PUBLIC_BASE + path, form)
    resp = await client.post(path, data=form, headers={"X-Twilio-Signature": signature})
    assert resp.status == 202

    with Peak() as peak:
        worked, health = await _work_while_watching(client)
        first = await _job(client)
        retried = False
        for _ in range(100):  # the retry is due after retry_base (1 s); at most 10 s of polling
            await asyncio.sleep(0.1)
            retried, more = await _work_while_watching(client)
            health += more
            if retried:
                break
    second = await _job(client)
    stored = await _recordings(client)
    print(
        f"\ntrickle: host sent {trickle.sent} bytes over {fake_twilio.media_requests} requests;"
        f" first attempt: {first['state']} {first['last_error']!r}; after the retry: {second['state']},"
        f" attempts {second['attempts']}; stored {stored}; /healthz {health}; RSS +{peak.growth_mib:.0f} MiB"
    )
    assert worked and first["state"] == "queued" and first["attempts"] == 1
    assert "Timeout" in first["last_error"]
    assert retried and second["state"] == "queued" and second["attempts"] == 2
    assert fake_twilio.media_requests == 2
    # Each download was cut after ~2 s of a stream that would have run 20 s.
    assert trickle.sent < 2 * (12 + 8 * 40)
    assert stored == 0 and health > 0
