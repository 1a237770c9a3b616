"""Portal pages for a data subject's rights, for the privacy role: access requests (a copy of the
caller's recordings behind a one-hour link) and restriction of a recording (GDPR Art. 18).

They call the same functions as the API (callrec.rights), so the audit trail cannot tell the two
apart except by ``via``.
"""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web

from callrec import rights
from callrec.appkeys import config_key, db_key, keys_key
from callrec.db import access, staff
from callrec.errors import BadRequest
from callrec.ingest.webhooks import normalise_e164
from callrec.portal import roles
from callrec.portal.forms import actor, form_text, page_context, path_uuid, staff_user
from callrec.portal.sessions import redirect


async def subject_from_form(request: web.Request, form: Any) -> dict[str, Any]:
    """The caller who phoned in, named by their phone number or a call id (exactly one)."""
    phone = form_text(form, "phone", label="Phone number", required=False, max_length=40)
    call_id = form_text(form, "call_id", label="Call id", required=False, max_length=128)
    if bool(phone) == bool(call_id):
        raise BadRequest("Give either the caller's phone number or a call id.")
    if call_id:
        return {"subject_kind": "call_id", "subject_call_id": call_id}
    assert phone is not None
    tenant = staff_user(request).tenant
    async with request.app[db_key].acquire() as conn:
        digest = await request.app[keys_key].phone_hash(conn, tenant, normalise_e164(phone, field="Phone"))
    return {"subject_kind": "phone", "subject_phone_hash": digest}


async def _render(request: web.Request, grant: rights.AccessGrant | None = None) -> web.Response:
    user = staff_user(request)
    async with request.app[db_key].acquire() as conn:
        found = await access.list_for(conn, tenant=user.tenant, limit=200)
        names = {f"staff:{u.id}": u.email for u in await staff.list_for(conn, tenant=user.tenant)}
    link = request.app[config_key].public_base_url + grant.download_path() if grant else None
    return aiohttp_jinja2.render_template(
        "access.html", request, page_context(request, requests=found, names=names, grant=grant, link=link)
    )


async def access_page(request: web.Request) -> web.Response:
    roles.require(staff_user(request).role, roles.ACCESS_REQUESTS)
    return await _render(request)


async def access_post(request: web.Request) -> web.Response:
    user = staff_user(request)
    roles.require(user.role, roles.ACCESS_REQUESTS)
    subject = await subject_from_form(request, await request.post())
    async with request.app[db_key].acquire() as conn, conn.transaction():
        grant = await rights.grant_access(
            conn, tenant=user.tenant, subject=subject, actor=actor(request), via="portal"
        )
    # The link is on this response only: only its hash is stored.
    return await _render(request, grant)


async def restriction_post(request: web.Request) -> web.Response:
    """Restrict a recording (only privacy and legal open it) or lift the restriction."""
    user = staff_user(request)
    roles.require(user.role, roles.RESTRICTIONS)
    form = await request.post()
    action = form.get("action")
    if action not in ("restrict", "unrestrict"):
        raise BadRequest("Choose to restrict the recording or to lift the restriction.")
    reason = form_text(form, "reason", label="The reason", max_length=500)
    assert reason is not None
    rid = path_uuid(request)
    async with request.app[db_key].acquire() as conn, conn.transaction():
        rec = await rights.set_restriction(
            conn,
            tenant=user.tenant,
            recording_id=rid,
            restricted=action == "restrict",
            actor=actor(request),
            reason=reason,
            via="portal",
        )
    if rec is None:
        raise web.HTTPNotFound()
    return redirect(f"/portal/recordings/{rid}")
