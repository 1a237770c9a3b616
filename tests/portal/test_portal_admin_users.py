"""The admin page's staff accounts: add, disable and enable, unlock, reset MFA; each audited, each
kept inside the admin's tenant."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from typing import Any

import pyotp
import pytest
from portal_support import PASSWORD

from callrec.appkeys import db_key


def field(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, name
    return match.group(1)


async def password_step(b: Any, email: str, password: str) -> Any:
    form = await b.get("/portal/login")
    return await b.post(
        "/portal/login",
        {"login_csrf": field(await form.text(), "login_csrf"), "email": email, "password": password},
    )


async def enrol(b: Any) -> Any:
    """The MFA page of an account with MFA pending: read the key it shows and answer with a code."""
    page = await (await b.get("/portal/mfa")).text()
    secret = re.search(r"Key: <code>([A-Z2-7]+)</code>", page)
    assert secret, "the enrolment key is not shown"
    return await b.post(
        "/portal/mfa", {"csrf_token": field(page, "csrf_token"), "code": pyotp.TOTP(secret.group(1)).now()}
    )


async def user_id(portal: Any, email: str) -> uuid.UUID:
    async with portal.app[db_key].acquire() as conn:
        found: uuid.UUID = await conn.fetchval("SELECT id FROM staff_users WHERE email = $1", email)
    return found


async def audit_rows(portal: Any, action: str) -> list[dict[str, Any]]:
    async with portal.app[db_key].acquire() as conn:
        rows = await conn.fetch("SELECT actor, details FROM audit_log WHERE action = $1 ORDER BY seq", action)
    return [{"actor": r["actor"], "details": json.loads(r["details"])} for r in rows]


async def test_admin_adds_an_account_that_enrols_its_own_mfa(
    browser: Any, staff_factory: Any, portal: Any
) -> None:
    admin = await staff_factory("admin")
    a = browser()
    await a.login(admin)
    page = await (await a.get("/portal/admin")).text()
    resp = await a.post(
        "/portal/admin/users",
        {"csrf_token": field(page, "csrf_token"), "email": "New.Agent@Acme.example", "role": "support"},
    )
    html = await resp.text()
    assert resp.status == 200
    password = re.search(r"First password, shown only now: <code>([^<]+)</code>", html)
    assert password and "new.agent@acme.example" in html
    # The admin never sees the new account's authenticator secret.
    assert "otpauth://" not in html and "Key:" not in html
    assert "otpauth://" not in await (await a.get("/portal/admin")).text()

    new = browser()
    assert (await password_step(new, "new.agent@acme.example", password.group(1))).status == 303
    done = await enrol(new)
    assert done.status == 200 and "recovery" in (await done.text()).lower()
    assert (await new.get("/portal/")).status == 200

    added = await audit_rows(portal, "user:added")
    new_id = await user_id(portal, "new.agent@acme.example")
    assert len(added) == 1 and added[0]["details"]["user_id"] == str(new_id)
    assert added[0]["details"]["via"] == "portal" and added[0]["actor"].startswith("staff:")
    assert "acme.example" not in str(added[0]["details"])  # ids in the audit trail, never e-mail addresses


async def test_a_bad_or_taken_address_changes_nothing(browser: Any, staff_factory: Any, portal: Any) -> None:
    admin = await staff_factory("admin")
    other = await staff_factory("support", tenant="other")
    a = browser()
    await a.login(admin)
    token = field(await (await a.get("/portal/admin")).text(), "csrf_token")
    async with portal.app[db_key].acquire() as conn:
        before = await conn.fetchval("SELECT count(*) FROM staff_users")
    for form, message in (
        ({"email": "not-an-address", "role": "support"}, "is not an e-mail address"),
        ({"email": "ok@acme.example", "role": "superuser"}, "Unknown role"),
        ({"email": other.email, "role": "admin"}, "has an account already"),
        ({"email": "", "role": "support"}, "E-mail address is required"),
    ):
        resp = await a.post("/portal/admin/users", {"csrf_token": token, **form})
        assert resp.status == 400 and message in await resp.text(), form
    async with portal.app[db_key].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM staff_users") == before
        # The account of the other tenant keeps its tenant and role.
        row = await conn.fetchrow("SELECT tenant, role FROM staff_users WHERE email = $1", other.email)
    assert (row["tenant"], row["role"]) == ("other", "support")
    assert await audit_rows(portal, "user:added") == []


async def test_disabling_ends_the_sessions_at_once_and_enabling_lets_back_in(
    browser: Any, staff_factory: Any, portal: Any
) -> None:
    admin = await staff_factory("admin")
    agent = await staff_factory("support")
    a, s = browser(), browser()
    await a.login(admin)
    await s.login(agent)
    assert (await s.get("/portal/")).status == 200
    token = field(await (await a.get("/portal/admin")).text(), "csrf_token")
    agent_id = await user_id(portal, agent.email)
    assert (await a.post(f"/portal/admin/users/{agent_id}/disable", {"csrf_token": token})).status == 303
    cut = await s.get("/portal/")
    assert cut.status == 303 and cut.headers["Location"] == "/portal/login"
    again = browser()
    assert (await password_step(again, agent.email, PASSWORD)).status == 401
    assert "disabled" in await (await a.get("/portal/admin")).text()

    assert (await a.post(f"/portal/admin/users/{agent_id}/enable", {"csrf_token": token})).status == 303
    assert (await again.login(agent)).status == 303
    assert (await again.get("/portal/")).status == 200
    disabled, enabled = await audit_rows(portal, "user:disabled"), await audit_rows(portal, "user:enabled")
    assert [r["details"]["user_id"] for r in disabled] == [str(agent_id)]
    assert [r["details"]["user_id"] for r in enabled] == [str(agent_id)]


async def test_an_admin_cannot_disable_themselves(browser: Any, staff_factory: Any, portal: Any) -> None:
    admin = await staff_factory("admin")
    a = browser()
    await a.login(admin)
    token = field(await (await a.get("/portal/admin")).text(), "csrf_token")
    me = await user_id(portal, admin.email)
    resp = await a.post(f"/portal/admin/users/{me}/disable", {"csrf_token": token})
    assert resp.status == 400 and "your own account" in await resp.text()
    assert (await a.get("/portal/admin")).status == 200
    assert await audit_rows(portal, "user:disabled") == []


async def test_two_admins_disabling_each_other_leave_one_admin(staff_factory: Any, portal: Any) -> None:
    """Each disables the other in its own transaction; the second waits for the first's lock on
    the admin rows and then finds itself the last admin standing."""
    from callrec.portal import users

    one, two = await staff_factory("admin"), await staff_factory("admin")
    id1, id2 = await user_id(portal, one.email), await user_id(portal, two.email)
    pool = portal.app[db_key]
    async with pool.acquire() as c1, pool.acquire() as c2:
        t1 = c1.transaction()
        await t1.start()
        assert await users.set_disabled(
            c1, tenant="acme", user_id=id2, disabled=True, actor=f"staff:{id1}", via="test"
        )

        async def second() -> Any:
            async with c2.transaction():
                return await users.set_disabled(
                    c2, tenant="acme", user_id=id1, disabled=True, actor=f"staff:{id2}", via="test"
                )

        racing = asyncio.ensure_future(second())
        await asyncio.sleep(0.3)
        assert not racing.done()  # held by the first transaction's lock on the admin rows
        await t1.commit()
        with pytest.raises(users.InvalidAccount, match="last admin"):
            await asyncio.wait_for(racing, 10)
    async with pool.acquire() as conn:
        active = await conn.fetch(
            "SELECT id FROM staff_users WHERE role = 'admin' AND tenant = 'acme' AND disabled_at IS NULL"
        )
    assert [r["id"] for r in active] == [id1]
    assert len(await audit_rows(portal, "user:disabled")) == 1


async def test_admin_unlocks_a_locked_account(browser: Any, staff_factory: Any, portal: Any) -> None:
    admin = await staff_factory("admin")
    agent = await staff_factory("support")
    s = browser()
    for _ in range(5):
        assert (await password_step(s, agent.email, "not the password at all")).status == 401
    assert (await password_step(s, agent.email, PASSWORD)).status == 401  # locked now
    a = browser()
    await a.login(admin)
    page = await (await a.get("/portal/admin")).text()
    assert "locked until" in page
    agent_id = await user_id(portal, agent.email)
    assert (
        await a.post(f"/portal/admin/users/{agent_id}/unlock", {"csrf_token": field(page, "csrf_token")})
    ).status == 303
    assert (await s.login(agent)).status == 303
    assert [r["details"]["user_id"] for r in await audit_rows(portal, "user:unlocked")] == [str(agent_id)]


async def test_reset_mfa_for_a_lost_phone(browser: Any, staff_factory: Any, portal: Any) -> None:
    admin = await staff_factory("admin")
    agent = await staff_factory("support")
    a, s = browser(), browser()
    await a.login(admin)
    await s.login(agent)
    token = field(await (await a.get("/portal/admin")).text(), "csrf_token")
    agent_id = await user_id(portal, agent.email)
    resp = await a.post(f"/portal/admin/users/{agent_id}/reset-mfa", {"csrf_token": token})
    html = await resp.text()
    assert resp.status == 200 and "set up a new authenticator at their next login" in html
    assert "otpauth://" not in html
    assert (await s.get("/portal/")).status == 303  # the session ended
    # The old authenticator no longer works; the next login enrols a new one.
    fresh = browser()
    assert (await password_step(fresh, agent.email, PASSWORD)).status == 303
    page = await (await fresh.get("/portal/mfa")).text()
    old_code = await fresh.post(
        "/portal/mfa", {"csrf_token": field(page, "csrf_token"), "code": agent.code()}
    )
    assert old_code.status == 401
    assert (await enrol(fresh)).status == 200
    assert (await fresh.get("/portal/")).status == 200
    own = await a.post(
        f"/portal/admin/users/{await user_id(portal, admin.email)}/reset-mfa", {"csrf_token": token}
    )
    assert own.status == 400
    assert [r["details"]["user_id"] for r in await audit_rows(portal, "user:mfa-reset")] == [str(agent_id)]


async def test_admin_cannot_touch_another_tenants_accounts(
    browser: Any, staff_factory: Any, portal: Any
) -> None:
    admin = await staff_factory("admin")
    outsider = await staff_factory("support", tenant="other")
    a = browser()
    await a.login(admin)
    page = await (await a.get("/portal/admin")).text()
    assert outsider.email not in page
    token = field(page, "csrf_token")
    target = await user_id(portal, outsider.email)
    for action in ("disable", "unlock", "reset-mfa", "enable"):
        resp = await a.post(f"/portal/admin/users/{target}/{action}", {"csrf_token": token})
        assert resp.status == 404, action
    o = browser()
    assert (await o.login(outsider)).status == 303
    assert (await o.get("/portal/")).status == 200
    async with portal.app[db_key].acquire() as conn:
        assert (
            await conn.fetchval(
                """SELECT count(*) FROM audit_log
                   WHERE action IN ('user:disabled', 'user:enabled', 'user:unlocked', 'user:mfa-reset')"""
            )
            == 0
        )


async def test_admin_forgets_an_sso_link_after_the_provider_account_was_recreated(
    browser: Any, staff_factory: Any, portal: Any
) -> None:
    from callrec.db import sso

    admin = await staff_factory("admin")
    agent, outsider = await staff_factory("support"), await staff_factory("support", tenant="other")
    agent_id, outsider_id = await user_id(portal, agent.email), await user_id(portal, outsider.email)
    async with portal.app[db_key].acquire() as conn:
        await sso.link_subject(conn, agent_id, issuer="https://idp.acme.example", subject="old-sub")
        await sso.link_subject(conn, outsider_id, issuer="https://idp.other.example", subject="x")
    a = browser()
    await a.login(admin)
    page = await (await a.get("/portal/admin")).text()
    assert f"/portal/admin/users/{agent_id}/unlink-sso" in page
    token = field(page, "csrf_token")
    assert (
        await a.post(f"/portal/admin/users/{outsider_id}/unlink-sso", {"csrf_token": token})
    ).status == 404
    assert (await a.post(f"/portal/admin/users/{agent_id}/unlink-sso", {"csrf_token": token})).status == 303
    assert (await a.post(f"/portal/admin/users/{agent_id}/unlink-sso", {"csrf_token": token})).status == 404
    async with portal.app[db_key].acquire() as conn:
        links = {
            r["id"]: r["oidc_subject"] for r in await conn.fetch("SELECT id, oidc_subject FROM staff_users")
        }
    assert links[agent_id] is None and links[outsider_id] == "x"
    assert [r["details"] for r in await audit_rows(portal, "user:sso-unlinked")] == [
        {"user_id": str(agent_id), "via": "portal"}
    ]
