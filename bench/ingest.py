"""Ingest benchmarks: webhook acks per second, end-to-end ingest throughput and the peak memory of
ingesting a one-hour call, measured in one run on this machine so that the ratios mean something.

    /tmp/venv/bin/python bench/ingest.py [--quick] [--json]

Everything runs on loopback and in a temporary directory that is removed afterwards: an embedded
PostgreSQL (pgserver), callrec's filesystem store and local keyring, a fake Twilio (Calls JSON and
recording media behind HTTP Basic auth) in its own process, and a load generator in its own process.

1. Webhook acks: signed Twilio ``recordingStatusCallback`` POSTs (a distinct RecordingSid each,
   signed with twilio's RequestValidator) against callrec's app served by aiohttp on 127.0.0.1
   (AppRunner + TCPSite, workers off: signature check + job committed in PostgreSQL), and against
   a bare aiohttp handler that reads the same form and answers 202, served the same way from the
   same process. The load generator runs in a separate process with a fixed concurrency. Afterwards
   the job rows are counted against the 202s received (rule 4: nothing acknowledged is lost).
2. End-to-end ingest: N one-minute 8 kHz mono 16-bit WAVs queued through signed webhooks, then
   processed by ``Worker.run(concurrency)``: fetch Calls + media from the fake Twilio, probe,
   encrypt, store (fsync), commit row + audit entry. Reports recordings/s and MB/s of audio.
3. Peak RSS of ingesting one one-hour stereo 8 kHz 16-bit WAV (~115 MB) in a fresh process, and a
   second instrumented run that attributes the peak to the worker's steps.
4. The machine: CPUs, CPU model, Python, PostgreSQL and its durability settings, fsync latency.

Progress goes to stderr; the results table (or, with ``--json``, a JSON document) to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import logging
import os
import resource
import signal
import statistics
import sys
import tempfile
import time
import uuid
import wave
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import aiohttp
import asyncpg
from aiohttp import web
from machine import loadavg, machine_info, machine_lines

from callrec.config import Config, config_from_mapping

log = logging.getLogger("bench.ingest")

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "bench-twilio-auth-token"
TENANT = "acme"
PUBLIC_BASE = "https://callrec.bench.test"
# Consent tags ride on the callback URL like a real deployment's do, signed with it.
CALLBACK_PATH = f"/webhooks/twilio/{TENANT}?" + urlencode(
    {"announcement": "rec-notice", "consent": "implied", "basis": "legitimate_interests"}
)
HARD_LIMIT_S = 15 * 60  # the whole run, whatever happens
PACKAGES = ("aiohttp", "asyncpg")  # versions quoted with the machine
_T = TypeVar("_T")


@dataclass(frozen=True)
class Settings:
    quick: bool
    ack_warmup: int
    ack_count: int
    ack_seconds: float
    ack_rounds: int
    concurrency: int
    e2e_recordings: int
    e2e_concurrencies: tuple[int, ...]
    e2e_seconds: float
    rss_minutes: int

    @classmethod
    def make(cls, quick: bool) -> Settings:
        # Ack runs are bounded by time first (the same window for both servers) and by count.
        if quick:
            return cls(True, 200, 20_000, 2.0, 1, 32, 10, (2,), 60.0, 60)
        return cls(False, 500, 60_000, 5.0, 3, 32, 50, (1, 2, 4), 120.0, 60)


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --- measuring ---------------------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def proc_cpu(pid: int) -> float:
    """utime + stime of one process from /proc (0 when it has gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def postgres_pids(pgdata: Path) -> list[int]:
    """The postmaster (from its postmaster.pid) and its live children: the backends and helpers."""
    try:
        postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == postmaster:
            pids.append(int(entry.name))
    return pids


@dataclass(frozen=True)
class Snapshot:
    wall: float
    server_cpu: float
    pg_cpu: float

    @classmethod
    def take(cls, pgdata: Path) -> Snapshot:
        return cls(time.perf_counter(), self_cpu(), sum(proc_cpu(p) for p in postgres_pids(pgdata)))


def proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak_rss() -> bool:
    """Reset VmHWM (and so ru_maxrss) to the current RSS (Linux >= 4.0); False when not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def percentile(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


# --- shared pieces -----------------------------------------------------------------------------


def signed_callback(
    recording_sid: str, media_base: str, *, duration_s: int, channels: int
) -> tuple[bytes, str]:
    """A form-encoded Twilio recordingStatusCallback body and its X-Twilio-Signature."""
    from twilio.request_validator import RequestValidator

    form = {
        "AccountSid": ACCOUNT_SID,
        "CallSid": "CA" + uuid.uuid4().hex,
        "RecordingSid": recording_sid,
        "RecordingUrl": f"{media_base}/2010-04-01/Accounts/{ACCOUNT_SID}/Recordings/{recording_sid}",
        "RecordingStatus": "completed",
        "RecordingDuration": str(duration_s),
        "RecordingChannels": str(channels),
        "RecordingStartTime": "Mon, 23 Nov 2026 10:00:01 +0000",
        "RecordingSource": "RecordVerb",
        "RecordingTrack": "both",
    }
    signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC_BASE + CALLBACK_PATH, form)
    return urlencode(form).encode(), signature


def form_headers(signature: str) -> dict[str, str]:
    return {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature}


ACKS_MEDIA_BASE = "http://127.0.0.1:9"  # named in the acks phase's callbacks, never fetched: workers are off


def bench_config(data_dir: Path, database_url: str, *, twilio_base: str, workers: int = 2) -> Config:
    """``twilio_base``: the fake Twilio serving media and the Calls API (media_hosts match ports)."""
    return config_from_mapping(
        {
            "data_dir": str(data_dir),
            "log_level": "WARNING",
            "server": {"host": "127.0.0.1", "port": 0, "public_base_url": PUBLIC_BASE},
            "database": {"url": database_url},
            "storage": {"backend": "filesystem", "path": str(data_dir / "objects")},
            "keys": {"provider": "local", "path": str(data_dir / "keyring.json")},
            "ingest": {"media_hosts": [twilio_base.removeprefix("http://")], "workers": workers},
            "tenants": {
                TENANT: {
                    "twilio_account_sid": ACCOUNT_SID,
                    "twilio_auth_token": AUTH_TOKEN,
                    "twilio_api_base": twilio_base,
                }
            },
        }
    )


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on 127.0.0.1 and an ephemeral port, as ``callrec serve`` does (no access log)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = int(runner.addresses[0][1])
    return runner, port


def with_database(url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(url)._replace(path="/" + name))


async def create_database(root_url: str, name: str) -> str:
    conn = await asyncpg.connect(root_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(root_url, name)


# A child's ru_maxrss starts at the high-water mark of the process that exec'd it (Linux records the
# old address space's peak at exec, and Python spawns with vfork), so a child started straight from
# this process would report at least this process's peak. Started through this small launcher, the
# child's ru_maxrss counts only its own memory.
_LAUNCHER = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


async def run_child(
    role: str,
    spec: dict[str, Any],
    *,
    timeout: float,
    on_line: Callable[[str], None] | None = None,
    clean_maxrss: bool = False,
) -> dict[str, Any]:
    """Run this script in ``role`` in a fresh interpreter; return the JSON object it prints last."""
    argv = [sys.executable, __file__, "--role", role, "--spec", json.dumps(spec)]
    if clean_maxrss:
        argv = [sys.executable, "-S", "-c", _LAUNCHER, *argv]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, start_new_session=clean_maxrss
    )
    assert proc.stdout is not None
    result: dict[str, Any] = {}

    async def read() -> None:
        assert proc.stdout is not None
        for _ in range(100_000):
            line = await proc.stdout.readline()
            if not line:
                break
            text = line.decode().strip()
            if text.startswith("{"):
                result.update(json.loads(text))
            elif on_line is not None:
                on_line(text)
        await proc.wait()

    try:
        await asyncio.wait_for(read(), timeout)
    except TimeoutError:
        if clean_maxrss:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher's own group: it and the child it started
        else:
            proc.kill()
        await proc.wait()
        raise RuntimeError(f"the {role} process did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"the {role} process exited with status {proc.returncode}")
    return result


class FakeTwilioProcess:
    """A fake Twilio in its own process (see :func:`fake_twilio_role`), serving one media file."""

    def __init__(self, media: Path, max_seconds: float) -> None:
        self.media = media
        self.max_seconds = max_seconds
        self.proc: asyncio.subprocess.Process | None = None
        self.base = ""

    async def __aenter__(self) -> FakeTwilioProcess:
        spec = {"media": str(self.media), "max_seconds": self.max_seconds}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--role",
            "fake-twilio",
            "--spec",
            json.dumps(spec),
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        if not line:
            raise RuntimeError("the fake Twilio did not start")
        self.base = f"http://127.0.0.1:{json.loads(line)['port']}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.communicate(), 15)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


# --- child roles -------------------------------------------------------------------------------


async def fake_twilio_role(spec: dict[str, Any]) -> None:
    """Twilio's REST API as far as callrec uses it: Calls JSON and recording media, Basic auth."""
    media = Path(spec["media"])
    served = collections.Counter[str]()

    def authorised(request: web.Request) -> bool:
        try:
            auth = aiohttp.BasicAuth.decode(request.headers.get("Authorization", ""))
        except ValueError:
            return False
        return bool(auth.login == ACCOUNT_SID and auth.password == AUTH_TOKEN)

    async def recording(request: web.Request) -> web.StreamResponse:
        if not authorised(request):
            return web.Response(status=401)
        served["media"] += 1
        return web.FileResponse(media, headers={"Content-Type": "audio/x-wav"})

    async def call(request: web.Request) -> web.Response:
        if not authorised(request):
            return web.Response(status=401)
        served["calls"] += 1
        return web.json_response(
            {
                "sid": request.match_info["sid"],
                "from": "+447700900123",
                "to": "+14155550100",
                "direction": "inbound",
                "start_time": "Mon, 23 Nov 2026 10:00:00 +0000",
            }
        )

    app = web.Application()
    prefix = "/2010-04-01/Accounts/{account}"
    app.router.add_get(prefix + "/Recordings/{sid:RE[0-9a-f]+}", recording)
    app.router.add_get(prefix + "/Calls/{sid:CA[0-9a-f]+}.json", call)
    runner, port = await serve(app)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(json.dumps({"port": port}), flush=True)
    try:
        await asyncio.wait_for(stop.wait(), float(spec["max_seconds"]))
    except TimeoutError:
        pass
    finally:
        await runner.cleanup()
    print(json.dumps(dict(served)), flush=True)


async def loadgen_role(spec: dict[str, Any]) -> None:
    """POST pre-signed callbacks with a fixed concurrency; warm-up first, then the timed window.

    Prints START and END around the timed window (the server samples its CPU there), then a JSON
    result. Bounded by count and by time."""
    prefix = spec["sid_prefix"]
    warmup, count = int(spec["warmup"]), int(spec["count"])
    bodies = [
        signed_callback(
            "RE" + prefix + uuid.uuid4().hex[len(prefix) :], spec["media_base"], duration_s=60, channels=1
        )
        for _ in range(warmup + count)
    ]
    url = spec["url"] + CALLBACK_PATH
    concurrency = int(spec["concurrency"])
    statuses: collections.Counter[str] = collections.Counter()

    async def drive(
        session: aiohttp.ClientSession, items: list[tuple[bytes, str]], seconds: float
    ) -> list[float]:
        pending = iter(items)
        deadline = time.perf_counter() + seconds
        latencies: list[float] = []

        async def one_connection() -> None:
            for body, signature in pending:
                if time.perf_counter() > deadline:
                    return
                start = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=form_headers(signature)) as resp:
                        await resp.read()
                        statuses[str(resp.status)] += 1
                except (aiohttp.ClientError, TimeoutError) as exc:
                    statuses[exc.__class__.__name__] += 1
                    continue
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(one_connection() for _ in range(concurrency)))
        return latencies

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        await drive(session, bodies[:warmup], float(spec["seconds"]))
        print("START", flush=True)
        cpu0, wall0 = self_cpu(), time.perf_counter()
        latencies = await drive(session, bodies[warmup:], float(spec["seconds"]))
        wall, cpu = time.perf_counter() - wall0, self_cpu() - cpu0
        print("END", flush=True)
    print(
        json.dumps(
            {
                "completed": len(latencies),
                "seconds": wall,
                "loadgen_cpu_s": cpu,
                "statuses": dict(statuses),
                "p50_ms": percentile(latencies, 50) * 1000,
                "p99_ms": percentile(latencies, 99) * 1000,
                "max_ms": max(latencies, default=float("nan")) * 1000,
            }
        ),
        flush=True,
    )


