"""Provider webhooks. A webhook is acknowledged (2xx) only after its job row has committed;
anything that prevents that (database or store down) answers 503 and leaves nothing behind."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, BinaryIO, cast

import phonenumbers
from aiohttp import web
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from callrec import erasure, faults
from callrec.api.body import read_body
from callrec.appkeys import batcher_key, config_key, db_key, keys_key, store_key
from callrec.config import Config, TenantConfig
from callrec.consent.jurisdiction import classify, load_consent_laws, locate
from callrec.crypto import envelope
from callrec.db import audit, events, intents, jobs, recordings
from callrec.errors import BadRequest, Forbidden, NotFound, PayloadTooLarge
from callrec.ingest.media import check_media_url
from callrec.ingest.tags import TAG_NAMES, parse_tags
from callrec.providers import plivo, twilio, vonage
from callrec.providers.base import InvalidEvent
from callrec.spool import directory as spool_directory

log = logging.getLogger(__name__)

INGEST_TWILIO = "ingest.twilio"
INGEST_UPLOAD = "ingest.upload"
INGEST_VONAGE = "ingest.vonage"
INGEST_PLIVO = "ingest.plivo"

SIGNATURE_TOLERANCE_S = 300  # DESIGN.md: a signed upload older than 5 minutes is rejected
_TWILIO_SID = {
    "AccountSid": re.compile(r"^AC[0-9a-fA-F]{32}$"),
    "CallSid": re.compile(r"^CA[0-9a-fA-F]{32}$"),
    "RecordingSid": re.compile(r"^RE[0-9a-fA-F]{32}$"),
}
_TWILIO_STATUSES = ("completed", "absent", "failed", "in-progress")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")


def tenant_of(request: web.Request) -> TenantConfig:
    tenant = request.app[config_key].tenant(request.match_info["tenant"])
    if tenant is None:
        raise NotFound("unknown tenant", code="unknown_tenant")
    return tenant


def spool_dir(config: Config) -> Path:
    """This process's private scratch directory (:mod:`callrec.spool`)."""
    return spool_directory(config.data_dir)


async def form_params(request: web.Request) -> list[tuple[str, str]]:
    """The fields of an ``application/x-www-form-urlencoded`` body (Twilio's and Plivo's callbacks),
    read under the app's ``client_max_size``; 400 for a body that is not text in its charset."""
    if request.content_type != "application/x-www-form-urlencoded":
        raise BadRequest("expected an application/x-www-form-urlencoded body", code="unsupported_media_type")
    try:
        form = await request.post()
    except (UnicodeDecodeError, LookupError):  # LookupError: an unknown charset= (aiohttp decodes with it)
        raise BadRequest("the form is not text in the charset it declares", code="invalid_form") from None
    return [(name, value) for name, value in form.items() if isinstance(value, str)]


# --- Twilio -------------------------------------------------------------------------------


