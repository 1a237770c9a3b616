"""Several `callrec worker` processes against one database: every job done exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from twilio.request_validator import RequestValidator

from callrec.appkeys import db_key
from callrec.db import audit

TWILIO_SID = "AC" + "0123456789abcdef" * 2
TWILIO_TOKEN = "twilio-auth-token-for-tests"


def worker_env(tmp_path: Path, database_url: str, twilio_base: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLREC_")}
    env.update(
        {
            "CALLREC_DATA_DIR": str(tmp_path / "data"),  # same keyring and store as the test's app
            "CALLREC_DATABASE__URL": database_url,
            "CALLREC_INGEST__MEDIA_HOSTS": twilio_base.removeprefix("http://"),
            "CALLREC_INGEST__WORKERS": "2",
            "CALLREC_TENANTS__ACME__TWILIO_ACCOUNT_SID": TWILIO_SID,
            "CALLREC_TENANTS__ACME__TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
            "CALLREC_TENANTS__ACME__TWILIO_API_BASE": twilio_base,
            "CALLREC_TENANTS__OTHER__RETENTION": "90d",
        }
    )
    return env


async def test_two_worker_processes_share_the_queue(
    client: Any, fake_twilio: Any, audio_fixtures: Path, tmp_path: Path, database_url: str
) -> None:
    audio = (audio_fixtures / "call-without-announcement.wav").read_bytes()
    n = 12
    fake_twilio.media_delay = 0.5  # 12 jobs take one process (2 at a time) 3 s: the second joins in
    await queue_recordings(client, fake_twilio, audio, n)

    env = worker_env(tmp_path, database_url, fake_twilio.base)
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "callrec",
            "worker",
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    try:
        async with client.app[db_key].acquire() as conn:
            for _ in range(300):  # at most 60 s
                if await conn.fetchval("SELECT count(*) FROM jobs WHERE state = 'done'") == n:
                    break
                await asyncio.sleep(0.2)
            jobs = await conn.fetch("SELECT state, attempts, locked_by FROM jobs")
            recordings = await conn.fetchval("SELECT count(*) FROM recordings")
            ingested = await conn.fetchval(
                "SELECT count(*) FROM audit_log WHERE action = 'recording:ingested'"
            )
            chain = await audit.verify(conn)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        errors = [await asyncio.wait_for(p.communicate(), 30) for p in procs]
    assert [j["state"] for j in jobs] == ["done"] * n, errors
    assert all(j["attempts"] == 1 for j in jobs)  # nobody processed a job twice
    assert recordings == n and ingested == n
    # Both processes took work (process ids differ in locked_by).
    assert len({j["locked_by"].rsplit(":", 1)[0] for j in jobs}) == 2
    assert chain.ok, chain.problems
    assert all(p.returncode == 0 for p in procs), errors


# --- leases and shutdown: a worker killed, a worker stopped ---------------------------------


class Running:
    """A `callrec` process whose log (stderr) is read as it runs, so that a test can wait for
    the line that says what the process is doing instead of guessing how long it takes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.log: list[str] = []
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, env: dict[str, str], *command: str) -> Running:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "callrec",
            *(command or ("worker",)),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.log.append(line.decode(errors="replace"))

    async def logged(self, text: str, *, timeout: float = 30) -> None:
        for _ in range(int(timeout * 10)):
            if any(text in line for line in self.log):
                return
            assert self.proc.returncode is None, "".join(self.log)
            await asyncio.sleep(0.1)
        raise AssertionError(f"{text!r} was not logged:\n" + "".join(self.log))

    async def exit_code(self, *, timeout: float = 60) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await self._reader
        return code

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await asyncio.wait_for(self.proc.wait(), 30)
        await self._reader


async def queue_recordings(client: Any, fake_twilio: Any, audio: bytes, n: int) -> None:
    for _ in range(n):
        sid = "RE" + uuid.uuid4().hex
        fake_twilio.media[sid] = audio
        form = {
            "AccountSid": TWILIO_SID,
            "CallSid": "CA" + uuid.uuid4().hex,
            "RecordingSid": sid,
            "RecordingUrl": fake_twilio.recording_url(sid),
            "RecordingStatus": "completed",
        }
        path = "/webhooks/twilio/acme?consent=granted&basis=contract"
        sig = RequestValidator(TWILIO_TOKEN).compute_signature("https://callrec.example.test" + path, form)
        assert (await client.post(path, data=form, headers={"X-Twilio-Signature": sig})).status == 202


async def media_requested(fake_twilio: Any, n: int, *, worker: Running) -> None:
    """Wait until the fake provider has been asked for media ``n`` times: a worker is mid-job."""
    for _ in range(300):  # at most 30 s
        if fake_twilio.media_requests >= n:
            return
        assert worker.proc.returncode is None, "".join(worker.log)
        await asyncio.sleep(0.1)
    raise AssertionError("no worker asked for the media:\n" + "".join(worker.log))


async def wait_for_state(conn: Any, state: str, *, seconds: int) -> None:
    for _ in range(seconds * 5):
        if await conn.fetchval("SELECT state FROM jobs") == state:
            return
        await asyncio.sleep(0.2)


