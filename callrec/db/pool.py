"""Connecting to PostgreSQL: the configured URL, or an embedded server under the data dir."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg

from callrec.config import Config
from callrec.db.migrate import migrate

log = logging.getLogger(__name__)


class DatabaseUnavailable(Exception):
    pass


def embedded_url(data_dir: Path) -> str:
    """Start (or reuse) the embedded PostgreSQL in ``<data_dir>/pg`` and return its URL.

    pgserver keeps one postmaster per data directory and counts the processes using it
    (``callrec serve`` and CLI commands run beside it share one database); the last one to
    exit stops it.
    """
    from pgserver.postgres_server import get_server

    pgdata = data_dir / "pg"
    pgdata.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    server: Any = get_server(str(pgdata), cleanup_mode="stop")
    url: str = server.get_uri()
    return url


def database_url(config: Config) -> str:
    return config.database.url or embedded_url(config.data_dir)


async def create_pool(config: Config, *, url: str | None = None, migrate_schema: bool = True) -> asyncpg.Pool:
    dsn = url or database_url(config)
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=config.database.pool_min,
            max_size=config.database.pool_max,
            command_timeout=60,
        )
    except (OSError, asyncpg.PostgresError) as exc:
        raise DatabaseUnavailable(f"cannot connect to the database: {exc.__class__.__name__}") from exc
    assert pool is not None
    if migrate_schema:
        async with pool.acquire() as conn:
            applied = await migrate(conn)
            if applied:
                log.info("applied migrations: %s", ", ".join(applied))
    return pool


@contextlib.asynccontextmanager
async def connect(config: Config, *, url: str | None = None) -> AsyncIterator[asyncpg.Connection]:
    """One connection for a CLI command."""
    conn = await asyncpg.connect(url or database_url(config))
    try:
        yield conn
    finally:
        await conn.close()
