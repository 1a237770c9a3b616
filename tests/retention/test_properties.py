"""Issue 4, "How it is checked": random interleavings of ingest, legal holds, releases, deletion
requests, clock advances, sweeps and worker drains, against the real app, a real PostgreSQL and
both object stores (the filesystem, and S3 through moto over HTTP on a fresh versioned bucket per
example).

A third variant uses a bucket with S3 Object Lock, where holds are also mirrored as S3 legal holds
on every object version; there, after each drain, a live recording's versions must carry a legal
hold exactly while an active hold covers it.

A small model of the rules runs beside the app (DESIGN.md rules 1 and 2, issue 4):

- a hold covers what its scope matches (a conjunction; lists match any item; phones match either
  party; a half-open time range on the call's start, or the time it was stored), now and later;
- a deletion request names every recording of its subject when it is processed, and recordings
  of the subject ingested while it is open (received, or waiting on holds); it closes when nothing
  it named is left;
- expiry destroys what is past ``expires_at`` at the sweep's ``now`` and covered by no hold;
- a withheld recording is erased as soon as its last hold is released.

After every step the app must agree with the model:

(a) a recording covered by an active hold is never destroyed: its row is live, its wrapped key is
    there and its object versions are all still in the store;
(b) what the model says is gone is a tombstone (no key, no sealed numbers, no hashes, no object
    key) and, once the jobs that delete objects have run, no object version or delete marker of it
    is left in the store; nor does the store hold objects of recordings that were never stored;
(c) the audit chain verifies;
(d) nothing else is destroyed: a recording neither past its expiry at a sweep nor named by a
    deletion request keeps its row, key and object versions.

Every example ends by releasing every hold, draining, sweeping with the clock 100 days ahead and
draining again: then nothing at all may be left in the store.

Each example gets its own database (cloned from the migrated template), data directory, fake
Twilio, bucket and app, all created inside the test body from session fixtures.
"""

from __future__ import annotations

import asyncio
import functools
import io
import math
import os
import struct
import uuid
import wave
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import boto3
import pytest
from aiohttp import BasicAuth, web
from aiohttp.test_utils import TestClient, TestServer
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from callrec.app import create_app, worker_key
from callrec.appkeys import config_key, db_key, store_key
from callrec.config import Config, config_from_mapping
from callrec.db import audit, tokens
from callrec.retention.sweeper import sweep

TENANT = "acme"
TWILIO_SID = "AC" + "0123456789abcdef" * 2
TWILIO_TOKEN = "twilio-auth-token-for-tests"
PUBLIC_BASE = "https://callrec.example.test"

# New York numbers on both ends: one-party consent, so every recording is stored.
CALLERS = ("+12125550123", "+12125550777", "+16465550142")
DESK = "+16465550199"
PHONES = (*CALLERS, DESK, "+12125550999")  # the last one is nobody's
CALLS = tuple("CA" + f"{i:x}" * 32 for i in range(1, 4))
CALL_IDS = (*CALLS, "CA" + "f" * 32)  # the last one never happens
AGENTS = ("agent-1", "agent-2")
STARTS = tuple(datetime(2025, 6, 1, h, tzinfo=UTC) for h in (10, 11, 12))
# Hold time-range bounds; a recording without a start time is placed by its stored_at (now).
TIMES = (
    datetime(2000, 1, 1, tzinfo=UTC),
    *STARTS,
    datetime(2026, 1, 1, tzinfo=UTC),
    datetime(2100, 1, 1, tzinfo=UTC),
)
LIVE_STATES = ("stored", "quarantined")
# What a tombstone must not keep: the key, where the audio was, the phone numbers and their hashes.
SECRETS = ("wrapped_key", "object_key", "object_version", "from_sealed", "to_sealed", "from_hash", "to_hash")
FUTURE = timedelta(days=100)  # past the tenant's 90-day retention

# Per backend; CALLREC_PROPERTY_EXAMPLES=500 for a longer search.
MAX_EXAMPLES = int(os.environ.get("CALLREC_PROPERTY_EXAMPLES", "20"))
MAX_STEPS = 15  # of which the first one to three are ingests, so that holds have something to cover


