"""Legal holds on the object store: S3 Object Lock legal holds against moto over HTTP, and the
filesystem store, where holds live in the database only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest

from callrec.config import StorageConfig
from callrec.storage import ObjectNotFound, ObjectStore, StoreError, StoreUnavailable
from callrec.storage.base import ObjectLocked
from callrec.storage.filesystem import FilesystemObjectStore
from callrec.storage.s3 import S3ObjectStore

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

KEY = "recordings/acme/9b2f4c1e-3d5a-4e6f-8a7b-0c1d2e3f4a5b"
FULL_KEY = "recordings/" + KEY


@pytest.fixture
async def locked_store(s3_config: StorageConfig, s3_client: S3Client) -> AsyncIterator[S3ObjectStore]:
    """A store on a bucket created with Object Lock (which also turns versioning on)."""
    s3_client.create_bucket(Bucket=s3_config.bucket, ObjectLockEnabledForBucket=True)
    store = S3ObjectStore(s3_config)
    try:
        yield store
    finally:
        await store.close()


def source(tmp_path: Path, data: bytes, name: str = "ciphertext.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


async def read_all(store: ObjectStore, key: str, *, version_id: str | None = None) -> bytes:
    reader = await store.open_reader(key, version_id=version_id)

    def drain() -> bytes:
        with reader:
            return reader.read()

    return await asyncio.to_thread(drain)


async def two_versions(store: ObjectStore, tmp_path: Path) -> tuple[str, str]:
    first = await store.put_file(KEY, source(tmp_path, b"first"))
    second = await store.put_file(KEY, source(tmp_path, b"second"))
    assert first.version_id is not None and second.version_id is not None
    return first.version_id, second.version_id


def hold_status(client: S3Client, bucket: str, version_id: str) -> str | None:
    """What S3 itself says, behind the store's back."""
    response = client.get_object_legal_hold(Bucket=bucket, Key=FULL_KEY, VersionId=version_id)
    return response.get("LegalHold", {}).get("Status")


@contextmanager
def denied(client: Any, operation: str) -> Iterator[None]:
    """Make ``operation`` answer 403 AccessDenied, as for credentials without the permission."""

    def deny(**kwargs: Any) -> tuple[Any, dict[str, Any]]:
        return SimpleNamespace(status_code=403, headers={}), {
            "Error": {"Code": "AccessDenied", "Message": "Access Denied"},
            "ResponseMetadata": {"HTTPStatusCode": 403},
        }

    event = f"before-call.s3.{operation}"
    client.meta.events.register(event, deny)
    try:
        yield
    finally:
        client.meta.events.unregister(event, deny)


# --- S3 ------------------------------------------------------------------------------------------


async def test_supports_legal_hold_follows_the_bucket(
    locked_store: S3ObjectStore, s3_config: StorageConfig
) -> None:
    assert await locked_store.supports_legal_hold() is True
    assert await locked_store.supports_legal_hold() is True  # kept: Object Lock cannot be turned off
    plain = S3ObjectStore(replace(s3_config, bucket=s3_config.bucket + "-plain"))
    try:
        await plain.ensure_bucket(versioning=True)
        assert await plain.supports_legal_hold() is False  # versioned, but no Object Lock
    finally:
        await plain.close()


async def test_supports_legal_hold_on_a_missing_bucket_is_store_unavailable(s3_config: StorageConfig) -> None:
    store = S3ObjectStore(s3_config)
    try:
        with pytest.raises(StoreUnavailable):
            await store.supports_legal_hold()
    finally:
        await store.close()


async def test_hold_on_one_version(locked_store: S3ObjectStore, s3_client: S3Client, tmp_path: Path) -> None:
    first, second = await two_versions(locked_store, tmp_path)
    assert await locked_store.legal_hold(KEY, version_id=first) is False
    assert await locked_store.legal_hold(KEY, version_id=None) is False

    await locked_store.set_legal_hold(KEY, version_id=first, on=True)
    await locked_store.set_legal_hold(KEY, version_id=first, on=True)  # idempotent

    assert hold_status(s3_client, locked_store.bucket, first) == "ON"
    assert hold_status(s3_client, locked_store.bucket, second) != "ON"
    assert await locked_store.legal_hold(KEY, version_id=first) is True
    assert await locked_store.legal_hold(KEY, version_id=second) is False
    assert await locked_store.legal_hold(KEY, version_id=None) is True  # some version is held


