"""Vonage Voice API: signed webhooks, the ``record`` event, application JWTs and the Calls resource.

Signed webhooks (https://developer.vonage.com/en/getting-started/concepts/webhooks#decoding-signed-webhooks):
every Voice webhook carries ``Authorization: Bearer <JWT>``. The JWT is HS256, keyed with the
account's *signature secret* (Dashboard > Settings, the one belonging to the ``api_key`` claim),
and its claims are ``iat`` (seconds), ``jti``, ``iss`` ("Vonage"), ``api_key``, optionally
``application_id``, and ``payload_hash``: the hex SHA-256 of the request payload. For a POST
(the ``record`` event is POSTed as JSON unless ``eventMethod`` says otherwise) the payload is the
request body as sent (Vonage support article 19033783342876,
https://api.support.vonage.com/hc/en-us/articles/19033783342876). The token has no ``exp``, so
freshness is judged from ``iat``. The HS256 check is done here with :mod:`hmac` (one algorithm,
constant-time comparison, no algorithm taken from the token), so no JWT library is trusted to
pick the algorithm.

The ``record`` event (https://developer.vonage.com/en/voice/voice-api/webhook-reference#record) has
``start_time``, ``end_time``, ``recording_url``, ``recording_uuid``, ``conversation_uuid``, ``size``
and ``timestamp``. It carries no phone numbers: they come from the Calls resource
(https://developer.vonage.com/en/api/voice, ``GET /v1/calls?conversation_uuid=...``).

API calls go to the tenant's configured ``vonage_api_base`` (default ``https://api.nexmo.com``,
Vonage's global endpoint; an application pinned to a region can name that region's origin, such
as ``https://api-eu-3.vonage.com``), never to the origin of a webhook's ``recording_url``: the
request carries the application's JWT, and a webhook must not choose where it goes.

Media and API calls are authenticated with an *application* JWT
(https://developer.vonage.com/en/getting-started/concepts/authentication#json-web-tokens): RS256,
signed with the application's private key, claims ``application_id``, ``iat``, ``jti`` and ``exp``.
"You will need to authenticate with a JWT signed by the same application key that created the
recording" (https://developer.vonage.com/en/voice/voice-api/concepts/recording).

Vonage documents no API for deleting a Voice recording: recordings are kept by Vonage for
:data:`PROVIDER_RETENTION_DAYS` days and then deleted automatically (same page). Callers that must
"tell the provider to delete" can only record that the provider copy expires on its own.

Note for handlers: the JWT does not cover the URL, so query-string tags on a Vonage ``eventUrl``
are *not* authenticated by the signature (unlike Twilio and Plivo, whose signatures include the
query string). Only the body is bound to the token through ``payload_hash``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from callrec.providers.base import InvalidEvent, RecordingEvent, check_url

DEFAULT_API_BASE = "https://api.nexmo.com"
PROVIDER_RETENTION_DAYS = 30
RECORDING_DELETE_SUPPORTED = False

SIGNED_WEBHOOK_ALGORITHM = "HS256"
MAX_TOKEN_LENGTH = 8192
MAX_EVENT_BYTES = 64 * 1024

_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
# recording_uuid / conversation_uuid are UUIDs, the latter prefixed "CON-"; accept any safe token.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


class SignatureError(Exception):
    """A signed webhook was refused. ``code`` is stable and machine-readable; ``message`` is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class NotARecordEvent(InvalidEvent):
    """A valid webhook that is not a recording (a status or transcription event): acknowledge, ignore."""


# --- signed webhooks ---------------------------------------------------------------------------


