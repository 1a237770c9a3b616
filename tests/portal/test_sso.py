"""Single sign-on (callrec.portal.sso) against a fake OpenID provider on 127.0.0.1.

The provider is a small aiohttp app: discovery, ``/authorize`` (which answers at once for the
identity the test sets), ``/token`` (which checks client authentication, the one-time code, the
PKCE verifier and the redirect URI, as a real provider does) and ``/jwks``. It signs ID tokens with
PyJWT, a different library from the one under test, with an RSA key made here.

The portal's cookies are kept by conftest's Browser, which sends them whatever their SameSite;
the last test drives Chromium through the whole flow, where SameSite is real.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import json
import re
import secrets
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import jwt
import pytest
from aiohttp import BasicAuth, web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from portal_support import CHROMIUM, CHROMIUM_ARGS, make_staff, need_browser

from callrec.app import create_app
from callrec.appkeys import db_key
from callrec.config import ConfigError, config_from_mapping, load_config
from callrec.portal import sso

PUBLIC_BASE = "https://callrec.example.test"  # tests/conftest.py's make_config
CLIENT_ID = "callrec-portal"
CLIENT_SECRET = "sso-client-secret-for-tests"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class FakeIdP:
    """An OpenID provider as far as the authorization code flow with PKCE needs one."""

    def __init__(self, redirect_uri: str) -> None:
        self.redirect_uri = redirect_uri
        self.issuer = ""
        self.key = _new_key()
        self.kid = "key-1"
        self.published: dict[str, rsa.RSAPublicKey] = {self.kid: self.key.public_key()}
        self.person: dict[str, Any] = {}  # the signed-in person's claims (email, sub, amr, ...)
        self.tamper: dict[str, Any] = {}  # claims replaced in the ID token (None: left out)
        self.signer: tuple[str, Any, str] | None = None  # (alg, key, kid) instead of our own key
        self.codes: dict[str, dict[str, Any]] = {}
        self.hits: Counter[str] = Counter()
        self.token_requests: list[dict[str, Any]] = []
        self.token_status = 200
        self.discovery_issuer: str | None = None
        # Show a sign-in page first, as a real provider does: the way back then starts on the
        # provider's page, a cross-site navigation for the browser.
        self.interactive = False

    def app(self) -> web.Application:
        async def discovery(request: web.Request) -> web.Response:
            self.hits["discovery"] += 1
            return web.json_response(
                {
                    "issuer": self.discovery_issuer or self.issuer,
                    "authorization_endpoint": f"{self.issuer}/authorize",
                    "token_endpoint": f"{self.issuer}/token",
                    "jwks_uri": f"{self.issuer}/jwks",
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "code_challenge_methods_supported": ["S256"],
                    "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                }
            )

        async def authorize(request: web.Request) -> web.Response:
            if self.interactive and request.method == "GET":
                fields = "".join(
                    f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                    for k, v in request.query.items()
                )
                return web.Response(
                    content_type="text/html",
                    text=f'<!doctype html><title>Provider</title><form method="post" action="/authorize">'
                    f"{fields}<button>Sign in at the provider</button></form>",
                )
            q = await request.post() if request.method == "POST" else request.query
            problems = [
                name
                for name, ok in (
                    ("response_type", q.get("response_type") == "code"),
                    ("client_id", q.get("client_id") == CLIENT_ID),
                    ("redirect_uri", q.get("redirect_uri") == self.redirect_uri),
                    ("scope", q.get("scope", "").split() == ["openid", "email"]),
                    ("code_challenge_method", q.get("code_challenge_method") == "S256"),
                    ("code_challenge", len(q.get("code_challenge", "")) == 43),
                    ("state", len(q.get("state", "")) >= 32),
                    ("nonce", len(q.get("nonce", "")) >= 32),
                )
                if not ok
            ]
            if problems:
                return web.json_response({"error": "invalid_request", "bad": problems}, status=400)
            code = secrets.token_urlsafe(24)
            self.codes[code] = {
                "challenge": str(q["code_challenge"]),
                "redirect_uri": str(q["redirect_uri"]),
                "nonce": str(q["nonce"]),
            }
            location = f"{q['redirect_uri']}?code={code}&state={q['state']}"
            return web.Response(status=302, headers={"Location": location})

        async def token(request: web.Request) -> web.Response:
            self.hits["token"] += 1
            form = dict(await request.post())
            self.token_requests.append(
                {
                    "form": {k: v for k, v in form.items() if k != "code"},
                    "auth": request.headers.get("Authorization"),
                }
            )
            if self.token_status != 200:
                return web.Response(status=self.token_status, text="unavailable")
            try:
                auth = BasicAuth.decode(request.headers.get("Authorization", ""))
            except ValueError:
                auth = None
            if auth is None or (auth.login, auth.password) != (CLIENT_ID, CLIENT_SECRET):
                return web.json_response({"error": "invalid_client"}, status=401)
            grant = self.codes.pop(str(form.get("code", "")), None)  # a code works once
            if (
                grant is None
                or form.get("grant_type") != "authorization_code"
                or form.get("redirect_uri") != grant["redirect_uri"]
                or _b64(hashlib.sha256(str(form.get("code_verifier", "")).encode()).digest())
                != grant["challenge"]
            ):
                return web.json_response({"error": "invalid_grant"}, status=400)
            now = int(time.time())
            claims: dict[str, Any] = {
                "iss": self.issuer,
                "aud": CLIENT_ID,
                "iat": now,
                "exp": now + 300,
                "nonce": grant["nonce"],
                "sub": "subject-0",
                "email_verified": True,
                "amr": ["pwd", "mfa"],
                **self.person,
            }
            for name, value in self.tamper.items():
                if value is None:
                    claims.pop(name, None)
                else:
                    claims[name] = value
            alg, key, kid = self.signer or ("RS256", self.key, self.kid)
            id_token = jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})
            return web.json_response(
                {
                    "access_token": secrets.token_urlsafe(16),
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "id_token": id_token,
                }
            )

        async def jwks(request: web.Request) -> web.Response:
            self.hits["jwks"] += 1
            keys = [
                {**RSAAlgorithm.to_jwk(public, as_dict=True), "kid": kid, "use": "sig", "alg": "RS256"}
                for kid, public in self.published.items()
            ]
            return web.json_response({"keys": keys})

        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", discovery)
        app.router.add_get("/authorize", authorize)
        app.router.add_post("/authorize", authorize)
        app.router.add_post("/token", token)
        app.router.add_get("/jwks", jwks)
        return app

    def rotate(self) -> None:
        """A new signing key under a new kid, published beside the old one."""
        self.key, self.kid = _new_key(), f"key-{len(self.published) + 1}"
        self.published[self.kid] = self.key.public_key()


async def start_idp(redirect_uri: str, host: str = "127.0.0.1") -> tuple[FakeIdP, TestServer]:
    fake = FakeIdP(redirect_uri)
    server = TestServer(fake.app(), host=host)
    await server.start_server()
    fake.issuer = str(server.make_url("")).rstrip("/")
    return fake, server


@pytest.fixture
async def idp() -> AsyncIterator[FakeIdP]:
    fake, server = await start_idp(PUBLIC_BASE + sso.CALLBACK_PATH)
    try:
        yield fake
    finally:
        await server.close()


def oidc_table(idp: FakeIdP, **extra: Any) -> dict[str, Any]:
    return {
        "issuer": idp.issuer,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "display_name": "Acme SSO",
        "listed": True,
        **extra,
    }


@pytest.fixture
def config(app_config: Any, idp: FakeIdP) -> Any:
    """Overrides the shared one, so conftest's portal, browser and staff_factory use it: tenant
    acme signs in through the fake provider, tenant other has no single sign-on."""
    return app_config(tenants={"acme": {"oidc": oidc_table(idp)}})


async def at_idp(location: str) -> str:
    """What the browser does at the provider: follow the authorization URL, get sent back."""
    async with aiohttp.ClientSession() as http, http.get(location, allow_redirects=False) as resp:
        assert resp.status == 302, await resp.text()
        return resp.headers["Location"]


def local(url: str) -> str:
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == PUBLIC_BASE, url
    return f"{parts.path}?{parts.query}"


async def begin(b: Any, tenant: str = "acme") -> str:
    """Start single sign-on in browser ``b``; the callback path the provider sends it back to."""
    resp = await b.get(f"/portal/sso/{tenant}")
    assert resp.status == 303, await resp.text()
    return local(await at_idp(resp.headers["Location"]))


async def sign_in(b: Any, tenant: str = "acme") -> Any:
    return await b.get(await begin(b, tenant))


async def text_of(resp: Any) -> str:
    """The page as a person reads it (jinja escapes the apostrophes in our messages)."""
    return html.unescape(await resp.text())


def main_of(page: str) -> str:
    return page.split("<main", 1)[1]


async def user_id(portal: Any, email: str) -> uuid.UUID:
    async with portal.app[db_key].acquire() as conn:
        uid: uuid.UUID = await conn.fetchval("SELECT id FROM staff_users WHERE email = $1", email)
    return uid


async def audit_rows(portal: Any) -> list[dict[str, Any]]:
    async with portal.app[db_key].acquire() as conn:
        rows = await conn.fetch("SELECT tenant, actor, action, details FROM audit_log ORDER BY seq")
    return [{**dict(r), "details": json.loads(r["details"])} for r in rows]


async def session_count(portal: Any) -> int:
    async with portal.app[db_key].acquire() as conn:
        count: int = await conn.fetchval("SELECT count(*) FROM staff_sessions")
    return count


# --- the flow -------------------------------------------------------------------------------------


async def test_login_page_offers_a_button_per_tenant_with_sso(browser: Any) -> None:
    b = browser()
    page = await (await b.get("/portal/login")).text()
    assert re.findall(r'href="/portal/sso/([^"]+)"', page) == ["acme"]
    assert ">Sign in with Acme SSO</a>" in page
    for tenant in ("other", "nobody"):  # no single sign-on, no tenant: the same 404
        assert (await b.get(f"/portal/sso/{tenant}")).status == 404


async def test_start_sends_pkce_state_nonce_and_binds_the_browser(
    browser: Any, portal: Any, idp: FakeIdP
) -> None:
    b = browser()
    resp = await b.get("/portal/sso/acme")
    assert resp.status == 303
    url = urlsplit(resp.headers["Location"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{idp.issuer}/authorize"
    q = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert q["response_type"] == "code" and q["client_id"] == CLIENT_ID and q["scope"] == "openid email"
    assert q["redirect_uri"] == f"{PUBLIC_BASE}/portal/sso/callback"
    assert q["code_challenge_method"] == "S256" and len(q["code_challenge"]) == 43
    cookie = resp.cookies[sso.COOKIE]
    assert cookie["samesite"] == "Lax" and cookie["httponly"] and cookie["secure"] and cookie["path"] == "/"
    assert cookie["max-age"] == "600"
    async with portal.app[db_key].acquire() as conn:
        row = await conn.fetchrow(
            """SELECT state_hash, tenant, browser_hash, nonce, code_verifier, expires_at - created_at AS ttl
               FROM sso_states"""
        )
    # The state only as a hash; the browser binding is the cookie's hash; the challenge is the verifier's.
    assert bytes(row["state_hash"]) == hashlib.sha256(q["state"].encode()).digest()
    assert bytes(row["browser_hash"]) == hashlib.sha256(cookie.value.encode()).digest()
    assert row["nonce"] == q["nonce"] and row["tenant"] == "acme"
    assert _b64(hashlib.sha256(row["code_verifier"].encode()).digest()) == q["code_challenge"]
    assert row["ttl"].total_seconds() == 600


async def test_sign_in_with_mfa_at_the_provider(
    browser: Any, staff_factory: Any, portal: Any, idp: FakeIdP
) -> None:
    ana = await staff_factory("support")
    idp.person = {"email": ana.email.upper(), "sub": "ana-at-idp", "amr": ["pwd", "mfa"]}
    b = browser()
    resp = await sign_in(b)
    page = await resp.text()
    # 200 and a refresh of our own, not a redirect: the SameSite=Strict session cookie is not sent
    # on redirects that began at the provider.
    assert resp.status == 200, page
    assert '<meta http-equiv="refresh" content="0;url=/portal/">' in page
    assert '<a class="button" href="/portal/">Continue</a>' in page
    assert "<script" not in page and "default-src 'none'" in resp.headers["Content-Security-Policy"]
    session = resp.cookies["__Host-callrec_session"]
    assert session["samesite"] == "Strict" and session["httponly"] and session["secure"]
    assert sso.COOKIE not in b.cookies  # the binding cookie is spent
    home = await b.get("/portal/")
    assert home.status == 200 and "<h1>Recordings</h1>" in await home.text()

    uid = await user_id(portal, ana.email)
    logins = [r for r in await audit_rows(portal) if r["action"] == "user:login"]
    assert logins == [
        {
            "tenant": "acme",
            "actor": f"staff:{uid}",
            "action": "user:login",
            "details": {"user_id": str(uid), "role": "support", "method": "oidc"},
        }
    ]
    async with portal.app[db_key].acquire() as conn:
        link = await conn.fetchrow("SELECT oidc_issuer, oidc_subject FROM staff_users WHERE id = $1", uid)
        assert await conn.fetchval("SELECT count(*) FROM sso_states") == 0
        everything = await conn.fetchval("SELECT string_agg(details::text, ' ') FROM audit_log")
    assert (link["oidc_issuer"], link["oidc_subject"]) == (idp.issuer, "ana-at-idp")
    assert ana.email.split("@")[0] not in everything and "ana-at-idp" not in everything  # ids only
    # The token request authenticated the client (Basic), sent the verifier, no secret in the body.
    request = idp.token_requests[-1]
    assert request["auth"].startswith("Basic ") and "client_secret" not in request["form"]
    assert len(request["form"]["code_verifier"]) >= 43
    assert request["form"]["redirect_uri"] == f"{PUBLIC_BASE}/portal/sso/callback"


@pytest.mark.parametrize("amr", [["pwd"], None, ["pwd", "sms"]])
async def test_without_mfa_at_the_provider_the_totp_step_follows(
    browser: Any, staff_factory: Any, portal: Any, idp: FakeIdP, amr: list[str] | None
) -> None:
    ana = await staff_factory("support")
    idp.person = {"email": ana.email, "sub": "ana-at-idp"}
    idp.tamper = {"amr": amr}
    b = browser()
    resp = await sign_in(b)
    assert resp.status == 200
    assert '<meta http-equiv="refresh" content="0;url=/portal/mfa">' in await text_of(resp)
    home = await b.get("/portal/")
    assert home.status == 303 and home.headers["Location"] == "/portal/mfa"  # not in yet
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', await (await b.get("/portal/mfa")).text())
    assert csrf
    wrong = await b.post("/portal/mfa", {"csrf_token": csrf.group(1), "code": "000000"})
    assert wrong.status == 401
    done = await b.post("/portal/mfa", {"csrf_token": csrf.group(1), "code": ana.code()})
    assert done.status == 303 and done.headers["Location"] == "/portal/"
    assert (await b.get("/portal/")).status == 200
    uid = str(await user_id(portal, ana.email))
    steps = [(r["action"], r["details"]) for r in await audit_rows(portal) if r["action"].startswith("user:")]
    assert steps == [
        ("user:sso-verified", {"user_id": uid, "role": "support", "method": "oidc"}),
        ("user:login-failed", {"user_id": uid, "step": "mfa"}),  # the wrong code
        ("user:login", {"user_id": uid, "role": "support"}),  # written by the TOTP step, as after a password
    ]


async def test_refused_identities_read_the_same_and_change_nothing(
    browser: Any, staff_factory: Any, portal: Any, idp: FakeIdP
) -> None:
    ana = await staff_factory("support")
    gone = await staff_factory("support")
    locked = await staff_factory("support")
    elsewhere = await staff_factory("support", tenant="other")
    async with portal.app[db_key].acquire() as conn:
        await conn.execute("UPDATE staff_users SET disabled_at = now() WHERE email = $1", gone.email)
        await conn.execute(
            "UPDATE staff_users SET locked_until = now() + interval '10 minutes' WHERE email = $1",
            locked.email,
        )
    cases = {
        "unknown_account": {"email": "nobody@acme.example", "sub": "s1"},
        "no_email": {"email": None, "sub": "s1"},
        "disabled": {"email": gone.email, "sub": "s2"},
        "locked": {"email": locked.email, "sub": "s3"},
        "other_tenant": {"email": elsewhere.email, "sub": "s4"},
        "email_not_verified": {"email": ana.email, "sub": "s5", "email_verified": False},
        "email_not_verified_text": {"email": ana.email, "sub": "s5", "email_verified": "false"},
        "email_verified_missing": {"email": ana.email, "sub": "s5", "email_verified": None},
    }
    pages = {}
    for name, person in cases.items():
        idp.person = {}
        idp.tamper = person
        resp = await sign_in(browser())
        assert resp.status == 403, name
        assert "__Host-callrec_session" not in resp.cookies, name
        pages[name] = main_of(await resp.text())
    assert sso.NO_ACCOUNT in pages["unknown_account"]
    assert all(page == pages["unknown_account"] for page in pages.values()), pages
    assert await session_count(portal) == 0
    async with portal.app[db_key].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM staff_users WHERE oidc_subject IS NOT NULL") == 0
        assert await conn.fetchval("SELECT max(failed_logins) FROM staff_users") == 0
    failed = [
        (r["tenant"], r["details"]) for r in await audit_rows(portal) if r["action"] == "user:login-failed"
    ]
    ids = {who.email: str(await user_id(portal, who.email)) for who in (ana, gone, locked, elsewhere)}
    assert failed == [
        ("acme", {"user_id": ids[gone.email], "method": "oidc", "reason": "disabled"}),
        ("acme", {"user_id": ids[locked.email], "method": "oidc", "reason": "locked"}),
        # Recorded in the account's own tenant; nothing of it in acme's log.
        ("other", {"user_id": ids[elsewhere.email], "method": "oidc", "reason": "other_tenant"}),
        ("acme", {"user_id": ids[ana.email], "method": "oidc", "reason": "email_not_verified"}),
        ("acme", {"user_id": ids[ana.email], "method": "oidc", "reason": "email_not_verified"}),
        ("acme", {"user_id": ids[ana.email], "method": "oidc", "reason": "email_not_verified"}),
    ]
    assert not [r for r in await audit_rows(portal) if r["action"] == "user:login"]


async def test_the_provider_subject_is_linked_at_the_first_sign_in(
    browser: Any, staff_factory: Any, portal: Any, idp: FakeIdP
) -> None:
    ana = await staff_factory("support")
    bob = await staff_factory("support")
    idp.person = {"email": ana.email, "sub": "ana-at-idp"}
    assert (await sign_in(browser())).status == 200
    # The address was handed to someone else at the provider: not the account with it.
    idp.person = {"email": ana.email, "sub": "newcomer-at-idp"}
    assert (await sign_in(browser())).status == 403
    # Nor may ana's provider identity take over a second account (say, a changed e-mail address).
    idp.person = {"email": bob.email, "sub": "ana-at-idp"}
    assert (await sign_in(browser())).status == 403
    idp.person = {"email": ana.email, "sub": "ana-at-idp"}
    assert (await sign_in(browser())).status == 200
    reasons = [
        r["details"].get("reason") for r in await audit_rows(portal) if r["action"] == "user:login-failed"
    ]
    assert reasons == ["other_subject", "subject_linked_to_another_account"]
    assert await session_count(portal) == 2


# --- state, browser binding, replay ----------------------------------------------------------------


async def test_the_callback_needs_the_browser_that_started(
    browser: Any, staff_factory: Any, portal: Any, idp: FakeIdP
) -> None:
    ana = await staff_factory("support")
    idp.person = {"email": ana.email, "sub": "ana-at-idp"}
    victim, attacker = browser(), browser()
    # Login CSRF: the attacker's own callback URL, opened in the victim's browser.
    attackers_callback = await begin(attacker)
    resp = await victim.get(attackers_callback)
    assert resp.status == 400 and sso.EXPIRED in await text_of(resp)
    # The victim's browser had its own sign-in under way: a different binding cookie, also refused.
    victim_callback = await begin(victim)
    other = browser()
    await other.get("/portal/sso/acme")  # has a binding cookie, not the victim's
    assert (await other.get(victim_callback)).status == 400
    # Each state was spent by its one use, even though refused.
    assert (await attacker.get(attackers_callback)).status == 400
    assert (await victim.get(victim_callback)).status == 400
    assert await session_count(portal) == 0
    assert idp.hits["token"] == 0  # no code was ever exchanged


async def test_missing_unknown_expired_and_replayed_states(
    browser: Any, staff_factory: Any, portal: Any, idp: FakeIdP
) -> None:
    ana = await staff_factory("support")
    idp.person = {"email": ana.email, "sub": "ana-at-idp"}
    b = browser()
    await b.get("/portal/sso/acme")
    for path in (
        "/portal/sso/callback?code=x",
        f"/portal/sso/callback?code=x&state={secrets.token_urlsafe(32)}",
    ):
        resp = await b.get(path)
        assert resp.status == 400 and sso.EXPIRED in await text_of(resp), path

    late = await begin(b)
    async with portal.app[db_key].acquire() as conn:
        await conn.execute("UPDATE sso_states SET expires_at = now() - interval '1 second'")
    assert (await b.get(late)).status == 400

    callback = await begin(b)
    assert (await b.get(callback)).status == 200
    assert (await b.get(callback)).status == 400  # the state works once
    # The same code under a fresh state: the provider refuses a second use of a code.
    fresh = parse_qs(urlsplit(await begin(b)).query)["state"][0]
    code = parse_qs(urlsplit(callback).query)["code"][0]
    resp = await b.get(f"/portal/sso/callback?code={code}&state={fresh}")
    assert resp.status == 401 and sso.PROVIDER_REFUSED in await text_of(resp)
    assert await session_count(portal) == 1
    async with portal.app[db_key].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM sso_states") == 0


async def test_an_error_from_the_provider_signs_nobody_in(browser: Any, portal: Any, idp: FakeIdP) -> None:
    b = browser()
    state = parse_qs(urlsplit(await begin(b)).query)["state"][0]
    resp = await b.get(f"/portal/sso/callback?error=access_denied&state={state}")
    assert resp.status == 401 and sso.PROVIDER_REFUSED in await text_of(resp)
    assert await session_count(portal) == 0 and idp.hits["token"] == 0


# --- the ID token ------------------------------------------------------------------------------------


def _other_key_same_kid(idp: FakeIdP) -> tuple[str, Any, str]:
    return ("RS256", _new_key(), idp.kid)


BAD_TOKENS: dict[str, Any] = {
    "wrong nonce": {"nonce": "not-the-nonce-we-sent"},
    "no nonce": {"nonce": None},
    "wrong audience": {"aud": "another-client"},
    "wrong audience, azp naming us": {"aud": "another-client", "azp": CLIENT_ID},
    "an untrusted second audience": {"aud": [CLIENT_ID, "another-client"], "azp": CLIENT_ID},
    "wrong issuer": {"iss": "https://idp.example.com"},
    "expired": {"exp": int(time.time()) - 600, "iat": int(time.time()) - 900},
    "issued in the future": {"iat": int(time.time()) + 3600, "exp": int(time.time()) + 7200},
    "no subject": {"sub": None},
    "no expiry": {"exp": None},
    "amr not a list": {"amr": "mfa"},
    "signed with another key": _other_key_same_kid,
    "signed with the client secret (HS256)": lambda idp: ("HS256", CLIENT_SECRET * 2, idp.kid),
    "not signed (alg none)": lambda idp: ("none", None, idp.kid),
}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_id_tokens_that_do_not_verify_are_refused(
    browser: Any, staff_factory: Any, portal: Any, idp: FakeIdP, case: str
) -> None:
    ana = await staff_factory("support")
    idp.person = {"email": ana.email, "sub": "ana-at-idp"}
    bad = BAD_TOKENS[case]
    if callable(bad):
        idp.signer = bad(idp)
    else:
        idp.tamper = bad
    resp = await sign_in(browser())
    assert resp.status == 401, (case, resp.status)
    assert sso.NOT_VERIFIED in await text_of(resp)
    assert "__Host-callrec_session" not in resp.cookies
    assert await session_count(portal) == 0
    assert not [r for r in await audit_rows(portal) if r["action"].startswith("user:login")]


async def test_an_unknown_kid_refreshes_the_keys_once(
    browser: Any, staff_factory: Any, portal: Any, idp: FakeIdP
) -> None:
    ana = await staff_factory("support")
    idp.person = {"email": ana.email, "sub": "ana-at-idp"}
    idp.signer = ("RS256", _new_key(), "never-published")
    assert (await sign_in(browser())).status == 401
    assert idp.hits["jwks"] == 2  # the cached set, then one refresh
    assert (await sign_in(browser())).status == 401
    assert idp.hits["jwks"] == 2  # not again within a minute: no key-set fetch per forged token

    # A real rotation is picked up, with the refresh the last minute did not spend... once the minute is over.
    providers = portal.app[sso.providers_key]
    providers._last_refresh.clear()
    idp.signer = None
    idp.rotate()
    assert (await sign_in(browser())).status == 200
    assert idp.hits["jwks"] == 3 and idp.hits["discovery"] == 1


async def test_discovery_and_keys_are_cached(
    browser: Any, staff_factory: Any, portal: Any, idp: FakeIdP
) -> None:
    ana = await staff_factory("support")
    idp.person = {"email": ana.email, "sub": "ana-at-idp"}
    for _ in range(3):
        assert (await sign_in(browser())).status == 200
    assert (idp.hits["discovery"], idp.hits["jwks"], idp.hits["token"]) == (1, 1, 3)
    # A rotation right after a fetch: the first unknown kid may refresh at once.
    idp.rotate()
    assert (await sign_in(browser())).status == 200
    assert idp.hits["jwks"] == 2


# --- the provider misbehaving or misconfigured --------------------------------------------------------


async def test_a_provider_naming_another_issuer_is_not_used(browser: Any, idp: FakeIdP) -> None:
    idp.discovery_issuer = "https://impostor.example"
    resp = await browser().get("/portal/sso/acme")
    assert resp.status == 502 and sso.PROVIDER_DOWN in await text_of(resp)
    assert idp.hits["token"] == 0


async def test_a_failing_token_endpoint_is_a_502(
    browser: Any, staff_factory: Any, portal: Any, idp: FakeIdP
) -> None:
    idp.token_status = 503
    resp = await sign_in(browser())
    assert resp.status == 502 and sso.PROVIDER_DOWN in await text_of(resp)
    assert await session_count(portal) == 0


async def test_a_wrong_client_secret_is_refused_by_the_provider(
    aiohttp_client: Any, app_config: Any, staff_factory: Any, idp: FakeIdP
) -> None:
    config = app_config(tenants={"acme": {"oidc": oidc_table(idp, client_secret="not-the-secret")}})
    client = await aiohttp_client(create_app(config, run_workers=False))
    start = await client.get("/portal/sso/acme", allow_redirects=False)
    cookie = start.cookies[sso.COOKIE].value
    back = local(await at_idp(start.headers["Location"]))
    resp = await client.get(back, headers={"Cookie": f"{sso.COOKIE}={cookie}"}, allow_redirects=False)
    assert resp.status == 401 and sso.PROVIDER_REFUSED in await text_of(resp)
    assert idp.token_requests[-1]["auth"].startswith("Basic ")


# --- configuration -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "issuer",
    [
        "http://idp.example.com",
        "http://127.0.0.1.example.com",
        "ftp://idp.example.com",
        "https://idp.example.com/?x=1",
        "",
    ],
)
def test_an_issuer_that_is_not_https_is_refused(issuer: str) -> None:
    with pytest.raises(ConfigError, match=r"tenants\.acme\.oidc\.issuer"):
        config_from_mapping(
            {"tenants": {"acme": {"oidc": {"issuer": issuer, "client_id": "c", "client_secret": "s"}}}}
        )


@pytest.mark.parametrize(
    "issuer", ["https://login.example.com/realms/acme", "http://127.0.0.1:8081", "http://localhost:9000/idp"]
)
def test_https_and_loopback_issuers_are_accepted(issuer: str) -> None:
    cfg = config_from_mapping(
        {"tenants": {"acme": {"oidc": {"issuer": issuer, "client_id": "c", "client_secret": "s"}}}}
    )
    oidc = cfg.tenants["acme"].oidc
    assert oidc is not None and oidc.issuer == issuer
    assert oidc.scopes == "openid email" and oidc.mfa_amr == ("mfa",)
    assert oidc.require_email_verified is True and oidc.listed is False
    assert config_from_mapping({"tenants": {"acme": {}}}).tenants["acme"].oidc is None  # no table: off


@pytest.mark.parametrize(
    ("oidc", "key"),
    [
        ({"issuer": "https://idp.example.com", "client_secret": "s"}, "client_id"),
        (
            {"issuer": "https://idp.example.com", "client_id": "c"},
            "CALLREC_TENANTS__ACME__OIDC__CLIENT_SECRET",
        ),
        (
            {"issuer": "https://idp.example.com", "client_id": "c", "client_secret": "s", "scopes": "openid"},
            "scopes",
        ),
        (
            {"issuer": "https://idp.example.com", "client_id": "c", "client_secret": "s", "mfa_amr": 3},
            "mfa_amr",
        ),
        (
            {"issuer": "https://idp.example.com", "client_id": "c", "client_secret": "s", "clientid": "c"},
            "clientid",
        ),
    ],
)
def test_bad_oidc_tables_name_the_key(oidc: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        config_from_mapping({"tenants": {"acme": {"oidc": oidc}}})


def test_the_client_secret_can_come_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "callrec.toml"
    path.write_text(
        '[tenants.acme.oidc]\nissuer = "https://login.example.com"\nclient_id = "callrec"\n', encoding="utf-8"
    )
    cfg = load_config(path, environ={"CALLREC_TENANTS__ACME__OIDC__CLIENT_SECRET": "from-the-env"})
    oidc = cfg.tenants["acme"].oidc
    assert oidc is not None and oidc.client_secret == "from-the-env"


# --- a real browser ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_in_a_real_browser_the_sign_in_ends_on_the_recordings(
    aiohttp_server: Any, app_config: Any
) -> None:
    """Chromium, the portal on 127.0.0.1 and the provider on localhost: another site, so the
    provider's redirect back is a cross-site navigation, with SameSite applied for real."""
    need_browser()
    from playwright.async_api import async_playwright

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    fake, idp_server = await start_idp(base + sso.CALLBACK_PATH, host="localhost")
    try:
        assert fake.issuer.startswith("http://localhost:")
        config = app_config(server={"public_base_url": base}, tenants={"acme": {"oidc": oidc_table(fake)}})
        app = create_app(config, run_workers=False)
        await aiohttp_server(app, host="127.0.0.1", port=port)
        email = (await make_staff(app, "support")).email
        fake.person = {"email": email, "sub": "ana-at-idp", "amr": ["pwd", "mfa"]}
        fake.interactive = True
        async with asyncio.timeout(60), async_playwright() as pw:
            chromium = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                context = await chromium.new_context()
                context.set_default_timeout(10_000)
                page = await context.new_page()
                csp_errors: list[str] = []
                page.on(
                    "console", lambda m: csp_errors.append(m.text) if "Content Security" in m.text else None
                )
                await page.goto(f"{base}/portal/login")
                await page.get_by_role("link", name="Sign in with Acme SSO").click()
                await page.get_by_role("button", name="Sign in at the provider").click()
                await page.wait_for_url(re.compile(r"/portal/$"))
                await page.get_by_role("heading", name="Recordings").wait_for()
                cookies = {c["name"]: c for c in await context.cookies()}
                assert cookies["__Host-callrec_session"]["sameSite"] == "Strict"
                assert sso.COOKIE not in cookies
                assert csp_errors == []
            finally:
                await chromium.close()
        assert fake.hits["token"] == 1
    finally:
        await idp_server.close()


