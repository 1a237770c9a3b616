"""``/api/v1/deletion-requests``: erasure on request (GDPR Art. 17, CCPA § 1798.105).

A request is answered 202 at once and decided by a durable job. ``Idempotency-Key`` makes a retry
of the same request return the same request; reusing a key for a different request is a 422.
The certificate is a record of what was deleted and when, fit to show a regulator or the data
subject: ids, dates, outcomes and the audit-chain entries that prove them; no personal data.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from callrec.api.auth import actor, authenticate
from callrec.api.body import json_object, optional_str
from callrec.appkeys import config_key, db_key, keys_key
from callrec.db import audit, deletions, holds
from callrec.errors import BadRequest, NotFound
from callrec.ingest.media import check_media_url
from callrec.ingest.webhooks import normalise_e164
from callrec.retention import service

MAX_RECORDING_IDS = 1000
ERASURE_METHOD = (
    "the recording's encryption key, sealed phone numbers and their hashes are destroyed in the transaction "
    "of the audit entry (crypto-shredding); every stored object version is deleted after"
)


async def parse_subject(request: web.Request, tenant: str, raw: object) -> dict[str, Any]:
    if not isinstance(raw, dict) or len(raw) != 1:
        raise BadRequest(
            'subject must be exactly one of {"phone": "+..."}, {"call_id": "..."}, {"recording_ids": [...]}',
            code="invalid_subject",
        )
    ((kind, value),) = raw.items()
    if kind == "phone":
        e164 = normalise_e164(value, field="subject.phone")
        async with request.app[db_key].acquire() as conn:
            digest = await request.app[keys_key].phone_hash(conn, tenant, e164)
        return {"subject_kind": "phone", "subject_phone_hash": digest, "fingerprint": digest.hex()}
    if kind == "call_id":
        if not isinstance(value, str) or not 0 < len(value) <= 128:
            raise BadRequest("subject.call_id must be a call id", code="invalid_subject")
        return {"subject_kind": "call_id", "subject_call_id": value, "fingerprint": value}
    if kind == "recording_ids":
        if not isinstance(value, list) or not 0 < len(value) <= MAX_RECORDING_IDS:
            raise BadRequest(
                f"subject.recording_ids must list 1 to {MAX_RECORDING_IDS} ids", code="invalid_subject"
            )
        try:
            ids = sorted({uuid.UUID(str(v)) for v in value})
        except ValueError:
            raise BadRequest("subject.recording_ids must be recording ids", code="invalid_subject") from None
        return {
            "subject_kind": "recording_ids",
            "subject_recording_ids": ids,
            "fingerprint": [str(i) for i in ids],
        }
    raise BadRequest(f"unknown subject kind {kind!r}", code="invalid_subject")


def request_json(
    req: deletions.DeletionRequest,
    outcomes: list[deletions.Outcome] | None = None,
    hold_matters: dict[uuid.UUID, str] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": str(req.id),
        "status": req.status,
        "subject": {"kind": req.subject_kind},
        "law": req.law,
        "reason": req.reason,
        "external_ref": req.external_ref,
        "callback_url": req.callback_url,
        "received_at": req.received_at.isoformat(),
        "due_at": req.due_at.isoformat(),
        "overdue": req.status in deletions.OPEN_STATUSES and req.due_at < datetime.now(UTC),
        "completed_at": req.completed_at.isoformat() if req.completed_at else None,
        "rejection_reason": req.rejection_reason,
    }
    if outcomes is not None:
        body["outcomes"] = [
            {
                "recording_id": str(o.recording_id),
                "outcome": o.outcome,
                # The hold's id and matter, never its reason.
                "hold": {"id": str(o.hold_id), "matter": (hold_matters or {}).get(o.hold_id)}
                if o.hold_id
                else None,
                "decided_at": o.decided_at.isoformat(),
                "deleted_at": o.deleted_at.isoformat() if o.deleted_at else None,
            }
            for o in outcomes
        ]
    return body


async def create_request(request: web.Request) -> web.Response:
    token = await authenticate(request, "deletions:write")
    config = request.app[config_key]
    tenant = config.tenants[token.tenant]
    body = await json_object(request)
    unknown = sorted(set(body) - {"subject", "reason", "external_ref", "callback_url", "law"})
    if unknown:
        raise BadRequest(f"unknown keys: {', '.join(unknown)}", code="invalid_body")
    subject = await parse_subject(request, token.tenant, body.get("subject"))
    law = body.get("law", "gdpr")
    if law not in ("gdpr", "ccpa"):
        raise BadRequest("law must be gdpr or ccpa", code="invalid_body")
    callback_url = optional_str(body, "callback_url", max_length=2000)
    if callback_url:
        check_media_url(callback_url, tenant.callback_hosts)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 0 < len(key) <= 200:
        raise BadRequest("Idempotency-Key must be 1 to 200 characters", code="invalid_idempotency_key")
    fingerprint = {
        "subject": [subject["subject_kind"], subject["fingerprint"]],
        "law": law,
        "reason": body.get("reason"),
        "external_ref": body.get("external_ref"),
        "callback_url": callback_url,
    }
    request_hash = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()
    new = service.new_request(
        tenant,
        subject=subject,
        law=law,
        actor=actor(token),
        request_hash=request_hash,
        reason=optional_str(body, "reason", max_length=2000),
        external_ref=optional_str(body, "external_ref", max_length=200),
        callback_url=callback_url,
        idempotency_key=key,
    )
    async with request.app[db_key].acquire() as conn, conn.transaction():
        req, created = await deletions.insert(conn, new)
        if not created:
            if req.request_hash != request_hash:
                raise BadRequest(
                    "this Idempotency-Key was used for a different request",
                    code="idempotency_key_reused",
                    status=422,
                )
            return web.json_response(request_json(req), status=200)
        await service.accept_request(conn, req, actor=actor(token), max_attempts=config.ingest.max_attempts)
    return web.json_response(request_json(req), status=202)


async def list_requests(request: web.Request) -> web.Response:
    token = await authenticate(request, "deletions:read")
    status = request.query.get("status")
    if status not in (None, "received", "processing", "completed", "partially_completed", "rejected"):
        raise BadRequest("unknown status", code="invalid_parameter")
    overdue_raw = request.query.get("overdue")
    if overdue_raw not in (None, "true", "false"):
        raise BadRequest("overdue must be true or false", code="invalid_parameter")
    overdue = None if overdue_raw is None else overdue_raw == "true"
    async with request.app[db_key].acquire() as conn:
        found = await deletions.list_requests(
            conn, tenant=token.tenant, status=status, overdue=overdue, limit=500
        )
    return web.json_response({"items": [request_json(r) for r in found]})


def _request_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["id"])
    except ValueError:
        raise NotFound("no such deletion request") from None


async def _load(
    request: web.Request, tenant: str
) -> tuple[deletions.DeletionRequest, list[deletions.Outcome], dict[uuid.UUID, str]]:
    async with request.app[db_key].acquire() as conn:
        req = await deletions.get(conn, tenant=tenant, request_id=_request_id(request))
        if req is None:
            raise NotFound("no such deletion request")
        outcomes = await deletions.outcomes(conn, request_id=req.id)
        matters = {}
        for hold_id in {o.hold_id for o in outcomes if o.hold_id}:
            hold = await holds.get(conn, tenant=tenant, hold_id=hold_id)
            if hold is not None:
                matters[hold_id] = hold.matter
    return req, outcomes, matters


async def get_request(request: web.Request) -> web.Response:
    token = await authenticate(request, "deletions:read")
    req, outcomes, matters = await _load(request, token.tenant)
    return web.json_response(request_json(req, outcomes, matters))


async def certificate(request: web.Request) -> web.Response:
    """What was deleted, when, and where each deletion stands in the audit chain."""
    token = await authenticate(request, "deletions:read")
    req, outcomes, matters = await _load(request, token.tenant)
    async with request.app[db_key].acquire() as conn:
        entries = await audit.entries_by_seq(conn, [o.audit_seq for o in outcomes if o.audit_seq])
        head = await audit.head(conn)
    by_seq = {e.seq: e for e in entries}
    items = []
    for o in outcomes:
        entry = by_seq.get(o.audit_seq) if o.audit_seq else None
        items.append(
            {
                "recording_id": str(o.recording_id),
                "outcome": o.outcome,
                "deleted_at": o.deleted_at.isoformat() if o.deleted_at else None,
                "withheld_by": {"hold_id": str(o.hold_id), "matter": matters.get(o.hold_id)}
                if o.hold_id
                else None,
                "audit": {
                    "seq": entry.seq,
                    "hash": entry.hash.hex(),
                    "prev_hash": entry.prev_hash.hex(),
                    "at": entry.at.isoformat(),
                }
                if entry
                else None,
            }
        )
    return web.json_response(
        {
            "certificate": "callrec deletion certificate v1",
            "request_id": str(req.id),
            "tenant": req.tenant,
            "law": req.law,
            "subject_kind": req.subject_kind,
            "external_ref": req.external_ref,
            "status": req.status,
            "received_at": req.received_at.isoformat(),
            "due_at": req.due_at.isoformat(),
            "completed_at": req.completed_at.isoformat() if req.completed_at else None,
            "recordings": items,
            "summary": {
                k: sum(1 for o in outcomes if o.outcome == k)
                for k in ("deleted", "withheld_legal_hold", "already_deleted")
            },
            "method": ERASURE_METHOD,
            "audit_chain_head": {"seq": head[0], "hash": head[1].hex()} if head else None,
            "issued_at": datetime.now(UTC).isoformat(),
        }
    )