def _b64url_decode(segment: str, *, what: str) -> bytes:
    if not _B64URL.match(segment) or len(segment) % 4 == 1:
        raise SignatureError("malformed_token", f"the JWT {what} is not base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise SignatureError("malformed_token", f"the JWT {what} is not base64url") from None


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _json_object(raw: bytes, *, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise SignatureError("malformed_token", f"the JWT {what} is not a JSON object") from None
    if not isinstance(value, dict):
        raise SignatureError("malformed_token", f"the JWT {what} is not a JSON object")
    return value


def _numeric_claim(claims: Mapping[str, Any], name: str, *, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise SignatureError("missing_claim", f"the JWT has no {name!r} claim")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SignatureError("malformed_token", f"the {name!r} claim is not a number")
    return float(value)


def bearer_token(authorization_header: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header, or :class:`SignatureError`."""
    if not authorization_header or not authorization_header.strip():
        raise SignatureError("missing_authorization", "the request has no Authorization header")
    scheme, _, token = authorization_header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise SignatureError("malformed_authorization", "the Authorization header is not 'Bearer <JWT>'")
    if len(token) > MAX_TOKEN_LENGTH:
        raise SignatureError("malformed_token", "the JWT is too long")
    return token


def verify_signed_webhook(
    authorization_header: str | None,
    body: bytes,
    signature_secret: str,
    *,
    now: float | None = None,
    max_age_s: int = 300,
    clock_skew_s: int = 60,
    api_key: str | None = None,
    application_id: str | None = None,
) -> dict[str, Any]:
    """Verify a Vonage signed webhook and return its claims.

    Checks, in order: a ``Bearer`` token is present and well formed; its header says
    ``alg: HS256`` (``none``, ``RS256``, ``HS512``... are refused, and a ``crit`` header too);
    the HMAC-SHA256 over ``<header>.<payload>`` keyed with ``signature_secret`` matches
    (constant time); ``iat`` is present, not more than ``clock_skew_s`` in the future and not
    older than ``max_age_s``; ``exp``/``nbf`` are honoured if present; ``payload_hash`` equals
    the hex SHA-256 of ``body`` (constant time); and, when given, ``api_key`` /
    ``application_id`` equal the claims of the same name (binding the webhook to the tenant's
    Vonage account and application).

    Raises :class:`SignatureError` with ``code`` one of ``missing_authorization``,
    ``malformed_authorization``, ``malformed_token``, ``alg_not_allowed``, ``bad_signature``,
    ``missing_claim``, ``expired``, ``not_yet_valid``, ``payload_hash_mismatch``,
    ``api_key_mismatch``, ``application_mismatch`` or ``not_configured``.
    Replay inside the ``max_age_s`` window is not detected here; the ``jti`` claim is returned
    for callers that want to remember it (duplicate recordings are also caught by their id).
    """
    if not signature_secret:
        raise SignatureError("not_configured", "no Vonage signature secret is configured")
    token = bearer_token(authorization_header)
    parts = token.split(".")
    if len(parts) != 3:
        raise SignatureError("malformed_token", "the JWT does not have three parts")
    header_b64, payload_b64, signature_b64 = parts

    header = _json_object(_b64url_decode(header_b64, what="header"), what="header")
    alg = header.get("alg")
    if alg != SIGNED_WEBHOOK_ALGORITHM:
        raise SignatureError(
            "alg_not_allowed", f"the JWT algorithm must be {SIGNED_WEBHOOK_ALGORITHM}, not {alg!r}"
        )
    if "crit" in header:
        raise SignatureError("malformed_token", "the JWT has critical header extensions")

    given = _b64url_decode(signature_b64, what="signature")
    signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
    expected = hmac.new(signature_secret.encode("utf-8"), signing_input, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, given):
        raise SignatureError("bad_signature", "the JWT signature does not match the signature secret")

    claims = _json_object(_b64url_decode(payload_b64, what="payload"), what="payload")
    current = time.time() if now is None else now
    iat = _numeric_claim(claims, "iat", required=True)
    assert iat is not None
    if iat > current + clock_skew_s:
        raise SignatureError("not_yet_valid", "the JWT was issued in the future")
    if current - iat > max_age_s:
        raise SignatureError("expired", f"the JWT was issued more than {max_age_s} s ago")
    exp = _numeric_claim(claims, "exp", required=False)
    if exp is not None and current >= exp + clock_skew_s:
        raise SignatureError("expired", "the JWT has expired")
    nbf = _numeric_claim(claims, "nbf", required=False)
    if nbf is not None and current + clock_skew_s < nbf:
        raise SignatureError("not_yet_valid", "the JWT is not valid yet")

    payload_hash = claims.get("payload_hash")
    if payload_hash is None:
        raise SignatureError("missing_claim", "the JWT has no 'payload_hash' claim")
    if not isinstance(payload_hash, str) or not _HEX64.match(payload_hash):
        raise SignatureError("malformed_token", "the 'payload_hash' claim is not a hex SHA-256")
    body_hash = hashlib.sha256(body).hexdigest()
    if not hmac.compare_digest(body_hash.encode("ascii"), payload_hash.lower().encode("ascii")):
        raise SignatureError("payload_hash_mismatch", "the body does not match the JWT's payload_hash")

    if api_key is not None and not _claim_equals(claims, "api_key", api_key):
        raise SignatureError("api_key_mismatch", "the webhook was signed for another Vonage account")
    if application_id is not None and not _claim_equals(claims, "application_id", application_id):
        raise SignatureError("application_mismatch", "the webhook is for another Vonage application")
    return claims


def _claim_equals(claims: Mapping[str, Any], name: str, expected: str) -> bool:
    value = claims.get(name)
    return isinstance(value, str) and hmac.compare_digest(value.encode("utf-8"), expected.encode("utf-8"))


# --- the record event --------------------------------------------------------------------------


def _time_field(data: Mapping[str, Any], name: str) -> datetime | None:
    value = data.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise InvalidEvent(f"{name} must be an ISO 8601 timestamp")
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:  # Vonage sends UTC ("...Z"); a bare time is taken as UTC
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: in UTC, before year 1 or after 9999
        raise InvalidEvent(f"{name} is not an ISO 8601 timestamp: {value!r}") from None


def _id_field(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not _ID.match(value):
        raise InvalidEvent(f"{name} is missing or malformed")
    return value


def parse_recording_event(body: bytes) -> RecordingEvent:
    """Parse and validate the JSON body of a Voice API ``record`` event.

    Required: ``recording_url``, ``recording_uuid``, ``conversation_uuid``. Optional and
    validated when present: ``start_time``/``end_time``/``timestamp`` (ISO 8601, returned in
    UTC), ``size`` (non-negative integer bytes). ``duration_ms`` is ``end_time - start_time``.
    Any other event (``status`` events, transcription events, ...) raises :class:`InvalidEvent`.
    ``call_id`` is the ``conversation_uuid`` (the event names no call leg); the event carries no
    phone numbers, so ``from_number``/``to_number`` are ``None``: see :func:`parties_from_calls`.
    """
    if len(body) > MAX_EVENT_BYTES:
        raise InvalidEvent("the event body is too large")
    try:
        data = json.loads(body.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except UnicodeDecodeError:
        raise InvalidEvent("the event body is not UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise InvalidEvent(f"the event body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidEvent("the event body must be a JSON object")
    if "recording_url" not in data:
        kind = data.get("status") or data.get("type") or "unknown"
        raise NotARecordEvent(f"not a record event (no recording_url; event {str(kind)[:40]!r})")

    media_url = check_url(data.get("recording_url"), "recording_url")
    recording_id = _id_field(data, "recording_uuid")
    call_id = _id_field(data, "conversation_uuid")
    started = _time_field(data, "start_time")
    ended = _time_field(data, "end_time")
    event_at = _time_field(data, "timestamp")
    duration_ms: int | None = None
    if started is not None and ended is not None:
        if ended < started:
            raise InvalidEvent("end_time is before start_time")
        duration_ms = round((ended - started).total_seconds() * 1000)

    size = data.get("size")
    size_bytes: int | None
    if size is None or size == "":
        size_bytes = None
    elif isinstance(size, bool):
        raise InvalidEvent("size must be a non-negative integer")
    elif isinstance(size, int):
        size_bytes = size
    elif isinstance(size, str) and size.isdigit() and len(size) <= 18:
        size_bytes = int(size)
    else:
        raise InvalidEvent("size must be a non-negative integer")
    if size_bytes is not None and size_bytes < 0:
        raise InvalidEvent("size must be a non-negative integer")

    return RecordingEvent(
        provider="vonage",
        recording_id=recording_id,
        call_id=call_id,
        media_url=media_url,
        started_at=started,
        ended_at=ended,
        duration_ms=duration_ms,
        size_bytes=size_bytes,
        event_at=event_at,
    )


# --- application JWT, API URLs -----------------------------------------------------------------


def load_private_key(private_key_pem: str | bytes) -> rsa.RSAPrivateKey:
    """Load the application's PEM private key (as downloaded from the Vonage dashboard)."""
    data = private_key_pem.encode("utf-8") if isinstance(private_key_pem, str) else private_key_pem
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ValueError("the Vonage private key is not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the Vonage private key must be an RSA key (application JWTs are RS256)")
    if key.key_size < 2048:
        raise ValueError("the Vonage private key is shorter than 2048 bits")
    return key


def application_jwt(
    application_id: str,
    private_key_pem: str | bytes | rsa.RSAPrivateKey,
    *,
    now: float | None = None,
    ttl_s: int = 300,
) -> str:
    """An RS256 application JWT for ``Authorization: Bearer`` on media downloads and Voice API calls.

    Claims: ``application_id``, ``iat``, ``jti`` (random UUID) and ``exp = iat + ttl_s``
    (https://developer.vonage.com/en/getting-started/concepts/authentication#json-web-tokens).
    Mint one per request; never log it.
    """
    if not application_id or not _ID.match(application_id):
        raise ValueError("the Vonage application id is missing or malformed")
    if not 1 <= ttl_s <= 86400:
        raise ValueError("ttl_s must be between 1 second and 24 hours")
    key = (
        private_key_pem
        if isinstance(private_key_pem, rsa.RSAPrivateKey)
        else load_private_key(private_key_pem)
    )
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "application_id": application_id,
        "iat": issued,
        "jti": str(uuid.uuid4()),
        "exp": issued + ttl_s,
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"typ": "JWT"})


def auth_headers(application_id: str, private_key_pem: str | bytes | rsa.RSAPrivateKey) -> dict[str, str]:
    """``{"Authorization": "Bearer <application JWT>"}`` for one request."""
    return {"Authorization": "Bearer " + application_jwt(application_id, private_key_pem)}


def _base(api_base: str) -> str:
    parts = urlsplit(api_base)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(f"not an API origin: {api_base!r}")
    return f"{parts.scheme}://{parts.netloc}"


def call_lookup_url(conversation_uuid: str, *, api_base: str = DEFAULT_API_BASE) -> str:
    """``GET`` this (application JWT) to list the call legs of a conversation, with their from/to."""
    if not _ID.match(conversation_uuid):
        raise ValueError("malformed conversation_uuid")
    return f"{_base(api_base)}/v1/calls?conversation_uuid={quote(conversation_uuid, safe='')}"


def call_url(call_uuid: str, *, api_base: str = DEFAULT_API_BASE) -> str:
    """``GET`` this (application JWT) for one call leg."""
    if not _ID.match(call_uuid):
        raise ValueError("malformed call uuid")
    return f"{_base(api_base)}/v1/calls/{quote(call_uuid, safe='')}"


def _endpoint_number(value: object) -> str | None:
    if isinstance(value, Mapping):
        number = value.get("number")
        if number is None:  # sip / websocket / app endpoints carry uri or user instead
            number = value.get("uri") or value.get("user")
        return str(number) if isinstance(number, str | int) and str(number) else None
    if isinstance(value, str) and value:
        return value
    return None


def parties_from_calls(data: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``(from, to)`` from a ``GET /v1/calls?conversation_uuid=`` or ``GET /v1/calls/{uuid}`` response.

    For a conversation with several legs the earliest leg (by ``start_time``, then list order)
    is the one the caller placed: its ``from`` is the caller and its ``to`` the number dialled.
    Numbers are returned as Vonage gives them (E.164 digits without "+").
    """
    legs: list[Mapping[str, Any]]
    embedded = data.get("_embedded")
    if isinstance(embedded, Mapping) and isinstance(embedded.get("calls"), list):
        legs = [leg for leg in embedded["calls"] if isinstance(leg, Mapping)]
    else:
        legs = [data]
    if not legs:
        return None, None
    ordered = sorted(
        enumerate(legs),
        key=lambda item: (str(item[1].get("start_time") or "9999"), item[0]),
    )
    first = ordered[0][1]
    return _endpoint_number(first.get("from")), _endpoint_number(first.get("to"))
