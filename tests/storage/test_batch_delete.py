"""``ObjectStore.delete_objects``: erasing many keys in one call, on the filesystem and on S3
(moto over HTTP), and ``callrec.erasure.delete_erased_objects`` on an Object Lock bucket."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest

from callrec import erasure
from callrec.config import StorageConfig
from callrec.db import audit, jobs
from callrec.storage import ObjectStore, StoreError, StoreUnavailable
from callrec.storage import filesystem as fs_module
from callrec.storage import s3 as s3_module
from callrec.storage.base import ObjectLocked
from callrec.storage.filesystem import FilesystemObjectStore
from callrec.storage.s3 import S3ObjectStore

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

BODY = b"\x00ciphertext" * 40


def recording_key(tenant: str) -> str:
    """The shape callrec's ingest gives keys: tenant, recording id, per-attempt suffix."""
    return f"{tenant}/{uuid.uuid4()}/{uuid.uuid4().hex[:16]}"


def full_key(store: ObjectStore, key: str) -> str:
    return store.prefix + key if isinstance(store, S3ObjectStore) else key


def seed(store: ObjectStore, s3_client: S3Client, keys: list[str], *, versions: int, markers: bool) -> None:
    """Write ``versions`` versions of each key (one on the filesystem, which keeps no others) and,
    on S3 with ``markers``, a delete marker on top of each. Straight to the backend, in parallel:
    going through the store one put at a time would make this test slow, not better."""
    if isinstance(store, FilesystemObjectStore):
        for key in keys:
            path = store.root.joinpath(*key.split("/"))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(BODY)
        return
    assert isinstance(store, S3ObjectStore)
    bucket = store.bucket
    names = [full_key(store, k) for k in keys]

    def put(name: str) -> None:
        for _ in range(versions):
            s3_client.put_object(Bucket=bucket, Key=name, Body=BODY)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, names))
    if markers:  # a DeleteObjects without version ids puts a delete marker on each key
        for start in range(0, len(names), 1000):
            s3_client.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": n} for n in names[start : start + 1000]]}
            )


def remaining(store: ObjectStore, s3_client: S3Client) -> Counter[str]:
    """Every version and delete marker left in the store, counted per key."""
    left: Counter[str] = Counter()
    if isinstance(store, FilesystemObjectStore):
        if store.root.exists():
            for path in store.root.rglob("*"):
                if path.is_file():
                    left[path.relative_to(store.root).as_posix()] += 1
        return left
    assert isinstance(store, S3ObjectStore)
    for page in s3_client.get_paginator("list_object_versions").paginate(Bucket=store.bucket):
        for entry in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
            left[entry["Key"][len(store.prefix) :]] += 1
    return left


@contextmanager
def count_calls(client: Any) -> Iterator[Counter[str]]:
    """Count the S3 operations the store's client makes."""
    calls: Counter[str] = Counter()

    def hook(model: Any, **_: Any) -> None:
        calls[model.name] += 1

    client.meta.events.register("before-call.s3", hook)
    try:
        yield calls
    finally:
        client.meta.events.unregister("before-call.s3", hook)


# --- both backends -----------------------------------------------------------------------------


async def test_2500_keys_with_every_version_go_in_one_call(
    store: ObjectStore, backend: str, s3_client: S3Client
) -> None:
    doomed = [recording_key("acme") for _ in range(2_000)] + [recording_key("globex") for _ in range(500)]
    # Keys that must stay: other recordings, and a key that merely starts with a doomed one.
    kept = [recording_key("acme") for _ in range(20)] + [doomed[0] + "-2", doomed[1] + "0"]
    seed(store, s3_client, doomed + kept, versions=2, markers=True)
    per_key = 3 if backend == "s3" else 1  # two versions and a delete marker on S3
    assert sum(remaining(store, s3_client).values()) == per_key * (len(doomed) + len(kept))

    if isinstance(store, S3ObjectStore):
        client = await store.run_with_client(lambda c: c)
        with count_calls(client) as calls:
            deleted = await store.delete_objects(doomed)
        # 7,500 entries: eight DeleteObjects of at most 1,000, and prefix listings rather than
        # one listing per key (2,000 + 500 keys in two tenants: about 8,000 entries in pages of
        # 1,000, plus the pages where the listing of a tenant ends).
        assert calls["DeleteObjects"] == 8
        assert calls["ListObjectVersions"] <= 12
    else:
        deleted = await store.delete_objects(doomed)

    assert deleted == dict.fromkeys(doomed, per_key)
    assert remaining(store, s3_client) == Counter(dict.fromkeys(kept, per_key))


