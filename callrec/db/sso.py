"""Single sign-on: sign-ins under way (one-time state rows) and the provider subject of accounts."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from callrec.db import Conn


@dataclass(frozen=True)
class SsoState:
    tenant: str
    browser_hash: bytes
    nonce: str
    code_verifier: str
    expired: bool


async def save_state(
    conn: Conn,
    *,
    state_hash: bytes,
    tenant: str,
    browser_hash: bytes,
    nonce: str,
    code_verifier: str,
    ttl: timedelta,
    max_pending: int,
) -> bool:
    """Keep a sign-in under way; False (nothing kept) when the tenant already has ``max_pending``
    of them: anyone can start one, and the table must not grow without bound."""
    # Clearing expired rows here keeps the table small without a sweeper of its own.
    await conn.execute("DELETE FROM sso_states WHERE expires_at < now()")
    saved = await conn.fetchval(
        """INSERT INTO sso_states (state_hash, tenant, browser_hash, nonce, code_verifier, expires_at)
           SELECT $1, $2, $3, $4, $5, now() + $6::interval
           WHERE (SELECT count(*) FROM sso_states WHERE tenant = $2) < $7
           RETURNING true""",
        state_hash,
        tenant,
        browser_hash,
        nonce,
        code_verifier,
        ttl,
        max_pending,
    )
    return saved is not None


async def take_state(conn: Conn, state_hash: bytes) -> SsoState | None:
    """The state row, deleted in the same statement: a state works once, even when two
    requests race with it."""
    row = await conn.fetchrow(
        """DELETE FROM sso_states WHERE state_hash = $1
           RETURNING tenant, browser_hash, nonce, code_verifier, expires_at <= now() AS expired""",
        state_hash,
    )
    if row is None:
        return None
    return SsoState(
        row["tenant"], bytes(row["browser_hash"]), row["nonce"], row["code_verifier"], row["expired"]
    )


@dataclass(frozen=True)
class SubjectLink:
    issuer: str | None
    subject: str | None


async def subject_of(conn: Conn, user_id: uuid.UUID) -> SubjectLink:
    """The account's provider subject, its row locked until the transaction ends."""
    row = await conn.fetchrow(
        "SELECT oidc_issuer, oidc_subject FROM staff_users WHERE id = $1 FOR UPDATE", user_id
    )
    return SubjectLink(row["oidc_issuer"], row["oidc_subject"]) if row else SubjectLink(None, None)


async def holder_of(conn: Conn, *, issuer: str, subject: str) -> uuid.UUID | None:
    """The account this provider subject is linked to, if any."""
    holder: uuid.UUID | None = await conn.fetchval(
        "SELECT id FROM staff_users WHERE oidc_issuer = $1 AND oidc_subject = $2", issuer, subject
    )
    return holder


async def link_subject(conn: Conn, user_id: uuid.UUID, *, issuer: str, subject: str) -> None:
    await conn.execute(
        "UPDATE staff_users SET oidc_issuer = $2, oidc_subject = $3 WHERE id = $1",
        user_id,
        issuer,
        subject,
    )


async def unlink_subject(conn: Conn, *, tenant: str, user_id: uuid.UUID) -> bool:
    """Forget the account's provider subject (the person's provider account was recreated); the next
    single sign-on links the new one. False when the account is not in this tenant or has no link."""
    done = await conn.fetchval(
        """UPDATE staff_users SET oidc_issuer = NULL, oidc_subject = NULL
           WHERE tenant = $1 AND id = $2 AND oidc_subject IS NOT NULL RETURNING id""",
        tenant,
        user_id,
    )
    return done is not None


async def linked_users(conn: Conn, *, tenant: str) -> set[uuid.UUID]:
    rows = await conn.fetch(
        "SELECT id FROM staff_users WHERE tenant = $1 AND oidc_subject IS NOT NULL", tenant
    )
    return {r["id"] for r in rows}
