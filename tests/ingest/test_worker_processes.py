"""Several `callrec worker` processes against one database: every job done exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

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
