"""The audit log: append-only, hash-chained, authenticated, written in the caller's transaction.

Every entry's hash covers the previous entry's hash and a canonical encoding of its own fields, so
editing, reordering or removing any entry breaks the chain from that point on; ``audit_head``
(updated with each entry) makes the removal of the newest entries visible too. Details never carry
phone numbers, names or audio: callers pass pseudonymous ids only.

A hash chain alone proves nothing against whoever holds the database: every input is in it, and
callrec's own functions recompute it after an edit. So each entry also carries a MAC (DESIGN.md
rule 9): HMAC-SHA256, under an audit key the database never holds (:mod:`callrec.crypto.auditkeys`),
of the entry's canonical content and of the MAC before it, with the id of the key that made it.
Rewriting an entry now needs the key; removing the newest entries is caught by the anchors, copies
of the chain head written outside the database (:mod:`callrec.anchoring`).

Entries written before the MACs existed are covered by a **checkpoint**: when a process holding
the audit key first opens the database (at the migration's first start, or on a new database), it
records the hash chain's head then (seq and hash, seq 0 on an empty log) in ``audit_checkpoints``,
MACed with the audit key. The first entry after it chains its MAC to the checkpoint's. Everything
up to the checkpoint is covered by the old hash chain ending exactly at the checkpointed hash;
everything after it by the MACs; and from then on an entry without a MAC is refused (here, and by
a trigger in the database).

Cost on the request path: :func:`record` computes one HMAC in memory under the chain lock, with
the same four statements as before (lock, head, insert, head update); the keys were unwrapped when
the process opened the database and travel with the pool's connections (:func:`keyring_of`).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import asyncpg

from callrec.anchoring.record import Anchor
from callrec.crypto.auditkeys import AuditKeyError, AuditKeyring, AuditKeys
from callrec.db import Conn

GENESIS = b"\x00" * 32
# Serialises appends to the chain; held until the writer's transaction ends.
_CHAIN_LOCK = 0x617564697400  # "audit\0"


class AuditAction(StrEnum):
    RECORDING_INGESTED = "recording:ingested"
    RECORDING_VIEWED = "recording:viewed"
    RECORDING_LISTED = "recording:listed"
    RECORDING_PLAYED = "recording:played"
    RECORDING_ACCESS_REASON = "recording:access-reason"
    RECORDING_REJECTED = "recording:rejected"
    RECORDING_QUARANTINED = "recording:quarantined"
    RECORDING_APPROVED = "recording:approved"
    RECORDING_DESTROYED = "recording:destroyed"
    OBJECT_DELETED = "object:deleted"
    CALL_EVENT = "call:event"
    HOLD_PLACED = "hold:placed"
    HOLD_RELEASED = "hold:released"
    DELETION_REQUESTED = "deletion:requested"
    DELETION_STATUS = "deletion:status"
    RECORDING_RESTRICTED = "recording:restricted"
    RECORDING_UNRESTRICTED = "recording:unrestricted"
    ACCESS_REQUESTED = "access:requested"
    ACCESS_DOWNLOADED = "access:downloaded"
    ANNOUNCEMENT_ADDED = "announcement:added"
    INGEST_FAILED = "ingest:failed"
    INGEST_RETRIED = "ingest:retried"
    PROVIDER_EVENT = "provider:event"
    PROVIDER_COPY_DELETED = "provider:copy-deleted"
    TOKEN_CREATED = "token:created"
    TOKEN_REVOKED = "token:revoked"
    KEYS_ROTATED = "keys:rotated"
    USER_ADDED = "user:added"
    USER_LOGIN = "user:login"
    USER_LOGIN_FAILED = "user:login-failed"
    # Single sign-on passed at the provider, without MFA there: callrec's TOTP step follows.
    USER_SSO_VERIFIED = "user:sso-verified"
    USER_LOCKED = "user:locked"
    USER_MFA_ENROLLED = "user:mfa-enrolled"
    USER_LOGOUT = "user:logout"
    USER_DISABLED = "user:disabled"
    USER_ENABLED = "user:enabled"
    USER_UNLOCKED = "user:unlocked"
    USER_MFA_RESET = "user:mfa-reset"
    USER_SSO_UNLINKED = "user:sso-unlinked"


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: datetime
    tenant: str
    actor: str
    action: str
    recording_id: uuid.UUID | None
    details: dict[str, Any]
    prev_hash: bytes
    hash: bytes
    key_id: int | None = None  # the audit key that made ``mac``; None before the checkpoint
    mac: bytes | None = None


_ENTRY_COLUMNS = "seq, at, tenant, actor, action, recording_id, details, prev_hash, hash, key_id, mac"


def _entry(row: asyncpg.Record) -> AuditEntry:
    return AuditEntry(
        row["seq"],
        row["at"],
        row["tenant"],
        row["actor"],
        row["action"],
        row["recording_id"],
        json.loads(row["details"]),
        bytes(row["prev_hash"]),
        bytes(row["hash"]),
        row["key_id"],
        bytes(row["mac"]) if row["mac"] is not None else None,
    )


def _canonical(
    *,
    seq: int,
    at: datetime,
    tenant: str,
    actor: str,
    action: str,
    recording_id: uuid.UUID | None,
    details: dict[str, Any],
) -> bytes:
    body = {
        "seq": seq,
        "at": at.astimezone(UTC).isoformat(timespec="microseconds"),
        "tenant": tenant,
        "actor": actor,
        "action": action,
        "recording_id": str(recording_id) if recording_id else None,
        "details": details,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def entry_hash(prev_hash: bytes, canonical: bytes) -> bytes:
    return hashlib.sha256(prev_hash + canonical).digest()


def keyring_of(conn: Conn) -> AuditKeyring | None:
    """The audit keys that came with this connection: those of the pool or connection that
    :mod:`callrec.db.pool` opened (None for a plain asyncpg connection)."""
    keyring = getattr(conn, "audit_keyring", None)  # a pool's proxy passes the lookup on
    return keyring if isinstance(keyring, AuditKeyring) else None


@dataclass(frozen=True)
class Checkpoint:
    """The hash chain's head when the chain was first authenticated, MACed with the audit key."""

    seq: int
    hash: bytes
    at: datetime
    key_id: int
    mac: bytes

    @staticmethod
    def canonical(seq: int, hash: bytes, at: datetime) -> bytes:
        body = {"seq": seq, "hash": hash.hex(), "at": at.astimezone(UTC).isoformat(timespec="microseconds")}
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def authentic(self, keys: AuditKeys) -> bool:
        expected = keys.checkpoint_mac(self.key_id, self.canonical(self.seq, self.hash, self.at))
        return keys.same(expected, self.mac)


