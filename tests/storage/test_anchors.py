"""The audit chain's anchor stores: an append-only file, and S3 objects under Object Lock in
compliance mode (moto over HTTP, a bucket created with Object Lock as in test_object_lock.py)."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from botocore.exceptions import ClientError

from callrec.anchoring import Anchor, AnchorError
from callrec.anchoring.filesystem import FileAnchorStore
from callrec.anchoring.s3 import S3AnchorStore
from callrec.config import StorageConfig
from callrec.crypto.auditkeys import AuditKeys
from callrec.storage.s3 import S3ObjectStore

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

KEYS = AuditKeys({1: b"k" * 32})
SEVEN_YEARS = timedelta(days=7 * 366)


def anchor(seq: int, *, at: datetime | None = None) -> Anchor:
    return Anchor.make(KEYS, at=at or datetime.now(UTC), seq=seq, head_mac=bytes([seq % 256]) * 32)


@pytest.fixture
async def locked_store(s3_config: StorageConfig, s3_client: S3Client) -> AsyncIterator[S3ObjectStore]:
    """A store on a bucket created with Object Lock (which also turns versioning on)."""
    s3_client.create_bucket(Bucket=s3_config.bucket, ObjectLockEnabledForBucket=True)
    store = S3ObjectStore(s3_config)
    try:
        yield store
    finally:
        await store.close()


# --- the file ---------------------------------------------------------------------------------------


async def test_the_anchor_file_gets_one_fsynced_json_line_per_anchor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit" / "anchors.jsonl"
    store = FileAnchorStore(path)
    opened: list[tuple[int, int]] = []  # (descriptor, flags) of each open of the anchor file
    synced: list[int] = []  # inodes fsynced
    real_open, real_fsync = os.open, os.fsync

    def spy_open(file: object, flags: int, *args: object) -> int:
        fd = real_open(file, flags, *args)  # type: ignore[arg-type]
        if str(file) == str(path):
            opened.append((fd, flags))
        return fd

    def spy_fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "fsync", spy_fsync)
    first, second = anchor(5), anchor(9)
    assert await store.put(first) == str(path)
    await store.put(second)
    assert len(opened) == 2 and all(flags & os.O_APPEND for _, flags in opened)
    assert synced.count(path.stat().st_ino) == 2  # each anchor fsynced (and the new file's directory)
    assert path.parent.stat().st_ino in synced
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = path.read_text().splitlines()
    assert [Anchor.from_json(line) for line in lines] == [first, second]
    assert (await store.read_all()).anchors == [first, second]


async def test_a_torn_or_foreign_line_is_reported_and_the_next_anchor_starts_a_new_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "anchors.jsonl"
    store = FileAnchorStore(path)
    await store.put(anchor(1))
    path.write_bytes(path.read_bytes() + b'{"v":1,"at":"2026-')  # a crash in the middle of a write
    later = anchor(2)
    await store.put(later)
    read = await store.read_all()
    assert read.anchors == [anchor_at(read, 1), later]
    assert read.problems == [f"anchor file {path}: 1 line(s) are not anchors (line 2)"]


def anchor_at(read: object, seq: int) -> Anchor:
    return next(a for a in read.anchors if a.seq == seq)  # type: ignore[attr-defined]


async def test_no_anchor_file_yet_is_no_anchors_and_an_unwritable_one_is_an_anchor_error(
    tmp_path: Path,
) -> None:
    assert (await FileAnchorStore(tmp_path / "none.jsonl").read_all()).anchors == []
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(AnchorError, match="anchor file"):
        await FileAnchorStore(tmp_path / "dir.jsonl").put(anchor(1))
    with pytest.raises(AnchorError, match="anchor file"):
        await FileAnchorStore(tmp_path / "dir.jsonl").read_all()


# --- S3 -------------------------------------------------------------------------------------------


async def test_an_s3_anchor_is_locked_in_compliance_mode_outside_the_recordings_prefix(
    locked_store: S3ObjectStore, s3_client: S3Client
) -> None:
    store = S3AnchorStore(locked_store, prefix="audit-anchors/", retention=SEVEN_YEARS)
    written = anchor(42)
    location = await store.put(written)
    key = "audit-anchors/" + written.name
    assert location == f"s3://{locked_store.bucket}/{key}"
    listed = s3_client.list_objects_v2(Bucket=locked_store.bucket)["Contents"]
    assert [o["Key"] for o in listed] == [key]
    assert not key.startswith(locked_store.prefix)  # "recordings/": its lifecycle rules do not reach it

    # HeadObject, not GetObjectRetention: moto answers the latter with a 500.
    head = s3_client.head_object(Bucket=locked_store.bucket, Key=key)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert abs(head["ObjectLockRetainUntilDate"] - (written.at + SEVEN_YEARS)) < timedelta(seconds=2)
    body = s3_client.get_object(Bucket=locked_store.bucket, Key=key)["Body"].read()
    assert Anchor.from_json(body) == written

    version = s3_client.list_object_versions(Bucket=locked_store.bucket)["Versions"][0]["VersionId"]
    with pytest.raises(ClientError) as refused:  # not even the bucket's owner may delete it
        s3_client.delete_object(Bucket=locked_store.bucket, Key=key, VersionId=version)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    # (S3 also refuses to shorten a compliance-mode retention; moto does not enforce that.)

    # A delete marker on top (allowed under a lock) hides nothing from verify, which lists versions.
    s3_client.delete_object(Bucket=locked_store.bucket, Key=key)
    s3_client.put_object(Bucket=locked_store.bucket, Key="audit-anchors/not-an-anchor.txt", Body=b"x")
    read = await store.read_all()
    assert read.anchors == [written]
    assert read.problems == [
        f"1 object version(s) under s3://{locked_store.bucket}/audit-anchors/ are not anchors "
        "(e.g. 'not-an-anchor.txt')"
    ]


async def test_a_bucket_without_object_lock_gets_no_anchor(
    s3_store: S3ObjectStore, s3_client: S3Client
) -> None:
    store = S3AnchorStore(s3_store, prefix="audit-anchors/", retention=SEVEN_YEARS)
    with pytest.raises(AnchorError, match="no Object Lock"):
        await store.put(anchor(1))
    assert "Contents" not in s3_client.list_objects_v2(Bucket=s3_store.bucket)


async def test_an_unreachable_bucket_is_an_anchor_error(s3_config: StorageConfig) -> None:
    from dataclasses import replace

    gone = S3ObjectStore(replace(s3_config, bucket="callrec-no-such-bucket"))
    try:
        store = S3AnchorStore(gone, prefix="audit-anchors/", retention=SEVEN_YEARS)
        with pytest.raises(AnchorError):
            await store.put(anchor(1))
        with pytest.raises(AnchorError, match="NoSuchBucket"):
            await store.read_all()
    finally:
        await gone.close()
