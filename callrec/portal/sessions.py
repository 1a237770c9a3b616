"""Server-side portal sessions and the security around them.

- The cookie carries a random 256-bit id; PostgreSQL stores only its SHA-256. ``__Host-`` prefix,
  HttpOnly, Secure, SameSite=Strict (OWASP Session Management Cheat Sheet).
- Idle timeout and absolute timeout; a new id after the password and again after MFA, so a
  session fixed before login is worthless (session fixation).
- Every state-changing form carries the session's CSRF token (synchronizer token pattern); the
  login form, which has no session yet, uses a double-submit cookie.
- Security headers on every portal response: a strict Content-Security-Policy with no inline
  script or style, frame-ancestors none, no referrer, no sniffing, HSTS over HTTPS.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aiohttp import web

from callrec.appkeys import db_key
from callrec.db import Conn, staff

COOKIE = "__Host-callrec_session"
LOGIN_CSRF_COOKIE = "__Host-callrec_login"
IDLE_TIMEOUT = timedelta(minutes=30)
CSRF_FAILED = "The form was stale or not ours (CSRF check failed). Go back, reload the page and try again."
ABSOLUTE_TIMEOUT = timedelta(hours=10)

CSP = (
    "default-src 'none'; img-src 'self' data:; media-src 'self'; style-src 'self'; script-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


@dataclass(frozen=True)
class PortalSession:
    id_hash: bytes
    user: staff.StaffUser
    csrf_token: str
    mfa_passed: bool


session_key = web.RequestKey("portal_session", PortalSession)


def _hash(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode()).digest()


async def start(conn: Conn, user: staff.StaffUser, *, mfa_passed: bool) -> str:
    """A new session (a new id every time: after the password, and again after MFA)."""
    session_id = secrets.token_urlsafe(32)
    await conn.execute(
        """INSERT INTO staff_sessions (id_hash, user_id, tenant, csrf_token, mfa_passed, expires_at)
           VALUES ($1, $2, $3, $4, $5, now() + $6::interval)""",
        _hash(session_id),
        user.id,
        user.tenant,
        secrets.token_urlsafe(32),
        mfa_passed,
        ABSOLUTE_TIMEOUT,
    )
    return session_id


async def end(conn: Conn, id_hash: bytes) -> None:
    await conn.execute("DELETE FROM staff_sessions WHERE id_hash = $1", id_hash)


async def load(conn: Conn, session_id: str) -> PortalSession | None:
    """The session if it is alive (not idle too long, not past its absolute end, user enabled)."""
    row = await conn.fetchrow(
        """UPDATE staff_sessions SET last_seen_at = now()
           WHERE id_hash = $1 AND expires_at > now() AND last_seen_at > now() - $2::interval
           RETURNING id_hash, user_id, csrf_token, mfa_passed""",
        _hash(session_id),
        IDLE_TIMEOUT,
    )
    if row is None:
        return None
    user = await staff.by_id(conn, row["user_id"])
    if user is None or user.disabled_at is not None:
        return None
    return PortalSession(bytes(row["id_hash"]), user, row["csrf_token"], row["mfa_passed"])


def set_cookie(response: web.StreamResponse, session_id: str) -> None:
    response.set_cookie(
        COOKIE,
        session_id,
        path="/",
        secure=True,
        httponly=True,
        samesite="Strict",
        max_age=int(ABSOLUTE_TIMEOUT.total_seconds()),
    )


def delete_host_cookie(response: web.StreamResponse, name: str, *, samesite: str) -> None:
    """Expire a ``__Host-`` cookie. Its deletion is a Set-Cookie like any other: without Secure and
    Path=/ (and with no Domain) a browser ignores it, and the cookie stays (RFC 6265bis §4.1.3.2)."""
    response.del_cookie(name, path="/", secure=True, httponly=True, samesite=samesite)


def clear_cookie(response: web.StreamResponse) -> None:
    delete_host_cookie(response, COOKIE, samesite="Strict")


def csrf_valid(expected: str, given: object) -> bool:
    return isinstance(given, str) and bool(given) and hmac.compare_digest(expected, given)


def user_id_of(request: web.Request) -> uuid.UUID:
    return request[session_key].user.id


# Paths that work without a logged-in session (everything else redirects to the login page).
PUBLIC = ("/portal/login", "/portal/static/", "/portal/sso/")
# Paths that work after the password but before MFA.
PRE_MFA = ("/portal/mfa", "/portal/logout")


@web.middleware
async def portal_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if not request.path.startswith("/portal"):
        return await handler(request)
    response = await _guarded(request, handler)
    headers = response.headers
    headers.setdefault("Content-Security-Policy", CSP)
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
    headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    headers["Cache-Control"] = "no-store"
    if request.secure or request.headers.get("X-Forwarded-Proto") == "https":
        headers.setdefault("Strict-Transport-Security", "max-age=63072000; includeSubDomains")
    return response


async def _guarded(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.path.startswith(PUBLIC):
        return await handler(request)
    cookie = request.cookies.get(COOKIE)
    session = None
    if cookie:
        async with request.app[db_key].acquire() as conn:
            session = await load(conn, cookie)
    if session is None:
        response = redirect("/portal/login")
        clear_cookie(response)
        return response
    request[session_key] = session
    if not session.mfa_passed and not request.path.startswith(PRE_MFA):
        return redirect("/portal/mfa")
    if request.method not in ("GET", "HEAD"):
        form = await request.post()
        if not csrf_valid(session.csrf_token, form.get("csrf_token")):
            return web.Response(status=403, text=CSRF_FAILED)
    return await handler(request)


def redirect(location: str) -> web.Response:
    """303 See Other (a plain response, so the middleware still adds the security headers)."""
    return web.Response(status=303, headers={"Location": location})


def now() -> datetime:
    return datetime.now(UTC)
