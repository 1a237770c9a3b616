"""The SQL function ``hold_covers`` (migration 0003) and the pure rule
:func:`callrec.retention.holds.covers` are the same rule: every erasure path asks the database,
and the documentation and reasoning use the Python. Hypothesis generates recordings and hold
scopes (any combination of criteria, including empty lists, which the API refuses but the table
allows), inserts them into a real PostgreSQL and compares the two answers for every pair.

The SQL is three-valued: a NULL agent or phone hash can make ``hold_covers`` answer NULL. Every
caller uses it as a condition (WHERE, JOIN ON, EXISTS), where NULL is "does not cover", so NULL is
compared as False here.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callrec.db import Conn
from callrec.db import holds as db_holds
from callrec.retention.holds import Facts, Scope, covers

TENANT = "acme"
OTHER_TENANT = "other"

# Small pools so that recordings and scopes often share values, and time bounds often fall exactly
# on a recording's time (the range is half-open: [from, to)).
IDS = [uuid.UUID(int=i) for i in range(1, 6)]
CALL_IDS = ["CA1", "ca1", "CA1 ", "e\u0301", "\u00e9"]
AGENTS = ["agent-1", "agent-2", "Agent-1", ""]
HASHES = [bytes([i]) * 32 for i in range(1, 5)]
BASE = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
_ZONES = [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))]
TIMES = [BASE + timedelta(minutes=m) for m in (-60, 0, 1, 60)] + [BASE + timedelta(microseconds=1)]


@st.composite
def instants(draw: st.DrawFn) -> datetime:
    """Mostly a shared instant (possibly written in another UTC offset), sometimes any microsecond."""
    if draw(st.booleans()):
        value = draw(st.sampled_from(TIMES))
    else:
        value = draw(
            st.datetimes(
                min_value=datetime(2020, 1, 1),
                max_value=datetime(2030, 1, 1),
                timezones=st.just(UTC),
            )
        )
    return value.astimezone(draw(st.sampled_from(_ZONES)))


@dataclass(frozen=True)
class Rec:
    id: uuid.UUID
    tenant: str
    call_id: str
    from_hash: bytes | None
    to_hash: bytes | None
    started_at: datetime | None
    stored_at: datetime
    agent: str | None

    def facts(self) -> Facts:
        return Facts(
            id=self.id,
            call_id=self.call_id,
            from_hash=self.from_hash,
            to_hash=self.to_hash,
            when=self.started_at or self.stored_at,
            agent=self.agent,
        )


@dataclass(frozen=True)
class HoldRow:
    id: uuid.UUID
    scope_recording_ids: list[uuid.UUID] | None
    scope_call_ids: list[str] | None
    scope_phone_hashes: list[bytes] | None
    scope_from: datetime | None
    scope_to: datetime | None
    scope_agent: str | None

    def scope(self) -> Scope:
        def frozen(values: list[Any] | None) -> frozenset[Any] | None:
            return frozenset(values) if values is not None else None

        return Scope(
            recording_ids=frozen(self.scope_recording_ids),
            call_ids=frozen(self.scope_call_ids),
            phone_hashes=frozen(self.scope_phone_hashes),
            time_from=self.scope_from,
            time_to=self.scope_to,
            agent=self.scope_agent,
        )

    def is_empty(self) -> bool:
        return self.scope().is_empty()


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


@st.composite
def recordings(draw: st.DrawFn) -> list[Rec]:
    ids = draw(st.lists(st.sampled_from(IDS), min_size=1, max_size=4, unique=True))
    return [
        Rec(
            id=rid,
            tenant=draw(st.sampled_from([TENANT, TENANT, TENANT, OTHER_TENANT])),
            call_id=draw(st.sampled_from(CALL_IDS)),
            from_hash=draw(_maybe(st.sampled_from(HASHES))),
            to_hash=draw(_maybe(st.sampled_from(HASHES))),
            started_at=draw(_maybe(instants())),
            stored_at=draw(instants()),
            agent=draw(_maybe(st.sampled_from(AGENTS))),
        )
        for rid in ids
    ]


CRITERIA = ("recording_ids", "call_ids", "phone_hashes", "from", "to", "agent")


@st.composite
def hold_rows(draw: st.DrawFn, recs: list[Rec]) -> HoldRow:
    """A scope of one to three criteria (so that conjunctions still match often), whose values
    mostly come from the recordings; lists may be empty, time bounds may sit exactly on a
    recording's time, one microsecond off it, or anywhere."""
    chosen = draw(st.sets(st.sampled_from(CRITERIA), min_size=1, max_size=3))

    def items(pool: list[Any]) -> list[Any]:
        return draw(st.lists(st.sampled_from(pool), max_size=3))

    times = [t for r in recs for t in (r.started_at, r.stored_at) if t is not None]

    def bound() -> datetime:
        if draw(st.booleans()):
            return draw(instants())
        at = draw(st.sampled_from(times)) + timedelta(microseconds=draw(st.sampled_from([0, 0, 1, -1])))
        return at.astimezone(draw(st.sampled_from(_ZONES)))

    return HoldRow(
        id=draw(st.uuids()),
        scope_recording_ids=items([*(r.id for r in recs), uuid.UUID(int=99)])
        if "recording_ids" in chosen
        else None,
        scope_call_ids=items([*(r.call_id for r in recs), *CALL_IDS]) if "call_ids" in chosen else None,
        scope_phone_hashes=items(
            [*(h for r in recs for h in (r.from_hash, r.to_hash) if h), *HASHES, b"\x00" * 32]
        )
        if "phone_hashes" in chosen
        else None,
        scope_from=bound() if "from" in chosen else None,
        scope_to=bound() if "to" in chosen else None,
        scope_agent=draw(st.sampled_from([*(r.agent for r in recs if r.agent is not None), *AGENTS]))
        if "agent" in chosen
        else None,
    )


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[Rec], list[HoldRow]]:
    recs = draw(recordings())
    return recs, draw(st.lists(hold_rows(recs), min_size=1, max_size=4))


