"""Fault injection for the crash tests (tests/faults): die by SIGKILL at a named point.

``point("store")`` is called at each stage of the worker (download, decode, redact, encrypt,
store, commit) and in the sweeper, erasure and hold-release paths. It does nothing unless the
process was started with ``CALLREC_TEST_FAULT_KILL_AT`` in its environment, read once at import:
a comma-separated list of points, each ``name`` (the first time this process reaches it) or
``name:n`` (the n-th time). With ``CALLREC_TEST_FAULT_ONCE_DIR`` also set, each listed point
kills once across every process sharing that directory (a marker file is created, exclusively,
before the kill): a worker restarted with the same environment passes the points it already
died at, so a suite can hit every stage exactly once, deterministically, without timed kills.

Nothing a request carries can reach this: the points take constant names, and the only switch is
the environment of the process at start (the ``CALLREC_TEST_`` prefix also keeps the variables out
of the configuration loader). Unset, :func:`point` is one comparison with a module constant.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

KILL_AT_ENV = "CALLREC_TEST_FAULT_KILL_AT"
ONCE_DIR_ENV = "CALLREC_TEST_FAULT_ONCE_DIR"

# Every point the code calls, so that a typo in a test's environment fails loudly at start.
POINTS = frozenset(
    {
        # the ingest worker, in the order a recording passes them
        "download",
        "decode",
        "redact",
        "encrypt",
        "store",
        "commit",
        # the retention sweeper: after a batch of tombstones commits, before their objects go
        "sweep.batch",
        "sweep.objects",
        # deciding a deletion request, and deleting the objects of what it erased
        "deletion.decide",
        "erasure.objects",
        # a hold's release: erasing what waited on it, and mirroring it onto S3 Object Lock
        "hold.release",
        "hold.sync",
        # the orphan collector, between claiming its intents and deleting their objects
        "orphans.claimed",
    }
)


def _parse(value: str) -> dict[str, int]:
    targets: dict[str, int] = {}
    for item in value.split(","):
        name, _, nth = item.strip().partition(":")
        if not name:
            continue
        if name not in POINTS:
            raise ValueError(
                f"{KILL_AT_ENV}: unknown fault point {name!r}; known: {', '.join(sorted(POINTS))}"
            )
        if nth and (not nth.isdigit() or int(nth) < 1):
            raise ValueError(f"{KILL_AT_ENV}: {item!r} must be name or name:n with n >= 1")
        targets[name] = int(nth) if nth else 1
    return targets


_TARGETS: dict[str, int] = _parse(os.environ.get(KILL_AT_ENV, ""))
_ONCE_DIR: Path | None = Path(os.environ[ONCE_DIR_ENV]) if _TARGETS and os.environ.get(ONCE_DIR_ENV) else None
_reached: Counter[str] = Counter()


def point(name: str) -> None:
    """Die here by SIGKILL if this process was started to (see the module docstring)."""
    if not _TARGETS:
        return
    _maybe_kill(name)


def _maybe_kill(name: str) -> None:
    nth = _TARGETS.get(name)
    if nth is None:
        return
    _reached[name] += 1
    if _reached[name] != nth:
        return
    if _ONCE_DIR is not None:
        try:
            # Exclusive create: of the processes sharing the directory, one dies here, once.
            fd = os.open(_ONCE_DIR / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            return
        os.write(fd, str(os.getpid()).encode())
        os.fsync(fd)
        os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
