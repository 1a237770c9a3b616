"""Plivo V3 signatures and record callbacks.

Signatures are produced with the ``plivo`` SDK's own helpers (``plivo.utils.signature_v3``:
``construct_post_url``/``construct_get_url`` + ``get_signature_v3``) and judged a second time by
its validator ``validate_v3_signature``; the code under test never signs its own test inputs.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from datetime import UTC, datetime
from urllib.parse import urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from plivo.utils.signature_v3 import (
    construct_get_url,
    construct_post_url,
    get_signature_v3,
    validate_v3_signature,
)

from callrec.providers import plivo

TOKEN = "plivo-auth-token-for-tests-0123456789"
MAIN_TOKEN = "plivo-main-account-auth-token-9876543210"
AUTH_ID = "MA2025RK4E639VJFZAGV"
NONCE = "05429567804466091622"
URL = "https://callrec.example.test/webhooks/plivo/acme"

CALLBACK = [
    ("RecordUrl", "https://media.plivo.com/v1/Account/MA2025RK4E639VJFZAGV/Recording/c2186400-1c8c.mp3"),
    ("RecordingID", "c2186400-1c8c-11e4-a664-0026b945b52x"),
    ("CallUUID", "c2c128e2-1c8c-11e4-9bff-1db8a9db0432"),
    ("RecordingDuration", "345"),
    ("RecordingDurationMs", "345100"),
    ("RecordingStartMs", "1407235163907"),
    ("RecordingEndMs", "1407235509007"),
]


def sdk_params(params: Iterable[tuple[str, str]]) -> dict[str, list[str] | str]:
    grouped: dict[str, list[str]] = {}
    for name, value in params:
        grouped.setdefault(name, []).append(value)
    return {name: values[0] if len(values) == 1 else values for name, values in grouped.items()}


def sdk_sign(
    method: str, url: str, params: Iterable[tuple[str, str]] = (), *, nonce: str = NONCE, token: str = TOKEN
) -> str:
    """The X-Plivo-Signature-V3 value, computed by the plivo SDK's helpers."""
    as_dict = sdk_params(params)
    base = construct_get_url(url, as_dict) if method == "GET" else construct_post_url(url, as_dict)
    return get_signature_v3(token.encode(), base.decode("utf-8"), nonce.encode()).decode()


def sdk_valid(
    method: str, url: str, params: Iterable[tuple[str, str]], nonce: str, sig: str, token: str
) -> bool:
    return bool(validate_v3_signature(method, url, nonce, token, sig, sdk_params(params)))


def valid(
    sig: str,
    *,
    method: str = "POST",
    url: str = URL,
    params: list[tuple[str, str]] = CALLBACK,
    nonce: str = NONCE,
    token: str = TOKEN,
) -> bool:
    return plivo.signature_valid(method, url, params, nonce, sig, token)


# --- accepted --------------------------------------------------------------------------------


def test_a_post_callback_signed_by_the_sdk_is_accepted() -> None:
    sig = sdk_sign("POST", URL, CALLBACK)
    assert sdk_valid("POST", URL, CALLBACK, NONCE, sig, TOKEN)
    assert valid(sig)
    assert plivo.compute_signature("POST", URL, CALLBACK, NONCE, TOKEN) == sig


def test_url_with_a_query_string() -> None:
    url = (
        URL
        + "?"
        + urlencode({"consent": "granted", "basis": "consent", "agent": "a-17", "language": "en-GB"})
    )
    sig = sdk_sign("POST", url, CALLBACK)
    assert sdk_valid("POST", url, CALLBACK, NONCE, sig, TOKEN)
    assert valid(sig, url=url)
    # the query is signed: changing a tag breaks the signature
    assert not valid(sig, url=url.replace("granted", "declined"))
    # and so is its presence
    assert not valid(sig, url=URL)


def test_query_order_and_encoding_do_not_matter_but_values_do() -> None:
    signed_url = URL + "?b=2&a=1&a=0&c=hello+world"
    sig = sdk_sign("POST", signed_url, CALLBACK)
    assert valid(sig, url=URL + "?a=0&c=hello%20world&a=1&b=2")
    assert not valid(sig, url=URL + "?a=0&c=hello%20world&a=1&b=3")


