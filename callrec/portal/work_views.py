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
from urllib.parse import urlencode

import aiohttp_jinja2
from aiohttp import web

from callrec.anchoring.service import last_anchor
from callrec.api.body import parse_time
from callrec.appkeys import anchors_key, config_key, db_key, keys_key
from callrec.consent import quarantine
from callrec.db import audit, deletions, holds, jobs, recordings, staff
from callrec.errors import BadRequest
from callrec.ingest.webhooks import normalise_e164
from callrec.portal import roles
from callrec.portal.chain import chain_key
from callrec.portal.forms import actor, form_text, page_context, path_uuid, staff_user
from callrec.portal.rights_views import subject_from_form
from callrec.portal.sessions import redirect
from callrec.retention import service

# --- legal holds (legal) ------------------------------------------------------------------------


async def _scope_from_form(request: web.Request, form: Any) -> dict[str, Any]:
    tenant = staff_user(request).tenant

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
    roles.require(staff_user(request).role, roles.HOLDS)
    async with request.app[db_key].acquire() as conn:
        found = await holds.list_holds(conn, tenant=staff_user(request).tenant, active=None, limit=500)
        counts = {h.id: await holds.count_covered(conn, h) for h in found if h.active}
    return aiohttp_jinja2.render_template(
        "holds.html", request, page_context(request, holds=found, counts=counts, preview=None, form={})
    )


async def holds_post(request: web.Request) -> web.Response:
    """Preview the scope ("this hold covers 42 recordings") or place the hold."""
    user = staff_user(request)
    roles.require(user.role, roles.HOLDS)
    form = await request.post()
    scope = await _scope_from_form(request, form)
    if form.get("action") == "preview":
        async with request.app[db_key].acquire() as conn:
            covers = await holds.count_covered(conn, holds.Hold.for_scope(user.tenant, **scope))
            found = await holds.list_holds(conn, tenant=user.tenant, active=None, limit=500)
            counts = {h.id: await holds.count_covered(conn, h) for h in found if h.active}
        return aiohttp_jinja2.render_template(
            "holds.html",
            request,
            page_context(request, holds=found, counts=counts, preview=covers, form=form),
        )
    matter = form_text(form, "matter", label="Matter", max_length=200)
    reason = form_text(form, "reason", label="Reason", max_length=2000)
    assert matter is not None and reason is not None
    async with request.app[db_key].acquire() as conn, conn.transaction():
        await service.place_hold(
            conn,
            tenant=user.tenant,
            matter=matter,
            reason=reason,
            actor=actor(request),
            review_at=None,
            max_attempts=request.app[config_key].ingest.max_attempts,
            **scope,
        )
    return redirect("/portal/holds")


async def hold_release(request: web.Request) -> web.Response:
    user = staff_user(request)
    roles.require(user.role, roles.HOLDS)
    form = await request.post()
    reason = form_text(form, "reason", label="The reason for the release")
    assert reason is not None
    async with request.app[db_key].acquire() as conn, conn.transaction():
        hold, _ = await service.release_hold(
            conn,
            tenant=user.tenant,
            hold_id=path_uuid(request),
            actor=actor(request),
            reason=reason,
            max_attempts=request.app[config_key].ingest.max_attempts,
        )
    if hold is None:
        raise web.HTTPNotFound()
    return redirect("/portal/holds")


# --- deletion requests (privacy) ----------------------------------------------------------------


async def deletions_page(request: web.Request) -> web.Response:
    user = staff_user(request)
    roles.require(user.role, roles.DELETIONS)
    async with request.app[db_key].acquire() as conn:
        found = await deletions.list_requests(conn, tenant=user.tenant, status=None, overdue=None, limit=500)
    now = datetime.now(UTC)
    # Overdue first, then by due date: the queue a privacy officer works down.
    found.sort(key=lambda r: (not (r.status in deletions.OPEN_STATUSES and r.due_at < now), r.due_at))
    return aiohttp_jinja2.render_template(
        "deletions.html",
        request,
        page_context(request, requests=found, open_statuses=deletions.OPEN_STATUSES),
    )


