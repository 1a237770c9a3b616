"""PostgreSQL access: small topic modules of plain SQL; functions take the connection first."""

from __future__ import annotations

from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# A connection of our own or one borrowed from the pool: the queries do not care which.
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
