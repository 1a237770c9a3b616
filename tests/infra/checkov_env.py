"""checkov in a virtual environment of its own, for the infra tests.

checkov pins old versions of boto3 and other libraries that callrec uses, so it never goes into the
environment callrec's tests run in: it is installed once into ``.venv-checkov`` beside ``.venv`` (or
``$CALLREC_CHECKOV_VENV``) with ``python -m venv`` and pip from PyPI, kept between runs, and run as a
subprocess. Installing takes under a minute; an environment that already runs checkov is reused as it
is. A file lock keeps two test processes from installing into it at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
REQUIREMENT = "checkov>=3.2,<4"
# A fresh install measured 40 s here; this bounds a slow mirror, not the usual case.
INSTALL_TIMEOUT = 600
SCAN_TIMEOUT = 300


def venv_path() -> Path:
    return Path(os.environ.get("CALLREC_CHECKOV_VENV") or REPO / ".venv-checkov")


def _runs(executable: Path) -> bool:
    if not executable.exists():
        return False
    try:
        done = subprocess.run([str(executable), "--version"], capture_output=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def ensure_checkov() -> Path:
    """The checkov executable in its own virtual environment, installed there if it is missing or
    broken. Raises :class:`subprocess.CalledProcessError` when the install fails."""
    venv = venv_path()
    executable = venv / "bin" / "checkov"
    if _runs(executable):
        return executable
    venv.parent.mkdir(parents=True, exist_ok=True)
    lock_path = venv.with_name(venv.name + ".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _runs(executable):  # another process installed it while we waited
            return executable
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=INSTALL_TIMEOUT)
        subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                REQUIREMENT,
            ],
            check=True,
            timeout=INSTALL_TIMEOUT,
        )
    if not _runs(executable):
        raise RuntimeError(f"checkov was installed into {venv} but does not run")
    return executable


@dataclass(frozen=True)
class Finding:
    check_id: str
    resource: str
    name: str
    file: str
    comment: str  # the reason written in a skip comment ("" for a failure)


@dataclass(frozen=True)
class Scan:
    passed: int
    failed: list[Finding]
    skipped: list[Finding]
    parsing_errors: int
    resource_count: int


def scan(executable: Path, directory: Path, *, framework: str) -> Scan:
    """Run ``checkov -d directory --framework framework`` and return its results.

    ``--skip-download`` keeps checkov offline (no platform policies, no guideline links);
    ``--soft-fail`` because the failures are read from the JSON report, not from the exit code."""
    done = subprocess.run(
        [
            str(executable),
            "--directory",
            str(directory),
            "--framework",
            framework,
            "--output",
            "json",
            "--soft-fail",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        timeout=SCAN_TIMEOUT,
        check=False,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    if done.returncode != 0:
        raise RuntimeError(f"checkov exited {done.returncode}: {done.stderr[-2000:]}")
    report: Any = json.loads(done.stdout)
    if isinstance(report, list):  # one report per framework
        [report] = [r for r in report if r.get("check_type") == framework]
    if "results" not in report:  # checkov's answer when it found nothing to scan
        raise RuntimeError(f"checkov found no {framework} resources in {directory}: {report}")

    def findings(key: str) -> list[Finding]:
        return [
            Finding(
                check_id=c["check_id"],
                resource=c["resource"],
                name=c.get("check_name", ""),
                file=c.get("file_path", ""),
                comment=(c.get("check_result") or {}).get("suppress_comment", "") or "",
            )
            for c in report["results"][key]
        ]

    summary = report["summary"]
    return Scan(
        passed=summary["passed"],
        failed=findings("failed_checks"),
        skipped=findings("skipped_checks"),
        parsing_errors=summary["parsing_errors"],
        resource_count=summary["resource_count"],
    )
