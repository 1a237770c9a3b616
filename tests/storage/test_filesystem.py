"""Filesystem-store specifics: keys stay under the root, private modes, atomic durable writes."""

from __future__ import annotations

import asyncio
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from callrec.storage import ObjectNotFound, StoreUnavailable
from callrec.storage import filesystem as fs_module
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


# --- directories left empty by deletions ---------------------------------------------------------


def directories(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_dir())


async def test_deleting_removes_the_directories_it_empties_but_never_the_root(
    fs_store: FilesystemObjectStore, tmp_path: Path
) -> None:
    keys = ["acme/rec-1/a", "acme/rec-1/b", "acme/rec-2/c", "globex/rec-3/d"]
    for key in keys:
        await fs_store.put_file(key, source(tmp_path, b"ciphertext"))
    root = fs_store.root

    await fs_store.delete("acme/rec-1/a")  # rec-1 still has b
    assert directories(root) == ["acme", "acme/rec-1", "acme/rec-2", "globex", "globex/rec-3"]
    assert await fs_store.delete_objects(["acme/rec-1/b", "acme/rec-2/c"]) == {
        "acme/rec-1/b": 1,
        "acme/rec-2/c": 1,
    }
    assert directories(root) == ["globex", "globex/rec-3"]  # both recordings, then the tenant
    assert await fs_store.delete_all_versions("globex/rec-3/d") == 1
    assert root.is_dir() and list(root.iterdir()) == []

    # A key that never existed removes nothing; the store works on as before.
    assert await fs_store.delete_objects(["acme/rec-9/z"]) == {"acme/rec-9/z": 0}
    await fs_store.put_file("acme/rec-1/a", source(tmp_path, b"again"))
    assert await read_all(fs_store, "acme/rec-1/a") == b"again"
    assert stat.S_IMODE((root / "acme" / "rec-1").stat().st_mode) == 0o700


async def test_a_file_written_while_pruning_keeps_its_directories(
    fs_store: FilesystemObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer puts a file in the recording's directory just before the rmdir: ENOTEMPTY, the
    directory and its parents stay, and the deletion still succeeds."""
    await fs_store.put_file("acme/rec-1/a", source(tmp_path, b"old"))
    directory = fs_store.root / "acme" / "rec-1"
    real_rmdir = os.rmdir
    tried: list[Path] = []

    def racing_rmdir(path: os.PathLike[str] | str) -> None:
        tried.append(Path(path))
        if Path(path) == directory:
            (directory / "b").write_bytes(b"new")  # the concurrent writer's file
        real_rmdir(path)

    monkeypatch.setattr(os, "rmdir", racing_rmdir)
    assert await fs_store.delete_objects(["acme/rec-1/a"]) == {"acme/rec-1/a": 1}
    assert tried == [directory]  # its parent is not even tried
    assert directories(fs_store.root) == ["acme", "acme/rec-1"]
    assert await read_all(fs_store, "acme/rec-1/b") == b"new"


async def test_a_directory_already_removed_lets_the_prune_go_on(
    fs_store: FilesystemObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another deletion removed the recording's directory first (ENOENT): its parent, now empty,
    is still removed."""
    await fs_store.put_file("acme/rec-1/a", source(tmp_path, b"old"))
    directory = fs_store.root / "acme" / "rec-1"
    real_rmdir = os.rmdir

    def raced_rmdir(path: os.PathLike[str] | str) -> None:
        if Path(path) == directory:
            real_rmdir(path)  # the other deletion got there first
        real_rmdir(path)

    monkeypatch.setattr(os, "rmdir", raced_rmdir)
    await fs_store.delete("acme/rec-1/a")
    assert fs_store.root.is_dir() and list(fs_store.root.iterdir()) == []


async def test_a_writer_whose_directory_is_pruned_makes_it_again(
    fs_store: FilesystemObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deletion removes the (empty) directories between the writer creating them and creating
    its temporary file there: the writer makes them again and the write succeeds."""
    await fs_store.put_file("acme/rec-1/a", source(tmp_path, b"a"))
    real_mkstemp = tempfile.mkstemp
    pruned: list[str] = []

    def mkstemp_after_a_prune(**kwargs: Any) -> tuple[int, str]:
        if not pruned:
            target = Path(kwargs["dir"])
            os.rmdir(target)  # acme/rec-2, just made by the writer
            pruned.append(target.name)
        return real_mkstemp(**kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp_after_a_prune)
    await fs_store.put_file("acme/rec-2/b", source(tmp_path, b"b"))
    assert pruned == ["rec-2"]
    assert await read_all(fs_store, "acme/rec-2/b") == b"b"
    assert stat.S_IMODE((fs_store.root / "acme" / "rec-2").stat().st_mode) == 0o700


async def test_writes_and_deletions_racing_in_one_directory_lose_nothing(
    fs_store: FilesystemObjectStore, tmp_path: Path
) -> None:
    """Real threads: each round deletes the only file of a directory (so the deletion prunes it,
    and its tenant directory) while another file is written into that same directory. Every
    write must succeed and stay readable."""
    data = source(tmp_path, b"ciphertext")
    await fs_store.put_file("acme/rec/0", data)
    rounds = 300  # the writer loses its directory under it a few times in a run like this
    for i in range(1, rounds):
        await asyncio.gather(fs_store.delete(f"acme/rec/{i - 1}"), fs_store.put_file(f"acme/rec/{i}", data))
        assert await read_all(fs_store, f"acme/rec/{i}") == b"ciphertext"
    await fs_store.delete(f"acme/rec/{rounds - 1}")
    assert list(fs_store.root.iterdir()) == []


async def test_a_directory_removed_before_its_fsync_has_its_parent_fsynced(
    fs_store: FilesystemObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two deletions in one directory: the other one unlinks the last file and removes the
    directory before this one fsyncs it. The deletion succeeds, and the removal is made durable
    by an fsync of the tenant's directory."""
    await fs_store.put_file("acme/rec-1/a", source(tmp_path, b"a"))
    await fs_store.put_file("acme/rec-1/b", source(tmp_path, b"b"))
    directory = fs_store.root / "acme" / "rec-1"
    real_fsync_dir = fs_module._fsync_dir
    synced: list[Path] = []

    def fsync_dir(path: Path) -> None:
        if path == directory and not synced:
            for other in directory.iterdir():  # the other deletion: the last file, then the directory
                other.unlink()
            os.rmdir(directory)
        synced.append(path)
        real_fsync_dir(path)

    monkeypatch.setattr(fs_module, "_fsync_dir", fsync_dir)
    await fs_store.delete("acme/rec-1/a")
    assert synced == [directory, directory.parent]
    assert fs_store.root.is_dir() and list(fs_store.root.iterdir()) == []
    synced.clear()
    await fs_store.put_file("acme/rec-2/c", source(tmp_path, b"c"))
    await fs_store.put_file("acme/rec-2/d", source(tmp_path, b"d"))
    directory = fs_store.root / "acme" / "rec-2"
    synced.clear()
    assert await fs_store.delete_objects(["acme/rec-2/c"]) == {"acme/rec-2/c": 1}  # the batch path too
    assert synced == [directory, directory.parent]
    assert list(fs_store.root.iterdir()) == []
