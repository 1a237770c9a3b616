"""Plaintext audio in the spool does not outlive a worker killed mid-job: the next process that
starts removes what a dead one left (its spool directory's lock is free), and nothing a live
process is using."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from fault_support import new_twilio_sid, post_twilio, process_env, wait_until, workers

from callrec import spool
from callrec.app import create_app
from callrec.appkeys import db_key
from callrec.faults import KILL_AT_ENV


async def test_a_worker_killed_mid_job_leaves_no_plaintext_once_another_starts(
    app_config: Any, aiohttp_client: Any, fake_twilio: Any, audio_fixtures: Path, counts: dict[str, Any]
) -> None:
    cfg = app_config(ingest={"lease": "2s", "heartbeat": "1s", "retry_base": "1s", "workers": 1})
    client = await aiohttp_client(create_app(cfg, run_workers=False))
    audio = (audio_fixtures / "call-without-announcement.wav").read_bytes()
    sid = new_twilio_sid()
    fake_twilio.media[sid] = audio
    assert (await post_twilio(client, fake_twilio, sid)).status == 202

    async def job_state() -> str:
        async with client.app[db_key].acquire() as conn:
            state: str = await conn.fetchval("SELECT state FROM jobs")
        return state

    # Killed after the download, before the checks: the media sits in the spool, in plaintext.
    async with workers(process_env(cfg, **{KILL_AT_ENV: "decode"}), max_starts=1) as group:
        await wait_until(lambda: _died(group), timeout=60, step=0.25)
    assert group.exits == [-signal.SIGKILL] and group.procs[0].returncode == -signal.SIGKILL, group.log_tail()
    left = spool.files(cfg.data_dir)
    assert any(p.read_bytes() == audio for p in left), left  # what the crash leaves behind

    async def done() -> bool:
        return await job_state() == "done"

    async with workers(process_env(cfg)) as group:
        finished = await wait_until(done, timeout=60, step=0.25, tend=group)
    assert finished, group.log_tail()
    assert spool.files(cfg.data_dir) == []  # the dead worker's plaintext is gone
    counts.update(kills=1, spool_files_after_crash=len(left), spool_files_after_restart=0)


async def _died(group: Any) -> bool:
    return bool(group.procs[0].returncode is not None)


def test_reclaim_keeps_what_live_processes_use(tmp_path: Path) -> None:
    mine = spool.directory(tmp_path)
    (mine / "media-x.part").write_bytes(b"in use")
    program = (
        "import sys, time\nfrom pathlib import Path\nfrom callrec import spool\n"
        "d = spool.directory(Path(sys.argv[1]))\n(d / 'check-y').write_bytes(b'busy')\n"
        "print(d, flush=True)\ntime.sleep(60)\n"
    )
    other = subprocess.Popen(
        [sys.executable, "-c", program, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout is not None
        theirs = Path(other.stdout.readline().strip())
        assert spool.reclaim(tmp_path) == 0  # both processes are alive
        assert (mine / "media-x.part").read_bytes() == b"in use" and (theirs / "check-y").is_file()
    finally:
        other.kill()
        other.wait(timeout=30)
    assert spool.reclaim(tmp_path) == 1 and not theirs.exists()  # gone with its process
    assert spool.directory(tmp_path) == mine and mine.stat().st_mode & 0o777 == 0o700
