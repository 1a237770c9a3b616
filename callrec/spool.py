"""The spool: private scratch files for audio in flight (downloads, decrypted uploads before
their checks, redaction output, ciphertext on its way to the store, access-request archives).

Much of it is plaintext call audio, so what a process leaves there must not outlive it. Context
managers remove the files as each step ends, but a process killed by SIGKILL or the OOM killer
runs none of them. So each process writes under a directory of its own, ``<data_dir>/spool/
p<pid>-<random>``, and holds an exclusive ``flock`` on a lock file in it for as long as it lives;
the kernel drops that lock when the process dies, however it dies. :func:`reclaim`, run by every
process that starts the application (``callrec serve``, ``callrec worker``), removes the
directories whose lock it can take: those of processes that are gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

_LOCK = ".lock"
_NEW = ".new-"  # a directory not yet locked: skipped by reclaim() unless stale
_STALE_S = 3600

# This process's directory (and its lock's descriptor) per spool root. Module state on purpose:
# the lock lives exactly as long as the process, which is what it has to prove.
_owned: dict[Path, tuple[Path, int]] = {}


def directory(data_dir: Path) -> Path:
    """This process's spool directory under ``data_dir`` (created 0700 and locked on first use)."""
    root = data_dir / "spool"
    mine = _owned.get(root)
    if mine is not None and mine[0].is_dir():
        return mine[0]
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Locked under a name reclaim() skips, then renamed: a directory is never visible unlocked.
    fresh = Path(tempfile.mkdtemp(dir=root, prefix=_NEW))
    fd = os.open(fresh / _LOCK, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    path = root / f"p{os.getpid()}-{fresh.name.removeprefix(_NEW)}"
    fresh.rename(path)
    if mine is not None:
        os.close(mine[1])
    _owned[root] = (path, fd)
    return path


def reclaim(data_dir: Path) -> int:
    """Remove the spool directories of processes that have ended (their lock is free), and files
    left directly in the spool by versions without per-process directories. Returns how many
    entries were removed."""
    root = data_dir / "spool"
    if not root.is_dir():
        return 0
    mine = _owned.get(root, (None, -1))[0]
    removed = 0
    for entry in root.iterdir():
        if entry == mine:
            continue
        if entry.is_dir() and not entry.name.startswith(_NEW):
            if _owner_gone(entry):
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        elif _older_than(entry, _STALE_S):  # an old-style file, or a directory never locked
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
    if removed:
        log.info("spool: removed %d entries left by processes that ended", removed)
    return removed


def files(data_dir: Path) -> list[Path]:
    """Every file in the spool, every process's, but the lock files: what is there in flight."""
    root = data_dir / "spool"
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != _LOCK)


def _owner_gone(path: Path) -> bool:
    try:
        fd = os.open(path / _LOCK, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return _older_than(path, _STALE_S)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # also releases the lock we may have taken; the directory goes next
    return True


def _older_than(path: Path, seconds: float) -> bool:
    with contextlib.suppress(FileNotFoundError):
        return time.time() - path.lstat().st_mtime > seconds
    return False
