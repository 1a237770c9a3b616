"""API bearer tokens. Only a SHA-256 of the token is stored: tokens are 256-bit random
strings, so a fast hash is enough (there is no password to brute-force)."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

from callrec.db import Conn

TOKEN_PREFIX = "crt_"


@dataclass(frozen=True)
class ApiToken:
    id: uuid.UUID
    tenant: str
    name: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


async def create(conn: Conn, *, tenant: str, name: str, scopes: list[str]) -> tuple[ApiToken, str]:
    """Returns the row and the token itself, which is shown once and never stored."""
    token = new_token()
    row = await conn.fetchrow(
        """INSERT INTO api_tokens (id, tenant, name, token_hash, scopes) VALUES ($1, $2, $3, $4, $5)
           RETURNING id, tenant, name, scopes, created_at, revoked_at""",
        uuid.uuid4(),
        tenant,
        name,
        token_hash(token),
        scopes,
    )
    assert row is not None
    return ApiToken(**dict(row)), token


async def lookup(conn: Conn, token: str) -> ApiToken | None:
    row = await conn.fetchrow(
        """UPDATE api_tokens SET last_used_at = now()
           WHERE token_hash = $1 AND revoked_at IS NULL
           RETURNING id, tenant, name, scopes, created_at, revoked_at""",
        token_hash(token),
    )
    return ApiToken(**dict(row)) if row else None


async def list_for(conn: Conn, *, tenant: str) -> list[ApiToken]:
    rows = await conn.fetch(
        """SELECT id, tenant, name, scopes, created_at, revoked_at FROM api_tokens
           WHERE tenant = $1 ORDER BY created_at DESC""",
        tenant,
    )
    return [ApiToken(**dict(r)) for r in rows]


async def revoke(conn: Conn, *, tenant: str, token_id: uuid.UUID) -> bool:
    status = await conn.execute(
        "UPDATE api_tokens SET revoked_at = now() WHERE tenant = $1 AND id = $2 AND revoked_at IS NULL",
        tenant,
        token_id,
    )
    return status.endswith(" 1")