def test_get_callback_with_the_parameters_in_the_query() -> None:
    url = URL + "?" + urlencode(CALLBACK)
    sig = sdk_sign("GET", url)
    assert sdk_valid("GET", url, [], NONCE, sig, TOKEN)
    assert valid(sig, method="GET", url=url, params=[])
    assert valid(sig, method="get", url=url, params=[])
    # The method itself is not signed: a body-less POST to the same URL signs the same string.
    assert sdk_valid("POST", url, [], NONCE, sig, TOKEN)
    assert valid(sig, method="POST", url=url, params=[])
    assert not valid(sig, method="POST", url=URL, params=CALLBACK)


def test_post_without_parameters_and_with_an_empty_value() -> None:
    sig = sdk_sign("POST", URL, [])
    assert valid(sig, params=[])
    params = [*CALLBACK, ("ConferenceName", "")]
    sig = sdk_sign("POST", URL, params)
    assert valid(sig, params=params)
    assert not valid(sig, params=CALLBACK)


def test_repeated_post_parameter() -> None:
    params = [*CALLBACK, ("Tag", "b"), ("Tag", "a")]
    sig = sdk_sign("POST", URL, params)
    assert sdk_valid("POST", URL, params, NONCE, sig, TOKEN)
    assert valid(sig, params=params)
    assert valid(sig, params=[*CALLBACK, ("Tag", "a"), ("Tag", "b")])
    assert not valid(sig, params=[*CALLBACK, ("Tag", "a")])


def test_unicode_post_values() -> None:
    params = [*CALLBACK, ("CallerName", "Zoë Ångström — 東京")]
    sig = sdk_sign("POST", URL, params)
    assert sdk_valid("POST", URL, params, NONCE, sig, TOKEN)
    assert valid(sig, params=params)


def test_several_comma_separated_signatures() -> None:
    sig = sdk_sign("POST", URL, CALLBACK)
    other = sdk_sign("POST", URL, CALLBACK, token="some-other-token-000000000000")
    assert sdk_valid("POST", URL, CALLBACK, NONCE, f"{other},{sig}", TOKEN)
    assert valid(f"{other},{sig}")
    assert valid(f"{sig},{other}")
    assert valid(f"{other}, {sig}")  # tolerated here, though the SDK does not strip spaces
    assert not valid(f"{other},{other}")
    assert not valid(",,,")


def test_main_account_signature_with_the_main_token() -> None:
    # X-Plivo-Signature-Ma-V3 is the same algorithm keyed with the main account's token.
    ma_sig = sdk_sign("POST", URL, CALLBACK, token=MAIN_TOKEN)
    assert valid(ma_sig, token=MAIN_TOKEN)
    assert not valid(ma_sig, token=TOKEN)


@settings(max_examples=150, deadline=None)
@given(
    path=st.lists(st.text("abcXYZ019-_~", min_size=1, max_size=8), max_size=3),
    query=st.lists(
        st.tuples(
            st.text("abcdefgXYZ_", min_size=1, max_size=6),
            st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=10),
        ),
        max_size=4,
    ),
    params=st.lists(st.tuples(st.text(min_size=1, max_size=8), st.text(max_size=16)), max_size=6),
    nonce=st.text("0123456789", min_size=1, max_size=20),
    token=st.text(min_size=1, max_size=40),
    method=st.sampled_from(["POST", "GET"]),
)
def test_agrees_with_the_sdk_on_generated_requests(
    path: list[str],
    query: list[tuple[str, str]],
    params: list[tuple[str, str]],
    nonce: str,
    token: str,
    method: str,
) -> None:
    url = "https://callrec.example.test/" + "/".join(path)
    if query:
        url += "?" + urlencode(query)
    body = params if method == "POST" else []
    sig = sdk_sign(method, url, body, nonce=nonce, token=token)
    assert plivo.compute_signature(method, url, body, nonce, token) == sig
    assert plivo.signature_valid(method, url, body, nonce, sig, token)
    assert not plivo.signature_valid(method, url, body, nonce + "0", sig, token)
    assert not plivo.signature_valid(method, url, body, nonce, sig, token + "x")


# --- refused ---------------------------------------------------------------------------------


def test_wrong_token() -> None:
    assert not valid(sdk_sign("POST", URL, CALLBACK, token="not-the-tenant-token-000000000"))


