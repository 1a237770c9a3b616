"""Anchors as S3 objects under Object Lock in compliance mode.

Each anchor is a new object ``<anchor_prefix><name>`` (:attr:`Anchor.name`) put with
``ObjectLockMode=COMPLIANCE`` and a retain-until date ``anchor_retention`` after the anchor: in
compliance mode nobody, the account's root user included, can delete that version or shorten its
retention until then (https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-lock.html#object-lock-retention-modes).
The bucket needs Object Lock enabled (``callrec storage check --apply``); without it an anchor is
refused rather than written deletable.

``anchor_prefix`` lies outside ``storage.prefix`` (the configuration refuses an overlap), so the
recordings' lifecycle rules never apply to anchors; ``callrec storage check`` reports any rule that
would. Reading lists object *versions*: a delete marker, which anyone allowed to delete can put on
top of a locked object, hides nothing from ``callrec audit verify``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from callrec.anchoring import AnchorError, AnchorsRead
from callrec.anchoring.record import Anchor
from callrec.storage.base import StoreError

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

    from callrec.storage.s3 import S3ObjectStore

_LIST_PAGE_SIZE = 1000


class S3AnchorStore:
    def __init__(self, store: S3ObjectStore, *, prefix: str, retention: timedelta) -> None:
        self._store = store
        self._prefix = prefix
        self._retention = retention

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def description(self) -> str:
        return f"s3://{self._store.bucket}/{self._prefix}"

    async def put(self, anchor: Anchor) -> str:
        bucket = self._store.bucket
        try:
            locked = await self._store.supports_legal_hold()  # i.e. Object Lock is enabled
        except StoreError as exc:
            raise AnchorError(f"anchor not written: {exc}") from None
        if not locked:
            raise AnchorError(
                f"S3 bucket {bucket!r} has no Object Lock, so an anchor there could be deleted: "
                "enable it (`callrec storage check --apply`)"
            )
        key = self._prefix + anchor.name
        extra: dict[str, Any] = {}
        storage = self._store.storage
        if storage.sse:
            extra["ServerSideEncryption"] = storage.sse
            if storage.sse == "aws:kms" and storage.sse_kms_key_id:
                extra["SSEKMSKeyId"] = storage.sse_kms_key_id

        def put(client: S3Client) -> None:
            client.put_object(
                Bucket=bucket,
                Key=key,
                Body=(anchor.to_json() + "\n").encode(),
                ContentType="application/json",
                ObjectLockMode="COMPLIANCE",
                ObjectLockRetainUntilDate=anchor.at + self._retention,
                # Object Lock puts need an integrity checksum (Content-MD5 or a flexible checksum).
                ChecksumAlgorithm="SHA256",
                **extra,
            )

        try:
            await self._store.run_with_client(put)
        except (ClientError, BotoCoreError) as exc:
            raise AnchorError(
                f"S3 PutObject of an anchor in bucket {bucket!r} failed: {_code(exc)}"
            ) from None
        return f"s3://{bucket}/{key}"

    async def read_all(self) -> AnchorsRead:
        bucket = self._store.bucket
        prefix = self._prefix

        def read(client: S3Client) -> AnchorsRead:
            anchors: dict[str, Anchor] = {}
            foreign: list[str] = []
            paginator = client.get_paginator("list_object_versions")
            pages = paginator.paginate(
                Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": _LIST_PAGE_SIZE}
            )
            for page in pages:
                # Versions only: delete markers hide nothing; a second version of one name is the
                # same anchor (the name is the record).
                for version in page.get("Versions", []):
                    name = version.get("Key", "")[len(prefix) :]
                    if name in anchors:
                        continue
                    try:
                        anchors[name] = Anchor.from_name(name)
                    except ValueError:
                        foreign.append(name)
            problems = []
            if foreign:
                example = foreign[0][:80]
                problems.append(
                    f"{len(foreign)} object version(s) under s3://{bucket}/{prefix} are not anchors "
                    f"(e.g. {example!r})"
                )
            return AnchorsRead(sorted(anchors.values(), key=lambda a: (a.seq, a.at)), problems)

        try:
            return await self._store.run_with_client(read)
        except (ClientError, BotoCoreError) as exc:
            raise AnchorError(
                f"S3 ListObjectVersions of the anchors in bucket {bucket!r} failed: {_code(exc)}"
            ) from None


def _code(exc: ClientError | BotoCoreError) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "")) or "ClientError"
    return type(exc).__name__
