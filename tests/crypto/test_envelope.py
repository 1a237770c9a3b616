from __future__ import annotations

import errno
import gc
import io
import os
from pathlib import Path
from typing import Any, BinaryIO, cast

import pytest
import tink
from tink import aead

from callrec.crypto.envelope import (
    CHUNK_SIZE,
    DecryptionError,
    associated_data,
    decrypt_stream,
    encrypt_stream,
    keyed_hash,
    new_recording_key,
    open_sealed,
    seal,
    unwrap_key,
    wrap_key,
)

SEGMENT = 1 << 20  # AES256_GCM_HKDF_1MB ciphertext segment size


@pytest.fixture(scope="module")
def payload() -> bytes:
    return os.urandom(5 * 1024 * 1024 + 12345)  # ~5 MB, not a multiple of the segment size


def _kek() -> aead.Aead:
    return tink.new_keyset_handle(aead.aead_key_templates.AES256_GCM).primitive(aead.Aead)


def _encrypt(
    data: bytes, handle: tink.KeysetHandle, *, tenant: str = "acme", recording_id: str = "rec-1"
) -> bytes:
    dst = io.BytesIO()
    n = encrypt_stream(io.BytesIO(data), dst, handle, tenant=tenant, recording_id=recording_id)
    assert n == len(data)
    assert not dst.closed
    return dst.getvalue()


def _decrypt(
    ct: bytes, handle: tink.KeysetHandle, *, tenant: str = "acme", recording_id: str = "rec-1"
) -> bytes:
    with decrypt_stream(io.BytesIO(ct), handle, tenant=tenant, recording_id=recording_id) as plain:
        return plain.read()


# --- streams -------------------------------------------------------------------------------


def test_round_trip_large(payload: bytes) -> None:
    handle = new_recording_key()
    ct = _encrypt(payload, handle)
    assert len(ct) > len(payload)
    assert payload[:4096] not in ct
    assert _decrypt(ct, handle) == payload


def test_round_trip_empty() -> None:
    handle = new_recording_key()
    ct = _encrypt(b"", handle)
    assert ct  # header and one authenticated (empty) final segment
    assert _decrypt(ct, handle) == b""


def test_round_trip_files_in_small_reads(tmp_path: Path, payload: bytes) -> None:
    handle = new_recording_key()
    (tmp_path / "plain").write_bytes(payload)
    with open(tmp_path / "plain", "rb") as src, open(tmp_path / "ct", "wb") as dst:
        n = encrypt_stream(src, dst, handle, tenant="acme", recording_id="r", chunk_size=65536)
        assert n == len(payload)
        assert not dst.closed
        dst.write(b"")  # still usable by its owner
    out = bytearray()
    with decrypt_stream(open(tmp_path / "ct", "rb"), handle, tenant="acme", recording_id="r") as plain:
        while chunk := plain.read(100_000):
            out += chunk
    assert bytes(out) == payload


def test_plaintext_reader_semantics(payload: bytes) -> None:
    handle = new_recording_key()
    ct = _encrypt(payload, handle)
    # decrypt_stream is typed BinaryIO; the object is an io.BufferedIOBase
    stream = decrypt_stream(io.BytesIO(ct), handle, tenant="acme", recording_id="rec-1")
    with cast(io.BufferedIOBase, stream) as plain:
        assert plain.read(0) == b""
        assert plain.read(10) == payload[:10]
        assert plain.read(2 * SEGMENT) == payload[10 : 10 + 2 * SEGMENT]  # spans segments, not short
        one = plain.read1(SEGMENT)
        assert 0 < len(one) <= SEGMENT
        pos = 10 + 2 * SEGMENT + len(one)
        assert one == payload[10 + 2 * SEGMENT : pos]
        buf = bytearray(1000)
        assert plain.readinto(buf) == 1000
        assert bytes(buf) == payload[pos : pos + 1000]
        assert plain.read() == payload[pos + 1000 :]
        assert plain.read(5) == b""
        assert plain.read1(5) == b""
    with pytest.raises(ValueError):
        plain.read(1)


def test_read1_streams_everything(payload: bytes) -> None:
    handle = new_recording_key()
    ct = _encrypt(payload, handle)
    out = bytearray()
    stream = decrypt_stream(io.BytesIO(ct), handle, tenant="acme", recording_id="rec-1")
    with cast(io.BufferedIOBase, stream) as plain:
        while part := plain.read1():
            out += part
    assert bytes(out) == payload


def test_dst_stays_open_and_keeps_its_prefix() -> None:
    handle = new_recording_key()
    dst = io.BytesIO()
    dst.write(b"prefix")
    encrypt_stream(io.BytesIO(b"hello"), dst, handle, tenant="acme", recording_id="r")
    assert not dst.closed
    ct = dst.getvalue()[len(b"prefix") :]
    assert _decrypt(ct, handle, recording_id="r") == b"hello"


