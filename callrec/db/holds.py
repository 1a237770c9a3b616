"""Legal holds. Coverage is the SQL function ``hold_covers`` (migration 0003), the same rule as
:func:`callrec.retention.holds.covers`; holds are never deleted, only released."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime

import asyncpg

from callrec.db import Conn


@dataclass(frozen=True)
class Hold:
    id: uuid.UUID
    tenant: str
    matter: str
    reason: str
    created_by: str
    created_at: datetime
    review_at: date | None
    scope_recording_ids: list[uuid.UUID] | None
    scope_call_ids: list[str] | None
    scope_phone_hashes: list[bytes] | None
    scope_from: datetime | None
    scope_to: datetime | None
    scope_agent: str | None
    released_at: datetime | None
    released_by: str | None
    release_reason: str | None

    @classmethod
    def for_scope(
        cls,
        tenant: str,
        *,
        recording_ids: list[uuid.UUID] | None,
        call_ids: list[str] | None,
        phone_hashes: list[bytes] | None,
        time_from: datetime | None,
        time_to: datetime | None,
        agent: str | None,
    ) -> Hold:
        """An unsaved hold with only a scope: what a preview counts against."""
        return cls(
            id=uuid.uuid4(),
            tenant=tenant,
            matter="",
            reason="",
            created_by="",
            created_at=datetime.now(UTC),
            review_at=None,
            scope_recording_ids=recording_ids,
            scope_call_ids=call_ids,
            scope_phone_hashes=phone_hashes,
            scope_from=time_from,
            scope_to=time_to,
            scope_agent=agent,
            released_at=None,
            released_by=None,
            release_reason=None,
        )

    @property
    def active(self) -> bool:
        return self.released_at is None


_FIELDS = tuple(Hold.__dataclass_fields__)
_COLUMNS = ", ".join(_FIELDS)
_H_COLUMNS = ", ".join(f"h.{f}" for f in _FIELDS)


def _hold(row: asyncpg.Record) -> Hold:
    values = dict(row)
    if values["scope_phone_hashes"] is not None:
        values["scope_phone_hashes"] = [bytes(v) for v in values["scope_phone_hashes"]]
    return Hold(**values)


async def create(conn: Conn, hold: Hold) -> Hold:
    values = [getattr(hold, f) for f in _FIELDS]
    placeholders = ", ".join(f"${i + 1}" for i in range(len(_FIELDS)))
    row = await conn.fetchrow(
        f"INSERT INTO legal_holds ({_COLUMNS}) VALUES ({placeholders}) RETURNING *", *values
    )
    assert row is not None
    return _hold(row)


async def get(conn: Conn, *, tenant: str, hold_id: uuid.UUID) -> Hold | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM legal_holds WHERE tenant = $1 AND id = $2", tenant, hold_id
    )
    return _hold(row) if row else None


async def list_holds(conn: Conn, *, tenant: str, active: bool | None, limit: int) -> list[Hold]:
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM legal_holds
            WHERE tenant = $1 AND ($2::boolean IS NULL OR (released_at IS NULL) = $2)
            ORDER BY created_at DESC LIMIT $3""",
        tenant,
        active,
        limit,
    )
    return [_hold(r) for r in rows]


async def release(conn: Conn, *, tenant: str, hold_id: uuid.UUID, by: str, reason: str) -> Hold | None:
    """Release an active hold; None if there is no such active hold."""
    row = await conn.fetchrow(
        f"""UPDATE legal_holds SET released_at = now(), released_by = $3, release_reason = $4
            WHERE tenant = $1 AND id = $2 AND released_at IS NULL RETURNING {_COLUMNS}""",
        tenant,
        hold_id,
        by,
        reason,
    )
    return _hold(row) if row else None


async def active_covering(conn: Conn, *, tenant: str, recording_id: uuid.UUID) -> list[Hold]:
    rows = await conn.fetch(
        f"""SELECT {_H_COLUMNS} FROM legal_holds h JOIN recordings r ON r.tenant = h.tenant
            WHERE h.tenant = $1 AND r.id = $2 AND h.released_at IS NULL AND hold_covers(h, r)
            ORDER BY h.created_at""",
        tenant,
        recording_id,
    )
    return [_hold(r) for r in rows]


async def covered_recording_ids(
    conn: Conn, *, tenant: str, hold_id: uuid.UUID, live_only: bool = True, limit: int | None = None
) -> list[uuid.UUID]:
    """Recordings the hold covers (by default only those not yet destroyed), newest first."""
    rows = await conn.fetch(
        """SELECT r.id FROM recordings r JOIN legal_holds h ON h.tenant = r.tenant
           WHERE h.tenant = $1 AND h.id = $2 AND hold_covers(h, r)
             AND (NOT $3 OR r.state IN ('stored', 'quarantined'))
           ORDER BY r.stored_at DESC LIMIT $4""",
        tenant,
        hold_id,
        live_only,
        limit,
    )
    return [r["id"] for r in rows]


async def count_covered(conn: Conn, scope: Hold) -> int:
    """How many live recordings a hold with this scope would cover (the scope preview)."""
    return int(
        await conn.fetchval(
            """SELECT count(*) FROM recordings r
               WHERE r.tenant = $1 AND r.state IN ('stored', 'quarantined')
                 AND hold_covers(ROW($2::uuid, $1, '', '', '', now(), NULL::date, $3::uuid[], $4::text[],
                                     $5::bytea[], $6::timestamptz, $7::timestamptz, $8::text,
                                     NULL::timestamptz, NULL::text, NULL::text)::legal_holds, r)""",
            scope.tenant,
            scope.id,
            scope.scope_recording_ids,
            scope.scope_call_ids,
            scope.scope_phone_hashes,
            scope.scope_from,
            scope.scope_to,
            scope.scope_agent,
        )
    )


async def active_for_recordings(
    conn: Conn, *, tenant: str, recording_ids: list[uuid.UUID]
) -> dict[uuid.UUID, list[tuple[uuid.UUID, str]]]:
    """recording id -> [(hold id, matter)] of the active holds covering it."""
    rows = await conn.fetch(
        """SELECT r.id AS recording_id, h.id AS hold_id, h.matter FROM recordings r
           JOIN legal_holds h ON h.tenant = r.tenant AND h.released_at IS NULL AND hold_covers(h, r)
           WHERE r.tenant = $1 AND r.id = ANY($2::uuid[]) ORDER BY h.created_at""",
        tenant,
        recording_ids,
    )
    out: dict[uuid.UUID, list[tuple[uuid.UUID, str]]] = {}
    for r in rows:
        out.setdefault(r["recording_id"], []).append((r["hold_id"], r["matter"]))
    return out
