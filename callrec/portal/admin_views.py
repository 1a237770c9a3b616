"""The admin page: staff accounts (add, disable and enable, unlock, reset MFA), API tokens, and the
tenant's settings as read from the configuration file.

An admin sees and changes only accounts of their own tenant; an id from another tenant is a page
that does not exist. Secrets are never shown back: a new password, token or enrolment link is on
the one response that created it and nowhere else.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from callrec.api.auth import SCOPES
from callrec.appkeys import config_key, db_key, keys_key
from callrec.db import audit, sso, staff, tokens
from callrec.errors import BadRequest
from callrec.portal import accounts, roles, users
from callrec.portal.forms import actor, form_text, page_context, path_uuid, staff_user
from callrec.portal.sessions import redirect


def _settings(request: web.Request) -> list[tuple[str, str]]:
    """The tenant's settings an admin can check at a glance; no secret, only whether it is set."""
    tenant = request.app[config_key].tenants[staff_user(request).tenant]
    policy = tenant.policy
    providers = [
        name
        for name, configured in (
            ("Twilio", tenant.twilio_auth_token),
            ("Vonage", tenant.vonage_signature_secret),
            ("Plivo", tenant.plivo_auth_token),
            ("PBX upload", tenant.webhook_secret),
        )
        if configured
    ]
    return [
        ("Tenant", tenant.name),
        ("Retention", f"{tenant.retention // timedelta(days=1)} days"),
        ("Policy version", str(policy.version)),
        (
            "Deletion requests due in",
            f"{tenant.deletion_due.days} days (GDPR), {tenant.deletion_due_ccpa.days} days (CCPA)",
        ),
        ("Providers", ", ".join(providers) or "none configured"),
        ("Announcements", ", ".join(sorted(tenant.announcements)) or "none registered"),
        ("Deletion callbacks allowed to", ", ".join(tenant.callback_hosts) or "no host"),
        ("Provider copy deleted after ingest", "yes" if tenant.delete_provider_copy else "no"),
    ]


async def _render(request: web.Request, **shown: Any) -> web.Response:
    user = staff_user(request)
    async with request.app[db_key].acquire() as conn:
        staff_users = await staff.list_for(conn, tenant=user.tenant)
        api_tokens = await tokens.list_for(conn, tenant=user.tenant)
        sso_linked = await sso.linked_users(conn, tenant=user.tenant)
    return aiohttp_jinja2.render_template(
        "admin.html",
        request,
        page_context(
            request,
            users=staff_users,
            tokens=api_tokens,
            scopes=SCOPES,
            roles=accounts.ROLES,
            settings=_settings(request),
            me=user.id,
            sso_linked=sso_linked,
            **({"new_token": None, "new_account": None, "mfa_reset": None} | shown),
        ),
    )


async def admin_page(request: web.Request) -> web.Response:
    roles.require(staff_user(request).role, roles.ADMIN)
    return await _render(request)


# --- staff accounts ------------------------------------------------------------------------------


async def user_add(request: web.Request) -> web.Response:
    user = staff_user(request)
    roles.require(user.role, roles.ADMIN)
    form = await request.post()
    email = form_text(form, "email", label="E-mail address", max_length=254)
    role = str(form.get("role", ""))
    assert email is not None
    kek = await request.app[keys_key].kek(user.tenant)
    try:
        async with request.app[db_key].acquire() as conn, conn.transaction():
            account = await users.add(
                conn,
                kek=kek,
                tenant=user.tenant,
                email=email,
                role=role,
                password=None,
                actor=actor(request),
                via="portal",
            )
    except users.InvalidAccount as exc:
        raise BadRequest(_sentence(exc)) from None
    if account is None:
        # E-mail addresses are unique across tenants; say no more than that about the other account.
        raise BadRequest("That e-mail address has an account already.")
    # The first password is shown to the admin once, to hand over; the authenticator is not: its
    # owner enrols it at the first login, so no admin ever holds both factors of another account.
    return await _render(request, new_account={"email": account.user.email, "password": account.password})


async def user_disable(request: web.Request) -> web.Response:
    return await _set_disabled(request, disabled=True)


async def user_enable(request: web.Request) -> web.Response:
    return await _set_disabled(request, disabled=False)


