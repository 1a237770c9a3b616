"""Object storage for encrypted recordings: the interface, the filesystem store and the S3 store."""

from __future__ import annotations

from concurrent.futures import Executor
from pathlib import Path

from callrec.config import StorageConfig
from callrec.storage.base import (
    ObjectLocked,
    ObjectNotFound,
    ObjectStore,
    StoredObject,
    StoreError,
    StoreUnavailable,
    validate_key,
)
from callrec.storage.filesystem import FilesystemObjectStore

__all__ = [
    "FilesystemObjectStore",
    "ObjectLocked",
    "ObjectNotFound",
    "ObjectStore",
    "StoreError",
    "StoreUnavailable",
    "StoredObject",
    "open_object_store",
    "validate_key",
]


def open_object_store(storage: StorageConfig, *, root: Path, executor: Executor | None = None) -> ObjectStore:
    """The store chosen by ``storage.backend``: ``"filesystem"`` under ``root`` (resolved by the
    caller from ``storage.path`` or the data directory) or ``"s3"``. Opening does no I/O; call
    ``check()`` to find out whether the store is usable."""
    if storage.backend == "filesystem":
        return FilesystemObjectStore(root, executor=executor)
    if storage.backend == "s3":
        # Imported here so that a filesystem-only process does not pay for loading boto3.
        from callrec.storage.s3 import S3ObjectStore

        return S3ObjectStore(storage, executor=executor)
    raise ValueError(f"storage.backend: unknown backend {storage.backend!r}")
