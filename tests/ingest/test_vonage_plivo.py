"""Vonage and Plivo recordings end to end: webhooks signed with a standard JWT library (Vonage)
and Plivo's own SDK, fake provider APIs on loopback, the same policy and storage as Twilio."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from plivo.utils.signature_v3 import construct_post_url, get_signature_v3

from callrec.app import create_app, worker_key
from callrec.appkeys import db_key

VONAGE_SECRET = "vonage-signature-secret-for-tests-0123456789"
VONAGE_APP = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
PLIVO_ID = "MAXXXXXXXXXXXXXXXXXX"
PLIVO_TOKEN = "plivo-auth-token-for-tests"
PUBLIC_BASE = "https://callrec.example.test"


class FakeProviders:
    """Vonage's Voice API and Plivo's REST API, as far as callrec uses them."""

    def __init__(self, public_key: Any) -> None:
        self.public_key = public_key
        self.media: dict[str, bytes] = {}
        self.deleted: list[str] = []
        self.base = ""

    def app(self) -> web.Application:
        def vonage_authorised(request: web.Request) -> bool:
            token = request.headers.get("Authorization", "").removeprefix("Bearer ")
            try:
                claims = jwt.decode(token, self.public_key, algorithms=["RS256"])
            except jwt.PyJWTError:
                return False
            return bool(claims.get("application_id") == VONAGE_APP)

        def plivo_authorised(request: web.Request) -> bool:
            import base64

            expected = "Basic " + base64.b64encode(f"{PLIVO_ID}:{PLIVO_TOKEN}".encode()).decode()
            return request.headers.get("Authorization") == expected

        async def vonage_calls(request: web.Request) -> web.Response:
            if not vonage_authorised(request):
                return web.Response(status=401)
            return web.json_response(
                {
                    "_embedded": {
                        "calls": [
                            {
                                "uuid": "leg-1",
                                "conversation_uuid": request.query["conversation_uuid"],
                                "from": {"type": "phone", "number": "12125550123"},
                                "to": {"type": "phone", "number": "16465550199"},
                                "start_time": "2026-11-23T10:00:00.000Z",
                            }
                        ]
                    }
                }
            )

        async def vonage_file(request: web.Request) -> web.Response:
            if not vonage_authorised(request):
                return web.Response(status=401)
            return web.Response(body=self.media[request.match_info["id"]], content_type="audio/mpeg")

        async def plivo_call(request: web.Request) -> web.Response:
            if not plivo_authorised(request):
                return web.Response(status=401)
            return web.json_response(
                {
                    "call_uuid": request.match_info["uuid"],
                    "from_number": "12125550123",
                    "to_number": "16465550199",
                    "call_direction": "inbound",
                }
            )

        async def plivo_media(request: web.Request) -> web.Response:
            if not plivo_authorised(request):
                return web.Response(status=401)
            return web.Response(body=self.media[request.match_info["id"]], content_type="audio/x-wav")

        async def plivo_delete(request: web.Request) -> web.Response:
            if not plivo_authorised(request):
                return web.Response(status=401)
            self.deleted.append(request.match_info["id"])
            return web.Response(status=204)

        app = web.Application()
        app.router.add_get("/v1/calls", vonage_calls)
        app.router.add_get("/v1/files/{id}", vonage_file)
        app.router.add_get(f"/v1/Account/{PLIVO_ID}/Call/{{uuid}}/", plivo_call)
        app.router.add_get("/media/{id}.wav", plivo_media)
        app.router.add_delete(f"/v1/Account/{PLIVO_ID}/Recording/{{id}}/", plivo_delete)
        return app


@pytest.fixture
async def providers(tmp_path: Path) -> AsyncIterator[tuple[FakeProviders, Path]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "vonage-app.key"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    pem.chmod(0o600)
    fake = FakeProviders(key.public_key())
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    fake.base = str(server.make_url("")).rstrip("/")
    try:
        yield fake, pem
    finally:
        await server.close()


@pytest.fixture
async def client(aiohttp_client: Any, app_config: Any, providers: tuple[FakeProviders, Path]) -> Any:
    fake, pem = providers
    cfg = app_config(
        ingest={"media_hosts": [fake.base.removeprefix("http://")]},
        tenants={
            "acme": {
                "webhook_secret": "pbx-shared-secret-for-tests",
                "vonage_signature_secret": VONAGE_SECRET,
                "vonage_application_id": VONAGE_APP,
                "vonage_private_key_path": str(pem),
                "vonage_api_base": fake.base,
                "plivo_auth_id": PLIVO_ID,
                "plivo_auth_token": PLIVO_TOKEN,
                "plivo_api_base": fake.base,
                "policy": {"default_basis": "contract"},
            }
        },
    )
    return await aiohttp_client(create_app(cfg, run_workers=False))


def vonage_signed(body: bytes, secret: str = VONAGE_SECRET, **claims: Any) -> dict[str, str]:
    payload = {
        "iat": int(time.time()),
        "jti": uuid.uuid4().hex,
        "iss": "Vonage",
        "payload_hash": hashlib.sha256(body).hexdigest(),
        "application_id": VONAGE_APP,
        **claims,
    }
    return {
        "Authorization": "Bearer " + jwt.encode(payload, secret, algorithm="HS256"),
        "Content-Type": "application/json",
    }


def plivo_signed(path: str, params: dict[str, str], token: str = PLIVO_TOKEN) -> dict[str, str]:
    nonce = uuid.uuid4().hex
    base = construct_post_url(PUBLIC_BASE + path, params)
    signature = get_signature_v3(
        token.encode(), base.decode() if isinstance(base, bytes) else base, nonce.encode()
    )
    return {"X-Plivo-Signature-V3": signature.decode(), "X-Plivo-Signature-V3-Nonce": nonce}


async def drain(client: Any) -> None:
    for _ in range(10):
        if not await client.app[worker_key].run_once():
            return


async def consent(client: Any, call_id: str, kind: str = "consent_granted") -> None:
    import hmac

    body = json.dumps({"event": kind, "call_id": call_id, "at": "2026-11-23T10:00:03+00:00"}).encode()
    t = int(time.time())
    sig = hmac.new(b"pbx-shared-secret-for-tests", f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    resp = await client.post(
        "/webhooks/events/acme", data=body, headers={"Callrec-Signature": f"t={t},v1={sig}"}
    )
    assert resp.status == 202


async def test_vonage_recording_is_fetched_with_the_application_key_and_stored(
    client: Any, providers: tuple[FakeProviders, Path], audio_fixtures: Path
) -> None:
    fake, _ = providers
    file_id, conversation = uuid.uuid4().hex, "CON-" + str(uuid.uuid4())
    fake.media[file_id] = (audio_fixtures / "call-without-announcement.wav").read_bytes()
    await consent(client, conversation)  # Vonage consent arrives as a signed call event
    body = json.dumps(
        {
            "start_time": "2026-11-23T10:00:00Z",
            "end_time": "2026-11-23T10:00:30Z",
            "recording_url": f"{fake.base}/v1/files/{file_id}",
            "size": 12345,
            "recording_uuid": str(uuid.uuid4()),
            "conversation_uuid": conversation,
            "timestamp": "2026-11-23T10:00:31Z",
        }
    ).encode()
    resp = await client.post("/webhooks/vonage/acme", data=body, headers=vonage_signed(body))
    assert resp.status == 202, await resp.text()
    again = await client.post("/webhooks/vonage/acme", data=body, headers=vonage_signed(body))
    assert again.status == 200
    await drain(client)
    async with client.app[db_key].acquire() as conn:
        rec = await conn.fetchrow("SELECT * FROM recordings")
    assert rec["provider"] == "vonage" and rec["state"] == "stored", rec["policy"]
    assert rec["sha256"] == hashlib.sha256(fake.media[file_id]).hexdigest()
    assert json.loads(rec["jurisdiction"])["caller_region"] == "US-NY"
    assert rec["from_hash"] is not None


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({"Content-Type": "application/json"}, "invalid_signature"),
        ("wrong-secret", "invalid_signature"),
        ("tampered", "invalid_signature"),
    ],
)
async def test_vonage_bad_signatures_are_403(client: Any, headers: Any, code: str) -> None:
    body = json.dumps(
        {
            "recording_url": "https://api.nexmo.com/v1/files/x",
            "recording_uuid": "r1",
            "conversation_uuid": "c1",
        }
    ).encode()
    if headers == "wrong-secret":
        headers = vonage_signed(body, secret="another-secret-entirely-0123456789")
    elif headers == "tampered":
        headers = vonage_signed(body)
        body = body.replace(b"r1", b"r2")
    resp = await client.post("/webhooks/vonage/acme", data=body, headers=headers)
    assert resp.status == 403 and (await resp.json())["error"]["code"] == code
    async with client.app[db_key].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM jobs") == 0


async def test_vonage_status_events_are_acknowledged_and_ignored(client: Any) -> None:
    body = json.dumps({"status": "completed", "uuid": "leg-1", "conversation_uuid": "c1"}).encode()
    resp = await client.post("/webhooks/vonage/acme", data=body, headers=vonage_signed(body))
    assert resp.status == 200 and (await resp.json())["status"] == "ignored"


async def test_plivo_recording_is_stored_and_a_refusal_deletes_plivos_copy(
    client: Any, providers: tuple[FakeProviders, Path], audio_fixtures: Path
) -> None:
    fake, _ = providers
    audio = (audio_fixtures / "call-without-announcement.wav").read_bytes()
    results = {}
    for tag in ("granted", "declined"):
        rec_id, call_uuid = str(uuid.uuid4()), str(uuid.uuid4())
        fake.media[rec_id] = audio
        params = {
            "RecordUrl": f"{fake.base}/media/{rec_id}.wav",
            "RecordingID": rec_id,
            "CallUUID": call_uuid,
            "RecordingDurationMs": "30000",
            "RecordingStartMs": "1795428000000",
            "RecordingEndMs": "1795428030000",
            "From": "12125550123",
            "To": "16465550199",
        }
        path = "/webhooks/plivo/acme?" + urlencode({"consent": tag, "basis": "contract"})
        resp = await client.post(path, data=params, headers=plivo_signed(path, params))
        assert resp.status == 202, await resp.text()
        results[tag] = rec_id
    await drain(client)
    async with client.app[db_key].acquire() as conn:
        rows = {r["provider_recording_id"]: r for r in await conn.fetch("SELECT * FROM recordings")}
        payloads = " ".join(r["payload"] for r in await conn.fetch("SELECT payload::text FROM jobs"))
    assert rows[results["granted"]]["state"] == "stored"
    assert rows[results["declined"]]["state"] == "rejected"
    assert fake.deleted == [results["declined"]]
    assert "2125550123" not in payloads  # the callback's numbers never reach the queue


async def test_plivo_signature_covers_query_tags_and_params(client: Any, providers: Any) -> None:
    fake, _ = providers
    params = {"RecordUrl": f"{fake.base}/media/x.wav", "RecordingID": "r-1", "CallUUID": "c-1"}
    path = "/webhooks/plivo/acme?consent=granted"
    headers = plivo_signed(path, params)
    forged = await client.post("/webhooks/plivo/acme?consent=declined", data=params, headers=headers)
    assert forged.status == 403
    wrong_token = await client.post(path, data=params, headers=plivo_signed(path, params, token="nope"))
    assert wrong_token.status == 403
    bad_callback = {"RecordingID": "r-1", "CallUUID": "c-1"}  # no RecordUrl
    resp = await client.post(path, data=bad_callback, headers=plivo_signed(path, bad_callback))
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid_callback"
