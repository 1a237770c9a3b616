"""Helpers of the fault suite (tests/faults): signed traffic (Twilio callbacks and PBX uploads),
`callrec` worker and CLI subprocesses against the test's database and store, a bounded supervisor
that restarts workers killed by the fault hook (callrec.faults), peak-RSS sampling, and the
comparison of the store's objects with the rows."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import boto3
from twilio.request_validator import RequestValidator
from twilio_support import PUBLIC_BASE, TWILIO_SID, TWILIO_TOKEN

from callrec.config import Config

WEBHOOK_SECRET = "pbx-shared-secret-for-tests"
WORKER_STAGES = ("download", "decode", "redact", "encrypt", "store", "commit")


# --- signed traffic ---------------------------------------------------------------------------


async def post_twilio(client: Any, fake: Any, sid: str, *, call_sid: str | None = None) -> Any:
    """A signed recordingStatusCallback for ``sid`` (media must be in ``fake.media``)."""
    form = {
        "AccountSid": TWILIO_SID,
        "CallSid": call_sid or "CA" + hashlib.md5(sid.encode()).hexdigest(),  # noqa: S324 - an id, not security
        "RecordingSid": sid,
        "RecordingUrl": fake.recording_url(sid),
        "RecordingStatus": "completed",
    }
    path = "/webhooks/twilio/acme?" + urlencode({"consent": "granted", "basis": "contract"})
    sig = RequestValidator(TWILIO_TOKEN).compute_signature(PUBLIC_BASE + path, form)
    return await client.post(path, data=form, headers={"X-Twilio-Signature": sig})


def new_twilio_sid() -> str:
    return "RE" + uuid.uuid4().hex


async def upload_body(metadata: dict[str, Any], audio: bytes) -> tuple[bytes, str]:
    writer = aiohttp.MultipartWriter("form-data", boundary="callrec-fault-boundary")
    part = writer.append(json.dumps(metadata).encode(), {"Content-Type": "application/json"})
    part.set_content_disposition("form-data", name="metadata")
    part = writer.append(audio, {"Content-Type": "audio/wav"})
    part.set_content_disposition("form-data", name="audio", filename="call.wav")

    class Sink:
        def __init__(self) -> None:
            self.data = bytearray()

        async def write(self, chunk: bytes) -> None:
            self.data.extend(chunk)

    sink = Sink()
    await writer.write(sink)  # type: ignore[arg-type]
    return bytes(sink.data), writer.headers["Content-Type"]


def upload_metadata(recording_id: str, *, redact: list[dict[str, int]] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "call_id": f"pbx-{recording_id}",
        "recording_id": recording_id,
        "started_at": "2026-11-23T10:00:00+00:00",
        "from": "+12125550123",  # New York on both ends: one-party consent
        "to": "+16465550199",
        "direction": "inbound",
        "consent": "granted",
        "basis": "contract",
    }
    if redact:
        meta["redact"] = redact
    return meta


async def post_upload(client: Any, metadata: dict[str, Any], audio: bytes) -> Any:
    body, content_type = await upload_body(metadata, audio)
    t = int(time.time())
    mac = hmac.new(WEBHOOK_SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return await client.post(
        "/webhooks/upload/acme",
        data=body,
        headers={"Content-Type": content_type, "Callrec-Signature": f"t={t},v1={mac}"},
    )


# --- processes --------------------------------------------------------------------------------


def _seconds(value: timedelta) -> str:
    return f"{int(value.total_seconds())}s"


def process_env(config: Config, **extra: str) -> dict[str, str]:
    """The environment of a `callrec` subprocess with the same database, store, keyring and tenant
    secrets as ``config`` (the test's in-process app), plus ``extra`` (fault points, overrides)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLREC_")}
    ingest, storage = config.ingest, config.storage
    acme = config.tenants["acme"]
    env.update(
        {
            "CALLREC_DATA_DIR": str(config.data_dir),
            "CALLREC_DATABASE__URL": config.database.url,
            "CALLREC_DATABASE__POOL_MAX": "4",
            "CALLREC_STORAGE__BACKEND": storage.backend,
            "CALLREC_STORAGE__ORPHAN_GRACE": _seconds(storage.orphan_grace),
            "CALLREC_INGEST__MEDIA_HOSTS": ",".join(ingest.media_hosts),
            "CALLREC_INGEST__WORKERS": str(ingest.workers),
            "CALLREC_INGEST__LEASE": _seconds(ingest.lease),
            "CALLREC_INGEST__HEARTBEAT": _seconds(ingest.heartbeat),
            "CALLREC_INGEST__RETRY_BASE": _seconds(ingest.retry_base),
            "CALLREC_INGEST__MAX_ATTEMPTS": str(ingest.max_attempts),
            "CALLREC_RETENTION__SWEEP_BATCH": str(config.retention.sweep_batch),
            "CALLREC_TENANTS__ACME__TWILIO_ACCOUNT_SID": acme.twilio_account_sid,
            "CALLREC_TENANTS__ACME__TWILIO_AUTH_TOKEN": acme.twilio_auth_token,
            "CALLREC_TENANTS__ACME__TWILIO_API_BASE": acme.twilio_api_base,
            "CALLREC_TENANTS__ACME__WEBHOOK_SECRET": acme.webhook_secret,
            "CALLREC_TENANTS__ACME__RETENTION": _seconds(acme.retention),
            "CALLREC_TENANTS__OTHER__RETENTION": "90d",
            "CALLREC_LOG_LEVEL": "INFO",
        }
    )
    if storage.backend == "s3":
        env.update(
            {
                "CALLREC_STORAGE__BUCKET": storage.bucket,
                "CALLREC_STORAGE__PREFIX": storage.prefix,
                "CALLREC_STORAGE__ENDPOINT_URL": storage.endpoint_url,
                "CALLREC_STORAGE__REGION": storage.region,
            }
        )
    env.update(extra)
    return env


async def run_cli(env: dict[str, str], *args: str, timeout: float = 60) -> tuple[int, str, str]:
    """Run ``python -m callrec ARGS`` to completion (bounded); returns (exit code, stdout, stderr).
    A process the fault hook kills returns -9."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "callrec",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def vm_hwm_kib(pid: int) -> int:
    """A live process's peak resident set size (VmHWM) in KiB; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return 0
    return 0


@dataclass
class Workers:
    """`callrec worker` processes kept running: one killed (by the fault hook) is started again,
    at most ``max_starts`` starts in all. Peak RSS is sampled while they run."""

    env: dict[str, str]
    count: int = 1
    max_starts: int = 12
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)
    starts: int = 0
    kills: int = 0
    exits: list[int] = field(default_factory=list)
    peak_rss_kib: int = 0
    stderr: list[bytes] = field(default_factory=list)
    _logs: list[asyncio.Task[bytes]] = field(default_factory=list)

    async def _spawn(self) -> asyncio.subprocess.Process:
        assert self.starts < self.max_starts, f"workers started {self.starts} times: a crash loop"
        self.starts += 1
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "callrec",
            "worker",
            env=self.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stderr is not None
        self._logs.append(asyncio.create_task(proc.stderr.read()))
        return proc

    async def start(self) -> None:
        self.procs = [await self._spawn() for _ in range(self.count)]

    async def tend(self) -> None:
        """Sample RSS; start again the workers that died."""
        for i, proc in enumerate(self.procs):
            self.peak_rss_kib = max(self.peak_rss_kib, vm_hwm_kib(proc.pid))
            if proc.returncode is not None:
                self.exits.append(proc.returncode)
                if proc.returncode == -signal.SIGKILL:
                    self.kills += 1
                self.procs[i] = await self._spawn()

    async def stop(self) -> None:
        for proc in self.procs:
            self.peak_rss_kib = max(self.peak_rss_kib, vm_hwm_kib(proc.pid))
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                continue
            # A worker that killed itself at a fault point after the last tend() (its marker was
            # already written, so the test's condition came true) is counted here.
            self.exits.append(proc.returncode)
            if proc.returncode == -signal.SIGKILL:
                self.kills += 1
        self.stderr = [await t for t in self._logs]

    def log_tail(self, limit: int = 4000) -> str:
        return "\n".join(b.decode(errors="replace")[-limit:] for b in self.stderr)