def short_wav() -> bytes:
    """One second of a 440 Hz tone, 8 kHz mono 16-bit: small enough to keep ingest fast."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(
            b"".join(
                struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / 8000))) for i in range(8000)
            )
        )
    return buf.getvalue()


AUDIO = short_wav()


# --- operations -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Ingest:
    """A signed Twilio recording callback, then (``wait=False``) the worker runs until its job is
    done, or (``wait=True``) its job waits for a later Drain or WorkOne. The call's parties and
    start are fixed the first time the call is used."""

    call: int
    caller: int
    agent: int | None
    start: int | None
    wait: bool = False


@dataclass(frozen=True)
class PlaceHold:
    """Indices into the recordings known so far (mod their number), CALL_IDS, PHONES, TIMES, AGENTS."""

    recordings: tuple[int, ...] | None = None
    calls: tuple[int, ...] | None = None
    phones: tuple[int, ...] | None = None
    time_from: int | None = None
    time_to: int | None = None
    agent: int | None = None


@dataclass(frozen=True)
class Release:
    which: int  # index into the active holds (mod their number); nothing happens without one


@dataclass(frozen=True)
class RequestDeletion:
    kind: Literal["phone", "call_id", "recording_ids"]
    refs: tuple[int, ...]  # phone: PHONES[refs[0]]; call_id: CALL_IDS[refs[0]]; ids: known recordings


@dataclass(frozen=True)
class Expire:
    which: tuple[int, ...]  # indices into the ingested recordings: expires_at set a minute ago


@dataclass(frozen=True)
class Sweep:
    future: bool  # sweep with now = now + 100 days (everything existing is past its expiry)


@dataclass(frozen=True)
class Drain:
    """Run the worker until no job is runnable (ingest, deletion.process, object.delete, ...)."""


@dataclass(frozen=True)
class WorkOne:
    """Run the worker until the oldest waiting ingest or deletion.process job is done."""


Op = Ingest | PlaceHold | Release | RequestDeletion | Expire | Sweep | Drain | WorkOne

_small = st.integers(min_value=0, max_value=7)
_idx_list = st.lists(_small, min_size=1, max_size=3).map(lambda v: tuple(dict.fromkeys(v)))


ingests = st.builds(
    Ingest,
    call=st.integers(0, len(CALLS) - 1),
    caller=st.integers(0, len(CALLERS) - 1),
    agent=st.none() | st.integers(0, len(AGENTS) - 1),
    start=st.none() | st.integers(0, len(STARTS) - 1),
    wait=st.sampled_from([False, False, True]),
)


@st.composite
def holds(draw: st.DrawFn) -> PlaceHold:
    """One or two criteria: with more, a scope seldom matches anything in a short run."""
    chosen = draw(
        st.sets(st.sampled_from(["recordings", "calls", "phones", "time", "agent"]), min_size=1, max_size=2)
    )

    def some(n: int) -> tuple[int, ...]:
        return tuple(draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=2, unique=True)))

    time_from = time_to = None
    if "time" in chosen:
        time_from, time_to = draw(
            st.tuples(st.none() | st.integers(0, len(TIMES) - 1), st.none() | st.integers(0, len(TIMES) - 1))
            .filter(lambda t: t != (None, None))
            .filter(lambda t: t[0] is None or t[1] is None or t[0] < t[1])
        )
    return PlaceHold(
        recordings=draw(_idx_list) if "recordings" in chosen else None,
        calls=some(len(CALL_IDS)) if "calls" in chosen else None,
        phones=some(len(PHONES)) if "phones" in chosen else None,
        time_from=time_from,
        time_to=time_to,
        agent=draw(st.integers(0, len(AGENTS) - 1)) if "agent" in chosen else None,
    )


requests = st.one_of(
    st.builds(RequestDeletion, kind=st.just("phone"), refs=st.tuples(st.integers(0, len(PHONES) - 1))),
    st.builds(RequestDeletion, kind=st.just("call_id"), refs=st.tuples(st.integers(0, len(CALL_IDS) - 1))),
    st.builds(RequestDeletion, kind=st.just("recording_ids"), refs=_idx_list),
)
operations: st.SearchStrategy[Op] = st.one_of(
    ingests,
    ingests,
    ingests,
    holds(),
    holds(),
    st.builds(Release, which=_small),
    requests,
    st.builds(Expire, which=_idx_list),
    st.builds(Sweep, future=st.booleans()),
    st.just(Drain()),
    st.just(WorkOne()),
)
scenarios = st.tuples(
    st.lists(ingests, min_size=1, max_size=3), st.lists(operations, min_size=1, max_size=MAX_STEPS - 3)
).map(lambda parts: [*parts[0], *parts[1]])


# --- the model ------------------------------------------------------------------------------


@dataclass
class Rec:
    rid: uuid.UUID
    sid: str
    call_id: str
    caller: str
    started_at: datetime | None
    agent: str | None
    ingested: bool = False  # its ingest job has run
    stored_at: datetime | None = None
    expires_at: datetime | None = None
    live: bool = False
    objects_pending: bool = False  # dead, its object.delete job not run yet
    versions: frozenset[str] = frozenset()  # what the store held for it once ingested

    @property
    def phones(self) -> set[str]:
        return {self.caller, DESK}

    @property
    def when(self) -> datetime:
        when = self.started_at or self.stored_at
        assert when is not None
        return when


@dataclass
class ModelHold:
    id: str
    recording_ids: frozenset[uuid.UUID] | None
    call_ids: frozenset[str] | None
    phones: frozenset[str] | None
    time_from: datetime | None
    time_to: datetime | None
    agent: str | None
    active: bool = True

    def covers(self, r: Rec) -> bool:
        return (
            self.active
            and (self.recording_ids is None or r.rid in self.recording_ids)
            and (self.call_ids is None or r.call_id in self.call_ids)
            and (self.phones is None or bool(r.phones & self.phones))
            and (self.time_from is None or r.when >= self.time_from)
            and (self.time_to is None or r.when < self.time_to)
            and (self.agent is None or r.agent == self.agent)
        )

    def scope_json(self) -> dict[str, Any]:
        scope: dict[str, Any] = {
            "recording_ids": sorted(str(r) for r in self.recording_ids) if self.recording_ids else None,
            "call_ids": sorted(self.call_ids) if self.call_ids else None,
            "phones": sorted(self.phones) if self.phones else None,
            "from": self.time_from.isoformat() if self.time_from else None,
            "to": self.time_to.isoformat() if self.time_to else None,
            "agent": self.agent,
        }
        return {k: v for k, v in scope.items() if v is not None}


@dataclass
class ModelRequest:
    id: str
    kind: str
    phone: str | None = None
    call_id: str | None = None
    recording_ids: frozenset[uuid.UUID] = frozenset()
    processed: bool = False
    rejected: bool = False
    named: set[uuid.UUID] = field(default_factory=set)

    def subject_json(self) -> dict[str, Any]:
        if self.kind == "phone":
            return {"phone": self.phone}
        if self.kind == "call_id":
            return {"call_id": self.call_id}
        return {"recording_ids": sorted(str(r) for r in self.recording_ids)}

    def names(self, r: Rec) -> bool:
        if self.kind == "phone":
            return self.phone in r.phones
        if self.kind == "call_id":
            return r.call_id == self.call_id
        return r.rid in self.recording_ids


@dataclass
class Model:
    recs: dict[uuid.UUID, Rec] = field(default_factory=dict)  # in webhook order
    holds: list[ModelHold] = field(default_factory=list)
    requests: list[ModelRequest] = field(default_factory=list)
    # Jobs the model waits for, oldest first: ("ingest", rid, job id) | ("deletion", request, job id)
    queue: list[tuple[str, Any, int]] = field(default_factory=list)

    def held(self, r: Rec) -> list[ModelHold]:
        return [h for h in self.holds if h.covers(r)]

    def ingested(self) -> list[Rec]:
        return [r for r in self.recs.values() if r.ingested]

    def is_open(self, req: ModelRequest) -> bool:
        """Received and not yet processed, or waiting on holds for something it named."""
        if req.rejected:
            return False
        return not req.processed or any(self.recs[x].live for x in req.named)

    def kill(self, r: Rec, *, objects_pending: bool) -> None:
        r.live = False
        r.objects_pending = objects_pending

    def ingest_done(self, r: Rec) -> None:
        open_requests = [q for q in self.requests if self.is_open(q) and q.names(r)]
        r.ingested, r.live = True, True
        for q in open_requests:
            q.named.add(r.rid)
            if r.live and not self.held(r):
                self.kill(r, objects_pending=True)

    def deletion_done(self, q: ModelRequest) -> None:
        matches = [r for r in self.ingested() if q.names(r)]
        if q.kind == "recording_ids" and not matches:
            q.rejected = True
            return
        q.processed = True
        for r in matches:
            q.named.add(r.rid)
            if r.live and not self.held(r):
                self.kill(r, objects_pending=True)

    def resolve_withheld(self) -> None:
        for q in self.requests:
            if q.rejected:
                continue
            for rid in q.named:
                r = self.recs[rid]
                if r.live and not self.held(r):
                    self.kill(r, objects_pending=True)

    def sweep(self, now: datetime) -> None:
        for r in self.ingested():
            assert r.expires_at is not None
            if r.live and r.expires_at <= now and not self.held(r):
                self.kill(r, objects_pending=False)  # the sweeper deletes the objects itself
        self.resolve_withheld()


# --- the world: app, database, store, fake Twilio -------------------------------------------


class FakeTwilio:
    """Twilio's Calls and Recordings resources as far as callrec uses them."""

    def __init__(self) -> None:
        self.media: dict[str, bytes] = {}
        self.calls: dict[str, dict[str, str]] = {}
        self.base = ""

    def app(self) -> web.Application:
        def authorised(request: web.Request) -> bool:
            try:
                auth = BasicAuth.decode(request.headers.get("Authorization", ""))
            except ValueError:
                return False
            return bool(auth.login == TWILIO_SID and auth.password == TWILIO_TOKEN)

        async def recording(request: web.Request) -> web.StreamResponse:
            sid = request.match_info["sid"]
            if not authorised(request):
                return web.Response(status=401)
            if sid not in self.media:
                return web.Response(status=404)
            return web.Response(body=self.media[sid], content_type="audio/x-wav")

        async def call(request: web.Request) -> web.Response:
            if not authorised(request):
                return web.Response(status=401)
            return web.json_response(self.calls[request.match_info["sid"]])

        async def delete(request: web.Request) -> web.Response:
            if not authorised(request):
                return web.Response(status=401)
            return web.Response(status=204 if self.media.pop(request.match_info["sid"], None) else 404)

        app = web.Application()
        prefix = "/2010-04-01/Accounts/{account}"
        app.router.add_get(prefix + "/Recordings/{sid:RE[0-9a-f]+}", recording)
        app.router.add_get(prefix + "/Calls/{sid}.json", call)
        app.router.add_delete(prefix + "/Recordings/{sid}.json", delete)
        return app