class StepTracker:
    """Attributes the process's peak RSS to the innermost running step.

    At every step boundary it reads VmHWM (the peak since the last boundary), books it to the step
    that was running, and resets the peak to the current RSS. The steps run one after another (one
    ingest), in the event loop or in a worker thread; VmHWM is per process, so either is fine."""

    def __init__(self) -> None:
        self.stack: list[str] = ["other (event loop, SQL, webhook)"]
        self.since = time.perf_counter()
        self.start_rss = proc_status_kib("VmRSS")
        self.steps: dict[str, dict[str, float]] = {}

    def boundary(self) -> None:
        now = time.perf_counter()
        hwm, rss = proc_status_kib("VmHWM"), proc_status_kib("VmRSS")
        step = self.steps.setdefault(
            self.stack[-1], {"seconds": 0.0, "peak_kib": 0, "peak_over_start_kib": 0, "calls": 0}
        )
        step["seconds"] += now - self.since
        step["peak_kib"] = max(step["peak_kib"], hwm)
        step["peak_over_start_kib"] = max(step["peak_over_start_kib"], hwm - self.start_rss)
        reset_peak_rss()
        self.since = now
        self.start_rss = rss

    def enter(self, name: str) -> None:
        self.boundary()
        self.stack.append(name)
        self.steps.setdefault(name, {"seconds": 0.0, "peak_kib": 0, "peak_over_start_kib": 0, "calls": 0})
        self.steps[name]["calls"] += 1

    def leave(self) -> None:
        self.boundary()
        self.stack.pop()

    def wrap_sync(self, name: str, func: Callable[..., _T]) -> Callable[..., _T]:
        def wrapper(*args: Any, **kwargs: Any) -> _T:
            self.enter(name)
            try:
                return func(*args, **kwargs)
            finally:
                self.leave()

        return wrapper

    def wrap_async(self, name: str, func: Callable[..., Awaitable[_T]]) -> Callable[..., Awaitable[_T]]:
        async def wrapper(*args: Any, **kwargs: Any) -> _T:
            self.enter(name)
            try:
                return await func(*args, **kwargs)
            finally:
                self.leave()

        return wrapper


