"""Staff accounts and portal sessions."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from callrec.db import Conn


@dataclass(frozen=True)
class StaffUser:
    id: uuid.UUID
    tenant: str
    email: str
    role: str
    password_hash: str
    totp_sealed: bytes
    mfa_enrolled_at: datetime | None
    recovery_hashes: list[str]
    failed_logins: int
    locked_until: datetime | None
    created_at: datetime
    disabled_at: datetime | None


_FIELDS = tuple(StaffUser.__dataclass_fields__)
_COLUMNS = ", ".join(_FIELDS)


def _user(row: asyncpg.Record) -> StaffUser:
    values = dict(row)
    values["totp_sealed"] = bytes(values["totp_sealed"])
    values["recovery_hashes"] = list(values["recovery_hashes"])
    return StaffUser(**values)


async def create(
    conn: Conn,
    *,
    user_id: uuid.UUID,
    tenant: str,
    email: str,
    role: str,
    password_hash: str,
    totp_sealed: bytes,
) -> StaffUser | None:
    """None when the e-mail address has an account already."""
    row = await conn.fetchrow(
        f"""INSERT INTO staff_users (id, tenant, email, role, password_hash, totp_sealed)
            VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (email) DO NOTHING RETURNING {_COLUMNS}""",
        user_id,
        tenant,
        email,
        role,
        password_hash,
        totp_sealed,
    )
    return _user(row) if row else None


async def by_email(conn: Conn, email: str) -> StaffUser | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM staff_users WHERE email = $1", email)
    return _user(row) if row else None


async def by_id(conn: Conn, user_id: uuid.UUID) -> StaffUser | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM staff_users WHERE id = $1", user_id)
    return _user(row) if row else None


async def record_failure(
    conn: Conn, user_id: uuid.UUID, *, failed: int, locked_until: datetime | None
) -> None:
    await conn.execute(
        "UPDATE staff_users SET failed_logins = $2, locked_until = $3 WHERE id = $1",
        user_id,
        failed,
        locked_until,
    )


async def record_success(conn: Conn, user_id: uuid.UUID, *, password_hash: str | None = None) -> None:
    await conn.execute(
        """UPDATE staff_users SET failed_logins = 0, locked_until = NULL,
                  password_hash = coalesce($2, password_hash) WHERE id = $1""",
        user_id,
        password_hash,
    )


async def enrol_mfa(conn: Conn, user_id: uuid.UUID, *, recovery_hashes: list[str]) -> None:
    await conn.execute(
        "UPDATE staff_users SET mfa_enrolled_at = now(), recovery_hashes = $2 WHERE id = $1",
        user_id,
        recovery_hashes,
    )


async def set_recovery_hashes(conn: Conn, user_id: uuid.UUID, hashes: list[str]) -> None:
    await conn.execute("UPDATE staff_users SET recovery_hashes = $2 WHERE id = $1", user_id, hashes)


async def grant_access(conn: Conn, *, session_hash: bytes, recording_id: uuid.UUID, reason: str) -> None:
    """Record the reason a staff member gave to open a recording in this session."""
    await conn.execute(
        """INSERT INTO portal_access_grants (session_hash, recording_id, reason) VALUES ($1, $2, $3)
           ON CONFLICT (session_hash, recording_id)
           DO UPDATE SET reason = EXCLUDED.reason, granted_at = now()""",
        session_hash,
        recording_id,
        reason,
    )


async def access_reason(conn: Conn, *, session_hash: bytes, recording_id: uuid.UUID) -> str | None:
    reason: str | None = await conn.fetchval(
        "SELECT reason FROM portal_access_grants WHERE session_hash = $1 AND recording_id = $2",
        session_hash,
        recording_id,
    )
    return reason


async def list_for(conn: Conn, *, tenant: str) -> list[StaffUser]:
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM staff_users WHERE tenant = $1 ORDER BY email", tenant)
    return [_user(r) for r in rows]


async def set_disabled(conn: Conn, *, tenant: str, user_id: uuid.UUID, disabled: bool) -> StaffUser | None:
    """Disable (ending every session at once) or enable an account; None if not in this tenant
    or already so."""
    row = await conn.fetchrow(
        f"""UPDATE staff_users SET disabled_at = CASE WHEN $3 THEN now() END
            WHERE tenant = $1 AND id = $2 AND (disabled_at IS NOT NULL) <> $3
            RETURNING {_COLUMNS}""",
        tenant,
        user_id,
        disabled,
    )
    if row is not None and disabled:
        await end_sessions(conn, user_id)
    return _user(row) if row else None


async def unlock(conn: Conn, *, tenant: str, user_id: uuid.UUID) -> StaffUser | None:
    row = await conn.fetchrow(
        f"""UPDATE staff_users SET failed_logins = 0, locked_until = NULL
            WHERE tenant = $1 AND id = $2 RETURNING {_COLUMNS}""",
        tenant,
        user_id,
    )
    return _user(row) if row else None


async def reset_mfa(conn: Conn, *, tenant: str, user_id: uuid.UUID, totp_sealed: bytes) -> StaffUser | None:
    """A new TOTP secret to enrol at the next login; old recovery codes and sessions end."""
    row = await conn.fetchrow(
        f"""UPDATE staff_users SET totp_sealed = $3, mfa_enrolled_at = NULL, recovery_hashes = '{{}}'
            WHERE tenant = $1 AND id = $2 RETURNING {_COLUMNS}""",
        tenant,
        user_id,
        totp_sealed,
    )
    if row is not None:
        await end_sessions(conn, user_id)
    return _user(row) if row else None


async def lock_active_admins(conn: Conn, *, tenant: str) -> int:
    """How many enabled admins the tenant has, locking their rows until the transaction ends (so
    two admins disabling each other at once cannot leave the tenant with none)."""
    rows = await conn.fetch(
        """SELECT id FROM staff_users WHERE tenant = $1 AND role = 'admin' AND disabled_at IS NULL
           FOR UPDATE""",
        tenant,
    )
    return len(rows)


async def end_sessions(conn: Conn, user_id: uuid.UUID) -> None:
    """Log the account out everywhere: its portal sessions (and their access grants) end."""
    await conn.execute("DELETE FROM staff_sessions WHERE user_id = $1", user_id)