async def twilio_recording(request: web.Request) -> web.Response:
    config = request.app[config_key]
    tenant = tenant_of(request)
    if not tenant.twilio_auth_token:
        raise Forbidden("no Twilio account is configured for this tenant", code="provider_not_configured")
    params = await form_params(request)
    url = config.public_base_url + request.raw_path
    if not twilio.signature_valid(
        url, params, request.headers.get("X-Twilio-Signature", ""), tenant.twilio_auth_token
    ):
        raise Forbidden("the X-Twilio-Signature does not match", code="invalid_signature")

    fields = {name: value for name, value in params if name in twilio.RECORDING_FIELDS}
    for name, pattern in _TWILIO_SID.items():
        if not pattern.match(fields.get(name, "")):
            raise BadRequest(f"{name} is missing or malformed", code="invalid_callback")
    if not hmac.compare_digest(fields["AccountSid"], tenant.twilio_account_sid):
        raise Forbidden("the callback is for another Twilio account", code="account_mismatch")
    status = fields.get("RecordingStatus", "")
    if status not in _TWILIO_STATUSES:
        raise BadRequest("RecordingStatus is missing or unknown", code="invalid_callback")
    tags = parse_tags({name: request.query.get(name) for name in TAG_NAMES})

    pool = request.app[db_key]
    if status == "in-progress":
        return web.json_response({"status": "ignored"}, status=200)
    if status in ("absent", "failed"):
        async with pool.acquire() as conn, conn.transaction():
            created = await events.record_provider_event(
                conn,
                tenant=tenant.name,
                provider="twilio",
                kind=f"recording-{status}",
                call_id=fields["CallSid"],
                provider_recording_id=fields["RecordingSid"],
                details={"error_code": fields.get("ErrorCode", "")},
            )
            if created:
                await audit.record(
                    conn,
                    tenant=tenant.name,
                    actor="provider:twilio",
                    action=audit.AuditAction.PROVIDER_EVENT,
                    details={
                        "event": f"recording-{status}",
                        "call_id": fields["CallSid"],
                        "provider_recording_id": fields["RecordingSid"],
                        "error_code": fields.get("ErrorCode", ""),
                    },
                )
        return web.json_response({"status": "recorded", "event": f"recording-{status}"}, status=200)

    check_media_url(fields.get("RecordingUrl", ""), config.ingest.media_hosts)
    started = _rfc2822(fields.get("RecordingStartTime"))
    payload = remote_payload(
        provider="twilio",
        call_id=fields["CallSid"],
        provider_recording_id=fields["RecordingSid"],
        media_url=fields["RecordingUrl"],
        started_at=started,
        tags=tags.as_payload(),
        source={"recording_source": fields.get("RecordingSource"), "track": fields.get("RecordingTrack")},
        account_sid=fields["AccountSid"],
    )
    return await enqueue_remote(request, tenant, INGEST_TWILIO, fields["RecordingSid"], payload)


def remote_payload(
    *,
    provider: str,
    call_id: str,
    provider_recording_id: str,
    media_url: str,
    started_at: datetime | None,
    tags: dict[str, Any],
    source: dict[str, Any] | None = None,
    **extra: str,
) -> dict[str, Any]:
    """The job for a recording the provider holds: ids and where to fetch it; never phone numbers."""
    return {
        "recording_id": str(uuid.uuid4()),
        "provider": provider,
        "call_id": call_id,
        "provider_recording_id": provider_recording_id,
        "media_url": media_url,
        "started_at": started_at.isoformat() if started_at else None,
        "tags": tags,
        "source": {k: v for k, v in (source or {}).items() if v},
        **extra,
    }


async def enqueue_remote(
    request: web.Request, tenant: TenantConfig, kind: str, dedupe_key: str, payload: dict[str, Any]
) -> web.Response:
    """Commit the job, then acknowledge: 202 for a new recording, 200 for a repeat."""
    job_id, created = await request.app[batcher_key].enqueue(
        tenant=tenant.name,
        kind=kind,
        dedupe_key=dedupe_key,
        payload=payload,
        max_attempts=request.app[config_key].ingest.max_attempts,
    )
    return web.json_response(
        {"status": "queued" if created else "duplicate", "job_id": job_id}, status=202 if created else 200
    )


def _rfc2822(value: str | None) -> datetime | None:
    """Twilio's times are RFC 2822 ("Mon, 23 Nov 2026 10:00:01 +0000")."""
    if not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None


# --- Vonage ------------------------------------------------------------------------------


async def vonage_recording(request: web.Request) -> web.Response:
    """Vonage's ``record`` event, a signed webhook (HS256 JWT whose ``payload_hash`` covers the body).

    Vonage signs only the body, not the URL, so query-string tags would be forgeable and are
    not read: consent and announcement evidence for Vonage calls comes through signed call events.
    """
    config = request.app[config_key]
    tenant = tenant_of(request)
    if not tenant.vonage_signature_secret:
        raise Forbidden(
            "no Vonage signature secret is configured for this tenant", code="provider_not_configured"
        )
    body = await read_body(request, vonage.MAX_EVENT_BYTES, "Vonage events are limited to 64 KiB")
    try:
        vonage.verify_signed_webhook(
            request.headers.get("Authorization"),
            body,
            tenant.vonage_signature_secret,
            api_key=tenant.vonage_api_key or None,
            application_id=tenant.vonage_application_id or None,
        )
    except vonage.SignatureError as exc:
        raise Forbidden(exc.message, code="invalid_signature") from None
    try:
        event = vonage.parse_recording_event(body)
    except vonage.NotARecordEvent:
        return web.json_response({"status": "ignored"}, status=200)
    except InvalidEvent as exc:
        raise BadRequest(str(exc), code="invalid_callback") from None
    check_media_url(event.media_url, config.ingest.media_hosts)
    payload = remote_payload(
        provider="vonage",
        call_id=event.call_id,
        provider_recording_id=event.recording_id,
        media_url=event.media_url,
        started_at=event.started_at,
        tags={},
    )
    return await enqueue_remote(request, tenant, INGEST_VONAGE, event.recording_id, payload)