def instrument(app: web.Application, tracker: StepTracker) -> None:
    """Wrap the worker's steps (in this process only; callrec's files are untouched)."""
    from callrec import audio
    from callrec.appkeys import store_key
    from callrec.crypto import envelope
    from callrec.ingest import worker

    # (owner, attribute, step name, coroutine?). Patched here so that the worker's own calls, which
    # look these names up at call time, go through the tracker.
    targets: list[tuple[Any, str, str, bool]] = [
        (worker.Worker, "_get_json", "Calls JSON", True),
        (worker, "download", "download (aiohttp -> spool file)", True),
        (audio, "probe_file", "probe (callrec.audio.probe_file)", False),
        (worker, "seal_and_store", "seal_and_store (rest)", True),
        (envelope, "wrap_key", "wrap key", False),
        (envelope, "encrypt_stream", "encrypt (envelope.encrypt_stream)", False),
        (app[store_key], "put_file", "store put_file (copy + fsync)", True),
        (worker.Worker, "_commit", "commit (row + audit + job)", True),
    ]
    for owner, attribute, name, is_coroutine in targets:
        original = getattr(owner, attribute, None)
        if original is None:
            say(f"  (cannot instrument {attribute}: callrec has changed; that step is booked to its caller)")
            continue
        wrap = tracker.wrap_async if is_coroutine else tracker.wrap_sync
        setattr(owner, attribute, wrap(name, original))