async def _write_checkpoint(conn: Conn, keys: AuditKeys, *, seq: int, hash: bytes) -> Checkpoint:
    """Checkpoint the chain at entry ``seq`` (its hash ``hash``). Holds the chain lock (caller)."""
    at = datetime.now(UTC)
    key_id = keys.primary_id
    mac = keys.checkpoint_mac(key_id, Checkpoint.canonical(seq, hash, at))
    await conn.execute(
        "INSERT INTO audit_checkpoints (seq, hash, at, key_id, mac) VALUES ($1, $2, $3, $4, $5)",
        seq,
        hash,
        at,
        key_id,
        mac,
    )
    await conn.execute(
        """INSERT INTO audit_head (id, seq, hash, mac) VALUES (true, $1, $2, $3)
           ON CONFLICT (id) DO UPDATE SET mac = EXCLUDED.mac""",
        seq,
        hash,
        mac,
    )
    return Checkpoint(seq, hash, at, key_id, mac)


async def ensure_checkpoint(conn: Conn, keyring: AuditKeyring) -> Checkpoint | None:
    """Authenticate the chain from here on if it is not yet: write the checkpoint of its current
    head. Returns the checkpoint written, or None when the chain was authenticated already. Run
    when a process first opens the database with the audit key (the migration's first start)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _CHAIN_LOCK)
        head = await conn.fetchrow("SELECT seq, hash, mac FROM audit_head WHERE id")
        if head is not None and head["mac"] is not None:
            return None
        seq, hash = (int(head["seq"]), bytes(head["hash"])) if head else (0, GENESIS)
        return await _write_checkpoint(conn, keyring.keys, seq=seq, hash=hash)


async def record(
    conn: Conn,
    *,
    tenant: str,
    actor: str,
    action: AuditAction,
    recording_id: uuid.UUID | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEntry:
    """Append one entry. Must be called inside the transaction that makes the change.

    The entry is MACed with the newest audit key the connection carries (:func:`keyring_of`).
    A connection without audit keys can write only to a chain that has never been authenticated
    (a database not yet opened by this version): once the checkpoint exists, it raises
    :class:`RuntimeError` instead of writing an entry that would read as tampering."""
    if not conn.is_in_transaction():
        raise RuntimeError("audit entries are written in the transaction of the change they record")
    details = details or {}
    keyring = keyring_of(conn)
    keys = keyring.keys if keyring is not None else None
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _CHAIN_LOCK)
    head = await conn.fetchrow("SELECT seq, hash, mac FROM audit_head WHERE id")
    seq, prev = (head["seq"] + 1, bytes(head["hash"])) if head else (1, GENESIS)
    prev_mac = bytes(head["mac"]) if head is not None and head["mac"] is not None else None
    if keys is not None and prev_mac is None:
        # The first entry since this version opened the database, if the start-up did not do it.
        prev_mac = (await _write_checkpoint(conn, keys, seq=seq - 1, hash=prev)).mac
    elif keys is None and prev_mac is not None:
        raise RuntimeError(
            "the audit chain is authenticated: entries need the audit key "
            "(open the database through callrec.db.pool, which loads it)"
        )
    # Truncated to microseconds: PostgreSQL keeps exactly that, so verify re-derives the same bytes.
    at = datetime.now(UTC)
    canonical = _canonical(
        seq=seq,
        at=at,
        tenant=tenant,
        actor=actor,
        action=str(action),
        recording_id=recording_id,
        details=details,
    )
    digest = entry_hash(prev, canonical)
    key_id: int | None = None
    mac: bytes | None = None
    if keys is not None and prev_mac is not None:
        key_id = keys.primary_id
        mac = keys.entry_mac(key_id, prev_mac, canonical)
    await conn.execute(
        """INSERT INTO audit_log
               (seq, at, tenant, actor, action, recording_id, details, prev_hash, hash, key_id, mac)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)""",
        seq,
        at,
        tenant,
        actor,
        str(action),
        recording_id,
        json.dumps(details),
        prev,
        digest,
        key_id,
        mac,
    )
    await conn.execute(
        """INSERT INTO audit_head (id, seq, hash, mac) VALUES (true, $1, $2, $3)
           ON CONFLICT (id) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash, mac = EXCLUDED.mac""",
        seq,
        digest,
        mac,
    )
    return AuditEntry(seq, at, tenant, actor, str(action), recording_id, details, prev, digest, key_id, mac)


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    entries: int  # entries walked
    head_seq: int
    problems: list[str]
    last_seq: int = 0  # the newest entry walked (or the starting point, when there was none)
    last_hash: bytes = GENESIS
    last_mac: bytes | None = None  # the MAC the next entry chains to; None before the checkpoint
    checkpoint_seq: int | None = None  # None: the chain has never been authenticated
    key_ids: tuple[int, ...] = ()  # the audit keys the walked entries were MACed with
    anchors: int = 0  # anchors found authentic and checked against the chain
    newest_anchor: Anchor | None = None

    @property
    def authenticated(self) -> bool:
        return self.checkpoint_seq is not None


def _when(anchor: Anchor) -> str:
    return f"anchor of {anchor.at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC (entry {anchor.seq})"


@dataclass
class _Walk:
    """What verify tracks while walking; see :func:`verify`."""

    keyring: AuditKeyring | None
    problems: list[str] = field(default_factory=list)
    refreshed: bool = False
    key_ids: set[int] = field(default_factory=set)

    async def knows(self, conn: Conn, key_id: int) -> bool:
        """Whether the keyring has ``key_id``, loading newer keys once (a rotation elsewhere)."""
        if self.keyring is None:
            return False
        if key_id not in self.keyring.keys and not self.refreshed:
            self.refreshed = True
            await self.keyring.refresh(conn)
        return key_id in self.keyring.keys


async def verify(
    conn: Conn,
    *,
    batch: int = 5000,
    after_seq: int = 0,
    prev_hash: bytes = GENESIS,
    prev_mac: bytes | None = None,
    anchors: Sequence[Anchor] | None = None,
) -> VerifyResult:
    """Walk the chain and report every entry that was edited, removed, reordered or rewritten: the
    whole chain, or from entry ``after_seq + 1`` on, given the hash (and MAC, once authenticated) of
    entry ``after_seq`` (known good from an earlier walk), to check only what was added since.

    Checks the hash links, the checkpoint and every MAC with the connection's audit keys, and,
    given ``anchors`` (read from the anchor store), that every authentic anchor matches the entry
    it names and that the log does not end before the newest anchor (a truncation). Anchors of
    entries before ``after_seq`` are taken as checked by the earlier walk.

    Raises :class:`~callrec.crypto.auditkeys.AuditKeyError` when the chain carries MACs but the
    connection has no audit keys to check them with."""
    keyring = keyring_of(conn)
    walk = _Walk(keyring)
    problems = walk.problems
    rows = await conn.fetch("SELECT seq, hash, at, key_id, mac FROM audit_checkpoints ORDER BY seq")
    checkpoint = (
        Checkpoint(
            rows[0]["seq"], bytes(rows[0]["hash"]), rows[0]["at"], rows[0]["key_id"], bytes(rows[0]["mac"])
        )
        if rows
        else None
    )
    if checkpoint is not None and keyring is None:
        raise AuditKeyError(
            "the audit chain is authenticated, but this process holds no audit key to check it"
        )
    if len(rows) > 1:
        problems.append(
            f"{len(rows)} checkpoints: the chain was checkpointed again (only one is ever written)"
        )
    if checkpoint is not None:
        if not await walk.knows(conn, checkpoint.key_id):
            problems.append(
                f"checkpoint at entry {checkpoint.seq}: made with audit key {checkpoint.key_id}, "
                "which this deployment does not hold"
            )
        elif keyring is not None and not checkpoint.authentic(keyring.keys):
            problems.append(f"checkpoint at entry {checkpoint.seq}: MAC does not match (forged or altered)")

    # Anchors: the authentic ones, by the entry they name.
    by_seq: dict[int, list[Anchor]] = {}
    newest: Anchor | None = None
    for anchor in anchors or ():
        if not await walk.knows(conn, anchor.key_id):
            problems.append(
                f"{_when(anchor)}: made with audit key {anchor.key_id}, which this deployment does not hold"
            )
            continue
        assert keyring is not None
        if not anchor.authentic(keyring.keys):
            problems.append(f"{_when(anchor)}: MAC does not match (not written by this deployment)")
            continue
        by_seq.setdefault(anchor.seq, []).append(anchor)
        if newest is None or (anchor.seq, anchor.at) > (newest.seq, newest.at):
            newest = anchor

    def check_anchors(seq: int, chain_mac: bytes | None) -> None:
        for anchor in by_seq.get(seq, ()):
            if chain_mac is None or not AuditKeys.same(chain_mac, anchor.head_mac):
                problems.append(f"{_when(anchor)}: the chain's MAC at entry {seq} differs (rewritten)")

    cp_seq = checkpoint.seq if checkpoint is not None else None
    prev = prev_hash
    mac = prev_mac

    def reach_checkpoint() -> None:
        nonlocal mac
        assert checkpoint is not None
        if prev != checkpoint.hash:
            problems.append(
                f"checkpoint at entry {checkpoint.seq}: the hash chain there differs "
                f"(entries up to {checkpoint.seq} were rewritten)"
            )
        mac = checkpoint.mac
        check_anchors(checkpoint.seq, checkpoint.mac)

    if checkpoint is not None and mac is None:
        if after_seq == checkpoint.seq:
            reach_checkpoint()
        elif after_seq > checkpoint.seq:
            # A starting point given without its MAC: the stored one (the earlier walk vouched for it).
            stored = await conn.fetchval("SELECT mac FROM audit_log WHERE seq = $1", after_seq)
            mac = bytes(stored) if stored is not None else None
    expected_seq = after_seq + 1
    count = 0
    last_seq = after_seq
    unchecked_from: int | None = None
    while True:
        fetched = await conn.fetch(
            f"SELECT {_ENTRY_COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
            last_seq,
            batch,
        )
        if not fetched:
            break
        for entry in map(_entry, fetched):
            count += 1
            seq = entry.seq
            if seq != expected_seq:
                problems.append(f"entries {expected_seq}..{seq - 1} are missing")
                if cp_seq is not None and expected_seq <= cp_seq < seq:
                    reach_checkpoint()  # the checkpoint's entry is among the missing
            if entry.prev_hash != prev:
                problems.append(f"entry {seq}: link to the previous entry is broken")
            canonical = _canonical(
                seq=seq,
                at=entry.at,
                tenant=entry.tenant,
                actor=entry.actor,
                action=entry.action,
                recording_id=entry.recording_id,
                details=entry.details,
            )
            if entry_hash(entry.prev_hash, canonical) != entry.hash:
                problems.append(f"entry {seq}: content does not match its hash (edited)")
            if cp_seq is None:
                if entry.mac is not None and unchecked_from is None:
                    unchecked_from = seq
            elif seq <= cp_seq:
                if entry.mac is not None:
                    problems.append(
                        f"entry {seq}: carries a MAC but comes before the checkpoint at entry {cp_seq}"
                    )
            elif entry.mac is None or entry.key_id is None:
                problems.append(
                    f"entry {seq}: no MAC after the checkpoint "
                    "(written without the audit key, or its MAC removed)"
                )
            elif not await walk.knows(conn, entry.key_id):
                problems.append(
                    f"entry {seq}: made with audit key {entry.key_id}, which this deployment does not hold"
                )
            elif mac is None:
                problems.append(f"entry {seq}: its MAC cannot be checked, the MAC before it is missing")
            else:
                assert keyring is not None  # walk.knows() said it has the key
                walk.key_ids.add(entry.key_id)
                if not keyring.keys.same(keyring.keys.entry_mac(entry.key_id, mac, canonical), entry.mac):
                    problems.append(
                        f"entry {seq}: MAC does not match (edited, or rewritten without the audit key)"
                    )
            prev = entry.hash
            if cp_seq is not None and seq > cp_seq:
                mac = entry.mac
                check_anchors(seq, entry.mac)
            expected_seq = seq + 1
            last_seq = seq
            if seq == cp_seq:
                reach_checkpoint()
    if unchecked_from is not None:
        problems.append(f"entries from {unchecked_from} on carry MACs, but the chain's checkpoint is missing")
    if cp_seq is not None and last_seq < cp_seq:
        problems.append(
            f"the log ends at entry {last_seq}, before the checkpoint at entry {cp_seq}: entries were removed"
        )
    if newest is not None and newest.seq > last_seq:
        problems.append(
            f"the log ends at entry {last_seq}, but the {_when(newest)} is newer: entries were removed"
        )
    for seq, found in by_seq.items():
        if cp_seq is not None and seq < cp_seq and seq > after_seq:
            problems.append(
                f"{_when(found[0])}: names an entry before the checkpoint at entry {cp_seq} "
                "(the chain was checkpointed again)"
            )

    head = await conn.fetchrow("SELECT seq, hash, mac FROM audit_head WHERE id")
    head_seq = head["seq"] if head else 0
    if head and (head["seq"] != last_seq or bytes(head["hash"]) != prev):
        problems.append(f"chain head says entry {head['seq']} is the newest, the log ends at {last_seq}")
    elif head and cp_seq is not None and (head["mac"] is None or bytes(head["mac"]) != mac):
        problems.append(f"chain head's MAC is not the MAC of entry {last_seq}")
    if not head and last_seq:
        problems.append("chain head is missing")
    return VerifyResult(
        ok=not problems,
        entries=count,
        head_seq=head_seq,
        problems=problems,
        last_seq=last_seq,
        last_hash=prev,
        last_mac=mac,
        checkpoint_seq=cp_seq,
        key_ids=tuple(sorted(walk.key_ids)),
        anchors=sum(len(v) for v in by_seq.values()),
        newest_anchor=newest,
    )


# --- the newest anchor (the anchors themselves live outside the database) ---------------------


async def chain_head(conn: Conn) -> tuple[int, bytes | None]:
    """(seq, MAC) of the chain's head as committed: what an anchor records. (0, None) when empty."""
    row = await conn.fetchrow("SELECT seq, mac FROM audit_head WHERE id")
    if row is None:
        return 0, None
    return int(row["seq"]), bytes(row["mac"]) if row["mac"] is not None else None


