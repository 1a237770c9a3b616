"""Providers whose recordings callrec fetches: how to find a call's parties, how to authenticate
the media download, and how to delete the provider's copy. One small client per provider behind
:class:`RemoteProvider`; the worker's ingest path is the same for all of them.

Where credentials go: API requests (parties, deletion) are built only from the tenant's
configured ``*_api_base``; the only URL taken from a callback is the media URL, which the worker
fetches only after :func:`callrec.ingest.media.check_media_url` found its host and port in
``[ingest] media_hosts``.

Parties are always read from the provider's API by the worker, never carried in a job payload,
so no phone number is ever stored in clear in the queue.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from callrec.config import TenantConfig
from callrec.providers import plivo, twilio, vonage


@dataclass(frozen=True)
class Request:
    url: str
    headers: dict[str, str]


class RemoteProvider(Protocol):
    name: str
    #: The provider deletes its copy itself after this many days, when it offers no delete API.
    provider_retention_days: int | None

    def configured(self, tenant: TenantConfig) -> bool: ...
    def parties_request(self, payload: dict[str, Any], tenant: TenantConfig) -> Request: ...
    def parties(self, body: Any) -> tuple[str | None, str | None, str | None, datetime | None]: ...
    def media_request(self, payload: dict[str, Any], tenant: TenantConfig) -> Request: ...
    def delete_request(self, payload: dict[str, Any], tenant: TenantConfig) -> Request | None: ...


class Twilio:
    """https://www.twilio.com/docs/voice/api/call-resource, .../recording"""

    name: str = "twilio"
    provider_retention_days: int | None = None

    def configured(self, tenant: TenantConfig) -> bool:
        return bool(tenant.twilio_account_sid and tenant.twilio_auth_token)

    def _auth(self, tenant: TenantConfig) -> dict[str, str]:
        return {
            "Authorization": aiohttp.encode_basic_auth(tenant.twilio_account_sid, tenant.twilio_auth_token)
        }

    def parties_request(self, payload: dict[str, Any], tenant: TenantConfig) -> Request:
        url = twilio.call_url(payload["account_sid"], payload["call_id"], api_base=tenant.twilio_api_base)
        return Request(url, self._auth(tenant))

    def parties(self, body: Any) -> tuple[str | None, str | None, str | None, datetime | None]:
        started = None
        if isinstance(body.get("start_time"), str):
            try:
                started = parsedate_to_datetime(body["start_time"])
            except (TypeError, ValueError):
                started = None
        return _text(body.get("from")), _text(body.get("to")), _text(body.get("direction")), started

    def media_request(self, payload: dict[str, Any], tenant: TenantConfig) -> Request:
        return Request(payload["media_url"], self._auth(tenant))

    def delete_request(self, payload: dict[str, Any], tenant: TenantConfig) -> Request | None:
        url = twilio.recording_resource_url(
            payload["account_sid"], payload["provider_recording_id"], api_base=tenant.twilio_api_base
        )
        return Request(url, self._auth(tenant))


class Vonage:
    """https://developer.vonage.com/en/voice/voice-api/concepts/recording; Vonage offers no API to
    delete a recording and removes it itself after 30 days."""

    name: str = "vonage"
    provider_retention_days: int | None = vonage.PROVIDER_RETENTION_DAYS

    def configured(self, tenant: TenantConfig) -> bool:
        return bool(
            tenant.vonage_signature_secret and tenant.vonage_application_id and tenant.vonage_private_key_path
        )

    def _auth(self, tenant: TenantConfig) -> dict[str, str]:
        key = _read_key(tenant.vonage_private_key_path)
        return vonage.auth_headers(tenant.vonage_application_id, key)

    def parties_request(self, payload: dict[str, Any], tenant: TenantConfig) -> Request:
        url = vonage.call_lookup_url(payload["call_id"], api_base=tenant.vonage_api_base)
        return Request(url, self._auth(tenant))

    def parties(self, body: Any) -> tuple[str | None, str | None, str | None, datetime | None]:
        caller, callee = vonage.parties_from_calls(body)
        return caller, callee, None, None

    def media_request(self, payload: dict[str, Any], tenant: TenantConfig) -> Request:
        return Request(payload["media_url"], self._auth(tenant))

    def delete_request(self, payload: dict[str, Any], tenant: TenantConfig) -> Request | None:
        return None


class Plivo:
    """https://www.plivo.com/docs/voice/api/recordings, .../call/retrieve-a-call"""

    name: str = "plivo"
    provider_retention_days: int | None = None

    def configured(self, tenant: TenantConfig) -> bool:
        return bool(tenant.plivo_auth_id and tenant.plivo_auth_token)

    def _auth(self, tenant: TenantConfig) -> dict[str, str]:
        return plivo.basic_auth_headers(tenant.plivo_auth_id, tenant.plivo_auth_token)

    def parties_request(self, payload: dict[str, Any], tenant: TenantConfig) -> Request:
        url = plivo.call_lookup_url(tenant.plivo_auth_id, payload["call_id"], api_base=tenant.plivo_api_base)
        return Request(url, self._auth(tenant))

    def parties(self, body: Any) -> tuple[str | None, str | None, str | None, datetime | None]:
        caller, callee = plivo.parties_from_call(body)
        direction = _text(body.get("call_direction"))
        return caller, callee, direction, None

    def media_request(self, payload: dict[str, Any], tenant: TenantConfig) -> Request:
        return Request(payload["media_url"], self._auth(tenant))

    def delete_request(self, payload: dict[str, Any], tenant: TenantConfig) -> Request | None:
        url = plivo.recording_delete_url(
            tenant.plivo_auth_id, payload["provider_recording_id"], api_base=tenant.plivo_api_base
        )
        return Request(url, self._auth(tenant))


PROVIDERS: dict[str, RemoteProvider] = {p.name: p for p in (Twilio(), Vonage(), Plivo())}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


@functools.lru_cache(maxsize=16)
def _read_key(path: str) -> bytes:
    """The Vonage application's private key, read once per process (it signs every API call)."""
    return Path(path).read_bytes()