@dataclass
class Objects:
    versions: frozenset[str]
    delete_markers: int


class World:
    def __init__(
        self,
        client: TestClient[web.Request, web.Application],
        fake: FakeTwilio,
        backend: str,
        s3: Any,
        bucket: str,
        headers: dict[str, str],
    ) -> None:
        self.client = client
        self.fake = fake
        self.backend = backend
        self.s3 = s3
        self.bucket = bucket
        self.headers = headers
        self.model = Model()
        self.starts: dict[str, datetime | None] = {}  # call id -> its start, fixed at first use
        self.log: list[str] = []

    @property
    def app(self) -> web.Application:
        app = self.client.app
        assert app is not None
        return app

    @property
    def pool(self) -> asyncpg.Pool:
        return self.app[db_key]

    @property
    def config(self) -> Config:
        return self.app[config_key]

    # -- store inspection, behind the app's back ----------------------------------------------

    async def inventory(self) -> dict[str, Objects]:
        """Every object version and delete marker in the store (S3), or every file (filesystem),
        by the recording id in its key (``<tenant>/<recording id>/<suffix>``), in one listing."""
        found: dict[str, tuple[set[str], int]] = {}

        def add(key: str, version: str | None) -> None:
            versions, markers = found.setdefault(key.split("/")[1], (set(), 0))
            if version is None:
                found[key.split("/")[1]] = (versions, markers + 1)
            else:
                versions.add(version)

        if self.backend == "filesystem":
            root = self.config.storage_path

            def files() -> None:
                for path in root.rglob("*") if root.is_dir() else []:
                    if path.is_file() and not path.name.startswith("."):
                        add(str(path.relative_to(root)), str(path.relative_to(root)))

            await asyncio.to_thread(files)
        else:
            prefix = self.config.storage.prefix

            def listing() -> None:
                pages = self.s3.get_paginator("list_object_versions").paginate(Bucket=self.bucket)
                for page in pages:
                    for v in page.get("Versions", []):
                        assert v["Key"].startswith(prefix), f"object outside the store's prefix: {v['Key']}"
                        add(v["Key"].removeprefix(prefix), f"{v['Key']}@{v['VersionId']}")
                    for m in page.get("DeleteMarkers", []):
                        add(m["Key"].removeprefix(prefix), None)

            await asyncio.to_thread(listing)
        return {rid: Objects(frozenset(v), markers) for rid, (v, markers) in found.items()}

    async def objects_of(self, rid: uuid.UUID, inventory: dict[str, Objects] | None = None) -> Objects:
        if inventory is None:
            inventory = await self.inventory()
        return inventory.get(str(rid), Objects(frozenset(), 0))

    # -- operations ---------------------------------------------------------------------------

    async def apply(self, op: Op) -> None:
        self.log.append(repr(op))
        if isinstance(op, Ingest):
            await self.ingest(op)
        elif isinstance(op, PlaceHold):
            await self.place_hold(op)
        elif isinstance(op, Release):
            active = [h for h in self.model.holds if h.active]
            if active:
                await self.release(active[op.which % len(active)])
        elif isinstance(op, RequestDeletion):
            await self.request_deletion(op)
        elif isinstance(op, Expire):
            await self.expire(op)
        elif isinstance(op, Sweep):
            await self.sweep(future=op.future)
        elif isinstance(op, WorkOne):
            await self.work_one()
        else:
            await self.drain()

    async def ingest(self, op: Ingest) -> None:
        call_id = CALLS[op.call]
        if call_id not in self.fake.calls:
            call = {"sid": call_id, "from": CALLERS[op.caller], "to": DESK, "direction": "inbound"}
            if op.start is not None:
                call["start_time"] = format_datetime(STARTS[op.start])
            self.fake.calls[call_id] = call
            self.starts[call_id] = STARTS[op.start] if op.start is not None else None
        call = self.fake.calls[call_id]
        sid = "RE" + uuid.uuid4().hex
        self.fake.media[sid] = AUDIO
        form = {
            "AccountSid": TWILIO_SID,
            "CallSid": call_id,
            "RecordingSid": sid,
            "RecordingUrl": f"{self.fake.base}/2010-04-01/Accounts/{TWILIO_SID}/Recordings/{sid}",
            "RecordingStatus": "completed",
        }
        path = f"/webhooks/twilio/{TENANT}?consent=granted&basis=contract"
        agent = AGENTS[op.agent] if op.agent is not None else None
        if agent:
            path += f"&agent={agent}"
        signature = RequestValidator(TWILIO_TOKEN).compute_signature(PUBLIC_BASE + path, form)
        resp = await self.client.post(path, data=form, headers={"X-Twilio-Signature": signature})
        assert resp.status == 202, await resp.text()
        job_id = (await resp.json())["job_id"]
        async with self.pool.acquire() as conn:
            rid = uuid.UUID(
                await conn.fetchval("SELECT payload->>'recording_id' FROM jobs WHERE id = $1", job_id)
            )
        self.model.recs[rid] = Rec(
            rid=rid,
            sid=sid,
            call_id=call_id,
            caller=call["from"],
            started_at=self.starts[call_id],
            agent=agent,
        )
        self.model.queue.append(("ingest", rid, job_id))
        if not op.wait:
            while self.model.queue:  # its job and every older one the model waits for
                await self.work_one()

    def known(self, refs: tuple[int, ...]) -> frozenset[uuid.UUID]:
        ids = list(self.model.recs)
        if not ids:
            return frozenset({uuid.UUID(int=refs[0] + 1)})  # no such recording
        return frozenset(ids[i % len(ids)] for i in refs)

    async def place_hold(self, op: PlaceHold) -> None:
        hold = ModelHold(
            id="",
            recording_ids=self.known(op.recordings) if op.recordings is not None else None,
            call_ids=frozenset(CALL_IDS[i] for i in op.calls) if op.calls is not None else None,
            phones=frozenset(PHONES[i] for i in op.phones) if op.phones is not None else None,
            time_from=TIMES[op.time_from] if op.time_from is not None else None,
            time_to=TIMES[op.time_to] if op.time_to is not None else None,
            agent=AGENTS[op.agent] if op.agent is not None else None,
        )
        resp = await self.client.post(
            "/api/v1/legal-holds",
            headers=self.headers,
            json={"matter": "Matter", "reason": "litigation", "scope": hold.scope_json()},
        )
        assert resp.status == 201, await resp.text()
        body = await resp.json()
        hold.id = body["id"]
        expected = sum(1 for r in self.model.ingested() if r.live and hold.covers(r))
        assert body["covers"] == expected, f"hold covers {body['covers']} live recordings, model {expected}"
        self.model.holds.append(hold)

    async def release(self, hold: ModelHold) -> None:
        resp = await self.client.post(
            f"/api/v1/legal-holds/{hold.id}/release", headers=self.headers, json={"reason": "settled"}
        )
        assert resp.status == 200, await resp.text()
        hold.active = False
        self.model.resolve_withheld()

    async def request_deletion(self, op: RequestDeletion) -> None:
        req = ModelRequest(id="", kind=op.kind)
        if op.kind == "phone":
            req.phone = PHONES[op.refs[0] % len(PHONES)]
        elif op.kind == "call_id":
            req.call_id = CALL_IDS[op.refs[0] % len(CALL_IDS)]
        else:
            req.recording_ids = self.known(op.refs)
        resp = await self.client.post(
            "/api/v1/deletion-requests", headers=self.headers, json={"subject": req.subject_json()}
        )
        assert resp.status == 202, await resp.text()
        req.id = (await resp.json())["id"]
        async with self.pool.acquire() as conn:
            job_id = await conn.fetchval(
                "SELECT id FROM jobs WHERE kind = 'deletion.process' AND dedupe_key = $1", req.id
            )
        self.model.requests.append(req)
        self.model.queue.append(("deletion", req, job_id))

    async def expire(self, op: Expire) -> None:
        done = self.model.ingested()
        if not done:
            return
        chosen = list(dict.fromkeys(done[i % len(done)].rid for i in op.which))
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                """UPDATE recordings SET expires_at = now() - interval '1 minute'
                   WHERE id = ANY($1::uuid[]) RETURNING id, expires_at""",
                chosen,
            )
        for row in rows:
            self.model.recs[row["id"]].expires_at = row["expires_at"]

    async def sweep(self, *, future: bool) -> None:
        now = datetime.now(UTC) + (FUTURE if future else timedelta(0))
        await sweep(
            self.pool,
            self.app[store_key],
            tenants=list(self.config.tenants),
            max_attempts=self.config.ingest.max_attempts,
            now=now,
        )
        self.model.sweep(now)

    async def drain(self) -> None:
        worker = self.app[worker_key]
        for _ in range(500):
            if not await worker.run_once():
                break
        async with self.pool.acquire() as conn:
            stuck = await conn.fetch("SELECT id, kind, state, last_error FROM jobs WHERE state <> 'done'")
        assert not stuck, f"jobs left after draining: {[dict(r) for r in stuck]}"
        # The jobs ran oldest first: replay them in the model in the same order.
        queue, self.model.queue = self.model.queue, []
        for kind, item, _ in queue:
            await self.replay(kind, item)
        for r in self.model.recs.values():
            r.objects_pending = False
        await self.learn_versions()
        if self.backend == "s3-object-lock":
            await self.check_mirror()

    async def work_one(self) -> None:
        """Run jobs, oldest first, until the oldest ingest or deletion job waiting is done: the
        jobs queued after it (object deletions, hold syncs, younger ingests) are still waiting."""
        if not self.model.queue:
            return
        kind, item, job_id = self.model.queue.pop(0)
        worker = self.app[worker_key]
        for _ in range(100):
            async with self.pool.acquire() as conn:
                state = await conn.fetchval("SELECT state FROM jobs WHERE id = $1", job_id)
            if state == "done":
                break
            assert await worker.run_once(), f"job {job_id} ({kind}) is {state} and nothing is runnable"
        else:
            raise AssertionError(f"job {job_id} ({kind}) did not finish")
        await self.replay(kind, item)
        await self.learn_versions()

    async def replay(self, kind: str, item: Any) -> None:
        if kind == "ingest":
            await self.learn_ingested(self.model.recs[item])
            self.model.ingest_done(self.model.recs[item])
        else:
            self.model.deletion_done(item)

    async def learn_versions(self) -> None:
        inventory = await self.inventory()
        for r in self.model.ingested():
            if r.live and not r.versions:
                r.versions = (await self.objects_of(r.rid, inventory)).versions
                assert r.versions, f"stored recording {r.rid} has no object"

    async def check_mirror(self) -> None:
        """(a, S3) once the hold.sync jobs have run, every version of a live recording carries an
        Object Lock legal hold exactly while an active hold covers the recording."""
        for r in self.model.ingested():
            if not r.live:
                continue
            held = [h.id for h in self.model.held(r)]
            for version in r.versions:
                on = await self.legal_hold(version)
                assert on == bool(held), (
                    f"(a) recording {r.rid}: the S3 legal hold on {version} is {'ON' if on else 'OFF'}, "
                    f"but the active holds covering it are {held}"
                )

    async def legal_hold(self, version: str) -> bool:
        key, version_id = version.rsplit("@", 1)

        def status() -> bool:
            try:
                answer = self.s3.get_object_legal_hold(Bucket=self.bucket, Key=key, VersionId=version_id)
            except ClientError as exc:  # AWS: a version that never had a hold
                if exc.response.get("Error", {}).get("Code") == "NoSuchObjectLockConfiguration":
                    return False
                raise
            return bool(answer.get("LegalHold", {}).get("Status") == "ON")

        return await asyncio.to_thread(status)

    async def learn_ingested(self, r: Rec) -> None:
        """The facts the app decided at ingest (when it was stored, when it expires)."""
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT started_at, stored_at, expires_at, call_id, agent FROM recordings WHERE id = $1",
                r.rid,
            )
        assert row is not None, f"recording {r.rid} was not ingested"
        assert (row["started_at"], row["call_id"], row["agent"]) == (r.started_at, r.call_id, r.agent)
        r.stored_at, r.expires_at = row["stored_at"], row["expires_at"]

    # -- the invariants -----------------------------------------------------------------------

    async def check(self) -> None:
        async with self.pool.acquire() as conn:
            rows = {
                r["id"]: r
                for r in await conn.fetch(
                    """SELECT id, state, wrapped_key, object_key, object_version, from_sealed, to_sealed,
                              from_hash, to_hash FROM recordings"""
                )
            }
            chain = await audit.verify(conn)
        assert chain.ok, f"(c) the audit chain does not verify: {chain.problems}"
        ingested = {r.rid for r in self.model.ingested()}
        inventory = await self.inventory()
        strays = set(inventory) - {str(rid) for rid in ingested}
        assert not strays, f"(b) the store holds objects of no recording: {[inventory[s] for s in strays]}"
        assert set(rows) == ingested, f"recordings in the database {set(rows)} != ingested {ingested}"
        for r in self.model.ingested():
            row = rows[r.rid]
            found = await self.objects_of(r.rid, inventory)
            if r.live:
                intact = (
                    row["state"] in LIVE_STATES
                    and row["wrapped_key"] is not None
                    and row["object_key"] is not None
                    and found.versions == r.versions
                    and found.delete_markers == 0
                )
                if not intact:
                    holds = [h.id for h in self.model.held(r)]
                    what = (
                        f"(a) recording {r.rid} under active hold(s) {holds} was destroyed"
                        if holds
                        else f"(d) recording {r.rid}, neither expired nor named by a deletion request, "
                        "was destroyed"
                    )
                    raise AssertionError(
                        f"{what}: state={row['state']} key={'yes' if row['wrapped_key'] else 'no'} "
                        f"versions={sorted(found.versions)} (ingested with {sorted(r.versions)}) "
                        f"delete_markers={found.delete_markers}"
                    )
            else:
                left = [k for k in SECRETS if row[k] is not None]
                assert row["state"] == "destroyed" and not left, (
                    f"(b) recording {r.rid} should be gone ({self.why_gone(r)}) but is {row['state']!r}, "
                    f"still holding {left}"
                )
                if not r.objects_pending:
                    assert not found.versions and not found.delete_markers, (
                        f"(b) recording {r.rid} is a tombstone but the store still has "
                        f"{sorted(found.versions)} and {found.delete_markers} delete marker(s)"
                    )

    def why_gone(self, r: Rec) -> str:
        named = [q.id for q in self.model.requests if r.rid in q.named]
        return f"named by deletion request(s) {named}" if named else "past its expiry"

    async def finish(self) -> None:
        """Release every hold, let the waiting work happen, and sweep 100 days later: nothing left."""
        await self.apply(Drain())
        await self.check()
        for hold in [h for h in self.model.holds if h.active]:
            self.log.append(f"release {hold.id} (final)")
            await self.release(hold)
            await self.check()
        await self.apply(Sweep(future=True))
        await self.check()
        await self.apply(Drain())
        await self.check()
        assert all(not r.live for r in self.model.recs.values())
        left = await self.inventory()
        assert not left, f"(b) the store still holds {left} after every hold was released and a sweep ran"


