"""The audit log: append-only, hash-chained, written in the caller's transaction.

Every entry's hash covers the previous entry's hash and a canonical encoding of its own
fields, so editing, reordering or removing any entry breaks the chain from that point on;
``audit_head`` (updated with each entry) makes the removal of the newest entries visible too.
Details never carry phone numbers, names or audio: callers pass pseudonymous ids only.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import asyncpg

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


_ENTRY_COLUMNS = "seq, at, tenant, actor, action, recording_id, details, prev_hash, hash"


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


async def record(
    conn: Conn,
    *,
    tenant: str,
    actor: str,
    action: AuditAction,
    recording_id: uuid.UUID | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEntry:
    """Append one entry. Must be called inside the transaction that makes the change."""
    if not conn.is_in_transaction():
        raise RuntimeError("audit entries are written in the transaction of the change they record")
    details = details or {}
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _CHAIN_LOCK)
    head = await conn.fetchrow("SELECT seq, hash FROM audit_head WHERE id")
    seq, prev = (head["seq"] + 1, bytes(head["hash"])) if head else (1, GENESIS)
    # Truncated to microseconds: PostgreSQL keeps exactly that, so verify re-derives the same bytes.
    at = datetime.now(UTC)
    digest = entry_hash(
        prev,
        _canonical(
            seq=seq,
            at=at,
            tenant=tenant,
            actor=actor,
            action=str(action),
            recording_id=recording_id,
            details=details,
        ),
    )
    await conn.execute(
        """INSERT INTO audit_log (seq, at, tenant, actor, action, recording_id, details, prev_hash, hash)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
        seq,
        at,
        tenant,
        actor,
        str(action),
        recording_id,
        json.dumps(details),
        prev,
        digest,
    )
    await conn.execute(
        """INSERT INTO audit_head (id, seq, hash) VALUES (true, $1, $2)
           ON CONFLICT (id) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash""",
        seq,
        digest,
    )
    return AuditEntry(seq, at, tenant, actor, str(action), recording_id, details, prev, digest)


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    entries: int  # entries walked
    head_seq: int
    problems: list[str]
    last_seq: int = 0  # the newest entry walked (or the starting point, when there was none)
    last_hash: bytes = GENESIS


async def verify(
    conn: Conn, *, batch: int = 5000, after_seq: int = 0, prev_hash: bytes = GENESIS
) -> VerifyResult:
    """Walk the chain and report every entry that was edited, removed or reordered: the whole
    chain, or from entry ``after_seq + 1`` on, given the hash of entry ``after_seq`` (known good
    from an earlier walk), to check only what was added since."""
    problems: list[str] = []
    prev = prev_hash
    expected_seq = after_seq + 1
    count = 0
    last_seq = after_seq
    while True:
        rows = await conn.fetch(
            f"SELECT {_ENTRY_COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
            last_seq,
            batch,
        )
        if not rows:
            break
        for entry in map(_entry, rows):
            count += 1
            seq = entry.seq
            if seq != expected_seq:
                problems.append(f"entries {expected_seq}..{seq - 1} are missing")
            if entry.prev_hash != prev:
                problems.append(f"entry {seq}: link to the previous entry is broken")
            digest = entry_hash(
                entry.prev_hash,
                _canonical(
                    seq=seq,
                    at=entry.at,
                    tenant=entry.tenant,
                    actor=entry.actor,
                    action=entry.action,
                    recording_id=entry.recording_id,
                    details=entry.details,
                ),
            )
            if digest != entry.hash:
                problems.append(f"entry {seq}: content does not match its hash (edited)")
            prev = entry.hash
            expected_seq = seq + 1
            last_seq = seq
    head = await conn.fetchrow("SELECT seq, hash FROM audit_head WHERE id")
    head_seq = head["seq"] if head else 0
    if head and (head["seq"] != last_seq or bytes(head["hash"]) != prev):
        problems.append(f"chain head says entry {head['seq']} is the newest, the log ends at {last_seq}")
    if not head and last_seq:
        problems.append("chain head is missing")
    return VerifyResult(
        ok=not problems,
        entries=count,
        head_seq=head_seq,
        problems=problems,
        last_seq=last_seq,
        last_hash=prev,
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
