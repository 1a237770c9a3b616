"""Staff credentials: argon2id passwords, TOTP (RFC 6238) MFA, recovery codes, lockout.

- Passwords are hashed with argon2id (OWASP Password Storage Cheat Sheet: argon2id first choice)
  with argon2-cffi's defaults, re-hashed on login when the parameters change.
- TOTP secrets are random 160-bit base32 (RFC 4226 §4 recommends 160 bits), sealed under the
  tenant's key-encryption key; codes are checked with one step of drift either way.
- Recovery codes: ten random codes, shown once, stored as argon2id hashes, each usable once.
- Lockout: after ``MAX_FAILURES`` failed attempts the account is locked for ``LOCK_TIME``; the
  answer to the client is the same for unknown and known accounts (OWASP Authentication
  Cheat Sheet, "Authentication and Error Messages").
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

ROLES = ("support", "supervisor", "privacy", "legal", "auditor", "admin")
MAX_FAILURES = 5
LOCK_TIME = timedelta(minutes=15)
MIN_PASSWORD_LENGTH = 12
ISSUER = "callrec"
RECOVERY_CODES = 10

_hasher = PasswordHasher()
# Verifying against this keeps the time of an unknown account's login like a known one's.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class WeakPassword(ValueError):
    pass


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPassword(f"passwords need at least {MIN_PASSWORD_LENGTH} characters")
    return _hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Constant work whether or not the account exists."""
    try:
        return _hasher.verify(stored_hash or _DUMMY_HASH, password) and stored_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    return _hasher.check_needs_rehash(stored_hash)


def new_password() -> str:
    """A generated first password (about 128 bits) for an account made without one."""
    return secrets.token_urlsafe(16)


def totp_context(tenant: str, user_id: object) -> str:
    """Associated data binding a sealed TOTP secret to its tenant and account."""
    return f"callrec:totp:{tenant}:{user_id}"


def new_totp_secret() -> str:
    return pyotp.random_base32(length=32)


def provisioning_uri(secret: str, *, email: str, tenant: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=f"{ISSUER} ({tenant})")


def verify_totp(secret: str, code: str, *, at: datetime | None = None) -> bool:
    code = code.strip().replace(" ", "")
    if not code.isdigit() or len(code) != 6:
        return False
    return pyotp.TOTP(secret).verify(code, for_time=at, valid_window=1)


def new_recovery_codes() -> tuple[list[str], list[str]]:
    """(codes to show once, hashes to store)."""
    codes = ["-".join(secrets.token_hex(3) for _ in range(3)) for _ in range(RECOVERY_CODES)]
    return codes, [_hasher.hash(c) for c in codes]


def use_recovery_code(hashes: list[str], code: str) -> list[str] | None:
    """The remaining hashes when ``code`` matches one (which is then spent), else None."""
    code = code.strip().lower()
    for i, stored in enumerate(hashes):
        try:
            if _hasher.verify(stored, code):
                return hashes[:i] + hashes[i + 1 :]
        except (VerificationError, InvalidHashError):
            continue
    return None


@dataclass(frozen=True)
class Lockout:
    failed: int
    locked_until: datetime | None


def after_failure(failed: int, *, now: datetime) -> Lockout:
    failed += 1
    if failed >= MAX_FAILURES:
        return Lockout(0, now + LOCK_TIME)
    return Lockout(failed, None)


def is_locked(locked_until: datetime | None, *, now: datetime) -> bool:
    return locked_until is not None and locked_until > now
