from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse, HTTPHeaders
from botocore.config import Config as BotoConfig
from tink.proto import tink_pb2

from callrec.config import KeysConfig
from callrec.crypto.envelope import (
    DecryptionError,
    new_recording_key,
    open_sealed,
    seal,
    unwrap_key,
    wrap_key,
)
from callrec.crypto.keys import AwsKmsKeyProvider, KeyProviderError, LocalKeyProvider, open_key_provider

LOCAL = KeysConfig(provider="local")


def _local(path: Path) -> LocalKeyProvider:
    provider = open_key_provider(LOCAL, keyring_path=path)
    assert isinstance(provider, LocalKeyProvider)
    return provider


def _primary_key_id(path: Path, tenant: str) -> int:
    return int(json.loads(path.read_text())["tenants"][tenant]["primaryKeyId"])


def _tink_key_id(ciphertext: bytes) -> int:
    """Tink's TINK output prefix: 0x01, then the 4-byte big-endian id of the key used."""
    assert ciphertext[0] == 1
    return int.from_bytes(ciphertext[1:5], "big")


def _wrapping_key_id(wrapped: bytes) -> int:
    return _tink_key_id(tink_pb2.EncryptedKeyset.FromString(wrapped).encrypted_keyset)


# --- local keyring -------------------------------------------------------------------------


def test_keyring_created_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "data" / "keyring.json"
    provider = _local(path)
    assert not path.exists()  # nothing is written until a key is needed
    provider.ensure_tenant("acme")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    doc = json.loads(path.read_text())
    assert doc["version"] == 1
    keyset = doc["tenants"]["acme"]
    aes_gcm = "type.googleapis.com/google.crypto.tink.AesGcmKey"
    assert [k["keyData"]["typeUrl"] for k in keyset["key"]] == [aes_gcm]
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_ensure_tenant_is_idempotent_and_keys_differ_per_tenant(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    provider = _local(path)
    provider.ensure_tenant("acme")
    first = path.read_bytes()
    provider.ensure_tenant("acme")
    assert path.read_bytes() == first
    provider.ensure_tenant("globex")
    sealed = seal(provider.kek("acme"), b"+15551234567", context="c")
    assert open_sealed(provider.kek("acme"), sealed, context="c") == b"+15551234567"
    with pytest.raises(DecryptionError):
        open_sealed(provider.kek("globex"), sealed, context="c")


def test_unknown_tenant_has_no_key(tmp_path: Path) -> None:
    provider = _local(tmp_path / "keyring.json")
    with pytest.raises(KeyProviderError, match="tenant 'nobody'"):
        provider.kek("nobody")
    provider.ensure_tenant("acme")
    with pytest.raises(KeyProviderError, match="tenant 'nobody'"):
        provider.kek("nobody")
    with pytest.raises(KeyProviderError, match="tenant 'nobody'"):
        provider.rotate("nobody")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_keyring_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "keyring.json"
    _local(path).ensure_tenant("acme")
    path.chmod(mode)
    with pytest.raises(KeyProviderError, match=str(path)):
        open_key_provider(LOCAL, keyring_path=path)


def test_keyring_loosened_while_running_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    provider = _local(path)
    provider.ensure_tenant("acme")
    provider.kek("acme")
    path.chmod(0o644)
    with pytest.raises(KeyProviderError, match="chmod 600"):
        provider.kek("acme")
    with pytest.raises(KeyProviderError):
        provider.rotate("acme")


@pytest.mark.parametrize(
    "content", [b"not json", b"[]", b'{"version": 2, "tenants": {}}', b'{"version": 1, "tenants": []}']
)
def test_malformed_keyring_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "keyring.json"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyProviderError, match=str(path)):
        _local(path).kek("acme")


