"""Fixtures for the object-store tests: a filesystem store under tmp_path, an S3 store on a fresh
versioned bucket in moto (spoken to over HTTP), and ``store`` parametrized over both so that the
contract in test_contract.py runs against each backend."""

from __future__ import annotations

import errno
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import boto3
import pytest

from callrec.config import StorageConfig
from callrec.storage import ObjectStore
from callrec.storage.filesystem import FilesystemObjectStore
from callrec.storage.s3 import S3ObjectStore

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

MIB = 1024 * 1024


@pytest.fixture
def bucket_name() -> str:
    return f"callrec-test-{uuid.uuid4().hex[:16]}"


@pytest.fixture
def s3_config(moto_endpoint: str, bucket_name: str) -> StorageConfig:
    # Threshold lowered to S3's 5 MiB minimum part size so that a 40 MiB file goes in 8 parts.
    return StorageConfig(
        backend="s3",
        bucket=bucket_name,
        prefix="recordings/",
        endpoint_url=moto_endpoint,
        region="us-east-1",
        multipart_threshold_mb=5,
    )


@pytest.fixture
def s3_client(moto_endpoint: str) -> S3Client:
    """A plain boto3 client for looking behind the store's back."""
    return boto3.session.Session().client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture
async def s3_store(s3_config: StorageConfig) -> AsyncIterator[S3ObjectStore]:
    store = S3ObjectStore(s3_config)
    await store.ensure_bucket(versioning=True)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def fs_store(tmp_path: Path) -> AsyncIterator[FilesystemObjectStore]:
    store = FilesystemObjectStore(tmp_path / "objects")
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture(params=["filesystem", "s3"])
def store(request: pytest.FixtureRequest) -> ObjectStore:
    backend: ObjectStore = request.getfixturevalue(
        "fs_store" if request.param == "filesystem" else "s3_store"
    )
    return backend


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The name of the backend ``store`` is running on, for the few backend-dependent checks."""
    name: str = request.node.callspec.params["store"]
    return name


class FailingSource:
    """A source file that fails with EIO after ``fail_after`` bytes, like a disk going bad under
    the reader. Both stores read their input through ``callrec.storage.base.open_source``."""

    def __init__(self, inner: BinaryIO, fail_after: int) -> None:
        self._inner = inner
        self._left = fail_after

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            raise OSError(errno.EIO, "simulated read failure")
        if size < 0:
            data = self._inner.read()
            if len(data) > self._left:
                raise OSError(errno.EIO, "simulated read failure")
        else:
            data = self._inner.read(min(size, self._left))
        self._left -= len(data)
        return data

    def fileno(self) -> int:
        return self._inner.fileno()

    def close(self) -> None:
        self._inner.close()

    def __enter__(self) -> FailingSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@pytest.fixture
def failing_source(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Call with a byte count to make every source opened by a store fail after that many bytes."""
    from callrec.storage import base

    def arm(fail_after: int) -> None:
        monkeypatch.setattr(base, "open_source", lambda path: FailingSource(path.open("rb"), fail_after))

    return arm
