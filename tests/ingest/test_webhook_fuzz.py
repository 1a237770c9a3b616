"""Hypothesis sends arbitrary bodies, headers and query strings to every webhook and never sees a 5xx:
a telephony provider or a PBX reads 5xx as "retry", so a bad request answered with one is retried
for ever. Most examples carry a valid signature made with the tenant's real secret, so that the code
past the signature check (parsers, validators, the database) is exercised too.

The requests go over a raw socket (http.client) from a worker thread to the app on 127.0.0.1, so
that headers can hold any bytes and bodies any framing; the log must hold no traceback afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import http.client
import json
import logging
import os
import socket
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlencode

import jwt
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from twilio_support import PUBLIC_BASE, TWILIO_SID, TWILIO_TOKEN

from callrec.app import create_app
from callrec.providers import plivo, twilio

WEBHOOK_SECRET = "pbx-shared-secret-for-tests"
VONAGE_SECRET = "vonage-signature-secret-for-fuzzing-0123"
VONAGE_APP = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
PLIVO_ID = "MAFUZZFUZZFUZZFUZZ00"
PLIVO_TOKEN = "plivo-auth-token-for-fuzzing"
WEBHOOKS = ("twilio", "vonage", "plivo", "upload", "events")
# Per webhook: the five together take about 15 s on two CPUs. CALLREC_FUZZ_EXAMPLES=2000 runs a
# longer, random search (the default run is derandomized: the same examples every time).
MAX_EXAMPLES = int(os.environ.get("CALLREC_FUZZ_EXAMPLES", "150"))
DERANDOMIZE = "CALLREC_FUZZ_EXAMPLES" not in os.environ
# Answers that stop a request before its body's content is looked at (or at the HTTP level: "").
AT_THE_DOOR = {
    "",
    "closed",
    "invalid_signature",
    "signature_expired",
    "unknown_tenant",
    "provider_not_configured",
    "unsupported_media_type",
    "invalid_characters",
    "payload_too_large",
    "request_entity_too_large",
}
T = TypeVar("T")


@dataclass(frozen=True)
class Request:
    path: str
    headers: tuple[tuple[str, bytes], ...]
    body: bytes
    framing: str = "length"  # see send()


def mostly(likely: st.SearchStrategy[T], other: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """``likely`` two times in three: Hypothesis's one_of favours its simplest branches."""
    return st.sampled_from([True, True, False]).flatmap(lambda yes: likely if yes else other)


# --- building blocks ---------------------------------------------------------------------------

text = st.text(max_size=40)  # any code point but surrogates: NUL, controls, percent signs, separators
ascii_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
header_bytes = st.binary(max_size=80)  # raw, non-UTF-8 included
BCHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? "
boundaries = mostly(
    st.text(BCHARS[:-1], min_size=1, max_size=70),  # valid under RFC 2046
    st.one_of(
        st.just(""),
        st.integers(71, 8000).map(lambda n: "b" * n),
        st.text(BCHARS, min_size=1, max_size=70),
        ascii_text,
        text,
    ),
)
charsets = st.one_of(
    st.sampled_from(
        ["utf-8", "UTF-8", "latin-1", "utf-16", "utf-32", "bogus", "rot13", "base64", "zlib", ""]
    ),
    ascii_text,
)
tenants = st.sampled_from(["acme"] * 12 + ["other", "nobody", "%00", "ac%ffme"])


def quoted_query(pairs: list[tuple[str, str]], garbage: str) -> str:
    # Raw percent-escapes too: invalid UTF-8 (%ff), NUL (%00), a dangling % sign.
    return "&".join(part for part in (urlencode(pairs), quote(garbage, safe="%=&")) if part)


queries = st.builds(
    quoted_query,
    st.lists(
        st.tuples(
            st.sampled_from(["consent", "basis", "agent", "language", "announcement", "purpose", "x"]) | text,
            st.sampled_from(["granted", "declined", "consent", "contract", "en-GB", "agent-1"]) | text,
        ),
        max_size=4,
    ),
    st.sampled_from(["", "", "%ff", "%00", "%", "consent=granted&consent=declined", "a=%E2%82"]) | ascii_text,
)