async def last_anchor(conn: Conn) -> tuple[Anchor, str] | None:
    """The newest anchor written, and where, as the anchorer noted it (check its MAC before
    trusting it: the row is in the database)."""
    row = await conn.fetchrow(
        "SELECT at, seq, head_mac, key_id, mac, location FROM audit_anchor_last WHERE id"
    )
    if row is None:
        return None
    anchor = Anchor(
        at=row["at"],
        seq=row["seq"],
        head_mac=bytes(row["head_mac"]),
        key_id=row["key_id"],
        mac=bytes(row["mac"]),
    )
    return anchor, str(row["location"])


async def save_anchor(conn: Conn, anchor: Anchor, location: str) -> None:
    await conn.execute(
        """INSERT INTO audit_anchor_last (id, at, seq, head_mac, key_id, mac, location)
           VALUES (true, $1, $2, $3, $4, $5, $6)
           ON CONFLICT (id) DO UPDATE SET at = EXCLUDED.at, seq = EXCLUDED.seq, head_mac = EXCLUDED.head_mac,
               key_id = EXCLUDED.key_id, mac = EXCLUDED.mac, location = EXCLUDED.location""",
        anchor.at,
        anchor.seq,
        anchor.head_mac,
        anchor.key_id,
        anchor.mac,
        location,
    )


