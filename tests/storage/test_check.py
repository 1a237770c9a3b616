"""``callrec storage check [--apply]`` against buckets in moto, over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest

from callrec.config import StorageConfig
from callrec.storage import StoreUnavailable
from callrec.storage.check import Finding, apply_fixes, check_bucket
from callrec.storage.s3 import S3ObjectStore

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

RETENTION = timedelta(days=90)
MARGIN = timedelta(days=7)
NAMES = [
    "versioning",
    "object-lock",
    "lifecycle-expire-current",
    "lifecycle-expire-noncurrent",
    "lifecycle-delete-markers",
    "lifecycle-abort-multipart",
    "lifecycle-other-rules",
    "default-encryption",
    "public-access-block",
]
LIFECYCLE_BACKSTOP = NAMES[2:6]


@pytest.fixture
async def bare_store(s3_config: StorageConfig) -> AsyncIterator[S3ObjectStore]:
    """A bucket as CreateBucket leaves it: no versioning, no Object Lock, nothing else."""
    store = S3ObjectStore(s3_config)
    await store.ensure_bucket(versioning=False)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def locked_store(s3_config: StorageConfig, s3_client: S3Client) -> AsyncIterator[S3ObjectStore]:
    s3_client.create_bucket(Bucket=s3_config.bucket, ObjectLockEnabledForBucket=True)
    store = S3ObjectStore(s3_config)
    try:
        yield store
    finally:
        await store.close()


def by_name(findings: list[Finding]) -> dict[str, Finding]:
    assert [f.name for f in findings] == NAMES
    return {f.name: f for f in findings}


def not_ok(findings: list[Finding]) -> dict[str, Finding]:
    return {f.name: f for f in findings if f.status != "ok"}


def rules(client: S3Client, bucket: str) -> dict[str, Any]:
    return {r["ID"]: r for r in client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}


async def check(store: S3ObjectStore) -> list[Finding]:
    return await check_bucket(store, retention=RETENTION, margin=MARGIN)


async def fix(store: S3ObjectStore, findings: list[Finding]) -> list[Finding]:
    return await apply_fixes(store, findings, retention=RETENTION, margin=MARGIN)


@contextmanager
def denied(store_client: Any, operation: str) -> Iterator[None]:
    def deny(**kwargs: Any) -> tuple[Any, dict[str, Any]]:
        return SimpleNamespace(status_code=403, headers={}), {
            "Error": {"Code": "AccessDenied", "Message": "Access Denied"},
            "ResponseMetadata": {"HTTPStatusCode": 403},
        }

    event = f"before-call.s3.{operation}"
    store_client.meta.events.register(event, deny)
    try:
        yield
    finally:
        store_client.meta.events.unregister(event, deny)


async def test_a_bare_bucket_reports_each_missing_item(bare_store: S3ObjectStore) -> None:
    found = by_name(await check(bare_store))
    assert found["lifecycle-other-rules"].status == "ok"
    for name in NAMES:
        if name != "lifecycle-other-rules":
            assert found[name].status == "missing", name
    for name in (
        "versioning",
        "object-lock",
        "lifecycle-delete-markers",
        "lifecycle-abort-multipart",
        "default-encryption",
        "public-access-block",
    ):
        assert found[name].fixable, name
    # Without Object Lock, S3 lifecycle would destroy held recordings: not set.
    for name in ("lifecycle-expire-current", "lifecycle-expire-noncurrent"):
        assert not found[name].fixable
        assert "Object Lock" in found[name].detail
    assert "irreversible" in found["object-lock"].detail


async def test_apply_on_a_bucket_with_object_lock_makes_everything_ok(
    locked_store: S3ObjectStore, s3_client: S3Client
) -> None:
    before = by_name(await check(locked_store))
    assert before["versioning"].status == "ok"
    assert before["object-lock"].status == "ok"
    assert all(before[name].status == "missing" and before[name].fixable for name in LIFECYCLE_BACKSTOP)

    after = await fix(locked_store, list(before.values()))
    assert not_ok(after) == {}
    assert after == await check(locked_store)

    lifecycle = rules(s3_client, locked_store.bucket)
    assert set(lifecycle) == {
        "callrec-backstop-expire-current",
        "callrec-backstop-expire-noncurrent",
        "callrec-backstop-delete-markers",
        "callrec-backstop-abort-multipart",
    }
    assert all(rule["Filter"] == {"Prefix": "recordings/"} for rule in lifecycle.values())
    assert lifecycle["callrec-backstop-expire-current"]["Expiration"] == {"Days": 97}
    assert (
        lifecycle["callrec-backstop-expire-noncurrent"]["NoncurrentVersionExpiration"]["NoncurrentDays"] == 1
    )
    assert lifecycle["callrec-backstop-delete-markers"]["Expiration"] == {"ExpiredObjectDeleteMarker": True}
    assert lifecycle["callrec-backstop-abort-multipart"]["AbortIncompleteMultipartUpload"] == {
        "DaysAfterInitiation": 1
    }
    encryption = s3_client.get_bucket_encryption(Bucket=locked_store.bucket)
    assert encryption["ServerSideEncryptionConfiguration"]["Rules"][0][
        "ApplyServerSideEncryptionByDefault"
    ] == {"SSEAlgorithm": "AES256"}
    block = s3_client.get_public_access_block(Bucket=locked_store.bucket)["PublicAccessBlockConfiguration"]
    assert all(block.values()) and len(block) == 4

    # Applying again changes nothing.
    assert await fix(locked_store, after) == after


async def test_apply_cannot_enable_object_lock_on_a_bucket_in_use(
    bare_store: S3ObjectStore, s3_client: S3Client, tmp_path: Path
) -> None:
    # moto, like some S3-compatible servers, refuses Object Lock on a bucket that holds objects
    # (AWS allows it on any versioned bucket). The refusal is reported, not raised.
    payload = tmp_path / "ciphertext.bin"
    payload.write_bytes(b"data")
    await bare_store.put_file("recordings/acme/1f0e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b", payload)

    after = not_ok(await fix(bare_store, await check(bare_store)))
    assert set(after) == {"object-lock", "lifecycle-expire-current", "lifecycle-expire-noncurrent"}
    assert after["object-lock"].status == "missing"
    assert not after["object-lock"].fixable
    assert "PutObjectLockConfiguration" in after["object-lock"].detail
    assert not any(f.fixable for f in after.values())
    assert s3_client.get_bucket_versioning(Bucket=bare_store.bucket)["Status"] == "Enabled"
    assert "callrec-backstop-expire-current" not in rules(s3_client, bare_store.bucket)


async def test_apply_enables_object_lock_then_sets_the_expiry_rules(
    bare_store: S3ObjectStore, s3_client: S3Client
) -> None:
    # An empty bucket: moto lets Object Lock be enabled once versioning is on, as AWS does for
    # any versioned bucket. The expiry rules, not fixable before, follow in the same run.
    after = await fix(bare_store, await check(bare_store))
    assert not_ok(after) == {}
    lock = s3_client.get_object_lock_configuration(Bucket=bare_store.bucket)["ObjectLockConfiguration"]
    assert lock == {"ObjectLockEnabled": "Enabled"}  # no default retention
    assert await bare_store.supports_legal_hold()


async def test_apply_leaves_alone_what_is_not_asked(bare_store: S3ObjectStore) -> None:
    findings = [f for f in await check(bare_store) if f.name != "object-lock"]
    after = not_ok(await fix(bare_store, findings))
    assert set(after) == {"object-lock", "lifecycle-expire-current", "lifecycle-expire-noncurrent"}
    assert after["object-lock"].fixable  # not refused: never tried


async def test_apply_keeps_unrelated_lifecycle_rules_and_replaces_its_own(
    locked_store: S3ObjectStore, s3_client: S3Client
) -> None:
    logs_rule = {
        "ID": "expire-access-logs",
        "Filter": {"Prefix": "logs/"},
        "Status": "Enabled",
        "Expiration": {"Days": 30},
    }
    s3_client.put_bucket_lifecycle_configuration(
        Bucket=locked_store.bucket,
        LifecycleConfiguration={
            "Rules": [
                logs_rule,  # type: ignore[list-item]
                {
                    "ID": "callrec-backstop-expire-current",
                    "Filter": {"Prefix": "recordings/"},
                    "Status": "Enabled",
                    "Expiration": {"Days": 30},  # shorter than the retention: wrong
                },
            ]
        },
    )
    found = by_name(await check(locked_store))
    assert found["lifecycle-expire-current"].status == "wrong"
    assert found["lifecycle-expire-current"].fixable
    assert found["lifecycle-other-rules"].status == "ok"  # logs/ does not touch recordings/

    assert not_ok(await fix(locked_store, list(found.values()))) == {}
    lifecycle = rules(s3_client, locked_store.bucket)
    assert lifecycle["expire-access-logs"] == logs_rule
    assert lifecycle["callrec-backstop-expire-current"]["Expiration"] == {"Days": 97}
    assert len(lifecycle) == 5


async def test_rules_under_other_ids_count(locked_store: S3ObjectStore, s3_client: S3Client) -> None:
    s3_client.put_bucket_lifecycle_configuration(
        Bucket=locked_store.bucket,
        LifecycleConfiguration={
            "Rules": [
                {
                    "ID": "infra-hygiene",
                    "Filter": {"Prefix": ""},  # the whole bucket
                    "Status": "Enabled",
                    "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
                    "NoncurrentVersionExpiration": {"NoncurrentDays": 3},
                }
            ]
        },
    )
    found = by_name(await check(locked_store))
    assert found["lifecycle-abort-multipart"].status == "ok"
    assert "infra-hygiene" in found["lifecycle-abort-multipart"].detail
    assert found["lifecycle-expire-noncurrent"].status == "ok"
    assert found["lifecycle-delete-markers"].status == "missing"

    await fix(locked_store, list(found.values()))
    assert set(rules(s3_client, locked_store.bucket)) == {
        "infra-hygiene",
        "callrec-backstop-expire-current",
        "callrec-backstop-delete-markers",
    }


async def test_a_rule_expiring_recordings_early_is_reported(
    locked_store: S3ObjectStore, s3_client: S3Client
) -> None:
    s3_client.put_bucket_lifecycle_configuration(
        Bucket=locked_store.bucket,
        LifecycleConfiguration={
            "Rules": [
                {
                    "ID": "tidy-acme",
                    "Filter": {"Prefix": "recordings/acme/"},
                    "Status": "Enabled",
                    "Expiration": {"Days": 30},
                },
                {
                    # Only objects tagged so; callrec's objects carry no tags.
                    "ID": "tagged-scratch",
                    "Filter": {"Tag": {"Key": "scratch", "Value": "yes"}},
                    "Status": "Enabled",
                    "Expiration": {"Days": 1},
                },
            ]
        },
    )
    found = by_name(await check(locked_store))
    other = found["lifecycle-other-rules"]
    assert other.status == "wrong" and not other.fixable
    assert "tidy-acme" in other.detail and "tagged-scratch" not in other.detail


async def test_without_object_lock_an_expiring_rule_is_wrong(
    bare_store: S3ObjectStore, s3_client: S3Client
) -> None:
    s3_client.put_bucket_versioning(Bucket=bare_store.bucket, VersioningConfiguration={"Status": "Enabled"})
    s3_client.put_bucket_lifecycle_configuration(
        Bucket=bare_store.bucket,
        LifecycleConfiguration={
            "Rules": [
                {
                    "ID": "old-versions",
                    "Filter": {"Prefix": ""},
                    "Status": "Enabled",
                    "NoncurrentVersionExpiration": {"NoncurrentDays": 30},
                }
            ]
        },
    )
    found = by_name(await check(bare_store))
    assert found["lifecycle-expire-noncurrent"].status == "wrong"
    assert not found["lifecycle-expire-noncurrent"].fixable
    assert "old-versions" in found["lifecycle-expire-noncurrent"].detail
    assert found["lifecycle-expire-current"].status == "missing"


async def test_a_default_retention_is_wrong(locked_store: S3ObjectStore, s3_client: S3Client) -> None:
    s3_client.put_object_lock_configuration(
        Bucket=locked_store.bucket,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 30}},
        },
    )
    found = by_name(await check(locked_store))
    assert found["object-lock"].status == "wrong"
    assert not found["object-lock"].fixable
    assert "COMPLIANCE" in found["object-lock"].detail


async def test_a_partial_public_access_block_is_wrong_and_fixed(
    locked_store: S3ObjectStore, s3_client: S3Client
) -> None:
    s3_client.put_public_access_block(
        Bucket=locked_store.bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": False,
            "RestrictPublicBuckets": False,
        },
    )
    found = by_name(await check(locked_store))
    assert found["public-access-block"].status == "wrong"
    assert "BlockPublicPolicy" in found["public-access-block"].detail
    after = by_name(await fix(locked_store, [found["public-access-block"]]))
    assert after["public-access-block"].status == "ok"
    assert after["default-encryption"].status == "missing"  # not asked


async def test_sse_kms_store_gets_kms_default_encryption(
    s3_config: StorageConfig, s3_client: S3Client
) -> None:
    key_arn = "arn:aws:kms:us-east-1:123456789012:key/0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"
    store = S3ObjectStore(replace(s3_config, sse="aws:kms", sse_kms_key_id=key_arn))
    try:
        await store.ensure_bucket()
        found = by_name(await check(store))
        assert "SSE-KMS" in found["default-encryption"].detail
        after = by_name(await fix(store, [found["default-encryption"]]))
        assert after["default-encryption"].status == "ok"
        rule = s3_client.get_bucket_encryption(Bucket=store.bucket)["ServerSideEncryptionConfiguration"][
            "Rules"
        ][0]
        assert rule["ApplyServerSideEncryptionByDefault"] == {
            "SSEAlgorithm": "aws:kms",
            "KMSMasterKeyID": key_arn,
        }
    finally:
        await store.close()


async def test_an_unreadable_setting_is_unknown_and_left_alone(locked_store: S3ObjectStore) -> None:
    client = await locked_store.run_with_client(lambda c: c)
    with denied(client, "GetPublicAccessBlock"):
        found = by_name(await check(locked_store))
        assert found["public-access-block"].status == "unknown"
        assert not found["public-access-block"].fixable
        assert "AccessDenied" in found["public-access-block"].detail
        after = by_name(await fix(locked_store, list(found.values())))
        assert after["public-access-block"].status == "unknown"
    assert by_name(await check(locked_store))["public-access-block"].status == "missing"


async def test_a_missing_bucket_is_store_unavailable(s3_config: StorageConfig) -> None:
    store = S3ObjectStore(s3_config)
    try:
        with pytest.raises(StoreUnavailable):
            await check(store)
        with pytest.raises(StoreUnavailable):
            await fix(store, [])
    finally:
        await store.close()


async def test_retention_must_be_positive(locked_store: S3ObjectStore) -> None:
    with pytest.raises(ValueError):
        await check_bucket(locked_store, retention=timedelta(0))
    with pytest.raises(ValueError):
        await check_bucket(locked_store, retention=RETENTION, margin=timedelta(days=-1))


async def test_the_backstop_rounds_up_to_whole_days(locked_store: S3ObjectStore, s3_client: S3Client) -> None:
    await apply_fixes(
        locked_store, await check(locked_store), retention=timedelta(days=30, hours=1), margin=timedelta(0)
    )
    lifecycle = rules(s3_client, locked_store.bucket)
    assert lifecycle["callrec-backstop-expire-current"]["Expiration"] == {"Days": 31}


ANCHORS = {"anchor_prefix": "audit-anchors/", "anchor_retention": timedelta(days=7 * 366)}


async def test_the_audit_anchors_prefix_is_checked_when_asked(locked_store: S3ObjectStore) -> None:
    assert not_ok(await check(locked_store)).keys().isdisjoint({"audit-anchors"})  # not asked: not there
    fixed = await apply_fixes(
        locked_store, await check(locked_store), retention=RETENTION, margin=MARGIN, **ANCHORS
    )
    assert [f.name for f in fixed] == [*NAMES, "audit-anchors"]
    # The backstop rules apply fixed under "recordings/": the anchors stay out of their reach.
    assert not_ok(fixed) == {}
    assert "'audit-anchors/'" in fixed[-1].detail


async def test_anchors_need_object_lock(bare_store: S3ObjectStore) -> None:
    bare = (await check_bucket(bare_store, retention=RETENTION, margin=MARGIN, **ANCHORS))[-1]
    assert (bare.name, bare.status, bare.fixable) == ("audit-anchors", "missing", False)
    assert "Object Lock" in bare.detail


async def test_a_rule_that_would_expire_anchors_is_reported(
    locked_store: S3ObjectStore, s3_client: S3Client
) -> None:
    s3_client.put_bucket_lifecycle_configuration(
        Bucket=locked_store.bucket,
        LifecycleConfiguration={
            "Rules": [
                {
                    "ID": "whole-bucket",
                    "Filter": {"Prefix": ""},
                    "Status": "Enabled",
                    "Expiration": {"Days": 365},
                },
                {
                    "ID": "after-retention",
                    "Filter": {"Prefix": "audit-anchors/"},
                    "Status": "Enabled",
                    "NoncurrentVersionExpiration": {"NoncurrentDays": 3000},
                },
            ]
        },
    )
    found = (await check_bucket(locked_store, retention=RETENTION, margin=MARGIN, **ANCHORS))[-1]
    assert found.status == "wrong" and not found.fixable
    assert "'whole-bucket'" in found.detail and "after-retention" not in found.detail
