"""Portal authentication and hardening: TOTP, lockout, session fixation, CSRF, headers, logout."""

from __future__ import annotations

import re
from typing import Any

import pyotp
from portal_support import PASSWORD

from callrec.appkeys import db_key


def field(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, name
    return match.group(1)


def main_of(html: str) -> str:
    """The page's main content without its one-time form token."""
    return re.sub(r'value="[^"]*"', "", html.split("<main", 1)[1])


async def password_step(b: Any, email: str, password: str = PASSWORD) -> Any:
    form = await b.get("/portal/login")
    return await b.post(
        "/portal/login",
        {"login_csrf": field(await form.text(), "login_csrf"), "email": email, "password": password},
    )


async def test_login_with_totp_and_security_headers(browser: Any, staff_factory: Any) -> None:
    ana = await staff_factory("support")
    b = browser()
    page = await b.get("/portal/login")
    assert page.status == 200
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert page.headers["X-Frame-Options"] == "DENY" and page.headers["Referrer-Policy"] == "no-referrer"
    assert "<script" not in await page.text() and "style=" not in await page.text()
    resp = await b.login(ana)
    assert resp.status == 303 and resp.headers["Location"] == "/portal/"
    cookie = resp.cookies["__Host-callrec_session"]
    assert (
        cookie["httponly"] and cookie["secure"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
    )
    home = await b.get("/portal/")
    assert home.status == 200 and "<h1>Recordings</h1>" in await home.text()


async def test_no_session_and_pre_mfa_sessions_go_back(browser: Any, staff_factory: Any) -> None:
    b = browser()
    resp = await b.get("/portal/")
    assert resp.status == 303 and resp.headers["Location"] == "/portal/login"
    ana = await staff_factory("support")
    assert (await password_step(b, ana.email)).status == 303
    resp = await b.get("/portal/")  # password alone is not enough
    assert resp.status == 303 and resp.headers["Location"] == "/portal/mfa"


async def test_session_id_changes_at_each_step_and_old_ids_are_dead(browser: Any, staff_factory: Any) -> None:
    ana = await staff_factory("support")
    b = browser()
    await password_step(b, ana.email)
    pre_mfa = b.cookies["__Host-callrec_session"]
    mfa = await b.get("/portal/mfa")
    resp = await b.post(
        "/portal/mfa", {"csrf_token": field(await mfa.text(), "csrf_token"), "code": ana.code()}
    )
    assert resp.status == 303
    after = b.cookies["__Host-callrec_session"]
    assert after != pre_mfa
    attacker = browser()
    attacker.cookies["__Host-callrec_session"] = pre_mfa  # a fixed or stolen pre-login id
    assert (await attacker.get("/portal/")).headers["Location"] == "/portal/login"


async def test_unknown_wrong_and_locked_look_the_same(browser: Any, staff_factory: Any, portal: Any) -> None:
    ana = await staff_factory("support")
    b = browser()
    unknown = await password_step(b, "nobody@acme.example", "whatever password")
    wrong = await password_step(b, ana.email, "not the password at all")
    assert unknown.status == wrong.status == 401
    assert main_of(await unknown.text()) == main_of(await wrong.text())
    for _ in range(4):  # five failures in all: locked
        await password_step(b, ana.email, "not the password at all")
    locked = await password_step(b, ana.email)  # even the right password is refused now
    assert locked.status == 401
    assert main_of(await locked.text()) == main_of(await unknown.text())
    async with portal.app[db_key].acquire() as conn:
        assert await conn.fetchval("SELECT locked_until > now() FROM staff_users") is True
        actions = [r["action"] for r in await conn.fetch("SELECT action FROM audit_log")]
    assert "user:locked" in actions


async def test_wrong_totp_codes_count_towards_the_lock(browser: Any, staff_factory: Any) -> None:
    ana = await staff_factory("support")
    b = browser()
    await password_step(b, ana.email)
    page = await b.get("/portal/mfa")
    csrf = field(await page.text(), "csrf_token")
    for _ in range(5):
        assert (await b.post("/portal/mfa", {"csrf_token": csrf, "code": "000000"})).status == 401
    right = await b.post("/portal/mfa", {"csrf_token": csrf, "code": ana.code()})
    assert right.status == 401  # locked: the right code no longer opens it


async def test_enrolment_shows_qr_and_uri_then_recovery_codes_work_once(
    browser: Any, staff_factory: Any
) -> None:
    new = await staff_factory("privacy", enrolled=False)
    b = browser()
    await password_step(b, new.email)
    page = await (await b.get("/portal/mfa")).text()
    assert 'src="data:image/svg+xml' in page and "otpauth://totp/" in page
    resp = await b.post("/portal/mfa", {"csrf_token": field(page, "csrf_token"), "code": new.code()})
    assert resp.status == 200
    codes = re.findall(r"<code>([0-9a-f-]{20})</code>", await resp.text())
    assert len(codes) == 10
    second = browser()
    await password_step(second, new.email)
    csrf = field(await (await second.get("/portal/mfa")).text(), "csrf_token")
    ok = await second.post("/portal/mfa", {"csrf_token": csrf, "recovery_code": codes[0]})
    assert ok.status == 303
    third = browser()
    await password_step(third, new.email)
    csrf = field(await (await third.get("/portal/mfa")).text(), "csrf_token")
    again = await third.post("/portal/mfa", {"csrf_token": csrf, "recovery_code": codes[0]})
    assert again.status == 401


async def test_forms_without_or_with_a_wrong_csrf_token_are_refused(browser: Any, staff_factory: Any) -> None:
    ana = await staff_factory("support")
    b = browser()
    await b.login(ana)
    assert (await b.post("/portal/logout", {})).status == 403
    assert (await b.post("/portal/logout", {"csrf_token": "forged"})).status == 403
    assert (await b.get("/portal/")).status == 200  # still logged in
    login = await b.get("/portal/login")
    forged = await b.post("/portal/login", {"login_csrf": "forged", "email": ana.email, "password": PASSWORD})
    assert forged.status == 403 and login.status == 200


async def test_logout_ends_the_session(browser: Any, staff_factory: Any) -> None:
    ana = await staff_factory("support")
    b = browser()
    await b.login(ana)
    session = b.cookies["__Host-callrec_session"]
    resp = await b.post("/portal/logout", {"csrf_token": await b.csrf()})
    assert resp.status == 303 and resp.headers["Location"] == "/portal/login"
    replay = browser()
    replay.cookies["__Host-callrec_session"] = session
    assert (await replay.get("/portal/")).headers["Location"] == "/portal/login"


async def test_idle_sessions_expire(browser: Any, staff_factory: Any, portal: Any) -> None:
    ana = await staff_factory("support")
    b = browser()
    await b.login(ana)
    async with portal.app[db_key].acquire() as conn:
        await conn.execute("UPDATE staff_sessions SET last_seen_at = now() - interval '31 minutes'")
    assert (await b.get("/portal/")).headers["Location"] == "/portal/login"


def test_totp_secret_from_the_page_is_the_one_in_the_uri() -> None:
    secret = pyotp.random_base32()
    uri = pyotp.TOTP(secret).provisioning_uri(name="a@b.c", issuer_name="callrec (acme)")
    assert secret in uri
