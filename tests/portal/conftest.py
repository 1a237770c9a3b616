"""Portal fixtures: staff accounts of each role, logged in through the real login and TOTP forms."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from portal_support import PASSWORD, Staff, make_staff
from twilio_support import ingest_twilio

from callrec.app import create_app


def hidden(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no hidden field {name}"
    return match.group(1)


class Browser:
    """A test client that keeps the portal's cookies itself (they are Secure; the test server is http)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.cookies: dict[str, str] = {}

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        return headers

    def _keep(self, resp: Any) -> None:
        for name, morsel in resp.cookies.items():
            if morsel.value == "" or morsel["max-age"] == "0":
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = morsel.value

    async def get(self, path: str, **kwargs: Any) -> Any:
        resp = await self.client.get(
            path, headers=self._headers(kwargs.pop("headers", None)), allow_redirects=False, **kwargs
        )
        self._keep(resp)
        return resp

    async def post(self, path: str, data: dict[str, str], **kwargs: Any) -> Any:
        resp = await self.client.post(
            path,
            data=data,
            headers=self._headers(kwargs.pop("headers", None)),
            allow_redirects=False,
            **kwargs,
        )
        self._keep(resp)
        return resp

    async def csrf(self, path: str = "/portal/") -> str:
        return hidden(await (await self.get(path)).text(), "csrf_token")

    async def login(self, who: Staff, *, code: str | None = None) -> Any:
        form = await self.get("/portal/login")
        login_csrf = hidden(await form.text(), "login_csrf")
        resp = await self.post(
            "/portal/login", {"login_csrf": login_csrf, "email": who.email, "password": PASSWORD}
        )
        assert resp.status == 303, await resp.text()
        page = await self.get("/portal/mfa")
        csrf = hidden(await page.text(), "csrf_token")
        return await self.post("/portal/mfa", {"csrf_token": csrf, "code": code or who.code()})


@pytest.fixture
async def portal(aiohttp_client: Any, config: Any) -> Any:
    return await aiohttp_client(create_app(config, run_workers=False))


@pytest.fixture
def browser(portal: Any) -> Callable[[], Browser]:
    return lambda: Browser(portal)


@pytest.fixture
def staff_factory(portal: Any) -> Callable[..., Awaitable[Staff]]:
    return lambda role, **kw: make_staff(portal.app, role, **kw)


@pytest.fixture
def ingest_call(portal: Any, fake_twilio: Any) -> Callable[..., Awaitable[uuid.UUID]]:
    """A recording through the real path (twilio_support.ingest_twilio) into this portal's app."""
    return lambda audio, **kw: ingest_twilio(portal, fake_twilio, audio, **kw)
