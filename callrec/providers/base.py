"""What every telephony provider's recording webhook is parsed into, whatever its wire format."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


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
