"""How a PBX upload's body is read: the signature is checked over the raw bytes before any multipart
parsing, a signed body that does not parse is a 400 (never a 5xx, which a PBX retries for ever), and
the raw body waits in a private spool file that is gone once the request ends."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from callrec import spool
from callrec.appkeys import config_key, db_key

SECRET = "pbx-shared-secret-for-tests"  # tenant acme's webhook_secret (tests/conftest.py)
BOUNDARY = "callrec-body-test"
META = {"call_id": "body-call-1", "recording_id": "body-rec-1", "consent": "granted", "basis": "consent"}


def sign(body: bytes, *, secret: str = SECRET) -> str:
    t = int(time.time())
    return f"t={t},v1={hmac.new(secret.encode(), f'{t}.'.encode() + body, hashlib.sha256).hexdigest()}"


def multipart(parts: list[tuple[str, bytes]], *, boundary: str = BOUNDARY, close: bool = True) -> bytes:
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + data + b"\r\n"
        for name, data in parts
    )
    return body + (f"--{boundary}--\r\n".encode() if close else b"")


def valid_body(audio: bytes, *, boundary: str = BOUNDARY) -> bytes:
    return multipart([("metadata", json.dumps(META).encode()), ("audio", audio)], boundary=boundary)


async def post(client: Any, body: Any, *, boundary: str = BOUNDARY, signature: str | None = None) -> Any:
    return await client.post(
        "/webhooks/upload/acme",
        data=body,
        headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Callrec-Signature": signature if signature is not None else sign(body),
        },
    )


def spool_files(client: Any) -> list[Path]:
    return spool.files(client.app[config_key].data_dir)


async def assert_nothing_kept(client: Any) -> None:
    async with client.app[db_key].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM jobs") == 0
    assert spool_files(client) == []
    storage = client.app[config_key].storage_path
    assert not [p for p in storage.rglob("*") if p.is_file()]


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    "signature",
    [
        "t={now},v1=" + "0" * 64,  # any signature: no credentials at all
        "wrong-secret",
    ],
)
async def test_a_malformed_body_with_a_wrong_signature_is_403_before_any_parsing(
    client: Any, caplog: pytest.LogCaptureFixture, signature: str
) -> None:
    body = b"x"
    sig = sign(body, secret="not-the-secret") if signature == "wrong-secret" else signature
    resp = await post(client, body, boundary="XXB", signature=sig.format(now=int(time.time())))
    assert resp.status == 403, await resp.text()
    assert (await resp.json())["error"]["code"] == "invalid_signature"
    await assert_nothing_kept(client)
    assert tracebacks(caplog) == []


@pytest.mark.parametrize(
    "body",
    [
        b"x",
        b"",
        b"--XXB\r\nbroken",
        b"--XXB\r\n\r\n",
        b"--XXBX\r\n",
        b"--XXB--",  # a well-formed body with no parts at all
        multipart([("metadata", json.dumps(META).encode()), ("audio", b"RIFF")], boundary="XXB", close=False),
        multipart([("metadata", json.dumps(META).encode()), ("audio", b"RIFF")], boundary="XXB")[:-9],
    ],
    ids=["x", "empty", "cut-in-headers", "no-headers", "wrong-boundary", "no-parts", "unclosed", "truncated"],
)
async def test_a_signed_body_that_does_not_parse_is_400(
    client: Any, caplog: pytest.LogCaptureFixture, body: bytes
) -> None:
    resp = await post(client, body, boundary="XXB")
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["error"]["code"] == "invalid_multipart"
    await assert_nothing_kept(client)
    assert tracebacks(caplog) == []


@pytest.mark.parametrize(
    "boundary",
    ["a" * 71, "b" * 300, "c" * 8000, "ends-with-space ", "semi;colon", 'quo"te', "tab\tbed", '""'],
)
@pytest.mark.parametrize("signed", [True, False])
async def test_a_boundary_rfc_2046_does_not_allow_is_400_whatever_the_signature(
    client: Any, caplog: pytest.LogCaptureFixture, boundary: str, signed: bool
) -> None:
    """RFC 2046 §5.1.1: 1 to 70 characters from a small set, not ending in a space. The header is
    checked before the body is read, so the answer does not depend on the signature."""
    body = valid_body(b"RIFF", boundary=boundary.strip('"'))
    sig = sign(body) if signed else f"t={int(time.time())},v1=" + "0" * 64
    header = f'"{boundary}"' if any(c in boundary for c in " \t;") else boundary
    resp = await post(client, body, boundary=header, signature=sig)
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["error"]["code"] == "invalid_multipart"
    await assert_nothing_kept(client)
    assert tracebacks(caplog) == []


async def test_a_boundary_of_70_characters_is_accepted(client: Any, audio_fixtures: Path) -> None:
    boundary = "0123456789'()+_,-./:=?" + "z" * 48
    assert len(boundary) == 70
    audio = (audio_fixtures / "call-with-announcement.wav").read_bytes()
    resp = await post(client, valid_body(audio, boundary=boundary), boundary=f'"{boundary}"')
    assert resp.status == 202, await resp.text()
    assert spool_files(client) == []


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ([("metadata", b"{" + b" " * (65 * 1024) + b"}"), ("audio", b"RIFF")], "64 KiB"),
        ([("metadata", json.dumps(META).encode()), ("audio", b"RIFF"), ("audio", b"RIFF")], "twice"),
        ([("metadata", b"{}"), ("audio", b"RIFF"), *[(f"x{i}", b"") for i in range(40)]], "parts"),
    ],
    ids=["metadata-over-cap", "duplicate-part", "too-many-parts"],
)
async def test_signed_bodies_past_the_part_limits_are_400(
    client: Any, parts: list[tuple[str, bytes]], message: str
) -> None:
    resp = await post(client, multipart(parts))
    assert resp.status == 400, await resp.text()
    error = (await resp.json())["error"]
    assert error["code"] == "invalid_multipart" and message in error["message"]
    await assert_nothing_kept(client)


async def test_a_content_type_that_is_not_multipart_is_still_unsupported_media_type(client: Any) -> None:
    body = b'{"call_id": "x"}'
    resp = await client.post(
        "/webhooks/upload/acme",
        data=body,
        headers={"Content-Type": "application/json", "Callrec-Signature": sign(body)},
    )
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "unsupported_media_type"


async def test_the_raw_body_waits_in_a_private_spool_file_that_goes_with_the_request(
    client: Any, audio_fixtures: Path
) -> None:
    """Plaintext audio on local disk during the request: only in the spool dir, mode 0600, and
    removed on every path (accepted, refused, malformed)."""
    audio = (audio_fixtures / "call-with-announcement.wav").read_bytes()
    body = valid_body(audio)
    half = len(body) // 2
    gate = asyncio.Event()

    async def stream() -> AsyncIterator[bytes]:
        yield body[:half]
        await gate.wait()
        yield body[half:]

    sending = asyncio.create_task(post(client, stream(), signature=sign(body)))
    try:
        seen: list[Path] = []
        for _ in range(400):  # at most 20 s: the first half reaches the server
            seen = spool_files(client)
            if seen and any(p.stat().st_size > 0 for p in seen):
                break
            await asyncio.sleep(0.05)
        assert seen, "the body was not spooled in the spool dir"
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in seen)
        assert stat.S_IMODE(seen[0].parent.stat().st_mode) == 0o700
    finally:
        gate.set()
        resp = await sending
    assert resp.status == 202, await resp.text()
    assert spool_files(client) == []
    for status, refused, sig in [
        (403, body, sign(body, secret="wrong")),
        (400, b"x", None),
    ]:
        resp = await post(client, refused, signature=sig)
        assert resp.status == status
        assert spool_files(client) == []
