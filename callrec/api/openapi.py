"""The OpenAPI 3.1 document for ``/api/v1``, served (without authentication) at ``/api/v1/openapi.json``.

The document is written here by hand, next to the handlers it describes, and checked against the code by
``tests/api/test_openapi.py``: every route registered under ``/api/v1`` must appear with the same methods
(and nothing else may), every scope named here must be one ``callrec.api.auth.SCOPES`` knows, and
schemathesis drives every operation with generated requests, expecting no server error and responses
that match the schemas below. Schemas are JSON Schema 2020-12, which OpenAPI 3.1 uses as is.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Final

from aiohttp import web

from callrec.api.auth import SCOPES

SECURITY_SCHEME: Final = "bearerAuth"
MAX_PAGE: Final = 200  # callrec.api.recordings.MAX_PAGE
MAX_SEARCH_BYTES: Final = 8 * 1024  # callrec.api.recordings.MAX_SEARCH_BYTES
MAX_CALL_ID: Final = 128  # callrec.api.recordings.MAX_CALL_ID
MAX_AGENT: Final = 64  # callrec.api.recordings.MAX_AGENT
MAX_SCOPE_ITEMS: Final = 10_000  # callrec.api.holds.MAX_SCOPE_ITEMS
MAX_RECORDING_IDS: Final = 1000  # callrec.api.deletions.MAX_RECORDING_IDS

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    """``schema`` or null (OpenAPI 3.1 has no ``nullable``: a type list does it)."""
    out = dict(schema)
    kind = out.get("type")
    if isinstance(kind, str):
        out["type"] = [kind, "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
        return out
    return {"anyOf": [schema, {"type": "null"}]}


def _json(schema: Schema) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _object(properties: dict[str, Schema], *, required: list[str] | None = None, **extra: Any) -> Schema:
    schema: Schema = {"type": "object", "properties": properties}
    schema["required"] = list(properties) if required is None else required
    schema.update(extra)
    return schema


UUID: Final[Schema] = {"type": "string", "format": "uuid"}
TIME: Final[Schema] = {"type": "string", "format": "date-time"}
DATE: Final[Schema] = {"type": "string", "format": "date"}
HEX: Final[Schema] = {"type": "string", "pattern": "^[0-9a-f]*$"}
# A string with something besides white space in it (the API strips and then checks).
TEXT: Final[Schema] = {"type": "string", "pattern": r"\S"}
E164: Final[Schema] = {
    "type": "string",
    "pattern": r"^\+[1-9][0-9]{6,14}$",
    "description": "an E.164 phone number such as +442071234567",
    "examples": ["+442071234567"],
}
RECORDING_STATES: Final = ["stored", "quarantined", "rejected", "destroyed"]
DELETION_STATUSES: Final = ["received", "processing", "completed", "partially_completed", "rejected"]
OUTCOMES: Final = ["deleted", "withheld_legal_hold", "already_deleted"]


# --- components.schemas ----------------------------------------------------------------------------

_HOLD_REF: Final[Schema] = _object(
    {"id": UUID, "matter": {"type": "string"}},
    description="A legal hold as other resources show it: its id and matter, never its reason.",
)

SCHEMAS: Final[dict[str, Schema]] = {
    "Error": _object(
        {
            "error": _object(
                {
                    "code": {
                        "type": "string",
                        "description": "stable, for programs: invalid_body, not_found, ...",
                    },
                    "message": {"type": "string", "description": "for people; may change"},
                }
            )
        },
        description='Every error: `{"error": {"code", "message"}}`.',
    ),
    "Recording": _object(
        {
            "id": UUID,
            "tenant": {"type": "string"},
            "provider": {"type": "string", "examples": ["twilio", "vonage", "plivo", "upload"]},
            "call_id": {"type": "string"},
            "provider_recording_id": {"type": "string"},
            "state": {"type": "string", "enum": RECORDING_STATES},
            "started_at": _nullable(TIME),
            "stored_at": TIME,
            "expires_at": TIME,
            "duration_ms": _nullable({"type": "integer", "minimum": 0}),
            "channels": _nullable({"type": "integer", "minimum": 0}),
            "sample_rate": _nullable({"type": "integer", "minimum": 0}),
            "format": _nullable({"type": "string", "examples": ["wav", "mp3", "ogg"]}),
            "codec": _nullable({"type": "string"}),
            "size_bytes": _nullable({"type": "integer", "minimum": 0}),
            "sha256": _nullable(HEX),
            "direction": _nullable({"type": "string", "examples": ["inbound", "outbound"]}),
            "announcement": {"type": "object", "description": "how the caller was told of the recording"},
            "consent": {"type": "object", "description": "the consent state, lawful basis and purpose"},
            "agent": _nullable({"type": "string"}),
            "jurisdiction": {"type": "object"},
            "policy": {"type": "object", "description": "the policy decision that kept (or refused) it"},
            "redactions": {
                "type": "array",
                "items": _object({"start_ms": {"type": "integer"}, "end_ms": {"type": "integer"}}),
                "description": "spans of audio silenced before storage (card numbers read out), in ms",
            },
            "destroyed_at": _nullable(TIME),
            "destroy_reason": _nullable({"type": "string"}),
            "holds": {"type": "array", "items": _HOLD_REF, "description": "the active legal holds on it"},
            "restricted": {
                "type": "boolean",
                "description": "GDPR Art. 18: kept, but only tokens with restricted:read see or open it",
            },
            "parties": _object(
                {"from": {"type": "string"}, "to": {"type": "string"}},
                required=[],
                description="masked numbers (country code and last two digits); on a single recording only",
            ),
        },
        required=[
            "id",
            "tenant",
            "provider",
            "call_id",
            "provider_recording_id",
            "state",
            "started_at",
            "stored_at",
            "expires_at",
            "duration_ms",
            "channels",
            "sample_rate",
            "format",
            "codec",
            "size_bytes",
            "sha256",
            "direction",
            "announcement",
            "consent",
            "agent",
            "jurisdiction",
            "policy",
            "redactions",
            "destroyed_at",
            "destroy_reason",
            "holds",
            "restricted",
        ],
        description="A recording's metadata. No phone number appears, except masked in `parties`.",
    ),
    "RecordingList": _object(
        {
            "items": {"type": "array", "items": _ref("Recording")},
            "next_cursor": _nullable(
                {"type": "string", "description": "pass as `cursor` for the next page; null on the last"}
            ),
        }
    ),
    "RecordingSearch": _object(
        {
            "call_id": {"type": "string", "minLength": 1, "maxLength": MAX_CALL_ID},
            "from": {**TIME, "description": "stored at or after (ISO 8601 with a UTC offset)"},
            "to": {**TIME, "description": "stored before (ISO 8601 with a UTC offset)"},
            "phone": {**E164, "description": "either party's number, matched through its keyed hash"},
            "agent": {"type": "string", "minLength": 1, "maxLength": MAX_AGENT},
            "state": {
                "type": "string",
                "enum": RECORDING_STATES,
                "default": "stored",
                "description": "quarantined needs the quarantine:review scope as well",
            },
            "limit": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 50},
            "cursor": {
                "type": "string",
                "minLength": 1,
                "description": "`next_cursor` of the previous page, sent with the same filters",
            },
        },
        required=[],
        additionalProperties=False,
        description="The list's filters, `phone` among them; every filter given must match. "
        "Unknown keys and values of the wrong type are a 400 `invalid_body`.",
    ),
    "Reason": _object(
        {"reason": {**TEXT, "minLength": 1, "maxLength": 500}},
        description="Why: required, recorded in the audit entry.",
    ),
    "HoldScope": _object(
        {
            "recording_ids": _nullable({"type": "array", "items": UUID}),
            "call_ids": _nullable({"type": "array", "items": {"type": "string"}}),
            "phones": _nullable(
                {
                    "type": "integer",
                    "minimum": 1,
                    "description": "how many numbers; matched by keyed hash, never shown back",
                }
            ),
            "from": _nullable(TIME),
            "to": _nullable(TIME),
            "agent": _nullable({"type": "string"}),
        },
        description="What a hold covers: every criterion given must match (null: not a criterion).",
    ),
    "HoldScopeInput": _object(
        {
            "recording_ids": {
                "type": "array",
                "items": UUID,
                "minItems": 1,
                "maxItems": MAX_SCOPE_ITEMS,
            },
            "call_ids": {
                "type": "array",
                "items": {"type": "string"},
                "minItems": 1,
                "maxItems": MAX_SCOPE_ITEMS,
            },
            "phones": {"type": "array", "items": E164, "minItems": 1, "maxItems": MAX_SCOPE_ITEMS},
            "from": {**TIME, "description": "recordings started (or stored) at or after this time"},
            "to": {**TIME, "description": "recordings started (or stored) before this time; after `from`"},
            "agent": {"type": "string", "minLength": 1, "maxLength": 64},
        },
        required=[],
        additionalProperties=False,
        minProperties=1,
        description="At least one criterion; a recording is covered when it matches all the criteria given. "
        "The hold also covers matching recordings ingested later, until it is released.",
    ),
    "LegalHoldCreate": _object(
        {
            "matter": {**TEXT, "minLength": 1, "maxLength": 200},
            "reason": {**TEXT, "minLength": 1, "maxLength": 2000},
            "review_at": {**DATE, "description": "when the hold should be reviewed"},
            "scope": _ref("HoldScopeInput"),
        },
        required=["matter", "reason", "scope"],
        additionalProperties=False,
    ),
    "HoldPreview": _object({"scope": _ref("HoldScopeInput")}),
    "HoldCoverage": _object({"covers": {"type": "integer", "minimum": 0}}),
    "HoldRelease": _object({"reason": {**TEXT, "minLength": 1, "maxLength": 2000}}),
    "LegalHold": _object(
        {
            "id": UUID,
            "tenant": {"type": "string"},
            "matter": {"type": "string"},
            "reason": {"type": "string", "description": "shown to the holds scopes only, never elsewhere"},
            "created_by": {"type": "string"},
            "created_at": TIME,
            "review_at": _nullable(DATE),
            "active": {"type": "boolean"},
            "scope": _ref("HoldScope"),
            "released_at": _nullable(TIME),
            "released_by": _nullable({"type": "string"}),
            "release_reason": _nullable({"type": "string"}),
            "covers": {
                "type": "integer",
                "minimum": 0,
                "description": "how many live recordings it covers (when placed, and on GET by id)",
            },
            "recordings": {
                "type": "array",
                "items": UUID,
                "description": "GET by id: the recordings it covers, at most 1000",
            },
            "recordings_truncated": {
                "type": "boolean",
                "description": "GET by id: true when `recordings` lists fewer than `covers`",
            },
            "erased_now": {
                "type": "array",
                "items": UUID,
                "description": "release: recordings whose waiting expiry or deletion happened at once",
            },
        },
        required=[
            "id",
            "tenant",
            "matter",
            "reason",
            "created_by",
            "created_at",
            "review_at",
            "active",
            "scope",
            "released_at",
            "released_by",
            "release_reason",
        ],
    ),
    "LegalHoldList": _object({"items": {"type": "array", "items": _ref("LegalHold")}}),
    "Subject": {
        "description": "Exactly one way to name the data subject.",
        "oneOf": [
            _object({"phone": E164}, additionalProperties=False),
            _object(
                {"call_id": {"type": "string", "minLength": 1, "maxLength": 128}}, additionalProperties=False
            ),
            _object(
                {
                    "recording_ids": {
                        "type": "array",
                        "items": UUID,
                        "minItems": 1,
                        "maxItems": MAX_RECORDING_IDS,
                    }
                },
                additionalProperties=False,
            ),
        ],
    },
    "DeletionRequestCreate": _object(
        {
            "subject": _ref("Subject"),
            "law": {"type": "string", "enum": ["gdpr", "ccpa"], "default": "gdpr"},
            "reason": {**TEXT, "minLength": 1, "maxLength": 2000},
            "external_ref": {
                **TEXT,
                "minLength": 1,
                "maxLength": 200,
                "description": "your reference (a ticket id)",
            },
            "callback_url": {
                "type": "string",
                "format": "uri",
                "minLength": 1,
                "maxLength": 2000,
                "description": "gets a signed POST on every status change; its host must be in the tenant's "
                "callback_hosts",
            },
        },
        required=["subject"],
        additionalProperties=False,
    ),
    "DeletionOutcome": _object(
        {
            "recording_id": UUID,
            "outcome": {"type": "string", "enum": OUTCOMES},
            "hold": _nullable(
                _object(
                    {"id": UUID, "matter": _nullable({"type": "string"})},
                    description="for withheld_legal_hold: the hold's id and matter, never its reason",
                )
            ),
            "decided_at": TIME,
            "deleted_at": _nullable(TIME),
        }
    ),
    "DeletionRequest": _object(
        {
            "id": UUID,
            "status": {"type": "string", "enum": DELETION_STATUSES},
            "subject": _object({"kind": {"type": "string", "enum": ["phone", "call_id", "recording_ids"]}}),
            "law": {"type": "string", "enum": ["gdpr", "ccpa"]},
            "reason": _nullable({"type": "string"}),
            "external_ref": _nullable({"type": "string"}),
            "callback_url": _nullable({"type": "string"}),
            "received_at": TIME,
            "due_at": TIME,
            "overdue": {"type": "boolean"},
            "completed_at": _nullable(TIME),
            "rejection_reason": _nullable({"type": "string"}),
            "outcomes": {
                "type": "array",
                "items": _ref("DeletionOutcome"),
                "description": "on GET by id: one per matching recording",
            },
        },
        required=[
            "id",
            "status",
            "subject",
            "law",
            "reason",
            "external_ref",
            "callback_url",
            "received_at",
            "due_at",
            "overdue",
            "completed_at",
            "rejection_reason",
        ],
    ),
    "DeletionRequestList": _object({"items": {"type": "array", "items": _ref("DeletionRequest")}}),
    "Certificate": _object(
        {
            "certificate": {"type": "string", "const": "callrec deletion certificate v1"},
            "request_id": UUID,
            "tenant": {"type": "string"},
            "law": {"type": "string", "enum": ["gdpr", "ccpa"]},
            "subject_kind": {"type": "string", "enum": ["phone", "call_id", "recording_ids"]},
            "external_ref": _nullable({"type": "string"}),
            "status": {"type": "string", "enum": DELETION_STATUSES},
            "received_at": TIME,
            "due_at": TIME,
            "completed_at": _nullable(TIME),
            "recordings": {
                "type": "array",
                "items": _object(
                    {
                        "recording_id": UUID,
                        "outcome": {"type": "string", "enum": OUTCOMES},
                        "deleted_at": _nullable(TIME),
                        "withheld_by": _nullable(
                            _object({"hold_id": UUID, "matter": _nullable({"type": "string"})})
                        ),
                        "audit": _nullable(
                            _object(
                                {"seq": {"type": "integer"}, "hash": HEX, "prev_hash": HEX, "at": TIME},
                                description="the audit-chain entry that records this outcome",
                            )
                        ),
                    }
                ),
            },
            "summary": _object({k: {"type": "integer", "minimum": 0} for k in OUTCOMES}),
            "method": {"type": "string", "description": "how a recording is erased"},
            "audit_chain_head": _nullable(_object({"seq": {"type": "integer"}, "hash": HEX})),
            "issued_at": TIME,
        },
        description="What was deleted and when, with the audit-chain positions and hashes that prove it. "
        "No personal data.",
    ),
    "AccessRequestCreate": _object({"subject": _ref("Subject")}, additionalProperties=False),
    "AccessRequest": _object(
        {
            "id": UUID,
            "recordings": {
                "type": "integer",
                "minimum": 0,
                "description": "how many recordings the ZIP holds",
            },
            "download_url": {
                "type": "string",
                "description": "short-lived link to the ZIP (decrypted audio and a metadata JSON); "
                "it carries its own token, so no bearer token is needed to follow it",
            },
            "expires_at": TIME,
        }
    ),
}


# --- parameters, headers and responses -----------------------------------------------------------


def _path_id(what: str) -> dict[str, Any]:
    return {
        "name": "id",
        "in": "path",
        "required": True,
        "description": f"the {what}'s id (an id that is not a UUID is answered 404)",
        "schema": UUID,
    }


def _query(name: str, schema: Schema, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


_ERRORS: Final = {
    "400": ("BadRequest", "Bad input (bad_request, invalid_body, invalid_parameter, ...); nothing changed."),
    "401": ("Unauthorized", "No bearer token, or an unknown or revoked one (unauthorized, invalid_token)."),
    "403": ("Forbidden", "The token lacks the operation's scope (insufficient_scope)."),
    "404": ("NotFound", "No such resource for the token's tenant (not_found)."),
    "409": ("Conflict", "The resource is not in a state that allows this (conflict, legal_hold, ...)."),
    "413": ("PayloadTooLarge", "The body is over 1 MiB (over 8 KiB for a search)."),
    "416": ("RangeNotSatisfiable", "The Range is outside the recording."),
    "422": ("UnprocessableEntity", "The Idempotency-Key was used for a different request."),
    "503": ("Unavailable", "A backing service is unavailable; nothing was accepted, retry later."),
}

RESPONSES: Final[dict[str, Any]] = {
    name: {"description": description, "content": _json(_ref("Error"))}
    for name, description in _ERRORS.values()
}
RESPONSES["Unavailable"]["headers"] = {
    "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}},
}
RESPONSES["RangeNotSatisfiable"]["headers"] = {
    "Content-Range": {"required": True, "description": "`bytes */<size>`", "schema": {"type": "string"}},
}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"$ref": f"#/components/responses/{_ERRORS[str(s)][0]}"} for s in statuses}


def _op(
    operation_id: str,
    tag: str,
    summary: str,
    *,
    scope: str | None,
    ok: dict[str, Any],
    errors: tuple[int, ...],
    description: str = "",
    parameters: list[dict[str, Any]] | None = None,
    body: str | None = None,
) -> dict[str, Any]:
    """An operation. A ``scope`` makes it need a bearer token with that scope (and adds 401, 403).
    Every operation can answer 400: the app refuses a query string with NUL or invalid UTF-8
    (``invalid_characters``) before any handler runs."""
    statuses = set(errors) | {400, 503}
    if scope is not None:
        statuses |= {401, 403}
    op: dict[str, Any] = {"operationId": operation_id, "tags": [tag], "summary": summary}
    if scope is not None:
        op["description"] = (description + "\n\n" if description else "") + f"Scope: `{scope}`."
        op["security"] = [{SECURITY_SCHEME: [scope]}]
        op["x-scope"] = scope
    else:
        if description:
            op["description"] = description
        op["security"] = []
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = {"required": True, "content": _json(_ref(body))}
    op["responses"] = {**ok, **_errors(*sorted(statuses))}
    return op


def _ok(description: str, schema: str, status: int = 200) -> dict[str, Any]:
    return {str(status): {"description": description, "content": _json(_ref(schema))}}


_AUDIO_TYPES: Final = ("audio/*", "application/octet-stream")
_AUDIO_BODY: Final = {t: {"schema": {"type": "string", "contentMediaType": t}} for t in _AUDIO_TYPES}

PATHS: Final[dict[str, dict[str, Any]]] = {
    "/api/v1/openapi.json": {
        "get": {
            "operationId": "getOpenApiDocument",
            "tags": ["meta"],
            "summary": "This document",
            "security": [],
            "responses": {
                "200": {
                    "description": "The OpenAPI 3.1 document for /api/v1.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        }
    },
    "/api/v1/recordings": {
        "get": _op(
            "listRecordings",
            "recordings",
            "List recordings, newest first",
            scope="recordings:read",
            description="Keyset-paginated. Each page is an audit entry naming the recordings shown. "
            "Unknown query parameters are a 400. Restricted recordings are listed only for tokens with "
            "restricted:read. A `phone` parameter is refused with 400 `personal_data_in_url`: proxies, "
            "load balancers and ingress controllers log URLs, so a search by phone number goes to "
            "`POST /api/v1/recordings/search`, which takes the filters in its body.",
            parameters=[
                _query("call_id", {"type": "string"}, "the provider's call id"),
                _query("from", TIME, "stored at or after (ISO 8601 with a UTC offset)"),
                _query("to", TIME, "stored before (ISO 8601 with a UTC offset)"),
                _query("agent", {"type": "string"}, "the agent id"),
                _query(
                    "state",
                    {"type": "string", "enum": RECORDING_STATES, "default": "stored"},
                    "quarantined needs the quarantine:review scope as well",
                ),
                _query(
                    "limit",
                    {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 50},
                    "page size",
                ),
                _query("cursor", {"type": "string"}, "`next_cursor` of the previous page"),
            ],
            ok=_ok("A page of recordings.", "RecordingList"),
            errors=(400,),
        )
    },
    "/api/v1/recordings/search": {
        "post": _op(
            "searchRecordings",
            "recordings",
            "Search recordings (by phone number among the list's filters), newest first",
            scope="recordings:read",
            description="The list's filters as a JSON body, so that no phone number travels in a URL. "
            "Answers exactly as `GET /api/v1/recordings` does (the same page, scopes and audit entry; "
            "the audit entry names the filters given, never their values). For the next page, send the "
            "same filters with `cursor` set to `next_cursor`. A body over 8 KiB is a 413.",
            body="RecordingSearch",
            ok=_ok("A page of recordings.", "RecordingList"),
            errors=(400, 413),
        )
    },
    "/api/v1/recordings/{id}": {
        "parameters": [_path_id("recording")],
        "get": _op(
            "getRecording",
            "recordings",
            "Read a recording's metadata",
            scope="recordings:read",
            description="Audited. Quarantined recordings are visible to the quarantine:review scope only, "
            "restricted ones to the restricted:read scope only (to others they are a 404).",
            ok=_ok("The recording.", "Recording"),
            errors=(404,),
        ),
    },
    "/api/v1/recordings/{id}/audio": {
        "parameters": [_path_id("recording")],
        "get": _op(
            "getRecordingAudio",
            "recordings",
            "Listen: stream the decrypted audio",
            scope="recordings:listen",
            description="Audited before a byte is sent. Supports one byte range (RFC 9110); a Range header "
            "that is not a single `bytes=` range is ignored and the whole body is sent. "
            "404 `audio_destroyed` when only the tombstone is left.",
            parameters=[
                {
                    "name": "Range",
                    "in": "header",
                    "required": False,
                    "description": "one byte range such as `bytes=0-1023` or `bytes=-4096`",
                    "schema": {"type": "string"},
                    "examples": {
                        "head": {"summary": "the first KiB", "value": "bytes=0-1023"},
                        "tail": {"summary": "the last 4 KiB", "value": "bytes=-4096"},
                        "from": {"summary": "from byte 1,000,000 to the end", "value": "bytes=1000000-"},
                        "past the end": {"summary": "answered 416", "value": "bytes=999999999-"},
                    },
                }
            ],
            ok={
                "200": {
                    "description": "The whole recording.",
                    "headers": {"Accept-Ranges": {"schema": {"type": "string", "const": "bytes"}}},
                    "content": _AUDIO_BODY,
                },
                "206": {
                    "description": "The requested range.",
                    "headers": {
                        "Content-Range": {
                            "required": True,
                            "description": "`bytes <start>-<end>/<size>`",
                            "schema": {"type": "string"},
                        },
                        "Accept-Ranges": {"schema": {"type": "string", "const": "bytes"}},
                    },
                    "content": _AUDIO_BODY,
                },
            },
            errors=(404, 416),
        ),
    },
}


def _recording_action(
    operation_id: str, summary: str, scope: str, description: str, *, conflict: bool
) -> dict[str, Any]:
    return {
        "parameters": [_path_id("recording")],
        "post": _op(
            operation_id,
            "recordings",
            summary,
            scope=scope,
            description=description,
            body="Reason",
            ok=_ok("The recording after the change.", "Recording"),
            errors=(400, 404, 409, 413) if conflict else (400, 404, 413),
        ),
    }


PATHS.update(
    {
        "/api/v1/recordings/{id}/approve": _recording_action(
            "approveQuarantinedRecording",
            "Keep a quarantined recording",
            "quarantine:review",
            "The privacy reviewer keeps it: it becomes stored with the normal retention. "
            "409 when it is not quarantined.",
            conflict=True,
        ),
        "/api/v1/recordings/{id}/reject": _recording_action(
            "rejectQuarantinedRecording",
            "Refuse a quarantined recording",
            "quarantine:review",
            "The privacy reviewer refuses it: it is destroyed and a tombstone remains. 409 when it is not "
            "quarantined, or (code `legal_hold`) when a legal hold covers it.",
            conflict=True,
        ),
        "/api/v1/recordings/{id}/restrict": _recording_action(
            "restrictRecording",
            "Restrict processing of a recording (GDPR Art. 18)",
            "restrictions:write",
            "The recording is kept, but only tokens with the restricted:read scope (the privacy and legal "
            "roles) see or open it; to others it is a 404. Idempotent. Stored and quarantined recordings "
            "only.",
            conflict=False,
        ),
        "/api/v1/recordings/{id}/unrestrict": _recording_action(
            "unrestrictRecording",
            "Lift a restriction",
            "restrictions:write",
            "The recording is open again to everyone whose scopes allow it. Idempotent.",
            conflict=False,
        ),
        "/api/v1/legal-holds": {
            "post": _op(
                "createLegalHold",
                "legal-holds",
                "Place a legal hold",
                scope="holds:write",
                description="Covers matching recordings that exist now and those ingested later, until "
                "it is released. While it is active, nothing it covers is deleted, by expiry, by request "
                "or by hand.",
                body="LegalHoldCreate",
                ok=_ok("The hold, with `covers`.", "LegalHold", 201),
                errors=(400, 413),
            ),
            "get": _op(
                "listLegalHolds",
                "legal-holds",
                "List legal holds, newest first (at most 500)",
                scope="holds:read",
                parameters=[_query("active", {"type": "boolean"}, "only active (true) or released (false)")],
                ok=_ok("The holds.", "LegalHoldList"),
                errors=(400,),
            ),
        },
        "/api/v1/legal-holds/preview": {
            "post": _op(
                "previewLegalHold",
                "legal-holds",
                "How many recordings a scope would cover now",
                scope="holds:write",
                description="Places nothing. Keys other than `scope` are ignored.",
                body="HoldPreview",
                ok=_ok("The count.", "HoldCoverage"),
                errors=(400, 413),
            )
        },
        "/api/v1/legal-holds/{id}": {
            "parameters": [_path_id("legal hold")],
            "get": _op(
                "getLegalHold",
                "legal-holds",
                "Read a legal hold, with the recordings it covers",
                scope="holds:read",
                ok=_ok("The hold, with `covers`, `recordings` and `recordings_truncated`.", "LegalHold"),
                errors=(404,),
            ),
        },
        "/api/v1/legal-holds/{id}/release": {
            "parameters": [_path_id("legal hold")],
            "post": _op(
                "releaseLegalHold",
                "legal-holds",
                "Release a legal hold",
                scope="holds:write",
                description="Expiries and deletions that were waiting on it happen at once (`erased_now`) "
                "when no other hold covers the recording. 409 `already_released`.",
                body="HoldRelease",
                ok=_ok("The released hold, with `erased_now`.", "LegalHold"),
                errors=(400, 404, 409, 413),
            ),
        },
        "/api/v1/deletion-requests": {
            "post": _op(
                "createDeletionRequest",
                "deletion-requests",
                "Request erasure of a data subject's recordings (GDPR Art. 17, CCPA)",
                scope="deletions:write",
                description="Answered at once and decided by a durable job. Recordings under a legal hold "
                "are withheld and deleted when their last hold is released. Recordings of the same subject "
                "ingested later are covered too, until the request completes. With `Idempotency-Key`, "
                "a retry returns the request already made (200).",
                parameters=[
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "description": "makes a retry safe; reusing it for a different request is a 422",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                    }
                ],
                body="DeletionRequestCreate",
                ok={
                    **_ok("The request made before with this Idempotency-Key.", "DeletionRequest"),
                    **_ok("Received.", "DeletionRequest", 202),
                },
                errors=(400, 413, 422),
            ),
            "get": _op(
                "listDeletionRequests",
                "deletion-requests",
                "List deletion requests, newest first (at most 500)",
                scope="deletions:read",
                parameters=[
                    _query("status", {"type": "string", "enum": DELETION_STATUSES}, "only this status"),
                    _query(
                        "overdue", {"type": "boolean"}, "only open requests past (true) or within (false) due"
                    ),
                ],
                ok=_ok("The requests.", "DeletionRequestList"),
                errors=(400,),
            ),
        },
        "/api/v1/deletion-requests/{id}": {
            "parameters": [_path_id("deletion request")],
            "get": _op(
                "getDeletionRequest",
                "deletion-requests",
                "Read a deletion request with its outcomes",
                scope="deletions:read",
                ok=_ok("The request, with `outcomes`.", "DeletionRequest"),
                errors=(404,),
            ),
        },
        "/api/v1/deletion-requests/{id}/certificate": {
            "parameters": [_path_id("deletion request")],
            "get": _op(
                "getDeletionCertificate",
                "deletion-requests",
                "A certificate of what was deleted and when",
                scope="deletions:read",
                description="Fit to show a regulator or the data subject: ids, dates, outcomes and the "
                "audit-chain entries that prove them; no personal data.",
                ok=_ok("The certificate.", "Certificate"),
                errors=(404,),
            ),
        },
        "/api/v1/access-requests": {
            "post": _op(
                "createAccessRequest",
                "access-requests",
                "Export a data subject's recordings (GDPR Art. 15/20)",
                scope="access:write",
                description="Builds a ZIP of the subject's recordings (decrypted audio plus a metadata JSON) "
                "behind a short-lived download link. Audited.",
                body="AccessRequestCreate",
                ok=_ok("The request and its download link.", "AccessRequest", 201),
                errors=(400, 413),
            )
        },
        "/api/v1/access-requests/{id}/download": {
            "parameters": [_path_id("access request")],
            "get": _op(
                "downloadAccessRequest",
                "access-requests",
                "Download an access request's ZIP",
                scope=None,
                description="No bearer token: the link's `token` authorises it, until `expires_at`. Audited. "
                "An unknown id, a wrong token and an expired link are all 404 `link_invalid`.",
                parameters=[
                    {
                        "name": "token",
                        "in": "query",
                        "required": True,
                        "description": "the token in the `download_url`",
                        "schema": {"type": "string"},
                    }
                ],
                ok={
                    "200": {
                        "description": "The ZIP.",
                        "content": {
                            "application/zip": {
                                "schema": {"type": "string", "contentMediaType": "application/zip"}
                            }
                        },
                    }
                },
                errors=(404,),
            ),
        },
    }
)


def _security_description() -> str:
    lines = [
        "An API token: `Authorization: Bearer <token>` (`callrec token create NAME --scope SCOPE...`). "
        "The token fixes the tenant. Scopes:",
        "",
    ]
    lines += [f"- `{name}`: {text}" for name, text in sorted(SCOPES.items())]
    return "\n".join(lines)


DOCUMENT: Final[dict[str, Any]] = {
    "openapi": "3.1.0",
    "info": {
        "title": "callrec API",
        "version": "1",
        "summary": "Recordings, legal holds, deletion and access requests of callrec.",
        "description": "Every operation but this document and the access-request download needs a bearer "
        "token; its scopes are listed per operation (OpenAPI 3.1 lets a bearer requirement name them). "
        'Errors are `{"error": {"code", "message"}}` with a stable `code`. Every response carries '
        "`X-Request-Id`; a 5xx names it so that the log can be searched.",
    },
    "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
    "tags": [
        {"name": "recordings"},
        {"name": "legal-holds"},
        {"name": "deletion-requests"},
        {"name": "access-requests"},
        {"name": "meta"},
    ],
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "responses": RESPONSES,
        "securitySchemes": {
            SECURITY_SCHEME: {"type": "http", "scheme": "bearer", "description": _security_description()}
        },
    },
}


def document() -> dict[str, Any]:
    """A copy of the document, safe to change."""
    return copy.deepcopy(DOCUMENT)


_BODY: Final = json.dumps(DOCUMENT, separators=(",", ":")).encode()


async def openapi_json(request: web.Request) -> web.Response:
    """``GET /api/v1/openapi.json``: public, like any API description."""
    return web.Response(body=_BODY, content_type="application/json")
