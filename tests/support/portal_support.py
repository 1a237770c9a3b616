"""What several portal test modules share: staff accounts made as `callrec user add` makes them, and
the real browser (Debian's Chromium). On sys.path through pytest's ``pythonpath`` setting, since
with ``--import-mode=importlib`` test modules cannot import conftest or each other."""

from __future__ import annotations

import os
import uuid
from typing import Any

import pyotp
import pytest

from callrec.appkeys import db_key, keys_key
from callrec.crypto import envelope
from callrec.db import staff
from callrec.portal import accounts

PASSWORD = "a long portal password"

CHROMIUM = os.environ.get("CALLREC_CHROMIUM", "/usr/bin/chromium")
# What this machine needs for a headless Chromium that never reaches past loopback.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class Staff:
    def __init__(self, email: str, role: str, tenant: str, secret: str) -> None:
        self.email, self.role, self.tenant, self.secret = email, role, tenant, secret

    def code(self) -> str:
        return pyotp.TOTP(self.secret).now()


async def make_staff(app: Any, role: str, *, tenant: str = "acme", enrolled: bool = True) -> Staff:
    """An account with PASSWORD and a TOTP secret sealed under the tenant's key; MFA enrolled
    unless ``enrolled`` is False (then the portal shows the enrolment page at the first login)."""
    user_id = uuid.uuid4()
    secret = accounts.new_totp_secret()
    kek = await app[keys_key].kek(tenant)
    sealed = envelope.seal(kek, secret.encode(), context=accounts.totp_context(tenant, user_id))
    email = f"{role}-{user_id.hex[:6]}@{tenant}.example"
    async with app[db_key].acquire() as conn:
        await staff.create(
            conn,
            user_id=user_id,
            tenant=tenant,
            email=email,
            role=role,
            password_hash=accounts.hash_password(PASSWORD),
            totp_sealed=sealed,
        )
        if enrolled:
            await staff.enrol_mfa(conn, user_id, recovery_hashes=[])
    return Staff(email, role, tenant, secret)


def need_browser() -> None:
    """Skip without Playwright or Chromium on a developer's machine; fail under CI (``CI`` set),
    so a CI run cannot pass without the browser tests."""
    problem = None
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        problem = "the playwright package is not installed (pip install -e '.[test]')"
    if problem is None and not os.access(CHROMIUM, os.X_OK):
        problem = f"no Chromium at {CHROMIUM} (scripts/install-browser installs Debian's)"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests cannot run: {problem}")
        pytest.skip(problem)
