"""Filesystem-store specifics: keys stay under the root, private modes, atomic durable writes."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from callrec.storage import ObjectNotFound, StoreUnavailable
from callrec.storage.filesystem import FilesystemObjectStore

KEY = "recordings/acme/3f1d8b2a-7c4e-4a9b-b6d5-0e2c4a6f8b1d"


async def read_all(store: FilesystemObjectStore, key: str) -> bytes:
    reader = await store.open_reader(key)

    def drain() -> bytes:
        with reader:
            return reader.read()

    return await asyncio.to_thread(drain)


def source(tmp_path: Path, data: bytes, name: str = "ciphertext.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """umask 0: modes must come from the store, not from a friendly umask."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


async def test_layout_and_private_modes(
    fs_store: FilesystemObjectStore, tmp_path: Path, permissive_umask: None
) -> None:
    stored = await fs_store.put_file(KEY, source(tmp_path, b"ciphertext"))
    assert stored.version_id is None
    root = fs_store.root
    target = root / "recordings" / "acme" / "3f1d8b2a-7c4e-4a9b-b6d5-0e2c4a6f8b1d"
    assert target.read_bytes() == b"ciphertext"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    for directory in (root, root / "recordings", root / "recordings" / "acme"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    # overwriting keeps the mode
    await fs_store.put_file(KEY, source(tmp_path, b"again"))
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "key",
    ["../escaped", "recordings/../../escaped", "/etc/escaped", "recordings/..", "..", "recordings/.x.tmp"],
)
async def test_path_traversal_is_rejected(fs_store: FilesystemObjectStore, tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError):
        await fs_store.put_file(key, source(tmp_path, b"x"))
    assert tree(tmp_path) == ["ciphertext.bin"]  # refused before touching the disk


async def test_failed_write_leaves_nothing_behind(
    fs_store: FilesystemObjectStore, tmp_path: Path, failing_source: Callable[[int], None]
) -> None:
    await fs_store.put_file(KEY, source(tmp_path, b"previous"))
    before = tree(fs_store.root)
    failing_source(3 * 1024 * 1024)  # after three 1 MiB chunks have been written to the temp file
    with pytest.raises(OSError, match="simulated read failure"):
        await fs_store.put_file(KEY, source(tmp_path, os.urandom(8 * 1024 * 1024)))
    assert tree(fs_store.root) == before  # no temp file, no partial file
    assert await read_all(fs_store, KEY) == b"previous"


async def test_writes_are_fsynced_before_and_after_the_rename(
    fs_store: FilesystemObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        mode = os.fstat(fd).st_mode
        synced.append("dir" if stat.S_ISDIR(mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    await fs_store.put_file(KEY, source(tmp_path, b"ciphertext"))
    assert "file" in synced
    assert synced[-1] == "dir"  # the rename is made durable last
    synced.clear()
    await fs_store.delete(KEY)
    assert synced == ["dir"]  # and so is an erasure


async def test_a_reader_keeps_the_version_it_opened(fs_store: FilesystemObjectStore, tmp_path: Path) -> None:
    await fs_store.put_file(KEY, source(tmp_path, b"old" * 1000))
    reader = await fs_store.open_reader(KEY)
    try:
        await fs_store.put_file(KEY, source(tmp_path, b"new"))
        assert reader.read() == b"old" * 1000  # the rename swapped the name, not the open file
    finally:
        reader.close()
    assert await read_all(fs_store, KEY) == b"new"


async def test_stray_temporary_files_are_invisible(fs_store: FilesystemObjectStore, tmp_path: Path) -> None:
    await fs_store.put_file(KEY, source(tmp_path, b"data"))
    stray = fs_store.root / "recordings" / "acme" / ".other.abc123.tmp"  # left by a crash
    stray.write_bytes(b"partial")
    with pytest.raises(ValueError):
        await fs_store.open_reader("recordings/acme/.other.abc123.tmp")
    with pytest.raises(ObjectNotFound):
        await fs_store.open_reader("recordings/acme/other")


async def test_directories_are_not_objects(fs_store: FilesystemObjectStore, tmp_path: Path) -> None:
    await fs_store.put_file(KEY, source(tmp_path, b"data"))
    with pytest.raises(ObjectNotFound):
        await fs_store.open_reader("recordings/acme")
    with pytest.raises(ObjectNotFound):
        await fs_store.delete("recordings/acme")
    assert await fs_store.delete_all_versions("recordings/acme") == 0
    assert await fs_store.list_versions("recordings/acme") == []
    with pytest.raises(ObjectNotFound):  # a path through a file
        await fs_store.open_reader(KEY + "/below")
    assert await read_all(fs_store, KEY) == b"data"


async def test_version_ids_are_refused(fs_store: FilesystemObjectStore, tmp_path: Path) -> None:
    await fs_store.put_file(KEY, source(tmp_path, b"data"))
    # Refused loudly: "not found" could let a deletion be recorded as done while the file stays.
    with pytest.raises(ValueError):
        await fs_store.delete(KEY, version_id="abc")
    with pytest.raises(ValueError):
        await fs_store.open_reader(KEY, version_id="abc")
    assert await read_all(fs_store, KEY) == b"data"


async def test_check_creates_the_root_and_leaves_no_probe(tmp_path: Path, permissive_umask: None) -> None:
    store = FilesystemObjectStore(tmp_path / "data" / "objects")
    await store.check()
    assert store.root.is_dir()
    assert stat.S_IMODE(store.root.stat().st_mode) == 0o700
    assert list(store.root.iterdir()) == []


async def test_check_fails_when_the_root_is_unusable(tmp_path: Path) -> None:
    (tmp_path / "objects").write_bytes(b"not a directory")
    store = FilesystemObjectStore(tmp_path / "objects")
    with pytest.raises(StoreUnavailable, match="filesystem store"):
        await store.check()
    with pytest.raises(StoreUnavailable):
        await store.put_file(KEY, source(tmp_path, b"data"))


async def test_write_errors_are_store_unavailable(
    fs_store: FilesystemObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync

    def disk_full(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):  # the data cannot be flushed; directories can
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(StoreUnavailable, match="No space left"):
        await fs_store.put_file(KEY, source(tmp_path, b"data"))
    monkeypatch.undo()
    assert await fs_store.list_versions(KEY) == []
    assert [p.name for p in (fs_store.root / "recordings" / "acme").iterdir()] == []