async def test_missing_keys_count_zero_and_repeats_count_once(
    store: ObjectStore, backend: str, s3_client: S3Client
) -> None:
    present, missing = recording_key("acme"), recording_key("acme")
    seed(store, s3_client, [present], versions=2, markers=False)
    versions = 2 if backend == "s3" else 1
    assert await store.delete_objects([missing, present, present]) == {missing: 0, present: versions}
    assert await store.delete_objects([present, missing]) == {present: 0, missing: 0}
    assert await store.delete_objects([]) == {}
    assert remaining(store, s3_client) == Counter()


async def test_an_invalid_key_deletes_nothing(store: ObjectStore, s3_client: S3Client) -> None:
    good = recording_key("acme")
    seed(store, s3_client, [good], versions=1, markers=False)
    with pytest.raises(ValueError):
        await store.delete_objects([good, "acme/../etc"])
    assert remaining(store, s3_client) == Counter({good: 1})


# --- filesystem --------------------------------------------------------------------------------


async def test_filesystem_fsyncs_each_directory_once(
    fs_store: FilesystemObjectStore, monkeypatch: pytest.MonkeyPatch, s3_client: S3Client
) -> None:
    shared = [f"acme/day-1/{i}" for i in range(50)]
    alone = recording_key("acme")
    seed(fs_store, s3_client, [*shared, alone], versions=1, markers=False)
    synced: list[Path] = []
    real = fs_module._fsync_dir

    def spy(directory: Path) -> None:
        synced.append(directory)
        real(directory)

    monkeypatch.setattr(fs_module, "_fsync_dir", spy)
    assert await fs_store.delete_objects([*shared, alone, "acme/day-1/missing"]) == {
        **dict.fromkeys(shared, 1),
        alone: 1,
        "acme/day-1/missing": 0,
    }
    assert sorted(synced) == sorted([fs_store.root / "acme" / "day-1", (fs_store.root / alone).parent])


