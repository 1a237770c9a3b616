"""Shared fixtures: a real PostgreSQL (embedded pgserver, or CALLREC_TEST_DATABASE_URL) and
moto's threaded server spoken to over HTTP on loopback. Every test gets its own database,
cloned from a migrated template so that tests stay independent and fast."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

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
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    assert pool is not None
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
