"""Events: provider events that are not recordings (Twilio's RecordingStatus absent/failed), and
signed call events from the telephony system (announcement played, consent given or refused, pauses)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from callrec.db import Conn


async def record_provider_event(
    conn: Conn,
    *,
    tenant: str,
    provider: str,
    kind: str,
    call_id: str | None,
    provider_recording_id: str,
    details: dict[str, Any],
) -> bool:
    """Insert once per (tenant, provider, kind, recording); False for a repeat."""
    created = await conn.fetchval(
        """INSERT INTO provider_events
               (tenant, provider, kind, call_id, provider_recording_id, details)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (tenant, provider, kind, provider_recording_id) DO NOTHING
           RETURNING id""",
        tenant,
        provider,
        kind,
        call_id,
        provider_recording_id,
        json.dumps(details),
    )
    return created is not None


CALL_EVENT_KINDS = (
    "announcement_played",
    "consent_granted",
    "consent_declined",
    "consent_withdrawn",
    "recording_paused",
    "recording_resumed",
)


@dataclass(frozen=True)
class CallEvent:
    id: int
    tenant: str
    call_id: str
    kind: str
    at: datetime
    details: dict[str, Any]
    received_at: datetime


async def add_call_event(
    conn: Conn, *, tenant: str, call_id: str, kind: str, at: datetime, details: dict[str, Any]
) -> CallEvent | None:
    """Insert a call event; None when the same event (tenant, call, kind, time) was already received."""
    row = await conn.fetchrow(
        """INSERT INTO call_events (tenant, call_id, kind, at, details) VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (tenant, call_id, kind, at) DO NOTHING
           RETURNING id, tenant, call_id, kind, at, details, received_at""",
        tenant,
        call_id,
        kind,
        at,
        json.dumps(details),
    )
    return _call_event(row) if row else None


async def call_events(conn: Conn, *, tenant: str, call_id: str) -> list[CallEvent]:
    rows = await conn.fetch(
        """SELECT id, tenant, call_id, kind, at, details, received_at FROM call_events
           WHERE tenant = $1 AND call_id = $2 ORDER BY at, id""",
        tenant,
        call_id,
    )
    return [_call_event(r) for r in rows]


def _call_event(row: asyncpg.Record) -> CallEvent:
    values = dict(row)
    values["details"] = json.loads(values["details"])
    return CallEvent(**values)