async def rss_role(spec: dict[str, Any]) -> None:
    """Ingest one recording in this fresh process: webhook -> worker -> row. Reports peak RSS."""
    from callrec.app import create_app, worker_key
    from callrec.appkeys import db_key

    config = bench_config(Path(spec["data_dir"]), spec["database_url"], twilio_base=spec["media_base"])
    app = create_app(config, run_workers=False)
    runner, port = await serve(app)
    tracker: StepTracker | None = None
    try:
        sid = "RE" + uuid.uuid4().hex
        body, signature = signed_callback(sid, spec["media_base"], duration_s=3600, channels=2)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            gc.collect()
            peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            rss_before = proc_status_kib("VmRSS")
            reset = reset_peak_rss()  # from here ru_maxrss is the ingest's own peak
            if spec["steps"]:
                tracker = StepTracker()
                instrument(app, tracker)
            start = time.perf_counter()
            async with session.post(
                f"http://127.0.0.1:{port}{CALLBACK_PATH}", data=body, headers=form_headers(signature)
            ) as resp:
                status = resp.status
                await resp.read()
            if status != 202:
                raise RuntimeError(f"the webhook answered {status}")
            if not await asyncio.wait_for(app[worker_key].run_once(), 600):
                raise RuntimeError("the worker found no job")
            seconds = time.perf_counter() - start
            if tracker is not None:
                tracker.boundary()
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            hwm = proc_status_kib("VmHWM")
            rss_after = proc_status_kib("VmRSS")
        async with app[db_key].acquire() as conn:
            row = await conn.fetchrow(
                "SELECT size_bytes, ciphertext_bytes, duration_ms, channels FROM recordings"
            )
            job = await conn.fetchrow("SELECT state, last_error FROM jobs")
    finally:
        await runner.cleanup()
    if row is None:
        raise RuntimeError(f"no recording was stored: job {dict(job) if job else None}")
    steps = tracker.steps if tracker is not None else {}
    if tracker is not None and steps:
        # With per-step resets the process peak is the largest of the per-step peaks.
        peak = max(int(s["peak_kib"]) for s in steps.values())
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_before_kib": peak_before,
                "rss_before_kib": rss_before,
                "rss_after_kib": rss_after,
                "peak_kib": peak,
                "vmhwm_kib": hwm,
                "peak_reset": reset,
                "size_bytes": row["size_bytes"],
                "ciphertext_bytes": row["ciphertext_bytes"],
                "duration_ms": row["duration_ms"],
                "channels": row["channels"],
                "steps": steps,
            }
        ),
        flush=True,
    )


# --- audio ---------------------------------------------------------------------------------------


def minute_of_audio(channels: int) -> Any:
    """One minute at 8 kHz 16-bit from pydub's generators: a tone with noise (mono), or a tone on
    the left and noise on the right (stereo, like an agent/caller split recording)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        from pydub import AudioSegment
        from pydub.generators import Sine, WhiteNoise

    tone = Sine(440, sample_rate=8000, bit_depth=16).to_audio_segment(duration=60_000, volume=-12.0)
    noise = WhiteNoise(sample_rate=8000, bit_depth=16).to_audio_segment(duration=60_000, volume=-30.0)
    if channels == 1:
        return tone.overlay(noise)
    return AudioSegment.from_mono_audiosegments(tone, noise)


def write_wav(path: Path, minute: Any, minutes: int) -> int:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(minute.channels)
        out.setsampwidth(minute.sample_width)
        out.setframerate(minute.frame_rate)
        for _ in range(minutes):
            out.writeframes(minute.raw_data)
    return path.stat().st_size


# --- phases --------------------------------------------------------------------------------------


async def bare_app() -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        await request.post()
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/webhooks/twilio/{tenant}", handler)
    return app


async def sample_waits(url: str, waits: collections.Counter[str], *, seconds: float) -> None:
    """Count what callrec's PostgreSQL backends are doing, every 20 ms (bounded in count and time)."""
    conn = await asyncpg.connect(url)
    deadline = time.perf_counter() + seconds
    try:
        for _ in range(int(seconds / 0.02) + 1):
            if time.perf_counter() > deadline:
                break
            rows = await conn.fetch(
                "SELECT state, coalesce(wait_event_type || ':' || wait_event, 'on CPU') AS w"
                " FROM pg_stat_activity WHERE backend_type = 'client backend'"
                " AND datname = current_database() AND pid <> pg_backend_pid()"
            )
            for row in rows:
                waits[f"{row['state']} / {row['w']}"] += 1
            await asyncio.sleep(0.02)
    finally:
        await conn.close()