def content_types(expected: str) -> st.SearchStrategy[bytes | None]:
    """Mostly the expected type; otherwise its neighbours, boundaries of every length, duplicated
    parameters, unknown charsets and raw non-UTF-8 bytes."""
    odd = st.one_of(
        st.none(),
        st.sampled_from(
            [
                "application/json",
                "text/plain",
                "application/octet-stream",
                "multipart/mixed; boundary=x",
                "multipart/form-data",
                "application/x-www-form-urlencoded",
                "*/*",
                "",
                ";",
                "multipart/form-data; boundary=a; boundary=b",
                'multipart/form-data; boundary="unterminated',
                "multipart/form-data; boundary*=utf-8''x",
            ]
        ).map(str.encode),
        boundaries.map(lambda b: f"multipart/form-data; boundary={b}".encode()),
        boundaries.map(lambda b: f'multipart/form-data; boundary="{b}"'.encode()),
        charsets.map(lambda c: f"application/x-www-form-urlencoded; charset={c}".encode()),
        charsets.map(lambda c: f"application/json; charset={c}".encode()),
        header_bytes,
    )
    return mostly(st.just(expected.encode()), odd)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)


def fields(spec: dict[str, list[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Every field of ``spec`` with its valid (first) value, or any of its listed values."""
    valid = {name: values[0] for name, values in spec.items()}
    return mostly(st.just(valid), st.fixed_dictionaries({k: st.sampled_from(v) for k, v in spec.items()}))


def json_bodies(spec: dict[str, list[Any]]) -> st.SearchStrategy[bytes]:
    """JSON objects from the keys a handler reads with values that fit or nearly fit; objects of
    garbage; a key written twice; JSON nested thousands deep; not JSON, not UTF-8."""
    garbage = st.dictionaries(
        st.sampled_from(list(spec)) | text,
        st.sampled_from([v for vs in spec.values() for v in vs]) | json_values,
        max_size=len(spec) + 2,
    )
    return mostly(
        fields(spec).map(lambda d: json.dumps(d).encode()),
        st.one_of(
            garbage.map(lambda d: json.dumps(d, ensure_ascii=False).encode()),
            st.tuples(fields(spec), st.sampled_from(list(spec))).map(
                lambda t: (json.dumps(t[0])[:-1] + f', "{t[1]}": 1, "{t[1]}": 2}}').encode()
            ),
            json_values.map(lambda v: json.dumps(v).encode()),
            st.binary(max_size=512),
            st.sampled_from([b"", b"{", b"[" * 5000, b"\xff\xfe{}", b'{"a": NaN}', b"1e999999"]),
        ),
    )


def form_bodies(spec: dict[str, list[str]]) -> st.SearchStrategy[bytes]:
    """URL-encoded forms of a provider's fields, fields repeated, raw percent garbage, non-UTF-8."""
    pairs = st.lists(
        st.tuples(
            st.sampled_from(list(spec)) | text,
            st.sampled_from([v for vs in spec.values() for v in vs]) | text,
        ),
        max_size=len(spec) + 3,
    )
    return mostly(
        fields(spec).map(lambda d: urlencode(d).encode()),
        st.one_of(
            pairs.map(lambda p: urlencode(p).encode()),
            st.tuples(fields(spec), pairs).map(lambda t: urlencode([*t[0].items(), *t[1]]).encode()),
            st.tuples(pairs, st.binary(max_size=64)).map(lambda t: urlencode(t[0]).encode() + b"&" + t[1]),
            st.binary(max_size=512),
            st.sampled_from([b"", b"%ff=%fe", b"a=%", b"=&=&=", b"a=1&a=2", b"\xff\xfe", b"a" * 20000]),
        ),
    )


@st.composite
def multipart_bodies(draw: st.DrawFn, boundary: str) -> bytes:
    """A metadata part and an audio part, or parts with any name and odd headers; a closing
    boundary or not; cut in half; or not multipart at all."""
    valid = [("metadata", "", draw(json_bodies(METADATA))), ("audio", "", b"RIFF" + b"\0" * 40)]
    odd = st.lists(
        st.tuples(
            st.sampled_from(["metadata", "audio", "x", ""]) | text,
            st.sampled_from(
                [
                    "Content-Type: application/json\r\n",
                    "Content-Transfer-Encoding: base64\r\n",
                    "X: " + "y" * 5000 + "\r\n",
                    "NoColon\r\n",
                    "Content-Disposition: form-data\r\n",
                ]
            ),
            json_bodies(METADATA) | st.binary(max_size=256) | st.just(b""),
        ),
        max_size=5,
    )
    parts = draw(mostly(st.just(valid), odd))
    raw = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n{extra}\r\n'.encode()
        + data
        + b"\r\n"
        for name, extra, data in parts
    )
    closing = f"--{boundary}--\r\n".encode()
    ending = draw(mostly(st.just(closing), st.sampled_from([b"", b"--", closing[:-4]])))
    return draw(
        mostly(st.just(raw + ending), st.one_of(st.binary(max_size=256), st.just(raw[: len(raw) // 2])))
    )


# --- the webhooks' fields: the first value of each is valid -------------------------------------

TWILIO = {
    "AccountSid": [TWILIO_SID, "AC" + "f" * 32, "AC"],
    "CallSid": ["CA" + "2" * 32, "CA" + "x" * 32, ""],
    "RecordingSid": ["RE" + "1" * 32, "RE1"],
    "RecordingUrl": [
        "http://127.0.0.1:9/rec",
        "https://api.twilio.com/x",
        "file:///etc/passwd",
        "http://[::1",
    ],
    "RecordingStatus": ["completed", "absent", "failed", "in-progress", "other"],
    "RecordingStartTime": ["Mon, 23 Nov 2026 10:00:01 +0000", "yesterday", "Mon, 99 Nov 2026 99:00 +9999"],
    "RecordingDuration": ["12", "-1", "1e999"],
    "ErrorCode": ["0", "\x00", "13227"],
}
PLIVO = {
    "RecordUrl": ["http://127.0.0.1:9/rec.wav", "https://media.plivo.com/x", "javascript:x", "http://"],
    "RecordingID": ["rec-1", "", "r" * 300],
    "CallUUID": ["call-1", "", "\x00"],
    "RecordingStartMs": ["1700000000000", "-1", "1" * 40, "x"],
    "RecordingEndMs": ["1700000001000", "0", "99999999999999999999"],
    "RecordingDurationMs": ["1000", "1.5", "1e309", "nan"],
    "RecordingDuration": ["1", "-5"],
    "From": ["+12125550123", "nobody"],
}
VONAGE = {
    "recording_url": ["http://127.0.0.1:9/v1/files/x", "https://api.nexmo.com/v1/files/x", "x", None],
    "recording_uuid": [str(uuid.UUID(int=1)), "", 5],
    "conversation_uuid": ["CON-" + str(uuid.UUID(int=2)), "\x00", []],
    "start_time": ["2026-11-23T10:00:00Z", "2026-13-45T99:00:00Z", "0001-01-01T00:00:00+14:00"],
    "end_time": ["2026-11-23T10:00:30Z", "9999-12-31T23:59:59-14:00", "2026-11-23T09:00:00Z"],
    "size": [12345, -1, 10**30, "12", True],
    "status": ["completed", {"a": 1}],
}
EVENTS = {
    "event": ["consent_granted", "consent_withdrawn", "announcement_played", "recording_paused", "x"],
    "call_id": ["call-1", "", "c" * 200, 7],
    "at": [
        "2026-11-23T10:00:00+00:00",
        "2026-11-23T10:00:00",
        "9999-12-31T23:59:59-14:00",
        "0001-01-01T00:00:00+14:00",
        "now",
    ],
    "method": ["ivr_keypress", "verbal", "telepathy", None],
    "basis": ["consent", "contract", "whim"],
    "language": ["en-GB", "\x00", "x" * 100],
    "cut_by_provider": [False, True, "yes"],
}
METADATA = {
    "call_id": ["call-1", "", "\x00"],
    "recording_id": ["rec-1", "r" * 200],
    "started_at": ["2026-11-23T10:00:00+00:00", "2026-11-23T10:00:00", "9999-12-31T23:59:59-14:00", "0000"],
    "from": ["+12125550123", "+999", "call me", 5],
    "to": ["+16465550199", ""],
    "direction": ["inbound", "sideways"],
    "redact": [
        [{"start_ms": 0, "end_ms": 10}],
        [{"start_ms": 5, "end_ms": 1}],
        [{"start_ms": 0, "end_ms": 10**20}],
        [{"start_ms": 0, "end_ms": 1}] * 101,
        "all",
    ],
    "consent": ["granted", "perhaps"],
    "basis": ["consent", "whim"],
}


def callrec_signature(body: bytes, mode: str) -> bytes:
    now = int(time.time())
    good = hmac.new(WEBHOOK_SECRET.encode(), f"{now}.".encode() + body, hashlib.sha256).hexdigest()
    return {
        "valid": f"t={now},v1={good}",
        "rotated": f"t={now},v1={'0' * 64},v1={good}",  # a second v1, as during a secret rotation
        "twice-t": f"t=1,t={now},v1={good}",  # a parameter repeated
        "stale": f"t={now - 301},v1={good}",
        "zeros": f"t={now},v1={'0' * 64}",
    }[mode].encode()


def form_params(body: bytes) -> list[tuple[str, str]]:
    """The form fields as the server will read them, to sign them."""
    try:
        return parse_qsl(body.rstrip().decode("utf-8"), keep_blank_values=True)
    except ValueError:
        return []


@st.composite
def requests(draw: st.DrawFn, webhook: str) -> Request:
    tenant = draw(tenants)
    query = draw(queries) if webhook in ("twilio", "plivo") else draw(st.sampled_from(["", "", "x=%ff"]))
    path = f"/webhooks/{webhook}/{tenant}" + (f"?{query}" if query else "")
    # "other": signed with a secret that is not the tenant's.
    signed = draw(st.sampled_from(["valid"] * 5 + ["none", "garbage", "other"]))
    headers: list[tuple[str, bytes]] = []

    if webhook in ("twilio", "plivo"):
        body = draw(form_bodies(TWILIO if webhook == "twilio" else PLIVO))
        ctype = draw(content_types("application/x-www-form-urlencoded"))
        params = form_params(body)
        if webhook == "twilio":
            token = TWILIO_TOKEN if signed != "other" else "other-token"
            signature = twilio.compute_signature(PUBLIC_BASE + path, params, token).encode()
            name = "X-Twilio-Signature"
        else:
            nonce = draw(mostly(st.just("n0nce"), st.sampled_from(["", "\u00e9"]) | ascii_text))
            token = PLIVO_TOKEN if signed != "other" else "other-token"
            try:
                signature = plivo.compute_signature("POST", PUBLIC_BASE + path, params, nonce, token).encode()
            except (ValueError, UnicodeError):
                signature = b"x"
            headers.append((plivo.NONCE_HEADER, nonce.encode()))
            name = plivo.SIGNATURE_HEADER
    elif webhook == "vonage":
        body = draw(json_bodies(VONAGE))
        ctype = draw(content_types("application/json"))
        claims: dict[str, Any] = {
            "iat": int(time.time()),
            "jti": uuid.uuid4().hex,
            "payload_hash": hashlib.sha256(body).hexdigest(),
            "application_id": VONAGE_APP,
        }
        odd_claims = st.dictionaries(st.sampled_from([*claims, "exp", "nbf"]), json_values, max_size=2)
        claims.update(draw(mostly(st.just({}), odd_claims)))
        secret = VONAGE_SECRET if signed != "other" else "another-vonage-secret-entirely-0123"
        try:
            signature = b"Bearer " + jwt.encode(claims, secret, algorithm="HS256").encode()
        except (TypeError, ValueError, OverflowError):  # claims json cannot encode
            signature = b"Bearer a.b.c"
        name = "Authorization"
    else:
        if webhook == "upload":
            boundary = draw(boundaries)
            body = draw(multipart_bodies(boundary))
            ctype = draw(
                mostly(
                    st.sampled_from(
                        [
                            f"multipart/form-data; boundary={boundary}",
                            f'multipart/form-data; boundary="{boundary}"',
                        ]
                    ).map(lambda v: v.encode("utf-8", "surrogateescape")),
                    content_types("multipart/form-data"),
                )
            )
        else:
            body = draw(json_bodies(EVENTS))
            ctype = draw(content_types("application/json"))
        mode = draw(
            mostly(st.sampled_from(["valid", "rotated", "twice-t"]), st.sampled_from(["stale", "zeros"]))
        )
        signature = callrec_signature(body, mode)
        name = "Callrec-Signature"
    if signed in ("valid", "other"):
        headers.append((name, signature))
    elif signed == "garbage":
        headers.append((name, draw(header_bytes)))
    if ctype is not None:
        headers.append(("Content-Type", ctype))
    if draw(st.sampled_from([False] * 4 + [True])):  # the same header twice, or one more of any name
        header_names = st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20)
        headers.append(draw(st.sampled_from(headers) if headers else st.tuples(header_names, header_bytes)))
    framing = draw(st.sampled_from(["length"] * 4 + ["chunked"] * 2 + ["bad-chunks", "short"]))
    # A header value ends at CR or LF, and http.client refuses to send one holding them.
    clean = tuple((name, value.replace(b"\r", b"").replace(b"\n", b"")) for name, value in headers)
    return Request(path, clean, body, framing)


# --- sending -----------------------------------------------------------------------------------


def end_input(conn: http.client.HTTPConnection) -> None:
    """Half-close: the server sees the end of the request's bytes, and may still answer."""
    assert conn.sock is not None
    with contextlib.suppress(OSError):  # the server may have closed already
        conn.sock.shutdown(socket.SHUT_WR)


def send(port: int, req: Request) -> tuple[int, str]:
    """One request over its own connection; the status and the error code of the JSON answer.

    ``framing``: ``length`` (Content-Length), ``chunked`` (well-formed chunks of 97 bytes),
    ``bad-chunks`` (Transfer-Encoding: chunked over the raw body) or ``short`` (a Content-Length
    one byte longer than the body, then end of input): bodies an HTTP parser must refuse.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("POST", req.path, skip_accept_encoding=True)
        for name, value in req.headers:
            conn.putheader(name, value)
        try:
            if req.framing in ("chunked", "bad-chunks"):
                conn.putheader("Transfer-Encoding", "chunked")
                conn.endheaders()
                if req.framing == "bad-chunks":
                    conn.send(req.body + b"\r\n0\r\n\r\n")
                    end_input(conn)  # a chunk size in the body may promise more than there is
                else:
                    for i in range(0, len(req.body), 97):
                        piece = req.body[i : i + 97]
                        conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    conn.send(b"0\r\n\r\n")
            else:
                short = req.framing == "short"
                conn.putheader("Content-Length", str(len(req.body) + short))
                conn.endheaders(req.body)
                if short:
                    end_input(conn)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered (and closed) before the whole body was sent: the answer is still there
        try:
            resp = conn.getresponse()
            data = resp.read()
        except (http.client.RemoteDisconnected, ConnectionResetError):
            # Closed without an answer: only for a body cut short, which nobody is left to hear.
            assert req.framing in ("short", "bad-chunks"), "the connection closed without an answer"
            return 0, "closed"
    finally:
        conn.close()
    try:
        code = json.loads(data)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = ""
    return resp.status, code


def fuzz(port: int, webhook: str, seen: Counter[tuple[int, str]]) -> None:
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=DERANDOMIZE,  # by default, the same examples on every run
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(req=requests(webhook))
    @example(req=Request(f"/webhooks/{webhook}/acme", (), b""))
    def one(req: Request) -> None:
        status, code = send(port, req)
        seen[(status, code)] += 1
        assert status < 500, f"{status} {code} for {req!r}"

    if webhook == "upload":  # the requests of issue 9, defect 2, signed and not
        for boundary in ["XXB", "a" * 71, "b" * 8000]:
            for mode in ["valid", "zeros"]:
                headers = (
                    ("Content-Type", f"multipart/form-data; boundary={boundary}".encode()),
                    ("Callrec-Signature", callrec_signature(b"x", mode)),
                )
                one = example(req=Request("/webhooks/upload/acme", headers, b"x"))(one)
    one()


@pytest.fixture
async def app_client(aiohttp_client: Any, app_config: Any) -> Any:
    cfg = app_config(
        # The valid media URLs above name port 9: entries match host and port.
        ingest={"media_hosts": ["127.0.0.1:9"]},
        tenants={
            "acme": {
                "twilio_account_sid": TWILIO_SID,
                "twilio_auth_token": TWILIO_TOKEN,
                "webhook_secret": WEBHOOK_SECRET,
                "vonage_signature_secret": VONAGE_SECRET,
                "vonage_application_id": VONAGE_APP,
                "plivo_auth_id": PLIVO_ID,
                "plivo_auth_token": PLIVO_TOKEN,
            },
            "other": {"webhook_secret": "other-secret"},
        },
    )
    return await aiohttp_client(create_app(cfg, run_workers=False))


@pytest.mark.parametrize("webhook", WEBHOOKS)
async def test_no_request_makes_a_webhook_answer_5xx_or_log_a_traceback(
    app_client: Any, caplog: pytest.LogCaptureFixture, webhook: str
) -> None:
    assert app_client.server.host == "127.0.0.1"
    seen: Counter[tuple[int, str]] = Counter()
    with caplog.at_level(logging.WARNING):
        await asyncio.to_thread(fuzz, app_client.server.port, webhook, seen)
    print(
        f"{webhook}: {sum(seen.values())} requests: "
        + ", ".join(f"{s} {c}: {n}" for (s, c), n in sorted(seen.items()))
    )
    traces = [
        f"{r.name}: {r.getMessage()} {r.exc_info[1] if r.exc_info else ''!r}"
        for r in caplog.records
        if r.exc_info or r.levelno >= logging.ERROR
    ]
    assert traces == [], "\n".join(traces)
    # The strategies get past the signature check, and some requests all the way to 2xx: or the
    # fuzzing would prove little about the code behind the check.
    inside = sum(n for (status, code), n in seen.items() if code not in AT_THE_DOOR or status < 300)
    assert inside >= MAX_EXAMPLES // 5, seen
    assert sum(n for (status, _), n in seen.items() if 200 <= status < 300) > 0, seen
