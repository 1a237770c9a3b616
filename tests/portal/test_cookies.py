"""The portal's ``__Host-`` cookies keep their prefix's rules in every Set-Cookie, the ones that delete
them included: Secure, Path=/ and no Domain. A browser ignores a ``__Host-`` Set-Cookie without them
(RFC 6265bis §4.1.3.2), so a deletion lacking Secure deletes nothing."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from http.cookies import SimpleCookie
from typing import Any

import pytest
from portal_support import PASSWORD

from callrec.portal import sessions, sso


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound, never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def config(app_config: Any, closed_port: int) -> Any:
    """Overrides the shared one (conftest's portal uses it): tenant acme's identity provider is
    down, so that single sign-on fails and deletes its binding cookie."""
    oidc = {
        "issuer": f"http://127.0.0.1:{closed_port}",
        "client_id": "callrec-portal",
        "client_secret": "sso-client-secret-for-tests",
        "display_name": "Acme SSO",
    }
    return app_config(tenants={"acme": {"oidc": oidc}})


def hidden(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no hidden field {name}"
    return match.group(1)


def set_cookies(resp: Any) -> list[tuple[str, Any]]:
    """Each Set-Cookie header of a response, parsed on its own: (name, morsel)."""
    found = []
    for header in resp.headers.getall("Set-Cookie", []):
        jar: SimpleCookie = SimpleCookie()
        jar.load(header)
        found += list(jar.items())
    return found


def is_deletion(morsel: Any) -> bool:
    return bool(morsel.value == "" and (morsel["max-age"] == "0" or "1970" in morsel["expires"]))


def assert_host_rules(name: str, morsel: Any) -> None:
    assert morsel["secure"], f"{name}: no Secure"
    assert morsel["path"] == "/", f"{name}: Path={morsel['path']!r}"
    assert not morsel["domain"], f"{name}: Domain={morsel['domain']!r}"


async def test_signing_in_deletes_the_login_csrf_cookie_with_secure_and_path(
    browser: Any, staff_factory: Any
) -> None:
    ana = await staff_factory("support")
    b = browser()
    form = await b.get("/portal/login")
    [(name, given)] = set_cookies(form)
    assert name == sessions.LOGIN_CSRF_COOKIE and not is_deletion(given)
    assert_host_rules(name, given)
    assert given["httponly"] and given["samesite"] == "Strict"
    resp = await b.post(
        "/portal/login",
        {"login_csrf": hidden(await form.text(), "login_csrf"), "email": ana.email, "password": PASSWORD},
    )
    assert resp.status == 303
    deleted = dict(set_cookies(resp))[sessions.LOGIN_CSRF_COOKIE]
    assert is_deletion(deleted)
    assert_host_rules(sessions.LOGIN_CSRF_COOKIE, deleted)
    assert deleted["httponly"] and deleted["samesite"] == "Strict"


async def test_every_host_cookie_the_portal_sets_or_deletes_keeps_the_prefix_rules(
    browser: Any, staff_factory: Any
) -> None:
    """Sign in, sign out, come back with a dead session, fail single sign-on: every ``__Host-``
    Set-Cookie on the way, setting or deleting, has Secure, Path=/ and no Domain."""
    ana = await staff_factory("support")
    b = browser()
    seen: list[tuple[str, Any]] = []

    async def get(path: str) -> Any:
        resp = await b.get(path)
        seen.extend(set_cookies(resp))
        return resp

    async def post(path: str, data: dict[str, str]) -> Any:
        resp = await b.post(path, data)
        seen.extend(set_cookies(resp))
        return resp

    form = await get("/portal/login")
    login = {"login_csrf": hidden(await form.text(), "login_csrf"), "email": ana.email, "password": PASSWORD}
    assert (await post("/portal/login", login)).status == 303
    page = await get("/portal/mfa")
    assert (
        await post("/portal/mfa", {"csrf_token": hidden(await page.text(), "csrf_token"), "code": ana.code()})
    ).status == 303
    dead = b.cookies[sessions.COOKIE]
    assert (await post("/portal/logout", {"csrf_token": await b.csrf()})).status == 303
    b.cookies[sessions.COOKIE] = dead  # a session that has ended
    assert (await get("/portal/")).status == 303
    failed = await get("/portal/sso/acme")  # the provider is down: the binding cookie goes
    assert failed.status == 502

    host = [(name, morsel) for name, morsel in seen if name.startswith("__Host-")]
    deletions = {name for name, morsel in host if is_deletion(morsel)}
    assert deletions == {sessions.COOKIE, sessions.LOGIN_CSRF_COOKIE, sso.COOKIE}
    assert {name for name, _ in host} == deletions
    for name, morsel in host:
        assert_host_rules(name, morsel)
