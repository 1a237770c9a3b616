"""Per-recording envelope encryption (crypto-shredding).

Every recording is encrypted with its own Tink streaming-AEAD keyset
(``AES256_GCM_HKDF_1MB``: AES-256-GCM segments of 1 MiB, per-stream keys derived with
HKDF-SHA256, see https://developers.google.com/tink/streaming-aead/aes_gcm_hkdf_streaming).
That keyset is stored only in wrapped form, encrypted under the tenant's key-encryption
key (KEK, :mod:`callrec.crypto.keys`). Destroying the wrapped key makes the recording
unreadable everywhere it was copied, backups included: that is how erasure under
GDPR Art. 17 reaches copies we cannot delete one by one.

Associated data binds every ciphertext to where it belongs, so that a ciphertext (or a
wrapped key) copied to another recording or another tenant fails to decrypt instead of
playing someone else's call. Associated data is built by :func:`associated_data`: a
label naming the purpose and format version, then each field length-prefixed, so that
no two different (tenant, recording id) pairs ever encode to the same bytes.

Everything here is blocking and CPU-bound on large data: run it in a thread pool, never
on the event loop. Key material never appears in exceptions or logs.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import struct
from typing import TYPE_CHECKING, BinaryIO, cast

import tink
from tink import aead, streaming_aead

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer from Python 3.12

# Tink's registry is process-global; registering twice is harmless.
aead.register()
streaming_aead.register()

CHUNK_SIZE = 1 << 20
"""Plaintext is handed to Tink's encrypting stream in pieces of this size, the segment
size. One huge write is several times slower (Tink copies it whole and the copies fall
out of the CPU caches) and holds the whole recording in memory; 64 KiB to 8 MiB perform
alike (bench/crypto.py)."""

_RECORDING_LABEL = "callrec/recording/v1"
_RECORDING_KEY_LABEL = "callrec/recording-key/v1"
_SEALED_LABEL = "callrec/sealed/v1"
_MIN_HASH_KEY_BYTES = 16


class DecryptionError(Exception):
    """Ciphertext, wrapped key or associated data do not match: tampered, truncated,
    swapped between recordings or tenants, or wrapped under another key. Permanent:
    retrying will not help. (A key service that is down raises
    :class:`callrec.crypto.keys.KeyProviderError` instead.)"""


def associated_data(label: str, *fields: str | bytes) -> bytes:
    """Encode ``label`` and ``fields`` unambiguously: each part is a 4-byte big-endian
    length followed by its bytes (strings as UTF-8). ``("a", "bc")`` and ``("ab", "c")``
    therefore never collide, and the label keeps different uses of one key apart."""
    out = bytearray()
    for part in (label, *fields):
        raw = part.encode("utf-8") if isinstance(part, str) else part
        out += struct.pack(">I", len(raw))
        out += raw
    return bytes(out)


def _recording_ad(tenant: str, recording_id: str) -> bytes:
    _check_ids(tenant, recording_id)
    return associated_data(_RECORDING_LABEL, tenant, recording_id)


def _check_ids(tenant: str, recording_id: str) -> None:
    if not tenant or not recording_id:
        raise ValueError("tenant and recording_id must be non-empty")


def _streaming_primitive(handle: tink.KeysetHandle) -> streaming_aead.StreamingAead:
    try:
        return handle.primitive(streaming_aead.StreamingAead)
    except tink.TinkError:
        raise ValueError("the keyset handle is not a streaming AEAD keyset") from None


def new_recording_key() -> tink.KeysetHandle:
    """A fresh streaming-AEAD keyset (``AES256_GCM_HKDF_1MB``) for one recording."""
    return tink.new_keyset_handle(streaming_aead.streaming_aead_key_templates.AES256_GCM_HKDF_1MB)


def wrap_key(handle: tink.KeysetHandle, kek: aead.Aead, *, tenant: str, recording_id: str) -> bytes:
    """Encrypt the recording keyset under the tenant's KEK (Tink encrypted-keyset
    serialization, binary). The associated data names tenant and recording, so the
    wrapped key only unwraps for that pair. With AWS KMS this costs two KMS calls
    (Tink decrypts once to verify the wrap).

    Lets :class:`~callrec.crypto.keys.KeyProviderError` through when the key service is
    down.
    """
    _check_ids(tenant, recording_id)
    ad = associated_data(_RECORDING_KEY_LABEL, tenant, recording_id)
    wrapped: bytes = tink.proto_keyset_format.serialize_encrypted(handle, kek, ad)
    return wrapped


def unwrap_key(wrapped: bytes, kek: aead.Aead, *, tenant: str, recording_id: str) -> tink.KeysetHandle:
    """Decrypt a key made by :func:`wrap_key`.

    Raises :class:`DecryptionError` for another tenant or recording id, a different KEK,
    or altered bytes; lets :class:`~callrec.crypto.keys.KeyProviderError` through when
    the key service cannot be reached (retry later: the recording is not lost).
    """
    _check_ids(tenant, recording_id)
    ad = associated_data(_RECORDING_KEY_LABEL, tenant, recording_id)
    try:
        return tink.proto_keyset_format.parse_encrypted(wrapped, kek, ad)
    except tink.TinkError as exc:
        raise DecryptionError("the recording key does not unwrap for this tenant and recording") from exc


class _Sink(io.RawIOBase):
    """What Tink's encrypting stream writes to: forwards to the caller's ``dst``.

    * Tink closes its destination when it is closed (``FileObjectAdapter.close`` calls
      ``close()``; the Python API has no switch for it), yet closing is the only way to
      make Tink write the final segment. The sink takes that close; ``dst`` stays open.
    * An exception raised by ``dst`` reaches us from inside Tink's C++ as a bare
      ``TinkError`` with the original only in its text; the sink keeps the original so
      that a full disk is reported as ``OSError``.
    * After a failure the sink is abandoned: whatever Tink still writes (the final
      segment, when the stream is closed by us or by the garbage collector) is dropped.
    """

    def __init__(self, dst: BinaryIO) -> None:
        super().__init__()
        self._dst = dst
        self._abandoned = False
        self.error: BaseException | None = None

    def writable(self) -> bool:
        return True

    def write(self, b: Buffer, /) -> int | None:
        if self._abandoned:
            return memoryview(b).nbytes
        try:
            return self._dst.write(b)
        except BaseException as exc:
            self.error = exc
            raise

    def abandon(self) -> None:
        self._abandoned = True

    def close(self) -> None:
        if not self.closed and not self._abandoned:
            self._dst.flush()
        super().close()


class _Source(io.RawIOBase):
    """What Tink's decrypting stream reads from: the caller's ``src``, keeping any
    exception it raises, so that a dropped connection is not reported as tampering."""

    def __init__(self, src: BinaryIO) -> None:
        super().__init__()
        self._src = src
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1, /) -> bytes | None:
        try:
            return self._src.read(size)
        except BaseException as exc:
            self.error = exc
            raise

    def close(self) -> None:
        if not self.closed:
            self._src.close()
        super().close()


def encrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    handle: tink.KeysetHandle,
    *,
    tenant: str,
    recording_id: str,
    chunk_size: int = CHUNK_SIZE,
) -> int:
    """Encrypt everything readable from ``src`` into ``dst`` and return the number of
    plaintext bytes read. ``dst`` is flushed and stays open (the caller owns it); ``src``
    is read to EOF and left open. The ciphertext decrypts only with the same keyset,
    tenant and recording id.

    If reading ``src`` or writing ``dst`` fails, that exception propagates unchanged and
    the stream is left unfinished: what reached ``dst`` has no final segment and never
    decrypts, so a failed upload cannot pass for a shorter recording.
    """
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    ad = _recording_ad(tenant, recording_id)
    primitive = _streaming_primitive(handle)
    sink = _Sink(dst)
    out = primitive.new_encrypting_stream(sink, ad)
    # Tink returns an io.BufferedWriter around its raw encrypting stream. Writes of ~1 MiB
    # pass straight through it anyway, but as a memoryview that the raw stream copies
    # into new bytes; writing read()'s bytes to the raw stream saves that copy (about 10%
    # of the CPU time, see bench/crypto.py).
    raw = getattr(out, "raw", out)
    total = 0
    try:
        while chunk := src.read(chunk_size):
            total += len(chunk)
            while chunk:  # a raw stream may take less than it is given
                written = raw.write(chunk)
                if not written:
                    raise OSError("Tink's encrypting stream accepted no data")
                chunk = chunk[written:]
        out.close()  # writes the final segment
    except BaseException as exc:
        # Closing (ours now, or the garbage collector's later) would finish the stream
        # with a valid final segment: a truncated recording that decrypts cleanly.
        sink.abandon()
        with contextlib.suppress(Exception):
            out.close()
        if isinstance(exc, tink.TinkError) and sink.error is not None:
            raise sink.error from None
        raise
    return total


class _PlaintextReader(io.BufferedIOBase):
    """Tink's decrypting stream, read through its raw stream, with Tink's errors turned
    into :class:`DecryptionError` (and errors of the ciphertext source passed through).

    Tink wraps its raw decrypting stream in an io.BufferedReader whose large reads go
    through ``readinto`` and cost one more copy; reading the raw stream directly avoids
    it. The raw stream returns at most one segment per call, so :meth:`read` gathers
    parts to honour the usual "up to size bytes, short only at EOF" contract while
    :meth:`read1` hands back single segments without copying.
    """

    def __init__(self, tink_stream: BinaryIO, source: _Source) -> None:
        super().__init__()
        self._stream = tink_stream
        self._raw: BinaryIO = getattr(tink_stream, "raw", tink_stream)
        self._source = source

    def readable(self) -> bool:
        return True

    def _read_raw(self, size: int) -> bytes:
        if self.closed:
            raise ValueError("read from a closed stream")
        try:
            data: bytes | None = self._raw.read(size)
        except tink.TinkError as exc:
            if self._source.error is not None:
                raise self._source.error from None
            raise DecryptionError("the recording does not decrypt: tampered, truncated or misplaced") from exc
        if data is None:
            raise BlockingIOError("the ciphertext source is non-blocking; a blocking source is required")
        return data

    def read(self, size: int | None = -1, /) -> bytes:
        if size is None or size < 0:
            parts = []
            while part := self._read_raw(CHUNK_SIZE):
                parts.append(part)
            return b"".join(parts)
        if size == 0:
            return b""
        first = self._read_raw(size)
        if len(first) >= size or not first:
            return first
        parts, got = [first], len(first)
        while got < size:
            part = self._read_raw(size - got)
            if not part:
                break
            parts.append(part)
            got += len(part)
        return b"".join(parts)

    def read1(self, size: int = -1, /) -> bytes:
        return self._read_raw(CHUNK_SIZE if size < 0 else size) if size != 0 else b""

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._stream.close()
        finally:
            super().close()


def decrypt_stream(src: BinaryIO, handle: tink.KeysetHandle, *, tenant: str, recording_id: str) -> BinaryIO:
    """Return a readable file object of the plaintext of ``src``.

    Decryption is lazy and authenticated per 1 MiB segment: a tampered, truncated or
    misplaced ciphertext raises :class:`DecryptionError` from ``read()`` at the first
    segment that fails (plaintext already returned came from segments that were
    authenticated). An exception raised by ``src`` itself (a dropped connection)
    propagates unchanged. ``read1()`` returns about one segment per call without an
    extra copy: the cheapest way to stream. Closing the returned object closes ``src``.
    """
    ad = _recording_ad(tenant, recording_id)
    primitive = _streaming_primitive(handle)
    source = _Source(src)
    try:
        inner = primitive.new_decrypting_stream(source, ad)
    except tink.TinkError as exc:
        raise DecryptionError("the recording does not decrypt") from exc
    return cast(BinaryIO, _PlaintextReader(inner, source))


def seal(kek: aead.Aead, plaintext: bytes, *, context: str) -> bytes:
    """Encrypt a small value (a phone number, a name) under the tenant KEK.

    ``context`` says what the value is and whose it is (e.g. ``"recording:<id>:caller"``);
    it becomes associated data, so the value opens only under the same context. With AWS
    KMS the context is sent as encryption context and appears in CloudTrail: it must
    never contain personal data itself.
    """
    ciphertext: bytes = kek.encrypt(plaintext, associated_data(_SEALED_LABEL, context))
    return ciphertext


def open_sealed(kek: aead.Aead, ciphertext: bytes, *, context: str) -> bytes:
    """Reverse :func:`seal`. Raises :class:`DecryptionError` on a different context, KEK
    or altered bytes."""
    try:
        plaintext: bytes = kek.decrypt(ciphertext, associated_data(_SEALED_LABEL, context))
    except tink.TinkError as exc:
        raise DecryptionError("the sealed value does not open in this context") from exc
    return plaintext


def keyed_hash(key: bytes, value: str) -> bytes:
    """HMAC-SHA256 of ``value`` (UTF-8) under ``key``: a stable lookup token for a phone
    number without storing the number (a pseudonym under GDPR Art. 4(5)). Normalise the
    value first (E.164) so that one number always gives one token. A plain hash would be
    brute-forced in minutes over the phone-number space; the secret key prevents that.

    Raises :class:`ValueError` for a key shorter than 16 bytes.
    """
    if len(key) < _MIN_HASH_KEY_BYTES:
        raise ValueError(f"keyed_hash needs a key of at least {_MIN_HASH_KEY_BYTES} bytes")
    return hmac.new(key, value.encode("utf-8"), hashlib.sha256).digest()
