"""A local-directory object store, for development and the embedded default.

Each key is a file under ``root`` (``recordings/acme/<uuid>`` → ``root/recordings/acme/<uuid>``).
There is one version per key: ``version_id`` is always None. Files are created 0600 and
directories 0700, because even ciphertext and its layout belong to the service account alone.

Writes are atomic and durable: the data goes to a temporary file in the destination directory,
is flushed and fsynced, renamed over the final name with :func:`os.replace` (atomic on POSIX),
and the directory is fsynced so that the rename itself survives a power cut. A crash leaves at
worst a stray ``.<name>.*.tmp`` file, which no key can name.

Deleting an object also removes the directories it leaves empty (the per-recording directory,
then the tenant's), never the root: an erased recording leaves no trace of its id in the tree.
A writer may be creating a file in one of those directories at that moment: the ``rmdir`` then
fails (the directory is no longer empty, or is already gone) and the directory stays, and a writer
whose directory is removed between creating it and creating its file creates it again.

A directory has no equivalent of S3 Object Lock: legal holds on this store are enforced by the
database alone (the sweeper and the deletion paths never delete a held recording), so the
legal-hold methods answer "not supported" and do nothing.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import stat
import tempfile
from collections.abc import Iterable
from concurrent.futures import Executor
from pathlib import Path
from typing import BinaryIO

from callrec.storage import base
from callrec.storage.base import ObjectNotFound, StoredObject, StoreUnavailable, run_blocking, validate_key

_CHUNK = 1024 * 1024
_FILE_MODE = 0o600
_DIR_MODE = 0o700
# A writer whose directory is removed under it by a deletion makes it again; more than a few
# times in a row means something else is wrong.
_CREATE_ATTEMPTS = 5

log = logging.getLogger(__name__)


class FilesystemObjectStore:
    """:class:`~callrec.storage.base.ObjectStore` over a local directory."""

    def __init__(self, root: Path, *, executor: Executor | None = None) -> None:
        self._root = root
        self._executor = executor

    @property
    def root(self) -> Path:
        return self._root

    # --- ObjectStore -----------------------------------------------------------------------

    async def put_file(self, key: str, path: Path) -> StoredObject:
        target = self._path(key)
        return await run_blocking(self._executor, lambda: self._put(key, target, path))

    async def open_reader(self, key: str, *, version_id: str | None = None) -> BinaryIO:
        target = self._path(key, version_id)
        return await run_blocking(self._executor, lambda: self._open(key, target))

    async def delete(self, key: str, *, version_id: str | None = None) -> None:
        target = self._path(key, version_id)
        await run_blocking(self._executor, lambda: self._delete(key, target))

    async def delete_all_versions(self, key: str) -> int:
        target = self._path(key)

        def delete_if_present() -> int:
            try:
                self._delete(key, target)
            except ObjectNotFound:
                return 0
            return 1

        return await run_blocking(self._executor, delete_if_present)

    async def delete_objects(self, keys: list[str]) -> dict[str, int]:
        """Unlink each key's file, then fsync each directory that lost an entry once (not once
        per file), so that the erasure is durable when this returns."""
        targets = {key: self._path(key) for key in keys}  # validates every key before deleting any
        return await run_blocking(self._executor, lambda: self._delete_many(targets))

    async def list_versions(self, key: str) -> list[StoredObject]:
        target = self._path(key)

        def stat_target() -> list[StoredObject]:
            try:
                st = target.stat()
            except (FileNotFoundError, NotADirectoryError):
                return []
            if not stat.S_ISREG(st.st_mode):
                return []
            return [StoredObject(key=key, version_id=None, size=st.st_size)]

        return await run_blocking(self._executor, stat_target)

    async def supports_legal_hold(self) -> bool:
        return False

    async def set_legal_hold(self, key: str, *, version_id: str | None, on: bool) -> None:
        """Nothing to do: holds on this store live in the database only. The key is still
        validated, so that a bad caller fails here as it would on S3."""
        self._path(key, version_id)

    async def legal_hold(self, key: str, *, version_id: str | None) -> bool:
        self._path(key, version_id)
        return False

    async def check(self) -> None:
        await run_blocking(self._executor, self._check)

    async def close(self) -> None:
        return None

    # --- blocking parts --------------------------------------------------------------------

    def _path(self, key: str, version_id: str | None = None) -> Path:
        validate_key(key)
        if version_id is not None:
            # A version id here means the caller's record came from a versioned store. Treating
            # it as "not found" could let a deletion be recorded as done while the file stays,
            # so it is refused loudly instead.
            raise ValueError("the filesystem store keeps no versions; version_id must be None")
        return self._root.joinpath(*key.split("/"))

    def _put(self, key: str, target: Path, source: Path) -> StoredObject:
        with base.open_source(source) as src:
            fd, tmp = self._create_temporary(target)
            try:
                with os.fdopen(fd, "wb") as dst:
                    size = 0
                    # Errors reading the source propagate as they are; errors writing mean the
                    # store is unusable (disk full, read-only, permissions).
                    while chunk := src.read(_CHUNK):
                        try:
                            dst.write(chunk)
                        except OSError as exc:
                            raise self._unavailable(exc) from None
                        size += len(chunk)
                    try:
                        dst.flush()
                        os.fsync(dst.fileno())
                    except OSError as exc:
                        raise self._unavailable(exc) from None
                # mkstemp already creates 0600; chmod keeps it exact whatever the platform does.
                os.chmod(tmp, _FILE_MODE)
                os.replace(tmp, target)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        _fsync_dir(target.parent)
        return StoredObject(key=key, version_id=None, size=size)

    def _create_temporary(self, target: Path) -> tuple[int, Path]:
        """Create the directories down to ``target`` and a temporary file beside it. A deletion
        that empties a directory on that path removes it (see :meth:`_prune`); if that happens
        between creating the directory and the file in it, the file's creation finds no
        directory, and the directories are made again. Once the temporary file is in, no
        ``rmdir`` can remove its directory."""
        gone: OSError | None = None
        for _ in range(_CREATE_ATTEMPTS):
            try:
                self._make_dirs(target.parent)
                fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            except FileNotFoundError as exc:
                gone = exc  # a directory on the path was removed after it was made: again
                continue
            except OSError as exc:
                raise self._unavailable(exc) from None
            return fd, Path(name)
        assert gone is not None
        raise self._unavailable(gone)

    def _open(self, key: str, target: Path) -> BinaryIO:
        try:
            return target.open("rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(f"no object {key!r}") from None

    def _delete(self, key: str, target: Path) -> None:
        try:
            if not stat.S_ISREG(target.lstat().st_mode):
                raise ObjectNotFound(f"no object {key!r}")
            target.unlink()
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(f"no object {key!r}") from None
        # Make the erasure durable, not just the write.
        self._fsync_after_unlink(target.parent)
        self._prune([target.parent])

    def _delete_many(self, targets: dict[str, Path]) -> dict[str, int]:
        removed: dict[str, int] = {}
        touched: set[Path] = set()
        failure: OSError | None = None
        for key, target in targets.items():
            removed[key] = 0
            try:
                if not stat.S_ISREG(target.lstat().st_mode):
                    continue
                target.unlink()
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                failure = exc
                break
            removed[key] = 1
            touched.add(target.parent)
        # What was unlinked is made durable even when a later unlink failed.
        for directory in sorted(touched):
            try:
                self._fsync_after_unlink(directory)
            except OSError as exc:
                failure = failure or exc
        # Only after the fsyncs: a directory is removed once the unlinks in it are durable.
        self._prune(touched)
        if failure is not None:
            raise self._unavailable(failure) from None
        return removed

    def _fsync_after_unlink(self, directory: Path) -> None:
        """fsync the directory a file was just unlinked from. A concurrent deletion may have
        emptied and removed it meanwhile (see :meth:`_prune`): then the nearest ancestor that
        still exists is fsynced instead, which makes that removal, and so the unlink, durable."""
        current = directory
        while True:
            try:
                _fsync_dir(current)
                return
            except FileNotFoundError:
                if current == self._root or self._root not in current.parents:
                    raise
                current = current.parent

    def _prune(self, directories: Iterable[Path]) -> None:
        """Remove each of ``directories`` and then its parents while they are empty, up to the
        root (never the root itself), deepest first so that sibling directories emptied by one
        batch all go before their parent is tried.

        Tidying only: the objects are already deleted, so nothing here fails the deletion. A
        concurrent writer may have put a file in a directory (``rmdir`` answers ENOTEMPTY, or
        EEXIST on some systems): it stays, and so do its parents. A directory already gone
        (ENOENT: another deletion removed it) lets the walk go on to its parent. The removals
        are not fsynced: after a power cut an empty directory may come back, which is harmless."""
        for directory in sorted(set(directories), key=lambda d: len(d.parts), reverse=True):
            current = directory
            while current != self._root and self._root in current.parents:
                try:
                    os.rmdir(current)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        log.warning("filesystem store: could not remove %s: %s", current, exc.strerror)
                    break
                current = current.parent

    def _make_dirs(self, directory: Path) -> None:
        """Create ``directory`` and its missing parents, each 0700, fsyncing each parent so
        that the new entry is durable. (``os.makedirs`` gives intermediate directories the
        default mode, hence the loop.)"""
        missing: list[Path] = []
        current = directory
        while not current.is_dir():
            missing.append(current)
            if current.parent == current:
                break
            current = current.parent
        for path in reversed(missing):
            try:
                path.mkdir(mode=_DIR_MODE)
            except FileExistsError:
                continue  # another writer created it in the meantime
            os.chmod(path, _DIR_MODE)  # mkdir's mode is filtered by the umask
            _fsync_dir(path.parent)

    def _check(self) -> None:
        probe = self._root / f".probe-{secrets.token_hex(8)}"
        payload = secrets.token_bytes(16)
        try:
            self._make_dirs(self._root)
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(payload)
                    out.flush()
                    os.fsync(out.fileno())
                if probe.read_bytes() != payload:
                    raise StoreUnavailable(f"filesystem store at {self._root}: read back differs from write")
            finally:
                probe.unlink(missing_ok=True)
        except OSError as exc:
            raise self._unavailable(exc) from None

    def _unavailable(self, exc: OSError) -> StoreUnavailable:
        return StoreUnavailable(f"filesystem store at {self._root}: {exc.strerror or type(exc).__name__}")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