def test_rotation_keeps_old_wraps_readable_and_new_wraps_use_new_primary(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    provider = _local(path)
    provider.ensure_tenant("acme")
    old_primary = _primary_key_id(path, "acme")
    handle = new_recording_key()
    old_wrapped = wrap_key(handle, provider.kek("acme"), tenant="acme", recording_id="rec-1")
    old_sealed = seal(provider.kek("acme"), b"+15551234567", context="rec-1")
    assert _wrapping_key_id(old_wrapped) == old_primary

    description = provider.rotate("acme")

    new_primary = _primary_key_id(path, "acme")
    assert new_primary != old_primary
    assert str(new_primary) in description
    assert "acme" in description
    assert len(json.loads(path.read_text())["tenants"]["acme"]["key"]) == 2
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    kek = provider.kek("acme")
    unwrap_key(old_wrapped, kek, tenant="acme", recording_id="rec-1")
    assert open_sealed(kek, old_sealed, context="rec-1") == b"+15551234567"
    new_wrapped = wrap_key(handle, kek, tenant="acme", recording_id="rec-1")
    assert _wrapping_key_id(new_wrapped) == new_primary
    assert _tink_key_id(seal(kek, b"x", context="c")) == new_primary


def test_rotation_leaves_other_tenants_alone(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    provider = _local(path)
    provider.ensure_tenant("acme")
    provider.ensure_tenant("globex")
    before = json.loads(path.read_text())["tenants"]["globex"]
    provider.rotate("acme")
    assert json.loads(path.read_text())["tenants"]["globex"] == before


def test_other_process_rotation_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    server = _local(path)
    server.ensure_tenant("acme")
    old_sealed = seal(server.kek("acme"), b"value", context="c")

    cli = _local(path)  # another process: its own instance and cache
    cli.rotate("acme")
    new_primary = _primary_key_id(path, "acme")

    kek = server.kek("acme")
    assert _tink_key_id(seal(kek, b"value", context="c")) == new_primary
    assert open_sealed(kek, old_sealed, context="c") == b"value"
    # and the reverse: a tenant created by the server is visible to the CLI
    server.ensure_tenant("globex")
    cli.kek("globex")


def test_concurrent_processes_lose_no_update(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    _local(path).ensure_tenant("acme")
    script = (
        "import sys; from pathlib import Path\n"
        "from callrec.crypto.keys import LocalKeyProvider\n"
        "p = LocalKeyProvider(Path(sys.argv[1]))\n"
        "for _ in range(5):\n"
        "    p.rotate('acme')\n"
        "p.ensure_tenant('t-' + sys.argv[2])\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(path), str(i)]) for i in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    doc = json.loads(path.read_text())
    assert len(doc["tenants"]["acme"]["key"]) == 1 + 4 * 5
    assert sorted(doc["tenants"]) == ["acme", "t-0", "t-1", "t-2", "t-3"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_threads_share_a_provider_during_rotation(tmp_path: Path) -> None:
    provider = _local(tmp_path / "keyring.json")
    provider.ensure_tenant("acme")
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for i in range(200):
                kek = provider.kek("acme")
                assert open_sealed(kek, seal(kek, b"%d" % i, context="c"), context="c") == b"%d" % i
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(5):
        provider.rotate("acme")
    for t in threads:
        t.join()
    assert errors == []


def test_keyring_path_from_config_is_honoured(tmp_path: Path) -> None:
    provider = open_key_provider(KeysConfig(provider="local"), keyring_path=tmp_path / "k" / "ring.json")
    provider.ensure_tenant("default")
    assert (tmp_path / "k" / "ring.json").exists()


def test_unknown_provider_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyProviderError):
        open_key_provider(KeysConfig(provider="vault"), keyring_path=tmp_path / "k.json")


# --- AWS KMS through moto over HTTP ----------------------------------------------------------


@pytest.fixture
def kms_key(moto_endpoint: str) -> str:
    kms = boto3.client("kms", region_name="us-east-1", endpoint_url=moto_endpoint)
    return kms.create_key(Description="callrec test KEK")["KeyMetadata"]["Arn"]


def _kms(arn: str, endpoint: str) -> AwsKmsKeyProvider:
    keys = KeysConfig(provider="aws-kms", kms_key_id=arn, kms_endpoint_url=endpoint, kms_region="us-east-1")
    provider = open_key_provider(keys, keyring_path=Path("/nonexistent/unused.json"))
    assert isinstance(provider, AwsKmsKeyProvider)
    return provider


def test_kms_round_trip_and_tenant_separation(moto_endpoint: str, kms_key: str) -> None:
    provider = _kms(kms_key, moto_endpoint)
    provider.ensure_tenant("acme")  # no-op
    handle = new_recording_key()
    wrapped = wrap_key(handle, provider.kek("acme"), tenant="acme", recording_id="rec-1")
    unwrapped = unwrap_key(wrapped, provider.kek("acme"), tenant="acme", recording_id="rec-1")
    assert unwrapped.keyset_info() == handle.keyset_info()
    with pytest.raises(DecryptionError):
        unwrap_key(wrapped, provider.kek("acme"), tenant="acme", recording_id="rec-2")
    with pytest.raises(DecryptionError):
        unwrap_key(wrapped, provider.kek("globex"), tenant="acme", recording_id="rec-1")

    sealed = seal(provider.kek("acme"), b"+15551234567", context="rec-1:caller")
    assert open_sealed(provider.kek("acme"), sealed, context="rec-1:caller") == b"+15551234567"
    # same KMS key, same context, other tenant: bound apart by the encryption context
    with pytest.raises(DecryptionError):
        open_sealed(provider.kek("globex"), sealed, context="rec-1:caller")


def test_kms_rotation_on_demand_keeps_old_wraps(moto_endpoint: str, kms_key: str) -> None:
    provider = _kms(kms_key, moto_endpoint)
    handle = new_recording_key()
    wrapped = wrap_key(handle, provider.kek("acme"), tenant="acme", recording_id="rec-1")

    description = provider.rotate("acme")

    assert "on demand" in description
    assert kms_key in description
    kms = boto3.client("kms", region_name="us-east-1", endpoint_url=moto_endpoint)
    rotations = kms.list_key_rotations(KeyId=kms_key)["Rotations"]
    assert [r["RotationType"] for r in rotations] == ["ON_DEMAND"]
    unwrap_key(wrapped, provider.kek("acme"), tenant="acme", recording_id="rec-1")


def test_kms_rotation_by_alias_arn(moto_endpoint: str, kms_key: str) -> None:
    kms = boto3.client("kms", region_name="us-east-1", endpoint_url=moto_endpoint)
    alias = f"alias/callrec-{os.urandom(4).hex()}"
    kms.create_alias(AliasName=alias, TargetKeyId=kms_key)
    alias_arn = kms_key.split(":key/")[0] + ":" + alias
    provider = _kms(alias_arn, moto_endpoint)
    sealed = seal(provider.kek("acme"), b"v", context="c")
    assert kms_key in provider.rotate("acme")  # resolved to the key ARN that KMS requires
    assert open_sealed(provider.kek("acme"), sealed, context="c") == b"v"


def test_kms_rotation_falls_back_to_automatic(moto_endpoint: str, kms_key: str) -> None:
    client = boto3.client("kms", region_name="us-east-1", endpoint_url=moto_endpoint)

    def refuse(**_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        error = {"Code": "UnsupportedOperationException", "Message": "imported key material"}
        return AWSResponse(moto_endpoint, 400, HTTPHeaders(), None), {
            "Error": error,
            "ResponseMetadata": {"HTTPStatusCode": 400},
        }

    # A before-call handler that returns a response short-circuits the request; the stubs
    # only know handlers that return None.
    client.meta.events.register("before-call.kms.RotateKeyOnDemand", refuse)  # type: ignore[arg-type]
    provider = AwsKmsKeyProvider(key_arn=kms_key, client=client)
    description = provider.rotate("acme")
    assert "UnsupportedOperationException" in description
    assert "automatic" in description
    assert client.get_key_rotation_status(KeyId=kms_key)["KeyRotationEnabled"] is True


def test_kms_unknown_key_is_a_provider_error_not_a_decryption_error(moto_endpoint: str, kms_key: str) -> None:
    missing = kms_key.rsplit("/", 1)[0] + "/00000000-0000-0000-0000-000000000000"
    provider = _kms(missing, moto_endpoint)
    with pytest.raises(KeyProviderError, match="NotFoundException"):
        seal(provider.kek("acme"), b"v", context="c")
    with pytest.raises(KeyProviderError):
        provider.rotate("acme")


def test_kms_unreachable_is_a_provider_error(kms_key: str) -> None:
    client = boto3.client(
        "kms",
        region_name="us-east-1",
        endpoint_url="http://127.0.0.1:9",  # discard port: nothing listens
        config=BotoConfig(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=2),
    )
    provider = AwsKmsKeyProvider(key_arn=kms_key, client=client)
    wrapped = b"\x00" * 64
    with pytest.raises(KeyProviderError, match="EndpointConnectionError"):
        open_sealed(provider.kek("acme"), wrapped, context="c")
    with pytest.raises(KeyProviderError):
        wrap_key(new_recording_key(), provider.kek("acme"), tenant="acme", recording_id="r")


def test_kms_config_requires_an_arn() -> None:
    with pytest.raises(KeyProviderError, match="kms_key_id"):
        open_key_provider(KeysConfig(provider="aws-kms", kms_key_id="alias/x"), keyring_path=Path("/x"))
