"""Staff account administration, shared by ``callrec user add`` and the portal's admin page.

Every change is an audit entry carrying the account's id and role, never its e-mail address.
Accounts are created with MFA pending: the TOTP secret is sealed under the tenant's KEK and
enrolled at the first login (or by a script from the printed ``otpauth://`` URI).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass
from typing import Any

from callrec.crypto import envelope
from callrec.db import Conn, audit, sso, staff
from callrec.portal import accounts

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


class InvalidAccount(ValueError):
    pass


@dataclass(frozen=True)
class NewAccount:
    user: staff.StaffUser
    password: str | None  # the generated first password, shown once; None when the caller chose it
    enrol_uri: str  # otpauth:// URI while MFA is pending


async def _audit(
    conn: Conn,
    action: audit.AuditAction,
    *,
    tenant: str,
    actor: str,
    user_id: uuid.UUID,
    via: str,
    role: str | None = None,
) -> None:
    """An account change's audit entry: the account's id (and role), never its e-mail address."""
    details: dict[str, str] = {"user_id": str(user_id)}
    if role is not None:
        details["role"] = role
    await audit.record(conn, tenant=tenant, actor=actor, action=action, details={**details, "via": via})


def clean_email(raw: str) -> str:
    email = raw.strip().lower()
    if not _EMAIL.fullmatch(email) or len(email) > 254:
        raise InvalidAccount(f"{raw!r} is not an e-mail address")
    return email


async def _sealed_secret(kek: Any, tenant: str, user_id: uuid.UUID) -> tuple[str, bytes]:
    secret = accounts.new_totp_secret()
    # A KMS-backed KEK makes a network call: keep it off the event loop.
    sealed = await asyncio.to_thread(
        envelope.seal, kek, secret.encode(), context=accounts.totp_context(tenant, user_id)
    )
    return secret, sealed


async def add(
    conn: Conn,
    *,
    kek: Any,
    tenant: str,
    email: str,
    role: str,
    password: str | None,
    actor: str,
    via: str,
) -> NewAccount | None:
    """A new account with MFA pending; None when the e-mail address has an account already.

    Raises InvalidAccount (or accounts.WeakPassword) for bad input, before anything is written."""
    email = clean_email(email)
    if role not in accounts.ROLES:
        raise InvalidAccount(f"unknown role {role!r}; roles: {', '.join(accounts.ROLES)}")
    generated = password is None
    password = accounts.new_password() if password is None else password
    # argon2id takes tens of milliseconds of CPU on purpose: not on the event loop.
    password_hash = await asyncio.to_thread(accounts.hash_password, password)
    user_id = uuid.uuid4()
    secret, sealed = await _sealed_secret(kek, tenant, user_id)
    user = await staff.create(
        conn,
        user_id=user_id,
        tenant=tenant,
        email=email,
        role=role,
        password_hash=password_hash,
        totp_sealed=sealed,
    )
    if user is None:
        return None
    await _audit(
        conn, audit.AuditAction.USER_ADDED, tenant=tenant, actor=actor, user_id=user_id, via=via, role=role
    )
    return NewAccount(
        user=user,
        password=password if generated else None,
        enrol_uri=accounts.provisioning_uri(secret, email=email, tenant=tenant),
    )


async def set_disabled(
    conn: Conn, *, tenant: str, user_id: uuid.UUID, disabled: bool, actor: str, via: str
) -> staff.StaffUser | None:
    """Disable (sessions end at once) or enable; None when there is nothing to change.

    The last enabled admin of a tenant cannot be disabled: nobody could undo it from the portal."""
    if disabled:
        target = await staff.by_id(conn, user_id)
        if (
            target is not None
            and target.tenant == tenant
            and target.role == "admin"
            and target.disabled_at is None
            and await staff.lock_active_admins(conn, tenant=tenant) <= 1
        ):
            raise InvalidAccount("This is the tenant's last admin account; add another admin first.")
    user = await staff.set_disabled(conn, tenant=tenant, user_id=user_id, disabled=disabled)
    if user is not None:
        action = audit.AuditAction.USER_DISABLED if disabled else audit.AuditAction.USER_ENABLED
        await _audit(conn, action, tenant=tenant, actor=actor, user_id=user_id, via=via, role=user.role)
    return user


async def unlock(
    conn: Conn, *, tenant: str, user_id: uuid.UUID, actor: str, via: str
) -> staff.StaffUser | None:
    user = await staff.unlock(conn, tenant=tenant, user_id=user_id)
    if user is not None:
        await _audit(
            conn, audit.AuditAction.USER_UNLOCKED, tenant=tenant, actor=actor, user_id=user_id, via=via
        )
    return user


async def reset_mfa(
    conn: Conn, *, kek: Any, tenant: str, user_id: uuid.UUID, actor: str, via: str
) -> staff.StaffUser | None:
    """A lost phone: a new TOTP secret to enrol at the next login; recovery codes and sessions end."""
    target = await staff.by_id(conn, user_id)
    if target is None or target.tenant != tenant:
        return None
    _, sealed = await _sealed_secret(kek, tenant, user_id)
    user = await staff.reset_mfa(conn, tenant=tenant, user_id=user_id, totp_sealed=sealed)
    if user is None:
        return None
    await _audit(conn, audit.AuditAction.USER_MFA_RESET, tenant=tenant, actor=actor, user_id=user_id, via=via)
    return user


async def unlink_sso(conn: Conn, *, tenant: str, user_id: uuid.UUID, actor: str, via: str) -> bool:
    """The person's account at the identity provider was recreated: let the next sign-in link anew."""
    if not await sso.unlink_subject(conn, tenant=tenant, user_id=user_id):
        return False
    await staff.end_sessions(conn, user_id)
    await _audit(
        conn, audit.AuditAction.USER_SSO_UNLINKED, tenant=tenant, actor=actor, user_id=user_id, via=via
    )
    return True