# --- plumbing -------------------------------------------------------------------------------


@functools.cache
def _s3_client(endpoint: str) -> Any:
    """A plain boto3 client for looking behind the store's back, made once (clients are slow to
    make and thread-safe)."""
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1")


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def _config(data_dir: Path, database_url: str, storage: dict[str, Any], twilio_base: str) -> Config:
    return config_from_mapping(
        {
            "data_dir": str(data_dir),
            "server": {"public_base_url": PUBLIC_BASE},
            "database": {"url": database_url, "pool_max": 4},
            "ingest": {"media_hosts": [twilio_base.removeprefix("http://")], "retry_base": "1s"},
            "storage": storage,
            "tenants": {
                TENANT: {
                    "twilio_account_sid": TWILIO_SID,
                    "twilio_auth_token": TWILIO_TOKEN,
                    "twilio_api_base": twilio_base,
                    "webhook_secret": "pbx-shared-secret-for-tests",
                    "retention": "90d",
                },
            },
        }
    )


async def run_example(
    ops: list[Op], *, backend: str, pg_root_url: str, pg_template: str, moto_endpoint: str, data_dir: Path
) -> None:
    name = f"callrec_prop_{uuid.uuid4().hex[:12]}"
    root = await asyncpg.connect(pg_root_url)
    try:
        await root.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    finally:
        await root.close()
    bucket = f"callrec-prop-{uuid.uuid4().hex[:12]}"
    s3 = None
    storage: dict[str, Any] = {"backend": "filesystem"}
    if backend != "filesystem":
        s3 = _s3_client(moto_endpoint)
        # Object Lock turns versioning on by itself; holds are then mirrored as S3 legal holds.
        await asyncio.to_thread(
            s3.create_bucket, Bucket=bucket, ObjectLockEnabledForBucket=backend == "s3-object-lock"
        )
        await asyncio.to_thread(
            s3.put_bucket_versioning, Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
        )
        storage = {"backend": "s3", "bucket": bucket, "endpoint_url": moto_endpoint, "region": "us-east-1"}
    fake = FakeTwilio()
    twilio = TestServer(fake.app(), host="127.0.0.1")
    await twilio.start_server()
    fake.base = str(twilio.make_url("")).rstrip("/")
    cfg = _config(data_dir, _with_database(pg_root_url, name), storage, fake.base)
    client = TestClient(TestServer(create_app(cfg, run_workers=False), host="127.0.0.1"))
    await client.start_server()
    try:
        async with client.app[db_key].acquire() as conn:
            _, token = await tokens.create(
                conn,
                tenant=TENANT,
                name="property",
                scopes=["holds:write", "holds:read", "deletions:write", "deletions:read"],
            )
        world = World(client, fake, backend, s3, bucket, {"Authorization": f"Bearer {token}"})
        try:
            for op in ops:
                await world.apply(op)
                await world.check()
            await world.finish()
        except AssertionError as exc:
            steps = "\n  ".join(world.log)
            raise AssertionError(f"{exc}\nafter the steps:\n  {steps}") from None
    finally:
        await client.close()
        await twilio.close()
        root = await asyncpg.connect(pg_root_url)
        try:
            await root.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await root.close()


