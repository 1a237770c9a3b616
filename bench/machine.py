"""The machine a benchmark ran on, shared by bench/ingest.py and bench/erasure.py: CPUs, memory,
kernel, Python, the packages measured, the callrec commit, PostgreSQL's version and durability
settings, the fsync latency where PostgreSQL writes its WAL, and the load average. Numbers from
different machines (or from one machine under other load) do not compare; these lines say which.

Imported by the scripts as ``machine`` (they run as ``python bench/<script>.py``, which puts
bench/ first on the import path).
"""

from __future__ import annotations

import importlib
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

# PostgreSQL settings that decide what a commit costs, and how many connections it takes.
PG_SETTINGS = ("server_version", "fsync", "synchronous_commit", "wal_sync_method", "max_connections")


def fsync_latency(directory: Path, count: int = 50, seconds: float = 5.0) -> float:
    """Median seconds of a 4 KiB write + fsync in ``directory`` (where PostgreSQL's WAL is)."""
    probe = directory / "fsync-probe"
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for i in range(count):
            if time.perf_counter() > deadline:
                break
            start = time.perf_counter()
            os.pwrite(fd, os.urandom(4096), 4096 * i)
            os.fsync(fd)
            times.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)
    return statistics.median(times)


def callrec_revision() -> str:
    """The commit measured, and whether the work tree had uncommitted changes to callrec/."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(  # noqa: S603 - fixed argument list, no shell
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],  # noqa: S607
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(  # noqa: S603
            ["git", "-C", str(repo), "status", "--porcelain", "--", "callrec"],  # noqa: S607
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" + uncommitted changes in callrec/" if dirty else "")


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine skews every number here."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def meminfo_kib(field: str) -> int:
    """A field of /proc/meminfo (``MemTotal``, ``MemAvailable``...) in KiB; 0 if absent."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


async def machine_info(root_url: str, tmp: Path, *, packages: Sequence[str]) -> dict[str, Any]:
    """Everything above, with the version of each of ``packages`` (importable names that have a
    ``__version__``) under its own name. ``loadavg_at_end`` is the caller's to add."""
    conn = await asyncpg.connect(root_url)
    try:
        pg = {name: await conn.fetchval(f"SHOW {name}") for name in PG_SETTINGS}
    finally:
        await conn.close()
    versions = {name: str(importlib.import_module(name).__version__) for name in packages}
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gib": round(meminfo_kib("MemTotal") / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "callrec": callrec_revision(),
        **versions,
        "postgresql": pg,
        "fsync_ms_median": 1000 * fsync_latency(tmp),
        "loadavg_at_start": loadavg(),
        "date": datetime.now(UTC).date().isoformat(),
    }


def machine_lines(m: dict[str, Any], *, packages: Sequence[str]) -> list[str]:
    """The machine as the results tables print it (``m`` from :func:`machine_info`, with
    ``loadavg_at_end``)."""
    pg = m["postgresql"]
    versions = "".join(f", {name} {m[name]}" for name in packages)
    return [
        f"callrec: {m['callrec']}",
        f"machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, Linux {m['kernel']}",
        f"         Python {m['python']}{versions}, PostgreSQL {pg['server_version']} (pgserver;"
        f" fsync={pg['fsync']}, synchronous_commit={pg['synchronous_commit']},"
        f" wal_sync_method={pg['wal_sync_method']}), fsync 4 KiB median {m['fsync_ms_median']:.2f} ms",
        f"         load average (1/5/15 min) at start {m['loadavg_at_start']}, at end {m['loadavg_at_end']}"
        f" (on {m['nproc']} CPUs: anything else running skews these numbers)",
    ]