# --- Plivo -------------------------------------------------------------------------------


async def plivo_recording(request: web.Request) -> web.Response:
    """Plivo's record callback, signed with X-Plivo-Signature-V3 over the URL, the POST params and
    a nonce (https://www.plivo.com/docs/voice/xml/request/validation). Query tags are signed too."""
    config = request.app[config_key]
    tenant = tenant_of(request)
    if not (tenant.plivo_auth_id and tenant.plivo_auth_token):
        raise Forbidden("no Plivo account is configured for this tenant", code="provider_not_configured")
    params = await form_params(request)
    url = config.public_base_url + request.raw_path
    if not plivo.signature_valid(
        request.method,
        url,
        params,
        request.headers.get(plivo.NONCE_HEADER, ""),
        request.headers.get(plivo.SIGNATURE_HEADER, ""),
        tenant.plivo_auth_token,
    ):
        raise Forbidden("the X-Plivo-Signature-V3 does not match", code="invalid_signature")
    try:
        event = plivo.parse_record_callback(params)
    except InvalidEvent as exc:
        raise BadRequest(str(exc), code="invalid_callback") from None
    check_media_url(event.media_url, config.ingest.media_hosts)
    tags = parse_tags({name: request.query.get(name) for name in TAG_NAMES})
    payload = remote_payload(
        provider="plivo",
        call_id=event.call_id,
        provider_recording_id=event.recording_id,
        media_url=event.media_url,
        started_at=event.started_at,
        tags=tags.as_payload(),
    )
    return await enqueue_remote(request, tenant, INGEST_PLIVO, event.recording_id, payload)


# --- PBX upload ---------------------------------------------------------------------------


