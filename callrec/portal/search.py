"""The recording list's filters, sealed into the opaque ``search`` token that the result page's address holds.

A URL is written to the access logs of every proxy, load balancer and ingress controller it passes, so a
phone number must never be in one (DESIGN rule 3). The filter form therefore posts to ``/portal/search``,
which answers 303 See Other to ``/portal/?search=<token>`` (POST/redirect/GET): the back button, a reload
and the next-page link reach the result with a plain GET, and its address holds no number.

The token is the form's filters encrypted with Fernet (AES-CBC with HMAC-SHA256, from ``cryptography``)
under a key derived by HKDF from the session cookie's value, which the server never stores (PostgreSQL
holds only its SHA-256). So:

- only the browser holding that session can have its token read: a token copied into another session,
  from a log or a shared link, is refused;
- once the session ends (logout, idle or absolute timeout) nobody can read it, not even with copies of
  the database and of the access logs;
- each token has a fresh random IV: two searches for one number give unrelated tokens, so a log does not
  even show that the same person was searched for twice;
- it is short-lived: Fernet authenticates its creation time, and a token older than ``TTL`` is refused.

Nothing is stored server side, so whichever web process answers the next page can read it.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping
from datetime import timedelta

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from callrec.errors import BadRequest

# The filter form's fields. ``phone`` is personal data and is never taken from a URL; the others may
# still come in a query string (a bookmarked ``/portal/?held=yes`` keeps working).
FIELDS = (
    "from",
    "to",
    "phone",
    "agent",
    "min_minutes",
    "max_minutes",
    "consent",
    "verified",
    "held",
    "expiring_days",
)
PERSONAL = frozenset({"phone"})
URL_FIELDS = tuple(f for f in FIELDS if f not in PERSONAL)
MAX_VALUE = 200
TTL = timedelta(hours=1)
_INFO = b"callrec portal recording search v1"


def _fernet(session_cookie: str) -> Fernet:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(session_cookie.encode())
    return Fernet(base64.urlsafe_b64encode(key))


def from_form(form: Mapping[str, object]) -> dict[str, str]:
    """The filters a person filled in (blank fields left out), each at most MAX_VALUE characters."""
    filters = {}
    for name in FIELDS:
        value = str(form.get(name, "")).strip()
        if len(value) > MAX_VALUE:
            raise BadRequest(f"A filter is at most {MAX_VALUE} characters.")
        if value:
            filters[name] = value
    return filters


def seal(session_cookie: str, filters: Mapping[str, str]) -> str:
    return _fernet(session_cookie).encrypt(json.dumps(dict(filters)).encode()).decode()


def open_token(session_cookie: str, token: str, *, now: float | None = None) -> dict[str, str] | None:
    """The filters sealed in ``token``; None when it is not this session's, was altered or is past TTL."""
    if not token.isascii():
        return None
    try:
        plain = _fernet(session_cookie).decrypt_at_time(
            token, ttl=int(TTL.total_seconds()), current_time=int(time.time() if now is None else now)
        )
    except InvalidToken:
        return None
    filters = json.loads(plain)  # authenticated: written by seal() above
    return {name: str(filters[name]) for name in FIELDS if name in filters}