def test_closing_plaintext_closes_source() -> None:
    handle = new_recording_key()
    src = io.BytesIO(_encrypt(b"abc", handle))
    plain = decrypt_stream(src, handle, tenant="acme", recording_id="rec-1")
    plain.close()
    assert src.closed


@pytest.mark.parametrize(
    ("tenant", "recording_id"),
    [("other", "rec-1"), ("acme", "rec-2"), ("acm", "erec-1"), ("acme", "rec-1 ")],
    ids=["tenant", "recording", "boundary-shift", "trailing-space"],
)
def test_misplaced_ciphertext_does_not_decrypt(payload: bytes, tenant: str, recording_id: str) -> None:
    handle = new_recording_key()
    ct = _encrypt(payload[:100_000], handle)
    with pytest.raises(DecryptionError):
        _decrypt(ct, handle, tenant=tenant, recording_id=recording_id)


def test_other_recording_key_does_not_decrypt() -> None:
    ct = _encrypt(b"secret call", new_recording_key())
    with pytest.raises(DecryptionError):
        _decrypt(ct, new_recording_key())


@pytest.mark.parametrize("where", ["header", "first-segment", "middle-segment", "last-byte"])
def test_flipped_byte_is_detected(payload: bytes, where: str) -> None:
    handle = new_recording_key()
    ct = bytearray(_encrypt(payload, handle))
    index = {
        "header": 3,
        "first-segment": 1000,
        "middle-segment": 2 * SEGMENT + 17,
        "last-byte": len(ct) - 1,
    }[where]
    ct[index] ^= 0x01
    with pytest.raises(DecryptionError):
        _decrypt(bytes(ct), handle)


@pytest.mark.parametrize("keep", ["minus-one", "segment-boundary", "header-only", "nothing"])
def test_truncation_is_detected(payload: bytes, keep: str) -> None:
    handle = new_recording_key()
    ct = _encrypt(payload, handle)
    length = {
        "minus-one": len(ct) - 1,
        "segment-boundary": 3 * SEGMENT,
        "header-only": 40,
        "nothing": 0,
    }[keep]
    with pytest.raises(DecryptionError):
        _decrypt(ct[:length], handle)


def test_appended_bytes_are_detected() -> None:
    handle = new_recording_key()
    with pytest.raises(DecryptionError):
        _decrypt(_encrypt(b"call audio", handle) + b"\x00", handle)


def test_tampered_late_segment_fails_after_authentic_ones(payload: bytes) -> None:
    handle = new_recording_key()
    ct = bytearray(_encrypt(payload, handle))
    ct[4 * SEGMENT + 5] ^= 0x80
    with decrypt_stream(io.BytesIO(bytes(ct)), handle, tenant="acme", recording_id="rec-1") as plain:
        assert plain.read(SEGMENT) == payload[:SEGMENT]
        with pytest.raises(DecryptionError):
            plain.read()


class _FailingReader(io.RawIOBase):
    """Serves ``data`` and then raises ``error`` instead of reaching EOF."""

    def __init__(self, data: bytes, error: BaseException) -> None:
        super().__init__()
        self._data = io.BytesIO(data)
        self._error = error

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = self._data.readinto(b)
        if not n:
            raise self._error
        return n


class _FullDisk(io.RawIOBase):
    def __init__(self, room: int) -> None:
        super().__init__()
        self.data = bytearray()
        self._room = room

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        if len(self.data) + len(b) > self._room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.data += b
        return len(b)


def test_failed_source_leaves_an_unfinished_ciphertext(payload: bytes) -> None:
    handle = new_recording_key()
    dst = io.BytesIO()
    src = _FailingReader(payload[: 3 * SEGMENT], ConnectionResetError("provider hung up"))
    with pytest.raises(ConnectionResetError):
        encrypt_stream(cast(BinaryIO, src), dst, handle, tenant="acme", recording_id="rec-1")
    gc.collect()  # a finaliser closing Tink's stream must not finish it either
    assert not dst.closed
    partial = dst.getvalue()
    assert partial  # complete segments were written
    with pytest.raises(DecryptionError):
        _decrypt(partial, handle)


def test_destination_error_is_reported_as_itself() -> None:
    dst = _FullDisk(room=2 * SEGMENT)
    with pytest.raises(OSError) as info:
        encrypt_stream(
            io.BytesIO(os.urandom(4 * SEGMENT)),
            cast(BinaryIO, dst),
            new_recording_key(),
            tenant="acme",
            recording_id="rec-1",
        )
    assert info.value.errno == errno.ENOSPC
    assert not isinstance(info.value, tink.TinkError)


def test_source_error_while_decrypting_is_not_called_tampering(payload: bytes) -> None:
    handle = new_recording_key()
    ct = _encrypt(payload, handle)
    src = _FailingReader(ct[: 2 * SEGMENT + 100], ConnectionResetError("storage hung up"))
    with decrypt_stream(cast(BinaryIO, src), handle, tenant="acme", recording_id="rec-1") as plain:
        with pytest.raises(ConnectionResetError):
            plain.read()