async def ack_run(
    s: Settings, name: str, port: int, round_no: int, pgdata: Path, url: str | None
) -> dict[str, Any]:
    """One load-generator run against one server; CPU sampled around the timed window."""
    marks: dict[str, Snapshot] = {}

    def on_line(text: str) -> None:
        if text in ("START", "END"):
            marks[text] = Snapshot.take(pgdata)

    spec = {
        "url": f"http://127.0.0.1:{port}",
        "media_base": ACKS_MEDIA_BASE,
        "sid_prefix": f"{round_no:02x}",
        "warmup": s.ack_warmup,
        "count": s.ack_count,
        "seconds": s.ack_seconds,
        "concurrency": s.concurrency,
    }
    waits: collections.Counter[str] = collections.Counter()
    sampler = asyncio.create_task(sample_waits(url, waits, seconds=3 * s.ack_seconds + 60)) if url else None
    try:
        result = await run_child("loadgen", spec, timeout=2 * s.ack_seconds + 120, on_line=on_line)
    finally:
        if sampler is not None:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
    start, end = marks["START"], marks["END"]
    wall = end.wall - start.wall
    done = max(result["completed"], 1)
    result["acks_per_s"] = result["completed"] / result["seconds"]
    result["server_cpu_pct"] = 100 * (end.server_cpu - start.server_cpu) / wall
    result["pg_cpu_pct"] = 100 * (end.pg_cpu - start.pg_cpu) / wall
    result["loadgen_cpu_pct"] = 100 * result["loadgen_cpu_s"] / result["seconds"]
    result["cpu_us_per_ack"] = {
        "server": 1e6 * (end.server_cpu - start.server_cpu) / done,
        "postgres": 1e6 * (end.pg_cpu - start.pg_cpu) / done,
        "loadgen": 1e6 * result["loadgen_cpu_s"] / done,
    }
    total = sum(waits.values())
    result["pg_backends"] = {k: round(100 * v / total, 1) for k, v in waits.most_common(6)} if total else {}
    say(
        f"  {name:<8} round {round_no + 1}: {result['acks_per_s']:8.0f} acks/s,"
        f" p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, statuses {result['statuses']}"
    )
    return result


async def phase_acks(s: Settings, root_url: str, pgdata: Path, tmp: Path) -> dict[str, Any]:
    from callrec.app import create_app
    from callrec.appkeys import db_key

    say("phase 1: webhook acks (callrec vs bare aiohttp)")
    url = await create_database(root_url, "bench_acks")
    config = bench_config(tmp / "acks", url, twilio_base=ACKS_MEDIA_BASE)
    callrec_runner, callrec_port = await serve(create_app(config, run_workers=False))
    bare_runner, bare_port = await serve(await bare_app())
    runs: dict[str, list[dict[str, Any]]] = {"bare": [], "callrec": []}
    try:
        # Alternate, so that each callrec run has a bare run next to it on the same machine state.
        for round_no in range(s.ack_rounds):
            runs["bare"].append(await ack_run(s, "bare", bare_port, round_no, pgdata, None))
            runs["callrec"].append(await ack_run(s, "callrec", callrec_port, round_no, pgdata, url))
        async with callrec_runner.app[db_key].acquire() as conn:
            jobs = await conn.fetchrow(
                "SELECT count(*) AS n, count(DISTINCT dedupe_key) AS distinct_keys,"
                " count(*) FILTER (WHERE state = 'queued') AS queued FROM jobs WHERE kind = 'ingest.twilio'"
            )
            assert jobs is not None
    finally:
        await callrec_runner.cleanup()
        await bare_runner.cleanup()

    ratios = [c["acks_per_s"] / b["acks_per_s"] for b, c in zip(runs["bare"], runs["callrec"], strict=True)]
    acked = sum(int(r["statuses"].get("202", 0)) for r in runs["callrec"])
    non_202: collections.Counter[str] = collections.Counter()
    for r in runs["callrec"]:
        non_202.update({k: v for k, v in r["statuses"].items() if k != "202"})
    return {
        "concurrency": s.concurrency,
        "seconds_per_run": s.ack_seconds,
        "max_requests_per_run": s.ack_count,
        "warmup_per_run": s.ack_warmup,
        "rounds": s.ack_rounds,
        "db_pool_max": config.database.pool_max,
        "runs": runs,
        "ratios": ratios,
        "ratio": statistics.median(ratios),
        "median": {
            name: {
                key: statistics.median(r[key] for r in runs[name])
                for key in (
                    "acks_per_s",
                    "p50_ms",
                    "p99_ms",
                    "server_cpu_pct",
                    "pg_cpu_pct",
                    "loadgen_cpu_pct",
                )
            }
            for name in runs
        },
        "bare_limited_by_loadgen": any(r["loadgen_cpu_pct"] > 90 for r in runs["bare"]),
        "loss_check": {
            "acked_202": acked,
            "other_statuses": dict(non_202),
            "job_rows": jobs["n"],
            "distinct_recording_sids": jobs["distinct_keys"],
            "queued": jobs["queued"],
            "ok": acked == jobs["n"] == jobs["distinct_keys"] and not non_202,
        },
    }


