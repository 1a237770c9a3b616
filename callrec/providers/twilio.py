"""Twilio: webhook signatures, the Calls resource, recording media and deleting Twilio's copy.

Signature scheme (https://www.twilio.com/docs/usage/webhooks/webhooks-security): base64 of
HMAC-SHA1 keyed with the account's auth token, over the full URL Twilio requested (scheme,
host, path, query) followed by every POST parameter sorted by name, each as name + value.
Twilio may have signed the URL with or without an explicit default port (:443 / :80), so,
like Twilio's own validator, both spellings are accepted.

REST API (https://www.twilio.com/docs/voice/api/call-resource, .../recording): HTTP Basic with
the Account SID and auth token, under ``https://api.twilio.com/2010-04-01/Accounts/{sid}/``
(a Twilio region has its own origin: the tenant's ``twilio_api_base``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable
from urllib.parse import quote, urlsplit, urlunsplit

DEFAULT_API_BASE = "https://api.twilio.com"

RECORDING_FIELDS = (
    "AccountSid",
    "CallSid",
    "RecordingSid",
    "RecordingUrl",
    "RecordingStatus",
    "RecordingDuration",
    "RecordingChannels",
    "RecordingStartTime",
    "RecordingSource",
    "RecordingTrack",
    "ErrorCode",
)


def compute_signature(url: str, params: Iterable[tuple[str, str]], auth_token: str) -> str:
    data = url + "".join(name + value for name, value in sorted(params, key=lambda kv: kv[0]))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _port_variants(url: str) -> list[str]:
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    host = parts.hostname or ""
    netloc_host = f"[{host}]" if ":" in host else host
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = userinfo + "@" if userinfo else ""
    variants = [url]
    if default is not None:
        if parts.port is None:
            variants.append(urlunsplit(parts._replace(netloc=f"{prefix}{netloc_host}:{default}")))
        elif parts.port == default:
            variants.append(urlunsplit(parts._replace(netloc=f"{prefix}{netloc_host}")))
    return variants


def signature_valid(url: str, params: list[tuple[str, str]], signature: str, auth_token: str) -> bool:
    """Constant-time check of ``X-Twilio-Signature`` against every accepted URL spelling."""
    if not signature or not auth_token or not signature.isascii():  # base64; a header may hold any byte
        return False
    ok = False
    for candidate in _port_variants(url):
        expected = compute_signature(candidate, params, auth_token)
        ok |= hmac.compare_digest(expected.encode(), signature.encode())
    return ok


def _account_base(account_sid: str, api_base: str) -> str:
    """``<api_base>/2010-04-01/Accounts/<sid>``. ``api_base`` is the tenant's configured
    ``twilio_api_base`` (a Twilio region has its own origin), never the RecordingUrl's origin:
    the request carries the account's credentials, and a callback must not choose where they go."""
    parts = urlsplit(api_base)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(f"not an API origin: {api_base!r}")
    return f"{parts.scheme}://{parts.netloc}/2010-04-01/Accounts/{quote(account_sid, safe='')}"


def call_url(account_sid: str, call_sid: str, *, api_base: str = DEFAULT_API_BASE) -> str:
    """``GET`` this (Basic auth) for the Call resource: ``from``, ``to``, ``direction``, ``start_time``."""
    return f"{_account_base(account_sid, api_base)}/Calls/{quote(call_sid, safe='')}.json"


def recording_resource_url(account_sid: str, recording_sid: str, *, api_base: str = DEFAULT_API_BASE) -> str:
    """``DELETE`` this (Basic auth) to delete Twilio's copy of a recording."""
    return f"{_account_base(account_sid, api_base)}/Recordings/{quote(recording_sid, safe='')}.json"
