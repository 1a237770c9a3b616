"""Twilio recording callbacks end to end: signed with twilio's own RequestValidator, media
served by a fake Twilio on loopback, stored encrypted, read back through the API."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from twilio.request_validator import RequestValidator

from callrec.app import worker_key
from callrec.appkeys import config_key, db_key, store_key
from callrec.db import audit, tokens

TWILIO_SID = "AC" + "0123456789abcdef" * 2
TWILIO_TOKEN = "twilio-auth-token-for-tests"
PUBLIC_BASE = "https://callrec.example.test"
CONSENTED = "consent=granted&basis=contract"


def rec_sid() -> str:
    return "RE" + uuid.uuid4().hex


def call_sid() -> str:
    return "CA" + uuid.uuid4().hex


def callback(
    fake: Any, recording_sid: str, *, status: str = "completed", csid: str | None = None, **extra: str
) -> dict[str, str]:
    form = {
        "AccountSid": TWILIO_SID,
        "CallSid": csid or call_sid(),
        "RecordingSid": recording_sid,
        "RecordingUrl": fake.recording_url(recording_sid),
        "RecordingStatus": status,
        "RecordingDuration": "12",
        "RecordingChannels": "1",
        "RecordingStartTime": "Mon, 23 Nov 2026 10:00:01 +0000",
        "RecordingSource": "RecordVerb",
        "RecordingTrack": "both",
    }
    form.update(extra)
    return form


async def post_signed(
    client: Any,
    form: dict[str, str],
    *,
    tenant: str = "acme",
    query: str = "",
    token: str = TWILIO_TOKEN,
    signature: str | None = None,
) -> Any:
    query = query or CONSENTED  # plumbing tests: a call with consent and a lawful basis
    path = f"/webhooks/twilio/{tenant}" + (f"?{query}" if query else "")
    sig = RequestValidator(token).compute_signature(PUBLIC_BASE + path, form)
    headers = {"X-Twilio-Signature": sig if signature is None else signature}
    return await client.post(path, data=form, headers=headers)


async def api_token(
    client: Any, tenant: str = "acme", scopes: tuple[str, ...] = ("recordings:read", "recordings:listen")
) -> str:
    async with client.app[db_key].acquire() as conn:
        _, token = await tokens.create(conn, tenant=tenant, name="test", scopes=list(scopes))
    return token


async def drain(client: Any, limit: int = 20) -> int:
    done = 0
    while done < limit and await client.app[worker_key].run_once():
        done += 1
    return done


async def test_completed_recording_is_stored_encrypted_and_readable(
    client: Any, fake_twilio: Any, audio_fixtures: Path
) -> None:
    original = (audio_fixtures / "call-with-announcement.wav").read_bytes()
    sid = rec_sid()
    fake_twilio.media[sid] = original
    resp = await post_signed(
        client,
        callback(fake_twilio, sid),
        query=urlencode(
            {
                "announcement": "rec-notice",
                "announcement_version": "1",
                "language": "en-GB",
                "consent": "implied",
                "basis": "legitimate_interests",
                "purpose": "training",
                "agent": "agent-7",
            }
        ),
    )
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["status"] == "queued"
    assert await drain(client) == 1

    token = await api_token(client)
    listing = await client.get("/api/v1/recordings", headers={"Authorization": f"Bearer {token}"})
    assert listing.status == 200
    items = (await listing.json())["items"]
    assert len(items) == 1
    rec = items[0]
    assert rec["provider_recording_id"] == sid
    assert rec["sha256"] == hashlib.sha256(original).hexdigest()
    assert rec["size_bytes"] == len(original)
    assert rec["channels"] == 1 and rec["sample_rate"] == 8000 and rec["format"] == "wav"
    assert 10_000 < rec["duration_ms"] < 60_000
    assert rec["announcement"] == {
        "id": "rec-notice",
        "version": "1",
        "language": "en-GB",
        "played": True,
        "played_at": None,
        "verified": True,
        "offset_ms": rec["announcement"]["offset_ms"],
        "score": rec["announcement"]["score"],
    }
    assert abs(rec["announcement"]["offset_ms"]) < 100 and rec["announcement"]["score"] > 0.5
    assert rec["consent"] == {
        "status": "implied",
        "method": "continued_after_notice",
        "at": None,
        "basis": "legitimate_interests",
        "purpose": "training",
    }
    assert rec["policy"]["decision"] == "store"
    assert rec["agent"] == "agent-7"
    stored_at = rec["stored_at"]
    from datetime import datetime, timedelta

    assert datetime.fromisoformat(rec["expires_at"]) - datetime.fromisoformat(stored_at) == timedelta(days=90)

    # The stored object is ciphertext: the audio bytes do not appear in it.
    async with client.app[db_key].acquire() as conn:
        row = await conn.fetchrow("SELECT object_key, object_version, from_sealed, from_hash FROM recordings")
    reader = await client.app[store_key].open_reader(row["object_key"], version_id=row["object_version"])
    stored = reader.read()
    reader.close()
    assert original[1000:1064] not in stored
    assert b"RIFF" not in stored[:64]
    assert b"+12125550123" not in bytes(row["from_sealed"])
    assert "2125550123" not in row["object_key"] and sid not in row["object_key"]

    # Audio comes back bit-exact, whole and by range; the single GET shows masked parties.
    audio = await client.get(
        f"/api/v1/recordings/{rec['id']}/audio", headers={"Authorization": f"Bearer {token}"}
    )
    assert audio.status == 200
    assert audio.headers["Content-Type"].startswith("audio/")
    assert await audio.read() == original
    part = await client.get(
        f"/api/v1/recordings/{rec['id']}/audio",
        headers={"Authorization": f"Bearer {token}", "Range": "bytes=200000-200099"},
    )
    assert part.status == 206
    assert await part.read() == original[200000:200100]
    beyond = await client.get(
        f"/api/v1/recordings/{rec['id']}/audio",
        headers={"Authorization": f"Bearer {token}", "Range": f"bytes={len(original)}-"},
    )
    assert beyond.status == 416
    assert beyond.headers["Content-Range"] == f"bytes */{len(original)}"
    tail = await client.get(
        f"/api/v1/recordings/{rec['id']}/audio",
        headers={"Authorization": f"Bearer {token}", "Range": "bytes=-100"},
    )
    assert tail.status == 206
    assert tail.headers["Content-Range"] == f"bytes {len(original) - 100}-{len(original) - 1}/{len(original)}"
    assert await tail.read() == original[-100:]
    one = await client.get(f"/api/v1/recordings/{rec['id']}", headers={"Authorization": f"Bearer {token}"})
    body = await one.json()
    assert body["parties"] == {"from": "+12" + "•" * 7 + "23", "to": "+16" + "•" * 7 + "99"}

    # Every look is on the record, and the chain verifies.
    async with client.app[db_key].acquire() as conn:
        actions = [r["action"] for r in await conn.fetch("SELECT action FROM audit_log ORDER BY seq")]
        details = " ".join(r["details"] for r in await conn.fetch("SELECT details::text FROM audit_log"))
        result = await audit.verify(conn)
    assert actions.count("recording:ingested") == 1
    assert actions.count("recording:played") == 3
    assert "recording:listed" in actions and "recording:viewed" in actions
    assert "2125550123" not in details and "6465550199" not in details
    assert result.ok, result.problems


async def test_phone_filter_finds_by_keyed_hash(client: Any, fake_twilio: Any, audio_fixtures: Path) -> None:
    data = (audio_fixtures / "call-without-announcement.wav").read_bytes()
    for caller in ("+12125550123", "+12125550999"):
        sid, csid = rec_sid(), call_sid()
        fake_twilio.media[sid] = data
        fake_twilio.calls[csid] = {"from": caller, "to": "+16465550199", "direction": "inbound"}
        assert (await post_signed(client, callback(fake_twilio, sid, csid=csid))).status == 202
    assert await drain(client) == 2
    token = await api_token(client)
    auth = {"Authorization": f"Bearer {token}"}
    found = await (
        await client.post("/api/v1/recordings/search", json={"phone": "+1 212-555-0999"}, headers=auth)
    ).json()
    assert len(found["items"]) == 1
    both = await (
        await client.post("/api/v1/recordings/search", json={"phone": "+16465550199"}, headers=auth)
    ).json()
    assert len(both["items"]) == 2
    none = await (
        await client.post("/api/v1/recordings/search", json={"phone": "+12125550000"}, headers=auth)
    ).json()
    assert none["items"] == []
    async with client.app[db_key].acquire() as conn:
        raw = await conn.fetchval("SELECT string_agg(t::text, ' ') FROM recordings t")
    assert "5550" not in raw


async def test_duplicate_callbacks_make_one_recording(
    client: Any, fake_twilio: Any, audio_fixtures: Path
) -> None:
    sid = rec_sid()
    fake_twilio.media[sid] = (audio_fixtures / "call-with-announcement.wav").read_bytes()
    form = callback(fake_twilio, sid)
    first = await post_signed(client, form)
    second = await post_signed(client, form)
    assert first.status == 202 and second.status == 200
    assert (await second.json())["status"] == "duplicate"
    await drain(client)
    third = await post_signed(client, form)  # after ingest too
    assert third.status == 200
    await drain(client)
    async with client.app[db_key].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM recordings") == 1
    assert fake_twilio.media_requests == 1


@pytest.mark.parametrize(
    ("mutate", "status", "code"),
    [
        (lambda f, h: h.update({"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"}), 403, "invalid_signature"),
        (lambda f, h: h.pop("X-Twilio-Signature"), 403, "invalid_signature"),
        (
            lambda f, h: f.update({"RecordingDuration": "13"}),
            403,
            "invalid_signature",
        ),  # form changed after signing
    ],
)
async def test_forged_or_missing_signature_is_refused(
    client: Any, fake_twilio: Any, mutate: Any, status: int, code: str
) -> None:
    form = callback(fake_twilio, rec_sid())
    path = "/webhooks/twilio/acme"
    headers = {
        "X-Twilio-Signature": RequestValidator(TWILIO_TOKEN).compute_signature(PUBLIC_BASE + path, form)
    }
    mutate(form, headers)
    resp = await client.post(path, data=form, headers=headers)
    assert resp.status == status
    assert (await resp.json())["error"]["code"] == code
    async with client.app[db_key].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM jobs") == 0


async def test_signature_over_query_tags_is_checked(client: Any, fake_twilio: Any) -> None:
    form = callback(fake_twilio, rec_sid())
    path = "/webhooks/twilio/acme?consent=granted"
    sig = RequestValidator(TWILIO_TOKEN).compute_signature(PUBLIC_BASE + path, form)
    tampered = await client.post(
        "/webhooks/twilio/acme?consent=declined", data=form, headers={"X-Twilio-Signature": sig}
    )
    assert tampered.status == 403


async def test_port_variant_signatures_are_accepted(client: Any, fake_twilio: Any) -> None:
    form = callback(fake_twilio, rec_sid())
    path = "/webhooks/twilio/acme"
    sig = RequestValidator(TWILIO_TOKEN).compute_signature("https://callrec.example.test:443" + path, form)
    resp = await client.post(path, data=form, headers={"X-Twilio-Signature": sig})
    assert resp.status == 202


async def test_other_tenants_token_does_not_validate(client: Any, fake_twilio: Any) -> None:
    form = callback(fake_twilio, rec_sid())
    resp = await post_signed(client, form, tenant="acme", token="other-token")
    assert resp.status == 403


async def test_unknown_tenant_is_404(client: Any, fake_twilio: Any) -> None:
    resp = await post_signed(client, callback(fake_twilio, rec_sid()), tenant="nobody")
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "unknown_tenant"


async def test_callback_for_another_account_is_refused(client: Any, fake_twilio: Any) -> None:
    form = callback(fake_twilio, rec_sid(), AccountSid="AC" + "1" * 32)
    resp = await post_signed(client, form)
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "account_mismatch"


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("RecordingSid", "not-a-sid", "invalid_callback"),
        ("RecordingStatus", "exploded", "invalid_callback"),
        ("RecordingUrl", "https://evil.example.com/a.wav", "media_host_not_allowed"),
        ("RecordingUrl", "http://169.254.169.254/latest/meta-data", "media_host_not_allowed"),
        ("RecordingUrl", "file:///etc/passwd", "media_url_invalid"),
    ],
)
async def test_malformed_callbacks_are_400_and_change_nothing(
    client: Any, fake_twilio: Any, field: str, value: str, code: str
) -> None:
    form = callback(fake_twilio, rec_sid(), **{field: value})
    resp = await post_signed(client, form)
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == code
    async with client.app[db_key].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM jobs") == 0


async def test_invalid_consent_tag_is_400(client: Any, fake_twilio: Any) -> None:
    resp = await post_signed(client, callback(fake_twilio, rec_sid()), query="consent=maybe")
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "invalid_tag"


async def test_absent_and_failed_are_recorded_as_events(client: Any, fake_twilio: Any) -> None:
    for status in ("absent", "failed"):
        resp = await post_signed(client, callback(fake_twilio, rec_sid(), status=status, ErrorCode="13617"))
        assert resp.status == 200
    async with client.app[db_key].acquire() as conn:
        kinds = sorted(r["kind"] for r in await conn.fetch("SELECT kind FROM provider_events"))
        assert kinds == ["recording-absent", "recording-failed"]
        assert await conn.fetchval("SELECT count(*) FROM jobs") == 0
        assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'provider:event'") == 2


async def test_undecodable_media_ends_as_dead_job_with_reason(client: Any, fake_twilio: Any) -> None:
    sid = rec_sid()
    fake_twilio.media[sid] = b"<html><body>Service unavailable</body></html>" * 20
    assert (await post_signed(client, callback(fake_twilio, sid))).status == 202
    await drain(client)
    async with client.app[db_key].acquire() as conn:
        job = await conn.fetchrow("SELECT state, last_error, attempts FROM jobs")
        assert await conn.fetchval("SELECT count(*) FROM recordings") == 0
        assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'ingest:failed'") == 1
    assert job["state"] == "dead" and job["attempts"] == 1
    assert "undecodable" in job["last_error"]
    storage_root = client.app[config_key].storage_path
    assert not [p for p in storage_root.rglob("*") if p.is_file()]  # nothing was stored


async def test_empty_media_ends_as_dead_job(client: Any, fake_twilio: Any) -> None:
    sid = rec_sid()
    fake_twilio.media[sid] = b""
    assert (await post_signed(client, callback(fake_twilio, sid))).status == 202
    await drain(client)
    async with client.app[db_key].acquire() as conn:
        job = await conn.fetchrow("SELECT state, last_error FROM jobs")
    assert job["state"] == "dead" and "empty" in job["last_error"]


async def test_provider_outage_retries_with_backoff_then_succeeds(
    client: Any, fake_twilio: Any, audio_fixtures: Path
) -> None:
    sid = rec_sid()
    fake_twilio.media[sid] = (audio_fixtures / "call-with-announcement.wav").read_bytes()
    fake_twilio.fail_media = 1
    assert (await post_signed(client, callback(fake_twilio, sid))).status == 202
    await drain(client)
    async with client.app[db_key].acquire() as conn:
        job = await conn.fetchrow("SELECT state, attempts, last_error, run_at > now() AS later FROM jobs")
        assert job["state"] == "queued" and job["attempts"] == 1 and job["later"]
        assert "500" in job["last_error"]
        await conn.execute("UPDATE jobs SET run_at = now()")  # the clock moves past the backoff
    await drain(client)
    async with client.app[db_key].acquire() as conn:
        assert await conn.fetchval("SELECT state FROM jobs") == "done"
        assert await conn.fetchval("SELECT count(*) FROM recordings") == 1


async def test_provider_copy_is_deleted_when_configured(
    aiohttp_client: Any, app_config: Any, fake_twilio: Any, audio_fixtures: Path
) -> None:
    from callrec.app import create_app

    cfg = app_config(
        tenants={
            "acme": {
                "twilio_account_sid": TWILIO_SID,
                "twilio_auth_token": TWILIO_TOKEN,
                "twilio_api_base": fake_twilio.base,
                "delete_provider_copy": True,
            }
        }
    )
    client = await aiohttp_client(create_app(cfg, run_workers=False))
    sid = rec_sid()
    fake_twilio.media[sid] = (audio_fixtures / "call-with-announcement.wav").read_bytes()
    assert (await post_signed(client, callback(fake_twilio, sid))).status == 202
    assert await drain(client) == 2  # the ingest, then the deletion it queued
    assert fake_twilio.deleted == [sid]
    async with client.app[db_key].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM recordings") == 1
        assert (
            await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'provider:copy-deleted'") == 1
        )


async def test_provider_copy_is_kept_by_default(client: Any, fake_twilio: Any, audio_fixtures: Path) -> None:
    sid = rec_sid()
    fake_twilio.media[sid] = (audio_fixtures / "call-with-announcement.wav").read_bytes()
    assert (await post_signed(client, callback(fake_twilio, sid))).status == 202
    assert await drain(client) == 1
    assert fake_twilio.deleted == []


async def test_oversized_media_is_dead_with_the_limit_named(
    aiohttp_client: Any, app_config: Any, fake_twilio: Any
) -> None:
    from callrec.app import create_app

    cfg = app_config(ingest={"max_media_mb": 1})
    client = await aiohttp_client(create_app(cfg, run_workers=False))
    sid = rec_sid()
    fake_twilio.media[sid] = b"\0" * (2 * 1024 * 1024)
    assert (await post_signed(client, callback(fake_twilio, sid))).status == 202
    await drain(client)
    async with client.app[db_key].acquire() as conn:
        job = await conn.fetchrow("SELECT state, last_error, attempts FROM jobs")
    assert job["state"] == "dead" and job["attempts"] == 1
    assert "limit" in job["last_error"]


async def test_truncated_media_is_fetched_again_before_giving_up(
    client: Any, fake_twilio: Any, audio_fixtures: Path
) -> None:
    sid = rec_sid()
    whole = (audio_fixtures / "call-with-announcement.wav").read_bytes()
    fake_twilio.media[sid] = whole[: len(whole) // 2]  # the provider served half a file
    assert (await post_signed(client, callback(fake_twilio, sid))).status == 202
    await drain(client)
    async with client.app[db_key].acquire() as conn:
        job = await conn.fetchrow("SELECT state, last_error FROM jobs")
        assert job["state"] == "queued" and "truncated" in job["last_error"]
        fake_twilio.media[sid] = whole  # the next fetch gets the whole file
        await conn.execute("UPDATE jobs SET run_at = now()")
    await drain(client)
    async with client.app[db_key].acquire() as conn:
        assert await conn.fetchval("SELECT sha256 FROM recordings") == hashlib.sha256(whole).hexdigest()