async def test_filesystem_failure_is_store_unavailable_and_what_went_is_durable(
    fs_store: FilesystemObjectStore, monkeypatch: pytest.MonkeyPatch, s3_client: S3Client
) -> None:
    keys = [f"acme/day-1/{i}" for i in range(3)]
    seed(fs_store, s3_client, keys, versions=1, markers=False)
    synced: list[Path] = []
    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self.name == "1":
            raise PermissionError(13, "Permission denied")
        real_unlink(self, missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    monkeypatch.setattr(fs_module, "_fsync_dir", synced.append)
    with pytest.raises(StoreUnavailable):
        await fs_store.delete_objects(keys)
    assert remaining(fs_store, s3_client) == Counter({"acme/day-1/1": 1, "acme/day-1/2": 1})
    assert synced == [fs_store.root / "acme" / "day-1"]


# --- S3 ----------------------------------------------------------------------------------------


@pytest.fixture
async def locked_store(s3_config: StorageConfig, s3_client: S3Client) -> AsyncIterator[S3ObjectStore]:
    """A store on a bucket created with Object Lock (which also turns versioning on)."""
    s3_client.create_bucket(Bucket=s3_config.bucket, ObjectLockEnabledForBucket=True)
    store = S3ObjectStore(s3_config)
    try:
        yield store
    finally:
        await store.close()


def versions_of(store: S3ObjectStore, s3_client: S3Client, key: str) -> list[str]:
    listing = s3_client.list_object_versions(Bucket=store.bucket, Prefix=full_key(store, key))
    return [v["VersionId"] for v in listing.get("Versions", []) if v["Key"] == full_key(store, key)]


@pytest.mark.parametrize("count", [5, 60])  # key by key, and a prefix listing
async def test_a_held_version_raises_object_locked_and_the_rest_is_gone(
    locked_store: S3ObjectStore, s3_client: S3Client, count: int
) -> None:
    keys = [recording_key("acme") for _ in range(count)]
    seed(locked_store, s3_client, keys, versions=2, markers=False)
    held_key = keys[count // 2]
    held = versions_of(locked_store, s3_client, held_key)[-1]
    s3_client.put_object_legal_hold(
        Bucket=locked_store.bucket,
        Key=full_key(locked_store, held_key),
        VersionId=held,
        LegalHold={"Status": "ON"},
    )

    with pytest.raises(ObjectLocked) as locked:
        await locked_store.delete_objects(keys)
    assert locked.value.locked == {held_key: (held,)}
    assert (locked.value.key, locked.value.version_ids) == (held_key, (held,))
    assert locked.value.deleted == {**dict.fromkeys(keys, 2), held_key: 1}
    assert remaining(locked_store, s3_client) == Counter({held_key: 1})
    assert versions_of(locked_store, s3_client, held_key) == [held]


async def test_erasure_lifts_a_stale_lock_and_deletes_everything(
    locked_store: S3ObjectStore, s3_client: S3Client
) -> None:
    """An erased recording's tombstone has committed, so no hold covers it: a legal hold still
    on one of its versions is a mirror not yet updated, lifted before deleting (as for one key)."""
    keys = [recording_key("acme") for _ in range(4)]
    seed(locked_store, s3_client, keys, versions=2, markers=False)
    for key in keys[:2]:
        await locked_store.set_legal_hold(key, version_id=None, on=True)
    assert await erasure.delete_erased_objects(locked_store, keys) == dict.fromkeys(keys, 2)
    assert remaining(locked_store, s3_client) == Counter()


@pytest.mark.parametrize("min_per_page", [1, 5])
async def test_versions_spanning_a_page_boundary_and_a_sparse_prefix(
    s3_store: S3ObjectStore, s3_client: S3Client, monkeypatch: pytest.MonkeyPatch, min_per_page: int
) -> None:
    """Pages of ten entries. With ``min_per_page`` 1 the prefix listing runs to the end; with 5
    it stops after the first page (too few wanted keys per page) and the keys it did not reach
    are listed one by one. Either way a key whose versions go on past a page boundary is not
    taken as complete at that boundary."""
    monkeypatch.setattr(s3_module, "_LIST_PAGE_SIZE", 10)
    monkeypatch.setattr(s3_module, "_SCAN_MIN_KEYS", 3)
    monkeypatch.setattr(s3_module, "_SCAN_MIN_KEYS_PER_PAGE", min_per_page)
    keys = sorted(recording_key("acme") for _ in range(60))
    doomed = keys[::2]
    many = keys[2]  # doomed, with 14 versions: across at least one page boundary
    seed(s3_store, s3_client, keys, versions=1, markers=False)
    seed(s3_store, s3_client, [many], versions=13, markers=False)
    client = await s3_store.run_with_client(lambda c: c)
    with count_calls(client) as calls:
        deleted = await s3_store.delete_objects(doomed)
    assert deleted == {**dict.fromkeys(doomed, 1), many: 14}
    assert remaining(s3_store, s3_client) == Counter(dict.fromkeys(keys[1::2], 1))
    if min_per_page == 1:
        assert calls["ListObjectVersions"] == 8  # 73 entries in pages of ten: the prefix only
    else:
        # One page, which gets past keys[0] only; then the other doomed keys one by one, the
        # one with 14 versions in two pages.
        assert calls["ListObjectVersions"] == 1 + (len(doomed) - 1) + 1


@pytest.mark.parametrize("count", [3, 60])  # key by key, and a prefix listing
async def test_a_missing_bucket_is_store_unavailable(s3_config: StorageConfig, count: int) -> None:
    store = S3ObjectStore(s3_config)  # the bucket was never created
    try:
        with pytest.raises(StoreUnavailable):
            await store.delete_objects([recording_key("acme") for _ in range(count)])
    finally:
        await store.close()


class FailingDeletes:
    """Make DeleteObjects fail for ``victims``: the request goes out without them (so S3 keeps
    them) and the response reports an error for each, as S3 does per key within a 200."""

    def __init__(self, client: Any, victims: set[str], code: str, message: str, times: int) -> None:
        self.client, self.victims, self.code, self.message = client, victims, code, message
        self.left = times
        self.calls = 0
        self._dropped: list[dict[str, str]] = []

    def before(self, params: dict[str, Any], **_: Any) -> None:
        self.calls += 1
        self._dropped = []
        if self.left <= 0:
            return
        self.left -= 1
        objects = params["Delete"]["Objects"]
        self._dropped = [o for o in objects if o["Key"] in self.victims]
        # S3 refuses an empty list: a version that does not exist stands in (deleting it succeeds).
        kept = [o for o in objects if o["Key"] not in self.victims]
        params["Delete"]["Objects"] = kept or [{"Key": "recordings/decoy", "VersionId": "none"}]

    def after(self, parsed: dict[str, Any], **_: Any) -> None:
        errors = parsed.setdefault("Errors", [])
        for o in self._dropped:
            errors.append({**o, "Code": self.code, "Message": self.message})

    def __enter__(self) -> FailingDeletes:
        self.client.meta.events.register("before-parameter-build.s3.DeleteObjects", self.before)
        self.client.meta.events.register("after-call.s3.DeleteObjects", self.after)
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.meta.events.unregister("before-parameter-build.s3.DeleteObjects", self.before)
        self.client.meta.events.unregister("after-call.s3.DeleteObjects", self.after)


async def failing(store: S3ObjectStore, victims: set[str], code: str, message: str, times: int) -> Any:
    client = await store.run_with_client(lambda c: c)
    return FailingDeletes(client, {full_key(store, v) for v in victims}, code, message, times)


async def test_an_error_is_retried_once(s3_store: S3ObjectStore, s3_client: S3Client) -> None:
    keys = [recording_key("acme") for _ in range(5)]
    seed(s3_store, s3_client, keys, versions=2, markers=False)
    with await failing(s3_store, {keys[1]}, "InternalError", "We encountered an internal error", 1) as f:
        assert await s3_store.delete_objects(keys) == dict.fromkeys(keys, 2)
    assert f.calls == 2
    assert remaining(s3_store, s3_client) == Counter()


async def test_an_error_that_persists_is_store_error(s3_store: S3ObjectStore, s3_client: S3Client) -> None:
    keys = [recording_key("acme") for _ in range(5)]
    seed(s3_store, s3_client, keys, versions=2, markers=False)
    with (
        await failing(s3_store, {keys[1]}, "InternalError", "We encountered an internal error", 9) as f,
        pytest.raises(StoreError) as refused,
    ):
        await s3_store.delete_objects(keys)
    assert f.calls == 2 and not isinstance(refused.value, ObjectLocked)
    assert "InternalError" in str(refused.value)
    assert remaining(s3_store, s3_client) == Counter({keys[1]: 2})


async def test_access_denied_without_a_lock_is_store_unavailable(
    s3_store: S3ObjectStore, s3_client: S3Client
) -> None:
    keys = [recording_key("acme") for _ in range(3)]
    seed(s3_store, s3_client, keys, versions=1, markers=False)
    with (
        await failing(s3_store, {keys[0]}, "AccessDenied", "Access Denied", 9) as f,
        pytest.raises(StoreUnavailable),
    ):
        await s3_store.delete_objects(keys)
    assert f.calls == 1  # a denial is not retried
    assert remaining(s3_store, s3_client) == Counter({keys[0]: 1})


# --- callrec.erasure: the batch after the tombstones ----------------------------------------------


async def queue_object_jobs(db: asyncpg.Pool, erased: list[tuple[str, str]]) -> list[uuid.UUID]:
    """The object.delete jobs a sweep batch queues with its tombstones, held back as it does."""
    ids = [uuid.uuid4() for _ in erased]
    async with db.acquire() as conn, conn.transaction():
        for (tenant, key), rid in zip(erased, ids, strict=True):
            await jobs.enqueue(
                conn,
                tenant=tenant,
                kind=erasure.DELETE_OBJECT,
                dedupe_key=key,
                payload={"object_key": key, "recording_id": str(rid)},
                max_attempts=3,
            )
        await erasure.hold_back_object_jobs(conn, erased)
    async with db.acquire() as conn:
        assert await jobs.claim(conn, worker_id="w", lease=timedelta(minutes=1)) is None  # held back
    return ids


async def test_objects_deleted_now_finish_their_jobs_with_an_audit_entry_each(
    db: asyncpg.Pool, fs_store: FilesystemObjectStore, s3_client: S3Client
) -> None:
    erased = [("acme", recording_key("acme")) for _ in range(3)] + [("globex", recording_key("globex"))]
    seed(fs_store, s3_client, [key for _, key in erased], versions=1, markers=False)
    ids = await queue_object_jobs(db, erased)

    result = await erasure.delete_objects_now(db, fs_store, erased, actor="system:sweeper")
    assert result.deleted == {key: 1 for _, key in erased} and result.deferred == []
    assert remaining(fs_store, s3_client) == Counter()
    async with db.acquire() as conn:
        assert {r["state"] for r in await conn.fetch("SELECT state FROM jobs")} == {"done"}
        rows = await conn.fetch(
            "SELECT tenant, recording_id, details FROM audit_log WHERE action = 'object:deleted' ORDER BY seq"
        )
        assert [(r["tenant"], r["recording_id"]) for r in rows] == [
            (tenant, rid) for (tenant, _), rid in zip(erased, ids, strict=True)
        ]
        assert (await audit.verify(conn)).ok


async def test_a_store_failure_leaves_the_objects_to_their_jobs_due_at_once(
    db: asyncpg.Pool, fs_store: FilesystemObjectStore, s3_client: S3Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    erased = [("acme", recording_key("acme")) for _ in range(2)]
    seed(fs_store, s3_client, [key for _, key in erased], versions=1, markers=False)
    await queue_object_jobs(db, erased)

    async def down(keys: list[str]) -> dict[str, int]:
        raise StoreUnavailable("filesystem store: disk gone")

    monkeypatch.setattr(fs_store, "delete_objects", down)
    result = await erasure.delete_objects_now(db, fs_store, erased, actor="system:sweeper")
    assert result.deleted == {} and result.deferred == [key for _, key in erased]
    async with db.acquire() as conn:
        claimed = await jobs.claim(conn, worker_id="w", lease=timedelta(minutes=1))
        assert claimed is not None and claimed.kind == erasure.DELETE_OBJECT  # due again
        assert await conn.fetchval("SELECT count(*) FROM audit_log") == 0