async def test_a_killed_workers_job_is_taken_over_within_a_minute(
    client: Any, fake_twilio: Any, audio_fixtures: Path, tmp_path: Path, database_url: str
) -> None:
    """kill -9 in the middle of a download, with the default lease: the job's lease runs out
    well inside a minute of the worker's death and another worker finishes the job."""
    audio = (audio_fixtures / "call-without-announcement.wav").read_bytes()
    await queue_recordings(client, fake_twilio, audio, 1)
    fake_twilio.media_gate = asyncio.Event()  # the download lasts until the worker is dead
    env = {**worker_env(tmp_path, database_url, fake_twilio.base), "CALLREC_INGEST__WORKERS": "1"}
    first = await Running.start(env)
    second: Running | None = None
    try:
        await media_requested(fake_twilio, 1, worker=first)
        async with client.app[db_key].acquire() as conn:
            claimed = await conn.fetchrow(
                """SELECT state, attempts, locked_by, lease_until - now() AS left,
                          lease_until - updated_at AS lease FROM jobs"""
            )
            first.proc.send_signal(signal.SIGKILL)
            assert await first.exit_code() == -signal.SIGKILL
            # As the worker died, the lease it held had at most a minute to run (the default
            # claims for 30 s and renews every 10 s), not the ten minutes it used to be.
            assert (claimed["state"], claimed["attempts"]) == ("running", 1)
            assert claimed["lease"] <= timedelta(minutes=1), claimed["lease"]
            assert claimed["left"] <= timedelta(minutes=1), claimed["left"]
            fake_twilio.media_gate.set()
            second = await Running.start(env)
            await wait_for_state(conn, "done", seconds=90)
            job = await conn.fetchrow("SELECT state, attempts, locked_by FROM jobs")
            recordings = await conn.fetchval("SELECT count(*) FROM recordings")
            chain = await audit.verify(conn)
    finally:
        await first.stop()
        if second is not None:
            second.proc.send_signal(signal.SIGTERM)
            code = await second.exit_code()
    assert job["state"] == "done", second.log if second else first.log
    assert job["attempts"] == 2  # the dead worker's attempt, then the one that finished
    assert job["locked_by"].rsplit(":", 1)[0] != claimed["locked_by"].rsplit(":", 1)[0]
    assert recordings == 1 and chain.ok, chain.problems
    assert code == 0


@pytest.mark.parametrize("command", ["worker", "serve"])
async def test_sigterm_lets_the_running_job_finish_and_claims_no_more(
    command: str, client: Any, fake_twilio: Any, audio_fixtures: Path, tmp_path: Path, database_url: str
) -> None:
    audio = (audio_fixtures / "call-without-announcement.wav").read_bytes()
    await queue_recordings(client, fake_twilio, audio, 2)
    fake_twilio.media_gate = asyncio.Event()
    env = {
        **worker_env(tmp_path, database_url, fake_twilio.base),
        "CALLREC_INGEST__WORKERS": "1",
        "CALLREC_SERVER__PORT": "0",  # serve: any free port
        "CALLREC_RETENTION__SWEEP_IN_SERVE": "false",
    }
    running = await Running.start(env, command)
    try:
        await media_requested(fake_twilio, 1, worker=running)
        running.proc.send_signal(signal.SIGTERM)
        await running.logged("no longer claiming")
        fake_twilio.media_gate.set()  # the job in hand finishes within the grace
        code = await running.exit_code()
    finally:
        await running.stop()
    async with client.app[db_key].acquire() as conn:
        jobs = await conn.fetch("SELECT state, attempts FROM jobs ORDER BY state")
        recordings = await conn.fetchval("SELECT count(*) FROM recordings")
    # The job in hand was finished; the other one was never claimed after the signal.
    assert [(j["state"], j["attempts"]) for j in jobs] == [("done", 1), ("queued", 0)], running.log
    assert recordings == 1
    assert code == 0, running.log
    assert fake_twilio.media_requests == 1


@pytest.mark.parametrize("ending", ["grace", "second signal"])
async def test_a_job_that_outlasts_the_grace_is_put_back_for_another_worker(
    ending: str, client: Any, fake_twilio: Any, audio_fixtures: Path, tmp_path: Path, database_url: str
) -> None:
    """At the end of the grace (or at a second signal) the job still running is put back: queued,
    its attempt not spent, its lease cleared, and the process exits 0. Another worker finishes it."""
    audio = (audio_fixtures / "call-without-announcement.wav").read_bytes()
    await queue_recordings(client, fake_twilio, audio, 1)
    fake_twilio.media_gate = asyncio.Event()  # this download outlasts the grace
    env = {**worker_env(tmp_path, database_url, fake_twilio.base), "CALLREC_INGEST__WORKERS": "1"}
    # The second signal cuts the default grace (25 s) short.
    stopping = await Running.start(
        {**env, "CALLREC_INGEST__SHUTDOWN_GRACE": "2s"} if ending == "grace" else env
    )
    taking_over: Running | None = None
    try:
        await media_requested(fake_twilio, 1, worker=stopping)
        stopping.proc.send_signal(signal.SIGTERM)
        await stopping.logged("no longer claiming")
        if ending == "second signal":
            stopping.proc.send_signal(signal.SIGINT)
        assert await stopping.exit_code() == 0, stopping.log
        async with client.app[db_key].acquire() as conn:
            released = await conn.fetchrow("SELECT state, attempts, lease_until FROM jobs")
            assert await conn.fetchval("SELECT count(*) FROM recordings") == 0
            fake_twilio.media_gate.set()
            taking_over = await Running.start(env)
            await wait_for_state(conn, "done", seconds=60)
            job = await conn.fetchrow("SELECT state, attempts FROM jobs")
            recordings = await conn.fetchval("SELECT count(*) FROM recordings")
    finally:
        await stopping.stop()
        if taking_over is not None:
            taking_over.proc.send_signal(signal.SIGTERM)
            assert await taking_over.exit_code() == 0, taking_over.log
    assert dict(released) == {"state": "queued", "attempts": 0, "lease_until": None}
    assert "put back in the queue" in "".join(stopping.log)
    assert (job["state"], job["attempts"]) == ("done", 1)
    assert recordings == 1
