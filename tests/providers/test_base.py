"""One ``RecordingEvent`` for every provider: what the Vonage and Plivo parsers return is the
same type, so the ingest path handles both alike."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

import pytest

from callrec.providers import plivo, vonage
from callrec.providers.base import RecordingEvent


def test_vonage_and_plivo_events_are_one_type() -> None:
    from_vonage = vonage.parse_recording_event(
        json.dumps(
            {
                "start_time": "2020-01-01T12:00:00.000Z",
                "end_time": "2020-01-01T12:00:12.500Z",
                "recording_url": "https://api.nexmo.com/v1/files/bbbbbbbb-aaaa-cccc-dddd-0123456789ab",
                "recording_uuid": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab",
                "conversation_uuid": "CON-aaaaaaaa-bbbb-cccc-dddd-0123456789ab",
                "size": 12222,
            }
        ).encode()
    )
    from_plivo = plivo.parse_record_callback(
        [
            ("RecordUrl", "https://media.plivo.com/v1/Account/MA2025RK4E639VJFZAGV/Recording/c2186400.mp3"),
            ("RecordingID", "c2186400-1c8c-11e4-a664-0026b945b52x"),
            ("CallUUID", "c2c128e2-1c8c-11e4-9bff-1db8a9db0432"),
            ("RecordingDurationMs", "345100"),
            ("From", "+14155550100"),
        ]
    )
    assert type(from_vonage) is RecordingEvent and type(from_plivo) is RecordingEvent
    assert (from_vonage.provider, from_vonage.duration_ms, from_vonage.size_bytes) == ("vonage", 12500, 12222)
    assert from_vonage.started_at == datetime(2020, 1, 1, 12, tzinfo=UTC)
    assert (from_vonage.from_number, from_vonage.to_number) == (None, None)  # from the Calls resource
    assert (from_plivo.provider, from_plivo.duration_ms, from_plivo.from_number) == (
        "plivo",
        345100,
        "+14155550100",
    )
    assert from_plivo.to_number is None and from_plivo.size_bytes is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        from_plivo.call_id = "other"  # type: ignore[misc]