async def post_callbacks(port: int, bodies: Iterable[tuple[bytes, str]], *, parallel: int = 8) -> list[int]:
    gate = asyncio.Semaphore(parallel)
    url = f"http://127.0.0.1:{port}{CALLBACK_PATH}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def one(body: bytes, signature: str) -> int:
            async with gate, session.post(url, data=body, headers=form_headers(signature)) as resp:
                await resp.read()
                return resp.status

        return list(await asyncio.wait_for(asyncio.gather(*(one(b, sig) for b, sig in bodies)), 300))


async def phase_e2e(s: Settings, root_url: str, pgdata: Path, tmp: Path) -> dict[str, Any]:
    from callrec.app import create_app, worker_key
    from callrec.appkeys import db_key

    say(f"phase 2: end-to-end ingest of {s.e2e_recordings} one-minute mono WAVs")
    media = tmp / "minute-mono.wav"
    size = write_wav(media, minute_of_audio(1), 1)
    results: list[dict[str, Any]] = []
    async with FakeTwilioProcess(media, max_seconds=HARD_LIMIT_S) as fake:
        for concurrency in s.e2e_concurrencies:
            url = await create_database(root_url, f"bench_e2e_c{concurrency}")
            config = bench_config(
                tmp / f"e2e-c{concurrency}", url, twilio_base=fake.base, workers=concurrency
            )
            app = create_app(config, run_workers=False)
            runner, port = await serve(app)
            watcher = await asyncpg.connect(url)
            task: asyncio.Task[None] | None = None
            try:
                bodies = [
                    signed_callback("RE" + uuid.uuid4().hex, fake.base, duration_s=60, channels=1)
                    for _ in range(s.e2e_recordings)
                ]
                statuses = await post_callbacks(port, bodies)
                if statuses.count(202) != s.e2e_recordings:
                    raise RuntimeError(f"webhooks were not all accepted: {collections.Counter(statuses)}")
                gc.collect()
                start = Snapshot.take(pgdata)
                task = asyncio.create_task(app[worker_key].run(concurrency))
                deadline = time.perf_counter() + s.e2e_seconds
                finished = 0
                for _ in range(int(s.e2e_seconds / 0.01) + 1):
                    if time.perf_counter() > deadline:
                        break
                    finished = await watcher.fetchval(
                        "SELECT count(*) FROM jobs WHERE state IN ('done', 'dead')"
                    )
                    if finished >= s.e2e_recordings or task.done():
                        break
                    await asyncio.sleep(0.01)
                end = Snapshot.take(pgdata)
            finally:
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                await watcher.close()
            try:
                async with app[db_key].acquire() as conn:
                    stats = await conn.fetchrow(
                        "SELECT count(*) AS n, coalesce(sum(size_bytes), 0)::bigint AS audio,"
                        " coalesce(sum(ciphertext_bytes), 0)::bigint AS cipher FROM recordings"
                    )
                    assert stats is not None
                    states = dict(await conn.fetch("SELECT state, count(*) FROM jobs GROUP BY state"))
                    errors = [
                        r["last_error"]
                        for r in await conn.fetch("SELECT last_error FROM jobs WHERE state = 'dead' LIMIT 3")
                    ]
            finally:
                await runner.cleanup()
            wall = end.wall - start.wall
            result = {
                "concurrency": concurrency,
                "configured_default": concurrency == Config().ingest.workers,
                "recordings": stats["n"],
                "finished_jobs": finished,
                "job_states": states,
                "dead_errors": errors,
                "seconds": wall,
                "recordings_per_s": stats["n"] / wall,
                "audio_mb_per_s": stats["audio"] / 1e6 / wall,
                "audio_mb": stats["audio"] / 1e6,
                "ciphertext_mb": stats["cipher"] / 1e6,
                "server_cpu_pct": 100 * (end.server_cpu - start.server_cpu) / wall,
                "pg_cpu_pct": 100 * (end.pg_cpu - start.pg_cpu) / wall,
                "server_cpu_ms_per_recording": 1000
                * (end.server_cpu - start.server_cpu)
                / max(stats["n"], 1),
            }
            results.append(result)
            say(
                f"  concurrency {concurrency}: {result['recordings']} recordings in {wall:.2f} s = "
                f"{result['recordings_per_s']:.1f}/s, {result['audio_mb_per_s']:.1f} MB/s, states {states}"
            )
    return {"file_bytes": size, "file_seconds": 60, "recordings": s.e2e_recordings, "runs": results}