async def deletions_post(request: web.Request) -> web.Response:
    """A deletion request for a caller who phoned in (by phone number or call id)."""
    user = staff_user(request)
    roles.require(user.role, roles.DELETIONS)
    form = await request.post()
    tenant = request.app[config_key].tenants[user.tenant]
    subject = await subject_from_form(request, form)
    law = str(form.get("law", "gdpr"))
    if law not in ("gdpr", "ccpa"):
        raise BadRequest("Choose GDPR or CCPA.")
    req = service.new_request(
        tenant,
        subject=subject,
        law=law,
        actor=actor(request),
        request_hash=uuid.uuid4().hex,  # a portal request is never replayed: nothing to compare
        reason=form_text(form, "reason", label="Reason", required=False, max_length=2000),
        external_ref=form_text(form, "external_ref", label="Reference", required=False, max_length=200),
    )
    async with request.app[db_key].acquire() as conn, conn.transaction():
        created, _ = await deletions.insert(conn, req)
        await service.accept_request(
            conn,
            created,
            actor=actor(request),
            max_attempts=request.app[config_key].ingest.max_attempts,
            via="portal",
        )
    return redirect(f"/portal/deletions/{created.id}")


async def deletion_page(request: web.Request) -> web.Response:
    user = staff_user(request)
    roles.require(user.role, roles.DELETIONS)
    async with request.app[db_key].acquire() as conn:
        req = await deletions.get(conn, tenant=user.tenant, request_id=path_uuid(request))
        if req is None:
            raise web.HTTPNotFound()
        outcomes = await deletions.outcomes(conn, request_id=req.id)
        matters = {}
        for hold_id in {o.hold_id for o in outcomes if o.hold_id}:
            hold = await holds.get(conn, tenant=user.tenant, hold_id=hold_id)
            matters[hold_id] = hold.matter if hold else "?"
    return aiohttp_jinja2.render_template(
        "deletion.html", request, page_context(request, req=req, outcomes=outcomes, matters=matters)
    )


# --- quarantine review (privacy) ----------------------------------------------------------------


async def quarantine_page(request: web.Request) -> web.Response:
    user = staff_user(request)
    roles.require(user.role, roles.QUARANTINE_REVIEW)
    async with request.app[db_key].acquire() as conn:
        found = await recordings.page(
            conn,
            tenant=user.tenant,
            filters=recordings.RecordingFilter(states=("quarantined",), include_restricted=True),
            after=None,
            limit=200,
        )
    return aiohttp_jinja2.render_template("quarantine.html", request, page_context(request, items=found))


async def quarantine_decide(request: web.Request) -> web.Response:
    user = staff_user(request)
    roles.require(user.role, roles.QUARANTINE_REVIEW)
    form = await request.post()
    decision = form.get("decision")
    reason = form_text(form, "reason", label="The reason for your decision")
    assert reason is not None  # required=True
    rid = path_uuid(request)
    config = request.app[config_key]
    async with request.app[db_key].acquire() as conn, conn.transaction():
        rec = await recordings.get(conn, tenant=user.tenant, recording_id=rid)
        if rec is None or rec.state != "quarantined":
            raise web.HTTPNotFound()
        if decision == "approve":
            await quarantine.approve(conn, config, rec, actor=actor(request), reason=reason, via="portal")
        elif decision == "reject":
            result = await quarantine.reject(
                conn, config, rec, actor=actor(request), reason=reason, via="portal"
            )
            if result.outcome == "held":
                raise BadRequest("A legal hold covers this recording; it cannot be destroyed now.")
        else:
            raise BadRequest("Choose approve or reject.")
    return redirect("/portal/quarantine")


# --- audit log (auditor) -----------------------------------------------------------------------


AUDIT_PAGE = 200


