"""The S3 object store (AWS S3 or any S3-compatible endpoint), through boto3.

Every boto3 call runs in a thread pool, never on the event loop. The bucket is expected to have
versioning enabled: then every ``put_file`` makes a new version, ``delete`` removes exactly one
version, and ``delete_all_versions`` is what erasure means (a delete marker alone leaves every
older version readable; see
https://docs.aws.amazon.com/AmazonS3/latest/userguide/DeletingObjectVersions.html).

The VersionId of an upload is taken from the response of the request that created it
(``PutObject``, or ``CompleteMultipartUpload`` for large files), never from a later
``HeadObject``, which could already see a concurrent writer's newer version.

Objects carry ``Content-Type: application/octet-stream`` and nothing else: no user metadata,
because object metadata is readable by anyone who can list or head the bucket (rule 3).

On a bucket with Object Lock, legal holds are mirrored onto object versions
(:meth:`S3ObjectStore.set_legal_hold`) and S3 refuses to delete a held version. S3 answers that
refusal with the same ``AccessDenied`` (403) as a missing permission; :meth:`S3ObjectStore._is_locked`
tells the two apart so that callers get :class:`~callrec.storage.base.ObjectLocked`, not
:class:`~callrec.storage.base.StoreUnavailable`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn, TypeVar, cast

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from callrec.config import StorageConfig
from callrec.storage import base
from callrec.storage.base import (
    ObjectLocked,
    ObjectNotFound,
    StoredObject,
    StoreError,
    StoreUnavailable,
    run_blocking,
    validate_key,
)

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_s3.type_defs import (
        CompletedPartTypeDef,
        ListObjectVersionsOutputTypeDef,
        ObjectIdentifierTypeDef,
    )

log = logging.getLogger(__name__)

_T = TypeVar("_T")

_MIB = 1024 * 1024
# S3 multipart limits: parts of at least 5 MiB (except the last), at most 10,000 parts.
# https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html
_MIN_PART_SIZE = 5 * _MIB
_MAX_PARTS = 10_000
# ListObjectVersions pages and DeleteObjects batches hold at most 1,000 entries.
_LIST_PAGE_SIZE = 1000
_DELETE_BATCH = 1000
# delete_all_versions re-lists after deleting, in case a writer raced it; it gives up after this.
_ERASE_ROUNDS = 3
# delete_objects finds the versions of many keys either key by key (one ListObjectVersions each,
# up to _LIST_CONCURRENCY at a time) or, when enough of them share a prefix, by listing that
# prefix page by page. A page of 1,000 entries costs the client about as much CPU as 40 single-key
# listings (measured with botocore, 100 ms against 2.6 ms), so the prefix is listed only for a
# group of at least _SCAN_MIN_KEYS keys, and only while each page passes at least
# _SCAN_MIN_KEYS_PER_PAGE of them; the keys it has not reached then are listed one by one. An
# expiry sweep that catches up on a backlog is dense; a daily sweep of one day in ninety, or one
# caller's recordings among a tenant's, is sparse and goes key by key.
_SCAN_MIN_KEYS = 50
_SCAN_MIN_KEYS_PER_PAGE = 50
_LIST_CONCURRENCY = 16

# Connection refused fails fast; a silent endpoint costs connect_timeout per attempt. The
# "standard" retry mode retries throttling, 5xx and connection errors with jittered backoff.
_CLIENT_CONFIG = Config(
    connect_timeout=5,
    read_timeout=60,
    retries={"mode": "standard", "max_attempts": 3},
    max_pool_connections=32,
)

_NOT_FOUND = frozenset({"NoSuchKey", "NoSuchVersion", "404", "NotFound"})
# A GET or HEAD of a delete marker's version id answers 405.
_DELETE_MARKER = frozenset({"MethodNotAllowed", "405"})
_UNAVAILABLE = frozenset(
    {
        "NoSuchBucket",
        "AccessDenied",
        "403",
        "Forbidden",
        "AllAccessDisabled",
        "AccountProblem",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "RequestTimeTooSkewed",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "500",
        "503",
        # SSE-KMS: the key is disabled, missing or not usable by these credentials.
        "KMS.DisabledException",
        "KMS.NotFoundException",
        "KMS.KMSInvalidStateException",
    }
)


# GetObjectLockConfiguration on a bucket without Object Lock; NotImplemented from S3-compatible
# servers that have no Object Lock at all.
_NO_OBJECT_LOCK = frozenset({"ObjectLockConfigurationNotFoundError", "NotImplemented"})
# GetObjectLegalHold on a version that never had a hold (AWS; moto answers an empty LegalHold).
_NO_LEGAL_HOLD = frozenset({"NoSuchObjectLockConfiguration"})
# S3 refuses to delete a locked version with the same code as a missing permission.
_ACCESS_DENIED = frozenset({"AccessDenied", "403"})


@dataclass(frozen=True)
class _Entry:
    """One row of ListObjectVersions for our key: a version or a delete marker."""

    version_id: str
    size: int
    is_latest: bool
    is_delete_marker: bool


def _page_entries(page: ListObjectVersionsOutputTypeDef) -> Iterator[tuple[str, _Entry]]:
    """(key, entry) for each row of one ListObjectVersions page: its versions, then its markers."""
    for version in page.get("Versions", []):
        yield (
            version.get("Key", ""),
            _Entry(
                version_id=version.get("VersionId", "null"),
                size=version.get("Size", 0),
                is_latest=version.get("IsLatest", False),
                is_delete_marker=False,
            ),
        )
    for marker in page.get("DeleteMarkers", []):
        yield (
            marker.get("Key", ""),
            _Entry(
                version_id=marker.get("VersionId", "null"),
                size=0,
                is_latest=marker.get("IsLatest", False),
                is_delete_marker=True,
            ),
        )


class S3ObjectStore:
    """:class:`~callrec.storage.base.ObjectStore` over one S3 bucket, keys under ``storage.prefix``.

    ``client_config`` is merged over the defaults (timeouts, retries); ``executor`` runs the
    blocking boto3 calls (None: the event loop's default thread pool).
    """

    def __init__(
        self,
        storage: StorageConfig,
        *,
        executor: Executor | None = None,
        client_config: Config | None = None,
    ) -> None:
        if not storage.bucket:
            raise ValueError("storage.bucket is required for the S3 store")
        if storage.sse not in ("", "AES256", "aws:kms"):
            raise ValueError(f"storage.sse: unsupported value {storage.sse!r}")
        self._storage = storage
        self._bucket = storage.bucket
        self._prefix = storage.prefix
        self._executor = executor
        self._threshold = storage.multipart_threshold_mb * _MIB
        config = _CLIENT_CONFIG
        if storage.endpoint_url:
            # S3-compatible servers (MinIO, Ceph, moto) are usually reached by address, where
            # virtual-hosted bucket names cannot resolve.
            config = config.merge(Config(s3={"addressing_style": "path"}))
        if client_config is not None:
            config = config.merge(client_config)
        self._config = config
        self._sse: dict[str, Any] = {}
        if storage.sse:
            self._sse["ServerSideEncryption"] = storage.sse
            if storage.sse == "aws:kms" and storage.sse_kms_key_id:
                self._sse["SSEKMSKeyId"] = storage.sse_kms_key_id
        self._lock = threading.Lock()
        self._s3: S3Client | None = None
        # Object Lock cannot be turned off once enabled, so a True answer is kept; False is
        # asked again, because an operator may enable it on the live bucket.
        self._object_lock = False

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def prefix(self) -> str:
        """What every object key of this store starts with (``storage.prefix``)."""
        return self._prefix

    @property
    def storage(self) -> StorageConfig:
        return self._storage

    async def run_with_client(self, func: Callable[[S3Client], _T]) -> _T:
        """Run ``func`` with the boto3 client in the store's thread pool. For bucket
        administration (:mod:`callrec.storage.check`), which reads S3's error codes itself;
        object operations go through the methods, which translate errors."""
        return await run_blocking(self._executor, lambda: func(self._client()))

    # --- ObjectStore -----------------------------------------------------------------------

    async def put_file(self, key: str, path: Path) -> StoredObject:
        full_key = self._full_key(key)
        return await run_blocking(self._executor, lambda: self._put(key, full_key, path))

    async def open_reader(self, key: str, *, version_id: str | None = None) -> BinaryIO:
        full_key = self._full_key(key)
        return await run_blocking(self._executor, lambda: self._open(key, full_key, version_id))

    async def delete(self, key: str, *, version_id: str | None = None) -> None:
        full_key = self._full_key(key)
        await run_blocking(self._executor, lambda: self._delete(key, full_key, version_id))

    async def delete_all_versions(self, key: str) -> int:
        full_key = self._full_key(key)
        return await run_blocking(self._executor, lambda: self._delete_all(key, full_key))

    async def delete_objects(self, keys: list[str]) -> dict[str, int]:
        """Find every version and delete marker of ``keys`` (a prefix listing where many keys
        share one, else one listing per key, concurrently), then delete them with DeleteObjects in
        batches of 1,000, quietly. Errors other than AccessDenied are retried once; AccessDenied
        is Object Lock (:class:`ObjectLocked`) or a missing permission (:class:`StoreUnavailable`),
        told apart as in :meth:`delete_all_versions`."""
        wanted = {self._full_key(key): key for key in keys}  # validates every key first
        if not wanted:
            return {}
        found, rest = await run_blocking(self._executor, lambda: self._scan(sorted(wanted)))
        gate = asyncio.Semaphore(_LIST_CONCURRENCY)

        async def list_one(full_key: str) -> None:
            async with gate:
                found[full_key] = await run_blocking(self._executor, lambda: self._list(full_key))

        try:
            async with asyncio.TaskGroup() as group:
                for full_key in rest:
                    group.create_task(list_one(full_key))
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None  # StoreUnavailable etc., as from any other method
        return await run_blocking(self._executor, lambda: self._delete_found(wanted, found))

    async def list_versions(self, key: str) -> list[StoredObject]:
        full_key = self._full_key(key)

        def versions() -> list[StoredObject]:
            return [
                StoredObject(key=key, version_id=e.version_id, size=e.size)
                for e in self._list(full_key)
                if not e.is_delete_marker
            ]

        return await run_blocking(self._executor, versions)

    async def supports_legal_hold(self) -> bool:
        if self._object_lock:
            return True
        return await run_blocking(self._executor, self._supports_legal_hold)

    async def set_legal_hold(self, key: str, *, version_id: str | None, on: bool) -> None:
        full_key = self._full_key(key)
        await run_blocking(self._executor, lambda: self._set_legal_hold(key, full_key, version_id, on))

    async def legal_hold(self, key: str, *, version_id: str | None) -> bool:
        full_key = self._full_key(key)
        return await run_blocking(self._executor, lambda: self._legal_hold(key, full_key, version_id))

    async def check(self) -> None:
        def head_bucket() -> None:
            with self._errors("HeadBucket", bucket_op=True):
                self._client().head_bucket(Bucket=self._bucket)

        await run_blocking(self._executor, head_bucket)

    async def close(self) -> None:
        def close_client() -> None:
            with self._lock:
                client, self._s3 = self._s3, None
            if client is not None:
                client.close()

        await run_blocking(self._executor, close_client)

    # --- setup -----------------------------------------------------------------------------

    async def ensure_bucket(self, *, versioning: bool = True) -> None:
        """Create the bucket if it does not exist and, with ``versioning``, enable versioning.
        For tests and the embedded/development setup; production buckets are provisioned by
        infrastructure code with Object Lock, lifecycle rules and access policies."""

        def ensure() -> None:
            client = self._client()
            try:
                client.head_bucket(Bucket=self._bucket)
            except ClientError as exc:
                if _code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                    self._raise(exc, "HeadBucket", bucket_op=True)
                region = client.meta.region_name
                with self._errors("CreateBucket", bucket_op=True):
                    try:
                        if region and region != "us-east-1":
                            client.create_bucket(
                                Bucket=self._bucket,
                                CreateBucketConfiguration={"LocationConstraint": cast(Any, region)},
                            )
                        else:
                            client.create_bucket(Bucket=self._bucket)
                    except ClientError as create_exc:
                        if _code(create_exc) != "BucketAlreadyOwnedByYou":
                            raise
            except BotoCoreError as exc:
                self._raise(exc, "HeadBucket", bucket_op=True)
            if versioning:
                with self._errors("PutBucketVersioning", bucket_op=True):
                    client.put_bucket_versioning(
                        Bucket=self._bucket, VersioningConfiguration={"Status": "Enabled"}
                    )

        await run_blocking(self._executor, ensure)

    # --- blocking parts --------------------------------------------------------------------

    def _full_key(self, key: str) -> str:
        return self._prefix + validate_key(key)

    def _client(self) -> S3Client:
        """The boto3 client, created on first use in a worker thread (creating it reads
        configuration files and service models). Clients are thread-safe; sessions are not,
        so a session of our own makes it."""
        with self._lock:
            if self._s3 is None:
                with self._errors("client setup", bucket_op=True):
                    self._s3 = boto3.session.Session().client(
                        "s3",
                        endpoint_url=self._storage.endpoint_url or None,
                        region_name=self._storage.region or None,
                        config=self._config,
                    )
            return self._s3

    def _put(self, key: str, full_key: str, source: Path) -> StoredObject:
        with base.open_source(source) as src:
            size_hint = os.fstat(src.fileno()).st_size
            if size_hint > self._threshold:
                return self._put_multipart(key, full_key, src, size_hint)
            data = src.read()  # at most the threshold: errors reading the source surface here
            with self._errors("PutObject", key=key):
                response = self._client().put_object(
                    Bucket=self._bucket,
                    Key=full_key,
                    Body=data,
                    ContentType="application/octet-stream",
                    **self._sse,
                )
        return StoredObject(key=key, version_id=response.get("VersionId"), size=len(data))

    def _put_multipart(self, key: str, full_key: str, src: BinaryIO, size_hint: int) -> StoredObject:
        """Upload in parts. The parts carry CRC32 checksums, which S3 verifies and combines;
        on any failure, including a failing source, the upload is aborted so that no object
        and no orphaned parts remain (if the abort itself cannot reach S3, the bucket's
        ``AbortIncompleteMultipartUpload`` lifecycle rule is the backstop)."""
        client = self._client()
        part_size = max(self._threshold, _MIN_PART_SIZE, -(-size_hint // _MAX_PARTS))
        with self._errors("CreateMultipartUpload", key=key):
            upload_id = client.create_multipart_upload(
                Bucket=self._bucket,
                Key=full_key,
                ContentType="application/octet-stream",
                ChecksumAlgorithm="CRC32",
                **self._sse,
            )["UploadId"]
        try:
            parts: list[CompletedPartTypeDef] = []
            size = 0
            while True:
                chunk = _read_up_to(src, part_size)
                if not chunk and parts:
                    break
                number = len(parts) + 1
                with self._errors("UploadPart", key=key):
                    part = client.upload_part(
                        Bucket=self._bucket,
                        Key=full_key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=chunk,
                        ChecksumAlgorithm="CRC32",
                    )
                parts.append(
                    {"PartNumber": number, "ETag": part["ETag"], "ChecksumCRC32": part["ChecksumCRC32"]}
                )
                size += len(chunk)
                if len(chunk) < part_size:
                    break
            with self._errors("CompleteMultipartUpload", key=key):
                response = client.complete_multipart_upload(
                    Bucket=self._bucket,
                    Key=full_key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
        except BaseException:
            try:
                client.abort_multipart_upload(Bucket=self._bucket, Key=full_key, UploadId=upload_id)
            except (BotoCoreError, ClientError) as abort_exc:
                log.warning(
                    "could not abort multipart upload in bucket %s: %s",
                    self._bucket,
                    type(abort_exc).__name__,
                )
            raise
        return StoredObject(key=key, version_id=response.get("VersionId"), size=size)

    def _open(self, key: str, full_key: str, version_id: str | None) -> BinaryIO:
        client = self._client()
        with self._errors("GetObject", key=key, version_id=version_id):
            if version_id is None:
                response = client.get_object(Bucket=self._bucket, Key=full_key)
            else:
                response = client.get_object(Bucket=self._bucket, Key=full_key, VersionId=version_id)
        # StreamingBody is an io.IOBase with read(), close() and the context-manager protocol.
        return cast(BinaryIO, response["Body"])

    def _delete(self, key: str, full_key: str, version_id: str | None) -> None:
        """Delete one version, permanently. With no version id the current version is deleted
        by its id, so that no delete marker is ever created (on an unversioned bucket the id is
        S3's literal "null", which deletes permanently too).

        The version is looked up in the listing first: S3's DeleteObject succeeds silently for
        a missing key or version, and a HEAD answers a bare 404 for a missing bucket as well as
        for a missing key, which must not be mistaken for "already deleted"."""
        entries = self._list(full_key)
        if version_id is None:
            current = next((e for e in entries if e.is_latest), None)
            if current is None or current.is_delete_marker:
                raise ObjectNotFound(f"no object {key!r} in bucket {self._bucket!r}")
            version_id = current.version_id
        elif not any(e.version_id == version_id for e in entries):
            raise ObjectNotFound(f"no object {key!r} version {version_id!r} in bucket {self._bucket!r}")
        try:
            self._client().delete_object(Bucket=self._bucket, Key=full_key, VersionId=version_id)
        except ClientError as exc:
            if _code(exc) in _ACCESS_DENIED and self._is_locked(full_key, version_id, _message(exc)):
                raise ObjectLocked(
                    f"S3 Object Lock protects {key!r} version {version_id!r} in bucket {self._bucket!r}",
                    key=key,
                    version_ids=(version_id,),
                ) from None
            self._raise(exc, "DeleteObject", key=key)
        except BotoCoreError as exc:
            self._raise(exc, "DeleteObject", key=key)

    def _delete_all(self, key: str, full_key: str) -> int:
        client = self._client()
        total = 0
        for _ in range(_ERASE_ROUNDS):
            ids = [e.version_id for e in self._list(full_key)]
            if not ids:
                return total
            locked: list[str] = []
            for start in range(0, len(ids), _DELETE_BATCH):
                batch: list[ObjectIdentifierTypeDef] = [
                    {"Key": full_key, "VersionId": v} for v in ids[start : start + _DELETE_BATCH]
                ]
                with self._errors("DeleteObjects", key=key):
                    response = client.delete_objects(
                        Bucket=self._bucket, Delete={"Objects": batch, "Quiet": True}
                    )
                errors = response.get("Errors", [])
                other = [e for e in errors if e.get("Code", "") not in _ACCESS_DENIED]
                if other:
                    codes = sorted({e.get("Code", "?") for e in other})
                    raise StoreError(
                        f"S3 refused to delete {len(other)} version(s) of {key!r} "
                        f"in bucket {self._bucket!r}: {', '.join(codes)}"
                    )
                if not errors:
                    total += len(batch)
                    continue
                # Only denials are left: Object Lock, or a missing permission. S3 names the
                # version of each error; moto does not, so the versions this batch left behind
                # are found by listing again.
                asked = {entry["VersionId"] for entry in batch}
                left = [e.version_id for e in self._list(full_key) if e.version_id in asked]
                said = {e["VersionId"]: e.get("Message", "") for e in errors if "VersionId" in e}
                messages = {e.get("Message", "") for e in errors}
                shared = messages.pop() if len(messages) == 1 else ""
                for version_id in left:
                    if not self._is_locked(full_key, version_id, said.get(version_id, shared)):
                        raise StoreUnavailable(
                            f"S3 bucket {self._bucket!r} unavailable during DeleteObjects: AccessDenied"
                        )
                    locked.append(version_id)
                total += len(batch) - len(left)
            if locked:
                # The unlocked versions of this round are gone; the locked ones stay until
                # their hold is released, so listing again would only find them again.
                raise ObjectLocked(
                    f"S3 Object Lock protects {len(locked)} version(s) of {key!r} in bucket "
                    f"{self._bucket!r}; {total} other version(s) and delete marker(s) were deleted",
                    key=key,
                    version_ids=tuple(locked),
                )
        raise StoreError(f"versions of {key!r} in bucket {self._bucket!r} kept reappearing while erasing")

    def _scan(self, full_keys: list[str]) -> tuple[dict[str, list[_Entry]], list[str]]:
        """Versions of the sorted ``full_keys`` found by prefix listings, and the keys left to
        list one by one. Keys are grouped by their first segment (the tenant, for recordings)."""
        groups: dict[str, list[str]] = {}
        for full_key in full_keys:
            groups.setdefault(full_key[len(self._prefix) :].split("/", 1)[0], []).append(full_key)
        found: dict[str, list[_Entry]] = {}
        rest: list[str] = []
        for group in groups.values():
            if len(group) < _SCAN_MIN_KEYS:
                rest.extend(group)
                continue
            passed = self._scan_prefix(group, found)
            rest.extend(group[passed:])
        return found, rest

    def _scan_prefix(self, group: list[str], found: dict[str, list[_Entry]]) -> int:
        """List the common prefix of the sorted ``group`` while that pays (see
        ``_SCAN_MIN_KEYS_PER_PAGE``); put the versions of the keys it got past into ``found`` and
        return how many keys (from the start of ``group``) that is.

        The listing is in key order, so once a page ends at key K (its NextKeyMarker) every key
        before K is complete; K's own versions may go on in the next page."""
        wanted = set(group)
        seen: dict[str, list[_Entry]] = {}
        passed = 0
        paginator = self._client().get_paginator("list_object_versions")
        with self._errors("ListObjectVersions"):
            pages = paginator.paginate(
                Bucket=self._bucket,
                Prefix=_common_prefix(group[0], group[-1]),
                PaginationConfig={"PageSize": _LIST_PAGE_SIZE},
            )
            for page in pages:
                for name, entry in _page_entries(page):
                    if name in wanted:
                        seen.setdefault(name, []).append(entry)
                next_key = page.get("NextKeyMarker")
                if not page.get("IsTruncated"):
                    passed = len(group)
                    break
                if not next_key:
                    break  # not S3's way; leave the rest to single-key listings
                before = passed
                while passed < len(group) and group[passed] < next_key:
                    passed += 1
                if passed == len(group) or passed - before < _SCAN_MIN_KEYS_PER_PAGE:
                    break
        for full_key in group[:passed]:
            found[full_key] = seen.get(full_key, [])
        return passed

    def _delete_found(self, wanted: dict[str, str], found: dict[str, list[_Entry]]) -> dict[str, int]:
        """Delete the listed versions of ``wanted`` (full key -> key); versions deleted per key."""
        client = self._client()
        targets = [(full_key, e.version_id) for full_key, entries in found.items() for e in entries]
        failures: dict[tuple[str, str], tuple[str, str]] = {}  # (full key, version) -> (code, message)
        for start in range(0, len(targets), _DELETE_BATCH):
            batch = targets[start : start + _DELETE_BATCH]
            failed = self._delete_batch(client, batch)
            retry = [target for target, (code, _) in failed.items() if code not in _ACCESS_DENIED]
            if retry:
                again = self._delete_batch(client, retry)
                failed = {t: e for t, e in failed.items() if t not in retry or t in again}
                failed.update(again)
            failures.update(failed)
        if failures:
            # A version named in an error may be gone after all (moto names only the key in its
            # errors, so every version of that key was suspected): only what is left counts.
            for full_key in {full_key for full_key, _ in failures}:
                left = {e.version_id for e in self._list(full_key)}
                for target in [t for t in failures if t[0] == full_key and t[1] not in left]:
                    del failures[target]
        counts = {key: len(found.get(full_key, [])) for full_key, key in wanted.items()}
        for full_key, _ in failures:
            counts[wanted[full_key]] -= 1
        other = {t: e for t, e in failures.items() if e[0] not in _ACCESS_DENIED}
        if other:
            codes = sorted({code or "?" for code, _ in other.values()})
            raise StoreError(
                f"S3 refused to delete {len(other)} version(s) of {len({t[0] for t in other})} key(s) "
                f"in bucket {self._bucket!r}: {', '.join(codes)}"
            )
        locked: dict[str, tuple[str, ...]] = {}
        for (full_key, version_id), (_, message) in sorted(failures.items()):
            if not self._is_locked(full_key, version_id, message):
                raise StoreUnavailable(
                    f"S3 bucket {self._bucket!r} unavailable during DeleteObjects: AccessDenied"
                )
            key = wanted[full_key]
            locked[key] = (*locked.get(key, ()), version_id)
        if locked:
            first = next(iter(locked))
            raise ObjectLocked(
                f"S3 Object Lock protects {len(failures)} version(s) of {len(locked)} key(s) in bucket "
                f"{self._bucket!r}; {sum(counts.values())} other version(s) and delete marker(s) "
                "were deleted",
                key=first,
                version_ids=locked[first],
                locked=locked,
                deleted=counts,
            )
        return counts

    def _delete_batch(
        self, client: S3Client, batch: list[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[str, str]]:
        """One quiet DeleteObjects of at most 1,000 versions; the ones it refused, with the
        error's code and message. An error that names no version (moto) is charged to every
        version of its key in the batch."""
        objects: list[ObjectIdentifierTypeDef] = [{"Key": k, "VersionId": v} for k, v in batch]
        with self._errors("DeleteObjects"):
            response = client.delete_objects(Bucket=self._bucket, Delete={"Objects": objects, "Quiet": True})
        failed: dict[tuple[str, str], tuple[str, str]] = {}
        for error in response.get("Errors", []):
            name, version = error.get("Key", ""), error.get("VersionId")
            detail = (error.get("Code", ""), error.get("Message", ""))
            if version:
                failed[(name, version)] = detail
            else:
                failed.update({(k, v): detail for k, v in batch if k == name})
        return failed

    def _supports_legal_hold(self) -> bool:
        try:
            response = self._client().get_object_lock_configuration(Bucket=self._bucket)
        except ClientError as exc:
            if _code(exc) in _NO_OBJECT_LOCK:
                return False
            self._raise(exc, "GetObjectLockConfiguration", bucket_op=True)
        except BotoCoreError as exc:
            self._raise(exc, "GetObjectLockConfiguration", bucket_op=True)
        enabled = response.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
        if enabled:
            self._object_lock = True
        return enabled

    def _versions_for_hold(self, key: str, full_key: str, version_id: str | None) -> list[str]:
        """The version ids a legal-hold call applies to. Checked against the listing first:
        delete markers cannot carry a hold, and moto answers PutObjectLegalHold on a missing
        key or version with a 500 (which the client would retry) instead of S3's 404."""
        ids = [e.version_id for e in self._list(full_key) if not e.is_delete_marker]
        if version_id is None:
            if not ids:
                raise ObjectNotFound(f"no object {key!r} in bucket {self._bucket!r}")
            return ids
        if version_id not in ids:
            raise ObjectNotFound(f"no object {key!r} version {version_id!r} in bucket {self._bucket!r}")
        return [version_id]

    def _set_legal_hold(self, key: str, full_key: str, version_id: str | None, on: bool) -> None:
        client = self._client()
        for version in self._versions_for_hold(key, full_key, version_id):
            try:
                client.put_object_legal_hold(
                    Bucket=self._bucket,
                    Key=full_key,
                    VersionId=version,
                    LegalHold={"Status": "ON" if on else "OFF"},
                )
            except ClientError as exc:
                if _code(exc) == "InvalidRequest":
                    # S3's answer when the bucket has no Object Lock configuration.
                    raise StoreError(
                        f"S3 PutObjectLegalHold on bucket {self._bucket!r} failed: InvalidRequest "
                        "(legal holds need Object Lock enabled on the bucket)"
                    ) from None
                self._raise(exc, "PutObjectLegalHold", key=key, version_id=version)
            except BotoCoreError as exc:
                self._raise(exc, "PutObjectLegalHold", key=key, version_id=version)

    def _legal_hold(self, key: str, full_key: str, version_id: str | None) -> bool:
        client = self._client()
        for version in self._versions_for_hold(key, full_key, version_id):
            try:
                response = client.get_object_legal_hold(Bucket=self._bucket, Key=full_key, VersionId=version)
            except ClientError as exc:
                # No hold was ever placed on this version, or (InvalidRequest) the bucket has no
                # Object Lock, where nothing can be held.
                if _code(exc) in _NO_LEGAL_HOLD or _code(exc) == "InvalidRequest":
                    continue
                self._raise(exc, "GetObjectLegalHold", key=key, version_id=version)
            except BotoCoreError as exc:
                self._raise(exc, "GetObjectLegalHold", key=key, version_id=version)
            if response.get("LegalHold", {}).get("Status") == "ON":
                return True
        return False

    def _is_locked(self, full_key: str, version_id: str, message: str) -> bool:
        """Whether S3's AccessDenied for deleting ``version_id`` is Object Lock protecting it,
        rather than credentials lacking a permission: S3 answers both with the same code.

        First the message: S3 and moto say "... protected by object lock" in DeleteObjects
        errors. (The message is only matched, never logged or shown.) When it says nothing
        (moto's DeleteObject answers a bare "Access Denied"), a HeadObject of the version
        tells: a legal hold ON, or a retention date still in the future. HeadObject reports
        these only to credentials with s3:GetObjectLegalHold and s3:GetObjectRetention; without
        them, or when the HEAD fails, the refusal stays a permissions problem
        (StoreUnavailable). Either way nothing was deleted."""
        if "object lock" in message.lower():
            return True
        try:
            head = self._client().head_object(Bucket=self._bucket, Key=full_key, VersionId=version_id)
        except (ClientError, BotoCoreError):
            return False
        if head.get("ObjectLockLegalHoldStatus") == "ON":
            return True
        until = head.get("ObjectLockRetainUntilDate")
        return until is not None and until > datetime.now(UTC)

    def _list(self, full_key: str) -> list[_Entry]:
        """Every version of exactly ``full_key``, newest first, then its delete markers.

        ``Prefix`` also matches longer keys; the listing is in key order and ``full_key`` sorts
        before every longer key with that prefix, so the first foreign key ends the search."""
        paginator = self._client().get_paginator("list_object_versions")
        entries: list[_Entry] = []
        with self._errors("ListObjectVersions"):
            pages = paginator.paginate(
                Bucket=self._bucket, Prefix=full_key, PaginationConfig={"PageSize": _LIST_PAGE_SIZE}
            )
            for page in pages:
                done = False
                for name, entry in _page_entries(page):
                    if name != full_key:
                        done = True
                        continue
                    entries.append(entry)
                if done:
                    break
        return entries

    # --- error translation -----------------------------------------------------------------

    @contextmanager
    def _errors(
        self,
        operation: str,
        *,
        key: str | None = None,
        version_id: str | None = None,
        bucket_op: bool = False,
    ) -> Iterator[None]:
        try:
            yield
        except (ClientError, BotoCoreError) as exc:
            self._raise(exc, operation, key=key, version_id=version_id, bucket_op=bucket_op)

    def _raise(
        self,
        exc: ClientError | BotoCoreError,
        operation: str,
        *,
        key: str | None = None,
        version_id: str | None = None,
        bucket_op: bool = False,
    ) -> NoReturn:
        """Translate a botocore error. Messages name the operation, the bucket and the error
        code, never credentials or the service's free-text message, and the botocore exception
        is not chained (``from None``) so that nothing more leaks into logs."""
        if isinstance(exc, ParamValidationError):
            raise exc  # a programming error, not a store condition
        if isinstance(exc, BotoCoreError):
            # EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, NoCredentialsError, ...
            raise StoreUnavailable(
                f"S3 bucket {self._bucket!r} unavailable during {operation}: {type(exc).__name__}"
            ) from None
        code = _code(exc)
        bucket = repr(self._bucket)
        if bucket_op and code in _NOT_FOUND:
            raise StoreUnavailable(f"S3 bucket {bucket} does not exist ({operation}: {code})") from None
        if key is not None and (code in _NOT_FOUND or (version_id is not None and code in _DELETE_MARKER)):
            what = f"{key!r}" if version_id is None else f"{key!r} version {version_id!r}"
            raise ObjectNotFound(f"no object {what} in bucket {self._bucket!r}") from None
        if code in _UNAVAILABLE or code.startswith("KMS."):
            raise StoreUnavailable(f"S3 bucket {bucket} unavailable during {operation}: {code}") from None
        raise StoreError(f"S3 {operation} on bucket {self._bucket!r} failed: {code}") from None


def _message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message", ""))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "")) or str(
        exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
    )


def _common_prefix(first: str, last: str) -> str:
    """The characters ``first`` and ``last`` start with (of sorted keys: what all of them do)."""
    n = 0
    for a, b in zip(first, last, strict=False):
        if a != b:
            break
        n += 1
    return first[:n]


def _read_up_to(src: BinaryIO, size: int) -> bytes:
    """Read ``size`` bytes, or fewer only at the end of the file."""
    chunks: list[bytes] = []
    remaining = size
    while remaining > 0:
        chunk = src.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