async def phase_rss(s: Settings, root_url: str, tmp: Path) -> dict[str, Any]:
    say(f"phase 3: peak RSS ingesting one {s.rss_minutes}-minute stereo WAV in a fresh process")
    media = tmp / "hour-stereo.wav"
    size = write_wav(media, minute_of_audio(2), s.rss_minutes)
    out: dict[str, Any] = {"file_bytes": size, "minutes": s.rss_minutes}
    async with FakeTwilioProcess(media, max_seconds=HARD_LIMIT_S) as fake:
        for mode in ("clean", "steps"):
            url = await create_database(root_url, f"bench_rss_{mode}")
            spec = {
                "database_url": url,
                "data_dir": str(tmp / f"rss-{mode}"),
                "media_base": fake.base,
                "steps": mode == "steps",
            }
            result = await run_child("rss", spec, timeout=600, clean_maxrss=True)
            if result["size_bytes"] != size:
                raise RuntimeError(f"stored {result['size_bytes']} bytes of a {size}-byte file")
            out[mode] = result
            delta = (result["peak_kib"] - result["rss_before_kib"]) * 1024
            say(
                f"  {mode}: {result['seconds']:.1f} s, RSS before {result['rss_before_kib'] / 1024:.0f} MiB,"
                f" peak {result['peak_kib'] / 1024:.0f} MiB"
                f" (+{delta / 2**20:.0f} MiB = {delta / size:.2f}x file)"
            )
    # media and the stored objects are in tmp; remove the big ones now
    media.unlink(missing_ok=True)
    return out


# --- report --------------------------------------------------------------------------------------