# Always tried first: a webhook acknowledged before a deletion request for the same caller is
# processed (oldest job first) before the request's own job; the caller's earlier recording must
# still be deleted when the request's job runs.
INGESTED_BEFORE_THE_REQUEST_IS_PROCESSED = [
    Ingest(call=0, caller=0, agent=None, start=None),
    Ingest(call=1, caller=0, agent=None, start=None, wait=True),
    RequestDeletion(kind="phone", refs=(0,)),
    Drain(),
]
# The same, where the late recording is withheld by a hold that is released before the request's
# job runs.
RELEASED_BEFORE_THE_REQUEST_IS_PROCESSED = [
    Ingest(call=0, caller=0, agent=None, start=None),
    PlaceHold(calls=(1,)),
    Ingest(call=1, caller=0, agent=None, start=None, wait=True),
    RequestDeletion(kind="phone", refs=(0,)),
    WorkOne(),
    Release(which=0),
    Drain(),
]


@pytest.mark.parametrize("backend", ["filesystem", "s3", "s3-object-lock"])
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@example(ops=INGESTED_BEFORE_THE_REQUEST_IS_PROCESSED)
@example(ops=RELEASED_BEFORE_THE_REQUEST_IS_PROCESSED)
@given(ops=scenarios)
def test_holds_expiry_and_erasure_rules_hold_under_random_interleavings(
    ops: list[Op],
    backend: str,
    pg_root_url: str,
    pg_template: str,
    moto_endpoint: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    asyncio.run(
        run_example(
            ops,
            backend=backend,
            pg_root_url=pg_root_url,
            pg_template=pg_template,
            moto_endpoint=moto_endpoint,
            data_dir=tmp_path_factory.mktemp(f"prop-{backend}") / "data",
        )
    )
