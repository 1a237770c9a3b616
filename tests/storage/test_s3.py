"""S3-specific behaviour, against moto's server over HTTP: versions, delete markers, multipart,
server-side encryption, metadata, and error translation."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from botocore.config import Config

from callrec.config import StorageConfig
from callrec.storage import (
    FilesystemObjectStore,
    ObjectNotFound,
    ObjectStore,
    StoreError,
    StoreUnavailable,
    open_object_store,
)
from callrec.storage import s3 as s3_module
from callrec.storage.s3 import S3ObjectStore

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

MIB = 1024 * 1024
KEY = "recordings/acme/5e0c2a9e-6b7f-4d1a-8c3e-2f4a6b8d0c1e"
FAST_FAIL = Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=2)


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


def raw_versions(client: S3Client, bucket: str) -> tuple[list[Any], list[Any]]:
    listing = client.list_object_versions(Bucket=bucket)
    return list(listing.get("Versions", [])), list(listing.get("DeleteMarkers", []))


# --- uploads -------------------------------------------------------------------------------


async def test_large_file_is_uploaded_in_parts_and_keeps_its_version_id(
    s3_store: S3ObjectStore, s3_client: S3Client, tmp_path: Path
) -> None:
    data = os.urandom(40 * MIB)
    stored = await s3_store.put_file(KEY, source(tmp_path, data))
    head = s3_client.head_object(Bucket=s3_store.bucket, Key="recordings/" + KEY)
    assert head["ETag"].strip('"').endswith("-8")  # 40 MiB in 5 MiB parts
    assert stored.version_id is not None
    assert head["VersionId"] == stored.version_id
    assert head["ContentLength"] == len(data) == stored.size
    assert await read_all(s3_store, KEY, version_id=stored.version_id) == data


async def test_small_file_is_a_single_put(
    s3_store: S3ObjectStore, s3_client: S3Client, tmp_path: Path
) -> None:
    stored = await s3_store.put_file(KEY, source(tmp_path, os.urandom(5 * MIB)))  # at the threshold
    head = s3_client.head_object(Bucket=s3_store.bucket, Key="recordings/" + KEY)
    assert "-" not in head["ETag"]
    assert head["VersionId"] == stored.version_id


async def test_objects_carry_no_metadata_and_live_under_the_prefix(
    s3_store: S3ObjectStore, s3_client: S3Client, tmp_path: Path
) -> None:
    await s3_store.put_file(KEY, source(tmp_path, b"ciphertext"))
    await s3_store.put_file("recordings/acme/big", source(tmp_path, os.urandom(6 * MIB)))
    listing = s3_client.list_objects_v2(Bucket=s3_store.bucket)
    assert sorted(o["Key"] for o in listing["Contents"]) == [
        "recordings/" + KEY,
        "recordings/recordings/acme/big",
    ]
    for obj in listing["Contents"]:
        head = s3_client.head_object(Bucket=s3_store.bucket, Key=obj["Key"])
        assert head["ContentType"] == "application/octet-stream"
        assert head["Metadata"] == {}


async def test_failed_multipart_upload_is_aborted(
    s3_store: S3ObjectStore, s3_client: S3Client, tmp_path: Path, failing_source: Callable[[int], None]
) -> None:
    failing_source(7 * MIB)  # fails in the second part
    with pytest.raises(OSError, match="simulated read failure"):
        await s3_store.put_file(KEY, source(tmp_path, os.urandom(12 * MIB)))
    assert s3_client.list_multipart_uploads(Bucket=s3_store.bucket).get("Uploads", []) == []
    assert raw_versions(s3_client, s3_store.bucket) == ([], [])


async def test_boto3_never_runs_on_the_event_loop(s3_store: S3ObjectStore, tmp_path: Path) -> None:
    loop_thread = threading.get_ident()
    threads: set[int] = set()
    client = await asyncio.to_thread(s3_store._client)  # create it the way the store does
    client.meta.events.register("before-call.s3", lambda **_: threads.add(threading.get_ident()))
    stored = await s3_store.put_file(KEY, source(tmp_path, os.urandom(6 * MIB)))
    await read_all(s3_store, KEY)
    await s3_store.list_versions(KEY)
    await s3_store.delete(KEY, version_id=stored.version_id)
    await s3_store.check()
    assert threads
    assert loop_thread not in threads


# --- versions ------------------------------------------------------------------------------


async def test_overwrite_creates_a_version_and_versions_can_be_deleted_one_by_one(
    s3_store: S3ObjectStore, tmp_path: Path
) -> None:
    old = await s3_store.put_file(KEY, source(tmp_path, b"old"))
    new = await s3_store.put_file(KEY, source(tmp_path, b"new"))
    assert old.version_id != new.version_id
    assert [v.version_id for v in await s3_store.list_versions(KEY)] == [new.version_id, old.version_id]
    assert await read_all(s3_store, KEY, version_id=old.version_id) == b"old"

    await s3_store.delete(KEY, version_id=new.version_id)
    assert await s3_store.list_versions(KEY) == [old]
    assert await read_all(s3_store, KEY) == b"old"
    with pytest.raises(ObjectNotFound):
        await s3_store.open_reader(KEY, version_id=new.version_id)
    with pytest.raises(ObjectNotFound):
        await s3_store.delete(KEY, version_id=new.version_id)


async def test_delete_of_the_current_version_leaves_no_delete_marker(
    s3_store: S3ObjectStore, s3_client: S3Client, tmp_path: Path
) -> None:
    old = await s3_store.put_file(KEY, source(tmp_path, b"old"))
    await s3_store.put_file(KEY, source(tmp_path, b"new"))
    await s3_store.delete(KEY)
    versions, markers = raw_versions(s3_client, s3_store.bucket)
    assert markers == []
    assert [v["VersionId"] for v in versions] == [old.version_id]
    assert await read_all(s3_store, KEY) == b"old"


async def test_delete_all_versions_removes_versions_and_delete_markers(
    s3_store: S3ObjectStore, s3_client: S3Client, tmp_path: Path
) -> None:
    bucket, raw_key = s3_store.bucket, "recordings/" + KEY
    await s3_store.put_file(KEY, source(tmp_path, b"one"))
    s3_client.delete_object(Bucket=bucket, Key=raw_key)  # a delete marker: not a deletion
    await s3_store.put_file(KEY, source(tmp_path, os.urandom(6 * MIB)))
    s3_client.delete_object(Bucket=bucket, Key=raw_key)
    versions, markers = raw_versions(s3_client, bucket)
    assert (len(versions), len(markers)) == (2, 2)
    with pytest.raises(ObjectNotFound):  # current version is a delete marker
        await s3_store.open_reader(KEY)
    assert len(await s3_store.list_versions(KEY)) == 2  # ...but the data is still there

    assert await s3_store.delete_all_versions(KEY) == 4
    assert raw_versions(s3_client, bucket) == ([], [])


async def test_a_delete_marker_can_be_deleted_by_version(
    s3_store: S3ObjectStore, s3_client: S3Client, tmp_path: Path
) -> None:
    stored = await s3_store.put_file(KEY, source(tmp_path, b"data"))
    marker = s3_client.delete_object(Bucket=s3_store.bucket, Key="recordings/" + KEY)["VersionId"]
    with pytest.raises(ObjectNotFound):
        await s3_store.open_reader(KEY, version_id=marker)
    await s3_store.delete(KEY, version_id=marker)
    assert await read_all(s3_store, KEY) == b"data"
    assert await s3_store.list_versions(KEY) == [stored]


async def test_erasure_pages_through_many_versions(
    s3_store: S3ObjectStore, s3_client: S3Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_module, "_LIST_PAGE_SIZE", 2)
    monkeypatch.setattr(s3_module, "_DELETE_BATCH", 3)
    for i in range(6):
        await s3_store.put_file(KEY, source(tmp_path, b"v%d" % i))
    s3_client.delete_object(Bucket=s3_store.bucket, Key="recordings/" + KEY)
    await s3_store.put_file(KEY + "-sibling", source(tmp_path, b"keep"))
    assert len(await s3_store.list_versions(KEY)) == 6
    assert await s3_store.delete_all_versions(KEY) == 7
    versions, markers = raw_versions(s3_client, s3_store.bucket)
    assert [v["Key"] for v in versions] == ["recordings/" + KEY + "-sibling"]
    assert markers == []


async def test_unversioned_bucket(s3_config: StorageConfig, s3_client: S3Client, tmp_path: Path) -> None:
    store = S3ObjectStore(s3_config)
    await store.ensure_bucket(versioning=False)
    try:
        stored = await store.put_file(KEY, source(tmp_path, b"data"))
        assert stored.version_id is None
        await store.delete(KEY)
        assert raw_versions(s3_client, store.bucket) == ([], [])
        await store.put_file(KEY, source(tmp_path, b"data"))
        assert await store.delete_all_versions(KEY) == 1
        assert raw_versions(s3_client, store.bucket) == ([], [])
    finally:
        await store.close()


async def test_object_lock_legal_hold_refuses_erasure(
    s3_config: StorageConfig, s3_client: S3Client, tmp_path: Path
) -> None:
    s3_client.create_bucket(Bucket=s3_config.bucket, ObjectLockEnabledForBucket=True)
    store = S3ObjectStore(s3_config)
    try:
        stored = await store.put_file(KEY, source(tmp_path, b"held"))
        assert stored.version_id is not None
        s3_client.put_object_legal_hold(
            Bucket=store.bucket,
            Key="recordings/" + KEY,
            VersionId=stored.version_id,
            LegalHold={"Status": "ON"},
        )
        with pytest.raises(StoreError):
            await store.delete_all_versions(KEY)
        with pytest.raises(StoreError):
            await store.delete(KEY, version_id=stored.version_id)
        assert await store.list_versions(KEY) == [stored]
    finally:
        await store.close()


async def test_ensure_bucket_is_idempotent_and_enables_versioning(
    s3_config: StorageConfig, s3_client: S3Client
) -> None:
    store = S3ObjectStore(s3_config)
    try:
        with pytest.raises(StoreUnavailable):
            await store.check()
        await store.ensure_bucket()
        await store.ensure_bucket()
        await store.check()
        assert s3_client.get_bucket_versioning(Bucket=store.bucket)["Status"] == "Enabled"
    finally:
        await store.close()


# --- server-side encryption ----------------------------------------------------------------


@pytest.mark.parametrize("size", [100, 6 * MIB])
async def test_sse_s3_header_is_sent(
    s3_config: StorageConfig, s3_client: S3Client, tmp_path: Path, size: int
) -> None:
    store = S3ObjectStore(replace(s3_config, sse="AES256"))
    await store.ensure_bucket()
    try:
        data = os.urandom(size)
        await store.put_file(KEY, source(tmp_path, data))
        head = s3_client.head_object(Bucket=store.bucket, Key="recordings/" + KEY)
        assert head["ServerSideEncryption"] == "AES256"
        assert await read_all(store, KEY) == data
    finally:
        await store.close()


@pytest.mark.parametrize("size", [100, 6 * MIB])
async def test_sse_kms_header_and_key_are_sent(
    s3_config: StorageConfig, s3_client: S3Client, tmp_path: Path, size: int
) -> None:
    key_arn = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    store = S3ObjectStore(replace(s3_config, sse="aws:kms", sse_kms_key_id=key_arn))
    await store.ensure_bucket()
    try:
        await store.put_file(KEY, source(tmp_path, os.urandom(size)))
        head = s3_client.head_object(Bucket=store.bucket, Key="recordings/" + KEY)
        assert head["ServerSideEncryption"] == "aws:kms"
        assert head["SSEKMSKeyId"] == key_arn
    finally:
        await store.close()


# --- unavailability ------------------------------------------------------------------------


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening: connections are refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_unreachable_endpoint_is_store_unavailable(
    s3_config: StorageConfig, closed_port: int, tmp_path: Path
) -> None:
    config = replace(s3_config, endpoint_url=f"http://127.0.0.1:{closed_port}")
    store = S3ObjectStore(config, client_config=FAST_FAIL)
    path = source(tmp_path, b"data")
    started = time.monotonic()
    try:
        for attempt in (
            lambda: store.check(),
            lambda: store.put_file(KEY, path),
            lambda: store.put_file(KEY, source(tmp_path, os.urandom(6 * MIB), name="big")),
            lambda: store.open_reader(KEY),
            lambda: store.delete(KEY),
            lambda: store.delete_all_versions(KEY),
            lambda: store.list_versions(KEY),
            lambda: store.ensure_bucket(),
        ):
            with pytest.raises(StoreUnavailable) as info:
                await attempt()
            message = str(info.value)
            assert config.bucket in message
            assert "testing" not in message  # the moto credentials
            assert info.value.__cause__ is None and info.value.__suppress_context__
    finally:
        await store.close()
    assert time.monotonic() - started < 30


async def test_default_client_retries_then_reports_unavailable(
    s3_config: StorageConfig, closed_port: int
) -> None:
    store = S3ObjectStore(replace(s3_config, endpoint_url=f"http://127.0.0.1:{closed_port}"))
    try:
        with pytest.raises(StoreUnavailable, match="EndpointConnectionError"):
            await store.check()
    finally:
        await store.close()


async def test_missing_bucket_is_store_unavailable(s3_config: StorageConfig, tmp_path: Path) -> None:
    store = S3ObjectStore(s3_config)  # bucket never created
    path = source(tmp_path, b"data")
    try:
        for attempt in (
            lambda: store.check(),
            lambda: store.put_file(KEY, path),
            lambda: store.put_file(KEY, source(tmp_path, os.urandom(6 * MIB), name="big")),
            lambda: store.open_reader(KEY),
            lambda: store.open_reader(KEY, version_id="v1"),
            lambda: store.delete(KEY),
            lambda: store.delete(KEY, version_id="v1"),
            lambda: store.delete_all_versions(KEY),
            lambda: store.list_versions(KEY),
        ):
            with pytest.raises(StoreUnavailable, match=s3_config.bucket):
                await attempt()
    finally:
        await store.close()


async def test_unknown_version_is_object_not_found(s3_store: S3ObjectStore, tmp_path: Path) -> None:
    await s3_store.put_file(KEY, source(tmp_path, b"data"))
    with pytest.raises(ObjectNotFound):
        await s3_store.open_reader(KEY, version_id="no-such-version")
    with pytest.raises(ObjectNotFound):
        await s3_store.delete(KEY, version_id="no-such-version")


# --- configuration -------------------------------------------------------------------------


def test_open_object_store_chooses_the_backend(s3_config: StorageConfig, tmp_path: Path) -> None:
    assert isinstance(open_object_store(s3_config, root=tmp_path), S3ObjectStore)
    assert isinstance(open_object_store(StorageConfig(), root=tmp_path), FilesystemObjectStore)
    with pytest.raises(ValueError):
        open_object_store(replace(s3_config, backend="ftp"), root=tmp_path)


def test_s3_store_requires_a_bucket() -> None:
    with pytest.raises(ValueError):
        S3ObjectStore(StorageConfig(backend="s3"))