async def test_an_account_without_totp_signs_in_only_with_mfa_at_the_provider(
    browser: Any, staff_factory: Any, portal: Any, idp: FakeIdP
) -> None:
    """Enrolment shows the TOTP secret: it must not go to whoever holds the provider identity."""
    newcomer = await staff_factory("support", enrolled=False)
    idp.person = {"email": newcomer.email, "sub": "new-at-idp", "amr": ["pwd"]}
    refused = await sign_in(browser())
    assert refused.status == 403 and "__Host-callrec_session" not in refused.cookies
    async with portal.app[db_key].acquire() as conn:
        row = await conn.fetchrow(
            "SELECT oidc_subject, mfa_enrolled_at FROM staff_users WHERE email = $1", newcomer.email
        )
    assert row["oidc_subject"] is None and row["mfa_enrolled_at"] is None
    reasons = [r["details"]["reason"] for r in await audit_rows(portal) if r["action"] == "user:login-failed"]
    assert reasons == ["mfa_not_enrolled"]
    idp.person = {"email": newcomer.email, "sub": "new-at-idp", "amr": ["pwd", "mfa"]}
    b = browser()
    assert (await sign_in(b)).status == 200
    assert (await b.get("/portal/")).status == 200


@pytest.mark.parametrize("amr", [["otp"], ["hwk"], ["swk"], ["pwd", "otp"]])
async def test_a_single_factor_amr_is_not_mfa_by_default(
    browser: Any, staff_factory: Any, idp: FakeIdP, amr: list[str]
) -> None:
    ana = await staff_factory("support")
    idp.person = {"email": ana.email, "sub": "ana-at-idp"}
    idp.tamper = {"amr": amr}
    b = browser()
    resp = await sign_in(b)
    assert resp.status == 200
    assert '<meta http-equiv="refresh" content="0;url=/portal/mfa">' in await text_of(resp)
    assert (await b.get("/portal/")).headers["Location"] == "/portal/mfa"


