"""Shared fixtures: a real PostgreSQL (embedded pgserver, or CALLREC_TEST_DATABASE_URL) and
moto's threaded server spoken to over HTTP on loopback. Every test gets its own database,
cloned from a migrated template so that tests stay independent and fast."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from twilio_support import PUBLIC_BASE, TWILIO_SID, TWILIO_TOKEN

FIXTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures" / "audio"
if not FIXTURES.is_dir():  # tests/ copy, when shared/ is not beside the repo
    FIXTURES = Path(__file__).resolve().parent / "fixtures" / "audio"


@pytest.fixture(scope="session")
def audio_fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def pg_root_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("CALLREC_TEST_DATABASE_URL")
    if url:
        yield url
        return
    import pgserver

    server = pgserver.get_server(str(tmp_path_factory.mktemp("pg")), cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def _with_database(url: str, name: str) -> str:
    """Swap the database name in a postgresql:// URL, keeping host/socket query parameters."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture(scope="session")
def pg_template(pg_root_url: str) -> Iterator[str]:
    """A database migrated once; each test clones it (CREATE DATABASE ... TEMPLATE)."""
    import asyncio

    from callrec.db.migrate import migrate

    name = f"callrec_tpl_{uuid.uuid4().hex[:8]}"

    async def setup() -> None:
        conn = await asyncpg.connect(pg_root_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        conn = await asyncpg.connect(_with_database(pg_root_url, name))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    async def teardown() -> None:
        conn = await asyncpg.connect(pg_root_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(setup())
    yield name
    asyncio.run(teardown())


@pytest.fixture
async def database_url(pg_root_url: str, pg_template: str) -> AsyncIterator[str]:
    name = f"callrec_t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(pg_root_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    finally:
        await conn.close()
    yield _with_database(pg_root_url, name)
    conn = await asyncpg.connect(pg_root_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def db(config: Any) -> AsyncIterator[asyncpg.Pool]:
    """A pool as callrec opens it: its connections carry the audit keys of the test's keyring
    (the one ``config`` and the app use), so that audit entries are MACed and verified."""
    from callrec.db.pool import create_pool

    pool = await create_pool(config)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's threaded server on loopback; boto3 talks to it over real HTTP."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


# --- the application under test -------------------------------------------------------------

WEBHOOK_SECRET = "pbx-shared-secret-for-tests"


class FakeTwilio:
    """Twilio's REST API as far as callrec uses it: Calls, recording media, recording delete.

    Checks HTTP Basic auth like Twilio does. ``media`` maps RecordingSid to the bytes served.
    """

    def __init__(self) -> None:
        self.media: dict[str, bytes] = {}
        self.calls: dict[str, dict[str, str]] = {}
        self.deleted: list[str] = []
        self.media_requests = 0
        self.fail_media = 0  # answer this many media requests with 500 first
        self.media_delay = 0.0  # seconds before serving media: a slow provider
        # When set, media is served only once the event is set: a download that lasts until the
        # test says so (a worker busy with a job, without timing).
        self.media_gate: asyncio.Event | None = None
        self.base = ""

    def app(self) -> Any:
        from aiohttp import BasicAuth, web

        def authorised(request: web.Request) -> bool:
            try:
                auth = BasicAuth.decode(request.headers.get("Authorization", ""))
            except ValueError:
                return False
            return auth.login == TWILIO_SID and auth.password == TWILIO_TOKEN

        async def recording(request: web.Request) -> web.StreamResponse:
            if not authorised(request):
                return web.Response(status=401)
            self.media_requests += 1
            if self.media_delay:
                await asyncio.sleep(self.media_delay)
            if self.media_gate is not None:
                await self.media_gate.wait()
            if self.fail_media > 0:
                self.fail_media -= 1
                return web.Response(status=500)
            sid = request.match_info["sid"]
            if sid not in self.media:
                return web.Response(status=404)
            return web.Response(body=self.media[sid], content_type="audio/x-wav")

        async def call(request: web.Request) -> web.Response:
            if not authorised(request):
                return web.Response(status=401)
            sid = request.match_info["sid"]
            body = self.calls.get(
                sid,
                {
                    "sid": sid,
                    # New York on both ends: one-party consent, so plumbing tests need no announcement
                    "from": "+12125550123",
                    "to": "+16465550199",
                    "direction": "inbound",
                    "start_time": "Mon, 23 Nov 2026 10:00:00 +0000",
                },
            )
            return web.json_response(body)

        async def delete(request: web.Request) -> web.Response:
            if not authorised(request):
                return web.Response(status=401)
            sid = request.match_info["sid"]
            self.deleted.append(sid)
            return web.Response(status=204 if self.media.pop(sid, None) is not None else 404)

        app = web.Application()
        prefix = "/2010-04-01/Accounts/{account}"
        app.router.add_get(prefix + "/Recordings/{sid:RE[0-9a-f]+}", recording)
        app.router.add_get(prefix + "/Calls/{sid}.json", call)
        app.router.add_delete(prefix + "/Recordings/{sid}.json", delete)
        return app

    def recording_url(self, sid: str) -> str:
        return f"{self.base}/2010-04-01/Accounts/{TWILIO_SID}/Recordings/{sid}"


@pytest.fixture
async def fake_twilio() -> AsyncIterator[FakeTwilio]:
    from aiohttp.test_utils import TestServer

    fake = FakeTwilio()
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    fake.base = str(server.make_url("")).rstrip("/")
    try:
        yield fake
    finally:
        await server.close()


def make_config(tmp_path: Path, database_url: str, twilio_base: str, **sections: Any) -> Any:
    """A test config: real database, filesystem store under tmp_path, a tenant with secrets.
    Media may come from the fake Twilio (``twilio_base``), which also serves Twilio's API."""
    from callrec.config import config_from_mapping

    raw: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "server": {"public_base_url": PUBLIC_BASE},
        "database": {"url": database_url},
        "ingest": {"media_hosts": [twilio_base.removeprefix("http://")], "retry_base": "1s"},
        "tenants": {
            "acme": {
                "twilio_account_sid": TWILIO_SID,
                "twilio_auth_token": TWILIO_TOKEN,
                "twilio_api_base": twilio_base,
                "webhook_secret": WEBHOOK_SECRET,
                "retention": "90d",
                "announcements": {
                    "rec-notice": {
                        "audio": str(FIXTURES / "announcement-en-gb-v1.wav"),
                        "language": "en-GB",
                        "version": "1",
                    },
                },
            },
            "other": {
                "twilio_account_sid": "AC" + "f" * 32,
                "twilio_auth_token": "other-token",
                "twilio_api_base": twilio_base,
                "webhook_secret": "other-secret",
            },
        },
    }
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(raw.get(name), dict):
            raw[name] = {**raw[name], **values}
        else:
            raw[name] = values
    return config_from_mapping(raw)


@pytest.fixture
def app_config(tmp_path: Path, database_url: str, fake_twilio: FakeTwilio) -> Any:
    """Build a config with some sections replaced: ``app_config(storage={...})``."""
    return lambda **sections: make_config(tmp_path, database_url, fake_twilio.base, **sections)


@pytest.fixture
def config(tmp_path: Path, database_url: str, fake_twilio: FakeTwilio) -> Any:
    return make_config(tmp_path, database_url, fake_twilio.base)


@pytest.fixture
async def client(aiohttp_client: Any, config: Any) -> Any:
    """The app with background workers off: tests drive the worker with run_once()."""
    from callrec.app import create_app

    return await aiohttp_client(create_app(config, run_workers=False))