def render(report: dict[str, Any]) -> str:
    m, acks, e2e, rss = report["machine"], report["acks"], report["e2e"], report["rss"]
    lines = [
        f"callrec ingest bench ({'quick' if report['quick'] else 'full'}), {report['seconds']:.0f} s",
        *machine_lines(m, packages=PACKAGES),
        "",
        f"1. Webhook acks: signed recordingStatusCallback POSTs, {acks['seconds_per_run']:.0f} s per run "
        f"(at most {acks['max_requests_per_run']}) after {acks['warmup_per_run']} warm-up, concurrency "
        f"{acks['concurrency']},",
        f"   load generator in its own process; {acks['rounds']} alternating round(s); callrec workers off, "
        f"db pool_max {acks['db_pool_max']}",
        f"   {'run':<11}{'acks/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}"
        f"{'srv CPU%':>9}{'pg CPU%':>8}{'gen CPU%':>9}  {'CPU us/ack srv+pg+gen':<23}callrec/bare",
    ]
    for i, (bare, cr) in enumerate(zip(acks["runs"]["bare"], acks["runs"]["callrec"], strict=True)):
        for name, r in (("bare", bare), ("callrec", cr)):
            c = r["cpu_us_per_ack"]
            cpu = f"{c['server']:.0f} + {c['postgres']:.0f} + {c['loadgen']:.0f}"
            ratio = f"{100 * acks['ratios'][i]:.1f}%" if name == "callrec" else ""
            lines.append(
                f"   {name + ' ' + str(i + 1):<11}{r['acks_per_s']:>8.0f}{r['p50_ms']:>8.1f}"
                f"{r['p99_ms']:>8.1f}{r['max_ms']:>8.1f}{r['server_cpu_pct']:>9.0f}{r['pg_cpu_pct']:>8.0f}{r['loadgen_cpu_pct']:>9.0f}"
                f"  {cpu:<23}{ratio}"
            )
    med, loss = acks["median"], acks["loss_check"]
    lines += [
        f"   median: bare {med['bare']['acks_per_s']:.0f} acks/s,"
        f" callrec {med['callrec']['acks_per_s']:.0f} acks/s"
        f" (p50 {med['callrec']['p50_ms']:.1f} ms, p99 {med['callrec']['p99_ms']:.1f} ms); callrec/bare "
        f"{acks['ratio'] * 100:.1f}% (median of the per-round ratios; target >= 40%: "
        f"{'met' if acks['ratio'] >= 0.4 else 'NOT met'})",
    ]
    if acks["bare_limited_by_loadgen"]:
        lines.append(
            "   note: the load generator used > 90% of a CPU against bare, so bare's capacity is higher than"
            " shown and the ratio is an upper bound"
        )
    backends = acks["runs"]["callrec"][-1]["pg_backends"]
    lines += [
        "   callrec's PostgreSQL backends during the last run (state / wait event, % of samples): "
        + ", ".join(f"{k} {v}%" for k, v in backends.items()),
        f"   loss check: {loss['acked_202']} x 202 received, {loss['job_rows']} job rows "
        f"({loss['distinct_recording_sids']} distinct RecordingSids), other statuses "
        f"{loss['other_statuses'] or 'none'} -> {'OK' if loss['ok'] else 'MISMATCH'}",
        "",
        f"2. End-to-end ingest: {e2e['recordings']} x {e2e['file_seconds']} s 8 kHz mono 16-bit WAV "
        f"({e2e['file_bytes'] / 1e6:.2f} MB each), fake Twilio in its own process, Worker.run(concurrency)",
        f"   {'workers':<10}{'recs':>6}{'seconds':>9}{'recs/s':>9}{'audio MB/s':>12}"
        f"{'srv CPU%':>10}{'pg CPU%':>9}{'srv CPU ms/rec':>16}  job states",
    ]
    for r in e2e["runs"]:
        label = f"{r['concurrency']}{' (default)' if r['configured_default'] else ''}"
        lines.append(
            f"   {label:<10}{r['recordings']:>6}{r['seconds']:>9.2f}{r['recordings_per_s']:>9.1f}"
            f"{r['audio_mb_per_s']:>12.1f}{r['server_cpu_pct']:>10.0f}{r['pg_cpu_pct']:>9.0f}"
            f"{r['server_cpu_ms_per_recording']:>16.1f}  {r['job_states']}"
        )
    size = rss["file_bytes"]
    clean = rss["clean"]
    delta = (clean["peak_kib"] - clean["rss_before_kib"]) * 1024
    total = clean["peak_kib"] * 1024
    lines += [
        "",
        f"3. Peak RSS, one {rss['minutes']}-minute stereo 8 kHz 16-bit WAV ({size / 1e6:.1f} MB),"
        " whole ingest (webhook -> Calls JSON -> download -> probe -> encrypt -> store -> row)",
        f"   in a fresh process: ingest time {clean['seconds']:.1f} s; RSS right before the ingest"
        f" {clean['rss_before_kib'] / 1024:.0f} MiB (start-up had peaked at"
        f" {clean['peak_before_kib'] / 1024:.0f} MiB; the peak counter is reset before the ingest)",
        f"   ru_maxrss after the ingest {clean['peak_kib'] / 1024:.0f} MiB"
        f" (VmHWM {clean['vmhwm_kib'] / 1024:.0f} MiB)",
        f"   peak - before = {delta / 2**20:.1f} MiB = {delta / size:.2f}x file;  total peak = "
        f"{total / 2**20:.0f} MiB = {total / size:.2f}x file  (target < 3x: "
        f"{'met' if delta < 3 * size else 'NOT met'} for the ingest's own memory, "
        f"{'met' if total < 3 * size else 'NOT met'} for the process total)",
        "   per step (instrumented run; peak RSS while the step ran, over the RSS when it started):",
        f"   {'step':<40}{'calls':>6}{'seconds':>9}{'+MiB':>8}{'x file':>8}{'peak MiB':>10}",
    ]
    for name, st in sorted(rss["steps"]["steps"].items(), key=lambda kv: -kv[1]["peak_over_start_kib"]):
        over = st["peak_over_start_kib"] * 1024
        lines.append(
            f"   {name:<40}{int(st['calls']):>6}{st['seconds']:>9.2f}{over / 2**20:>8.1f}{over / size:>8.2f}"
            f"{st['peak_kib'] / 1024:>10.0f}"
        )
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------------


async def bench(s: Settings) -> dict[str, Any]:
    from pgserver.postgres_server import get_server

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="callrec-bench-") as name:
        tmp = Path(name)
        pgdata = tmp / "pg"
        say("starting embedded PostgreSQL")
        server = await asyncio.to_thread(get_server, str(pgdata), cleanup_mode="stop")
        try:
            root_url = server.get_uri()
            machine = await machine_info(root_url, tmp, packages=PACKAGES)
            acks = await phase_acks(s, root_url, pgdata, tmp)
            e2e = await phase_e2e(s, root_url, pgdata, tmp)
            rss = await phase_rss(s, root_url, tmp)
        finally:
            await asyncio.to_thread(server.cleanup)
    machine["loadavg_at_end"] = loadavg()
    return {
        "quick": s.quick,
        "seconds": time.perf_counter() - started,
        "machine": machine,
        "acks": acks,
        "e2e": e2e,
        "rss": rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer requests and recordings (about a minute)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--role", default="main", help=argparse.SUPPRESS)
    parser.add_argument("--spec", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    spec = json.loads(args.spec)
    roles: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {
        "loadgen": loadgen_role,
        "fake-twilio": fake_twilio_role,
        "rss": rss_role,
    }
    if args.role in roles:
        asyncio.run(asyncio.wait_for(roles[args.role](spec), HARD_LIMIT_S))
        return
    report = asyncio.run(asyncio.wait_for(bench(Settings.make(args.quick)), HARD_LIMIT_S))
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(render(report))


if __name__ == "__main__":
    main()
