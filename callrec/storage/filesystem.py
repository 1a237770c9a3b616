"""A local-directory object store, for development and the embedded default.

Each key is a file under ``root`` (``recordings/acme/<uuid>`` → ``root/recordings/acme/<uuid>``).
There is one version per key: ``version_id`` is always None. Files are created 0600 and
directories 0700, because even ciphertext and its layout belong to the service account alone.

Writes are atomic and durable: the data goes to a temporary file in the destination directory,
is flushed and fsynced, renamed over the final name with :func:`os.replace` (atomic on POSIX),
and the directory is fsynced so that the rename itself survives a power cut. A crash leaves at
worst a stray ``.<name>.*.tmp`` file, which no key can name.

A directory has no equivalent of S3 Object Lock: legal holds on this store are enforced by the
database alone (the sweeper and the deletion paths never delete a held recording), so the
legal-hold methods answer "not supported" and do nothing.
"""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
from concurrent.futures import Executor
from pathlib import Path
from typing import BinaryIO

from callrec.storage import base
from callrec.storage.base import ObjectNotFound, StoredObject, StoreUnavailable, run_blocking, validate_key

_CHUNK = 1024 * 1024
_FILE_MODE = 0o600
_DIR_MODE = 0o700


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
            try:
                self._make_dirs(target.parent)
                fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            except OSError as exc:
                raise self._unavailable(exc) from None
            tmp = Path(tmp_name)
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
        _fsync_dir(target.parent)

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
                _fsync_dir(directory)
            except FileNotFoundError:
                continue  # removed since by someone else: nothing of ours in it to make durable
            except OSError as exc:
                failure = failure or exc
        if failure is not None:
            raise self._unavailable(failure) from None
        return removed

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