async def test_hold_without_a_version_covers_every_version(
    locked_store: S3ObjectStore, s3_client: S3Client, tmp_path: Path
) -> None:
    first, second = await two_versions(locked_store, tmp_path)
    s3_client.delete_object(Bucket=locked_store.bucket, Key=FULL_KEY)  # a delete marker on top

    await locked_store.set_legal_hold(KEY, version_id=None, on=True)
    assert hold_status(s3_client, locked_store.bucket, first) == "ON"
    assert hold_status(s3_client, locked_store.bucket, second) == "ON"

    await locked_store.set_legal_hold(KEY, version_id=None, on=False)
    assert hold_status(s3_client, locked_store.bucket, first) == "OFF"
    assert hold_status(s3_client, locked_store.bucket, second) == "OFF"
    assert await locked_store.legal_hold(KEY, version_id=None) is False


async def test_delete_of_a_held_version_is_object_locked_and_keeps_it(
    locked_store: S3ObjectStore, tmp_path: Path
) -> None:
    stored = await locked_store.put_file(KEY, source(tmp_path, b"held"))
    assert stored.version_id is not None
    await locked_store.set_legal_hold(KEY, version_id=stored.version_id, on=True)

    with pytest.raises(ObjectLocked) as by_version:
        await locked_store.delete(KEY, version_id=stored.version_id)
    assert by_version.value.key == KEY
    assert by_version.value.version_ids == (stored.version_id,)
    assert isinstance(by_version.value, StoreError)
    assert not isinstance(by_version.value, StoreUnavailable)  # retrying will not help
    with pytest.raises(ObjectLocked):
        await locked_store.delete(KEY)  # the current version, by its id

    assert await locked_store.list_versions(KEY) == [stored]
    assert await read_all(locked_store, KEY) == b"held"


async def test_delete_all_versions_keeps_held_versions_and_raises(
    locked_store: S3ObjectStore, s3_client: S3Client, tmp_path: Path
) -> None:
    first, _second = await two_versions(locked_store, tmp_path)
    s3_client.delete_object(Bucket=locked_store.bucket, Key=FULL_KEY)  # a delete marker on top
    await locked_store.set_legal_hold(KEY, version_id=first, on=True)

    with pytest.raises(ObjectLocked) as locked:
        await locked_store.delete_all_versions(KEY)
    assert locked.value.version_ids == (first,)

    # The unheld version and the delete marker are gone; the held version is untouched.
    listing = s3_client.list_object_versions(Bucket=locked_store.bucket)
    assert [v["VersionId"] for v in listing.get("Versions", [])] == [first]
    assert listing.get("DeleteMarkers", []) == []
    assert await read_all(locked_store, KEY, version_id=first) == b"first"


async def test_releasing_the_hold_lets_the_erasure_happen(
    locked_store: S3ObjectStore, tmp_path: Path
) -> None:
    first, second = await two_versions(locked_store, tmp_path)
    await locked_store.set_legal_hold(KEY, version_id=None, on=True)
    with pytest.raises(ObjectLocked) as locked:
        await locked_store.delete_all_versions(KEY)
    assert set(locked.value.version_ids) == {first, second}

    await locked_store.set_legal_hold(KEY, version_id=None, on=False)
    assert await locked_store.delete_all_versions(KEY) == 2
    assert await locked_store.list_versions(KEY) == []


async def test_release_of_one_version_lets_that_version_be_deleted(
    locked_store: S3ObjectStore, tmp_path: Path
) -> None:
    first, second = await two_versions(locked_store, tmp_path)
    await locked_store.set_legal_hold(KEY, version_id=None, on=True)
    await locked_store.set_legal_hold(KEY, version_id=second, on=False)
    await locked_store.delete(KEY, version_id=second)
    with pytest.raises(ObjectLocked):
        await locked_store.delete(KEY, version_id=first)
    assert [v.version_id for v in await locked_store.list_versions(KEY)] == [first]


async def test_a_retention_period_is_object_locked_too(
    locked_store: S3ObjectStore, s3_client: S3Client, tmp_path: Path
) -> None:
    stored = await locked_store.put_file(KEY, source(tmp_path, b"retained"))
    assert stored.version_id is not None
    s3_client.put_object_retention(
        Bucket=locked_store.bucket,
        Key=FULL_KEY,
        VersionId=stored.version_id,
        Retention={"Mode": "GOVERNANCE", "RetainUntilDate": datetime.now(UTC) + timedelta(days=1)},
    )
    with pytest.raises(ObjectLocked):
        await locked_store.delete(KEY, version_id=stored.version_id)
    with pytest.raises(ObjectLocked):
        await locked_store.delete_all_versions(KEY)
    assert await locked_store.list_versions(KEY) == [stored]


