"""Key-encryption keys (KEKs): one per tenant, behind a small :class:`KeyProvider` protocol.

A KEK never encrypts audio. It wraps the per-recording keys and seals small values
(:mod:`callrec.crypto.envelope`). Two backends, chosen by ``keys.provider``:

``local``
    A keyring file holding one Tink ``AES256_GCM`` keyset per tenant, in cleartext, so the
    file itself is the root secret: it is created readable by its owner only (0600, its
    directory 0700 when we create it) and refused when group or others can access it.
    Shape: ``{"version": 1, "tenants": {"<tenant>": <Tink JSON keyset>}}``. Several
    processes share it (the server, ``callrec keys rotate``): writers take an ``fcntl``
    lock on ``<keyring>.lock`` and replace the file atomically (temp file, fsync, rename,
    fsync of the directory); readers notice a replaced file with one ``stat`` per call.

``aws-kms``
    One AWS KMS key for every tenant, used through Tink's ``awskms`` integration. Tenants
    are kept apart by associated data (KMS encryption context): the AEAD returned for a
    tenant binds the tenant name into every call, so a value sealed for one tenant does
    not open for another even though the key is shared.

Rotation adds a key version and makes it primary; older versions stay usable for
decryption, so everything wrapped before a rotation stays readable. Destroying old
versions would destroy every recording wrapped under them (that is crypto-shredding at
tenant scale) and is deliberately not offered here.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import boto3
import tink
from botocore.exceptions import BotoCoreError, ClientError
from tink import aead, secret_key_access
from tink.integration import awskms
from tink.proto import tink_pb2

from callrec.config import KeysConfig
from callrec.crypto import envelope

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient

# Tink's registry is process-global; registering twice is harmless.
aead.register()

_T = TypeVar("_T")

KEYRING_VERSION = 1
_KMS_TENANT_LABEL = "callrec/kms-tenant/v1"
# KMS error codes that mean "this ciphertext does not belong here". Every other failure
# (unreachable, throttled, access denied, key disabled or missing) is a problem of the key
# service, not of the data, and must not be mistaken for tampering.
# https://docs.aws.amazon.com/kms/latest/APIReference/API_Decrypt.html#API_Decrypt_Errors
_KMS_DATA_ERRORS = frozenset({"InvalidCiphertextException", "IncorrectKeyException"})
_KMS_ARN = re.compile(r"^arn:aws[a-z-]*:kms:([a-z0-9-]+):")


class KeyProviderError(Exception):
    """The key provider cannot be used: keyring unsafe or unreadable, tenant without a
    key, KMS unreachable or refusing. The message names the file or key, never key
    material."""


class KeyProvider(Protocol):
    def kek(self, tenant: str) -> aead.Aead:
        """The tenant's key-encryption AEAD. Blocking (file or KMS I/O here or in the
        returned AEAD's calls): run it in a thread. Raises :class:`KeyProviderError`
        when the tenant has no key."""
        ...

    def ensure_tenant(self, tenant: str) -> None:
        """Create the tenant's KEK if it is missing (local); no-op for KMS."""
        ...

    def rotate(self, tenant: str) -> str:
        """Add a new KEK version and make it primary; old versions keep decrypting.
        Returns a short description for an operator."""
        ...


def open_key_provider(keys: KeysConfig, *, keyring_path: Path) -> KeyProvider:
    """Build the provider named by ``keys.provider``. Raises :class:`KeyProviderError`
    for an unsafe keyring file or an unusable KMS key id."""
    if keys.provider == "local":
        return LocalKeyProvider(keyring_path)
    if keys.provider == "aws-kms":
        return AwsKmsKeyProvider.from_config(keys)
    raise KeyProviderError(f"keys.provider: unknown key provider {keys.provider!r}")


def _check_tenant(tenant: str) -> None:
    if not tenant:
        raise ValueError("tenant must be non-empty")


# --- local keyring -------------------------------------------------------------------------


