"""The audit keys: HMAC-SHA256 data keys that authenticate the audit chain (DESIGN.md rule 9).

One set of keys per deployment, not per tenant: the chain is one sequence across every tenant
(one lock, one head, each entry chained to the one before whoever's it is), so checking any link
needs the key of the entry before it, and an auditor checks the deployment's chain as a whole.
Tenants stay apart in the entries themselves, as before.

Where the keys live. Each data key is 32 random bytes, stored in the ``audit_keys`` table only
*wrapped* by the deployment's audit key-encryption key, which the configured key provider keeps
under the reserved name :data:`AUDIT_KEK` (a name no tenant can have): a Tink AES-GCM keyset in
the local keyring file, or AWS KMS with ``_audit`` bound into every call's encryption context.
Whoever holds only the database holds ciphertext: they can neither compute a MAC nor make a key
of their own that this deployment would accept. Deleting the wrapped rows does not help them
either: every entry and every anchor names the key that made its MAC, and a missing key is
reported by ``callrec audit verify``.

When they are unwrapped. Once, when a process opens the database (``callrec.db.pool``): the
keys then travel with the pool's connections, so that :func:`callrec.db.audit.record`, which
runs under the chain lock on every audited request, only computes an HMAC in memory and never
waits on the keyring file or on KMS.

Rotation. ``callrec audit rotate-key`` adds a key with the next id; the newest key signs from
then on, in every process that opens the database afterwards (processes already running keep
signing with the key they loaded until they restart; their entries stay valid). Old keys are
never deleted: entries name their key, and verification needs each of them. A process that
meets a key newer than its own while verifying loads it then (:meth:`AuditKeyring.refresh`),
outside the chain lock. Rotating the audit key-encryption key itself (``callrec keys rotate``
does it for tenants; the keyring's ``_audit`` entry or the KMS key) needs nothing here: the
wrapped rows keep opening under the older versions.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from callrec.crypto import envelope
from callrec.crypto.keys import KeyProvider
from callrec.db import Conn
from callrec.db import audit_keys as stored_keys

log = logging.getLogger(__name__)

AUDIT_KEK = "_audit"
"""The key provider's name for the KEK that wraps audit keys; tenant names cannot start with "_"."""

KEY_BYTES = 32  # HMAC-SHA256 keys as long as its output (RFC 2104 §3)
MAC_BYTES = 32

_ENTRY = "callrec/audit-entry/v1"
_CHECKPOINT = "callrec/audit-checkpoint/v1"
_ANCHOR = "callrec/audit-anchor/v1"


class AuditKeyError(Exception):
    """No usable audit key: the message tells the operator what is missing (never key material)."""


@dataclass(frozen=True)
class AuditKeys:
    """The audit keys this process holds, by id; the newest signs.

    Each MAC is HMAC-SHA256 over an unambiguous encoding (:func:`callrec.crypto.envelope.associated_data`)
    of a label naming what is signed (an entry, the checkpoint, an anchor: a MAC made for one can
    never pass as another), the key id, and the fields."""

    by_id: Mapping[int, bytes] = field(repr=False)

    def __post_init__(self) -> None:
        if not self.by_id:
            raise ValueError("at least one audit key is needed")

    @property
    def primary_id(self) -> int:
        return max(self.by_id)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self.by_id

    def _mac(self, key_id: int, label: str, *fields: bytes) -> bytes:
        key = self.by_id[key_id]  # KeyError: callers check ``key_id in keys`` first
        # The bytes of envelope.associated_data(label, str(key_id), *fields), built without its
        # loop: this runs for every audit entry, under the chain lock.
        parts = [_header(label, key_id)]
        for value in fields:
            parts += (len(value).to_bytes(4, "big"), value)
        return hmac.digest(key, b"".join(parts), hashlib.sha256)

    def entry_mac(self, key_id: int, prev_mac: bytes, canonical: bytes) -> bytes:
        """An entry's MAC: its canonical content and the MAC before it (the chain)."""
        return self._mac(key_id, _ENTRY, prev_mac, canonical)

    def checkpoint_mac(self, key_id: int, canonical: bytes) -> bytes:
        return self._mac(key_id, _CHECKPOINT, canonical)

    def anchor_mac(self, key_id: int, canonical: bytes) -> bytes:
        return self._mac(key_id, _ANCHOR, canonical)

    @staticmethod
    def same(a: bytes, b: bytes) -> bool:
        return hmac.compare_digest(a, b)


@functools.lru_cache(maxsize=256)
def _header(label: str, key_id: int) -> bytes:
    return envelope.associated_data(label, str(key_id))


