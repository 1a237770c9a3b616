"""Erasure benchmarks: completing a deletion request for a subject with 1,000 recordings, and
sweeping 100,000 expired recordings, on the filesystem store and on S3 (moto over HTTP), with
batch deletes (``ObjectStore.delete_objects``) against the per-key deletes they replace, measured
in the same run on this machine.

    /tmp/venv/bin/python bench/erasure.py [--quick] [--json] [--only filesystem|s3]

Everything runs on loopback and in a temporary directory that is removed afterwards: an embedded
PostgreSQL (pgserver), one fresh database and data directory per measurement (dropped and removed
after it), callrec's local keyring, and for each S3 measurement a fresh moto ThreadedMotoServer in
its own process (so that its CPU is not this process's GIL) on 127.0.0.1 with a versioned bucket.
Each measurement is bounded in time; a full run takes about 15 minutes, ``--quick`` about 2.

Seeding. Ingesting 100,000 recordings through webhooks and workers would take far longer than
erasing them, so recordings are seeded directly: one real ciphertext object per recording
(16 KiB of audio, 1 KiB on S3, encrypted with a real per-recording key), written through the store's
``put_file`` (filesystem: real files, fsync skipped while seeding and the page cache flushed with
``sync`` afterwards; S3: real objects in moto), then the rows with ``COPY``: real wrapped keys
(a pool of 32, wrapped by the tenant's KEK), phone numbers sealed per row and keyed hashes under
the tenant's lookup key (so that the API finds the subject by phone), realistic JSON columns,
then ``VACUUM ANALYZE`` as autovacuum would have done on a live table.

1. Deletion request: ``POST /api/v1/deletion-requests`` with ``{"subject": {"phone": ...}}``
   through the app served on 127.0.0.1, processed by ``Worker.run`` with the configured
   concurrency, for a subject with 1,000 recordings among other callers' recordings (on S3 the
   per-key path is measured with 200, and batch with both 200 and 1,000). Timed to
   the request's ``completed`` (every recording tombstoned and its key destroyed: one
   transaction) and to the last object version gone (every ``object.delete`` job done).
   - batch: the worker as it is: ``service.process_request(..., erased_objects=...)`` then,
     after the commit, ``erasure.delete_objects_now`` (one ``delete_objects`` call).
   - per-key: the worker's ``deletion.process`` handler replaced, in this process only, by the
     one it had before batch deletes: the objects are left to one ``object.delete`` job per
     recording (``erasure.delete_erased_object``: a listing and a DeleteObjects per key on S3).
2. Sweep: ``callrec.retention.sweeper.sweep`` over N expired recordings (batch 500).
   - batch: the sweeper as it is (``delete_objects`` every 5,000 erased recordings).
   - per-key: the same sweeper over a store whose ``delete_objects`` calls
     ``erasure.delete_erased_object`` key after key: the store calls the sweeper made before.
   The store's time is the summed duration of its delete calls (the sweep is sequential, so the
   rest of the wall time is the database: tombstones, audit entries, jobs).
3. The machine: CPUs, memory, kernel, Python, PostgreSQL and its durability settings, fsync
   latency in the temporary directory.

On S3 the number of requests is counted per operation. moto is not S3: its ListObjectVersions
deep-copies every version in the bucket on every call (about 0.1 ms per stored version), and the
copies are never freed (moto tracks every model instance it creates: about 19 MB per listing of
1,000 objects of 16 KiB, 4 MB at 1 KiB), so on moto every listing costs time and memory in
proportion to the bucket's size. S3 sizes are kept to what runs in minutes within
``MOTO_RSS_LIMIT_KIB`` (moto is stopped, and the measurement reported failed, past it); the
100,000-recording S3 figure is a labelled extrapolation.

Progress goes to stderr; the results table (or, with ``--json``, a JSON document) to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web
from machine import loadavg, machine_info, machine_lines

from callrec.config import Config, config_from_mapping

log = logging.getLogger("bench.erasure")

TENANT = "acme"
SUBJECT = "+12125550123"  # the data subject (New York)
DESK = "+16465550199"  # the company's number: the other party of every call
# Plaintext per recording: one second of 8 kHz 16-bit mono audio on the filesystem; 1 KiB on S3,
# because moto keeps a copy of every object's bytes per listing (deleting costs the same either way).
PLAINTEXT_BYTES = {"filesystem": 16 * 1024, "s3": 1024}
# moto's ListObjectVersions deep-copies every stored version into new model objects that moto's
# instance tracking keeps for good (measured: about 19 MB per listing of 1,000 16 KiB objects), so
# each S3 measurement gets its own moto process, stopped if it grows past this.
MOTO_RSS_LIMIT_KIB = 4 * 1024 * 1024
SEED_CONCURRENCY = 16
HARD_LIMIT_S = 75 * 60  # the whole run, whatever happens (a full run takes about 15 minutes)
POLL_S = 0.01
PACKAGES = ("asyncpg", "boto3", "moto")  # versions quoted with the machine


@dataclass(frozen=True)
class Request:
    backend: str
    variant: str  # "per-key" or "batch"
    subject: int  # recordings of the subject of the deletion request
    others: int  # other callers' recordings in the same tenant


@dataclass(frozen=True)
class Sweep:
    backend: str
    variant: str
    recordings: int


@dataclass(frozen=True)
class Settings:
    quick: bool
    requests: tuple[Request, ...]
    sweeps: tuple[Sweep, ...]
    timeout_s: float  # per measurement

    @classmethod
    def make(cls, quick: bool, only: str | None) -> Settings:
        # On S3 (moto) the per-key runs are kept small: moto copies every stored version on every
        # listing and keeps the copies (see MOTO_RSS_LIMIT), and the per-key path lists each key
        # twice. The batch path lists a prefix a page at a time and runs at the full sizes.
        if quick:
            requests = (
                Request("filesystem", "per-key", 200, 200),
                Request("filesystem", "batch", 200, 200),
                Request("s3", "per-key", 100, 100),
                Request("s3", "batch", 100, 100),
                Request("s3", "batch", 200, 100),
            )
            sweeps = (
                Sweep("filesystem", "per-key", 1_000),
                Sweep("filesystem", "batch", 1_000),
                Sweep("filesystem", "batch", 5_000),
                Sweep("s3", "per-key", 200),
                Sweep("s3", "batch", 200),
                Sweep("s3", "batch", 1_000),
            )
            timeout = 300.0
        else:
            requests = (
                Request("filesystem", "per-key", 1_000, 9_000),
                Request("filesystem", "batch", 1_000, 9_000),
                Request("s3", "per-key", 200, 200),
                Request("s3", "batch", 200, 200),
                Request("s3", "batch", 1_000, 200),
            )
            sweeps = (
                Sweep("filesystem", "per-key", 10_000),
                Sweep("filesystem", "batch", 10_000),
                Sweep("filesystem", "batch", 100_000),
                Sweep("s3", "per-key", 500),
                Sweep("s3", "batch", 500),
                Sweep("s3", "batch", 10_000),
            )
            timeout = 1_200.0
        keep = (only,) if only else ("filesystem", "s3")
        return cls(
            quick,
            tuple(r for r in requests if r.backend in keep),
            tuple(w for w in sweeps if w.backend in keep),
            timeout,
        )


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --- moto in its own process ---------------------------------------------------------------------


def aws_test_env() -> None:
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(name, value)


async def moto_role(spec: dict[str, Any]) -> None:
    """moto's threaded server on 127.0.0.1 until SIGTERM (or the time limit)."""
    from moto.server import ThreadedMotoServer

    aws_test_env()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(json.dumps({"port": port}), flush=True)
    try:
        await asyncio.wait_for(stop.wait(), float(spec["max_seconds"]))
    except TimeoutError:
        pass
    finally:
        server.stop()