async def _audit_rows(request: web.Request, limit: int) -> list[audit.AuditEntry]:
    q = request.query
    recording = None
    if q.get("recording"):
        try:
            recording = uuid.UUID(q["recording"].strip())
        except ValueError:
            raise BadRequest("The recording filter must be a recording id.") from None
    at_from = parse_time(q["from"], "From", default_utc=True) if q.get("from") else None
    at_to = parse_time(q["to"], "To", default_utc=True) if q.get("to") else None
    before = q.get("before", "")
    if before and not before.isdigit():
        raise BadRequest("The page link is not valid.")
    async with request.app[db_key].acquire() as conn:
        return await audit.search(
            conn,
            tenant=staff_user(request).tenant,
            actor=q.get("actor") or None,
            action=q.get("action") or None,
            recording_id=recording,
            limit=limit,
            at_from=at_from,
            at_to=at_to,
            before_seq=int(before) if before else None,
        )


async def _actor_names(request: web.Request) -> dict[str, str]:
    """Staff actors by name for the auditor's eyes (the log itself holds ids, never addresses)."""
    async with request.app[db_key].acquire() as conn:
        users = await staff.list_for(conn, tenant=staff_user(request).tenant)
    return {f"staff:{u.id}": u.email for u in users}


async def audit_page(request: web.Request) -> web.Response:
    roles.require(staff_user(request).role, roles.AUDIT_LOG)
    rows = await _audit_rows(request, AUDIT_PAGE + 1)
    verified = await request.app[chain_key].check(request.app[db_key], request.app[anchors_key])
    async with request.app[db_key].acquire() as conn:
        anchor = await last_anchor(conn)
    interval = request.app[config_key].audit.anchor_interval
    now = datetime.now(UTC)
    filters = {k: v for k, v in request.query.items() if v and k != "before"}
    older = urlencode({**filters, "before": rows[AUDIT_PAGE - 1].seq}) if len(rows) > AUDIT_PAGE else None
    return aiohttp_jinja2.render_template(
        "audit.html",
        request,
        page_context(
            request,
            rows=rows[:AUDIT_PAGE],
            q=request.query,
            verified=verified,
            anchor=anchor,
            anchor_age=_age(anchor.age(now)) if anchor else "",
            # Late: two intervals without a new anchor (the alert in the README fires then too).
            anchor_late=anchor is None or not anchor.authentic or anchor.age(now) > 2 * interval,
            anchor_store=request.app[anchors_key].description,
            actions=[a.value for a in audit.AuditAction],
            names=await _actor_names(request),
            export=urlencode(filters),
            older=older,
        ),
    )


def _age(age: timedelta) -> str:
    """``"3 min"``, ``"2 h 5 min"``, ``"4 days"``: how long ago, for a person."""
    minutes = max(int(age.total_seconds() // 60), 0)
    if minutes < 60:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h {minutes % 60} min"
    return f"{minutes // (24 * 60)} days"


async def audit_csv(request: web.Request) -> web.Response:
    roles.require(staff_user(request).role, roles.AUDIT_LOG)
    rows = await _audit_rows(request, 100_000)
    names = await _actor_names(request)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        ["seq", "at", "actor", "action", "recording_id", "details", "hash", "prev_hash", "actor_name"]
    )
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
                names.get(r.actor, ""),
            ]
        )
    return web.Response(
        text=out.getvalue(),
        content_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="callrec-audit.csv"'},
    )


# --- dead ingest jobs (admin) ------------------------------------------------------


async def jobs_page(request: web.Request) -> web.Response:
    user = staff_user(request)
    roles.require(user.role, roles.DEAD_JOBS)
    async with request.app[db_key].acquire() as conn:
        dead = await jobs.list_jobs(conn, state="dead", tenant=user.tenant, limit=200)
    return aiohttp_jinja2.render_template("jobs.html", request, page_context(request, jobs=dead))


async def job_retry(request: web.Request) -> web.Response:
    user = staff_user(request)
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
            actor=actor(request),
            action=audit.AuditAction.INGEST_RETRIED,
            details={"job_id": job.id, "kind": job.kind, "via": "portal"},
        )
    return redirect("/portal/jobs")