async def test_access_denied_for_an_unlocked_version_stays_store_unavailable(
    locked_store: S3ObjectStore, tmp_path: Path
) -> None:
    stored = await locked_store.put_file(KEY, source(tmp_path, b"data"))
    client = await locked_store.run_with_client(lambda c: c)
    with denied(client, "DeleteObject"), pytest.raises(StoreUnavailable):
        await locked_store.delete(KEY, version_id=stored.version_id)
    assert await locked_store.list_versions(KEY) == [stored]


async def test_a_batch_delete_denied_for_unlocked_versions_is_store_unavailable(
    locked_store: S3ObjectStore, tmp_path: Path
) -> None:
    stored = await locked_store.put_file(KEY, source(tmp_path, b"data"))
    client = await locked_store.run_with_client(lambda c: c)

    def deny_each(**kwargs: Any) -> tuple[Any, dict[str, Any]]:
        # DeleteObjects answers 200 and reports each refused entry in Errors.
        return SimpleNamespace(status_code=200, headers={}), {
            "Errors": [
                {
                    "Key": FULL_KEY,
                    "VersionId": stored.version_id,
                    "Code": "AccessDenied",
                    "Message": "Access Denied",
                }
            ],
            "ResponseMetadata": {"HTTPStatusCode": 200},
        }

    client.meta.events.register("before-call.s3.DeleteObjects", deny_each)
    try:
        with pytest.raises(StoreUnavailable):
            await locked_store.delete_all_versions(KEY)
    finally:
        client.meta.events.unregister("before-call.s3.DeleteObjects", deny_each)
    assert await locked_store.list_versions(KEY) == [stored]


async def test_access_denied_when_the_lock_cannot_be_read_stays_store_unavailable(
    locked_store: S3ObjectStore, tmp_path: Path
) -> None:
    # Held, but the credentials may not delete nor read the lock: no way to tell, so the
    # refusal stays a store problem. Nothing is deleted either way.
    stored = await locked_store.put_file(KEY, source(tmp_path, b"data"))
    await locked_store.set_legal_hold(KEY, version_id=stored.version_id, on=True)
    client = await locked_store.run_with_client(lambda c: c)
    with denied(client, "HeadObject"), pytest.raises(StoreUnavailable):
        await locked_store.delete(KEY, version_id=stored.version_id)
    assert await locked_store.list_versions(KEY) == [stored]


async def test_missing_key_or_version(locked_store: S3ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound):
        await locked_store.set_legal_hold(KEY, version_id=None, on=True)
    with pytest.raises(ObjectNotFound):
        await locked_store.legal_hold(KEY, version_id=None)
    await locked_store.put_file(KEY, source(tmp_path, b"data"))
    with pytest.raises(ObjectNotFound):
        await locked_store.set_legal_hold(KEY, version_id="no-such-version", on=True)
    with pytest.raises(ObjectNotFound):
        await locked_store.legal_hold(KEY, version_id="no-such-version")
    with pytest.raises(ValueError):
        await locked_store.set_legal_hold("../escape", version_id=None, on=True)


async def test_bucket_without_object_lock(s3_store: S3ObjectStore, tmp_path: Path) -> None:
    stored = await s3_store.put_file(KEY, source(tmp_path, b"data"))
    with pytest.raises(StoreError) as refused:
        await s3_store.set_legal_hold(KEY, version_id=stored.version_id, on=True)
    assert not isinstance(refused.value, ObjectLocked | StoreUnavailable)
    assert "Object Lock" in str(refused.value)
    assert await s3_store.legal_hold(KEY, version_id=stored.version_id) is False
    assert await s3_store.delete_all_versions(KEY) == 1


# --- filesystem ---------------------------------------------------------------------------------


async def test_filesystem_holds_live_in_the_database(fs_store: FilesystemObjectStore, tmp_path: Path) -> None:
    await fs_store.put_file(KEY, source(tmp_path, b"data"))
    assert await fs_store.supports_legal_hold() is False
    await fs_store.set_legal_hold(KEY, version_id=None, on=True)  # a no-op
    assert await fs_store.legal_hold(KEY, version_id=None) is False
    await fs_store.delete(KEY)  # the store does not enforce holds; the database does
    assert await fs_store.list_versions(KEY) == []
    await fs_store.set_legal_hold(KEY, version_id=None, on=False)  # no I/O, so no ObjectNotFound


async def test_filesystem_hold_calls_still_validate(fs_store: FilesystemObjectStore) -> None:
    with pytest.raises(ValueError):
        await fs_store.set_legal_hold("../escape", version_id=None, on=True)
    with pytest.raises(ValueError):
        await fs_store.legal_hold(KEY, version_id="3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY")
