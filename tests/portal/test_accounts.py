"""Staff credentials (pure rules) and `callrec user add`."""

from __future__ import annotations

import asyncio
import io
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pyotp
import pytest

from callrec.cli import main
from callrec.portal import accounts


def test_passwords_hash_with_argon2id_and_verify() -> None:
    stored = accounts.hash_password("correct horse battery staple")
    assert stored.startswith("$argon2id$")
    assert accounts.verify_password(stored, "correct horse battery staple")
    assert not accounts.verify_password(stored, "correct horse battery stapl")
    assert not accounts.verify_password(None, "anything at all here")  # unknown account
    with pytest.raises(accounts.WeakPassword):
        accounts.hash_password("short")


def test_totp_accepts_one_step_of_drift_only() -> None:
    secret = accounts.new_totp_secret()
    now = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
    totp = pyotp.TOTP(secret)
    assert accounts.verify_totp(secret, totp.at(now), at=now)
    assert accounts.verify_totp(secret, totp.at(now - timedelta(seconds=30)), at=now)
    assert not accounts.verify_totp(secret, totp.at(now - timedelta(seconds=90)), at=now)
    assert not accounts.verify_totp(secret, "12345", at=now)
    assert not accounts.verify_totp(secret, "abcdef", at=now)
    uri = accounts.provisioning_uri(secret, email="ana@example.com", tenant="acme")
    assert uri.startswith("otpauth://totp/") and f"secret={secret}" in uri


def test_recovery_codes_are_single_use() -> None:
    codes, hashes = accounts.new_recovery_codes()
    assert len(codes) == 10 and len(set(codes)) == 10
    remaining = accounts.use_recovery_code(hashes, codes[3])
    assert remaining is not None and len(remaining) == 9
    assert accounts.use_recovery_code(remaining, codes[3]) is None
    assert accounts.use_recovery_code(hashes, "not-a-code") is None


def test_lockout_after_repeated_failures() -> None:
    now = datetime(2026, 11, 23, tzinfo=UTC)
    state = accounts.Lockout(0, None)
    for _ in range(accounts.MAX_FAILURES - 1):
        state = accounts.after_failure(state.failed, now=now)
        assert state.locked_until is None
    state = accounts.after_failure(state.failed, now=now)
    assert state.locked_until == now + accounts.LOCK_TIME
    assert accounts.is_locked(state.locked_until, now=now + timedelta(minutes=1))
    assert not accounts.is_locked(state.locked_until, now=now + accounts.LOCK_TIME + timedelta(seconds=1))


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str) -> str:
    for name in list(os.environ):
        if name.startswith("CALLREC_") and not name.startswith("CALLREC_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CALLREC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CALLREC_DATABASE__URL", database_url)
    monkeypatch.setenv("CALLREC_TENANTS__ACME__RETENTION", "90d")
    return database_url


def fetch(url: str, sql: str) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetch(sql)
        finally:
            await conn.close()

    return asyncio.run(run())


def test_user_add_prints_the_enrolment_uri_and_stores_no_secret_in_clear(
    env: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough password\n"))
    assert (
        main(["user", "add", "Ana@Example.com", "--role", "privacy", "--tenant", "acme", "--password-stdin"])
        == 0
    )
    out = capsys.readouterr().out
    assert "password:" not in out
    uri = next(line for line in out.splitlines() if line.startswith("MFA pending: ")).split(": ", 1)[1]
    secret = uri.split("secret=")[1].split("&")[0]
    rows = fetch(
        env, "SELECT email, role, tenant, password_hash, totp_sealed, mfa_enrolled_at FROM staff_users"
    )
    assert [(r["email"], r["role"], r["tenant"]) for r in rows] == [("ana@example.com", "privacy", "acme")]
    assert rows[0]["password_hash"].startswith("$argon2id$") and rows[0]["mfa_enrolled_at"] is None
    assert secret.encode() not in bytes(rows[0]["totp_sealed"])
    details = " ".join(r["details"] for r in fetch(env, "SELECT details::text FROM audit_log"))
    assert "ana@example.com" not in details.lower()

    assert main(["user", "add", "ana@example.com", "--role", "support", "--tenant", "acme"]) == 1
    assert "has an account already" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["not-an-email", "--role", "support"], "not an e-mail address"),
        (["bo@example.com", "--role", "superuser"], "unknown role"),
        (["bo@example.com", "--role", "support", "--tenant", "nobody"], "unknown tenant"),
    ],
)
def test_user_add_refuses_bad_input(
    env: str, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["user", "add", *argv]) != 0
    assert message in capsys.readouterr().err
    assert fetch(env, "SELECT count(*) AS n FROM staff_users")[0]["n"] == 0


def test_user_add_generates_a_password_when_none_is_given(
    env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["user", "add", "cy@example.com", "--role", "auditor", "--tenant", "acme"]) == 0
    out = capsys.readouterr().out
    password = next(line for line in out.splitlines() if line.startswith("password: ")).split(": ", 1)[1]
    stored = fetch(env, "SELECT password_hash FROM staff_users")[0]["password_hash"]
    assert accounts.verify_password(stored, password)
