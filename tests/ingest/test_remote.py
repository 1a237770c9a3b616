"""Where each provider's requests go (callrec.ingest.remote): API calls to the tenant's configured
``*_api_base`` whatever origin the callback's media URL names; the media URL itself is fetched
only after the worker's allow-list check (tests/ingest/test_media_hosts.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from callrec.config import TenantConfig, config_from_mapping
from callrec.ingest.remote import PROVIDERS

TWILIO_SID = "AC" + "0123456789abcdef" * 2
CALL_SID = "CA" + "1" * 32
RECORDING_SID = "RE" + "2" * 32
# Allowed for media in some deployment, and chosen by whoever wrote the callback.
CALLBACK_ORIGIN = "https://api-eu-3.vonage.com:8443"


@pytest.fixture
def tenant(tmp_path: Path) -> TenantConfig:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "vonage.key"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    cfg = config_from_mapping(
        {
            "tenants": {
                "acme": {
                    "twilio_account_sid": TWILIO_SID,
                    "twilio_auth_token": "token",
                    "vonage_signature_secret": "s",
                    "vonage_application_id": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
                    "vonage_private_key_path": str(pem),
                    "plivo_auth_id": "MAXXXXXXXXXXXXXXXXXX",
                    "plivo_auth_token": "token",
                }
            }
        }
    )
    return cfg.tenants["acme"]


def payload(provider: str) -> dict[str, Any]:
    return {
        "provider": provider,
        "call_id": CALL_SID,
        "provider_recording_id": RECORDING_SID,
        "media_url": f"{CALLBACK_ORIGIN}/v1/files/{RECORDING_SID}",
        "account_sid": TWILIO_SID,
    }


def test_twilio_calls_and_deletion_use_twilio_api_base(tenant: TenantConfig) -> None:
    twilio = PROVIDERS["twilio"]
    account = f"https://api.twilio.com/2010-04-01/Accounts/{TWILIO_SID}"
    assert twilio.parties_request(payload("twilio"), tenant).url == f"{account}/Calls/{CALL_SID}.json"
    deletion = twilio.delete_request(payload("twilio"), tenant)
    assert deletion is not None and deletion.url == f"{account}/Recordings/{RECORDING_SID}.json"

    regional = replace(tenant, twilio_api_base="https://api.dublin.ie1.twilio.com")
    assert twilio.parties_request(payload("twilio"), regional).url.startswith(
        "https://api.dublin.ie1.twilio.com/2010-04-01/"
    )


def test_vonage_call_lookup_uses_vonage_api_base(tenant: TenantConfig) -> None:
    lookup = PROVIDERS["vonage"].parties_request(payload("vonage"), tenant)
    assert lookup.url == f"https://api.nexmo.com/v1/calls?conversation_uuid={CALL_SID}"
    assert lookup.headers["Authorization"].startswith("Bearer ")
    eu = replace(tenant, vonage_api_base="https://api-eu-3.vonage.com")
    assert (
        PROVIDERS["vonage"]
        .parties_request(payload("vonage"), eu)
        .url.startswith("https://api-eu-3.vonage.com/v1/calls?")
    )


def test_plivo_calls_and_deletion_use_plivo_api_base(tenant: TenantConfig) -> None:
    plivo = PROVIDERS["plivo"]
    account = "https://api.plivo.com/v1/Account/MAXXXXXXXXXXXXXXXXXX"
    assert plivo.parties_request(payload("plivo"), tenant).url == f"{account}/Call/{CALL_SID}/"
    deletion = plivo.delete_request(payload("plivo"), tenant)
    assert deletion is not None and deletion.url == f"{account}/Recording/{RECORDING_SID}/"


@pytest.mark.parametrize("name", ["twilio", "vonage", "plivo"])
def test_only_the_media_request_names_the_callbacks_origin(tenant: TenantConfig, name: str) -> None:
    """The media URL is the callback's (the worker checks it against media_hosts first); every
    other request carrying credentials stays on a configured origin."""
    provider = PROVIDERS[name]
    assert provider.media_request(payload(name), tenant).url == payload(name)["media_url"]
    others = [provider.parties_request(payload(name), tenant), provider.delete_request(payload(name), tenant)]
    for request in others:
        if request is not None:
            assert not request.url.startswith(CALLBACK_ORIGIN), request.url
            assert request.headers.get("Authorization")


def test_path_parts_from_a_callback_are_quoted(tenant: TenantConfig) -> None:
    odd = {**payload("twilio"), "call_id": "CA1/../../Accounts/x?y#z"}
    url = PROVIDERS["twilio"].parties_request(odd, tenant).url
    assert url.startswith(f"https://api.twilio.com/2010-04-01/Accounts/{TWILIO_SID}/Calls/CA1%2F..%2F")
    assert "?" not in url and "#" not in url
