"""Plivo: V3 webhook signatures, record callbacks, the Call and Recording resources.

Signature scheme V3 (https://www.plivo.com/docs/voice/xml/request/validation and
https://www.plivo.com/docs/voice/concepts/signature-validation): every request Plivo makes to
your URLs carries ``X-Plivo-Signature-V3`` (keyed with the auth token of the account or
subaccount that owns the call), ``X-Plivo-Signature-Ma-V3`` (keyed with the *main* account's auth
token) and ``X-Plivo-Signature-V3-Nonce``. The signature is base64(HMAC-SHA256(auth token,
``<base>.<nonce>``)) where ``<base>`` is built from the URL Plivo requested:

* ``scheme://host[:port]/path`` exactly as configured (no default-port normalisation);
* the query string, decoded, sorted by name (several values of one name sorted too), re-joined as
  ``name=value`` pairs with ``&``, after a ``?``;
* for a POST with parameters: ``?`` (even with no query), then, if there was a query, a ``.``,
  then every POST parameter sorted by name as ``name`` + ``value`` with no separator;
* for a GET: the request's parameters are the query, merged with the URL's own query.

Several signatures may be sent comma-separated; any one matching is enough. The layout above is
not spelled out in Plivo's prose docs: it is what Plivo's own SDK validators compute (Python
``plivo.utils.signature_v3.validate_v3_signature``, Node ``lib/utils/v3Security.js``), which is
what the tests check this module against. Non-ASCII query values are decoded as UTF-8 (as the
Node SDK does; the Python SDK double-encodes them, so keep callback-URL query values ASCII).

Record callbacks: the ``<Record>`` XML element's ``callbackUrl``/``action`` receive ``RecordUrl``,
``RecordingID``, ``RecordingDuration`` (s), ``RecordingDurationMs``, ``RecordingStartMs``,
``RecordingEndMs`` plus the call's ``CallUUID`` (and on ``action`` the usual ``From``/``To``...)
(https://www.plivo.com/docs/voice/xml/record); the Record-a-call API's ``callback_url`` receives
the same in snake case: ``record_url``, ``recording_id``, ``call_uuid``, ``recording_duration``,
``recording_duration_ms``, ``recording_start_ms``, ``recording_end_ms``
(https://www.plivo.com/docs/voice/api/call/record-calls/start-recording-a-call). Both are accepted.

REST API (https://www.plivo.com/docs/voice/api/overview): HTTP Basic with the Auth ID as user
and the Auth Token as password, under ``https://api.plivo.com/v1/Account/{auth_id}/``:
``GET Call/{call_uuid}/`` is the call detail record (``from_number``, ``to_number``,
``call_direction``; https://www.plivo.com/docs/voice/api/call/retrieve-a-call) and
``DELETE Recording/{recording_id}/`` deletes Plivo's copy (204;
https://www.plivo.com/docs/voice/api/recordings). Recording media (``RecordUrl``, on
media.plivo.com) is fetched with the same Basic credentials, which Plivo accepts whether or not
the account enforces authentication on media URLs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote, urlsplit

from callrec.providers.base import InvalidEvent, RecordingEvent, check_url

DEFAULT_API_BASE = "https://api.plivo.com"
SIGNATURE_HEADER = "X-Plivo-Signature-V3"
MAIN_ACCOUNT_SIGNATURE_HEADER = "X-Plivo-Signature-Ma-V3"
NONCE_HEADER = "X-Plivo-Signature-V3-Nonce"

MAX_SIGNATURES = 16
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")
_AUTH_ID = re.compile(r"^[A-Za-z0-9]{1,64}$")
_DECIMAL = re.compile(r"^\d{1,18}(\.\d{1,9})?$")
# epoch milliseconds between 2000-01-01 and 2100-01-01
_MIN_EPOCH_MS = 946_684_800_000
_MAX_EPOCH_MS = 4_102_444_800_000


# --- V3 signatures -----------------------------------------------------------------------------


def _grouped(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    groups: dict[str, list[str]] = {}
    for name, value in pairs:
        groups.setdefault(name, []).append(value)
    return [(name, sorted(groups[name])) for name in sorted(groups)]


def _sorted_query(pairs: Iterable[tuple[str, str]]) -> str:
    return "&".join(f"{name}={value}" for name, values in _grouped(pairs) for value in values)


def _sorted_params(pairs: Iterable[tuple[str, str]]) -> str:
    return "".join(f"{name}{value}" for name, values in _grouped(pairs) for value in values)


def signature_base(method: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """The string Plivo signs before ``.<nonce>`` is appended (see the module docstring)."""
    verb = method.upper()
    if verb not in ("GET", "POST"):
        raise ValueError("Plivo signs GET and POST requests only")
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"
    query_pairs = parse_qsl(parts.query, keep_blank_values=True)
    param_pairs = list(params)
    if verb == "GET":
        query = _sorted_query([*query_pairs, *param_pairs])
        return base + ("?" + query if query else "")
    query = _sorted_query(query_pairs)
    if not param_pairs:
        return base + ("?" + query if query else "")
    return base + "?" + query + ("." if query else "") + _sorted_params(param_pairs)


def compute_signature(
    method: str, url: str, params: Iterable[tuple[str, str]], nonce: str, auth_token: str
) -> str:
    """base64(HMAC-SHA256(auth_token, ``<signature_base>.<nonce>``))."""
    message = f"{signature_base(method, url, params)}.{nonce}".encode()
    digest = hmac.new(auth_token.encode("utf-8"), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def signature_valid(
    method: str,
    url: str,
    params: list[tuple[str, str]],
    nonce: str,
    signature_header: str,
    auth_token: str,
) -> bool:
    """Constant-time check of ``X-Plivo-Signature-V3`` (or ``-Ma-V3`` with the main account's token).

    ``url`` is the full public URL Plivo requested, query string included, as it was configured
    at Plivo (scheme, host, port and path exactly); ``params`` are the POST form fields (for a
    GET, leave them empty: the query string is taken from ``url``). ``signature_header`` may hold
    several comma-separated signatures. Returns ``False`` for anything malformed.
    """
    if not signature_header or not auth_token or not nonce:
        return False
    try:
        expected = compute_signature(method, url, params, nonce, auth_token).encode("ascii")
    except (ValueError, UnicodeError):
        return False
    candidates = [c.strip() for c in signature_header.split(",") if c.strip()]
    ok = False
    for candidate in candidates[:MAX_SIGNATURES]:
        try:
            given = candidate.encode("ascii")
        except UnicodeEncodeError:
            continue
        ok |= hmac.compare_digest(expected, given)
    return ok


# --- record callbacks --------------------------------------------------------------------------


def _single_values(params: Iterable[tuple[str, str]] | Mapping[str, str]) -> dict[str, str]:
    pairs = params.items() if isinstance(params, Mapping) else params
    values: dict[str, str] = {}
    for name, value in pairs:
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidEvent("callback parameters must be strings")
        if name in values and values[name] != value:
            raise InvalidEvent(f"{name} is given twice with different values")
        values[name] = value
    return values


def _first(values: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = values.get(name)
        if value is not None and value.strip() != "":
            return value.strip()
    return None


def _decimal(values: Mapping[str, str], *names: str) -> float | None:
    raw = _first(values, *names)
    if raw is None:
        return None
    if not _DECIMAL.match(raw):
        raise InvalidEvent(f"{names[0]} must be a non-negative number, got {raw[:32]!r}")
    return float(raw)


def _epoch_ms(values: Mapping[str, str], *names: str) -> datetime | None:
    ms = _decimal(values, *names)
    if ms is None:
        return None
    if not _MIN_EPOCH_MS <= ms <= _MAX_EPOCH_MS:
        raise InvalidEvent(f"{names[0]} is not a plausible epoch time in milliseconds")
    return datetime.fromtimestamp(ms / 1000, UTC)


def _check_id(value: str | None, name: str) -> str:
    if value is None or not _ID.match(value):
        raise InvalidEvent(f"{name} is missing or malformed")
    return value


def parse_record_callback(params: Iterable[tuple[str, str]] | Mapping[str, str]) -> RecordingEvent:
    """Parse and validate a record callback (``<Record>`` XML or Record-a-call API, either spelling).

    ``call_id`` is Plivo's ``CallUUID``; ``from_number``/``to_number`` are filled only when the
    callback carried ``From``/``To`` (the ``action`` URL does, ``callbackUrl`` may not): otherwise
    use :func:`call_lookup_url` and :func:`parties_from_call`.

    Required: the media URL (``RecordUrl``/``record_url``), ``RecordingID``/``recording_id`` and
    ``CallUUID``/``call_uuid``. ``duration_ms`` comes from ``RecordingDurationMs``, else
    ``RecordingEndMs - RecordingStartMs``, else ``RecordingDuration`` seconds. Start and end
    (epoch ms) are returned as UTC datetimes. A parameter repeated with different values, a
    malformed number or URL raises :class:`InvalidEvent`. The media-host allow-list is the
    caller's business (``[ingest] media_hosts``).
    """
    values = _single_values(params)
    media_url = check_url(_first(values, "RecordUrl", "record_url"), "RecordUrl")
    recording_id = _check_id(_first(values, "RecordingID", "recording_id"), "RecordingID")
    call_id = _check_id(_first(values, "CallUUID", "call_uuid"), "CallUUID")
    started = _epoch_ms(values, "RecordingStartMs", "recording_start_ms")
    ended = _epoch_ms(values, "RecordingEndMs", "recording_end_ms")
    if started is not None and ended is not None and ended < started:
        raise InvalidEvent("RecordingEndMs is before RecordingStartMs")

    duration_ms: int | None = None
    explicit_ms = _decimal(values, "RecordingDurationMs", "recording_duration_ms")
    seconds = _decimal(values, "RecordingDuration", "recording_duration")
    if explicit_ms is not None:
        duration_ms = round(explicit_ms)
    elif started is not None and ended is not None:
        duration_ms = round((ended - started).total_seconds() * 1000)
    elif seconds is not None:
        duration_ms = round(seconds * 1000)

    return RecordingEvent(
        provider="plivo",
        recording_id=recording_id,
        call_id=call_id,
        media_url=media_url,
        started_at=started,
        ended_at=ended,
        duration_ms=duration_ms,
        size_bytes=None,
        from_number=_first(values, "From", "from"),
        to_number=_first(values, "To", "to"),
    )


# --- REST API ----------------------------------------------------------------------------------


def _account_base(auth_id: str, api_base: str) -> str:
    if not _AUTH_ID.match(auth_id):
        raise ValueError("the Plivo auth id is missing or malformed")
    parts = urlsplit(api_base)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(f"not an API origin: {api_base!r}")
    return f"{parts.scheme}://{parts.netloc}/v1/Account/{auth_id}"


def recording_delete_url(auth_id: str, recording_id: str, *, api_base: str = DEFAULT_API_BASE) -> str:
    """``DELETE`` this (Basic auth) to delete Plivo's copy; 204 on success, 404 if already gone."""
    if not _ID.match(recording_id):
        raise ValueError("malformed recording id")
    return f"{_account_base(auth_id, api_base)}/Recording/{quote(recording_id, safe='')}/"


def call_lookup_url(auth_id: str, call_uuid: str, *, api_base: str = DEFAULT_API_BASE) -> str:
    """``GET`` this (Basic auth) for the call detail record: ``from_number``, ``to_number``, ..."""
    if not _ID.match(call_uuid):
        raise ValueError("malformed call uuid")
    return f"{_account_base(auth_id, api_base)}/Call/{quote(call_uuid, safe='')}/"


def parties_from_call(data: Mapping[str, object]) -> tuple[str | None, str | None]:
    """``(from, to)`` from a call detail record (``GET Call/{call_uuid}/``), as Plivo gives them."""

    def text(name: str) -> str | None:
        value = data.get(name)
        return value if isinstance(value, str) and value else None

    return text("from_number"), text("to_number")


def basic_auth_headers(auth_id: str, auth_token: str) -> dict[str, str]:
    """``{"Authorization": "Basic base64(auth_id:auth_token)"}`` for the REST API and recording media."""
    if not _AUTH_ID.match(auth_id) or not auth_token:
        raise ValueError("the Plivo auth id or auth token is missing or malformed")
    credentials = base64.b64encode(f"{auth_id}:{auth_token}".encode()).decode("ascii")
    return {"Authorization": "Basic " + credentials}


media_auth_headers = basic_auth_headers
