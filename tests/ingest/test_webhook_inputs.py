"""Inputs the webhook fuzzing (test_webhook_fuzz.py) found answered with a 500 or logged with a
traceback, one regression test each; and bodies that arrive in pieces."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from aiohttp import web
from twilio_support import PUBLIC_BASE, TWILIO_SID, TWILIO_TOKEN

from callrec.app import create_app
from callrec.appkeys import db_key
from callrec.providers import plivo, twilio

WEBHOOK_SECRET = "pbx-shared-secret-for-tests"
VONAGE_SECRET = "vonage-signature-secret-for-inputs-0123"
VONAGE_APP = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
PLIVO_ID = "MAINPUTSINPUTSINPUTS"
PLIVO_TOKEN = "plivo-auth-token-for-inputs"
PHONE = "+12125550123"


@pytest.fixture
async def app_client(aiohttp_client: Any, app_config: Any) -> Any:
    cfg = app_config(
        tenants={
            "acme": {
                "twilio_account_sid": TWILIO_SID,
                "twilio_auth_token": TWILIO_TOKEN,
                "webhook_secret": WEBHOOK_SECRET,
                "vonage_signature_secret": VONAGE_SECRET,
                "vonage_application_id": VONAGE_APP,
                "plivo_auth_id": PLIVO_ID,
                "plivo_auth_token": PLIVO_TOKEN,
            }
        }
    )
    return await aiohttp_client(create_app(cfg, run_workers=False))


def callrec_signed(body: bytes) -> dict[str, str]:
    t = int(time.time())
    mac = hmac.new(WEBHOOK_SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return {"Callrec-Signature": f"t={t},v1={mac}"}


def vonage_signed(body: bytes) -> dict[str, str]:
    claims = {
        "iat": int(time.time()),
        "jti": uuid.uuid4().hex,
        "payload_hash": hashlib.sha256(body).hexdigest(),
        "application_id": VONAGE_APP,
    }
    return {
        "Authorization": "Bearer " + jwt.encode(claims, VONAGE_SECRET, algorithm="HS256"),
        "Content-Type": "application/json",
    }


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def raw_request(port: int, request: bytes, *, half_close: bool = False) -> bytes:
    """Send bytes as they are (no client library would send these) and read the answer."""

    def exchange() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            return answer

    return await asyncio.to_thread(exchange)


# --- found by the fuzzing ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/webhooks/events/acme", "/webhooks/upload/acme"])
async def test_json_nested_thousands_deep_is_400_not_a_recursion_error(
    app_client: Any, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    deep = b"[" * 5000 + b"]" * 5000
    if path.endswith("events/acme"):
        body, ctype = deep, "application/json"
    else:
        ctype = "multipart/form-data; boundary=deep"
        body = (
            b'--deep\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n' + deep + b"\r\n"
            b'--deep\r\nContent-Disposition: form-data; name="audio"\r\n\r\nRIFF\r\n--deep--\r\n'
        )
    resp = await app_client.post(path, data=body, headers={**callrec_signed(body), "Content-Type": ctype})
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["error"]["code"] in ("invalid_event", "invalid_metadata")
    assert tracebacks(caplog) == []


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/x-www-form-urlencoded; charset=0", b"AccountSid=x"),  # no such codec
        ("application/x-www-form-urlencoded; charset=rot13", b"AccountSid=x"),  # not a text codec
        ("application/x-www-form-urlencoded", b"AccountSid=\xff\xfe"),  # not UTF-8
    ],
)
@pytest.mark.parametrize("provider", ["twilio", "plivo"])
async def test_a_form_that_is_not_text_in_its_charset_is_400(
    app_client: Any, caplog: pytest.LogCaptureFixture, provider: str, content_type: str, body: bytes
) -> None:
    path = f"/webhooks/{provider}/acme"
    # Signed as well as it can be: the body cannot be read, so there are no parameters to sign.
    if provider == "twilio":
        headers = {"X-Twilio-Signature": twilio.compute_signature(PUBLIC_BASE + path, [], TWILIO_TOKEN)}
    else:
        signature = plivo.compute_signature("POST", PUBLIC_BASE + path, [], "n0nce", PLIVO_TOKEN)
        headers = {plivo.SIGNATURE_HEADER: signature, plivo.NONCE_HEADER: "n0nce"}
    resp = await app_client.post(path, data=body, headers={**headers, "Content-Type": content_type})
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["error"]["code"] == "invalid_form"
    assert tracebacks(caplog) == []


async def test_a_twilio_signature_header_that_is_not_ascii_is_403(
    app_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    body = b"AccountSid=" + TWILIO_SID.encode()
    request = (
        b"POST /webhooks/twilio/acme HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nX-Twilio-Signature: \x80\r\n"
        + f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    answer = await raw_request(app_client.server.port, request)
    assert answer.split(b" ", 2)[1] == b"403", answer[:300]
    assert b"invalid_signature" in answer
    assert tracebacks(caplog) == []


@pytest.mark.parametrize(
    "start_time",
    ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"],  # before year 1 or after 9999 in UTC
)
async def test_a_vonage_time_outside_the_calendar_in_utc_is_400(
    app_client: Any, caplog: pytest.LogCaptureFixture, start_time: str
) -> None:
    body = json.dumps(
        {
            "recording_url": "http://127.0.0.1:9/v1/files/x",
            "recording_uuid": str(uuid.uuid4()),
            "conversation_uuid": "CON-" + str(uuid.uuid4()),
            "start_time": start_time,
        }
    ).encode()
    resp = await app_client.post("/webhooks/vonage/acme", data=body, headers=vonage_signed(body))
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["error"]["code"] == "invalid_callback"
    assert tracebacks(caplog) == []


@pytest.mark.parametrize(
    "headers",
    [
        b"Content-Type: application/json\r\nContent-Type: text/plain\r\n",  # duplicated
        b"Content-Type: application/json\r\nCallrec-Signature: \x16\xfe" + PHONE.encode() + b"\r\n",
    ],
    ids=["duplicate-content-type", "control-byte-in-a-header"],
)
async def test_requests_the_http_parser_refuses_are_400_without_a_traceback_or_their_bytes_in_the_log(
    app_client: Any, caplog: pytest.LogCaptureFixture, headers: bytes
) -> None:
    """aiohttp answers these itself, and logged each at ERROR with a traceback quoting the bytes."""
    body = json.dumps({"event": "consent_granted", "call_id": "c1", "from": PHONE}).encode()
    request = (
        b"POST /webhooks/events/acme HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + headers
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    with caplog.at_level(logging.DEBUG, logger="aiohttp.server"):
        answer = await raw_request(app_client.server.port, request)
    assert answer.startswith(b"HTTP/1.1 400 ") or answer.startswith(b"HTTP/1.0 400 "), answer[:200]
    assert tracebacks(caplog) == []
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and PHONE in r.getMessage()]


async def test_a_malformed_chunk_is_400_without_a_traceback_or_the_body_in_the_log(
    app_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    body = f"From={PHONE}&CallSid=x".encode()
    request = (
        b"POST /webhooks/twilio/acme HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n"
        + body  # where a chunk size belongs
        + b"\r\n0\r\n\r\n"
    )
    with caplog.at_level(logging.DEBUG, logger="aiohttp.server"):
        answer = await raw_request(app_client.server.port, request)
    assert answer.split(b" ", 2)[1] == b"400", answer[:200]
    assert tracebacks(caplog) == []
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and PHONE in r.getMessage()]


async def test_a_client_that_hangs_up_in_the_middle_of_its_body_leaves_no_traceback(
    app_config: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Served as ``callrec serve`` serves (aiohttp's test server cancels the handler of a lost
    connection instead; production lets it run and see the hang-up as a ConnectionResetError)."""
    runner = web.AppRunner(create_app(app_config(), run_workers=False), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        caplog.set_level(logging.INFO, logger="aiohttp.server")
        body = b'{"event": "consent_granted"'
        request = (
            b"POST /webhooks/events/acme HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body) + 100}\r\n\r\n".encode()
            + body
        )
        answer = await raw_request(port, request, half_close=True)
        assert answer == b""  # nobody left to answer
        for _ in range(100):  # the handler sees the hang-up shortly after; wait for it, at most 5 s
            if any("closed its connection" in r.getMessage() or r.exc_info for r in caplog.records):
                break
            await asyncio.sleep(0.05)
        assert any("closed its connection" in r.getMessage() for r in caplog.records)
        assert tracebacks(caplog) == []
        async with runner.app[db_key].acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM call_events") == 0
    finally:
        await runner.cleanup()


# --- bodies in pieces ----------------------------------------------------------------------------


async def in_two_pieces(body: bytes, gate: asyncio.Event) -> AsyncIterator[bytes]:
    yield body[: len(body) // 2]
    await gate.wait()
    yield body[len(body) // 2 :]


@pytest.mark.parametrize("webhook", ["events", "vonage"])
async def test_a_signed_body_that_arrives_in_pieces_is_read_whole(app_client: Any, webhook: str) -> None:
    """One ``content.read(n)`` returns what has arrived so far, not the whole body: a body sent in
    two pieces was verified on its first half, and a valid signature was refused with 403."""
    if webhook == "events":
        body = json.dumps({"event": "consent_granted", "call_id": "c1", "at": "2026-11-23T10:00:00+00:00"})
        headers = {**callrec_signed(body.encode()), "Content-Type": "application/json"}
    else:
        body = json.dumps(
            {"status": "completed", "uuid": "leg-1", "conversation_uuid": "c1", "pad": "x" * 500}
        )
        headers = vonage_signed(body.encode())
    gate = asyncio.Event()
    sending = asyncio.create_task(
        app_client.post(f"/webhooks/{webhook}/acme", data=in_two_pieces(body.encode(), gate), headers=headers)
    )
    await asyncio.sleep(0.2)  # not a timing assertion: the first piece merely gets a head start
    gate.set()
    resp = await sending
    assert resp.status in (200, 202), await resp.text()


@pytest.mark.parametrize("webhook", ["events", "vonage"])
async def test_a_body_over_the_event_cap_in_pieces_is_413(app_client: Any, webhook: str) -> None:
    body = b"x" * (64 * 1024 + 1)
    headers = callrec_signed(body) if webhook == "events" else vonage_signed(body)
    gate = asyncio.Event()
    gate.set()
    resp = await app_client.post(f"/webhooks/{webhook}/acme", data=in_two_pieces(body, gate), headers=headers)
    assert resp.status == 413, await resp.text()


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
@pytest.mark.parametrize("webhook", ["events", "upload"])
async def test_a_call_time_outside_the_calendar_in_utc_is_400_before_the_database(
    app_client: Any, caplog: pytest.LogCaptureFixture, webhook: str, when: str
) -> None:
    """The database refused these (a 400 through the backstop, with a traceback in the log)."""
    if webhook == "events":
        body = json.dumps({"event": "consent_granted", "call_id": "c1", "at": when}).encode()
        ctype = "application/json"
    else:
        meta = json.dumps({"call_id": "c1", "recording_id": "r1", "started_at": when}).encode()
        body = (
            b'--b\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n' + meta + b"\r\n"
            b'--b\r\nContent-Disposition: form-data; name="audio"\r\n\r\nRIFF\r\n--b--\r\n'
        )
        ctype = "multipart/form-data; boundary=b"
    resp = await app_client.post(
        f"/webhooks/{webhook}/acme", data=body, headers={**callrec_signed(body), "Content-Type": ctype}
    )
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["error"]["code"] in ("invalid_event", "invalid_metadata")
    assert tracebacks(caplog) == []
    async with app_client.app[db_key].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM jobs") == 0
