"""``/api/v1/legal-holds``: place, list, read (with what they cover) and release holds.

Only tokens with ``holds:write`` place or release holds (the legal role); ``holds:read`` reads.
A hold's reason may name people, so it is shown to the legal role here but kept out of the audit
log and of every other API answer (deletion outcomes show the hold's id and matter only).
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from aiohttp import web

from callrec.api.auth import actor, authenticate
from callrec.api.body import json_object, optional_str, parse_time, required_str
from callrec.appkeys import config_key, db_key, keys_key
from callrec.db import holds
from callrec.errors import BadRequest, NotFound
from callrec.ingest.webhooks import normalise_e164
from callrec.retention import service

MAX_SCOPE_ITEMS = 10_000


def hold_json(hold: holds.Hold, *, covers: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": str(hold.id),
        "tenant": hold.tenant,
        "matter": hold.matter,
        "reason": hold.reason,
        "created_by": hold.created_by,
        "created_at": hold.created_at.isoformat(),
        "review_at": hold.review_at.isoformat() if hold.review_at else None,
        "active": hold.active,
        "scope": {
            "recording_ids": [str(r) for r in hold.scope_recording_ids] if hold.scope_recording_ids else None,
            "call_ids": hold.scope_call_ids,
            # Phone numbers are matched through keyed hashes and never shown back.
            "phones": len(hold.scope_phone_hashes) if hold.scope_phone_hashes else None,
            "from": hold.scope_from.isoformat() if hold.scope_from else None,
            "to": hold.scope_to.isoformat() if hold.scope_to else None,
            "agent": hold.scope_agent,
        },
        "released_at": hold.released_at.isoformat() if hold.released_at else None,
        "released_by": hold.released_by,
        "release_reason": hold.release_reason,
    }
    if covers is not None:
        body["covers"] = covers
    return body


def _list(raw: object, name: str) -> list[str] | None:
    if raw is None:
        return None
    if (
        not isinstance(raw, list)
        or not raw
        or len(raw) > MAX_SCOPE_ITEMS
        or not all(isinstance(v, str) for v in raw)
    ):
        raise BadRequest(
            f"scope.{name} must be a non-empty list of at most {MAX_SCOPE_ITEMS} strings",
            code="invalid_scope",
        )
    return list(dict.fromkeys(raw))


def _time(raw: object, name: str) -> datetime | None:
    if raw is None:
        return None
    try:
        return parse_time(str(raw), f"scope.{name}")
    except BadRequest as exc:
        raise BadRequest(exc.message, code="invalid_scope") from None


async def parse_scope(request: web.Request, tenant: str, raw: object) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise BadRequest("scope must be an object", code="invalid_scope")
    unknown = sorted(set(raw) - {"recording_ids", "call_ids", "phones", "from", "to", "agent"})
    if unknown:
        raise BadRequest(f"unknown scope keys: {', '.join(unknown)}", code="invalid_scope")
    recording_ids = None
    if (ids := _list(raw.get("recording_ids"), "recording_ids")) is not None:
        try:
            recording_ids = [uuid.UUID(v) for v in ids]
        except ValueError:
            raise BadRequest("scope.recording_ids must be recording ids", code="invalid_scope") from None
    phone_hashes = None
    if (phones := _list(raw.get("phones"), "phones")) is not None:
        async with request.app[db_key].acquire() as conn:
            phone_hashes = [
                await request.app[keys_key].phone_hash(conn, tenant, normalise_e164(p, field="scope.phones"))
                for p in phones
            ]
    agent = raw.get("agent")
    if agent is not None and (not isinstance(agent, str) or not agent or len(agent) > 64):
        raise BadRequest("scope.agent must be an agent id", code="invalid_scope")
    time_from, time_to = _time(raw.get("from"), "from"), _time(raw.get("to"), "to")
    if time_from and time_to and time_from >= time_to:
        raise BadRequest("scope.from must be before scope.to", code="invalid_scope")
    scope: dict[str, Any] = {
        "recording_ids": recording_ids,
        "call_ids": _list(raw.get("call_ids"), "call_ids"),
        "phone_hashes": phone_hashes,
        "time_from": time_from,
        "time_to": time_to,
        "agent": agent,
    }
    if all(v is None for v in scope.values()):
        raise BadRequest("a hold needs at least one scope criterion", code="invalid_scope")
    return scope


async def create_hold(request: web.Request) -> web.Response:
    token = await authenticate(request, "holds:write")
    body = await json_object(request)
    unknown = sorted(set(body) - {"matter", "reason", "review_at", "scope"})
    if unknown:
        raise BadRequest(f"unknown keys: {', '.join(unknown)}", code="invalid_body")
    matter = required_str(body, "matter", max_length=200)
    reason = required_str(body, "reason", max_length=2000)
    review_raw = optional_str(body, "review_at", max_length=10)
    try:
        review_at = date.fromisoformat(review_raw) if review_raw else None
    except ValueError:
        raise BadRequest("review_at must be a date such as 2027-03-31", code="invalid_body") from None
    scope = await parse_scope(request, token.tenant, body.get("scope"))
    async with request.app[db_key].acquire() as conn, conn.transaction():
        hold, covers = await service.place_hold(
            conn,
            tenant=token.tenant,
            matter=matter,
            reason=reason,
            actor=actor(token),
            review_at=review_at,
            max_attempts=request.app[config_key].ingest.max_attempts,
            **scope,
        )
    return web.json_response(hold_json(hold, covers=covers), status=201)


async def preview_hold(request: web.Request) -> web.Response:
    """How many live recordings a scope covers now ("this hold covers 42 recordings")."""
    token = await authenticate(request, "holds:write")
    body = await json_object(request)
    scope = await parse_scope(request, token.tenant, body.get("scope"))
    probe = holds.Hold.for_scope(token.tenant, **scope)
    async with request.app[db_key].acquire() as conn:
        return web.json_response({"covers": await holds.count_covered(conn, probe)})


async def list_holds(request: web.Request) -> web.Response:
    token = await authenticate(request, "holds:read")
    active_raw = request.query.get("active")
    if active_raw not in (None, "true", "false"):
        raise BadRequest("active must be true or false", code="invalid_parameter")
    active = None if active_raw is None else active_raw == "true"
    async with request.app[db_key].acquire() as conn:
        found = await holds.list_holds(conn, tenant=token.tenant, active=active, limit=500)
    return web.json_response({"items": [hold_json(h) for h in found]})


def _hold_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["id"])
    except ValueError:
        raise NotFound("no such legal hold") from None


async def get_hold(request: web.Request) -> web.Response:
    token = await authenticate(request, "holds:read")
    hold_id = _hold_id(request)
    async with request.app[db_key].acquire() as conn:
        hold = await holds.get(conn, tenant=token.tenant, hold_id=hold_id)
        if hold is None:
            raise NotFound("no such legal hold")
        covered = await holds.covered_recording_ids(conn, tenant=token.tenant, hold_id=hold_id, limit=1000)
        count = await holds.count_covered(conn, hold)
    body = hold_json(hold, covers=count)
    body["recordings"] = [str(r) for r in covered]
    body["recordings_truncated"] = count > len(covered)
    return web.json_response(body)


async def release_hold(request: web.Request) -> web.Response:
    token = await authenticate(request, "holds:write")
    hold_id = _hold_id(request)
    body = await json_object(request)
    reason = required_str(body, "reason", max_length=2000)
    async with request.app[db_key].acquire() as conn, conn.transaction():
        hold, erased = await service.release_hold(
            conn,
            tenant=token.tenant,
            hold_id=hold_id,
            actor=actor(token),
            reason=reason,
            max_attempts=request.app[config_key].ingest.max_attempts,
        )
        if hold is None:
            existing = await holds.get(conn, tenant=token.tenant, hold_id=hold_id)
            if existing is None:
                raise NotFound("no such legal hold")
            raise BadRequest("the hold was released already", code="already_released", status=409)
    result = hold_json(hold)
    result["erased_now"] = [str(r) for r in erased]
    return web.json_response(result)