def test_chunk_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        encrypt_stream(
            io.BytesIO(b"x"), io.BytesIO(), new_recording_key(), tenant="a", recording_id="r", chunk_size=0
        )


def test_empty_ids_are_refused() -> None:
    with pytest.raises(ValueError):
        encrypt_stream(io.BytesIO(b"x"), io.BytesIO(), new_recording_key(), tenant="", recording_id="r")


def test_chunk_size_constant() -> None:
    assert CHUNK_SIZE == 1 << 20


# --- wrapped keys --------------------------------------------------------------------------


def test_wrap_unwrap_round_trip(payload: bytes) -> None:
    kek = _kek()
    handle = new_recording_key()
    ct = _encrypt(payload[:200_000], handle)
    wrapped = wrap_key(handle, kek, tenant="acme", recording_id="rec-1")
    assert isinstance(wrapped, bytes)
    unwrapped = unwrap_key(wrapped, kek, tenant="acme", recording_id="rec-1")
    assert _decrypt(ct, unwrapped) == payload[:200_000]


@pytest.mark.parametrize(
    ("tenant", "recording_id"), [("globex", "rec-1"), ("acme", "rec-2")], ids=["tenant", "recording"]
)
def test_unwrap_elsewhere_fails(tenant: str, recording_id: str) -> None:
    kek = _kek()
    wrapped = wrap_key(new_recording_key(), kek, tenant="acme", recording_id="rec-1")
    with pytest.raises(DecryptionError):
        unwrap_key(wrapped, kek, tenant=tenant, recording_id=recording_id)


def test_unwrap_under_another_tenants_kek_fails() -> None:
    wrapped = wrap_key(new_recording_key(), _kek(), tenant="acme", recording_id="rec-1")
    with pytest.raises(DecryptionError):
        unwrap_key(wrapped, _kek(), tenant="acme", recording_id="rec-1")


@pytest.mark.parametrize("mangle", ["flip-last", "truncate", "garbage", "empty"])
def test_damaged_wrapped_key_fails(mangle: str) -> None:
    kek = _kek()
    wrapped = wrap_key(new_recording_key(), kek, tenant="acme", recording_id="rec-1")
    damaged = {
        "flip-last": wrapped[:-1] + bytes([wrapped[-1] ^ 1]),
        "truncate": wrapped[: len(wrapped) // 2],
        "garbage": os.urandom(len(wrapped)),
        "empty": b"",
    }[mangle]
    with pytest.raises(DecryptionError):
        unwrap_key(damaged, kek, tenant="acme", recording_id="rec-1")


def test_wrapped_key_does_not_open_as_sealed_value() -> None:
    kek = _kek()
    wrapped = wrap_key(new_recording_key(), kek, tenant="acme", recording_id="rec-1")
    from tink.proto import tink_pb2

    inner = tink_pb2.EncryptedKeyset.FromString(wrapped).encrypted_keyset
    with pytest.raises(DecryptionError):
        open_sealed(kek, inner, context="acme")


# --- small values --------------------------------------------------------------------------


def test_seal_round_trip_and_context() -> None:
    kek = _kek()
    sealed = seal(kek, b"+442071838750", context="recording:rec-1:caller")
    assert b"+442071838750" not in sealed
    assert open_sealed(kek, sealed, context="recording:rec-1:caller") == b"+442071838750"
    with pytest.raises(DecryptionError):
        open_sealed(kek, sealed, context="recording:rec-2:caller")
    with pytest.raises(DecryptionError):
        open_sealed(_kek(), sealed, context="recording:rec-1:caller")
    with pytest.raises(DecryptionError):
        open_sealed(kek, sealed[:-1] + bytes([sealed[-1] ^ 1]), context="recording:rec-1:caller")


def test_seal_is_randomised() -> None:
    kek = _kek()
    assert seal(kek, b"x", context="c") != seal(kek, b"x", context="c")


def test_keyed_hash() -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    assert keyed_hash(k1, "+442071838750") == keyed_hash(k1, "+442071838750")
    assert len(keyed_hash(k1, "+442071838750")) == 32
    assert keyed_hash(k1, "+442071838750") != keyed_hash(k2, "+442071838750")
    assert keyed_hash(k1, "+442071838750") != keyed_hash(k1, "+442071838751")
    with pytest.raises(ValueError):
        keyed_hash(b"short", "+442071838750")


def test_associated_data_is_unambiguous() -> None:
    assert associated_data("l", "ab", "c") != associated_data("l", "a", "bc")
    assert associated_data("l", "a", "") != associated_data("l", "a")
    assert associated_data("l", "x") != associated_data("m", "x")
    assert associated_data("l", "é") == associated_data("l", "é".encode())
