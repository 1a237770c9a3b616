"""Writing anchors: the advisory-lock election, the schedule, the background task in the app and
the metrics an alert watches."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from callrec.anchoring import Anchor, AnchorError, AnchorsRead
from callrec.anchoring.filesystem import FileAnchorStore
from callrec.anchoring.service import anchor_chain
from callrec.app import create_app
from callrec.appkeys import db_key
from callrec.db import audit
from callrec.db.pool import create_pool

HOUR = timedelta(hours=1)


async def add(pool: asyncpg.Pool, n: int) -> None:
    async with pool.acquire() as conn, conn.transaction():
        for i in range(n):
            await audit.record(
                conn, tenant="acme", actor="t", action=audit.AuditAction.RECORDING_VIEWED, details={"i": i}
            )


class GatedStore:
    """A file store whose ``put`` waits for ``gate``: an anchor write that takes its time."""

    def __init__(self, path: Path) -> None:
        self.inner = FileAnchorStore(path)
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    @property
    def description(self) -> str:
        return self.inner.description

    async def put(self, anchor: Anchor) -> str:
        self.entered.set()
        await asyncio.wait_for(self.gate.wait(), 30)
        return await self.inner.put(anchor)

    async def read_all(self) -> AnchorsRead:
        return await self.inner.read_all()


async def test_two_concurrent_anchorers_write_one_anchor(
    db: asyncpg.Pool, config: Any, tmp_path: Path
) -> None:
    await add(db, 3)
    other = await create_pool(config)  # a second process
    store = GatedStore(tmp_path / "anchors.jsonl")
    try:
        first = asyncio.create_task(anchor_chain(db, store, interval=HOUR, force=False, wait=False))
        second = asyncio.create_task(anchor_chain(other, store, interval=HOUR, force=False, wait=False))
        done, _ = await asyncio.wait({first, second}, return_when=asyncio.FIRST_COMPLETED, timeout=30)
        assert len(done) == 1  # the other one holds the lock and waits in the store
        await asyncio.wait_for(store.entered.wait(), 30)
        store.gate.set()
        outcomes = sorted([(await first).reason, (await second).reason])
    finally:
        await other.close()
    assert outcomes == ["busy", "written"]
    anchors = (await store.read_all()).anchors
    assert [a.seq for a in anchors] == [3]
    # Not due again for an hour; `callrec audit anchor` (force) writes one anyway.
    assert (await anchor_chain(db, store, interval=HOUR, force=False, wait=False)).reason == "not-due"
    assert (await anchor_chain(db, store, interval=HOUR, force=True, wait=True)).reason == "written"
    assert len((await store.read_all()).anchors) == 2


async def test_a_waiting_anchorer_writes_after_the_holder(
    db: asyncpg.Pool, config: Any, tmp_path: Path
) -> None:
    other = await create_pool(config)
    store = GatedStore(tmp_path / "anchors.jsonl")
    try:
        holder = asyncio.create_task(anchor_chain(db, store, interval=HOUR, force=True, wait=True))
        await asyncio.wait_for(store.entered.wait(), 30)
        waiter = asyncio.create_task(anchor_chain(other, store, interval=HOUR, force=True, wait=True))
        await asyncio.sleep(0.2)
        assert not waiter.done()  # blocked on the lock, not refused
        store.gate.set()
        assert (await holder).reason == (await waiter).reason == "written"
    finally:
        await other.close()


async def test_a_forged_last_anchor_row_does_not_stop_anchoring(db: asyncpg.Pool, tmp_path: Path) -> None:
    store = FileAnchorStore(tmp_path / "anchors.jsonl")
    await anchor_chain(db, store, interval=HOUR, force=True, wait=False)
    async with db.acquire() as conn:  # whoever holds the database makes the last anchor look later
        await conn.execute("UPDATE audit_anchor_last SET at = now() + interval '30 minutes'")
    assert (await anchor_chain(db, store, interval=HOUR, force=False, wait=False)).reason == "written"


async def test_a_store_that_refuses_is_an_anchor_error_and_nothing_is_noted(
    db: asyncpg.Pool, tmp_path: Path
) -> None:
    (tmp_path / "anchors.jsonl").mkdir()
    with pytest.raises(AnchorError):
        await anchor_chain(
            db, FileAnchorStore(tmp_path / "anchors.jsonl"), interval=HOUR, force=True, wait=True
        )
    async with db.acquire() as conn:
        assert await audit.last_anchor(conn) is None


async def wait_for(predicate: Any, *, seconds: float = 20) -> None:
    for _ in range(int(seconds / 0.2)):
        if predicate():
            return
        await asyncio.sleep(0.2)
    raise AssertionError("condition not met in time")


async def test_serve_anchors_in_the_background_and_reports_it_in_the_metrics(
    aiohttp_client: Any, app_config: Any, tmp_path: Path
) -> None:
    path = tmp_path / "anchors.jsonl"
    cfg = app_config(audit={"anchor_interval": "1s", "anchor_path": str(path)})
    client = await aiohttp_client(create_app(cfg, run_workers=True))
    store = FileAnchorStore(path)
    await wait_for(lambda: path.exists() and path.read_text().count("\n") >= 2)  # once, then again
    text = await (await client.get("/metrics")).text()
    line = next(
        x for x in text.splitlines() if x.startswith("callrec_audit_anchor_last_success_timestamp_seconds ")
    )
    newest = max((await store.read_all()).anchors, key=lambda a: a.at)
    assert float(line.split()[1]) >= newest.at.timestamp() - 5
    assert "callrec_audit_anchor_failures_total 0.0" in text
    async with client.app[db_key].acquire() as conn:
        assert (await audit.verify(conn, anchors=(await store.read_all()).anchors)).ok
    await client.close()  # the task stops with the app
    await asyncio.sleep(0.5)  # (a write already handed to a thread when it was cancelled lands)
    written = path.read_text().count("\n")
    await asyncio.sleep(2.5)
    assert path.read_text().count("\n") == written


async def test_failed_anchoring_is_counted_for_the_alert(
    aiohttp_client: Any, app_config: Any, tmp_path: Path
) -> None:
    (tmp_path / "not-a-file").mkdir()
    cfg = app_config(audit={"anchor_interval": "1s", "anchor_path": str(tmp_path / "not-a-file")})
    client = await aiohttp_client(create_app(cfg, run_workers=True))

    async def failures() -> float:
        text = await (await client.get("/metrics")).text()
        line = next(x for x in text.splitlines() if x.startswith("callrec_audit_anchor_failures_total "))
        return float(line.split()[1])

    for _ in range(100):
        if await failures() >= 1:
            break
        await asyncio.sleep(0.2)
    assert await failures() >= 1
    text = await (await client.get("/metrics")).text()
    assert "callrec_audit_anchor_last_success_timestamp_seconds 0.0" in text


async def test_on_s3_verify_reads_the_locked_anchors_and_sees_a_truncation(
    app_config: Any, db: asyncpg.Pool, moto_endpoint: str
) -> None:
    import uuid

    import boto3
    from audit_support import truncate_as_owner

    from callrec.anchoring import open_anchor_store
    from callrec.anchoring.s3 import S3AnchorStore
    from callrec.storage import open_object_store

    bucket = f"callrec-anchors-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(
        Bucket=bucket, ObjectLockEnabledForBucket=True
    )
    cfg = app_config(
        storage={"backend": "s3", "bucket": bucket, "endpoint_url": moto_endpoint, "region": "us-east-1"}
    )
    object_store = open_object_store(cfg.storage, root=cfg.storage_path)
    store = open_anchor_store(cfg, object_store)
    try:
        assert isinstance(store, S3AnchorStore) and store.description == f"s3://{bucket}/audit-anchors/"
        await add(db, 6)
        written = await anchor_chain(db, store, interval=HOUR, force=True, wait=True)
        assert written.location is not None and written.location.startswith(f"s3://{bucket}/audit-anchors/")
        async with db.acquire() as conn:
            assert (await audit.verify(conn, anchors=(await store.read_all()).anchors)).anchors == 1
            await truncate_as_owner(conn, keep=4)
            result = await audit.verify(conn, anchors=(await store.read_all()).anchors)
        assert any("the log ends at entry 4, but the anchor of" in p for p in result.problems)
    finally:
        await object_store.close()