def test_nonce_mismatch() -> None:
    sig = sdk_sign("POST", URL, CALLBACK)
    assert not valid(sig, nonce="05429567804466091623")
    assert not sdk_valid("POST", URL, CALLBACK, "05429567804466091623", sig, TOKEN)


def test_tampered_parameter_url_or_path() -> None:
    sig = sdk_sign("POST", URL, CALLBACK)
    tampered = [(n, "https://evil.example/x.mp3" if n == "RecordUrl" else v) for n, v in CALLBACK]
    assert not valid(sig, params=tampered)
    assert not valid(sig, params=[*CALLBACK, ("Extra", "1")])
    assert not valid(sig, url=URL.replace("acme", "globex"))
    assert not valid(sig, url=URL.replace("https", "http"))


def test_port_spellings_are_not_normalised_just_as_in_the_sdk() -> None:
    with_port = "https://callrec.example.test:443/webhooks/plivo/acme"
    sig = sdk_sign("POST", with_port, CALLBACK)
    assert valid(sig, url=with_port)
    # Plivo signs the URL exactly as configured; its validator does not try other spellings.
    assert not sdk_valid("POST", URL, CALLBACK, NONCE, sig, TOKEN)
    assert not valid(sig, url=URL)
    sig = sdk_sign("POST", URL, CALLBACK)
    assert not valid(sig, url=with_port)
    local = "http://127.0.0.1:8123/webhooks/plivo/acme"
    assert valid(sdk_sign("POST", local, CALLBACK), url=local)


@pytest.mark.parametrize(
    ("method", "sig", "nonce", "token"),
    [
        ("POST", "", NONCE, TOKEN),
        ("POST", "SIG", "", TOKEN),
        ("POST", "SIG", NONCE, ""),
        ("PUT", "SIG", NONCE, TOKEN),
        ("DELETE", "SIG", NONCE, TOKEN),
        ("POST", "ünïcode", NONCE, TOKEN),
    ],
)
def test_missing_or_malformed_inputs_are_false_not_errors(
    method: str, sig: str, nonce: str, token: str
) -> None:
    real = sdk_sign("POST", URL, CALLBACK)
    header = real if sig == "SIG" else sig
    assert plivo.signature_valid(method, URL, CALLBACK, nonce, header, token) is False


def test_signature_base_refuses_methods_plivo_does_not_sign() -> None:
    with pytest.raises(ValueError):
        plivo.signature_base("PUT", URL, CALLBACK)


# --- record callbacks ------------------------------------------------------------------------


def test_record_xml_callback_parses() -> None:
    event = plivo.parse_record_callback(CALLBACK)
    assert event.provider == "plivo"
    assert event.recording_id == "c2186400-1c8c-11e4-a664-0026b945b52x"
    assert event.call_id == "c2c128e2-1c8c-11e4-9bff-1db8a9db0432"
    assert event.media_url.startswith("https://media.plivo.com/")
    assert event.duration_ms == 345100
    assert event.started_at == datetime(2014, 8, 5, 10, 39, 23, 907000, tzinfo=UTC)
    assert event.ended_at == datetime(2014, 8, 5, 10, 45, 9, 7000, tzinfo=UTC)
    assert event.size_bytes is None
    assert event.from_number is None and event.to_number is None


def test_record_api_callback_in_snake_case_parses() -> None:
    event = plivo.parse_record_callback(
        {
            "api_id": "c7b69074-58be-11e1-86da-adf28403fe48",
            "record_url": "https://media.plivo.com/v1/Account/MA2025RK4E639VJFZAGV/Recording/r.mp3",
            "call_uuid": "cfa1e4c0-e21e-11e1-92d4-28373719f1a2",
            "recording_id": "c7b71d14-58be-11e1-b7e1-ffca7d3abcc0",
            "recording_duration": "12",
            "recording_duration_ms": "12040.00000",
            "recording_start_ms": "1407235163907.00000",
            "recording_end_ms": "1407235175947.00000",
        }
    )
    assert event.call_id == "cfa1e4c0-e21e-11e1-92d4-28373719f1a2"
    assert event.duration_ms == 12040


def test_action_callback_carries_the_numbers() -> None:
    event = plivo.parse_record_callback([*CALLBACK, ("From", "+14155550100"), ("To", "+442079460000")])
    assert (event.from_number, event.to_number) == ("+14155550100", "+442079460000")


