"""Vonage signed webhooks, record events and application JWTs.

Tokens are made with PyJWT (a standard JWT library) and with Vonage's own SDK
(``vonage_jwt``/``vonage``), never with the code under test; the SDK's own verifier is used as
a second opinion on what it accepts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from vonage import Auth, Vonage
from vonage_jwt import verify_signature as vonage_verify_signature

from callrec.providers import vonage
from callrec.providers.vonage import SignatureError

SECRET = "vonage-signature-secret-for-tests-0123456789"
API_KEY = "a1b2c3d"
APP_ID = "aaaaaaaa-bbbb-cccc-dddd-0123456789ab"
NOW = 1_790_000_000.0

# The documented record event (https://developer.vonage.com/en/voice/voice-api/webhook-reference#record),
# serialised compactly as Vonage sends it.
RECORD_EVENT = {
    "start_time": "2020-01-01T12:00:00.000Z",
    "recording_url": "https://api.nexmo.com/v1/files/bbbbbbbb-aaaa-cccc-dddd-0123456789ab",
    "size": 12222,
    "recording_uuid": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab",
    "end_time": "2020-01-01T12:00:12.500Z",
    "conversation_uuid": "CON-aaaaaaaa-bbbb-cccc-dddd-0123456789ab",
    "timestamp": "2020-01-01T12:00:13.000Z",
}


def body_of(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


BODY = body_of(RECORD_EVENT)


def claims_for(body: bytes, *, iat: Any = NOW, **extra: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iat": int(iat) if isinstance(iat, float) else iat,
        "jti": str(uuid.uuid4()),
        "iss": "Vonage",
        "payload_hash": hashlib.sha256(body).hexdigest(),
        "api_key": API_KEY,
        "application_id": APP_ID,
    }
    claims.update(extra)
    return claims


def signed(body: bytes = BODY, *, secret: str = SECRET, **claims: Any) -> str:
    """The Authorization header Vonage would send, made with PyJWT."""
    return "Bearer " + jwt.encode(claims_for(body, **claims), secret, algorithm="HS256")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def refused(header: str | None, body: bytes = BODY, **kwargs: Any) -> str:
    kwargs.setdefault("now", NOW)
    with pytest.raises(SignatureError) as info:
        vonage.verify_signed_webhook(header, body, SECRET, **kwargs)
    return info.value.code


@pytest.fixture(scope="module")
def rsa_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


# --- signed webhooks: accepted ---------------------------------------------------------------


def test_a_token_made_by_pyjwt_is_accepted_and_its_claims_returned() -> None:
    header = signed()
    claims = vonage.verify_signed_webhook(header, BODY, SECRET, now=NOW)
    assert claims["api_key"] == API_KEY
    assert claims["application_id"] == APP_ID
    assert claims["payload_hash"] == hashlib.sha256(BODY).hexdigest()


def test_vonage_sdk_agrees_with_the_verdicts() -> None:
    token = jwt.encode(claims_for(BODY, iat=time.time()), SECRET, algorithm="HS256")
    client = Vonage(Auth(api_key=API_KEY, api_secret="api-secret-for-tests"))
    assert client.voice.verify_signature(token, SECRET) is True
    assert vonage_verify_signature(token, SECRET) is True
    assert vonage.verify_signed_webhook("Bearer " + token, BODY, SECRET)["api_key"] == API_KEY

    assert vonage_verify_signature(token, SECRET + "x") is False
    with pytest.raises(SignatureError):
        vonage.verify_signed_webhook("Bearer " + token, BODY, SECRET + "x")


@settings(max_examples=60, deadline=None)
@given(body=st.binary(max_size=512), secret=st.text(min_size=32, max_size=64))
def test_any_body_and_secret_round_trip(body: bytes, secret: str) -> None:
    header = signed(body, secret=secret)
    assert vonage.verify_signed_webhook(header, body, secret, now=NOW)["iat"] == int(NOW)
    with pytest.raises(SignatureError) as info:
        vonage.verify_signed_webhook(header, body + b" ", secret, now=NOW)
    assert info.value.code == "payload_hash_mismatch"


def test_header_order_typ_and_scheme_case_do_not_matter() -> None:
    token = jwt.encode(claims_for(BODY), SECRET, algorithm="HS256", headers={"typ": "JWT", "kid": "k1"})
    assert vonage.verify_signed_webhook("bearer " + token, BODY, SECRET, now=NOW)
    assert vonage.verify_signed_webhook("  Bearer   " + token + " ", BODY, SECRET, now=NOW)


def test_uppercase_payload_hash_is_accepted() -> None:
    header = signed(payload_hash=hashlib.sha256(BODY).hexdigest().upper())
    assert vonage.verify_signed_webhook(header, BODY, SECRET, now=NOW)


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_a_short_signature_secret_still_verifies() -> None:
    # Vonage only recommends secrets of at least 32 bits; PyJWT warns when signing with one.
    assert vonage.verify_signed_webhook(signed(secret="abcd"), BODY, "abcd", now=NOW)


def test_iat_at_the_edges_of_the_window() -> None:
    assert vonage.verify_signed_webhook(signed(iat=NOW - 300), BODY, SECRET, now=NOW)
    assert vonage.verify_signed_webhook(signed(iat=NOW + 60), BODY, SECRET, now=NOW)
    assert vonage.verify_signed_webhook(signed(iat=NOW - 900), BODY, SECRET, now=NOW, max_age_s=1000)


def test_expected_api_key_and_application_bind_the_tenant() -> None:
    header = signed()
    assert vonage.verify_signed_webhook(header, BODY, SECRET, now=NOW, api_key=API_KEY, application_id=APP_ID)
    assert refused(header, api_key="zzzzzzz") == "api_key_mismatch"
    assert refused(header, application_id=str(uuid.uuid4())) == "application_mismatch"
    assert refused(signed(application_id=None), application_id=APP_ID) == "application_mismatch"


# --- signed webhooks: refused ----------------------------------------------------------------


def test_wrong_secret() -> None:
    assert refused(signed(secret="another-signature-secret-0123456789abcdef")) == "bad_signature"


def test_tampered_body_fails_payload_hash() -> None:
    tampered = body_of({**RECORD_EVENT, "recording_url": "https://api.nexmo.com/v1/files/other"})
    assert refused(signed(), tampered) == "payload_hash_mismatch"


def test_tampered_claims_fail_the_signature() -> None:
    token = signed().removeprefix("Bearer ")
    head, _, sig = token.split(".")
    forged = b64url(json.dumps(claims_for(b"something else")).encode())
    assert refused(f"Bearer {head}.{forged}.{sig}") == "bad_signature"


def test_expired_and_future_iat() -> None:
    assert refused(signed(iat=NOW - 301)) == "expired"
    assert refused(signed(iat=NOW - 86400)) == "expired"
    assert refused(signed(iat=NOW + 61)) == "not_yet_valid"
    assert refused(signed(exp=int(NOW) - 120)) == "expired"
    assert refused(signed(nbf=int(NOW) + 120)) == "not_yet_valid"


def test_missing_and_malformed_claims() -> None:
    token = jwt.encode({"payload_hash": hashlib.sha256(BODY).hexdigest()}, SECRET, algorithm="HS256")
    assert refused("Bearer " + token) == "missing_claim"  # no iat
    no_hash = claims_for(BODY)
    del no_hash["payload_hash"]
    assert refused("Bearer " + jwt.encode(no_hash, SECRET, algorithm="HS256")) == "missing_claim"
    assert refused(signed(payload_hash="not-a-hash")) == "malformed_token"
    assert refused(signed(iat="yesterday")) == "malformed_token"
    assert refused(signed(iat=True)) == "malformed_token"


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "missing_authorization"),
        ("", "missing_authorization"),
        ("   ", "missing_authorization"),
        ("Bearer", "malformed_authorization"),
        ("Bearer    ", "malformed_authorization"),
        ("Basic dXNlcjpwYXNz", "malformed_authorization"),
        ("Bearer abc", "malformed_token"),
        ("Bearer a.b", "malformed_token"),
        ("Bearer a.b.c.d", "malformed_token"),
        ("Bearer !!!.e30.sig", "malformed_token"),
        ("Bearer " + b64url(b"[1]") + ".e30.c2ln", "malformed_token"),
        ("Bearer " + b64url(b"not json") + ".e30.c2ln", "malformed_token"),
        ("Bearer " + "a" * 9000, "malformed_token"),
    ],
)
def test_missing_or_malformed_authorization(header: str | None, code: str) -> None:
    assert refused(header) == code


def test_alg_none_is_refused() -> None:
    token = jwt.encode(claims_for(BODY), None, algorithm="none")  # "<header>.<payload>." with no signature
    assert refused("Bearer " + token) == "alg_not_allowed"
    # the same, with the HS256 signature of the real token pasted on
    good = signed().removeprefix("Bearer ").split(".")
    none_head = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    assert refused(f"Bearer {none_head}.{good[1]}.{good[2]}") == "alg_not_allowed"


def test_rs256_token_where_hs256_is_expected(rsa_pem: str) -> None:
    token = jwt.encode(claims_for(BODY), rsa_pem, algorithm="RS256")
    assert refused("Bearer " + token) == "alg_not_allowed"


def test_rs256_header_over_an_hmac_made_with_the_secret_is_refused() -> None:
    # The key-confusion trick: claim RS256 but sign with HMAC. The algorithm is never taken from the token.
    head = b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims_for(BODY)).encode())
    sig = b64url(hmac.new(SECRET.encode(), f"{head}.{payload}".encode(), hashlib.sha256).digest())
    assert refused(f"Bearer {head}.{payload}.{sig}") == "alg_not_allowed"


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
def test_other_hmac_algorithms_are_refused(alg: str) -> None:
    token = jwt.encode(claims_for(BODY), SECRET + "-padded-for-" + alg * 8, algorithm=alg)
    assert refused("Bearer " + token) == "alg_not_allowed"


def test_lowercase_alg_and_crit_header_are_refused() -> None:
    payload = b64url(json.dumps(claims_for(BODY)).encode())
    for header, code in (
        ({"alg": "hs256"}, "alg_not_allowed"),
        ({"typ": "JWT"}, "alg_not_allowed"),
        ({"alg": "HS256", "crit": ["exp"]}, "malformed_token"),
    ):
        head = b64url(json.dumps(header).encode())
        assert refused(f"Bearer {head}.{payload}.c2ln") == code


def test_duplicate_claims_are_refused() -> None:
    head = b64url(b'{"alg":"HS256","typ":"JWT"}')
    raw = f'{{"iat":{int(NOW)},"payload_hash":"{hashlib.sha256(BODY).hexdigest()}","iat":1}}'
    payload = b64url(raw.encode())
    sig = b64url(hmac.new(SECRET.encode(), f"{head}.{payload}".encode(), hashlib.sha256).digest())
    assert refused(f"Bearer {head}.{payload}.{sig}") == "malformed_token"


def test_no_secret_configured_refuses_everything() -> None:
    with pytest.raises(SignatureError) as info:
        vonage.verify_signed_webhook(signed(), BODY, "", now=NOW)
    assert info.value.code == "not_configured"


def test_signature_error_carries_code_and_message() -> None:
    err = SignatureError("bad_signature", "nope")
    assert (err.code, err.message, str(err)) == ("bad_signature", "nope", "bad_signature: nope")


# --- the record event ------------------------------------------------------------------------


def test_the_documented_record_event_parses() -> None:
    event = vonage.parse_recording_event(BODY)
    assert event.provider == "vonage"
    assert event.recording_id == RECORD_EVENT["recording_uuid"]
    assert event.call_id == RECORD_EVENT["conversation_uuid"]
    assert event.media_url == RECORD_EVENT["recording_url"]
    assert event.started_at == datetime(2020, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert event.ended_at == datetime(2020, 1, 1, 12, 0, 12, 500000, tzinfo=UTC)
    assert event.event_at == datetime(2020, 1, 1, 12, 0, 13, tzinfo=UTC)
    assert event.duration_ms == 12500
    assert event.size_bytes == 12222
    assert event.from_number is None and event.to_number is None


def test_the_2016_sample_without_millis_and_optional_fields_missing() -> None:
    event = vonage.parse_recording_event(
        body_of(
            {
                "start_time": "2016-09-14T13:21:55Z",
                "recording_url": "https://api.nexmo.com/v1/files/d768cbb4-d68c-4ad0-8984-8222d2ccb6c5",
                "recording_uuid": "53383284-b36d-498c-b733-aa0234c2234",
                "conversation_uuid": "CON-ddddaaaa-bbbb-cccc-dddd-0123456789de",
            }
        )
    )
    assert event.started_at == datetime(2016, 9, 14, 13, 21, 55, tzinfo=UTC)
    assert event.ended_at is None and event.duration_ms is None and event.size_bytes is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[1, 2]", "JSON object"),
        (body_of({"status": "completed", "uuid": "x"}), "not a record event"),
        (body_of({**RECORD_EVENT, "recording_url": "ftp://api.nexmo.com/x"}), "recording_url"),
        (body_of({**RECORD_EVENT, "recording_url": "https://u:p@api.nexmo.com/x"}), "recording_url"),
        (body_of({**RECORD_EVENT, "recording_url": 5}), "recording_url"),
        (body_of({**RECORD_EVENT, "recording_uuid": ""}), "recording_uuid"),
        (body_of({**RECORD_EVENT, "recording_uuid": "../../etc"}), "recording_uuid"),
        (body_of({k: v for k, v in RECORD_EVENT.items() if k != "conversation_uuid"}), "conversation_uuid"),
        (body_of({**RECORD_EVENT, "size": -1}), "size"),
        (body_of({**RECORD_EVENT, "size": "12kB"}), "size"),
        (body_of({**RECORD_EVENT, "size": True}), "size"),
        (body_of({**RECORD_EVENT, "start_time": "yesterday"}), "start_time"),
        (body_of({**RECORD_EVENT, "end_time": "2019-12-31T00:00:00Z"}), "before start_time"),
        (b'{"recording_url":"https://a.example/x","recording_url":"https://b.example/y"}', "duplicate"),
        (b"{" + b'"a":"' + b"x" * 70000 + b'"}', "too large"),
    ],
)
def test_bad_record_events_are_refused_with_a_clear_message(body: bytes, message: str) -> None:
    with pytest.raises(vonage.InvalidEvent, match=message):
        vonage.parse_recording_event(body)
    assert issubclass(vonage.InvalidEvent, ValueError)


# --- application JWT, API URLs ---------------------------------------------------------------


def test_application_jwt_is_rs256_with_the_documented_claims(rsa_pem: str) -> None:
    token = vonage.application_jwt(APP_ID, rsa_pem, now=NOW, ttl_s=120)
    public = serialization.load_pem_private_key(rsa_pem.encode(), password=None).public_key()
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    claims = jwt.decode(token, public, algorithms=["RS256"], options={"verify_exp": False})
    assert claims["application_id"] == APP_ID
    assert claims["iat"] == int(NOW) and claims["exp"] == int(NOW) + 120
    uuid.UUID(claims["jti"])
    assert vonage.application_jwt(APP_ID, rsa_pem, now=NOW) != token  # a fresh jti every time


def test_application_jwt_matches_what_the_vonage_sdk_sends(rsa_pem: str) -> None:
    sdk_token = Auth(application_id=APP_ID, private_key=rsa_pem).generate_application_jwt().decode()
    ours = vonage.auth_headers(APP_ID, rsa_pem)["Authorization"].removeprefix("Bearer ")
    public = serialization.load_pem_private_key(rsa_pem.encode(), password=None).public_key()
    sdk_claims = jwt.decode(sdk_token, public, algorithms=["RS256"])
    our_claims = jwt.decode(ours, public, algorithms=["RS256"])
    assert set(our_claims) == set(sdk_claims) == {"application_id", "iat", "jti", "exp"}
    assert jwt.get_unverified_header(ours)["alg"] == jwt.get_unverified_header(sdk_token)["alg"]
    assert our_claims["application_id"] == sdk_claims["application_id"]


def test_application_jwt_refuses_bad_keys_and_ids(rsa_pem: str) -> None:
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        .decode()
    )
    with pytest.raises(ValueError, match="RSA"):
        vonage.application_jwt(APP_ID, ec_pem)
    with pytest.raises(ValueError, match="PEM"):
        vonage.application_jwt(APP_ID, "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ValueError, match="application id"):
        vonage.application_jwt("", rsa_pem)
    with pytest.raises(ValueError, match="ttl_s"):
        vonage.application_jwt(APP_ID, rsa_pem, ttl_s=0)
    key = vonage.load_private_key(rsa_pem)
    assert jwt.get_unverified_header(vonage.application_jwt(APP_ID, key))["alg"] == "RS256"


def test_api_urls() -> None:
    conv = RECORD_EVENT["conversation_uuid"]
    assert vonage.call_lookup_url(conv) == f"https://api.nexmo.com/v1/calls?conversation_uuid={conv}"
    assert vonage.call_url("63f61863-4a51-4f6b-86e1-46edebcf9356", api_base="https://api-eu.vonage.com/") == (
        "https://api-eu.vonage.com/v1/calls/63f61863-4a51-4f6b-86e1-46edebcf9356"
    )
    assert not hasattr(vonage, "api_origin")  # API calls never go to the recording_url's origin
    with pytest.raises(ValueError):
        vonage.call_lookup_url("CON-x/../../v2/applications")
    with pytest.raises(ValueError):
        vonage.call_url("x", api_base="https://api.nexmo.com/v1")
    assert vonage.RECORDING_DELETE_SUPPORTED is False
    assert vonage.PROVIDER_RETENTION_DAYS == 30


def test_parties_from_a_conversation_listing_and_from_one_call() -> None:
    listing = {
        "count": 2,
        "_embedded": {
            "calls": [
                {
                    "uuid": "leg-b",
                    "start_time": "2020-01-01T12:00:05.000Z",
                    "from": {"type": "phone", "number": "447700900000"},
                    "to": {"type": "phone", "number": "447700900111"},
                },
                {
                    "uuid": "leg-a",
                    "start_time": "2020-01-01T12:00:00.000Z",
                    "from": {"type": "phone", "number": "14155550100"},
                    "to": {"type": "phone", "number": "447700900000"},
                },
            ]
        },
    }
    assert vonage.parties_from_calls(listing) == ("14155550100", "447700900000")
    one = {
        "uuid": "leg-a",
        "from": {"type": "phone", "number": "14155550100"},
        "to": {"type": "sip", "uri": "sip:a@b"},
    }
    assert vonage.parties_from_calls(one) == ("14155550100", "sip:a@b")
    assert vonage.parties_from_calls({"_embedded": {"calls": []}}) == (None, None)
    assert vonage.parties_from_calls({}) == (None, None)