class MotoProcess:
    def __init__(self, max_seconds: float) -> None:
        self.max_seconds = max_seconds
        self.proc: asyncio.subprocess.Process | None = None
        self.endpoint = ""
        self.watcher: asyncio.Task[None] | None = None
        self.peak_rss_kib = 0
        self.killed = False

    async def __aenter__(self) -> MotoProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--role",
            "moto",
            "--spec",
            json.dumps({"max_seconds": self.max_seconds}),
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        if not line:
            raise RuntimeError("moto did not start")
        self.endpoint = f"http://127.0.0.1:{json.loads(line)['port']}"
        self.watcher = asyncio.create_task(self.watch())
        return self

    def rss_kib(self) -> int:
        if self.proc is None:
            return 0
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    async def watch(self) -> None:
        """Stop moto if it grows past MOTO_RSS_LIMIT_KIB (the measurement then fails, loudly)."""
        for _ in range(int(HARD_LIMIT_S / 0.5)):
            rss = self.rss_kib()
            self.peak_rss_kib = max(self.peak_rss_kib, rss)
            if rss > MOTO_RSS_LIMIT_KIB and self.proc is not None and self.proc.returncode is None:
                say(f"  moto grew to {rss // 1024} MiB: stopping it")
                self.killed = True
                self.proc.kill()
                return
            await asyncio.sleep(0.5)

    async def __aexit__(self, *exc: object) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
            await asyncio.gather(self.watcher, return_exceptions=True)
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), 15)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


# --- measuring the store -------------------------------------------------------------------------


@dataclass
class StoreMeter:
    """Summed time and count of the store's deleting calls; S3 requests per operation."""

    busy_s: float = 0.0
    calls: Counter[str] = field(default_factory=Counter)
    requests: Counter[str] = field(default_factory=Counter)

    def reset(self) -> None:
        self.busy_s = 0.0
        self.calls.clear()
        self.requests.clear()


