"""A recording through the real ingest path, for tests that need stored recordings: a Twilio
recording callback signed with Twilio's own RequestValidator for tenant acme, then the worker.
On sys.path through pytest's ``pythonpath`` setting (tests/conftest.py's fixtures use it too)."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlencode

from twilio.request_validator import RequestValidator

from callrec.app import worker_key
from callrec.appkeys import db_key

TWILIO_SID = "AC" + "0123456789abcdef" * 2  # tenant acme's
TWILIO_TOKEN = "twilio-auth-token-for-tests"
PUBLIC_BASE = "https://callrec.example.test"
CALLER = "+12125550123"
DESK = "+16465550199"


async def ingest_twilio(
    client: Any,
    fake: Any,
    audio: bytes,
    *,
    caller: str = CALLER,
    agent: str | None = "agent-1",
    call_id: str | None = None,
    drain: bool = False,
) -> uuid.UUID:
    """Post a signed callback for ``audio`` (consent granted, basis contract), run the worker
    once (``drain``: until the queue is empty, at most 50 jobs) and return the recording's id."""
    sid, csid = "RE" + uuid.uuid4().hex, call_id or "CA" + uuid.uuid4().hex
    fake.media[sid] = audio
    fake.calls[csid] = {
        "sid": csid,
        "from": caller,
        "to": DESK,
        "direction": "inbound",
        "start_time": "Mon, 23 Nov 2026 10:00:00 +0000",
    }
    form = {
        "AccountSid": TWILIO_SID,
        "CallSid": csid,
        "RecordingSid": sid,
        "RecordingUrl": fake.recording_url(sid),
        "RecordingStatus": "completed",
    }
    tags = {"consent": "granted", "basis": "contract", **({"agent": agent} if agent else {})}
    path = f"/webhooks/twilio/acme?{urlencode(tags)}"
    sig = RequestValidator(TWILIO_TOKEN).compute_signature(PUBLIC_BASE + path, form)
    assert (await client.post(path, data=form, headers={"X-Twilio-Signature": sig})).status == 202
    worker = client.app[worker_key]
    assert await worker.run_once()
    for _ in range(49 if drain else 0):
        if not await worker.run_once():
            break
    async with client.app[db_key].acquire() as conn:
        rid: uuid.UUID | None = await conn.fetchval(
            "SELECT id FROM recordings WHERE provider_recording_id = $1", sid
        )
    assert rid is not None
    return rid
