"""What every telephony provider's recording webhook is parsed into, whatever its wire format."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit


class InvalidEvent(ValueError):
    """The webhook is not a usable recording event; the message says which field and why."""


@dataclass(frozen=True)
class RecordingEvent:
    """A finished recording, as announced by the provider.

    ``provider`` names it (``"vonage"``, ``"plivo"``); ``call_id`` is the provider's id of the call
    (Vonage's ``conversation_uuid``, Plivo's ``CallUUID``). ``from_number``/``to_number`` are set
    only when the webhook itself carried the parties; otherwise they come from the provider's
    call resource (see each provider module).
    """

    provider: str
    recording_id: str
    call_id: str
    media_url: str
    started_at: datetime | None
    ended_at: datetime | None
    duration_ms: int | None
    size_bytes: int | None
    event_at: datetime | None = None
    from_number: str | None = None
    to_number: str | None = None


def check_url(value: object, name: str) -> str:
    """A webhook's media URL: an absolute http(s) URL without credentials, or :class:`InvalidEvent`.

    The media-host allow-list is the caller's business (``[ingest] media_hosts``).
    """
    if not isinstance(value, str) or not value or len(value) > 2048:
        raise InvalidEvent(f"{name} is missing or not a URL")
    try:
        parts = urlsplit(value)
        _ = parts.port
    except ValueError:
        raise InvalidEvent(f"{name} is not a valid URL") from None
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.username or parts.password:
        raise InvalidEvent(f"{name} must be an absolute http(s) URL without credentials")
    return value
