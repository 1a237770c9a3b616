"""Issue 9, defect 4: where callrec sends requests on a callback's say-so.

``[ingest] media_hosts`` entries match host *and* port, at the webhook and again in the worker.
Every server here is a real aiohttp server on 127.0.0.1 that logs what reached it.
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