async def meter_store(store: Any, backend: str) -> StoreMeter:
    """Wrap the store's deleting methods (on this instance only) and count its S3 requests."""
    meter = StoreMeter()
    for name in ("delete_objects", "delete_all_versions", "set_legal_hold"):
        original = getattr(store, name)

        def wrap(original: Callable[..., Awaitable[Any]], name: str) -> Callable[..., Awaitable[Any]]:
            async def timed(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return await original(*args, **kwargs)
                finally:
                    meter.busy_s += time.perf_counter() - start
                    meter.calls[name] += 1

            return timed

        setattr(store, name, wrap(original, name))
    if backend == "s3":

        def count(model: Any, **_: Any) -> None:
            meter.requests[model.name] += 1

        await store.run_with_client(lambda client: client.meta.events.register("before-call.s3", count))
    return meter


class PerKeyDeletes:
    """The store as the sweeper used it before batch deletes: ``delete_objects`` is
    ``erasure.delete_erased_object`` (``delete_all_versions``) once per key, one after another."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def delete_objects(self, keys: list[str]) -> dict[str, int]:
        from callrec import erasure

        return {key: await erasure.delete_erased_object(self._inner, key) for key in keys}


# --- one measurement's world -----------------------------------------------------------------------


def bench_config(data_dir: Path, database_url: str, backend: str, endpoint: str, bucket: str) -> Config:
    storage: dict[str, Any] = {"backend": "filesystem", "path": str(data_dir / "objects")}
    if backend == "s3":
        storage = {
            "backend": "s3",
            "bucket": bucket,
            "prefix": "recordings/",
            "endpoint_url": endpoint,
            "region": "us-east-1",
        }
    return config_from_mapping(
        {
            "data_dir": str(data_dir),
            "log_level": "WARNING",
            "server": {"host": "127.0.0.1", "port": 0, "public_base_url": "https://callrec.bench.test"},
            "database": {"url": database_url},
            "storage": storage,
            "keys": {"provider": "local", "path": str(data_dir / "keyring.json")},
            "tenants": {TENANT: {"webhook_secret": secrets.token_hex(16)}},
        }
    )


@dataclass
class World:
    name: str
    backend: str
    app: web.Application
    runner: web.AppRunner
    port: int
    config: Config
    meter: StoreMeter
    root_url: str

    @property
    def pool(self) -> asyncpg.Pool:
        from callrec.appkeys import db_key

        return self.app[db_key]

    @property
    def store(self) -> Any:
        from callrec.appkeys import store_key

        return self.app[store_key]


async def open_world(name: str, backend: str, root_url: str, tmp: Path, endpoint: str) -> World:
    """A fresh database, data directory and bucket, and the app served on 127.0.0.1 (workers
    off: each measurement runs the worker or the sweeper itself)."""
    from callrec.app import create_app

    db = f"bench_{name}"
    conn = await asyncpg.connect(root_url)
    try:
        await conn.execute(f'CREATE DATABASE "{db}"')
    finally:
        await conn.close()
    from urllib.parse import urlsplit, urlunsplit

    url = urlunsplit(urlsplit(root_url)._replace(path="/" + db))
    bucket = f"callrec-bench-{name.replace('_', '-')}-{secrets.token_hex(4)}"
    config = bench_config(tmp / name, url, backend, endpoint, bucket)
    app = create_app(config, run_workers=False)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = int(runner.addresses[0][1])
    from callrec.appkeys import store_key

    store: Any = app[store_key]
    if backend == "s3":
        await store.ensure_bucket(versioning=True)
    meter = await meter_store(store, backend)
    return World(name, backend, app, runner, port, config, meter, root_url)


async def close_world(world: World) -> None:
    """Stop the app, then drop its database and remove its data directory (objects included)."""
    await world.runner.cleanup()
    conn = await asyncpg.connect(world.root_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "bench_{world.name}" WITH (FORCE)')
    finally:
        await conn.close()
    await asyncio.to_thread(shutil.rmtree, world.config.data_dir, True)


# --- seeding ---------------------------------------------------------------------------------------


COLUMNS = (
    "id",
    "tenant",
    "provider",
    "call_id",
    "provider_recording_id",
    "state",
    "started_at",
    "stored_at",
    "expires_at",
    "duration_ms",
    "channels",
    "sample_rate",
    "format",
    "codec",
    "size_bytes",
    "sha256",
    "object_key",
    "object_version",
    "ciphertext_bytes",
    "wrapped_key",
    "direction",
    "from_sealed",
    "to_sealed",
    "from_hash",
    "to_hash",
    "announcement",
    "consent",
    "tags",
    "agent",
    "source",
    "jurisdiction",
    "policy",
    "redactions",
)


@dataclass
class Seeded:
    count: int
    objects_s: float
    rows_s: float
    ciphertext_bytes: int
    wrapped_key_bytes: int
    sealed_phone_bytes: int


async def key_material(world: World) -> tuple[Any, bytes, list[bytes], list[Path]]:
    """The tenant's KEK and lookup key, 32 real wrapped recording keys and 32 real ciphertexts."""
    from callrec.appkeys import keys_key
    from callrec.crypto import envelope

    keys = world.app[keys_key]
    kek = await keys.kek(TENANT)
    async with world.pool.acquire() as conn:
        lookup = await keys.lookup_key(conn, TENANT)

    def make() -> tuple[list[bytes], list[Path]]:
        wrapped: list[bytes] = []
        files: list[Path] = []
        spool = world.config.data_dir / "bench-ciphertexts"
        spool.mkdir(parents=True, exist_ok=True)
        for i in range(32):
            rid = str(uuid.uuid4())
            handle = envelope.new_recording_key()
            wrapped.append(envelope.wrap_key(handle, kek, tenant=TENANT, recording_id=rid))
            out = io.BytesIO()
            envelope.encrypt_stream(
                io.BytesIO(os.urandom(PLAINTEXT_BYTES[world.backend])),
                out,
                handle,
                tenant=TENANT,
                recording_id=rid,
            )
            path = spool / f"{i}.bin"
            path.write_bytes(out.getvalue())
            files.append(path)
        return wrapped, files

    wrapped, files = await asyncio.to_thread(make)
    return kek, lookup, wrapped, files


async def seed(
    world: World, tmp: Path, *, count: int, subject: int, expired: bool, progress: str
) -> tuple[Seeded, list[tuple[uuid.UUID, str]]]:
    """``count`` recordings, the first ``subject`` of them calls from SUBJECT; returns what was
    seeded and (id, object key) of each. Expired ones were stored 91 to 120 days ago."""
    from callrec.crypto import envelope
    from callrec.storage import filesystem

    kek, lookup, wrapped_pool, files = await key_material(world)
    now = datetime.now(UTC)
    ids = [uuid.uuid4() for _ in range(count)]
    keys = [f"{TENANT}/{rid}/{uuid.uuid4().hex[:16]}" for rid in ids]

    # Objects, through the store. On the filesystem fsync is skipped while seeding (the seed's
    # durability is not what is measured) and everything is flushed with sync() afterwards.
    versions: list[str | None] = [None] * count
    sizes: list[int] = [0] * count
    real_fsync_dir = filesystem._fsync_dir
    real_fsync = os.fsync
    if world.backend == "filesystem":
        filesystem._fsync_dir = lambda directory: None
        os.fsync = lambda fd: None
    gate = asyncio.Semaphore(SEED_CONCURRENCY)
    done = 0
    started = time.perf_counter()
    last_said = started

    async def put(i: int) -> None:
        nonlocal done, last_said
        async with gate:
            stored = await world.store.put_file(keys[i], files[i % len(files)])
        versions[i], sizes[i] = stored.version_id, stored.size
        done += 1
        if time.perf_counter() - last_said > 15:
            last_said = time.perf_counter()
            rate = done / (last_said - started)
            say(f"  {progress}: {done}/{count} objects ({rate:.0f}/s)")

    try:
        for start in range(0, count, 2_000):  # bounded fan-out
            await asyncio.gather(*(put(i) for i in range(start, min(count, start + 2_000))))
    finally:
        filesystem._fsync_dir = real_fsync_dir
        os.fsync = real_fsync
    if world.backend == "filesystem":
        await asyncio.to_thread(os.sync)
    objects_s = time.perf_counter() - started

    def rows() -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        desk_hash = envelope.keyed_hash(lookup, DESK)
        for i, (rid, key) in enumerate(zip(ids, keys, strict=True)):
            caller = SUBJECT if i < subject else f"+1718555{i % 10_000:04d}"  # never SUBJECT
            if expired:
                stored_at = now - timedelta(days=91 + (i % 30), seconds=i)
            else:
                stored_at = now - timedelta(days=1 + (i % 30), seconds=i)
            call_sid, rec_sid = "CA" + uuid.uuid4().hex, "RE" + uuid.uuid4().hex
            out.append(
                (
                    rid,
                    TENANT,
                    "twilio",
                    call_sid,
                    rec_sid,
                    "stored",
                    stored_at - timedelta(minutes=2),
                    stored_at,
                    stored_at + timedelta(days=90),
                    60_000,
                    1,
                    8000,
                    "wav",
                    "pcm_s16le",
                    960_044,
                    secrets.token_hex(32),
                    key,
                    versions[i],
                    sizes[i],
                    wrapped_pool[i % len(wrapped_pool)],
                    "inbound",
                    envelope.seal(kek, caller.encode(), context=f"callrec:phone:{TENANT}:{rid}:from"),
                    envelope.seal(kek, DESK.encode(), context=f"callrec:phone:{TENANT}:{rid}:to"),
                    envelope.keyed_hash(lookup, caller),
                    desk_hash,
                    json.dumps({"id": "rec-notice", "version": "2026-01", "language": "en", "played": True}),
                    json.dumps(
                        {
                            "state": "implied",
                            "basis": "legitimate_interests",
                            "source": "callback",
                            "events": [],
                        }
                    ),
                    json.dumps({}),
                    f"agent-{i % 40}",
                    json.dumps(
                        {
                            "provider": "twilio",
                            "call_sid": call_sid,
                            "recording_sid": rec_sid,
                            "source": "RecordVerb",
                            "track": "both",
                        }
                    ),
                    json.dumps({"caller_region": "US-NY", "callee_region": "US-NY", "rule": "one_party"}),
                    json.dumps({"decision": "keep", "reason": "one-party consent", "retention_days": 90}),
                    json.dumps([]),
                )
            )
        return out

    started = time.perf_counter()
    records = await asyncio.to_thread(rows)
    async with world.pool.acquire() as conn:
        await conn.copy_records_to_table("recordings", records=records, columns=list(COLUMNS))
        await conn.execute("VACUUM ANALYZE recordings")
    rows_s = time.perf_counter() - started
    sealed = len(records[0][COLUMNS.index("from_sealed")]) if records else 0
    seeded = Seeded(
        count=count,
        objects_s=objects_s,
        rows_s=rows_s,
        ciphertext_bytes=sizes[0] if sizes else 0,
        wrapped_key_bytes=len(wrapped_pool[0]),
        sealed_phone_bytes=sealed,
    )
    say(f"  {progress}: seeded {count} in {objects_s:.1f} s (objects) + {rows_s:.1f} s (rows)")
    return seeded, list(zip(ids, keys, strict=True))


async def objects_left(world: World, keys: list[str]) -> int:
    """How many of ``keys`` still have a version or delete marker (one listing of the bucket on
    S3, a stat per key on the filesystem)."""
    wanted = set(keys)
    if world.backend == "filesystem":
        root = world.config.storage_path
        return sum(1 for key in keys if root.joinpath(*key.split("/")).exists())

    def listing(client: Any) -> int:
        seen: set[str] = set()
        for page in client.get_paginator("list_object_versions").paginate(Bucket=world.store.bucket):
            for entry in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                key = entry["Key"][len(world.store.prefix) :]
                if key in wanted:
                    seen.add(key)
        return len(seen)

    return int(await world.store.run_with_client(listing))


async def probe_list_ms(world: World, key: str) -> float:
    """One single-key ListObjectVersions on the seeded bucket: moto's per-request listing cost."""
    if world.backend != "s3":
        return 0.0
    full = world.store.prefix + key
    start = time.perf_counter()
    await world.store.run_with_client(
        lambda c: c.list_object_versions(Bucket=world.store.bucket, Prefix=full, MaxKeys=1000)
    )
    return 1000 * (time.perf_counter() - start)


def pairs(rows: list[asyncpg.Record]) -> dict[str, int]:
    return {str(row[0]): int(row[1]) for row in rows}


# --- 1. deletion request ---------------------------------------------------------------------------


def install_per_key_deletion(world: World) -> None:
    """Replace the worker's ``deletion.process`` handler (this process only) by the one it had
    before batch deletes: erase in the job's transaction and leave each object to its own
    ``object.delete`` job, which the workers then take one by one."""
    from callrec.app import worker_key
    from callrec.db import jobs
    from callrec.ingest.worker import LeaseLost
    from callrec.retention import service

    worker = world.app[worker_key]

    async def process_deletion(job: jobs.Job, tenant: Any) -> None:
        async with worker.pool.acquire() as conn, conn.transaction():
            if not await jobs.complete(conn, job.id, worker_id=worker.id):
                raise LeaseLost
            await service.process_request(
                conn,
                tenant=tenant.name,
                request_id=uuid.UUID(job.payload["request_id"]),
                actor="system:deletions",
                max_attempts=worker.config.ingest.max_attempts,
            )

    worker._handlers[service.DELETION_PROCESS] = process_deletion


async def measure_request(r: Request, s: Settings, root_url: str, tmp: Path, endpoint: str) -> dict[str, Any]:
    from callrec.app import worker_key
    from callrec.db import audit, tokens

    backend, variant, subject, others = r.backend, r.variant, r.subject, r.others
    name = f"{backend[:2]}_request_{variant}_{subject}"
    say(f"{backend} deletion request ({variant}): subject with {subject} of {subject + others} recordings")
    world = await open_world(name, backend, root_url, tmp, endpoint)
    task: asyncio.Task[None] | None = None
    watcher: asyncpg.pool.PoolConnectionProxy[asyncpg.Record] | None = None
    try:
        seeded, items = await seed(
            world, tmp, count=subject + others, subject=subject, expired=False, progress=name
        )
        subject_keys = [key for _, key in items[:subject]]
        other_keys = [key for _, key in items[subject:]]
        if variant == "per-key":
            install_per_key_deletion(world)
        async with world.pool.acquire() as conn:
            _, token = await tokens.create(
                conn, tenant=TENANT, name="bench", scopes=["deletions:write", "deletions:read"]
            )
        probe = await probe_list_ms(world, other_keys[0])
        world.meter.reset()
        watcher = await world.pool.acquire()
        worker = world.app[worker_key]
        task = asyncio.create_task(worker.run(world.config.ingest.workers))
        # Let the worker's loops reach their wait first: Worker._loop clears its wake-up event
        # after an empty claim, so a NOTIFY arriving during that claim is lost and the job then
        # waits for the 5 s idle poll, which would be measured here as erasure time.
        await asyncio.sleep(0.5)
        url = f"http://127.0.0.1:{world.port}/api/v1/deletion-requests"
        started = time.perf_counter()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            async with http.post(
                url,
                json={"subject": {"phone": SUBJECT}, "reason": "caller asked", "external_ref": "BENCH-1"},
                headers={"Authorization": f"Bearer {token}", "Idempotency-Key": uuid.uuid4().hex},
            ) as resp:
                body = await resp.json()
                if resp.status != 202:
                    raise RuntimeError(f"the API answered {resp.status}: {body}")
        accepted = time.perf_counter() - started
        request_id = uuid.UUID(body["id"])
        completed_s: float | None = None
        objects_s: float | None = None
        deadline = started + s.timeout_s
        try:
            for _ in range(int(s.timeout_s / POLL_S) + 1):
                if time.perf_counter() > deadline or task.done():
                    break
                status = await watcher.fetchval(
                    "SELECT status FROM deletion_requests WHERE id = $1", request_id
                )
                if status == "completed" and completed_s is None:
                    completed_s = time.perf_counter() - started
                if completed_s is not None:
                    pending = await watcher.fetchval(
                        "SELECT count(*) FROM jobs WHERE kind = 'object.delete' AND state <> 'done'"
                    )
                    if pending == 0:
                        objects_s = time.perf_counter() - started
                        break
                await asyncio.sleep(POLL_S)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            task = None
        async with world.pool.acquire() as conn:
            outcomes = pairs(
                await conn.fetch(
                    "SELECT outcome, count(*) FROM deletion_outcomes WHERE request_id = $1 GROUP BY outcome",
                    request_id,
                )
            )
            job_results = pairs(
                await conn.fetch(
                    "SELECT CASE WHEN result->>'inline' = 'true' THEN 'inline' ELSE 'worker' END, count(*)"
                    " FROM jobs WHERE kind = 'object.delete' GROUP BY 1"
                )
            )
            chain_ok = (await audit.verify(conn)).ok
        left_subject = await objects_left(world, subject_keys)
        left_others = await objects_left(world, other_keys)
        result = {
            "backend": backend,
            "variant": variant,
            "subject_recordings": subject,
            "other_recordings": others,
            "worker_concurrency": world.config.ingest.workers,
            "accepted_s": accepted,
            "completed_s": completed_s,
            "objects_gone_s": objects_s,
            "store_busy_s": world.meter.busy_s,
            "store_calls": dict(world.meter.calls),
            "s3_requests": dict(world.meter.requests),
            "outcomes": outcomes,
            "object_jobs": job_results,
            "subject_objects_left": left_subject,
            "other_objects_left": left_others,
            "audit_chain_ok": chain_ok,
            "probe_list_ms": probe,
            "seed": seeded.__dict__,
        }
        ok = (
            completed_s is not None
            and objects_s is not None
            and left_subject == 0
            and left_others == len(other_keys)
            and chain_ok
        )
        result["ok"] = ok
        say(
            f"  completed {fmt(completed_s)} s, objects gone {fmt(objects_s)} s, store busy"
            f" {world.meter.busy_s:.2f} s, requests {dict(world.meter.requests) or '-'}, ok={ok}"
        )
        return result
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if watcher is not None:
            await world.pool.release(watcher)
        await close_world(world)


# --- 2. sweep --------------------------------------------------------------------------------------


async def measure_sweep(w: Sweep, s: Settings, root_url: str, tmp: Path, endpoint: str) -> dict[str, Any]:
    from callrec.db import audit
    from callrec.retention.sweeper import sweep

    backend, variant, count = w.backend, w.variant, w.recordings
    name = f"{backend[:2]}_sweep_{variant}_{count}"
    say(f"{backend} sweep ({variant}) of {count} expired recordings")
    world = await open_world(name, backend, root_url, tmp, endpoint)
    try:
        seeded, items = await seed(world, tmp, count=count, subject=0, expired=True, progress=name)
        probe = await probe_list_ms(world, items[0][1])
        store = world.store if variant == "batch" else PerKeyDeletes(world.store)
        world.meter.reset()
        started = time.perf_counter()
        report = await asyncio.wait_for(
            sweep(
                world.pool,
                store,
                tenants=[TENANT],
                max_attempts=world.config.ingest.max_attempts,
            ),
            s.timeout_s,
        )
        total = time.perf_counter() - started
        busy = world.meter.busy_s
        async with world.pool.acquire() as conn:
            states = pairs(await conn.fetch("SELECT state, count(*) FROM recordings GROUP BY state"))
            jobs_open = await conn.fetchval(
                "SELECT count(*) FROM jobs WHERE kind = 'object.delete' AND state <> 'done'"
            )
            verified = await audit.verify(conn)
        left = await objects_left(world, [key for _, key in items])
        result = {
            "backend": backend,
            "variant": variant,
            "recordings": count,
            "total_s": total,
            "recordings_per_s": count / total,
            "store_s": busy,
            "db_s": total - busy,
            "store_calls": dict(world.meter.calls),
            "s3_requests": dict(world.meter.requests),
            "report": report.as_json(),
            "states": states,
            "object_jobs_open": jobs_open,
            "objects_left": left,
            "audit_entries": verified.entries,
            "audit_chain_ok": verified.ok,
            "probe_list_ms": probe,
            "seed": seeded.__dict__,
        }
        result["ok"] = report.destroyed == count and left == 0 and jobs_open == 0 and verified.ok
        say(
            f"  {total:.1f} s = {count / total:.0f}/s (store {busy:.1f} s, db {total - busy:.1f} s),"
            f" requests {dict(world.meter.requests) or '-'}, ok={result['ok']}"
        )
        return result
    finally:
        await close_world(world)


# --- report ----------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def requests_text(requests: dict[str, int]) -> str:
    short = {"ListObjectVersions": "List", "DeleteObjects": "DelObjs", "PutObjectLegalHold": "Hold"}
    return ", ".join(f"{short.get(k, k)} {v}" for k, v in sorted(requests.items())) or "-"


def moto_label(r: dict[str, Any]) -> str:
    if "recordings" in r:
        what = f"sweep {r['variant']} {r['recordings']}"
    else:
        what = f"request {r['variant']} {r.get('subject_recordings') or r.get('subject')}"
    return what + (" (stopped for memory)" if r.get("moto_stopped_for_memory") else "")


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"callrec erasure bench ({'quick' if report['quick'] else 'full'}), {report['seconds']:.0f} s,"
        f" {m['date']}",
        *machine_lines(m, packages=PACKAGES),
        "",
        "1. Deletion request: POST /api/v1/deletion-requests {subject: phone} -> Worker.run -> completed,"
        " then every object version gone",
        f"   {'backend':<11}{'variant':<9}{'subject':>8}{'others':>8}{'completed s':>13}{'objects s':>11}"
        f"{'rec/s':>8}{'store busy s':>14}  S3 requests; object.delete jobs finished by",
    ]
    for r in report["requests"]:
        if "error" in r:
            lines.append(
                f"   {r['backend']:<11}{r['variant']:<9}{r['subject']:>8}{r['others']:>8}  {r['error']}"
            )
            continue
        per_s = r["subject_recordings"] / r["objects_gone_s"] if r["objects_gone_s"] else None
        lines.append(
            f"   {r['backend']:<11}{r['variant']:<9}{r['subject_recordings']:>8}{r['other_recordings']:>8}"
            f"{fmt(r['completed_s']):>13}{fmt(r['objects_gone_s']):>11}{fmt(per_s, 0):>8}"
            f"{r['store_busy_s']:>14.2f}  {requests_text(r['s3_requests'])}; {r['object_jobs']}"
            + ("" if r["ok"] else "  CHECK FAILED")
        )
    lines += [
        "",
        "2. Sweep: callrec.retention.sweeper.sweep over N expired recordings (batch 500); store = summed"
        " duration of its delete calls, db = the rest",
        f"   {'backend':<11}{'variant':<9}{'N':>8}{'total s':>10}{'rec/s':>8}{'db s':>9}{'store s':>9}"
        f"{'db ms/rec':>10}{'store ms/rec':>13}  S3 requests (per recording)",
    ]
    for r in report["sweeps"]:
        n = r["recordings"]
        if "error" in r:
            lines.append(f"   {r['backend']:<11}{r['variant']:<9}{n:>8}  {r['error']}")
            continue
        reqs = r["s3_requests"]
        per = ", ".join(f"{v / n:.3f}" for _, v in sorted(reqs.items()))
        lines.append(
            f"   {r['backend']:<11}{r['variant']:<9}{n:>8}{r['total_s']:>10.1f}{r['recordings_per_s']:>8.0f}"
            f"{r['db_s']:>9.1f}{r['store_s']:>9.1f}{1000 * r['db_s'] / n:>10.2f}"
            f"{1000 * r['store_s'] / n:>13.2f}"
            f"  {requests_text(reqs)}{f' ({per})' if reqs else ''}" + ("" if r["ok"] else "  CHECK FAILED")
        )
    moto = [r for r in report["requests"] + report["sweeps"] if "moto_peak_rss_mib" in r]
    if moto:
        lines += [
            "",
            "   moto peak RSS per S3 measurement (MiB): "
            + ", ".join(f"{moto_label(r)}: {r['moto_peak_rss_mib']}" for r in moto),
        ]
    s3 = [
        r for r in report["sweeps"] if r["backend"] == "s3" and r["variant"] == "batch" and "error" not in r
    ]
    fs_big = max(
        (
            r
            for r in report["sweeps"]
            if r["backend"] == "filesystem" and r["variant"] == "batch" and "error" not in r
        ),
        key=lambda r: r["recordings"],
        default=None,
    )
    if s3:
        big = max(s3, key=lambda r: r["recordings"])
        n = big["recordings"]
        lines += [
            "",
            f"   moto: a single-key ListObjectVersions took {big['probe_list_ms']:.0f} ms on the bucket of"
            f" {n} objects (moto copies every stored version on every listing).",
        ]
        if fs_big is not None:
            target = 100_000
            db_per = fs_big["db_s"] / fs_big["recordings"]
            store_per = big["store_s"] / n
            lines.append(
                f"   EXTRAPOLATED, not measured: S3 sweep of {target}: database part"
                f" {db_per * target:.0f} s (measured per recording at {fs_big['recordings']}, the same SQL on"
                f" either backend) + store part {store_per * target:.0f} s (moto's per-recording store time"
                f" at {n}, linearly) = {(db_per + store_per) * target:.0f} s."
            )
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------------------


