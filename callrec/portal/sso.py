"""Single sign-on to the portal through a tenant's OpenID Connect provider.

The authorization code flow with PKCE (S256, RFC 7636), ``state`` and ``nonce``, as OpenID Connect
Core 1.0 §3.1 and the OAuth 2.0 Security Best Current Practice (RFC 9700 §2.1) ask:

- ``GET /portal/sso/{tenant}`` makes a state, a nonce and a code verifier and keeps them in
  PostgreSQL for ten minutes (``sso_states``, the state only as a hash), bound to this browser by a
  random cookie whose hash is stored with them; then it redirects to the provider. The cookie is
  SameSite=Lax, not Strict: the provider's redirect back is a cross-site navigation, on which a
  browser sends Lax cookies but not Strict ones.
- ``GET /portal/sso/callback`` takes the state row once (deleted as it is read), checks that the
  same browser started it (no login CSRF: RFC 9700 §4.7), exchanges the code at the token endpoint
  with client authentication and the verifier, and validates the ID token (OpenID Connect Core
  §3.1.3.7): its signature against the provider's published keys with asymmetric algorithms only,
  then ``iss``, ``aud``/``azp``, ``exp``, ``iat`` and ``nonce`` with authlib's ``CodeIDToken``.

Who may sign in: SSO creates no accounts. The ID token's ``email`` picks an existing account, which
must belong to the tenant whose provider answered, be enabled and not locked; an ``email_verified``
of false is refused. The provider's subject is linked to the account at its first sign-in and a
later sign-in with the same e-mail but another subject is refused (an address handed to someone
else does not hand over the account). Refusals all read the same, so nothing can be enumerated.

MFA: when the ID token's ``amr`` (RFC 8176) names a method listed in the tenant's ``mfa_amr`` the
session starts with MFA passed; otherwise the staff member still enters callrec's TOTP code, so
single sign-on is never weaker than password and TOTP.

The session cookie is SameSite=Strict, and a browser does not send it on the redirects that began
at the provider; so the callback answers 200 with a page that moves on by a meta refresh (a
navigation of our own page, on which the Strict cookie is sent) and a plain link.

Nothing about the person (e-mail, name) and no token goes into the log or the audit log: user ids only.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import aiohttp_jinja2
import asyncpg
from aiohttp import web
from authlib.oauth2.auth import ClientAuth
from authlib.oauth2.client import OAuth2Client
from authlib.oauth2.rfc6749.parameters import prepare_token_request
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry

from callrec.appkeys import config_key, db_key
from callrec.config import OidcConfig
from callrec.db import audit, staff
from callrec.db import sso as sso_db
from callrec.errors import CallrecError
from callrec.portal import accounts, sessions

log = logging.getLogger(__name__)

COOKIE = "__Host-callrec_sso"
CALLBACK_PATH = "/portal/sso/callback"
STATE_TTL = timedelta(minutes=10)
# Sign-ins under way per tenant (each lives STATE_TTL): far above any company's staff signing in
# at once, low enough that anonymous requests cannot fill the database.
MAX_PENDING = 2000
# Every call to a provider: connect within 5 s, done within 10 s.
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10, sock_connect=5)
METADATA_TTL = 3600.0
KEYS_TTL = 3600.0
# An unknown "kid" means the provider rotated its keys: fetch them again, but not more often than this.
KEYS_REFRESH_MIN = 60.0
MAX_DOCUMENT = 512 * 1024
# Clock skew allowed on exp and iat, in seconds.
LEEWAY = 60
# Asymmetric only: "HS256" would be a signature by the client secret, "none" none at all.
ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed25519",
)  # fmt: skip
_SIGNING_KEY_TYPES = ("RSA", "EC", "OKP")
_ERROR_CODE = re.compile(r"^[a-z_]{1,40}$")

EXPIRED = "This sign-in has expired or was started in another browser. Start again from the login page."
NOT_VERIFIED = (
    "The identity provider's answer could not be verified, so you are not signed in. "
    "Start again from the login page."
)
NO_ACCOUNT = (
    "There is no callrec account you can use with this sign-in. Ask your callrec administrator "
    "to check your account."
)
PROVIDER_REFUSED = "The identity provider did not sign you in. Start again from the login page."
BUSY = "Too many sign-ins are under way right now. Try again in a minute."
PROVIDER_DOWN = (
    "The identity provider could not be reached or did not answer as expected. Try again in a minute."
)


class SsoError(CallrecError):
    """A sign-in that did not work; ``code`` is the reason for the log, ``message`` is for the person."""


class ProviderUnavailable(Exception):
    """The provider could not be reached, or answered with something that is not OpenID Connect."""


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    algorithms: tuple[str, ...]
    token_auth_method: str


def _hash(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def _endpoint(doc: Mapping[str, Any], name: str, issuer: str) -> str:
    """An endpoint from the discovery document: https, or http on loopback for a loopback issuer."""
    url = doc.get(name)
    if not isinstance(url, str):
        raise ProviderUnavailable(f"the discovery document has no {name}")
    parts = urlsplit(url)
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme == "https" or (parts.scheme == "http" and loopback and issuer.startswith("http://")):
        return url
    raise ProviderUnavailable(f"the discovery document's {name} is not an https URL")


def _metadata(doc: Mapping[str, Any], issuer: str) -> ProviderMetadata:
    # OpenID Connect Discovery 1.0 §4.3: the issuer in the document must be exactly the one configured.
    if doc.get("issuer") != issuer:
        raise ProviderUnavailable(f"the discovery document names another issuer ({doc.get('issuer')!r:.100})")
    offered = doc.get("id_token_signing_alg_values_supported") or ["RS256"]
    usable = tuple(
        a for a in ALGORITHMS if isinstance(offered, list) and a in offered and a in JWSRegistry.algorithms
    )
    if not usable:
        raise ProviderUnavailable(f"the provider signs ID tokens with none of {', '.join(ALGORITHMS)}")
    # No list means client_secret_basic (OpenID Connect Discovery 1.0 §3).
    methods = doc.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
    method = next(
        (
            m
            for m in ("client_secret_basic", "client_secret_post")
            if isinstance(methods, list) and m in methods
        ),
        None,
    )
    if method is None:
        raise ProviderUnavailable(
            "the token endpoint takes neither client_secret_basic nor client_secret_post"
        )
    return ProviderMetadata(
        issuer=issuer,
        authorization_endpoint=_endpoint(doc, "authorization_endpoint", issuer),
        token_endpoint=_endpoint(doc, "token_endpoint", issuer),
        jwks_uri=_endpoint(doc, "jwks_uri", issuer),
        algorithms=usable,
        token_auth_method=method,
    )


class Providers:
    """The tenants' providers: discovery documents and signing keys, cached per issuer."""

    def __init__(self, http: aiohttp.ClientSession, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.http = http
        self._clock = clock
        self._metadata: dict[str, tuple[ProviderMetadata, float]] = {}
        self._keys: dict[str, tuple[KeySet, float]] = {}
        self._last_refresh: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def _json(self, method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
        # No redirects: a provider's endpoints are the ones its discovery document names.
        try:
            async with self.http.request(
                method, url, allow_redirects=False, timeout=HTTP_TIMEOUT, **kwargs
            ) as resp:
                body = await resp.content.read(MAX_DOCUMENT + 1)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ProviderUnavailable(f"{urlsplit(url).netloc}: {exc.__class__.__name__}") from None
        if len(body) > MAX_DOCUMENT:
            raise ProviderUnavailable(f"{urlsplit(url).netloc}: the answer is too large")
        try:
            return status, json.loads(body)
        except ValueError:
            raise ProviderUnavailable(f"{urlsplit(url).netloc}: the answer ({status}) is not JSON") from None

    async def _document(self, url: str) -> dict[str, Any]:
        status, doc = await self._json("GET", url, headers={"Accept": "application/json"})
        if status != 200 or not isinstance(doc, dict):
            raise ProviderUnavailable(f"{urlsplit(url).netloc} answered {status}")
        return doc

    def _lock(self, issuer: str) -> asyncio.Lock:
        return self._locks.setdefault(issuer, asyncio.Lock())

    async def metadata(self, issuer: str) -> ProviderMetadata:
        async with self._lock(issuer):
            cached = self._metadata.get(issuer)
            if cached and self._clock() - cached[1] < METADATA_TTL:
                return cached[0]
            url = issuer.rstrip("/") + "/.well-known/openid-configuration"
            meta = _metadata(await self._document(url), issuer)
            self._metadata[issuer] = (meta, self._clock())
            return meta

    async def keys(self, meta: ProviderMetadata, *, refresh: bool = False) -> KeySet:
        async with self._lock(meta.issuer):
            cached = self._keys.get(meta.issuer)
            now = self._clock()
            if cached and not refresh and now - cached[1] < KEYS_TTL:
                return cached[0]
            if cached and refresh:
                # Tokens with unknown kids must not turn into a fetch each.
                last = self._last_refresh.get(meta.issuer)
                if last is not None and now - last < KEYS_REFRESH_MIN:
                    return cached[0]
                self._last_refresh[meta.issuer] = now
            doc = await self._document(meta.jwks_uri)
            listed = doc.get("keys")
            signing = [
                k
                for k in (listed if isinstance(listed, list) else [])
                if isinstance(k, dict) and k.get("kty") in _SIGNING_KEY_TYPES and k.get("use", "sig") == "sig"
            ]
            try:
                key_set = KeySet.import_key_set({"keys": signing})
            except (JoseError, ValueError, TypeError, KeyError):
                raise ProviderUnavailable(f"{meta.issuer}: no usable signing keys in its key set") from None
            self._keys[meta.issuer] = (key_set, now)
            return key_set

    async def exchange_code(
        self, meta: ProviderMetadata, oidc: OidcConfig, *, code: str, code_verifier: str, redirect_uri: str
    ) -> dict[str, Any]:
        """The token endpoint's answer to the code (RFC 6749 §4.1.3, with the PKCE verifier)."""
        body = prepare_token_request(
            "authorization_code", code=code, redirect_uri=redirect_uri, code_verifier=code_verifier
        )
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        auth = ClientAuth(oidc.client_id, oidc.client_secret, meta.token_auth_method)
        url, headers, body = auth.prepare("POST", meta.token_endpoint, headers, body)
        status, answer = await self._json("POST", url, data=body.encode(), headers=headers)
        if not isinstance(answer, dict):
            raise ProviderUnavailable(
                f"{meta.issuer}: the token endpoint's answer ({status}) is not an object"
            )
        if status != 200 or "error" in answer:
            error = answer.get("error")
            code_ = error if isinstance(error, str) and _ERROR_CODE.match(error) else "unknown"
            raise SsoError(PROVIDER_REFUSED, code=f"token_refused:{code_}", status=401)
        if not isinstance(answer.get("id_token"), str):
            raise SsoError(NOT_VERIFIED, code="no_id_token", status=401)
        return answer

    async def verify_id_token(
        self, meta: ProviderMetadata, oidc: OidcConfig, id_token: str, *, nonce: str, access_token: object
    ) -> dict[str, Any]:
        """The ID token's claims once its signature and claims are valid (OpenID Connect Core §3.1.3.7)."""
        registry = JWSRegistry(algorithms=list(meta.algorithms))
        try:
            try:
                token = jwt.decode(id_token, await self.keys(meta), registry=registry)
            except InvalidKeyIdError:
                token = jwt.decode(id_token, await self.keys(meta, refresh=True), registry=registry)
            claims = CodeIDToken(
                token.claims,
                token.header,
                {
                    "iss": {"essential": True, "values": [meta.issuer]},
                    "aud": {"essential": True, "values": [oidc.client_id]},
                    "sub": {"essential": True},
                    "nonce": {"essential": True, "values": [nonce]},
                },
                {
                    "nonce": nonce,
                    "client_id": oidc.client_id,
                    "access_token": access_token if isinstance(access_token, str) else None,
                },
            )
            claims.validate(leeway=LEEWAY)
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise SsoError(NOT_VERIFIED, code=f"id_token:{exc.__class__.__name__}", status=401) from None
        aud = claims["aud"]
        # Core §3.1.3.7 (3): refused when it "contains additional audiences not trusted by the Client".
        if isinstance(aud, list) and any(a != oidc.client_id for a in aud):
            raise SsoError(NOT_VERIFIED, code="id_token:other_audiences", status=401)
        return dict(claims)


providers_key = web.AppKey("sso_providers", Providers)


def _oidc_of(request: web.Request, tenant: str) -> OidcConfig | None:
    config = request.app[config_key].tenant(tenant)
    return config.oidc if config is not None else None


def _redirect_uri(request: web.Request) -> str:
    return request.app[config_key].public_base_url + CALLBACK_PATH


def _page(request: web.Request, template: str, status: int = 200, **values: Any) -> web.Response:
    return aiohttp_jinja2.render_template(
        template, request, {"session": None, "csrf_token": "", **values}, status=status
    )


def _failure(request: web.Request, exc: SsoError, *, tenant: str | None) -> web.Response:
    log.warning("sso sign-in refused (tenant %s): %s", tenant or "-", exc.code)
    titles = {
        400: "Start again",
        401: "Not signed in",
        403: "Not signed in",
        429: "Busy",
        502: "Identity provider unavailable",
    }
    response = _page(
        request,
        "sso_error.html",
        status=exc.status,
        title=titles.get(exc.status, "Not signed in"),
        message=exc.message,
    )
    response.del_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="Lax")
    return response


async def start(request: web.Request) -> web.Response:
    tenant = request.match_info["tenant"]
    oidc = _oidc_of(request, tenant)
    if oidc is None:
        raise web.HTTPNotFound()
    try:
        meta = await request.app[providers_key].metadata(oidc.issuer)
    except ProviderUnavailable as exc:
        log.warning("sso provider of tenant %s unavailable: %s", tenant, exc)
        return _failure(
            request, SsoError(PROVIDER_DOWN, code="provider_unavailable", status=502), tenant=tenant
        )
    state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    code_verifier = secrets.token_urlsafe(64)  # 86 characters of the 43..128 RFC 7636 §4.1 allows
    # One binding cookie per browser: two tabs signing in at once both work.
    browser = request.cookies.get(COOKIE, "")
    if not re.fullmatch(r"[A-Za-z0-9_-]{43}", browser):
        browser = secrets.token_urlsafe(32)
    async with request.app[db_key].acquire() as conn:
        saved = await sso_db.save_state(
            conn,
            state_hash=_hash(state),
            tenant=tenant,
            browser_hash=_hash(browser),
            nonce=nonce,
            code_verifier=code_verifier,
            ttl=STATE_TTL,
            max_pending=MAX_PENDING,
        )
    if not saved:
        log.warning("sso of tenant %s: %d sign-ins already under way; refusing more", tenant, MAX_PENDING)
        response = _failure(request, SsoError(BUSY, code="too_many_pending", status=429), tenant=tenant)
        response.headers["Retry-After"] = "60"
        return response
    client = OAuth2Client(
        None,
        client_id=oidc.client_id,
        scope=oidc.scopes,
        redirect_uri=_redirect_uri(request),
        code_challenge_method="S256",
    )
    url, _ = client.create_authorization_url(
        meta.authorization_endpoint, state=state, code_verifier=code_verifier, nonce=nonce
    )
    response = sessions.redirect(url)
    response.set_cookie(
        COOKIE,
        browser,
        path="/",
        secure=True,
        httponly=True,
        samesite="Lax",
        max_age=int(STATE_TTL.total_seconds()),
    )
    return response


async def callback(request: web.Request) -> web.Response:
    tenant: str | None = None
    try:
        state = await _take_state(request)
        tenant = state.tenant
        oidc = _oidc_of(request, tenant)
        if oidc is None:
            raise SsoError(EXPIRED, code="tenant_without_sso", status=400)
        if "error" in request.query:
            error = request.query["error"]
            raise SsoError(
                PROVIDER_REFUSED,
                code=f"provider_error:{error if _ERROR_CODE.match(error) else 'unknown'}",
                status=401,
            )
        code = request.query.get("code", "")
        if not code:
            raise SsoError(EXPIRED, code="no_code", status=400)
        providers = request.app[providers_key]
        try:
            meta = await providers.metadata(oidc.issuer)
            answer = await providers.exchange_code(
                meta, oidc, code=code, code_verifier=state.code_verifier, redirect_uri=_redirect_uri(request)
            )
            claims = await providers.verify_id_token(
                meta, oidc, answer["id_token"], nonce=state.nonce, access_token=answer.get("access_token")
            )
        except ProviderUnavailable as exc:
            log.warning("sso provider of tenant %s unavailable: %s", tenant, exc)
            raise SsoError(PROVIDER_DOWN, code="provider_unavailable", status=502) from None
        return await _sign_in(request, tenant, oidc, meta, claims)
    except SsoError as exc:
        return _failure(request, exc, tenant=tenant)


async def _take_state(request: web.Request) -> sso_db.SsoState:
    value = request.query.get("state", "")
    if not value:
        raise SsoError(EXPIRED, code="no_state", status=400)
    async with request.app[db_key].acquire() as conn:
        state = await sso_db.take_state(conn, _hash(value))
    if state is None:
        raise SsoError(EXPIRED, code="unknown_state", status=400)
    if state.expired:
        raise SsoError(EXPIRED, code="expired_state", status=400)
    # The browser that comes back must be the one that set out (RFC 9700 §4.7.1: login CSRF).
    if not hmac.compare_digest(state.browser_hash, _hash(request.cookies.get(COOKIE, ""))):
        raise SsoError(EXPIRED, code="other_browser", status=400)
    return state


def mfa_at_provider(amr: object, accepted: tuple[str, ...]) -> bool:
    """Whether the ID token's ``amr`` names a method the tenant accepts as multi-factor."""
    return isinstance(amr, list) and any(isinstance(m, str) and m in accepted for m in amr)


def _email_verified(claims: Mapping[str, Any], *, required: bool) -> bool:
    # Absent: some workforce providers (Entra ID among them) do not send it for addresses they
    # manage; accepted only when the tenant turned require_email_verified off. Present, it must say
    # true (some providers send the string "true").
    verified = claims.get("email_verified", None if required else True)
    return verified is True or verified == "true"


async def _sign_in(
    request: web.Request, tenant: str, oidc: OidcConfig, meta: ProviderMetadata, claims: Mapping[str, Any]
) -> web.Response:
    email = claims.get("email")
    subject = str(claims["sub"])
    mfa = mfa_at_provider(claims.get("amr"), oidc.mfa_amr)
    now = datetime.now(UTC)
    refused: str | None = None
    session_id = ""
    async with request.app[db_key].acquire() as conn, conn.transaction():
        user = await staff.by_email(conn, email.strip().lower()) if isinstance(email, str) else None
        if user is None:
            refused = "unknown_account"
        elif user.tenant != tenant:  # another tenant's account is not this provider's to vouch for
            refused = "other_tenant"
        elif user.disabled_at is not None:
            refused = "disabled"
        elif accounts.is_locked(user.locked_until, now=now):
            refused = "locked"
        elif not _email_verified(claims, required=oidc.require_email_verified):
            refused = "email_not_verified"
        elif user.mfa_enrolled_at is None and not mfa:
            # Without MFA at the provider the next step would be callrec's TOTP enrolment, which
            # shows the secret: whoever holds the provider identity would set up the second factor.
            refused = "mfa_not_enrolled"
        else:
            link = await sso_db.subject_of(conn, user.id)
            holder = await sso_db.holder_of(conn, issuer=meta.issuer, subject=subject)
            if link.issuer == meta.issuer and link.subject != subject:
                refused = "other_subject"
            elif holder is not None and holder != user.id:
                refused = "subject_linked_to_another_account"
            elif link.issuer != meta.issuer:
                try:
                    async with conn.transaction():  # a savepoint: the refusal below still commits
                        await sso_db.link_subject(conn, user.id, issuer=meta.issuer, subject=subject)
                except asyncpg.UniqueViolationError:  # linked to another account a moment ago
                    refused = "subject_linked_to_another_account"
        if user is not None and refused is not None:
            await audit.record(
                conn,
                tenant=user.tenant,
                actor=f"staff:{user.id}",
                action=audit.AuditAction.USER_LOGIN_FAILED,
                details={"user_id": str(user.id), "method": "oidc", "reason": refused},
            )
        elif user is not None:
            if mfa:
                await staff.record_success(conn, user.id)
            session_id = await sessions.start(conn, user, mfa_passed=mfa)
            # Without MFA at the provider the login is not done: callrec's TOTP step writes the
            # user:login entry, as after a password.
            await audit.record(
                conn,
                tenant=user.tenant,
                actor=f"staff:{user.id}",
                action=audit.AuditAction.USER_LOGIN if mfa else audit.AuditAction.USER_SSO_VERIFIED,
                details={"user_id": str(user.id), "role": user.role, "method": "oidc"},
            )
    if refused is not None or user is None:
        suffix = f" (user {user.id})" if user is not None else ""
        raise SsoError(NO_ACCOUNT, code=f"{refused}{suffix}", status=403)
    log.info("sso sign-in of user %s (tenant %s, mfa at the provider: %s)", user.id, tenant, mfa)
    response = _page(request, "sso_continue.html", next="/portal/" if mfa else "/portal/mfa")
    sessions.set_cookie(response, session_id)
    response.del_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="Lax")
    return response


def add_routes(app: web.Application) -> None:
    """The SSO routes, the login page's list of providers, and the HTTP client for the providers."""
    tenants = {name: t.oidc for name, t in app[config_key].tenants.items() if t.oidc is not None}
    aiohttp_jinja2.get_env(app).globals["sso_providers"] = tuple(
        (name, oidc.display_name or name) for name, oidc in sorted(tenants.items()) if oidc.listed
    )
    # The callback first: otherwise "/portal/sso/{tenant}" would take it. No HEAD: both change state.
    app.router.add_get(CALLBACK_PATH, callback, allow_head=False)
    app.router.add_get("/portal/sso/{tenant}", start, allow_head=False)

    async def http_client(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(
            timeout=HTTP_TIMEOUT, headers={"User-Agent": "callrec"}, cookie_jar=aiohttp.DummyCookieJar()
        ) as http:
            app[providers_key] = Providers(http)
            yield

    app.cleanup_ctx.append(http_client)
