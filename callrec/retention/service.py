"""Legal holds and deletion requests: the state changes, each with its audit entry, in the
caller's transaction.

- A hold covers what its scope matches, now and later, until it is released (rule 1).
- A deletion request erases every recording its subject names, except those a hold withholds
  (GDPR Art. 17(3)(e): "for the establishment, exercise or defence of legal claims"); recordings of
  the subject ingested while the request is open are covered too; a withheld recording is erased
  when its last hold is released, and the request then completes by itself.
- Every status change of a request queues a signed callback to its ``callback_url``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

from callrec import erasure, faults
from callrec.config import TenantConfig
from callrec.db import Conn, audit, deletions, holds, jobs

DELETION_PROCESS = "deletion.process"
DELETION_CALLBACK = "deletion.callback"
HOLD_SYNC = "hold.sync"


# --- holds -----------------------------------------------------------------------------------


async def place_hold(
    conn: Conn,
    *,
    tenant: str,
    matter: str,
    reason: str,
    actor: str,
    review_at: date | None,
    recording_ids: list[uuid.UUID] | None,
    call_ids: list[str] | None,
    phone_hashes: list[bytes] | None,
    time_from: datetime | None,
    time_to: datetime | None,
    agent: str | None,
    max_attempts: int,
) -> tuple[holds.Hold, int]:
    """Place a hold (exclusive hold lock: no erasure of this tenant runs across it). Returns the
    hold and how many live recordings it covers now."""
    await erasure.lock_for_hold_change(conn, tenant)
    scoped = holds.Hold.for_scope(
        tenant,
        recording_ids=recording_ids,
        call_ids=call_ids,
        phone_hashes=phone_hashes,
        time_from=time_from,
        time_to=time_to,
        agent=agent,
    )
    hold = await holds.create(
        conn, replace(scoped, matter=matter, reason=reason, created_by=actor, review_at=review_at)
    )
    covered = await holds.count_covered(conn, hold)
    # The matter names the case; the reason may name people, so it stays out of the audit log.
    await audit.record(
        conn,
        tenant=tenant,
        actor=actor,
        action=audit.AuditAction.HOLD_PLACED,
        # The matter's name stays in the holds table: a case name often names a person, and the
        # append-only audit log could never forget it.
        details={"hold_id": str(hold.id), "covers": covered, "scope": _scope_summary(hold)},
    )
    await _queue_hold_sync(conn, tenant, hold.id, max_attempts)
    return hold, covered


async def release_hold(
    conn: Conn, *, tenant: str, hold_id: uuid.UUID, actor: str, reason: str, max_attempts: int
) -> tuple[holds.Hold | None, list[uuid.UUID]]:
    """Release a hold and at once erase what was waiting only on it (deletion requests). Expiry
    that was waiting on it happens on the next sweep. Returns the hold (None if not active) and
    the recordings erased now."""
    await erasure.lock_for_hold_change(conn, tenant)
    hold = await holds.release(conn, tenant=tenant, hold_id=hold_id, by=actor, reason=reason)
    if hold is None:
        return None, []
    await audit.record(
        conn,
        tenant=tenant,
        actor=actor,
        action=audit.AuditAction.HOLD_RELEASED,
        details={"hold_id": str(hold_id)},
    )
    await _queue_hold_sync(conn, tenant, hold_id, max_attempts)
    erased = await resolve_withheld(conn, tenant=tenant, actor=actor, max_attempts=max_attempts)
    return hold, erased


async def _queue_hold_sync(conn: Conn, tenant: str, hold_id: uuid.UUID, max_attempts: int) -> None:
    """Mirror the hold onto the store (S3 Object Lock legal holds) through a durable job."""
    await jobs.enqueue(
        conn,
        tenant=tenant,
        kind=HOLD_SYNC,
        dedupe_key=f"{hold_id}:{uuid.uuid4()}",
        payload={"hold_id": str(hold_id)},
        max_attempts=max_attempts,
    )


def _scope_summary(hold: holds.Hold) -> dict[str, object]:
    """What the scope is made of, without phone numbers or their hashes."""
    return {
        "recording_ids": len(hold.scope_recording_ids or []) or None,
        "call_ids": hold.scope_call_ids,
        "phones": len(hold.scope_phone_hashes or []) or None,
        "from": hold.scope_from.isoformat() if hold.scope_from else None,
        "to": hold.scope_to.isoformat() if hold.scope_to else None,
        "agent": hold.scope_agent,
    }


# --- deletion requests -------------------------------------------------------------------------


def new_request(
    tenant: TenantConfig,
    *,
    subject: Mapping[str, Any],
    law: str,
    actor: str,
    request_hash: str,
    reason: str | None = None,
    external_ref: str | None = None,
    callback_url: str | None = None,
    idempotency_key: str | None = None,
) -> deletions.DeletionRequest:
    """A deletion request as received now, due by the tenant's deadline for its law (GDPR Art. 12(3):
    a month; CCPA: 45 days)."""
    now = datetime.now(UTC)
    return deletions.DeletionRequest(
        id=uuid.uuid4(),
        tenant=tenant.name,
        subject_kind=subject["subject_kind"],
        subject_phone_hash=subject.get("subject_phone_hash"),
        subject_call_id=subject.get("subject_call_id"),
        subject_recording_ids=subject.get("subject_recording_ids"),
        law=law,
        reason=reason,
        external_ref=external_ref,
        callback_url=callback_url,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        status="received",
        rejection_reason=None,
        created_by=actor,
        received_at=now,
        due_at=now + (tenant.deletion_due_ccpa if law == "ccpa" else tenant.deletion_due),
        completed_at=None,
        updated_at=now,
    )


async def accept_request(
    conn: Conn, req: deletions.DeletionRequest, *, actor: str, max_attempts: int, via: str | None = None
) -> None:
    """A request just inserted: its audit entry, and the durable job that will decide it."""
    details = {
        "request_id": str(req.id),
        "subject_kind": req.subject_kind,
        "law": req.law,
        "due_at": req.due_at.isoformat(),
    }
    await audit.record(
        conn,
        tenant=req.tenant,
        actor=actor,
        action=audit.AuditAction.DELETION_REQUESTED,
        details={**details, "via": via} if via else details,
    )
    await jobs.enqueue(
        conn,
        tenant=req.tenant,
        kind=DELETION_PROCESS,
        dedupe_key=str(req.id),
        payload={"request_id": str(req.id)},
        max_attempts=max_attempts,
    )


async def process_request(
    conn: Conn,
    *,
    tenant: str,
    request_id: uuid.UUID,
    actor: str,
    max_attempts: int,
    erased_objects: list[tuple[str, str]] | None = None,
) -> deletions.DeletionRequest | None:
    """Decide every recording the request names: deleted, withheld by a hold, or already gone.

    ``erased_objects``, when given, receives (tenant, object key) of each recording erased here,
    and the caller promises to delete those objects in one batch once this transaction has
    committed (:func:`callrec.erasure.delete_objects_now`): their ``object.delete`` jobs are held
    back meanwhile (:func:`callrec.erasure.hold_back_object_jobs`) and stay the fallback."""
    req = await deletions.get(conn, tenant=tenant, request_id=request_id, for_update=True)
    if req is None or req.status not in deletions.OPEN_STATUSES:
        return req
    await _set_status(conn, req, "processing", max_attempts=max_attempts)
    matches = await deletions.matching_recordings(conn, req)
    if req.subject_kind == "recording_ids" and not matches:
        await _set_status(
            conn,
            req,
            "rejected",
            max_attempts=max_attempts,
            rejection_reason="no recording with these ids exists for this tenant",
        )
        return await deletions.get(conn, tenant=tenant, request_id=request_id)
    first = len(erased_objects) if erased_objects is not None else 0
    # Recordings already decided for this request (ingested while it waited) keep their outcome.
    decided = {o.recording_id for o in await deletions.outcomes(conn, request_id=req.id)}
    for recording_id, state in matches:
        if recording_id in decided:
            continue
        await _decide_one(
            conn,
            req,
            recording_id,
            state,
            actor=actor,
            max_attempts=max_attempts,
            erased_objects=erased_objects,
        )
        faults.point("deletion.decide")
    if erased_objects is not None:
        await erasure.hold_back_object_jobs(conn, erased_objects[first:])
    await _settle(conn, req, max_attempts=max_attempts)
    return await deletions.get(conn, tenant=tenant, request_id=request_id)


async def _decide_one(
    conn: Conn,
    req: deletions.DeletionRequest,
    recording_id: uuid.UUID,
    state: str,
    *,
    actor: str,
    max_attempts: int,
    erased_objects: list[tuple[str, str]] | None = None,
) -> str:
    if state in ("destroyed", "rejected"):
        await deletions.record_outcome(
            conn, request_id=req.id, recording_id=recording_id, outcome="already_deleted"
        )
        return "already_deleted"
    result = await erasure.erase_in_transaction(
        conn,
        tenant=req.tenant,
        recording_id=recording_id,
        reason=f"deletion_request:{req.id}",
        actor=actor,
        max_attempts=max_attempts,
    )
    if result.outcome == "held":
        await deletions.record_outcome(
            conn,
            request_id=req.id,
            recording_id=recording_id,
            outcome="withheld_legal_hold",
            hold_id=result.holds[0].id,
        )
        return "withheld_legal_hold"
    outcome = "deleted" if result.outcome == "erased" else "already_deleted"
    if erased_objects is not None and result.object_key:
        erased_objects.append((req.tenant, result.object_key))
    await deletions.record_outcome(
        conn, request_id=req.id, recording_id=recording_id, outcome=outcome, audit_seq=result.audit_seq
    )
    return outcome


async def _settle(conn: Conn, req: deletions.DeletionRequest, *, max_attempts: int) -> None:
    """Completed or partially completed, from the outcomes so far. A request whose own job has not
    run yet (still ``received``) is left alone: that job still has the subject's other recordings
    to decide, and a final status would make it stop early."""
    current = await deletions.get(conn, tenant=req.tenant, request_id=req.id)
    if current is None or current.status == "received":
        return
    outcomes = await deletions.outcomes(conn, request_id=req.id)
    withheld = any(o.outcome == "withheld_legal_hold" for o in outcomes)
    await _set_status(
        conn, req, "partially_completed" if withheld else "completed", max_attempts=max_attempts
    )


async def _set_status(
    conn: Conn,
    req: deletions.DeletionRequest,
    status: str,
    *,
    max_attempts: int,
    rejection_reason: str | None = None,
) -> None:
    if not await deletions.set_status(
        conn, request_id=req.id, status=status, rejection_reason=rejection_reason
    ):
        return
    await audit.record(
        conn,
        tenant=req.tenant,
        actor="system:deletions",
        action=audit.AuditAction.DELETION_STATUS,
        details={"request_id": str(req.id), "status": status, "rejection_reason": rejection_reason},
    )
    if req.callback_url:
        await jobs.enqueue(
            conn,
            tenant=req.tenant,
            kind=DELETION_CALLBACK,
            dedupe_key=f"{req.id}:{status}",
            payload={"request_id": str(req.id), "status": status},
            max_attempts=max_attempts,
        )


async def apply_open_requests(
    conn: Conn,
    *,
    tenant: str,
    recording_id: uuid.UUID,
    call_id: str,
    hashes: Iterable[bytes],
    arrived_at: datetime,
    max_attempts: int,
) -> list[uuid.UUID]:
    """A recording just ingested whose subject has a deletion request (still open, or made after the
    recording's webhook arrived) is decided at once, in the ingest transaction: it never becomes
    readable. Returns the requests it fell under."""
    matched = await deletions.open_requests_for(
        conn,
        tenant=tenant,
        call_id=call_id,
        recording_id=recording_id,
        hashes=list(hashes),
        arrived_at=arrived_at,
    )
    for req in matched:
        await _decide_one(
            conn, req, recording_id, "stored", actor="system:deletions", max_attempts=max_attempts
        )
        await _settle(conn, req, max_attempts=max_attempts)
    return [r.id for r in matched]


async def resolve_withheld(conn: Conn, *, tenant: str, actor: str, max_attempts: int) -> list[uuid.UUID]:
    """Erase withheld recordings that no active hold covers any more; settle their requests."""
    erased: list[uuid.UUID] = []
    touched: dict[uuid.UUID, deletions.DeletionRequest] = {}
    for request_id, recording_id in await deletions.withheld_by_released_holds(conn, tenant=tenant):
        req = touched.get(request_id) or await deletions.get(conn, tenant=tenant, request_id=request_id)
        if req is None:
            continue
        touched[request_id] = req
        if (
            await _decide_one(conn, req, recording_id, "stored", actor=actor, max_attempts=max_attempts)
            == "deleted"
        ):
            erased.append(recording_id)
            faults.point("hold.release")
    for req in touched.values():
        await _settle(conn, req, max_attempts=max_attempts)
    return erased
