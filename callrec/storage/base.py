"""The object-store interface: where encrypted recordings live.

Everything stored is ciphertext (rule 3 in DESIGN.md); keys are opaque, pseudonymous strings such
as ``recordings/<tenant>/<uuid>`` and must never carry a phone number, a name or anything else
personal. Two backends implement :class:`ObjectStore`: a local filesystem store "for development"
and the embedded default, and S3 (any S3-compatible endpoint) for production.

Vendor errors are translated at this boundary, so callers only ever see:

- :class:`ObjectNotFound` — the key (or that version of it) does not exist;
- :class:`StoreUnavailable` — the store cannot be reached or used right now (endpoint down,
  credentials wrong, bucket missing, disk full); the caller keeps its job and retries later;
- :class:`ObjectLocked` — S3 Object Lock (a legal hold or a retention period) protects the
  version(s) being deleted; nothing locked was deleted and retrying will not help until the
  lock is released;
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


class ObjectLocked(StoreError):
    """S3 Object Lock protects the object version(s): a legal hold, or a retention period that has
    not ended. Nothing locked was deleted (other versions named in the same request may have
    been). ``version_ids`` are the locked versions of ``key``. Retrying will not help until the
    hold is released; see https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-lock.html.

    For :meth:`ObjectStore.delete_objects`, which erases many keys at once, ``locked`` maps every
    key that kept locked versions to those versions (``key`` and ``version_ids`` are its first
    entry), and ``deleted`` maps every key asked for to the number of versions and delete markers
    that call did remove, locked keys included.
    """

    def __init__(
        self,
        message: str,
        *,
        key: str,
        version_ids: tuple[str, ...],
        locked: dict[str, tuple[str, ...]] | None = None,
        deleted: dict[str, int] | None = None,
    ) -> None:
        super().__init__(message)
        self.key = key
        self.version_ids = version_ids
        self.locked: dict[str, tuple[str, ...]] = locked if locked is not None else {key: version_ids}
        self.deleted: dict[str, int] = deleted if deleted is not None else {}


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
        :meth:`delete_all_versions` to erase a key. Raises :class:`ObjectNotFound`, and
        :class:`ObjectLocked` when Object Lock protects the version."""
        ...

    async def delete_all_versions(self, key: str) -> int:
        """Erase every version and delete marker of exactly ``key`` and return how many were
        removed (0 when there was nothing). This is what destroying a recording means: a
        delete marker alone leaves the data readable. Raises :class:`ObjectLocked` when Object
        Lock protects some versions: those are kept, the others are deleted."""
        ...

    async def delete_objects(self, keys: list[str]) -> dict[str, int]:
        """Erase every version and delete marker of each of ``keys``, as
        :meth:`delete_all_versions` does for one, in as few requests as the store allows (S3:
        DeleteObjects, 1,000 versions a request). Returns, for each distinct key, how many versions
        and delete markers were removed (0 for a key that had none). A key repeated counts once.

        Raises :class:`ObjectLocked` when Object Lock protects some versions: those are kept,
        everything else asked for is deleted, and the exception tells which keys kept what
        (``locked``) and how many versions of each key went (``deleted``). Raises
        :class:`StoreError` (or :class:`StoreUnavailable`) when the store refused other deletions;
        some keys may then be erased and others not, so the caller retries them all (erasing an
        erased key is a no-op). Every key is validated before anything is deleted.

        Meant for keys nobody writes any more (erased recordings): unlike
        :meth:`delete_all_versions`, it does not list again afterwards to catch a version that a
        concurrent writer added meanwhile."""
        ...

    async def list_versions(self, key: str) -> list[StoredObject]:
        """The stored versions of exactly ``key``, newest first; ``[]`` when there are none."""
        ...

    # Legal holds (rule 1 in DESIGN.md). The database is the authority on holds in every
    # deployment; where the bucket has S3 Object Lock, each hold is also mirrored as an Object
    # Lock legal hold on every version of the recording, so that S3 itself refuses to delete
    # it (by hand, by lifecycle rule, or by a bug in callrec).
    # https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-lock.html#object-lock-legal-holds

    async def supports_legal_hold(self) -> bool:
        """Whether the store itself can hold objects: True on an S3 bucket with Object Lock
        enabled. When False, :meth:`set_legal_hold` does nothing and holds are enforced by the
        database alone."""
        ...

    async def set_legal_hold(self, key: str, *, version_id: str | None, on: bool) -> None:
        """Place (``on``) or release an Object Lock legal hold on ``version_id`` of ``key``, or
        on every version of it when ``version_id`` is None. Idempotent. Raises
        :class:`ObjectNotFound` when the key (or that version) does not exist, and
        :class:`StoreError` when the store supports holds but refused."""
        ...

    async def legal_hold(self, key: str, *, version_id: str | None) -> bool:
        """Whether ``version_id`` of ``key`` is under an Object Lock legal hold, or, when
        ``version_id`` is None, whether any version of it is. False where holds are not
        supported. Raises :class:`ObjectNotFound`."""
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
