"""The ObjectStore contract, run against every backend (see the ``store`` fixture)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from callrec.storage import ObjectNotFound, ObjectStore, StoredObject

MIB = 1024 * 1024
KEY = "recordings/acme/0b6f7c1e-5d2a-4c43-9a8e-1f2d3c4b5a69"


async def read_all(store: ObjectStore, key: str, *, version_id: str | None = None) -> bytes:
    reader = await store.open_reader(key, version_id=version_id)

    def drain() -> bytes:
        with reader:
            return reader.read()

    return await asyncio.to_thread(drain)


def source(tmp_path: Path, data: bytes, name: str = "ciphertext.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("size", [0, 1, 1000, 5 * MIB])
async def test_put_then_read_is_bit_exact(store: ObjectStore, tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    stored = await store.put_file(KEY, source(tmp_path, data))
    assert stored.key == KEY
    assert stored.size == size
    assert await read_all(store, KEY) == data
    assert await read_all(store, KEY, version_id=stored.version_id) == data


async def test_large_object_round_trip(store: ObjectStore, tmp_path: Path) -> None:
    # 40 MiB: over the S3 fixture's 5 MiB threshold, so a multipart upload there.
    data = os.urandom(40 * MIB)
    stored = await store.put_file(KEY, source(tmp_path, data))
    assert stored.size == len(data)
    assert await read_all(store, KEY) == data


async def test_overwrite_serves_the_new_content(store: ObjectStore, tmp_path: Path) -> None:
    await store.put_file(KEY, source(tmp_path, b"first"))
    second = await store.put_file(KEY, source(tmp_path, b"second"))
    assert await read_all(store, KEY) == b"second"
    assert (await store.list_versions(KEY))[0] == StoredObject(KEY, second.version_id, 6)


async def test_missing_key(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        await store.open_reader(KEY)
    with pytest.raises(FileNotFoundError):  # ObjectNotFound is a FileNotFoundError
        await store.open_reader(KEY)
    with pytest.raises(ObjectNotFound):
        await store.delete(KEY)
    assert await store.list_versions(KEY) == []
    assert await store.delete_all_versions(KEY) == 0


async def test_delete_removes_the_object(store: ObjectStore, tmp_path: Path) -> None:
    await store.put_file(KEY, source(tmp_path, b"ciphertext"))
    await store.delete(KEY)
    with pytest.raises(ObjectNotFound):
        await store.open_reader(KEY)
    assert await store.list_versions(KEY) == []
    with pytest.raises(ObjectNotFound):
        await store.delete(KEY)


async def test_delete_all_versions_erases_the_key(store: ObjectStore, tmp_path: Path) -> None:
    await store.put_file(KEY, source(tmp_path, b"one"))
    await store.put_file(KEY, source(tmp_path, b"two"))
    versions = await store.list_versions(KEY)
    assert await store.delete_all_versions(KEY) == len(versions)
    assert await store.list_versions(KEY) == []
    with pytest.raises(ObjectNotFound):
        await store.open_reader(KEY)
    assert await store.delete_all_versions(KEY) == 0


async def test_keys_sharing_a_prefix_are_separate(store: ObjectStore, tmp_path: Path) -> None:
    await store.put_file("recordings/acme/a", source(tmp_path, b"a"))
    await store.put_file("recordings/acme/ab", source(tmp_path, b"ab"))
    assert [v.size for v in await store.list_versions("recordings/acme/a")] == [1]
    assert await store.delete_all_versions("recordings/acme/a") == 1
    assert await read_all(store, "recordings/acme/ab") == b"ab"


async def test_concurrent_puts_of_different_keys(store: ObjectStore, tmp_path: Path) -> None:
    payloads = {f"recordings/t{i % 3}/{i:04d}": os.urandom(10_000 + i) for i in range(24)}
    paths = {key: source(tmp_path, data, name=f"src-{n}") for n, (key, data) in enumerate(payloads.items())}
    stored = await asyncio.gather(*(store.put_file(key, path) for key, path in paths.items()))
    assert [s.key for s in stored] == list(payloads)
    for key, data in payloads.items():
        assert await read_all(store, key) == data


@pytest.mark.parametrize("size", [1000, 12 * MIB])  # on S3: a single PUT, and a multipart upload
async def test_failing_source_stores_nothing(
    store: ObjectStore, tmp_path: Path, failing_source: Callable[[int], None], size: int
) -> None:
    failing_source(size // 2)
    with pytest.raises(OSError, match="simulated read failure"):
        await store.put_file(KEY, source(tmp_path, os.urandom(size)))
    assert await store.list_versions(KEY) == []
    with pytest.raises(ObjectNotFound):
        await store.open_reader(KEY)


async def test_failing_overwrite_keeps_the_previous_object(
    store: ObjectStore, tmp_path: Path, failing_source: Callable[[int], None]
) -> None:
    await store.put_file(KEY, source(tmp_path, b"previous"))
    failing_source(10)
    with pytest.raises(OSError, match="simulated read failure"):
        await store.put_file(KEY, source(tmp_path, os.urandom(1000)))
    assert await read_all(store, KEY) == b"previous"
    assert len(await store.list_versions(KEY)) == 1


BAD_KEYS = [
    "",
    "/etc/passwd",
    "../outside",
    "recordings/../../outside",
    "recordings/./x",
    "recordings//x",
    "recordings/x/",
    "recordings/.hidden",
    "..",
    ".",
    "recordings\\x",
    "recordings/a b",
    "recordings/%2e%2e",
    "recordings/caf\u00e9",
    "recordings/x\x00",
    "a" * 600,
]


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_invalid_keys_are_rejected(store: ObjectStore, tmp_path: Path, key: str) -> None:
    path = source(tmp_path, b"x")
    with pytest.raises(ValueError):
        await store.put_file(key, path)
    with pytest.raises(ValueError):
        await store.open_reader(key)
    with pytest.raises(ValueError):
        await store.delete(key)
    with pytest.raises(ValueError):
        await store.delete_all_versions(key)
    with pytest.raises(ValueError):
        await store.list_versions(key)


async def test_check_passes_on_a_working_store(store: ObjectStore) -> None:
    await store.check()