@contextlib.asynccontextmanager
async def workers(env: dict[str, str], *, count: int = 1, max_starts: int = 12) -> AsyncIterator[Workers]:
    group = Workers(env, count=count, max_starts=max_starts)
    await group.start()
    try:
        yield group
    finally:
        await group.stop()


async def wait_until(
    condition: Any, *, timeout: float, step: float = 0.25, tend: Workers | None = None
) -> bool:
    """Poll ``await condition()`` until true or ``timeout`` seconds pass (tending ``tend``'s
    workers meanwhile); returns whether it came true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tend is not None:
            await tend.tend()
        if await condition():
            return True
        await asyncio.sleep(step)
    return bool(await condition())


# --- the store against the rows ---------------------------------------------------------------


def bucket_versions(endpoint: str, bucket: str, prefix: str) -> dict[str, list[str]]:
    """Every object version and delete marker under the recordings' ``prefix``, by key (prefix
    removed); the audit anchors have a prefix of their own. Listing is for the test's comparison
    only; callrec itself never lists to find orphans."""
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    found: dict[str, list[str]] = {}
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
            found.setdefault(item["Key"].removeprefix(prefix), []).append(item["VersionId"])
    return found


def make_bucket(endpoint: str, *, object_lock: bool = False) -> str:
    bucket = f"callrec-faults-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=object_lock)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    return bucket


def s3_storage(endpoint: str, bucket: str, **extra: Any) -> dict[str, Any]:
    return {
        "backend": "s3",
        "bucket": bucket,
        "endpoint_url": endpoint,
        "region": "us-east-1",
        "prefix": "recordings/",
        **extra,
    }


def spool_leftovers(config: Config) -> list[str]:
    """Files in the spool (callrec.spool), the per-process lock files aside."""
    from callrec import spool

    return [str(p.relative_to(config.data_dir)) for p in spool.files(config.data_dir)]


def peak_rss_mib(kib: int) -> float:
    return round(kib / 1024, 1)


def self_rss_kib() -> int:
    return vm_hwm_kib(os.getpid())


def fixture_audio(audio_fixtures: Path, name: str = "call-without-announcement.wav") -> bytes:
    return (audio_fixtures / name).read_bytes()


async def listen_token(app: Any) -> str:
    """An API token of tenant acme that may list recordings and listen to them."""
    from callrec.appkeys import db_key
    from callrec.db import tokens

    async with app[db_key].acquire() as conn:
        _, token = await tokens.create(
            conn, tenant="acme", name="faults", scopes=["recordings:read", "recordings:listen"]
        )
    return token


async def audio_digest(client: Any, token: str, recording_id: Any) -> str | None:
    """SHA-256 of a recording's audio as the API serves it (decrypted), None when it cannot be served."""
    resp = await client.get(
        f"/api/v1/recordings/{recording_id}/audio", headers={"Authorization": f"Bearer {token}"}
    )
    if resp.status != 200:
        return None
    return hashlib.sha256(await resp.read()).hexdigest()


def vm_rss_kib(pid: int) -> int:
    """A live process's resident set size now (VmRSS) in KiB; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return 0
    return 0


class RssSampler:
    """The peak of the test process's own RSS while a block runs (the app under test lives in
    it; VmHWM would include everything the session did before)."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak_kib = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.peak_kib = max(self.peak_kib, vm_rss_kib(os.getpid()))
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> RssSampler:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.peak_kib = max(self.peak_kib, vm_rss_kib(os.getpid()))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def serving(env: dict[str, str], *, port: int) -> AsyncIterator[asyncio.subprocess.Process]:
    """`callrec serve --no-workers` on 127.0.0.1:``port``, ready (``/healthz``) before it is
    yielded; stopped (SIGTERM, then SIGKILL) on the way out unless it died already."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "callrec",
        "serve",
        "--no-workers",
        env={**env, "CALLREC_SERVER__HOST": "127.0.0.1", "CALLREC_SERVER__PORT": str(port)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 60
            while True:
                assert proc.returncode is None, "callrec serve exited while starting"
                assert time.monotonic() < deadline, "callrec serve did not start within 60 s"
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.25)
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
