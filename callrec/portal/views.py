"""Portal pages: login with TOTP, recordings (list, detail, reason for access, player), logout.

Roles decide what a page shows (``callrec.portal.roles``); every look at a recording and every
listen is an audit entry, the listen carrying the reason the staff member gave first.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import aiohttp_jinja2
import segno
from aiohttp import web

from callrec.api.body import parse_time
from callrec.appkeys import db_key, keys_key
from callrec.crypto import envelope
from callrec.db import audit, holds, recordings, staff
from callrec.db.recordings import RecordingFilter
from callrec.errors import BadRequest
from callrec.ingest.webhooks import normalise_e164
from callrec.playback import serve_audio
from callrec.portal import accounts, roles, search, sessions
from callrec.portal.sessions import redirect, session_key

LOGIN_FAILED = "The e-mail address or password is wrong, or the account is locked for a while."
PAGE = 50


def _actor(request: web.Request) -> str:
    return f"staff:{request[session_key].user.id}"


def _ctx(request: web.Request, **values: Any) -> dict[str, Any]:
    session = request.get(session_key)
    return {"session": session, "csrf_token": session.csrf_token if session else "", **values}


# --- login and MFA ----------------------------------------------------------------------------


async def login_form(request: web.Request) -> web.Response:
    token = secrets.token_urlsafe(24)
    response = aiohttp_jinja2.render_template("login.html", request, {"login_csrf": token, "error": None})
    response.set_cookie(
        sessions.LOGIN_CSRF_COOKIE, token, path="/", secure=True, httponly=True, samesite="Strict"
    )
    return response


async def login(request: web.Request) -> web.Response:
    form = await request.post()
    if not sessions.csrf_valid(request.cookies.get(sessions.LOGIN_CSRF_COOKIE, ""), form.get("login_csrf")):
        return web.Response(status=403, text=sessions.CSRF_FAILED)
    email = str(form.get("email", "")).strip().lower()
    password = str(form.get("password", ""))
    now = datetime.now(UTC)
    async with request.app[db_key].acquire() as conn, conn.transaction():
        user = await staff.by_email(conn, email) if email else None
        ok = accounts.verify_password(user.password_hash if user else None, password)
        usable = (
            user is not None
            and user.disabled_at is None
            and not accounts.is_locked(user.locked_until, now=now)
        )
        if user is None or not ok or not usable:
            if user is not None and usable:  # a wrong password for a live account counts towards the lock
                state = accounts.after_failure(user.failed_logins, now=now)
                await staff.record_failure(
                    conn, user.id, failed=state.failed, locked_until=state.locked_until
                )
                await audit.record(
                    conn,
                    tenant=user.tenant,
                    actor=f"staff:{user.id}",
                    action=audit.AuditAction.USER_LOCKED
                    if state.locked_until
                    else audit.AuditAction.USER_LOGIN_FAILED,
                    details={"user_id": str(user.id)},
                )
            # The same answer, status and work for unknown, wrong and locked: nothing to enumerate.
            response = aiohttp_jinja2.render_template(
                "login.html",
                request,
                {"login_csrf": request.cookies.get(sessions.LOGIN_CSRF_COOKIE, ""), "error": LOGIN_FAILED},
                status=401,
            )
            return response
        rehash = accounts.hash_password(password) if accounts.needs_rehash(user.password_hash) else None
        await staff.record_success(conn, user.id, password_hash=rehash)
        session_id = await sessions.start(conn, user, mfa_passed=False)
    response = redirect("/portal/mfa")
    sessions.set_cookie(response, session_id)
    sessions.delete_host_cookie(response, sessions.LOGIN_CSRF_COOKIE, samesite="Strict")
    return response


async def _totp_secret(request: web.Request, user: staff.StaffUser) -> str:
    kek = await request.app[keys_key].kek(user.tenant)
    plain = await asyncio.to_thread(
        envelope.open_sealed, kek, user.totp_sealed, context=accounts.totp_context(user.tenant, user.id)
    )
    return plain.decode()


async def mfa_form(request: web.Request) -> web.Response:
    session = request[session_key]
    if session.mfa_passed:
        return redirect("/portal/")
    enrol = None
    if session.user.mfa_enrolled_at is None:
        secret = await _totp_secret(request, session.user)
        uri = accounts.provisioning_uri(secret, email=session.user.email, tenant=session.user.tenant)
        qr = segno.make(uri, error="m").svg_data_uri(scale=4, dark="#111", light="#fff")
        enrol = {"uri": uri, "qr": qr, "secret": secret}
    return aiohttp_jinja2.render_template("mfa.html", request, _ctx(request, enrol=enrol, error=None))


async def mfa(request: web.Request) -> web.Response:
    session = request[session_key]
    user = session.user
    form = await request.post()
    code = str(form.get("code", ""))
    recovery = str(form.get("recovery_code", ""))
    now = datetime.now(UTC)
    shown_codes: list[str] | None = None
    async with request.app[db_key].acquire() as conn, conn.transaction():
        fresh = await staff.by_id(conn, user.id)
        assert fresh is not None
        if accounts.is_locked(fresh.locked_until, now=now):
            ok = False
        elif code:
            ok = accounts.verify_totp(await _totp_secret(request, fresh), code)
        elif recovery and fresh.mfa_enrolled_at is not None:
            remaining = accounts.use_recovery_code(fresh.recovery_hashes, recovery)
            ok = remaining is not None
            if remaining is not None:
                await staff.set_recovery_hashes(conn, fresh.id, remaining)
        else:
            ok = False
        if not ok:
            state = accounts.after_failure(fresh.failed_logins, now=now)
            await staff.record_failure(conn, fresh.id, failed=state.failed, locked_until=state.locked_until)
            await audit.record(
                conn,
                tenant=fresh.tenant,
                actor=f"staff:{fresh.id}",
                action=audit.AuditAction.USER_LOGIN_FAILED,
                details={"user_id": str(fresh.id), "step": "mfa"},
            )
            enrol = None
            return aiohttp_jinja2.render_template(
                "mfa.html",
                request,
                _ctx(request, enrol=enrol, error="That code is not right. Try the next one."),
                status=401,
            )
        if fresh.mfa_enrolled_at is None:
            shown_codes, hashes = accounts.new_recovery_codes()
            await staff.enrol_mfa(conn, fresh.id, recovery_hashes=hashes)
            await audit.record(
                conn,
                tenant=fresh.tenant,
                actor=f"staff:{fresh.id}",
                action=audit.AuditAction.USER_MFA_ENROLLED,
                details={"user_id": str(fresh.id)},
            )
        await staff.record_success(conn, fresh.id)
        # A new session id once MFA has passed: the pre-MFA id is worthless from here on.
        await sessions.end(conn, session.id_hash)
        session_id = await sessions.start(conn, fresh, mfa_passed=True)
        await audit.record(
            conn,
            tenant=fresh.tenant,
            actor=f"staff:{fresh.id}",
            action=audit.AuditAction.USER_LOGIN,
            details={"user_id": str(fresh.id), "role": fresh.role},
        )
    if shown_codes is not None:
        response = aiohttp_jinja2.render_template(
            "recovery.html", request, {"session": None, "codes": shown_codes}
        )
    else:
        response = redirect("/portal/")
    sessions.set_cookie(response, session_id)
    return response


async def logout(request: web.Request) -> web.Response:
    session = request[session_key]
    async with request.app[db_key].acquire() as conn, conn.transaction():
        await sessions.end(conn, session.id_hash)
        await audit.record(
            conn,
            tenant=session.user.tenant,
            actor=_actor(request),
            action=audit.AuditAction.USER_LOGOUT,
            details={"user_id": str(session.user.id)},
        )
    response = redirect("/portal/login")
    sessions.clear_cookie(response)
    return response


# --- recordings -------------------------------------------------------------------------------


def _time(value: str, name: str) -> datetime | None:
    return parse_time(value, name, default_utc=True) if value else None


async def recordings_search(request: web.Request) -> web.Response:
    """The filter form posts here; the answer is a 303 to a result page whose address holds an opaque,
    session-bound, short-lived token instead of the filters (``callrec.portal.search`` says why)."""
    roles.require(request[session_key].user.role, roles.LIST_RECORDINGS)
    filters = search.from_form(await request.post())
    if not filters:
        return redirect("/portal/")
    token = search.seal(request.cookies.get(sessions.COOKIE, ""), filters)
    return redirect("/portal/?" + urlencode({"search": token}))


async def recordings_page(request: web.Request) -> web.Response:
    session = request[session_key]
    user = session.user
    roles.require(user.role, roles.LIST_RECORDINGS)
    q = request.query
    if search.PERSONAL & set(q):
        # Refused, not ignored: a link that carries a number must stop being made, not quietly work.
        raise BadRequest(
            "A phone number is not accepted in a page's address, because proxies and load balancers "
            "record addresses. Enter it in the Phone number field of the recordings' filter form."
        )
    errors: list[str] = []
    expired = False
    if "search" in q:
        sealed = search.open_token(request.cookies.get(sessions.COOKIE, ""), q["search"])
        expired = sealed is None
        if expired:
            errors.append("This search has expired (or was made in another session). Filter again.")
        given = sealed or {}
    else:
        given = {name: q[name] for name in search.URL_FIELDS if name in q}
    phone_hash = None
    try:
        stored_from = _time(given.get("from", ""), "From")
        stored_to = _time(given.get("to", ""), "To")
    except BadRequest as exc:
        errors.append(exc.message)
        stored_from = stored_to = None
    async with request.app[db_key].acquire() as conn:
        if given.get("phone"):
            try:
                phone_hash = await request.app[keys_key].phone_hash(
                    conn, user.tenant, normalise_e164(given["phone"], field="Phone number")
                )
            except BadRequest as exc:
                errors.append(exc.message)
        expiring = given.get("expiring_days", "")
        performance = roles.can(user.role, roles.AGENT_FILTER)
        durations: dict[str, int | None] = {}
        for name, label in (("min_minutes", "Longer than"), ("max_minutes", "Shorter than")):
            raw = given.get(name, "").strip() if performance else ""
            if raw and not (raw.isdigit() and int(raw) <= 24 * 60):
                errors.append(f"{label} takes whole minutes (0 to 1440).")
                raw = ""
            durations[name] = int(raw) * 60_000 if raw else None
        filters = RecordingFilter(
            stored_from=stored_from,
            stored_to=stored_to,
            phone_hash=phone_hash,
            # Agents' performance filters are for supervisors (and privacy, legal), not support.
            agent=(given.get("agent") or None) if roles.can(user.role, roles.AGENT_FILTER) else None,
            states=roles.visible_states(user.role),
            include_restricted=roles.can(user.role, roles.OPEN_RESTRICTED),
            consent_status=given.get("consent") or None,
            announcement_verified={"yes": True, "no": False}.get(given.get("verified", "")),
            held={"yes": True, "no": False}.get(given.get("held", "")),
            expires_before=(datetime.now(UTC) + timedelta(days=int(expiring)))
            if expiring.isdigit()
            else None,
            # Agents' performance filters, for supervisors (and privacy, legal): call length.
            min_duration_ms=durations["min_minutes"],
            max_duration_ms=durations["max_minutes"],
        )
        agent_names = await recordings.agents(conn, tenant=user.tenant) if performance else []
        after = None
        if q.get("after"):
            stamp, _, rid = q["after"].partition("_")
            try:
                after = (datetime.fromisoformat(stamp), uuid.UUID(rid))
            except ValueError:
                errors.append("The page link is not valid; showing the first page.")
        # A search that cannot be read, or a phone number that is not one, shows nothing rather than
        # everything: the filter the person asked for must not silently fall away.
        unusable = expired or bool(given.get("phone") and phone_hash is None)
        rows = (
            []
            if unusable
            else await recordings.page(conn, tenant=user.tenant, filters=filters, after=after, limit=PAGE + 1)
        )
        shown = rows[:PAGE]
        on_hold = await holds.active_for_recordings(
            conn, tenant=user.tenant, recording_ids=[r.id for r in shown]
        )
        async with conn.transaction():
            await audit.record(
                conn,
                tenant=user.tenant,
                actor=_actor(request),
                action=audit.AuditAction.RECORDING_LISTED,
                details={
                    "count": len(shown),
                    "recording_ids": [str(r.id) for r in shown],
                    "via": "portal",
                    # The filters' names only: a value may be a phone number.
                    "filters": sorted(k for k, v in given.items() if v),
                },
            )
    next_url = None
    if len(rows) > PAGE:
        # The next page keeps the search token, or the address's own filters (none of them personal).
        kept = {"search": q["search"]} if "search" in q else {k: v for k, v in given.items() if v}
        last = shown[-1]
        next_url = "/portal/?" + urlencode({**kept, "after": f"{last.stored_at.isoformat()}_{last.id}"})
    return aiohttp_jinja2.render_template(
        "recordings.html",
        request,
        _ctx(
            request,
            items=shown,
            on_hold=on_hold,
            given=given,
            errors=errors,
            next_url=next_url,
            now=datetime.now(UTC),
            agents=agent_names,
        ),
    )


async def _visible_recording(request: web.Request) -> recordings.Recording:
    user = request[session_key].user
    try:
        rid = uuid.UUID(request.match_info["id"])
    except ValueError:
        raise web.HTTPNotFound() from None
    async with request.app[db_key].acquire() as conn:
        rec = await recordings.get(conn, tenant=user.tenant, recording_id=rid)
    # Another tenant's id, a made-up id and a recording this role may not see look the same.
    if rec is None or rec.state not in roles.visible_states(user.role):
        raise web.HTTPNotFound()
    if rec.restricted and not roles.can(user.role, roles.OPEN_RESTRICTED):
        raise web.HTTPNotFound()
    return rec


async def _grant(request: web.Request, rid: uuid.UUID) -> str | None:
    async with request.app[db_key].acquire() as conn:
        return await staff.access_reason(conn, session_hash=request[session_key].id_hash, recording_id=rid)


async def recording_page(request: web.Request) -> web.Response:
    user = request[session_key].user
    roles.require(user.role, roles.LIST_RECORDINGS)
    rec = await _visible_recording(request)
    async with request.app[db_key].acquire() as conn, conn.transaction():
        on_hold = await holds.active_for_recordings(conn, tenant=user.tenant, recording_ids=[rec.id])
        await audit.record(
            conn,
            tenant=user.tenant,
            actor=_actor(request),
            action=audit.AuditAction.RECORDING_VIEWED,
            recording_id=rec.id,
            details={"via": "portal"},
        )
    parties = {}
    keys = request.app[keys_key]
    from callrec.api.recordings import mask_phone

    for role, sealed in (("from", rec.from_sealed), ("to", rec.to_sealed)):
        if sealed:
            parties[role] = mask_phone(await keys.open_phone(rec.tenant, str(rec.id), role, sealed))
    reason = await _grant(request, rec.id)
    peaks = await waveform(request, rec) if reason else None
    return aiohttp_jinja2.render_template(
        "recording.html",
        request,
        _ctx(
            request,
            rec=rec,
            parties=parties,
            holds=on_hold.get(rec.id, []),
            reason=reason,
            peaks=peaks,
            can_listen=roles.can(user.role, roles.LISTEN),
            can_restrict=roles.can(user.role, roles.RESTRICTIONS),
            now=datetime.now(UTC),
        ),
    )


async def give_reason(request: web.Request) -> web.Response:
    """Before the first play the staff member says why; the reason goes into every listen's entry."""
    user = request[session_key].user
    roles.require(user.role, roles.LISTEN)
    rec = await _visible_recording(request)
    form = await request.post()
    reason = str(form.get("reason", "")).strip()
    if not 5 <= len(reason) <= 500:
        raise BadRequest("Give a reason of 5 to 500 characters (e.g. the ticket number and what you need).")
    async with request.app[db_key].acquire() as conn, conn.transaction():
        await staff.grant_access(
            conn, session_hash=request[session_key].id_hash, recording_id=rec.id, reason=reason
        )
        await audit.record(
            conn,
            tenant=user.tenant,
            actor=_actor(request),
            action=audit.AuditAction.RECORDING_ACCESS_REASON,
            recording_id=rec.id,
            details={"reason": reason, "via": "portal"},
        )
    return redirect(f"/portal/recordings/{rec.id}#player")


async def recording_audio(request: web.Request) -> web.StreamResponse:
    user = request[session_key].user
    roles.require(user.role, roles.LISTEN)
    rec = await _visible_recording(request)
    reason = await _grant(request, rec.id)
    if reason is None:
        raise web.HTTPForbidden(text="Give a reason for access first.")
    return await serve_audio(request, rec, actor=_actor(request), details={"reason": reason, "via": "portal"})


async def waveform(request: web.Request, rec: recordings.Recording) -> list[float] | None:
    """Peaks for the waveform picture (computed with pydub from the decrypted audio)."""
    from callrec.portal.waveform import peaks_for

    return await peaks_for(request.app, rec)