def _add_primary_key(handle: tink.KeysetHandle) -> tuple[tink.KeysetHandle, int]:
    """Return a copy of ``handle`` with a fresh AES256_GCM key as primary, and its id.

    Tink's Python API has no ``KeysetManager`` (Java and Go have one), so this does what
    it does on the keyset proto: new key data from the registry, an unused random key id,
    ENABLED, the template's output prefix (TINK: the 5-byte prefix carrying the key id is
    what lets decryption pick the right version after a rotation).
    """
    template = aead.aead_key_templates.AES256_GCM
    keyset = tink_pb2.Keyset.FromString(tink.proto_keyset_format.serialize(handle, secret_key_access.TOKEN))
    used = {key.key_id for key in keyset.key}
    key_id = 0
    while key_id == 0 or key_id in used:
        key_id = secrets.randbelow(2**31 - 1) + 1  # Tink key ids are positive 32-bit ints
    key = keyset.key.add()
    key.key_data.CopyFrom(tink.core.Registry.new_key_data(template))
    key.status = tink_pb2.ENABLED
    key.key_id = key_id
    key.output_prefix_type = template.output_prefix_type
    keyset.primary_key_id = key_id
    return tink.proto_keyset_format.parse(keyset.SerializeToString(), secret_key_access.TOKEN), key_id


def _keyset_to_json(handle: tink.KeysetHandle) -> Any:
    return json.loads(tink.json_proto_keyset_format.serialize(handle, secret_key_access.TOKEN))


def _keyset_from_json(value: Any) -> tink.KeysetHandle:
    return tink.json_proto_keyset_format.parse(json.dumps(value), secret_key_access.TOKEN)


