"""The command line, run in-process against a real database, and `serve` as a real process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from callrec.cli import main


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str) -> Path:
    for name in list(os.environ):
        if name.startswith("CALLREC_") and not name.startswith("CALLREC_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CALLREC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CALLREC_DATABASE__URL", database_url)
    monkeypatch.setenv("CALLREC_TENANTS__ACME__RETENTION", "90d")
    return tmp_path


def query(url: str, sql: str, *args: Any) -> Any:
    async def run() -> Any:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


def test_migrate_twice_is_a_no_op(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate"]) == 0
    assert "up to date" in capsys.readouterr().out  # the template was migrated already


def test_fresh_database_migrates(
    pg_root_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from urllib.parse import urlsplit, urlunsplit

    name = f"fresh_{os.getpid()}_{int(time.time() * 1000) % 100000}"
    query(pg_root_url, f'CREATE DATABASE "{name}"')
    try:
        url = urlunsplit(urlsplit(pg_root_url)._replace(path="/" + name))
        monkeypatch.setenv("CALLREC_DATABASE__URL", url)
        monkeypatch.setenv("CALLREC_DATA_DIR", str(tmp_path))
        assert main(["migrate"]) == 0
        assert "0001_init.sql" in capsys.readouterr().out
        assert main(["migrate"]) == 0
        assert "up to date" in capsys.readouterr().out
        versions = [
            r["version"] for r in query(url, "SELECT version FROM schema_migrations ORDER BY version")
        ]
        from callrec.db.migrate import available_migrations

        assert versions == [m.version for m in available_migrations()]
    finally:
        query(pg_root_url, f'DROP DATABASE "{name}" WITH (FORCE)')


def test_token_create_prints_once_and_stores_only_a_hash(
    env: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["token", "create", "dsr-tool", "--scope", "recordings:read", "--tenant", "acme"]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("crt_") and len(token) > 40
    rows = query(database_url, "SELECT tenant, name, scopes, token_hash FROM api_tokens")
    assert [(r["tenant"], r["name"], r["scopes"]) for r in rows] == [
        ("acme", "dsr-tool", ["recordings:read"])
    ]
    assert token.encode() not in bytes(rows[0]["token_hash"])
    dump = query(database_url, "SELECT string_agg(t::text, ' ') AS s FROM api_tokens t")[0]["s"]
    assert token not in dump


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["token", "create", "x", "--scope", "everything"], "unknown scope"),
        (["token", "create", "x", "--scope", "recordings:read", "--tenant", "nobody"], "unknown tenant"),
    ],
)
def test_cli_errors_exit_non_zero_with_a_message(
    env: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(argv) != 0
    assert message in capsys.readouterr().err


def test_bad_config_exits_2_naming_the_key(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CALLREC_STORAGE__BACKEND", "tape")
    assert main(["migrate"]) == 2
    assert "storage.backend" in capsys.readouterr().err


def test_audit_verify_reports_tampering(
    env: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["token", "create", "a", "--scope", "recordings:read", "--tenant", "acme"]) == 0
    assert main(["token", "create", "b", "--scope", "recordings:read", "--tenant", "acme"]) == 0
    capsys.readouterr()
    assert main(["audit", "verify"]) == 0
    assert "intact: 2 entries" in capsys.readouterr().out
    query(database_url, "ALTER TABLE audit_log DISABLE TRIGGER USER")
    query(database_url, "UPDATE audit_log SET details = '{}' WHERE seq = 1")
    assert main(["audit", "verify"]) == 1
    assert "entry 1: content does not match" in capsys.readouterr().err


def test_jobs_list_and_retry(env: Path, database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    query(
        database_url,
        """INSERT INTO jobs
               (tenant, kind, dedupe_key, payload, max_attempts, state, attempts, last_error)
           VALUES ('acme', 'ingest.twilio', 'RE1', '{}', 3, 'dead', 3, 'audio undecodable: x')""",
    )
    assert main(["jobs", "list"]) == 0
    out = capsys.readouterr().out
    assert "ingest.twilio" in out and "audio undecodable" in out
    job_id = query(database_url, "SELECT id FROM jobs")[0]["id"]
    assert main(["jobs", "retry", str(job_id)]) == 0
    assert query(database_url, "SELECT state FROM jobs")[0]["state"] == "queued"
    assert main(["jobs", "retry", str(job_id)]) == 1  # no longer dead
    assert "not dead" in capsys.readouterr().err
    assert (
        query(database_url, "SELECT count(*) AS n FROM audit_log WHERE action = 'ingest:retried'")[0]["n"]
        == 1
    )


def test_keys_rotate_keeps_old_recordings_readable(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from callrec.config import load_config
    from callrec.crypto import envelope
    from callrec.crypto.keys import open_key_provider

    cfg = load_config(None)
    provider = open_key_provider(cfg.keys, keyring_path=cfg.keyring_path)
    provider.ensure_tenant("acme")
    handle = envelope.new_recording_key()
    wrapped = envelope.wrap_key(handle, provider.kek("acme"), tenant="acme", recording_id="r1")
    assert main(["keys", "rotate", "--tenant", "acme"]) == 0
    assert "acme" in capsys.readouterr().out
    fresh = open_key_provider(cfg.keys, keyring_path=cfg.keyring_path)
    envelope.unwrap_key(wrapped, fresh.kek("acme"), tenant="acme", recording_id="r1")
    assert oct(cfg.keyring_path.stat().st_mode & 0o777) == "0o600"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 (loopback only)
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_serve_runs_on_embedded_defaults(tmp_path: Path) -> None:
    """`callrec serve` with no config: embedded PostgreSQL, filesystem store, local keyring."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLREC_")}
    env["CALLREC_SERVER__PORT"] = str(port)  # the only override: a free port for the test
    proc = subprocess.Popen(
        [sys.executable, "-m", "callrec", "serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        status = 0
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"serve exited: {proc.stdout.read().decode() if proc.stdout else ''}")
            try:
                status, body = _get(f"http://127.0.0.1:{port}/readyz")
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        assert status == 200, body
        assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        data = tmp_path / "callrec-data"
        assert (data / "pg").is_dir()
        assert oct((data / "keyring.json").stat().st_mode & 0o777) == "0o600"
        # Run as root, pgserver drops to its own user and needs to traverse the data dir,
        # so it may be 0755; it must never be writable by others.
        assert data.stat().st_mode & 0o022 == 0
        code, body = _get(f"http://127.0.0.1:{port}/api/v1/recordings")
        assert code == 401 and b'"code": "unauthorized"' in body
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0


def test_announcements_add_verifies_and_registers(
    env: Path, database_url: str, audio_fixtures: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompt = audio_fixtures / "announcement-nb-v1.wav"
    assert (
        main(
            [
                "announcements",
                "add",
                "notice-nb",
                str(prompt),
                "--version",
                "1",
                "--language",
                "nb-NO",
                "--tenant",
                "acme",
            ]
        )
        == 0
    )
    assert "registered" in capsys.readouterr().out
    rows = query(database_url, "SELECT id, version, language, length(audio) AS n FROM announcements")
    assert [(r["id"], r["version"], r["language"], r["n"]) for r in rows] == [
        ("notice-nb", "1", "nb-NO", prompt.stat().st_size)
    ]
    assert (
        main(
            [
                "announcements",
                "add",
                "notice-nb",
                str(prompt),
                "--version",
                "1",
                "--language",
                "nb-NO",
                "--tenant",
                "acme",
            ]
        )
        == 1
    )  # versions are immutable
    assert "exists already" in capsys.readouterr().err
    assert main(["announcements", "list", "--tenant", "acme"]) == 0
    assert "notice-nb\t1\tnb-NO" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["notice", "/nonexistent.wav", "--version", "1", "--language", "en-GB"], "no such file"),
        (["notice", "FIXTURE_TEXT", "--version", "1", "--language", "en-GB"], "not audio"),
        (["bad id!", "FIXTURE_WAV", "--version", "1", "--language", "en-GB"], "announcement"),
        (["notice", "FIXTURE_WAV", "--version", "1", "--language", "english please"], "language"),
    ],
)
def test_announcements_add_refuses_bad_input(
    env: Path,
    tmp_path: Path,
    audio_fixtures: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    text = tmp_path / "not-audio.wav"
    text.write_text("this is not audio at all, just text pretending to be a prompt\n" * 50)
    argv = [
        a.replace("FIXTURE_WAV", str(audio_fixtures / "announcement-en-gb-v1.wav")).replace(
            "FIXTURE_TEXT", str(text)
        )
        for a in argv
    ]
    assert main(["announcements", "add", *argv, "--tenant", "acme"]) != 0
    assert message in capsys.readouterr().err


def test_storage_check_reports_and_applies(
    env: Path, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import boto3

    bucket = f"callrec-check-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    for name, value in {
        "BACKEND": "s3",
        "BUCKET": bucket,
        "ENDPOINT_URL": moto_endpoint,
        "REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(f"CALLREC_STORAGE__{name}", value)
    assert main(["storage", "check"]) == 1
    out = capsys.readouterr().out
    assert "missing" in out and "lifecycle-delete-markers" in out and "[fixable: --apply]" in out
    assert main(["storage", "check", "--apply"]) == 0
    assert all(line.startswith("ok") for line in capsys.readouterr().out.splitlines())
    assert main(["storage", "check"]) == 0
    rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert any(r.get("Expiration", {}).get("ExpiredObjectDeleteMarker") for r in rules)


def test_storage_check_is_for_s3_only(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["storage", "check"]) == 2
    assert "s3 backend" in capsys.readouterr().err


def owner(url: str, attack: Any, **kwargs: Any) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(url)
        try:
            await attack(conn, **kwargs)
        finally:
            await conn.close()

    asyncio.run(run())


def tokens(n: int) -> None:
    for i in range(n):
        assert main(["token", "create", f"t{i}", "--scope", "recordings:read", "--tenant", "acme"]) == 0


def test_audit_verify_detects_the_rewrite_of_issue_9(
    env: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The attack of issue 9 (defect 3): as the database's owner, change an entry's actor and
    recompute every later hash and the head with callrec's own functions. Main said "intact"."""
    from audit_support import rewrite_as_owner

    tokens(5)
    assert main(["audit", "verify"]) == 0
    owner(database_url, rewrite_as_owner, seq=2, actor="someone-else")
    capsys.readouterr()
    assert main(["audit", "verify"]) == 1
    captured = capsys.readouterr()
    assert "audit log BROKEN" in captured.err and "intact" not in captured.out
    assert "entry 2: MAC does not match" in captured.err


def test_audit_anchor_and_verify_catch_a_truncation(
    env: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from audit_support import truncate_as_owner

    tokens(4)
    assert main(["audit", "anchor"]) == 0
    assert "audit chain anchored at entry 4" in capsys.readouterr().out
    assert (env / "data" / "audit-anchors.jsonl").read_text().count("\n") == 1
    assert main(["audit", "verify"]) == 0
    out = capsys.readouterr().out
    assert "intact: 4 entries" in out and "anchors: 1 checked" in out and "records entry 4" in out
    owner(database_url, truncate_as_owner, keep=2)
    assert main(["audit", "verify"]) == 1
    err = capsys.readouterr().err
    assert "the log ends at entry 2, but the anchor of" in err and "entries were removed" in err


def test_audit_rotate_key_keeps_older_entries_verifiable(
    env: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens(2)
    assert main(["audit", "rotate-key"]) == 0
    assert "new audit key 2" in capsys.readouterr().out
    tokens(1)
    assert main(["audit", "verify"]) == 0
    assert "audit keys 1, 2" in capsys.readouterr().out
    rows = query(database_url, "SELECT key_id, action, details FROM audit_log ORDER BY seq")
    assert [r["key_id"] for r in rows] == [1, 1, 2, 2]  # the rotation's own entry is MACed with key 2
    assert rows[2]["action"] == "keys:rotated" and '"audit_key_id": 2' in rows[2]["details"]


def test_audit_verify_exit_codes_for_an_unauthenticated_chain_and_unreadable_anchors(
    env: Path, database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from audit_support import legacy_append

    owner(database_url, legacy_append, n=3)  # a log written before this version, never opened by it
    assert main(["audit", "verify"]) == 4
    assert "NOT AUTHENTICATED" in capsys.readouterr().err
    assert query(database_url, "SELECT count(*) AS n FROM audit_keys")[0]["n"] == 0  # verify made none
    tokens(1)  # the first opening by this version checkpoints the chain
    assert main(["audit", "verify"]) == 0
    assert "checkpoint at entry 3" in capsys.readouterr().out
    (env / "unreadable").mkdir()
    monkeypatch.setenv("CALLREC_AUDIT__ANCHOR_PATH", str(env / "unreadable"))
    assert main(["audit", "verify"]) == 3
    assert "NOT VERIFIED against its anchors" in capsys.readouterr().err