async def entries_by_seq(conn: Conn, seqs: list[int]) -> list[AuditEntry]:
    rows = await conn.fetch(
        f"SELECT {_ENTRY_COLUMNS} FROM audit_log WHERE seq = ANY($1::bigint[]) ORDER BY seq",
        seqs,
    )
    return [_entry(r) for r in rows]


async def head(conn: Conn) -> tuple[int, bytes] | None:
    row = await conn.fetchrow("SELECT seq, hash FROM audit_head WHERE id")
    return (int(row["seq"]), bytes(row["hash"])) if row else None


async def search(
    conn: Conn,
    *,
    tenant: str,
    actor: str | None,
    action: str | None,
    recording_id: uuid.UUID | None,
    limit: int,
    at_from: datetime | None = None,
    at_to: datetime | None = None,
    before_seq: int | None = None,
) -> list[AuditEntry]:
    """Newest first: one tenant's entries, filtered by actor, action, recording and time
    (``at_from`` inclusive, ``at_to`` exclusive); ``before_seq`` pages back from an entry."""
    rows = await conn.fetch(
        f"""SELECT {_ENTRY_COLUMNS} FROM audit_log
           WHERE tenant = $1 AND ($2::text IS NULL OR actor = $2) AND ($3::text IS NULL OR action = $3)
             AND ($4::uuid IS NULL OR recording_id = $4)
             AND ($6::timestamptz IS NULL OR at >= $6) AND ($7::timestamptz IS NULL OR at < $7)
             AND ($8::bigint IS NULL OR seq < $8)
           ORDER BY seq DESC LIMIT $5""",
        tenant,
        actor,
        action,
        recording_id,
        limit,
        at_from,
        at_to,
        before_seq,
    )
    return [_entry(r) for r in rows]
