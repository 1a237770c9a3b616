"""``/api/v1/recordings``: list, read and listen. Every look writes an audit entry."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime
from typing import Any

from aiohttp import web

from callrec import rights
from callrec.api.auth import InsufficientScope, actor, authenticate
from callrec.api.body import json_object, parse_time, required_str
from callrec.appkeys import config_key, db_key, keys_key
from callrec.consent import quarantine
from callrec.db import Conn, audit, holds, recordings
from callrec.db.tokens import ApiToken
from callrec.errors import BadRequest, Conflict, NotFound
from callrec.ingest.webhooks import normalise_e164
from callrec.playback import serve_audio

MAX_PAGE = 200


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def mask_phone(e164: str) -> str:
    """Keep the country code and the last two digits: enough to tell calls apart on screen."""
    if not e164.startswith("+") or len(e164) < 6:
        return "•" * 4
    return e164[:3] + "•" * (len(e164) - 5) + e164[-2:]


def recording_json(
    rec: recordings.Recording,
    *,
    parties: dict[str, str] | None = None,
    holds_on: list[tuple[uuid.UUID, str]] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": str(rec.id),
        "tenant": rec.tenant,
        "provider": rec.provider,
        "call_id": rec.call_id,
        "provider_recording_id": rec.provider_recording_id,
        "state": rec.state,
        "started_at": _iso(rec.started_at),
        "stored_at": _iso(rec.stored_at),
        "expires_at": _iso(rec.expires_at),
        "duration_ms": rec.duration_ms,
        "channels": rec.channels,
        "sample_rate": rec.sample_rate,
        "format": rec.format,
        "codec": rec.codec,
        "size_bytes": rec.size_bytes,
        "sha256": rec.sha256,
        "direction": rec.direction,
        "announcement": rec.announcement,
        "consent": rec.consent,
        "agent": rec.agent,
        "jurisdiction": rec.jurisdiction,
        "policy": rec.policy,
        "redactions": rec.redactions,
        "destroyed_at": _iso(rec.destroyed_at),
        "destroy_reason": rec.destroy_reason,
        "holds": [{"id": str(hold_id), "matter": matter} for hold_id, matter in holds_on or []],
        "restricted": rec.restricted,
    }
    if parties is not None:
        body["parties"] = parties
    return body


def _encode_cursor(rec: recordings.Recording) -> str:
    raw = f"{rec.stored_at.isoformat()}|{rec.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(value: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        stamp, _, rid = raw.partition("|")
        return datetime.fromisoformat(stamp), uuid.UUID(rid)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest("the cursor is not one this API returned", code="invalid_cursor") from None


def _time_param(request: web.Request, name: str) -> datetime | None:
    value = request.query.get(name)
    return None if value is None else parse_time(value, name)


STATES = ("stored", "quarantined", "rejected", "destroyed")


def visible_states(token: ApiToken) -> tuple[str, ...]:
    """Quarantined recordings are kept from everyone but the privacy reviewers (issue 3's policy)."""
    if "quarantine:review" in token.scopes:
        return STATES
    return tuple(s for s in STATES if s != "quarantined")


async def _visible(conn: Conn, token: ApiToken, rid: uuid.UUID) -> recordings.Recording:
    rec = await recordings.get(conn, tenant=token.tenant, recording_id=rid)
    if rec is None or rec.state not in visible_states(token):
        raise NotFound("no such recording")
    # GDPR Art. 18: a restricted recording is kept, but only the privacy and legal roles open it.
    if rec.restricted and "restricted:read" not in token.scopes:
        raise NotFound("no such recording")
    return rec


def _recording_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["id"])
    except ValueError:
        raise NotFound("no such recording") from None


async def list_recordings(request: web.Request) -> web.Response:
    token = await authenticate(request, "recordings:read")
    known = {"call_id", "from", "to", "phone", "agent", "state", "limit", "cursor"}
    unknown = sorted(set(request.query) - known)
    if unknown:
        raise BadRequest(f"unknown query parameters: {', '.join(unknown)}", code="invalid_parameter")
    limit_raw = request.query.get("limit", "50")
    if not (limit_raw.isascii() and limit_raw.isdigit()) or not 1 <= int(limit_raw) <= MAX_PAGE:
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_PAGE}", code="invalid_parameter")
    limit = int(limit_raw)
    after = _decode_cursor(request.query["cursor"]) if "cursor" in request.query else None
    state = request.query.get("state", "stored")
    if state not in STATES:
        raise BadRequest(f"state must be one of {', '.join(STATES)}", code="invalid_parameter")
    if state not in visible_states(token):
        raise InsufficientScope("quarantined recordings are visible to the quarantine:review scope only")
    async with request.app[db_key].acquire() as conn:
        phone_hash = None
        if "phone" in request.query:
            e164 = normalise_e164(request.query["phone"], field="phone")
            phone_hash = await request.app[keys_key].phone_hash(conn, token.tenant, e164)
        filters = recordings.RecordingFilter(
            call_id=request.query.get("call_id"),
            stored_from=_time_param(request, "from"),
            stored_to=_time_param(request, "to"),
            phone_hash=phone_hash,
            agent=request.query.get("agent"),
            states=(state,),
            include_restricted="restricted:read" in token.scopes,
        )
        async with conn.transaction():
            rows = await recordings.page(
                conn, tenant=token.tenant, filters=filters, after=after, limit=limit + 1
            )
            shown = rows[:limit]
            on_hold = await holds.active_for_recordings(
                conn, tenant=token.tenant, recording_ids=[r.id for r in shown]
            )
            # Listing is a look at metadata: one entry per page, naming what was shown.
            await audit.record(
                conn,
                tenant=token.tenant,
                actor=actor(token),
                action=audit.AuditAction.RECORDING_LISTED,
                details={
                    "count": len(shown),
                    "recording_ids": [str(r.id) for r in shown],
                    "filters": sorted(k for k in request.query if k not in ("limit", "cursor")),
                },
            )
    return web.json_response(
        {
            "items": [recording_json(r, holds_on=on_hold.get(r.id)) for r in shown],
            "next_cursor": _encode_cursor(shown[-1]) if len(rows) > limit else None,
        }
    )