class LocalKeyProvider:
    """Per-tenant AES256_GCM keysets in a keyring file; see the module docstring.

    Thread-safe: one instance may serve the event loop's thread pool. The cache of
    parsed keys is per instance and reloaded when the file's identity changes.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock_path = path.with_name(path.name + ".lock")
        self._mutex = threading.Lock()
        self._stamp: tuple[int, ...] | None = None
        self._tenants: dict[str, Any] = {}
        self._keks: dict[str, aead.Aead] = {}
        self._stat()  # refuse an unsafe keyring at start-up, not at the first recording

    @property
    def path(self) -> Path:
        return self._path

    def kek(self, tenant: str) -> aead.Aead:
        _check_tenant(tenant)
        with self._mutex:
            self._refresh()
            cached = self._keks.get(tenant)
            if cached is not None:
                return cached
            if tenant not in self._tenants:
                raise KeyProviderError(f"keyring {self._path} has no key for tenant {tenant!r}")
            try:
                primitive: aead.Aead = _keyset_from_json(self._tenants[tenant]).primitive(aead.Aead)
            except tink.TinkError:
                raise KeyProviderError(
                    f"keyring {self._path}: the keyset of tenant {tenant!r} is not a valid AEAD keyset"
                ) from None
            self._keks[tenant] = primitive
            return primitive

    def ensure_tenant(self, tenant: str) -> None:
        _check_tenant(tenant)
        with self._mutex:
            self._refresh()
            if tenant in self._tenants:
                return

        def create(tenants: dict[str, Any]) -> None:
            if tenant not in tenants:  # another process may have created it meanwhile
                handle = tink.new_keyset_handle(aead.aead_key_templates.AES256_GCM)
                tenants[tenant] = _keyset_to_json(handle)

        self._update(create)

    def rotate(self, tenant: str) -> str:
        _check_tenant(tenant)

        def add_version(tenants: dict[str, Any]) -> str:
            if tenant not in tenants:
                raise KeyProviderError(f"keyring {self._path} has no key for tenant {tenant!r} to rotate")
            try:
                handle, key_id = _add_primary_key(_keyset_from_json(tenants[tenant]))
            except tink.TinkError:
                raise KeyProviderError(
                    f"keyring {self._path}: the keyset of tenant {tenant!r} is not a valid keyset"
                ) from None
            tenants[tenant] = _keyset_to_json(handle)
            versions = len(handle.keyset_info().key_info)
            return (
                f"tenant {tenant!r}: new primary key id {key_id} in {self._path} "
                f"({versions} versions; older ones still decrypt)"
            )

        return self._update(add_version)

    # -- file handling

    def _stat(self) -> os.stat_result | None:
        """Stat the keyring, refusing it when group or others have any access to it."""
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise KeyProviderError(f"keyring {self._path}: {exc.strerror}") from None
        self._check_mode(st)
        return st

    def _check_mode(self, st: os.stat_result) -> None:
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyProviderError(
                f"keyring {self._path} is accessible by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); it holds every tenant's key: chmod 600 it"
            )

    @staticmethod
    def _identity(st: os.stat_result) -> tuple[int, ...]:
        # A rename gives a new inode; ctime also moves on chmod and in-place edits.
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _refresh(self) -> None:
        """Reload the keyring if the file changed since we last read it. Holds _mutex."""
        st = self._stat()
        if st is None:
            self._stamp, self._tenants, self._keks = None, {}, {}
            return
        if self._identity(st) == self._stamp:
            return
        stamp, tenants = self._read()
        self._stamp, self._tenants, self._keks = stamp, tenants, {}

    def _read(self) -> tuple[tuple[int, ...] | None, dict[str, Any]]:
        """Read and validate the keyring; the identity comes from the descriptor read."""
        try:
            with open(self._path, "rb") as f:
                st = os.fstat(f.fileno())
                self._check_mode(st)  # the file read, not only the one stat() saw
                raw = f.read()
        except FileNotFoundError:
            return None, {}
        except OSError as exc:
            raise KeyProviderError(f"keyring {self._path}: {exc.strerror}") from None
        try:
            doc = json.loads(raw)
        except ValueError:
            raise KeyProviderError(f"keyring {self._path} is not valid JSON") from None
        if (
            not isinstance(doc, dict)
            or doc.get("version") != KEYRING_VERSION
            or not isinstance(doc.get("tenants"), dict)
        ):
            raise KeyProviderError(
                f'keyring {self._path}: expected {{"version": {KEYRING_VERSION}, "tenants": {{...}}}}'
            )
        return self._identity(st), doc["tenants"]

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _update(self, change: Callable[[dict[str, Any]], _T]) -> _T:
        """Apply ``change`` to the tenants of the keyring on disk (read fresh under the
        lock, not from our cache) and replace the file atomically."""
        with self._file_lock():
            self._stat()
            _, tenants = self._read()
            result = change(tenants)
            self._write({"version": KEYRING_VERSION, "tenants": tenants})
        return result

    def _write(self, doc: dict[str, Any]) -> None:
        directory = self._path.parent
        # mkstemp creates the file 0600, so the keys are never readable by others, even briefly.
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{self._path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps(doc, indent=2, sort_keys=True).encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)


# --- AWS KMS -------------------------------------------------------------------------------


class _TenantBoundAead(aead.Aead):  # type: ignore[misc]  # tink ships no type hints
    """The shared KMS AEAD with the tenant name bound into the associated data (KMS
    encryption context), and KMS failures sorted into two kinds: the ciphertext does not
    belong here (``tink.TinkError``, which callers turn into ``DecryptionError``), or
    the service cannot answer (:class:`KeyProviderError`: retry later, nothing is lost).
    """

    def __init__(self, inner: aead.Aead, tenant: str, key_arn: str) -> None:
        self._inner = inner
        self._tenant = tenant
        self._key_arn = key_arn

    def _ad(self, associated_data: bytes) -> bytes:
        return envelope.associated_data(_KMS_TENANT_LABEL, self._tenant, associated_data)

    def encrypt(self, plaintext: bytes, associated_data: bytes) -> bytes:
        try:
            ciphertext: bytes = self._inner.encrypt(plaintext, self._ad(associated_data))
        except (tink.TinkError, BotoCoreError) as exc:
            raise self._translate(exc, "Encrypt") from exc
        return ciphertext

    def decrypt(self, ciphertext: bytes, associated_data: bytes) -> bytes:
        try:
            plaintext: bytes = self._inner.decrypt(ciphertext, self._ad(associated_data))
        except (tink.TinkError, BotoCoreError) as exc:
            raise self._translate(exc, "Decrypt") from exc
        return plaintext

    def _translate(self, exc: Exception, operation: str) -> Exception:
        if isinstance(exc, BotoCoreError):
            return KeyProviderError(f"AWS KMS {operation} with {self._key_arn} failed: {type(exc).__name__}")
        # Tink's awskms raises TinkError from inside its `except ClientError`, so the
        # ClientError is the context of the TinkError.
        cause = exc.__context__
        if isinstance(cause, ClientError):
            code = cause.response.get("Error", {}).get("Code", "")
            if code not in _KMS_DATA_ERRORS:
                return KeyProviderError(f"AWS KMS {operation} with {self._key_arn} failed: {code}")
        return exc


class AwsKmsKeyProvider:
    """One AWS KMS key for all tenants, through ``tink.integration.awskms``.

    Every encrypt and decrypt on a returned AEAD is a KMS call (wrapping a recording key
    is two: Tink verifies the wrap). boto3 clients are thread-safe, so one provider may
    serve a thread pool.
    """

    def __init__(self, *, key_arn: str, client: KMSClient) -> None:
        self._key_arn = key_arn
        self._client = client
        key_uri = "aws-kms://" + key_arn
        try:
            self._aead: aead.Aead = awskms.new_client(boto3_client=client, key_uri=key_uri).get_aead(key_uri)
        except tink.TinkError:
            raise KeyProviderError(
                f"keys.kms_key_id: Tink's AWS KMS client does not accept {key_arn!r} "
                "(it takes key or alias ARNs in the 'aws' partition)"
            ) from None

    @classmethod
    def from_config(cls, keys: KeysConfig) -> AwsKmsKeyProvider:
        """A boto3 KMS client from ``keys.kms_region`` and ``keys.kms_endpoint_url``. With
        no region configured, the region in the key ARN is used (a client in another
        region cannot use the key), then boto3's defaults."""
        match = _KMS_ARN.match(keys.kms_key_id)
        if match is None:
            raise KeyProviderError(f"keys.kms_key_id: {keys.kms_key_id!r} is not an AWS KMS key ARN")
        client = boto3.client(
            "kms",
            region_name=keys.kms_region or match.group(1),
            endpoint_url=keys.kms_endpoint_url or None,
        )
        return cls(key_arn=keys.kms_key_id, client=client)

    def kek(self, tenant: str) -> aead.Aead:
        _check_tenant(tenant)
        return _TenantBoundAead(self._aead, tenant, self._key_arn)

    def ensure_tenant(self, tenant: str) -> None:
        _check_tenant(tenant)  # the KMS key is shared; nothing to create

    def rotate(self, tenant: str) -> str:
        """Rotate the shared KMS key (all tenants at once; KMS keeps old key material so
        older wraps still decrypt). Uses on-demand rotation
        (https://docs.aws.amazon.com/kms/latest/developerguide/rotating-keys-on-demand.html);
        where that is refused (imported key material, custom key stores, the limit of
        on-demand rotations per key), it enables yearly automatic rotation instead and
        says so."""
        _check_tenant(tenant)
        try:
            # RotateKeyOnDemand takes a key id or key ARN, not an alias.
            key_arn = self._client.describe_key(KeyId=self._key_arn)["KeyMetadata"]["Arn"]
        except (ClientError, BotoCoreError) as exc:
            code = _error_code(exc)
            raise KeyProviderError(f"AWS KMS DescribeKey {self._key_arn} failed: {code}") from None
        try:
            self._client.rotate_key_on_demand(KeyId=key_arn)
        except (ClientError, BotoCoreError) as exc:
            refused = _error_code(exc)
        else:
            return f"AWS KMS key {key_arn}: rotated on demand (shared by all tenants; old material kept)"
        try:
            self._client.enable_key_rotation(KeyId=key_arn)
        except (ClientError, BotoCoreError) as exc:
            raise KeyProviderError(
                f"AWS KMS key {key_arn}: on-demand rotation failed ({refused}) "
                f"and enabling automatic rotation failed ({_error_code(exc)})"
            ) from None
        return (
            f"AWS KMS key {key_arn}: on-demand rotation refused ({refused}); "
            "automatic yearly rotation enabled instead"
        )


def _error_code(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "ClientError"))
    return type(exc).__name__