def _parse_signature_header(value: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    signatures: list[str] = []
    for item in value.split(","):
        key, _, val = item.strip().partition("=")
        if key == "t" and val.isdigit():
            timestamp = int(val)
        elif key == "v1" and re.fullmatch(r"[0-9a-fA-F]{64}", val):
            signatures.append(val.lower())
    if timestamp is None or not signatures:
        raise Forbidden("Callrec-Signature must be t=<unix seconds>,v1=<hex>", code="invalid_signature")
    return timestamp, signatures


def _callrec_mac(secret: str, timestamp: int) -> hmac.HMAC:
    """The Callrec-Signature MAC, HMAC-SHA256(secret, "<t>.<body>"), fed the prefix; the caller
    feeds the body (at once, or as it streams in)."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode(), hashlib.sha256)


def _require_match(mac: hmac.HMAC, signatures: list[str]) -> None:
    """403 unless one of the header's ``v1`` values is the MAC (several allowed: secret rotation)."""
    expected = mac.hexdigest()
    if not any(hmac.compare_digest(expected, sig) for sig in signatures):
        raise Forbidden("the Callrec-Signature does not match the body", code="invalid_signature")


def check_signature_time(timestamp: int, *, now: float | None = None) -> None:
    skew = abs((time.time() if now is None else now) - timestamp)
    if skew > SIGNATURE_TOLERANCE_S:
        raise Forbidden("the signature timestamp is more than 5 minutes away", code="signature_expired")


# RFC 2046 §5.1.1: boundary := 0*69<bchars> bcharsnospace, so 1 to 70 characters of these, the
# last not a space. Anything else is refused from the header, before a byte of the body is read.
_BOUNDARY = re.compile(rb"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
# What an upload may carry beyond max_media_mb: the multipart framing and the metadata part.
UPLOAD_OVERHEAD = 2 * 65536
_SPOOL_CHUNK = 1 << 20


def upload_boundary(content_type: str) -> bytes:
    """The boundary of a ``multipart/form-data`` Content-Type; 400 for another type or a boundary
    RFC 2046 does not allow (over 70 characters, characters outside its set, a trailing space)."""
    # Header values are ASCII (RFC 9110 §5.5); python-multipart encodes them as latin-1.
    parsed = parse_options_header(content_type) if content_type.isascii() else (b"", {})
    if parsed[0] != b"multipart/form-data":
        raise BadRequest("expected a multipart/form-data body", code="unsupported_media_type")
    boundary = parsed[1].get(b"boundary", b"")
    if not _BOUNDARY.fullmatch(boundary):
        raise BadRequest(
            "the multipart boundary must be 1 to 70 characters that RFC 2046 allows", code="invalid_multipart"
        )
    return boundary


class _UploadParts:
    """Collects a multipart body's parts: ``metadata`` in memory (bounded), ``audio`` to a file.

    python-multipart bounds each part's headers (count and size); the number of parts is bounded
    here, so that memory does not grow with the body whatever its shape.
    """

    MAX_METADATA = 64 * 1024
    MAX_PARTS = 16

    def __init__(self, audio_file: BinaryIO) -> None:
        self.audio_file = audio_file
        self.audio_size = 0
        self.audio_hash = hashlib.sha256()
        self.metadata = bytearray()
        self.seen: set[str] = set()
        self.complete = False  # the closing boundary was seen
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, str] = {}
        self._current: str | None = None
        self.error: str | None = None

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._header_field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._headers = {}
        self._current = None

    def _header_end(self) -> None:
        self._headers[self._header_field.decode("latin-1").lower()] = self._header_value.decode("latin-1")
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get("content-disposition", ""))
        name = options.get(b"name", b"").decode("latin-1")
        if name in self.seen:
            self.error = self.error or f"the part {name!r} appears twice"
        elif len(self.seen) >= self.MAX_PARTS:
            self.error = self.error or f"the body has more than {self.MAX_PARTS} parts"
        else:
            self.seen.add(name)
        self._current = name if name in ("metadata", "audio") and not self.error else None

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current == "audio":
            chunk = data[start:end]
            self.audio_size += len(chunk)
            self.audio_hash.update(chunk)
            self.audio_file.write(chunk)
        elif self._current == "metadata":
            self.metadata.extend(data[start:end])
            if len(self.metadata) > self.MAX_METADATA:
                self.error = "the metadata part is over 64 KiB"
                self._current = None

    def _end(self) -> None:
        self.complete = True


def parse_upload_body(raw: BinaryIO, boundary: bytes, audio_file: BinaryIO) -> _UploadParts:
    """Parse a spooled, already authenticated multipart body in bounded chunks (blocking: run it in a
    thread). Raises BadRequest ``invalid_multipart`` for a body that does not parse, stops short of
    its closing boundary or breaks the part limits."""
    parts = _UploadParts(audio_file)
    try:
        parser = MultipartParser(boundary, parts.callbacks())  # type: ignore[arg-type]
        raw.seek(0)
        while not parts.error and (chunk := raw.read(_SPOOL_CHUNK)):
            parser.write(chunk)
        parser.finalize()
    except FormParserError:  # MultipartParseError among them
        raise BadRequest("the body is not valid multipart/form-data", code="invalid_multipart") from None
    if parts.error:
        raise BadRequest(parts.error, code="invalid_multipart")
    if not parts.complete:
        raise BadRequest("the body ends before its closing boundary", code="invalid_multipart")
    audio_file.flush()
    return parts