async def _set_disabled(request: web.Request, *, disabled: bool) -> web.Response:
    user = staff_user(request)
    roles.require(user.role, roles.ADMIN)
    target = path_uuid(request)
    if disabled and target == user.id:
        raise BadRequest("You cannot disable your own account; ask another admin.")
    try:
        async with request.app[db_key].acquire() as conn, conn.transaction():
            changed = await users.set_disabled(
                conn,
                tenant=user.tenant,
                user_id=target,
                disabled=disabled,
                actor=actor(request),
                via="portal",
            )
            exists = changed is not None or await _in_tenant(conn, user.tenant, target)
    except users.InvalidAccount as exc:
        raise BadRequest(_sentence(exc)) from None
    if not exists:
        raise web.HTTPNotFound()
    return redirect("/portal/admin#users")


async def user_unlock(request: web.Request) -> web.Response:
    user = staff_user(request)
    roles.require(user.role, roles.ADMIN)
    async with request.app[db_key].acquire() as conn, conn.transaction():
        if (
            await users.unlock(
                conn, tenant=user.tenant, user_id=path_uuid(request), actor=actor(request), via="portal"
            )
            is None
        ):
            raise web.HTTPNotFound()
    return redirect("/portal/admin#users")


async def user_reset_mfa(request: web.Request) -> web.Response:
    """For a lost phone: the account enrols a new authenticator at its next login."""
    user = staff_user(request)
    roles.require(user.role, roles.ADMIN)
    target = path_uuid(request)
    if target == user.id:
        raise BadRequest("You cannot reset your own MFA; ask another admin.")
    kek = await request.app[keys_key].kek(user.tenant)
    async with request.app[db_key].acquire() as conn, conn.transaction():
        reset = await users.reset_mfa(
            conn, kek=kek, tenant=user.tenant, user_id=target, actor=actor(request), via="portal"
        )
    if reset is None:
        raise web.HTTPNotFound()
    return await _render(request, mfa_reset=reset.email)


async def user_unlink_sso(request: web.Request) -> web.Response:
    """The person's account at the identity provider was recreated (a new subject)."""
    user = staff_user(request)
    roles.require(user.role, roles.ADMIN)
    async with request.app[db_key].acquire() as conn, conn.transaction():
        if not await users.unlink_sso(
            conn, tenant=user.tenant, user_id=path_uuid(request), actor=actor(request), via="portal"
        ):
            raise web.HTTPNotFound()
    return redirect("/portal/admin#users")


def _sentence(exc: Exception) -> str:
    text = str(exc).rstrip(".")
    return text[:1].upper() + text[1:] + "."


async def _in_tenant(conn: Any, tenant: str, user_id: Any) -> bool:
    found = await staff.by_id(conn, user_id)
    return found is not None and found.tenant == tenant


# --- API tokens ----------------------------------------------------------------------------------


async def token_create(request: web.Request) -> web.Response:
    user = staff_user(request)
    roles.require(user.role, roles.ADMIN)
    form = await request.post()
    name = form_text(form, "name", label="Token name", max_length=100)
    scopes = sorted({str(s) for s in form.getall("scope", [])})
    if not scopes or any(s not in SCOPES for s in scopes):
        raise BadRequest("Choose at least one scope.")
    assert name is not None
    async with request.app[db_key].acquire() as conn, conn.transaction():
        row, token = await tokens.create(conn, tenant=user.tenant, name=name, scopes=scopes)
        await audit.record(
            conn,
            tenant=user.tenant,
            actor=actor(request),
            action=audit.AuditAction.TOKEN_CREATED,
            details={"token_id": str(row.id), "name": name, "scopes": scopes, "via": "portal"},
        )
    # The token is shown once, on this response only; it is never stored.
    return await _render(request, new_token=token)


async def token_revoke(request: web.Request) -> web.Response:
    user = staff_user(request)
    roles.require(user.role, roles.ADMIN)
    token_id = path_uuid(request)
    async with request.app[db_key].acquire() as conn, conn.transaction():
        if not await tokens.revoke(conn, tenant=user.tenant, token_id=token_id):
            raise web.HTTPNotFound()
        await audit.record(
            conn,
            tenant=user.tenant,
            actor=actor(request),
            action=audit.AuditAction.TOKEN_REVOKED,
            details={"token_id": str(token_id), "via": "portal"},
        )
    return redirect("/portal/admin#tokens")