async def test_two_accounts_linking_one_subject_at_once_refuse_one(
    browser: Any, staff_factory: Any, portal: Any, idp: FakeIdP, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unique index decides a race the earlier read cannot see: a refusal, not a server error."""
    ana, bob = await staff_factory("support"), await staff_factory("support")
    starts = []
    for _ in (ana, bob):
        b = browser()
        starts.append((b, await begin(b)))  # codes issued for each, before either comes back
    # The provider hands out the same subject for both e-mail addresses (a misconfigured directory).
    idp.person = {"sub": "shared-subject"}
    from callrec.db import sso as sso_db

    async def nobody_yet(conn: Any, *, issuer: str, subject: str) -> Any:
        return None  # as if both transactions read before either linked

    monkeypatch.setattr(sso_db, "holder_of", nobody_yet)
    results = []
    for (b, path), who in zip(starts, (ana, bob), strict=True):
        idp.tamper = {"email": who.email}
        results.append(await b.get(path))
    assert sorted(r.status for r in results) == [200, 403]
    async with portal.app[db_key].acquire() as conn:
        linked = await conn.fetchval("SELECT count(*) FROM staff_users WHERE oidc_subject = 'shared-subject'")
    assert linked == 1
    reasons = [r["details"]["reason"] for r in await audit_rows(portal) if r["action"] == "user:login-failed"]
    assert reasons == ["subject_linked_to_another_account"]


async def test_sso_can_stay_off_the_public_login_page(
    aiohttp_client: Any, app_config: Any, idp: FakeIdP
) -> None:
    config = app_config(tenants={"acme": {"oidc": oidc_table(idp, listed=False)}})
    client = await aiohttp_client(create_app(config, run_workers=False))
    page = await (await client.get("/portal/login")).text()
    assert "/portal/sso/" not in page and "Acme SSO" not in page
    assert (await client.get("/portal/sso/acme", allow_redirects=False)).status == 303  # still works


async def test_sign_ins_under_way_are_capped_per_tenant(
    browser: Any, portal: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anyone can start a sign-in; the rows it keeps cannot grow without bound."""
    monkeypatch.setattr(sso, "MAX_PENDING", 3)
    starts = [await browser().get("/portal/sso/acme") for _ in range(4)]
    assert [r.status for r in starts] == [303, 303, 303, 429]
    assert starts[3].headers["Retry-After"] == "60" and starts[3].cookies[sso.COOKIE].value == ""
    assert sso.BUSY in html.unescape(await starts[3].text())
    async with portal.app[db_key].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM sso_states") == 3
        await conn.execute("UPDATE sso_states SET expires_at = now() - interval '1 second'")
    assert (await browser().get("/portal/sso/acme")).status == 303  # expired ones make room