async def spool_signed_body(
    request: web.Request,
    raw: BinaryIO,
    *,
    secret: str,
    timestamp: int,
    signatures: list[str],
    limit: int,
    too_large: str,
) -> None:
    """Write the body to ``raw`` as it streams in, computing the Callrec-Signature MAC over it;
    413 past ``limit`` bytes, 403 when no signature matches. Nothing in it is parsed here."""
    mac = _callrec_mac(secret, timestamp)
    total = 0
    async for chunk in request.content.iter_chunked(_SPOOL_CHUNK):
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(too_large)
        mac.update(chunk)
        raw.write(chunk)
    raw.flush()
    _require_match(mac, signatures)


_UPLOAD_KEYS = {"call_id", "recording_id", "started_at", "from", "to", "direction", "redact", *TAG_NAMES}
MAX_REDACT_SPANS = 100


def _parse_redact(value: object) -> list[dict[str, int]]:
    """``redact: [{start_ms, end_ms}, ...]``: spans to silence before anything is stored (PCI)."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_REDACT_SPANS:
        raise BadRequest(
            f"metadata.redact must be a list of at most {MAX_REDACT_SPANS} spans", code="invalid_metadata"
        )
    spans = []
    for span in value:
        if (
            not isinstance(span, dict)
            or set(span) != {"start_ms", "end_ms"}
            or not all(isinstance(span[k], int) and not isinstance(span[k], bool) for k in span)
            or not 0 <= span["start_ms"] < span["end_ms"]
        ):
            raise BadRequest(
                'each metadata.redact span is {"start_ms": n, "end_ms": m} with 0 <= n < m',
                code="invalid_metadata",
            )
        spans.append({"start_ms": span["start_ms"], "end_ms": span["end_ms"]})
    return spans


def normalise_e164(value: object, *, field: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be an E.164 phone number such as +442071234567", code="invalid_phone")
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        raise BadRequest(
            f"{field} must be an E.164 phone number such as +442071234567", code="invalid_phone"
        ) from None
    if not phonenumbers.is_possible_number(number):
        raise BadRequest(f"{field} is not a possible phone number", code="invalid_phone")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def in_calendar(moment: datetime) -> bool:
    """Whether an aware time is still a datetime once in UTC: "0001-01-01T00:00+14:00" is not."""
    try:
        moment.astimezone(UTC)
    except OverflowError:
        return False
    return True


def _parse_upload_metadata(raw: bytes) -> dict[str, Any]:
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
        raise BadRequest("the metadata part is not valid JSON", code="invalid_metadata") from None
    if not isinstance(meta, dict):
        raise BadRequest("the metadata part must be a JSON object", code="invalid_metadata")
    unknown = sorted(set(meta) - _UPLOAD_KEYS)
    if unknown:
        raise BadRequest(f"unknown metadata keys: {', '.join(unknown)}", code="invalid_metadata")
    for name in ("call_id", "recording_id"):
        if not isinstance(meta.get(name), str) or not _ID.match(meta[name]):
            raise BadRequest(
                f"metadata.{name} is required: 1-128 letters, digits or . _ : @ -", code="invalid_metadata"
            )
    if meta.get("started_at") is not None:
        try:
            started = datetime.fromisoformat(str(meta["started_at"]))
        except ValueError:
            raise BadRequest(
                "metadata.started_at must be an ISO 8601 time", code="invalid_metadata"
            ) from None
        if started.tzinfo is None:
            raise BadRequest("metadata.started_at must carry a UTC offset", code="invalid_metadata")
        if not in_calendar(started):
            raise BadRequest(
                "metadata.started_at must fall in the years 1 to 9999 in UTC", code="invalid_metadata"
            )
    if meta.get("direction") not in (None, "inbound", "outbound"):
        raise BadRequest("metadata.direction must be inbound or outbound", code="invalid_metadata")
    meta["redact"] = _parse_redact(meta.get("redact"))
    return meta


async def pbx_upload(request: web.Request) -> web.Response:
    """A PBX upload: the signature is checked over the raw body as it is spooled, and nothing in the
    body is parsed before it matches (a malformed unsigned body is a 403, a malformed signed one a 400)."""
    config = request.app[config_key]
    tenant = tenant_of(request)
    if not tenant.webhook_secret:
        raise Forbidden("no webhook secret is configured for this tenant", code="provider_not_configured")
    timestamp, signatures = _parse_signature_header(request.headers.get("Callrec-Signature", ""))
    check_signature_time(timestamp)
    boundary = upload_boundary(request.headers.get("Content-Type", ""))
    max_bytes = config.ingest.max_media_mb * 1024 * 1024
    too_large = f"uploads are limited to {config.ingest.max_media_mb} MiB"
    if request.content_length is not None and request.content_length > max_bytes + UPLOAD_OVERHEAD:
        raise PayloadTooLarge(too_large)

    spool = spool_dir(config)
    # Both files are 0600 (mkstemp) in the 0700 spool dir, and removed when the block ends, however.
    with (
        tempfile.NamedTemporaryFile(dir=spool, prefix="upload-raw-", delete=True) as raw,
        tempfile.NamedTemporaryFile(dir=spool, prefix="upload-", delete=True) as audio_file,
    ):
        await spool_signed_body(
            request,
            cast(BinaryIO, raw.file),
            secret=tenant.webhook_secret,
            timestamp=timestamp,
            signatures=signatures,
            limit=max_bytes + UPLOAD_OVERHEAD,
            too_large=too_large,
        )
        parts = await asyncio.to_thread(
            parse_upload_body, cast(BinaryIO, raw.file), boundary, cast(BinaryIO, audio_file.file)
        )
        raw.close()  # the audio part is in audio_file now: free the disk before the sealed copy
        if "metadata" not in parts.seen or "audio" not in parts.seen:
            raise BadRequest("the body needs a 'metadata' part and an 'audio' part", code="invalid_multipart")
        if parts.audio_size == 0:
            raise BadRequest("the audio part is empty", code="empty_audio")
        meta = _parse_upload_metadata(bytes(parts.metadata))
        tags = parse_tags({name: meta.get(name) for name in TAG_NAMES})
        phones = {
            role: normalise_e164(meta[role], field=f"metadata.{role}")
            for role in ("from", "to")
            if meta.get(role) is not None
        }

        pool = request.app[db_key]
        async with pool.acquire() as conn:
            exists = await conn.fetchval(
                "SELECT id FROM jobs WHERE tenant = $1 AND kind = $2 AND dedupe_key = $3",
                tenant.name,
                INGEST_UPLOAD,
                meta["recording_id"],
            )
            if exists is not None:
                return web.json_response({"status": "duplicate", "job_id": exists}, status=200)
            recording_id = str(uuid.uuid4())
            keys = request.app[keys_key]
            sealed = {
                role: base64.b64encode(await keys.seal_phone(tenant.name, recording_id, role, value)).decode()
                for role, value in phones.items()
            }
            hashes = {
                role: base64.b64encode(await keys.phone_hash(conn, tenant.name, value)).decode()
                for role, value in phones.items()
            }

        stored = await seal_and_store(
            request.app,
            tenant=tenant.name,
            recording_id=recording_id,
            source=Path(audio_file.name),
            by="webhook:upload",
        )
    payload: dict[str, Any] = {
        "recording_id": recording_id,
        "call_id": meta["call_id"],
        "provider_recording_id": meta["recording_id"],
        "started_at": meta.get("started_at"),
        "direction": meta.get("direction"),
        "sealed_phones": sealed,
        "phone_hashes": hashes,
        "sha256": parts.audio_hash.hexdigest(),
        "size_bytes": parts.audio_size,
        "tags": tags.as_payload(),
        "redact": meta["redact"],
        # Countries and regions only: the numbers themselves stay sealed.
        "jurisdiction": classify(
            locate(phones.get("from")),
            locate(phones.get("to")),
            load_consent_laws(tenant.policy.consent_laws),
        ).as_json(),
        **stored,
    }
    try:
        async with pool.acquire() as conn, conn.transaction():
            job_id, created = await jobs.enqueue(
                conn,
                tenant=tenant.name,
                kind=INGEST_UPLOAD,
                dedupe_key=meta["recording_id"],
                payload=payload,
                max_attempts=config.ingest.max_attempts,
            )
            if created:  # the job now references the staged object
                await intents.clear(conn, stored["object_key"])
    except BaseException:
        await discard_object(request.app, stored["object_key"])
        raise
    if not created:  # a concurrent duplicate won the race: drop our copy
        await discard_object(request.app, stored["object_key"])
        return web.json_response({"status": "duplicate", "job_id": job_id}, status=200)
    return web.json_response({"status": "queued", "job_id": job_id, "recording_id": recording_id}, status=202)


async def discard_object(app: web.Application, key: str) -> None:
    """Delete an object whose reference did not commit, then its intent. When either fails the
    intent stays and the orphan collector deletes the object after the grace period."""
    try:
        await app[store_key].delete_all_versions(key)
        async with app[db_key].acquire() as conn:
            await intents.forget(conn, key)
    except Exception:
        log.warning("could not remove an unreferenced object now; the orphan collector will", exc_info=True)


def object_key_for(tenant: str, recording_id: str) -> str:
    """Opaque: tenant name, random recording id and a per-attempt suffix; nothing personal."""
    return f"{tenant}/{recording_id}/{uuid.uuid4().hex[:16]}"


async def seal_and_store(
    app: web.Application, *, tenant: str, recording_id: str, source: Path, by: str
) -> dict[str, Any]:
    """Encrypt ``source`` under a fresh per-recording key and store the ciphertext.

    Returns the job-payload fields that locate it: object key and version, ciphertext size
    and the wrapped key (base64). The plaintext never reaches the object store.

    Before the put, an intent row names the key (``by``: who puts it, e.g. ``job:<id>``) in a
    transaction of its own; the caller removes it with :func:`callrec.db.intents.clear` in the
    transaction that commits its reference to the object, or through :func:`discard_object`.
    Until then the object is the orphan collector's after ``[storage] orphan_grace``.
    """
    config = app[config_key]
    kek = await app[keys_key].kek(tenant)
    handle = envelope.new_recording_key()
    wrapped = await asyncio.to_thread(
        envelope.wrap_key, handle, kek, tenant=tenant, recording_id=recording_id
    )
    with tempfile.NamedTemporaryFile(dir=spool_dir(config), prefix="sealed-", delete=True) as sealed:

        def encrypt() -> int:
            with source.open("rb") as src:
                envelope.encrypt_stream(
                    src, cast(BinaryIO, sealed.file), handle, tenant=tenant, recording_id=recording_id
                )
            sealed.flush()
            return sealed.tell()

        ciphertext_bytes = await asyncio.to_thread(encrypt)
        faults.point("encrypt")
        key = object_key_for(tenant, recording_id)
        async with app[db_key].acquire() as conn:
            await intents.record(conn, tenant=tenant, object_key=key, by=by)
        stored = await app[store_key].put_file(key, Path(sealed.name))
        faults.point("store")
    return {
        "object_key": stored.key,
        "object_version": stored.version_id,
        "ciphertext_bytes": ciphertext_bytes,
        "wrapped_key": base64.b64encode(wrapped).decode(),
    }


# --- call events --------------------------------------------------------------------------

MAX_EVENT_BYTES = 64 * 1024
_EVENT_KEYS = {
    "event",
    "call_id",
    "at",
    "method",
    "basis",
    "purpose",
    "announcement",
    "version",
    "language",
    "cut_by_provider",
}


def sign_body(secret: str, body: bytes, *, now: int | None = None) -> str:
    """``t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``: how callrec signs what it sends."""
    timestamp = int(time.time()) if now is None else now
    mac = _callrec_mac(secret, timestamp)
    mac.update(body)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_callrec_signature(header: str, body: bytes, secret: str) -> None:
    """``Callrec-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`` (several v1 allowed,
    so a secret can be rotated); raises Forbidden when missing, stale or wrong."""
    timestamp, signatures = _parse_signature_header(header)
    check_signature_time(timestamp)
    mac = _callrec_mac(secret, timestamp)
    mac.update(body)
    _require_match(mac, signatures)


def parse_call_event(body: bytes) -> dict[str, Any]:
    try:
        event = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
        raise BadRequest("the body is not valid JSON", code="invalid_event") from None
    if not isinstance(event, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_event")
    unknown = sorted(set(event) - _EVENT_KEYS)
    if unknown:
        raise BadRequest(f"unknown event keys: {', '.join(unknown)}", code="invalid_event")
    if event.get("event") not in events.CALL_EVENT_KINDS:
        raise BadRequest(f"event must be one of {', '.join(events.CALL_EVENT_KINDS)}", code="invalid_event")
    if not isinstance(event.get("call_id"), str) or not _ID.match(event["call_id"]):
        raise BadRequest("call_id is required: 1-128 letters, digits or . _ : @ -", code="invalid_event")
    try:
        at = datetime.fromisoformat(str(event.get("at")))
    except ValueError:
        raise BadRequest("at must be an ISO 8601 time with a UTC offset", code="invalid_event") from None
    if at.tzinfo is None:
        raise BadRequest("at must carry a UTC offset", code="invalid_event")
    if not in_calendar(at):
        raise BadRequest("at must fall in the years 1 to 9999 in UTC", code="invalid_event")
    if event.get("method") not in (None, "ivr_keypress", "verbal", "continued_after_notice", "none"):
        raise BadRequest(
            "method must be ivr_keypress, verbal, continued_after_notice or none", code="invalid_event"
        )
    if event.get("cut_by_provider") not in (None, True, False):
        raise BadRequest("cut_by_provider must be true or false", code="invalid_event")
    tags = parse_tags(
        {
            "basis": event.get("basis"),
            "purpose": event.get("purpose"),
            "announcement": event.get("announcement"),
            "announcement_version": event.get("version"),
            "language": event.get("language"),
        }
    )
    details: dict[str, Any] = {
        k: v
        for k, v in {
            "method": event.get("method"),
            "basis": tags.consent.get("basis"),
            "purpose": tags.consent.get("purpose"),
            "id": tags.announcement.get("id"),
            "version": tags.announcement.get("version"),
            "language": tags.announcement.get("language"),
            "cut_by_provider": event.get("cut_by_provider"),
        }.items()
        if v is not None
    }
    return {"kind": event["event"], "call_id": event["call_id"], "at": at, "details": details}


async def call_event(request: web.Request) -> web.Response:
    config = request.app[config_key]
    tenant = tenant_of(request)
    if not tenant.webhook_secret:
        raise Forbidden("no webhook secret is configured for this tenant", code="provider_not_configured")
    body = await read_body(request, MAX_EVENT_BYTES, "call events are limited to 64 KiB")
    verify_callrec_signature(request.headers.get("Callrec-Signature", ""), body, tenant.webhook_secret)
    event = parse_call_event(body)

    erased: list[str] = []
    withheld: list[str] = []  # a legal hold keeps them (GDPR Art. 17(3)(e)); they go when it is released
    async with request.app[db_key].acquire() as conn, conn.transaction():
        stored = await events.add_call_event(
            conn,
            tenant=tenant.name,
            call_id=event["call_id"],
            kind=event["kind"],
            at=event["at"],
            details=event["details"],
        )
        if stored is None:
            return web.json_response({"status": "duplicate"}, status=200)
        await audit.record(
            conn,
            tenant=tenant.name,
            actor="telephony",
            action=audit.AuditAction.CALL_EVENT,
            details={"event": event["kind"], "call_id": event["call_id"], "at": event["at"].isoformat()},
        )
        if event["kind"] in ("consent_withdrawn", "consent_declined"):
            # GDPR Art. 7(3) / 17(1)(b): once consent is withdrawn the call's recordings go.
            for rec in await recordings.for_call(conn, tenant=tenant.name, call_id=event["call_id"]):
                result = await erasure.erase_in_transaction(
                    conn,
                    tenant=tenant.name,
                    recording_id=rec.id,
                    reason=event["kind"],
                    actor="telephony",
                    max_attempts=config.ingest.max_attempts,
                )
                if result.outcome == "erased":
                    erased.append(str(rec.id))
                elif result.outcome == "held":
                    withheld.append(str(rec.id))
        # A recording waiting for late consent events is decided now instead of at the end of its wait.
        await jobs.wake_for_call(conn, tenant=tenant.name, call_id=event["call_id"])
    return web.json_response({"status": "recorded", "erased": erased, "withheld": withheld}, status=202)