# --- database plumbing ----------------------------------------------------------------------


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


async def _admin(pg_root_url: str, sql: str) -> None:
    conn = await asyncpg.connect(pg_root_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def insert_recording(conn: Conn, r: Rec) -> None:
    await conn.execute(
        """INSERT INTO recordings (id, tenant, provider, call_id, provider_recording_id, state,
                                   started_at, stored_at, expires_at, from_hash, to_hash, agent)
           VALUES ($1, $2, 'twilio', $3, $4, 'stored', $5, $6::timestamptz,
                   $6::timestamptz + interval '90 days', $7, $8, $9)""",
        r.id,
        r.tenant,
        r.call_id,
        "RE" + r.id.hex,
        r.started_at,
        r.stored_at,
        r.from_hash,
        r.to_hash,
        r.agent,
    )


async def insert_hold(conn: Conn, h: HoldRow, *, tenant: str = TENANT) -> None:
    await conn.execute(
        """INSERT INTO legal_holds (id, tenant, matter, reason, created_by, scope_recording_ids,
                                    scope_call_ids, scope_phone_hashes, scope_from, scope_to, scope_agent)
           VALUES ($1, $2, 'matter', 'reason', 'test', $3, $4, $5, $6, $7, $8)""",
        h.id,
        tenant,
        h.scope_recording_ids,
        h.scope_call_ids,
        h.scope_phone_hashes,
        h.scope_from,
        h.scope_to,
        h.scope_agent,
    )


def as_hold(h: HoldRow) -> db_holds.Hold:
    return db_holds.Hold(
        id=h.id,
        tenant=TENANT,
        matter="matter",
        reason="reason",
        created_by="test",
        created_at=BASE,
        review_at=None,
        scope_recording_ids=h.scope_recording_ids,
        scope_call_ids=h.scope_call_ids,
        scope_phone_hashes=h.scope_phone_hashes,
        scope_from=h.scope_from,
        scope_to=h.scope_to,
        scope_agent=h.scope_agent,
        released_at=None,
        released_by=None,
        release_reason=None,
    )


async def compare(conn: Conn, recs: list[Rec], hold_list: list[HoldRow]) -> None:
    """Insert, evaluate every (hold, recording) pair in SQL and in Python, roll back."""
    tx = conn.transaction()
    await tx.start()
    try:
        for r in recs:
            await insert_recording(conn, r)
        for h in hold_list:
            await insert_hold(conn, h)
        rows = await conn.fetch(
            "SELECT h.id AS hold_id, r.id AS rec_id, hold_covers(h, r) AS covered "
            "FROM legal_holds h CROSS JOIN recordings r"
        )
        assert len(rows) == len(recs) * len(hold_list)
        by_id = {r.id: r for r in recs}
        holds_by_id = {h.id: h for h in hold_list}
        for row in rows:
            rec, hold = by_id[row["rec_id"]], holds_by_id[row["hold_id"]]
            expected = rec.tenant == TENANT and covers(hold.scope(), rec.facts())
            assert (row["covered"] is True) == expected, (
                f"hold_covers says {row['covered']}, covers() says {expected}\n"
                f"  hold {hold}\n  recording {rec}"
            )
        # The scope preview evaluates the rule on a hold built in SQL (ROW(...)::legal_holds).
        for h in hold_list:
            expected_count = sum(1 for r in recs if r.tenant == TENANT and covers(h.scope(), r.facts()))
            assert await db_holds.count_covered(conn, as_hold(h)) == expected_count, f"preview of {h}"
    finally:
        await tx.rollback()


# --- the tests ------------------------------------------------------------------------------


def test_sql_hold_covers_agrees_with_the_pure_rule(pg_root_url: str, pg_template: str) -> None:
    name = f"callrec_rule_{uuid.uuid4().hex[:12]}"
    with asyncio.Runner() as runner:
        runner.run(_admin(pg_root_url, f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
        try:
            conn: asyncpg.Connection = runner.run(asyncpg.connect(_with_database(pg_root_url, name)))
            try:

                @settings(
                    max_examples=200,
                    deadline=None,
                    database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
                )
                @given(case=cases())
                def agree(case: tuple[list[Rec], list[HoldRow]]) -> None:
                    runner.run(compare(conn, *case))

                agree()
            finally:
                runner.run(conn.close())
        finally:
            runner.run(_admin(pg_root_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def test_a_scope_without_any_criterion_is_refused_by_the_table_and_covers_nothing(
    db: asyncpg.Pool,
) -> None:
    assert not covers(Scope(), Facts(IDS[0], "CA1", HASHES[0], None, BASE, "agent-1"))
    empty = HoldRow(uuid.uuid4(), None, None, None, None, None, None)
    async with db.acquire() as conn:
        with pytest.raises(asyncpg.CheckViolationError):
            await insert_hold(conn, empty)
        assert await conn.fetchval("SELECT count(*) FROM legal_holds") == 0