async def get_recording(request: web.Request) -> web.Response:
    token = await authenticate(request, "recordings:read")
    rid = _recording_id(request)
    keys = request.app[keys_key]
    async with request.app[db_key].acquire() as conn, conn.transaction():
        rec = await _visible(conn, token, rid)
        await audit.record(
            conn,
            tenant=token.tenant,
            actor=actor(token),
            action=audit.AuditAction.RECORDING_VIEWED,
            recording_id=rec.id,
        )
        on_hold = await holds.active_for_recordings(conn, tenant=token.tenant, recording_ids=[rec.id])
    parties = {}
    for role, sealed in (("from", rec.from_sealed), ("to", rec.to_sealed)):
        if sealed:
            parties[role] = mask_phone(await keys.open_phone(rec.tenant, str(rec.id), role, sealed))
    return web.json_response(recording_json(rec, parties=parties, holds_on=on_hold.get(rec.id)))


async def get_audio(request: web.Request) -> web.StreamResponse:
    token = await authenticate(request, "recordings:listen")
    rid = _recording_id(request)
    async with request.app[db_key].acquire() as conn:
        rec = await _visible(conn, token, rid)
    return await serve_audio(request, rec, actor=actor(token))


async def _review_body(request: web.Request) -> str:
    """The reviewer's reason: required, short, recorded in the audit entry."""
    return required_str(await json_object(request), "reason", max_length=500)


async def approve_quarantined(request: web.Request) -> web.Response:
    """The privacy reviewer keeps a quarantined recording: it becomes stored with normal retention."""
    token = await authenticate(request, "quarantine:review")
    rid = _recording_id(request)
    reason = await _review_body(request)
    async with request.app[db_key].acquire() as conn, conn.transaction():
        rec = await _visible(conn, token, rid)
        if rec.state != "quarantined":
            raise Conflict(f"the recording is {rec.state}, not quarantined")
        await quarantine.approve(conn, request.app[config_key], rec, actor=actor(token), reason=reason)
        rec = await _visible(conn, token, rid)
    return web.json_response(recording_json(rec))


async def reject_quarantined(request: web.Request) -> web.Response:
    """The privacy reviewer refuses a quarantined recording: it is destroyed, a tombstone remains."""
    token = await authenticate(request, "quarantine:review")
    rid = _recording_id(request)
    reason = await _review_body(request)
    async with request.app[db_key].acquire() as conn, conn.transaction():
        rec = await _visible(conn, token, rid)
        if rec.state != "quarantined":
            raise Conflict(f"the recording is {rec.state}, not quarantined")
        result = await quarantine.reject(
            conn, request.app[config_key], rec, actor=actor(token), reason=reason
        )
        if result.outcome == "held":
            raise Conflict("a legal hold covers this recording; it cannot be destroyed", code="legal_hold")
        rec = await _visible(conn, token, rid)
    return web.json_response(recording_json(rec))


async def _set_restriction(request: web.Request, *, restricted: bool) -> web.Response:
    token = await authenticate(request, "restrictions:write")
    rid = _recording_id(request)
    reason = required_str(await json_object(request), "reason", max_length=500)
    async with request.app[db_key].acquire() as conn, conn.transaction():
        rec = await rights.set_restriction(
            conn,
            tenant=token.tenant,
            recording_id=rid,
            restricted=restricted,
            actor=actor(token),
            reason=reason,
            via="api",
        )
    if rec is None:
        raise NotFound("no such recording")
    return web.json_response(recording_json(rec))


async def restrict(request: web.Request) -> web.Response:
    """GDPR Art. 18: keep the recording but let only the privacy and legal roles open it."""
    return await _set_restriction(request, restricted=True)


async def unrestrict(request: web.Request) -> web.Response:
    return await _set_restriction(request, restricted=False)
