"""Portal pages for the privacy, legal, auditor and admin roles: legal holds, deletion requests,
quarantine review, the audit log, dead ingest jobs, users and API tokens.

They use the same services as the API (callrec.retention.service, callrec.db.*), so a hold placed
here and one placed through the API are the same thing, with the same audit entries.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from callrec.api.auth import SCOPES
from callrec.api.body import parse_time
from callrec.appkeys import config_key, db_key, keys_key
from callrec.consent import quarantine
from callrec.db import audit, deletions, holds, jobs, recordings, staff, tokens
from callrec.errors import BadRequest
from callrec.ingest.webhooks import normalise_e164
from callrec.portal import roles
from callrec.portal.sessions import redirect, session_key
from callrec.retention import service


def _user(request: web.Request) -> staff.StaffUser:
    return request[session_key].user


def _actor(request: web.Request) -> str:
    return f"staff:{_user(request).id}"


def _ctx(request: web.Request, **values: Any) -> dict[str, Any]:
    session = request[session_key]
    return {"session": session, "csrf_token": session.csrf_token, "now": datetime.now(UTC), **values}


def _text(form: Any, name: str, *, label: str, required: bool = True, max_length: int = 500) -> str | None:
    value = str(form.get(name, "")).strip()
    if not value:
        if required:
            raise BadRequest(f"{label} is required.")
        return None
    if len(value) > max_length:
        raise BadRequest(f"{label} is at most {max_length} characters.")
    return value


def _uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise web.HTTPNotFound() from None


# --- legal holds (legal) ------------------------------------------------------------------------


async def _scope_from_form(request: web.Request, form: Any) -> dict[str, Any]:
    tenant = _user(request).tenant

    def lines(name: str) -> list[str] | None:
        values = [v.strip() for v in str(form.get(name, "")).replace(",", "\n").splitlines() if v.strip()]
        return values or None

    recording_ids = None
    if ids := lines("recording_ids"):
        try:
            recording_ids = [uuid.UUID(v) for v in ids]
        except ValueError:
            raise BadRequest("Recording ids must be ids as shown on the recording page.") from None
    phone_hashes = None
    if phones := lines("phones"):
        async with request.app[db_key].acquire() as conn:
            phone_hashes = [
                await request.app[keys_key].phone_hash(
                    conn, tenant, normalise_e164(p, field="A phone number")
                )
                for p in phones
            ]

    def when(name: str) -> datetime | None:
        raw = str(form.get(name, "")).strip()
        return parse_time(raw, name.title(), default_utc=True) if raw else None

    time_from, time_to = when("from"), when("to")
    if time_from and time_to and time_from >= time_to:
        raise BadRequest("From must be before To.")
    scope: dict[str, Any] = {
        "recording_ids": recording_ids,
        "call_ids": lines("call_ids"),
        "phone_hashes": phone_hashes,
        "time_from": time_from,
        "time_to": time_to,
        "agent": str(form.get("agent", "")).strip() or None,
    }
    if all(v is None for v in scope.values()):
        raise BadRequest(
            "A hold needs at least one scope: recordings, calls, phone numbers, a time range or an agent."
        )
    return scope


async def holds_page(request: web.Request) -> web.Response:
    roles.require(_user(request).role, roles.HOLDS)
    async with request.app[db_key].acquire() as conn:
        found = await holds.list_holds(conn, tenant=_user(request).tenant, active=None, limit=500)
        counts = {h.id: await holds.count_covered(conn, h) for h in found if h.active}
    return aiohttp_jinja2.render_template(
        "holds.html", request, _ctx(request, holds=found, counts=counts, preview=None, form={})
    )


async def holds_post(request: web.Request) -> web.Response:
    """Preview the scope ("this hold covers 42 recordings") or place the hold."""
    user = _user(request)
    roles.require(user.role, roles.HOLDS)
    form = await request.post()
    scope = await _scope_from_form(request, form)
    if form.get("action") == "preview":
        async with request.app[db_key].acquire() as conn:
            covers = await holds.count_covered(conn, holds.Hold.for_scope(user.tenant, **scope))
            found = await holds.list_holds(conn, tenant=user.tenant, active=None, limit=500)
            counts = {h.id: await holds.count_covered(conn, h) for h in found if h.active}
        return aiohttp_jinja2.render_template(
            "holds.html", request, _ctx(request, holds=found, counts=counts, preview=covers, form=form)
        )
    matter = _text(form, "matter", label="Matter", max_length=200)
    reason = _text(form, "reason", label="Reason", max_length=2000)
    assert matter is not None and reason is not None
    async with request.app[db_key].acquire() as conn, conn.transaction():
        await service.place_hold(
            conn,
            tenant=user.tenant,
            matter=matter,
            reason=reason,
            actor=_actor(request),
            review_at=None,
            recording_ids=scope["recording_ids"],
            call_ids=scope["call_ids"],
            phone_hashes=scope["phone_hashes"],
            time_from=scope["time_from"],
            time_to=scope["time_to"],
            agent=scope["agent"],
            max_attempts=request.app[config_key].ingest.max_attempts,
        )
    return redirect("/portal/holds")


async def hold_release(request: web.Request) -> web.Response:
    user = _user(request)
    roles.require(user.role, roles.HOLDS)
    form = await request.post()
    reason = _text(form, "reason", label="The reason for the release")
    assert reason is not None
    async with request.app[db_key].acquire() as conn, conn.transaction():
        hold, _ = await service.release_hold(
            conn,
            tenant=user.tenant,
            hold_id=_uuid(request.match_info["id"]),
            actor=_actor(request),
            reason=reason,
            max_attempts=request.app[config_key].ingest.max_attempts,
        )
    if hold is None:
        raise web.HTTPNotFound()
    return redirect("/portal/holds")


# --- deletion requests (privacy) ----------------------------------------------------------------


async def deletions_page(request: web.Request) -> web.Response:
    user = _user(request)
    roles.require(user.role, roles.DELETIONS)
    async with request.app[db_key].acquire() as conn:
        found = await deletions.list_requests(conn, tenant=user.tenant, status=None, overdue=None, limit=500)
    now = datetime.now(UTC)
    # Overdue first, then by due date: the queue a privacy officer works down.
    found.sort(key=lambda r: (not (r.status in deletions.OPEN_STATUSES and r.due_at < now), r.due_at))
    return aiohttp_jinja2.render_template(
        "deletions.html", request, _ctx(request, requests=found, open_statuses=deletions.OPEN_STATUSES)
    )


async def deletions_post(request: web.Request) -> web.Response:
    """A deletion request for a caller who phoned in (by phone number or call id)."""
    user = _user(request)
    roles.require(user.role, roles.DELETIONS)
    form = await request.post()
    tenant = request.app[config_key].tenants[user.tenant]
    phone = _text(form, "phone", label="Phone number", required=False)
    call_id = _text(form, "call_id", label="Call id", required=False, max_length=128)
    if bool(phone) == bool(call_id):
        raise BadRequest("Give either the caller's phone number or a call id.")
    law = str(form.get("law", "gdpr"))
    if law not in ("gdpr", "ccpa"):
        raise BadRequest("Choose GDPR or CCPA.")
    phone_hash = None
    if phone:
        async with request.app[db_key].acquire() as conn:
            phone_hash = await request.app[keys_key].phone_hash(
                conn, user.tenant, normalise_e164(phone, field="Phone")
            )
    now = datetime.now(UTC)
    req = deletions.DeletionRequest(
        id=uuid.uuid4(),
        tenant=user.tenant,
        subject_kind="phone" if phone else "call_id",
        subject_phone_hash=phone_hash,
        subject_call_id=call_id,
        subject_recording_ids=None,
        law=law,
        reason=_text(form, "reason", label="Reason", required=False, max_length=2000),
        external_ref=_text(form, "external_ref", label="Reference", required=False, max_length=200),
        callback_url=None,
        idempotency_key=None,
        request_hash=uuid.uuid4().hex,
        status="received",
        rejection_reason=None,
        created_by=_actor(request),
        received_at=now,
        due_at=now + (tenant.deletion_due_ccpa if law == "ccpa" else tenant.deletion_due),
        completed_at=None,
        updated_at=now,
    )
    async with request.app[db_key].acquire() as conn, conn.transaction():
        created, _ = await deletions.insert(conn, req)
        await service.accept_request(
            conn,
            created,
            actor=_actor(request),
            max_attempts=request.app[config_key].ingest.max_attempts,
            via="portal",
        )
    return redirect(f"/portal/deletions/{created.id}")


async def deletion_page(request: web.Request) -> web.Response:
    user = _user(request)
    roles.require(user.role, roles.DELETIONS)
    async with request.app[db_key].acquire() as conn:
        req = await deletions.get(conn, tenant=user.tenant, request_id=_uuid(request.match_info["id"]))
        if req is None:
            raise web.HTTPNotFound()
        outcomes = await deletions.outcomes(conn, request_id=req.id)
        matters = {}
        for hold_id in {o.hold_id for o in outcomes if o.hold_id}:
            hold = await holds.get(conn, tenant=user.tenant, hold_id=hold_id)
            matters[hold_id] = hold.matter if hold else "?"
    return aiohttp_jinja2.render_template(
        "deletion.html", request, _ctx(request, req=req, outcomes=outcomes, matters=matters)
    )


# --- quarantine review (privacy) ----------------------------------------------------------------


async def quarantine_page(request: web.Request) -> web.Response:
    user = _user(request)
    roles.require(user.role, roles.QUARANTINE_REVIEW)
    async with request.app[db_key].acquire() as conn:
        found = await recordings.page(
            conn,
            tenant=user.tenant,
            filters=recordings.RecordingFilter(states=("quarantined",), include_restricted=True),
            after=None,
            limit=200,
        )
    return aiohttp_jinja2.render_template("quarantine.html", request, _ctx(request, items=found))


async def quarantine_decide(request: web.Request) -> web.Response:
    user = _user(request)
    roles.require(user.role, roles.QUARANTINE_REVIEW)
    form = await request.post()
    decision = form.get("decision")
    reason = _text(form, "reason", label="The reason for your decision")
    assert reason is not None  # required=True
    rid = _uuid(request.match_info["id"])
    config = request.app[config_key]
    async with request.app[db_key].acquire() as conn, conn.transaction():
        rec = await recordings.get(conn, tenant=user.tenant, recording_id=rid)
        if rec is None or rec.state != "quarantined":
            raise web.HTTPNotFound()
        if decision == "approve":
            await quarantine.approve(conn, config, rec, actor=_actor(request), reason=reason, via="portal")
        elif decision == "reject":
            result = await quarantine.reject(
                conn, config, rec, actor=_actor(request), reason=reason, via="portal"
            )
            if result.outcome == "held":
                raise BadRequest("A legal hold covers this recording; it cannot be destroyed now.")
        else:
            raise BadRequest("Choose approve or reject.")
    return redirect("/portal/quarantine")


# --- audit log (auditor) -----------------------------------------------------------------------


async def _audit_rows(request: web.Request, limit: int) -> list[audit.AuditEntry]:
    q = request.query
    recording = None
    if q.get("recording"):
        try:
            recording = uuid.UUID(q["recording"])
        except ValueError:
            raise BadRequest("The recording filter must be a recording id.") from None
    async with request.app[db_key].acquire() as conn:
        return await audit.search(
            conn,
            tenant=_user(request).tenant,
            actor=q.get("actor") or None,
            action=q.get("action") or None,
            recording_id=recording,
            limit=limit,
        )


async def audit_page(request: web.Request) -> web.Response:
    roles.require(_user(request).role, roles.AUDIT_LOG)
    rows = await _audit_rows(request, 500)
    async with request.app[db_key].acquire() as conn:
        verified = await audit.verify(conn)
    return aiohttp_jinja2.render_template(
        "audit.html",
        request,
        _ctx(
            request,
            rows=rows,
            q=request.query,
            verified=verified,
            actions=[a.value for a in audit.AuditAction],
        ),
    )


async def audit_csv(request: web.Request) -> web.Response:
    roles.require(_user(request).role, roles.AUDIT_LOG)
    rows = await _audit_rows(request, 100_000)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["seq", "at", "actor", "action", "recording_id", "details", "hash", "prev_hash"])
    for r in rows:
        writer.writerow(
            [
                r.seq,
                r.at.isoformat(),
                r.actor,
                r.action,
                r.recording_id or "",
                json.dumps(r.details, sort_keys=True),
                r.hash.hex(),
                r.prev_hash.hex(),
            ]
        )
    return web.Response(
        text=out.getvalue(),
        content_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="callrec-audit.csv"'},
    )


# --- dead jobs and administration (admin) ------------------------------------------------------


async def jobs_page(request: web.Request) -> web.Response:
    user = _user(request)
    roles.require(user.role, roles.DEAD_JOBS)
    async with request.app[db_key].acquire() as conn:
        dead = await jobs.list_jobs(conn, state="dead", tenant=user.tenant, limit=200)
    return aiohttp_jinja2.render_template("jobs.html", request, _ctx(request, jobs=dead))


async def job_retry(request: web.Request) -> web.Response:
    user = _user(request)
    roles.require(user.role, roles.DEAD_JOBS)
    try:
        job_id = int(request.match_info["id"])
    except ValueError:
        raise web.HTTPNotFound() from None
    async with request.app[db_key].acquire() as conn, conn.transaction():
        job = await jobs.retry_dead(conn, job_id, tenant=user.tenant)
        if job is None:
            raise web.HTTPNotFound()
        await audit.record(
            conn,
            tenant=user.tenant,
            actor=_actor(request),
            action=audit.AuditAction.INGEST_RETRIED,
            details={"job_id": job.id, "kind": job.kind, "via": "portal"},
        )
    return redirect("/portal/jobs")


async def _admin(request: web.Request, *, new_token: str | None = None) -> web.Response:
    user = _user(request)
    async with request.app[db_key].acquire() as conn:
        users = await staff.list_for(conn, tenant=user.tenant)
        api_tokens = await tokens.list_for(conn, tenant=user.tenant)
    tenant = request.app[config_key].tenants[user.tenant]
    return aiohttp_jinja2.render_template(
        "admin.html",
        request,
        _ctx(
            request,
            users=users,
            tokens=api_tokens,
            scopes=SCOPES,
            tenant=tenant,
            new_token=new_token,
            retention_days=tenant.retention // timedelta(days=1),
        ),
    )


async def admin_page(request: web.Request) -> web.Response:
    roles.require(_user(request).role, roles.ADMIN)
    return await _admin(request)


async def token_create(request: web.Request) -> web.Response:
    user = _user(request)
    roles.require(user.role, roles.ADMIN)
    form = await request.post()
    name = _text(form, "name", label="Token name", max_length=100)
    scopes = sorted({str(s) for s in form.getall("scope", [])})
    if not scopes or any(s not in SCOPES for s in scopes):
        raise BadRequest("Choose at least one scope.")
    assert name is not None
    async with request.app[db_key].acquire() as conn, conn.transaction():
        row, token = await tokens.create(conn, tenant=user.tenant, name=name, scopes=scopes)
        await audit.record(
            conn,
            tenant=user.tenant,
            actor=_actor(request),
            action=audit.AuditAction.TOKEN_CREATED,
            details={"token_id": str(row.id), "name": name, "scopes": scopes, "via": "portal"},
        )
    # The token is shown once, on this response only; it is never stored.
    return await _admin(request, new_token=token)


async def token_revoke(request: web.Request) -> web.Response:
    user = _user(request)
    roles.require(user.role, roles.ADMIN)
    async with request.app[db_key].acquire() as conn, conn.transaction():
        if not await tokens.revoke(conn, tenant=user.tenant, token_id=_uuid(request.match_info["id"])):
            raise web.HTTPNotFound()
        await audit.record(
            conn,
            tenant=user.tenant,
            actor=_actor(request),
            action=audit.AuditAction.TOKEN_REVOKED,
            details={"token_id": request.match_info["id"], "via": "portal"},
        )
    return redirect("/portal/admin")
