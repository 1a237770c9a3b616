"""Issue 9, defect 4: where callrec sends requests on a callback's say-so.

``[ingest] media_hosts`` entries match host *and* port, at the webhook and again in the worker;
Twilio's Calls resource and deletions go to the configured ``twilio_api_base`` with the
account's credentials, never to the origin of a callback's RecordingUrl. Every server here is a
real aiohttp server on 127.0.0.1 that logs what reached it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from twilio.request_validator import RequestValidator

from callrec.app import create_app, worker_key
from callrec.appkeys import db_key
from callrec.db import jobs

TWILIO_SID = "AC" + "0123456789abcdef" * 2
TWILIO_TOKEN = "twilio-auth-token-for-tests"
PUBLIC_BASE = "https://callrec.example.test"
ACME = {"twilio_account_sid": TWILIO_SID, "twilio_auth_token": TWILIO_TOKEN}


class Seen:
    """Every request that reached one server: method, path and Authorization header."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str | None]] = []

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.requests.append((request.method, request.path, request.headers.get("Authorization")))
        return await handler(request)


async def start(app: web.Application) -> tuple[TestServer, Seen]:
    seen = Seen()
    app.middlewares.append(seen.middleware)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server, seen


def origin(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def trap() -> AsyncIterator[tuple[str, Seen]]:
    """A service on another port of an allowed host (think 169.254.169.254's metadata service on
    a sidecar): it answers anything, like a real one would, and must never be asked."""

    async def anything(request: web.Request) -> web.Response:
        return web.json_response({"from": "+12125550123", "to": "+16465550199", "direction": "inbound"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    server, seen = await start(app)
    try:
        yield origin(server), seen
    finally:
        await server.close()


def signed(form: dict[str, str]) -> tuple[str, dict[str, str]]:
    path = "/webhooks/twilio/acme?consent=granted&basis=contract"
    return path, {
        "X-Twilio-Signature": RequestValidator(TWILIO_TOKEN).compute_signature(PUBLIC_BASE + path, form)
    }


def completed(recording_url: str, *, rsid: str | None = None, csid: str | None = None) -> dict[str, str]:
    return {
        "AccountSid": TWILIO_SID,
        "CallSid": csid or "CA" + uuid.uuid4().hex,
        "RecordingSid": rsid or "RE" + uuid.uuid4().hex,
        "RecordingUrl": recording_url,
        "RecordingStatus": "completed",
    }


async def job_rows(client: Any) -> list[Any]:
    async with client.app[db_key].acquire() as conn:
        return list(await conn.fetch("SELECT kind, state, last_error, payload FROM jobs ORDER BY id"))


async def test_webhook_refuses_a_media_url_on_another_port_of_an_allowed_host(
    aiohttp_client: Any, app_config: Any, trap: tuple[str, Seen]
) -> None:
    base, seen = trap
    cfg = app_config(ingest={"media_hosts": ["127.0.0.1"]}, tenants={"acme": ACME})
    client = await aiohttp_client(create_app(cfg, run_workers=False))
    form = completed(f"{base}/latest/meta-data/iam")
    path, headers = signed(form)

    resp = await client.post(path, data=form, headers=headers)

    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "media_host_not_allowed"
    assert await job_rows(client) == []
    assert not await client.app[worker_key].run_once()
    assert seen.requests == []


async def test_worker_refuses_a_queued_job_whose_media_url_is_on_another_port(
    aiohttp_client: Any, app_config: Any, trap: tuple[str, Seen]
) -> None:
    """A job queued before the fix (or by any other path) never reaches the port, credentials or not."""
    base, seen = trap
    cfg = app_config(ingest={"media_hosts": ["127.0.0.1"]}, tenants={"acme": ACME})
    client = await aiohttp_client(create_app(cfg, run_workers=False))
    csid, rsid = "CA" + uuid.uuid4().hex, "RE" + uuid.uuid4().hex
    async with client.app[db_key].acquire() as conn:
        await jobs.enqueue(
            conn,
            tenant="acme",
            kind="ingest.twilio",
            dedupe_key=rsid,
            payload={
                "recording_id": str(uuid.uuid4()),
                "provider": "twilio",
                "call_id": csid,
                "provider_recording_id": rsid,
                "media_url": f"{base}/latest/meta-data/iam",
                "started_at": None,
                "tags": {"consent": "granted", "basis": "contract"},
                "source": {},
                "account_sid": TWILIO_SID,
            },
            max_attempts=3,
        )

    assert await client.app[worker_key].run_once()

    assert [auth for _, _, auth in seen.requests if auth] == []  # the tenant's credentials stayed home
    assert seen.requests == []
    [job] = await job_rows(client)
    assert job["state"] == "dead"  # retrying cannot make the host allowed
    assert "ingest.media_hosts" in job["last_error"]
    async with client.app[db_key].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM recordings") == 0


async def test_an_entry_with_a_port_matches_that_port(
    aiohttp_client: Any, app_config: Any, fake_twilio: Any, audio_fixtures: Path
) -> None:
    """``host:port`` was accepted at start-up but never matched: every callback got 400."""
    port = fake_twilio.base.rsplit(":", 1)[1]
    cfg = app_config(ingest={"media_hosts": [f"127.0.0.1:{port}"]}, tenants={"acme": ACME})
    client = await aiohttp_client(create_app(cfg, run_workers=False))
    rsid = "RE" + uuid.uuid4().hex
    fake_twilio.media[rsid] = (audio_fixtures / "call-without-announcement.wav").read_bytes()
    form = completed(fake_twilio.recording_url(rsid), rsid=rsid)
    path, headers = signed(form)

    resp = await client.post(path, data=form, headers=headers)

    assert resp.status == 202, await resp.text()
    [job] = await job_rows(client)
    assert job["state"] == "queued"


async def test_calls_and_deletion_go_to_twilio_api_base_not_to_the_media_origin(
    aiohttp_client: Any, app_config: Any, fake_twilio: Any, audio_fixtures: Path
) -> None:
    """Even with the RecordingUrl's host and port allowed for media, the account's credentials
    go to the RecordingUrl's origin for the media only; the Calls resource and the deletion of
    Twilio's copy go to twilio_api_base (which need not be in media_hosts)."""
    fake_twilio_class = type(fake_twilio)  # conftest's FakeTwilio: two more, each with a request log
    media_fake, api_fake = fake_twilio_class(), fake_twilio_class()
    media_server, media_seen = await start(media_fake.app())
    api_server, api_seen = await start(api_fake.app())
    try:
        media_fake.base, api_fake.base = origin(media_server), origin(api_server)
        cfg = app_config(
            ingest={"media_hosts": [media_fake.base.removeprefix("http://")]},
            tenants={"acme": {**ACME, "twilio_api_base": api_fake.base, "delete_provider_copy": True}},
        )
        client = await aiohttp_client(create_app(cfg, run_workers=False))
        rsid, csid = "RE" + uuid.uuid4().hex, "CA" + uuid.uuid4().hex
        audio = (audio_fixtures / "call-without-announcement.wav").read_bytes()
        media_fake.media[rsid] = audio
        api_fake.media[rsid] = audio  # Twilio's copy, for the deletion to find
        form = completed(media_fake.recording_url(rsid), rsid=rsid, csid=csid)
        path, headers = signed(form)
        assert (await client.post(path, data=form, headers=headers)).status == 202

        for _ in range(5):
            if not await client.app[worker_key].run_once():
                break

        states = [(j["kind"], j["state"]) for j in await job_rows(client)]
        assert states == [("ingest.twilio", "done"), ("provider.delete_copy", "done")], states
        account = f"/2010-04-01/Accounts/{TWILIO_SID}"
        assert [(m, p) for m, p, _ in media_seen.requests] == [("GET", f"{account}/Recordings/{rsid}")]
        assert [(m, p) for m, p, _ in api_seen.requests] == [
            ("GET", f"{account}/Calls/{csid}.json"),
            ("DELETE", f"{account}/Recordings/{rsid}.json"),
        ]
        assert all(auth for _, _, auth in media_seen.requests + api_seen.requests)  # the fakes check it
        assert api_fake.deleted == [rsid] and api_fake.media_requests == 0
        async with client.app[db_key].acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM recordings") == 1
    finally:
        await media_server.close()
        await api_server.close()


async def test_a_redirect_from_an_allowed_host_is_not_followed(
    aiohttp_client: Any, app_config: Any, fake_twilio: Any, trap: tuple[str, Seen]
) -> None:
    """The URL checked is the URL fetched: a 3xx to another port is a failed download."""
    base, seen = trap

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"{base}/latest/meta-data/iam")

    app = web.Application()
    app.router.add_get("/2010-04-01/Accounts/{account}/Recordings/{sid}", moved)
    server, _ = await start(app)
    try:
        media = origin(server)
        cfg = app_config(
            ingest={"media_hosts": [media.removeprefix("http://")]},
            tenants={"acme": {**ACME, "twilio_api_base": fake_twilio.base}},
        )
        client = await aiohttp_client(create_app(cfg, run_workers=False))
        rsid = "RE" + uuid.uuid4().hex
        form = completed(f"{media}/2010-04-01/Accounts/{TWILIO_SID}/Recordings/{rsid}", rsid=rsid)
        path, headers = signed(form)
        assert (await client.post(path, data=form, headers=headers)).status == 202

        assert await client.app[worker_key].run_once()

        [job] = await job_rows(client)
        assert job["state"] == "queued" and "HTTP 302" in job["last_error"]
        assert seen.requests == []
    finally:
        await server.close()