def test_duration_falls_back_to_start_end_then_seconds() -> None:
    base = [(n, v) for n, v in CALLBACK if n != "RecordingDurationMs"]
    assert plivo.parse_record_callback(base).duration_ms == 345100
    only_seconds = [(n, v) for n, v in base if n not in ("RecordingStartMs", "RecordingEndMs")]
    assert plivo.parse_record_callback(only_seconds).duration_ms == 345000
    bare = [(n, v) for n, v in only_seconds if n != "RecordingDuration"]
    assert plivo.parse_record_callback(bare).duration_ms is None


def replace(name: str, value: str) -> list[tuple[str, str]]:
    return [(n, value if n == name else v) for n, v in CALLBACK]


def without(name: str) -> list[tuple[str, str]]:
    return [(n, v) for n, v in CALLBACK if n != name]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (without("RecordUrl"), "RecordUrl"),
        (replace("RecordUrl", "ftp://media.plivo.com/x.mp3"), "RecordUrl"),
        (replace("RecordUrl", "https://user:pw@media.plivo.com/x.mp3"), "RecordUrl"),
        (replace("RecordUrl", "https://media.plivo.com:99999/x.mp3"), "RecordUrl"),
        (without("RecordingID"), "RecordingID"),
        (replace("RecordingID", "../../Call"), "RecordingID"),
        (without("CallUUID"), "CallUUID"),
        (replace("RecordingDurationMs", "-5"), "RecordingDurationMs"),
        (replace("RecordingDurationMs", "1e9"), "RecordingDurationMs"),
        (replace("RecordingStartMs", "12"), "plausible"),
        (replace("RecordingEndMs", "1407235000000"), "before"),
        ([*CALLBACK, ("RecordingID", "another-id")], "twice"),
    ],
)
def test_bad_record_callbacks_are_refused_with_a_clear_message(
    params: list[tuple[str, str]], message: str
) -> None:
    with pytest.raises(plivo.InvalidEvent, match=message):
        plivo.parse_record_callback(params)


def test_a_repeated_parameter_with_the_same_value_is_fine() -> None:
    assert plivo.parse_record_callback([*CALLBACK, ("CallUUID", CALLBACK[2][1])]).call_id == CALLBACK[2][1]


# --- REST API --------------------------------------------------------------------------------


def test_rest_urls() -> None:
    rid = "c2186400-1c8c-11e4-a664-0026b945b52x"
    assert plivo.recording_delete_url(AUTH_ID, rid) == (
        f"https://api.plivo.com/v1/Account/{AUTH_ID}/Recording/{rid}/"
    )
    assert plivo.call_lookup_url(
        AUTH_ID, "5607532d-5037-4066-befc-a8b40218dd4f", api_base="http://127.0.0.1:9"
    ) == (f"http://127.0.0.1:9/v1/Account/{AUTH_ID}/Call/5607532d-5037-4066-befc-a8b40218dd4f/")
    for bad in (
        lambda: plivo.recording_delete_url(AUTH_ID, "../x"),
        lambda: plivo.recording_delete_url("MA/..", rid),
    ):
        with pytest.raises(ValueError):
            bad()
    with pytest.raises(ValueError):
        plivo.call_lookup_url(AUTH_ID, rid, api_base="https://api.plivo.com/v1")


def test_parties_from_the_call_detail_record() -> None:
    cdr = {
        "from_number": "+12025551111",
        "to_number": "sip:sam@phone.plivo.com",
        "call_direction": "outbound",
    }
    assert plivo.parties_from_call(cdr) == ("+12025551111", "sip:sam@phone.plivo.com")
    assert plivo.parties_from_call({"from_number": None}) == (None, None)


def test_basic_auth_headers_match_what_requests_sends_for_the_sdk() -> None:
    header = plivo.basic_auth_headers(AUTH_ID, TOKEN)["Authorization"]
    assert header == "Basic " + base64.b64encode(f"{AUTH_ID}:{TOKEN}".encode()).decode()
    assert plivo.media_auth_headers(AUTH_ID, TOKEN) == {"Authorization": header}
    with pytest.raises(ValueError):
        plivo.basic_auth_headers(AUTH_ID, "")
