"""Issue 3 end to end: each consent outcome through the webhooks, what was stored, what was
refused, what the provider was told to delete; quarantine review; late events; withdrawal;
PCI redaction."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from pydub import AudioSegment
from twilio.request_validator import RequestValidator

from callrec import audio
from callrec.app import worker_key
from callrec.appkeys import config_key, db_key
from callrec.db import audit, tokens

TWILIO_SID = "AC" + "0123456789abcdef" * 2
TWILIO_TOKEN = "twilio-auth-token-for-tests"
SECRET = "pbx-shared-secret-for-tests"
NY_CALLER, NY_CALLEE = "+12125550123", "+16465550199"  # New York: one-party consent
CA_CALLEE = "+14155550100"  # California: all-party consent (Cal. Penal Code 632)


def sign(body: bytes, secret: str = SECRET) -> str:
    t = int(time.time())
    return f"t={t},v1=" + hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()


async def send_event(client: Any, **event: Any) -> Any:
    body = json.dumps(event).encode()
    return await client.post(
        "/webhooks/events/acme",
        data=body,
        headers={"Content-Type": "application/json", "Callrec-Signature": sign(body)},
    )


async def twilio_recording(
    client: Any,
    fake: Any,
    audio: bytes,
    *,
    tags: dict[str, str],
    caller: str = NY_CALLER,
    callee: str = NY_CALLEE,
    call_id: str | None = None,
    start: str = "Mon, 23 Nov 2026 10:00:00 +0000",
) -> tuple[str, str]:
    sid, csid = "RE" + uuid.uuid4().hex, call_id or "CA" + uuid.uuid4().hex
    fake.media[sid] = audio
    fake.calls[csid] = {"from": caller, "to": callee, "direction": "inbound", "start_time": start}
    form = {
        "AccountSid": TWILIO_SID,
        "CallSid": csid,
        "RecordingSid": sid,
        "RecordingUrl": fake.recording_url(sid),
        "RecordingStatus": "completed",
        "RecordingStartTime": start,
    }
    path = "/webhooks/twilio/acme" + (f"?{urlencode(tags)}" if tags else "")
    sig = RequestValidator(TWILIO_TOKEN).compute_signature("https://callrec.example.test" + path, form)
    resp = await client.post(path, data=form, headers={"X-Twilio-Signature": sig})
    assert resp.status == 202, await resp.text()
    return sid, csid


async def drain(client: Any) -> None:
    for _ in range(20):
        if not await client.app[worker_key].run_once():
            return


async def row(client: Any, sid: str) -> Any:
    async with client.app[db_key].acquire() as conn:
        return await conn.fetchrow("SELECT * FROM recordings WHERE provider_recording_id = $1", sid)


async def auth(client: Any, *scopes: str) -> dict[str, str]:
    async with client.app[db_key].acquire() as conn:
        _, token = await tokens.create(conn, tenant="acme", name="t", scopes=list(scopes))
    return {"Authorization": f"Bearer {token}"}


def stored_files(client: Any) -> list[Path]:
    return [p for p in client.app[config_key].storage_path.rglob("*") if p.is_file()]


GRANTED = {"consent": "granted", "basis": "contract", "purpose": "quality"}


async def test_declined_consent_stores_nothing_and_deletes_the_providers_copy(
    client: Any, fake_twilio: Any, audio_fixtures: Path
) -> None:
    audio = (audio_fixtures / "call-with-announcement.wav").read_bytes()
    sid, _ = await twilio_recording(
        client, fake_twilio, audio, tags={"consent": "declined", "basis": "consent"}
    )
    await drain(client)
    rec = await row(client, sid)
    assert rec["state"] == "rejected"
    assert rec["object_key"] is None and rec["wrapped_key"] is None and rec["from_sealed"] is None
    assert rec["from_hash"] is None
    assert "consent_declined" in [r["code"] for r in json.loads(rec["policy"])["reasons"]]
    assert fake_twilio.media_requests == 0  # refused before any audio was fetched
    assert fake_twilio.deleted == [sid]  # the provider was told to delete its copy
    assert stored_files(client) == []
    async with client.app[db_key].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'recording:rejected'") == 1


async def test_granted_consent_with_verified_announcement_in_all_party_state_is_stored(
    client: Any, fake_twilio: Any, audio_fixtures: Path
) -> None:
    audio = (audio_fixtures / "call-with-announcement.wav").read_bytes()
    sid, _ = await twilio_recording(
        client,
        fake_twilio,
        audio,
        callee=CA_CALLEE,
        tags={**GRANTED, "announcement": "rec-notice", "announcement_version": "1"},
    )
    await drain(client)
    rec = await row(client, sid)
    assert rec["state"] == "stored", rec["policy"]
    announcement = json.loads(rec["announcement"])
    assert announcement["verified"] is True and announcement["played"] is True
    assert abs(announcement["offset_ms"]) < 100
    jurisdiction = json.loads(rec["jurisdiction"])
    assert jurisdiction["callee_region"] == "US-CA" and jurisdiction["regime"] == "all_party"
    assert fake_twilio.deleted == []


async def test_all_party_state_without_announcement_is_quarantined_and_reviewable(
    client: Any, fake_twilio: Any, audio_fixtures: Path
) -> None:
    audio = (audio_fixtures / "call-without-announcement.wav").read_bytes()
    sid, _ = await twilio_recording(
        client, fake_twilio, audio, callee=CA_CALLEE, tags={**GRANTED, "announcement": "rec-notice"}
    )  # claimed, not in the audio
    await drain(client)
    rec = await row(client, sid)
    assert rec["state"] == "quarantined"
    assert json.loads(rec["announcement"])["verified"] is False
    assert (rec["expires_at"] - rec["stored_at"]).days == 7

    support = await auth(client, "recordings:read", "recordings:listen")
    listing = await (await client.get("/api/v1/recordings", headers=support)).json()
    assert listing["items"] == []
    assert (await client.get(f"/api/v1/recordings/{rec['id']}", headers=support)).status == 404
    assert (await client.get(f"/api/v1/recordings/{rec['id']}/audio", headers=support)).status == 404
    forbidden = await client.get("/api/v1/recordings", params={"state": "quarantined"}, headers=support)
    assert forbidden.status == 403

    privacy = await auth(client, "recordings:read", "recordings:listen", "quarantine:review")
    queue = await (
        await client.get("/api/v1/recordings", params={"state": "quarantined"}, headers=privacy)
    ).json()
    assert [item["id"] for item in queue["items"]] == [str(rec["id"])]
    played = await client.get(f"/api/v1/recordings/{rec['id']}/audio", headers=privacy)
    assert await played.read() == audio
    no_reason = await client.post(f"/api/v1/recordings/{rec['id']}/approve", json={}, headers=privacy)
    assert no_reason.status == 400
    approved = await client.post(
        f"/api/v1/recordings/{rec['id']}/approve",
        json={"reason": "announcement played by agent, confirmed on listen"},
        headers=privacy,
    )
    assert approved.status == 200
    body = await approved.json()
    assert body["state"] == "stored"
    retention = (
        client.app[config_key].tenants["acme"].retention
    )  # normal retention, from the time it was stored
    assert (await row(client, sid))["expires_at"] - rec["stored_at"] == retention
    again = await client.post(
        f"/api/v1/recordings/{rec['id']}/approve", json={"reason": "twice"}, headers=privacy
    )
    assert again.status == 409


async def test_rejecting_a_quarantined_recording_destroys_it(
    client: Any, fake_twilio: Any, audio_fixtures: Path
) -> None:
    audio = (audio_fixtures / "call-without-announcement.wav").read_bytes()
    sid, _ = await twilio_recording(client, fake_twilio, audio, callee=CA_CALLEE, tags=GRANTED)
    await drain(client)
    rec = await row(client, sid)
    assert rec["state"] == "quarantined" and len(stored_files(client)) == 1
    privacy = await auth(client, "recordings:read", "quarantine:review")
    resp = await client.post(
        f"/api/v1/recordings/{rec['id']}/reject", json={"reason": "no notice given"}, headers=privacy
    )
    assert resp.status == 200 and (await resp.json())["state"] == "destroyed"
    await drain(client)  # the object.delete job
    assert stored_files(client) == []
    after = await row(client, sid)
    assert after["wrapped_key"] is None and after["destroy_reason"] == "quarantine_rejected"


async def test_unknown_consent_waits_for_late_events(
    client: Any, fake_twilio: Any, audio_fixtures: Path
) -> None:
    audio = (audio_fixtures / "call-with-announcement.wav").read_bytes()
    sid, csid = await twilio_recording(client, fake_twilio, audio, tags={"basis": "consent"})
    await drain(client)
    async with client.app[db_key].acquire() as conn:
        job = await conn.fetchrow("SELECT state, attempts, run_at > now() AS later FROM jobs")
    assert job["state"] == "queued" and job["attempts"] == 0 and job["later"]  # deferred, no attempt spent
    assert fake_twilio.media_requests == 0 and await row(client, sid) is None

    resp = await send_event(
        client, event="consent_granted", call_id=csid, at="2026-11-23T10:00:05+00:00", method="ivr_keypress"
    )
    assert resp.status == 202
    await drain(client)  # the event made the job due at once
    rec = await row(client, sid)
    assert rec["state"] == "stored", rec["policy"]
    consent = json.loads(rec["consent"])
    assert consent["status"] == "granted" and consent["method"] == "ivr_keypress"


async def test_unknown_consent_after_the_grace_period_is_quarantined(
    client: Any, fake_twilio: Any, audio_fixtures: Path
) -> None:
    audio = (audio_fixtures / "call-with-announcement.wav").read_bytes()
    sid, _ = await twilio_recording(client, fake_twilio, audio, tags={"basis": "contract"})
    await drain(client)
    async with client.app[db_key].acquire() as conn:
        await conn.execute("UPDATE jobs SET created_at = now() - interval '1 day', run_at = now()")
    await drain(client)
    rec = await row(client, sid)
    assert rec["state"] == "quarantined"
    assert "consent_unknown" in [r["code"] for r in json.loads(rec["policy"])["reasons"]]


async def test_opt_out_event_before_the_recording_rejects_it(
    client: Any, fake_twilio: Any, audio_fixtures: Path
) -> None:
    csid = "CA" + uuid.uuid4().hex
    resp = await send_event(
        client, event="consent_declined", call_id=csid, at="2026-11-23T10:00:03+00:00", method="ivr_keypress"
    )
    assert resp.status == 202
    audio = (audio_fixtures / "call-with-announcement.wav").read_bytes()
    sid, _ = await twilio_recording(client, fake_twilio, audio, tags=GRANTED, call_id=csid)
    await drain(client)
    rec = await row(client, sid)
    assert rec["state"] == "rejected" and fake_twilio.deleted == [sid]


async def test_withdrawn_consent_after_storage_erases_the_calls_recordings(
    client: Any, fake_twilio: Any, audio_fixtures: Path
) -> None:
    audio = (audio_fixtures / "call-with-announcement.wav").read_bytes()
    sid, csid = await twilio_recording(client, fake_twilio, audio, tags=GRANTED)
    await drain(client)
    assert (await row(client, sid))["state"] == "stored" and len(stored_files(client)) == 1
    resp = await send_event(client, event="consent_withdrawn", call_id=csid, at="2026-11-24T09:00:00+00:00")
    assert resp.status == 202
    assert len((await resp.json())["erased"]) == 1
    rec = await row(client, sid)
    assert rec["state"] == "destroyed" and rec["wrapped_key"] is None and rec["from_sealed"] is None
    await drain(client)
    assert stored_files(client) == []
    async with client.app[db_key].acquire() as conn:
        actions = [r["action"] for r in await conn.fetch("SELECT action FROM audit_log ORDER BY seq")]
        assert (await audit.verify(conn)).ok
    assert "recording:destroyed" in actions and "object:deleted" in actions


async def test_paused_span_is_silenced_before_storage(
    client: Any, fake_twilio: Any, audio_fixtures: Path, tmp_path: Path
) -> None:
    original = (audio_fixtures / "call-without-announcement.wav").read_bytes()
    csid = "CA" + uuid.uuid4().hex
    # The agent paused for card details from 2.0 s to 5.5 s into the recording; the provider did not cut it.
    assert (
        await send_event(client, event="recording_paused", call_id=csid, at="2026-11-23T10:00:02+00:00")
    ).status == 202
    assert (
        await send_event(
            client, event="recording_resumed", call_id=csid, at="2026-11-23T10:00:05.500000+00:00"
        )
    ).status == 202
    sid, _ = await twilio_recording(client, fake_twilio, original, tags=GRANTED, call_id=csid)
    await drain(client)
    rec = await row(client, sid)
    assert rec["state"] == "stored", rec["policy"]
    assert json.loads(rec["redactions"]) == [{"start_ms": 2000, "end_ms": 5500}]
    assert rec["sha256"] != hashlib.sha256(original).hexdigest()
    headers = await auth(client, "recordings:listen")
    resp = await client.get(f"/api/v1/recordings/{rec['id']}/audio", headers=headers)
    stored = await resp.read()
    assert hashlib.sha256(stored).hexdigest() == rec["sha256"]
    assert resp.headers["Content-Type"] == "audio/flac"
    # Stored as FLAC (lossless), not as the WAV received, and described as such.
    assert stored[:4] == b"fLaC" and (rec["format"], rec["codec"]) == ("flac", "flac")
    assert (rec["channels"], rec["sample_rate"]) == (1, 8000) and len(stored) < len(original)
    flac = tmp_path / "stored.flac"
    flac.write_bytes(stored)
    decoded = tmp_path / "stored.wav"
    to_wav = [
        str(audio.configure_ffmpeg()),
        "-v",
        "error",
        "-i",
        str(flac),
        "-c:a",
        "pcm_s16le",
        str(decoded),
    ]
    await asyncio.to_thread(subprocess.run, to_wav, check=True)
    segment = AudioSegment.from_wav(decoded)
    source = AudioSegment.from_wav(io.BytesIO(original))
    assert segment[2000:5500].max == 0  # digital silence where the card was read out
    assert source[2000:5500].max > 0  # (and there was sound there before)
    assert segment[6000:9000].raw_data == source[6000:9000].raw_data  # the rest is untouched
    assert len(segment) == len(source)


async def test_pause_cut_by_the_provider_needs_no_redaction(
    client: Any, fake_twilio: Any, audio_fixtures: Path
) -> None:
    original = (audio_fixtures / "call-without-announcement.wav").read_bytes()
    csid = "CA" + uuid.uuid4().hex
    await send_event(
        client, event="recording_paused", call_id=csid, at="2026-11-23T10:00:02+00:00", cut_by_provider=True
    )
    await send_event(client, event="recording_resumed", call_id=csid, at="2026-11-23T10:00:04+00:00")
    sid, _ = await twilio_recording(client, fake_twilio, original, tags=GRANTED, call_id=csid)
    await drain(client)
    rec = await row(client, sid)
    assert json.loads(rec["redactions"]) == [] and rec["sha256"] == hashlib.sha256(original).hexdigest()


@pytest.mark.parametrize(
    ("event", "status", "code"),
    [
        (
            {"event": "consent_maybe", "call_id": "c1", "at": "2026-11-23T10:00:00+00:00"},
            400,
            "invalid_event",
        ),
        ({"event": "consent_granted", "at": "2026-11-23T10:00:00+00:00"}, 400, "invalid_event"),
        ({"event": "consent_granted", "call_id": "c1", "at": "yesterday"}, 400, "invalid_event"),
        ({"event": "consent_granted", "call_id": "c1", "at": "2026-11-23T10:00:00"}, 400, "invalid_event"),
        (
            {"event": "consent_granted", "call_id": "c1", "at": "2026-11-23T10:00:00+00:00", "name": "Al"},
            400,
            "invalid_event",
        ),
        (
            {
                "event": "consent_granted",
                "call_id": "c1",
                "at": "2026-11-23T10:00:00+00:00",
                "basis": "vibes",
            },
            400,
            "invalid_tag",
        ),
    ],
)
async def test_bad_events_are_400_and_change_nothing(
    client: Any, event: dict[str, Any], status: int, code: str
) -> None:
    resp = await send_event(client, **event)
    assert resp.status == status
    assert (await resp.json())["error"]["code"] == code
    async with client.app[db_key].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM call_events") == 0


async def test_events_need_a_valid_signature_and_repeat_once(client: Any) -> None:
    body = json.dumps(
        {"event": "announcement_played", "call_id": "c9", "at": "2026-11-23T10:00:00+00:00"}
    ).encode()
    bad = await client.post(
        "/webhooks/events/acme",
        data=body,
        headers={"Content-Type": "application/json", "Callrec-Signature": sign(body, "nope")},
    )
    assert bad.status == 403
    first = await client.post("/webhooks/events/acme", data=body, headers={"Callrec-Signature": sign(body)})
    again = await client.post("/webhooks/events/acme", data=body, headers={"Callrec-Signature": sign(body)})
    assert first.status == 202 and again.status == 200
    async with client.app[db_key].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM call_events") == 1