async def measure(kind: str, item: Request | Sweep, s: Settings, root_url: str, tmp: Path) -> dict[str, Any]:
    """One measurement (with its own moto on S3); a failure is reported, not fatal."""
    moto: MotoProcess | None = None
    try:
        endpoint = ""
        if item.backend == "s3":
            moto = await MotoProcess(HARD_LIMIT_S).__aenter__()
            endpoint = moto.endpoint
        if isinstance(item, Request):
            result = await measure_request(item, s, root_url, tmp, endpoint)
        else:
            result = await measure_sweep(item, s, root_url, tmp, endpoint)
    except Exception as exc:
        say(f"  FAILED: {type(exc).__name__}: {exc}")
        result = {**item.__dict__, "error": f"{type(exc).__name__}: {exc}", "ok": False}
    finally:
        if moto is not None:
            await moto.__aexit__(None, None, None)
    if moto is not None:
        result["moto_peak_rss_mib"] = moto.peak_rss_kib // 1024
        result["moto_stopped_for_memory"] = moto.killed
    return result


async def bench(s: Settings) -> dict[str, Any]:
    from pgserver.postgres_server import get_server

    aws_test_env()
    started = time.perf_counter()
    requests: list[dict[str, Any]] = []
    sweeps: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="callrec-bench-erasure-") as name:
        tmp = Path(name)
        say("starting embedded PostgreSQL")
        server = await asyncio.to_thread(get_server, str(tmp / "pg"), cleanup_mode="stop")
        try:
            root_url = server.get_uri()
            machine = await machine_info(root_url, tmp, packages=PACKAGES)
            plan: list[tuple[str, Request | Sweep]] = [("requests", r) for r in s.requests]
            plan += [("sweeps", w) for w in s.sweeps]
            for kind, item in plan:
                result = await measure(kind, item, s, root_url, tmp)
                (requests if kind == "requests" else sweeps).append(result)
        finally:
            await asyncio.to_thread(server.cleanup)
    machine["loadavg_at_end"] = loadavg()
    return {
        "quick": s.quick,
        "seconds": time.perf_counter() - started,
        "machine": machine,
        "requests": requests,
        "sweeps": sweeps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--only", choices=("filesystem", "s3"), help="one backend only")
    parser.add_argument("--role", default="main", help=argparse.SUPPRESS)
    parser.add_argument("--spec", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.role == "moto":
        asyncio.run(moto_role(json.loads(args.spec)))
        return
    report = asyncio.run(asyncio.wait_for(bench(Settings.make(args.quick, args.only)), HARD_LIMIT_S))
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(render(report))


if __name__ == "__main__":
    main()
