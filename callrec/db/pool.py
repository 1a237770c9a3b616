"""Connecting to PostgreSQL: the configured URL, or an embedded server under the data dir.

Opening the database also unwraps the audit keys, once (:mod:`callrec.crypto.auditkeys`), and
hands them to every connection (:class:`AuditedConnection`), so that an audit entry can be MACed
under the chain lock without waiting on the keyring file or on KMS. It is also where the chain is
first authenticated: the first process of this version to open a database writes the checkpoint
(:func:`callrec.db.audit.ensure_checkpoint`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg

from callrec.config import Config
from callrec.crypto.auditkeys import AuditKeyring
from callrec.crypto.keys import KeyProvider, open_key_provider
from callrec.db import Conn, audit
from callrec.db.migrate import migrate

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    _Connection = asyncpg.Connection[asyncpg.Record]
else:
    _Connection = asyncpg.Connection


class DatabaseUnavailable(Exception):
    pass


class AuditedConnection(_Connection):
    """A connection that carries the process's audit keys (None until they are attached).
    :func:`callrec.db.audit.keyring_of` reads them, through a pool's proxy too."""

    audit_keyring: AuditKeyring | None = None


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


async def _provider(config: Config, key_provider: KeyProvider | None) -> KeyProvider:
    if key_provider is not None:
        return key_provider
    return await asyncio.to_thread(open_key_provider, config.keys, keyring_path=config.keyring_path)


async def open_audit_keys(conn: Conn, provider: KeyProvider) -> AuditKeyring:
    """Unwrap the audit keys (making the first one on a database that has none) and authenticate
    the chain from here on if it is not yet (the checkpoint)."""
    keyring = await AuditKeyring.open(conn, provider, create=True)
    assert keyring is not None  # create=True makes one or raises
    checkpoint = await audit.ensure_checkpoint(conn, keyring)
    if checkpoint is not None:
        log.info("audit chain authenticated from entry %d on (checkpoint written)", checkpoint.seq + 1)
    return keyring


async def create_pool(
    config: Config,
    *,
    url: str | None = None,
    migrate_schema: bool = True,
    key_provider: KeyProvider | None = None,
) -> asyncpg.Pool:
    """A pool whose connections carry the audit keys. Migrates first (unless ``migrate_schema``
    is False), then unwraps the keys through ``key_provider`` (default: the configured one)."""
    dsn = url or database_url(config)
    try:
        first = await asyncpg.connect(dsn)
    except (OSError, asyncpg.PostgresError) as exc:
        raise DatabaseUnavailable(f"cannot connect to the database: {exc.__class__.__name__}") from exc
    try:
        if migrate_schema:
            applied = await migrate(first)
            if applied:
                log.info("applied migrations: %s", ", ".join(applied))
        keyring = await open_audit_keys(first, await _provider(config, key_provider))
    finally:
        await first.close()

    async def attach(conn: Any) -> None:
        conn.audit_keyring = keyring

    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=config.database.pool_min,
            max_size=config.database.pool_max,
            command_timeout=60,
            connection_class=AuditedConnection,
            init=attach,
        )
    except (OSError, asyncpg.PostgresError) as exc:
        raise DatabaseUnavailable(f"cannot connect to the database: {exc.__class__.__name__}") from exc
    assert pool is not None
    return pool


@contextlib.asynccontextmanager
async def connect(
    config: Config, *, url: str | None = None, audit_keys: bool = True
) -> AsyncIterator[AuditedConnection]:
    """One connection for a CLI command, carrying the audit keys (made, with the checkpoint, if
    this is the database's first opening by this version) unless ``audit_keys`` is False: for
    ``callrec migrate``, and for ``callrec audit verify``, which attaches what exists itself."""
    conn: AuditedConnection = await asyncpg.connect(
        url or database_url(config), connection_class=AuditedConnection
    )
    try:
        if audit_keys:
            conn.audit_keyring = await open_audit_keys(conn, await _provider(config, None))
        yield conn
    finally:
        await conn.close()
