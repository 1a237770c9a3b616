"""The object-store interface: where encrypted recordings live.

Everything stored is ciphertext (rule 3 in DESIGN.md); keys are opaque, pseudonymous strings such
as ``recordings/<tenant>/<uuid>`` and must never carry a phone number, a name or anything else
personal. Two backends implement :class:`ObjectStore`: a local filesystem store "for development"
and the embedded default, and S3 (any S3-compatible endpoint) for production.

Vendor errors are translated at this boundary, so callers only ever see:

- :class:`ObjectNotFound` — the key (or that version of it) does not exist;
- :class:`StoreUnavailable` — the store cannot be reached or used right now (endpoint down,
  credentials wrong, bucket missing, disk full); the caller keeps its job and retries later;
- :class:`StoreError` — anything else the store refused (its base class);
- :class:`ValueError` — the caller passed a key that is not valid (a programming error).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import re
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, TypeVar

_T = TypeVar("_T")

# A key is one or more "/"-separated segments of [A-Za-z0-9._-]. Segments may not start with
# "." (which also rules out "." and ".."): the filesystem store keeps its temporary and probe
# files under dot-names, so no key can ever collide with one. The limits keep a prefixed key
# under S3's 1024-byte maximum and every segment under a filesystem's 255-byte name limit
# with room for the temporary-file affixes.
_SEGMENT = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")
MAX_KEY_LENGTH = 512
MAX_SEGMENT_LENGTH = 200


@dataclass(frozen=True)
class StoredObject:
    """One stored version of an object."""

    key: str
    version_id: str | None  # S3 VersionId on versioned buckets; None on the filesystem
    size: int


class StoreError(Exception):
    """The object store refused an operation for a reason other than a missing object."""


class StoreUnavailable(StoreError):
    """The store cannot be used right now (endpoint down, credentials wrong, bucket missing,
    disk full). Nothing was lost; the caller should retry later."""


class ObjectNotFound(FileNotFoundError):
    """The key, or the requested version of it, does not exist in the store."""


def validate_key(key: str) -> str:
    """Return ``key`` if it is a valid object key, else raise :class:`ValueError`.

    Rejects empty keys, absolute paths, empty segments (``a//b``, a trailing ``/``), ``.`` and
    ``..`` segments, segments starting with ``.``, and any character outside ``[A-Za-z0-9._/-]``.
    Both backends apply the same rule so that a deployment can move from one to the other.
    """
    if not isinstance(key, str) or not key:
        raise ValueError("object key must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"object key is longer than {MAX_KEY_LENGTH} characters")
    for segment in key.split("/"):
        if not _SEGMENT.match(segment) or len(segment) > MAX_SEGMENT_LENGTH:
            # The key may be hostile (it can come from a path), so it is not echoed back.
            raise ValueError(
                "object key must be '/'-separated segments of [A-Za-z0-9._-], "
                "none empty and none starting with '.'"
            )
    return key


class ObjectStore(Protocol):
    """Where ciphertext objects are kept. All methods are coroutines; blocking I/O runs in a
    thread pool, never on the event loop."""

    async def put_file(self, key: str, path: Path) -> StoredObject:
        """Store the local file ``path`` (ciphertext) under ``key``, replacing the current
        object (on a versioned bucket: adding a new version). Atomic: readers see either the
        old object or the complete new one, never a partial file. Errors reading ``path``
        propagate unchanged and store nothing."""
        ...

    async def open_reader(self, key: str, *, version_id: str | None = None) -> BinaryIO:
        """Open the object (the current version, or ``version_id``) for reading. The result is
        a blocking file-like object: read it in a thread and close it. Raises
        :class:`ObjectNotFound`."""
        ...

    async def delete(self, key: str, *, version_id: str | None = None) -> None:
        """Permanently delete one version: ``version_id``, or when it is None the current
        object. Never leaves a delete marker in its place. Older versions are untouched; use
        :meth:`delete_all_versions` to erase a key. Raises :class:`ObjectNotFound`."""
        ...

    async def delete_all_versions(self, key: str) -> int:
        """Erase every version and delete marker of exactly ``key`` and return how many were
        removed (0 when there was nothing). This is what destroying a recording means: a
        delete marker alone leaves the data readable."""
        ...

    async def list_versions(self, key: str) -> list[StoredObject]:
        """The stored versions of exactly ``key``, newest first; ``[]`` when there are none."""
        ...

    async def check(self) -> None:
        """Raise :class:`StoreUnavailable` unless the store can be used (for ``/readyz``)."""
        ...

    async def close(self) -> None:
        """Release connections; the store is not used afterwards."""
        ...


async def run_blocking(executor: Executor | None, func: Callable[[], _T]) -> _T:
    """Run ``func`` in ``executor`` (None: the loop's default pool), keeping the caller's
    context variables as :func:`asyncio.to_thread` does."""
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    return await loop.run_in_executor(executor, functools.partial(context.run, func))


def open_source(path: Path) -> BinaryIO:
    """Open a local file to be stored. Both backends read their input through this one
    function, which lets tests substitute a source that fails part-way through."""
    return path.open("rb")