def _context(key_id: int) -> str:
    return f"callrec:audit-key:{key_id}"


class AuditKeyring:
    """The process's audit keys (a snapshot, :attr:`keys`) and how to get more: the wrapped rows
    in the database and the provider that unwraps them. Unwrapping is blocking I/O (keyring file,
    KMS) and runs in a thread, and only in :meth:`open`, :meth:`refresh` and :meth:`rotate`,
    never while the chain lock is held."""

    def __init__(self, provider: KeyProvider, keys: AuditKeys) -> None:
        self._provider = provider
        self._keys = keys
        self._lock = asyncio.Lock()

    @property
    def keys(self) -> AuditKeys:
        return self._keys

    @classmethod
    async def open(cls, conn: Conn, provider: KeyProvider, *, create: bool) -> AuditKeyring | None:
        """Unwrap every stored audit key. With ``create``, make the first key when there is none
        (a database that has never been opened by this version); without, return None then.

        Raises :class:`AuditKeyError` when keys are stored but none opens under this deployment's
        audit KEK, or when the chain is authenticated already and the keys are gone (the
        ``audit_keys`` rows were deleted: restore them rather than start a new key, which would
        hide nothing but confuse the auditor). Raises
        :class:`~callrec.crypto.keys.KeyProviderError` when the key service is unavailable."""
        rows = await stored_keys.stored(conn)
        if not rows:
            if not create:
                return None
            authenticated = await conn.fetchval("SELECT mac IS NOT NULL FROM audit_head WHERE id")
            if authenticated:
                raise AuditKeyError(
                    "the audit log is authenticated, but the database holds no audit key (table "
                    "audit_keys is empty): restore it from a backup; `callrec audit verify` tells more"
                )
            await asyncio.to_thread(provider.ensure_tenant, AUDIT_KEK)
            await _store_new_key(conn, provider, 1)
            rows = await stored_keys.stored(conn)
        keys = await asyncio.to_thread(_unwrap_all, provider, rows)
        if not keys:
            raise AuditKeyError(
                f"none of the {len(rows)} audit key(s) in the database opens under this deployment's "
                "audit key-encryption key (keys.provider): is this the right keyring or KMS key?"
            )
        return cls(provider, AuditKeys(keys))

    async def refresh(self, conn: Conn) -> bool:
        """Unwrap keys stored since this process loaded its own (a rotation by another process).
        Returns whether any was added. Not to be called under the chain lock."""
        async with self._lock:
            rows = await stored_keys.stored(conn, after=max(self._keys.by_id))
            if not rows:
                return False
            fresh = await asyncio.to_thread(_unwrap_all, self._provider, rows)
            if not fresh:
                return False
            self._keys = AuditKeys({**self._keys.by_id, **fresh})
            return True

    async def rotate(self, conn: Conn) -> int:
        """Add a new audit key with the next id and sign with it from now on (in this process at
        once; in others when they next start). Returns its id."""
        async with self._lock:
            for _ in range(5):  # another process may take the same id; the next one is free then
                key_id = await stored_keys.newest_id(conn) + 1
                if await _store_new_key(conn, self._provider, key_id):
                    break
            else:
                raise AuditKeyError("could not store a new audit key: other processes kept taking its id")
        await self.refresh(conn)
        return key_id


async def _store_new_key(conn: Conn, provider: KeyProvider, key_id: int) -> bool:
    def wrap() -> bytes:
        kek = provider.kek(AUDIT_KEK)
        return envelope.seal(kek, os.urandom(KEY_BYTES), context=_context(key_id))

    wrapped = await asyncio.to_thread(wrap)
    return await stored_keys.add(conn, key_id, wrapped)


def _unwrap_all(provider: KeyProvider, rows: list[tuple[int, bytes]]) -> dict[int, bytes]:
    """Unwrap each row; a row that does not open (not made by this deployment, or altered) is
    left out and logged by id: entries naming it then fail verification, which says so."""
    kek = provider.kek(AUDIT_KEK)  # KeyProviderError names the keyring or KMS key when it is missing
    keys: dict[int, bytes] = {}
    for key_id, wrapped in rows:
        try:
            key = envelope.open_sealed(kek, wrapped, context=_context(key_id))
        except envelope.DecryptionError:
            log.error("audit key %d in the database does not open under the audit KEK; ignored", key_id)
            continue
        if len(key) != KEY_BYTES:
            log.error("audit key %d has the wrong length; ignored", key_id)
            continue
        keys[key_id] = key
    return keys
