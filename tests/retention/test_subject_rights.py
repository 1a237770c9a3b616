"""GDPR Art. 15/20 access (ZIP behind a short-lived link) and Art. 18 restriction."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from twilio_support import ingest_twilio

from callrec.app import create_app
from callrec.appkeys import db_key
from callrec.db import tokens

ALICE, BOB = "+12125550123", "+12125550777"


@pytest.fixture
async def client(aiohttp_client: Any, config: Any) -> Any:
    return await aiohttp_client(create_app(config, run_workers=False))


async def bearer(client: Any, *scopes: str) -> dict[str, str]:
    async with client.app[db_key].acquire() as conn:
        _, token = await tokens.create(conn, tenant="acme", name="t", scopes=list(scopes))
    return {"Authorization": f"Bearer {token}"}


async def test_access_request_zip_has_the_subjects_audio_bit_exact(
    client: Any, fake_twilio: Any, audio_fixtures: Path
) -> None:
    one = (audio_fixtures / "call-with-announcement.wav").read_bytes()
    two = (audio_fixtures / "call-without-announcement.wav").read_bytes()
    first = await ingest_twilio(client, fake_twilio, one, caller=ALICE, agent=None)
    second = await ingest_twilio(client, fake_twilio, two, caller=ALICE, agent=None)
    await ingest_twilio(client, fake_twilio, one, caller=BOB, agent=None)
    dpo = await bearer(client, "access:write")
    resp = await client.post("/api/v1/access-requests", headers=dpo, json={"subject": {"phone": ALICE}})
    assert resp.status == 201
    grant = await resp.json()
    assert grant["recordings"] == 2
    link = urlsplit(grant["download_url"])
    download = await client.get(f"{link.path}?{link.query}")  # no bearer: the link is the capability
    assert download.status == 200 and download.headers["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(await download.read()))
    assert archive.read(f"recordings/{first}.wav") == one
    assert archive.read(f"recordings/{second}.wav") == two
    meta = json.loads(archive.read("metadata.json"))
    assert {r["id"] for r in meta["recordings"]} == {str(first), str(second)}
    wrong = await client.get(link.path + "?token=guess")
    assert wrong.status == 404
    async with client.app[db_key].acquire() as conn:
        actions = [r["action"] for r in await conn.fetch("SELECT action FROM audit_log ORDER BY seq")]
        await conn.execute("UPDATE access_requests SET expires_at = now() - interval '1 second'")
    assert "access:requested" in actions and "access:downloaded" in actions
    expired = await client.get(f"{link.path}?{link.query}")
    assert expired.status == 404 and (await expired.json())["error"]["code"] == "link_invalid"


async def test_restricted_recordings_open_only_for_privacy_and_legal(
    client: Any, fake_twilio: Any, audio_fixtures: Path
) -> None:
    rid = await ingest_twilio(
        client,
        fake_twilio,
        (audio_fixtures / "call-with-announcement.wav").read_bytes(),
        caller=ALICE,
        agent=None,
    )
    support = await bearer(client, "recordings:read", "recordings:listen")
    privacy = await bearer(
        client, "recordings:read", "recordings:listen", "restrictions:write", "restricted:read"
    )
    assert (
        await client.post(
            f"/api/v1/recordings/{rid}/restrict", headers=support, json={"reason": "caller contests accuracy"}
        )
    ).status == 403
    resp = await client.post(
        f"/api/v1/recordings/{rid}/restrict", headers=privacy, json={"reason": "caller contests accuracy"}
    )
    assert resp.status == 200 and (await resp.json())["restricted"] is True
    assert (await client.get(f"/api/v1/recordings/{rid}", headers=support)).status == 404
    assert (await client.get(f"/api/v1/recordings/{rid}/audio", headers=support)).status == 404
    assert (await (await client.get("/api/v1/recordings", headers=support)).json())["items"] == []
    assert (await client.get(f"/api/v1/recordings/{rid}/audio", headers=privacy)).status == 200
    listed = await (await client.get("/api/v1/recordings", headers=privacy)).json()
    assert [i["id"] for i in listed["items"]] == [str(rid)]
    assert (
        await client.post(
            f"/api/v1/recordings/{rid}/unrestrict", headers=privacy, json={"reason": "resolved"}
        )
    ).status == 200
    assert (await client.get(f"/api/v1/recordings/{rid}", headers=support)).status == 200
    async with client.app[db_key].acquire() as conn:
        actions = [r["action"] for r in await conn.fetch("SELECT action FROM audit_log ORDER BY seq")]
    assert "recording:restricted" in actions and "recording:unrestricted" in actions
