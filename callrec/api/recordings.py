"""``/api/v1/recordings``: list, read and listen. Every look writes an audit entry."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web

from callrec import rights
from callrec.api.auth import InsufficientScope, actor, authenticate
from callrec.api.body import clean_text, json_object, parse_time, read_body, required_str
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


# Filters that are not personal data: the list takes them in its query string. A phone number is
# personal data, and a URL is written to the access logs of every proxy, load balancer and ingress
# controller it passes (DESIGN rule 3), so it travels only in the search's body.
URL_FILTERS = frozenset({"call_id", "from", "to", "agent", "state"})
PERSONAL_FILTERS = frozenset({"phone"})
PAGING = frozenset({"limit", "cursor"})
SEARCH_KEYS = URL_FILTERS | PERSONAL_FILTERS | PAGING
MAX_SEARCH_BYTES = 8 * 1024
MAX_CALL_ID = 128
MAX_AGENT = 64
SEARCH_PATH = "/api/v1/recordings/search"


@dataclass(frozen=True)
class ListRequest:
    """What a page of the list asks for, from the query string or the search's body."""

    filters: dict[str, str]  # the filters given, by name, each a string as sent
    limit: int = 50
    cursor: str | None = None


async def _page(request: web.Request, token: ApiToken, wanted: ListRequest) -> web.Response:
    """One page of recordings, newest first, and its audit entry: the list and the search share it."""
    raw = wanted.filters
    after = _decode_cursor(wanted.cursor) if wanted.cursor is not None else None
    state = raw.get("state", "stored")
    if state not in STATES:
        raise BadRequest(f"state must be one of {', '.join(STATES)}", code="invalid_parameter")
    if state not in visible_states(token):
        raise InsufficientScope("quarantined recordings are visible to the quarantine:review scope only")
    stored_from = parse_time(raw["from"], "from") if "from" in raw else None
    stored_to = parse_time(raw["to"], "to") if "to" in raw else None
    async with request.app[db_key].acquire() as conn:
        phone_hash = None
        if "phone" in raw:
            e164 = normalise_e164(raw["phone"], field="phone")
            phone_hash = await request.app[keys_key].phone_hash(conn, token.tenant, e164)
        filters = recordings.RecordingFilter(
            call_id=raw.get("call_id"),
            stored_from=stored_from,
            stored_to=stored_to,
            phone_hash=phone_hash,
            agent=raw.get("agent"),
            states=(state,),
            include_restricted="restricted:read" in token.scopes,
        )
        async with conn.transaction():
            rows = await recordings.page(
                conn, tenant=token.tenant, filters=filters, after=after, limit=wanted.limit + 1
            )
            shown = rows[: wanted.limit]
            on_hold = await holds.active_for_recordings(
                conn, tenant=token.tenant, recording_ids=[r.id for r in shown]
            )
            # Listing is a look at metadata: one entry per page, naming what was shown. The filters
            # are named, never their values (a phone number must not reach the audit log).
            await audit.record(
                conn,
                tenant=token.tenant,
                actor=actor(token),
                action=audit.AuditAction.RECORDING_LISTED,
                details={
                    "count": len(shown),
                    "recording_ids": [str(r.id) for r in shown],
                    "filters": sorted(raw),
                },
            )
    return web.json_response(
        {
            "items": [recording_json(r, holds_on=on_hold.get(r.id)) for r in shown],
            # The cursor is the last row's (stored_at, id): never a filter, so never a phone number.
            "next_cursor": _encode_cursor(shown[-1]) if len(rows) > wanted.limit else None,
        }
    )


async def list_recordings(request: web.Request) -> web.Response:
    """``GET /api/v1/recordings``: the filters that are not personal, in the query string."""
    token = await authenticate(request, "recordings:read")
    personal = sorted(set(request.query) & PERSONAL_FILTERS)
    if personal:
        raise BadRequest(
            f"{', '.join(personal)} is personal data and must not travel in a URL (proxies and load "
            f"balancers log URLs): send the filters as a JSON body to POST {SEARCH_PATH}",
            code="personal_data_in_url",
        )
    unknown = sorted(set(request.query) - URL_FILTERS - PAGING)
    if unknown:
        raise BadRequest(f"unknown query parameters: {', '.join(unknown)}", code="invalid_parameter")
    limit_raw = request.query.get("limit", "50")
    if not (limit_raw.isascii() and limit_raw.isdigit()) or not 1 <= int(limit_raw) <= MAX_PAGE:
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_PAGE}", code="invalid_parameter")
    wanted = ListRequest(
        filters={k: v for k, v in request.query.items() if k in URL_FILTERS},
        limit=int(limit_raw),
        cursor=request.query.get("cursor"),
    )
    return await _page(request, token, wanted)


async def _search_body(request: web.Request) -> dict[str, Any]:
    """The search's JSON object, read up to MAX_SEARCH_BYTES whatever the Content-Length says."""
    raw = await read_body(request, MAX_SEARCH_BYTES, f"the body is over {MAX_SEARCH_BYTES // 1024} KiB")
    try:
        body = json.loads(raw)
    # UnicodeDecodeError is a ValueError; 8 KiB of "[" nests deeper than the decoder recurses.
    except (ValueError, RecursionError):
        raise BadRequest("the body must be a JSON object", code="invalid_body") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_body")
    return body


def _search_request(body: dict[str, Any]) -> ListRequest:
    unknown = sorted(set(body) - SEARCH_KEYS)
    if unknown:
        raise BadRequest(f"unknown keys: {', '.join(unknown)}", code="invalid_body")
    limit = body.get("limit", 50)
    # bool is an int to Python, not to JSON.
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE:
        raise BadRequest(f"limit must be an integer from 1 to {MAX_PAGE}", code="invalid_body")
    strings: dict[str, str] = {}
    for name, value in body.items():
        if name == "limit":
            continue
        # Messages name the key, never the value: the value may be a phone number.
        if not isinstance(value, str) or not value:
            raise BadRequest(f"{name} must be a non-empty string", code="invalid_body")
        if not clean_text(value):
            raise BadRequest(
                f"{name} holds characters that are not allowed (NUL or invalid UTF-8)",
                code="invalid_characters",
            )
        strings[name] = value
    for name, longest in (("call_id", MAX_CALL_ID), ("agent", MAX_AGENT)):
        if len(strings.get(name, "")) > longest:
            raise BadRequest(f"{name} is at most {longest} characters", code="invalid_body")
    cursor = strings.pop("cursor", None)
    return ListRequest(filters=strings, limit=limit, cursor=cursor)


async def search_recordings(request: web.Request) -> web.Response:
    """``POST /api/v1/recordings/search``: the list's filters, ``phone`` among them, as a JSON body, so
    that no phone number travels in a URL. It answers exactly as the list does; the next page is the
    same body with ``cursor`` set to the previous page's ``next_cursor``."""
    token = await authenticate(request, "recordings:read")
    wanted = _search_request(await _search_body(request))
    return await _page(request, token, wanted)


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
