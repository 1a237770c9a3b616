"""Issue 4 end to end: expiry sweeps, legal holds, deletion requests, certificates, callbacks.

Recordings come in through the real Twilio path (signed webhooks, fake Twilio on loopback)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from twilio_support import DESK, TWILIO_SID, TWILIO_TOKEN, ingest_twilio

from callrec.app import create_app, worker_key
from callrec.appkeys import config_key, db_key, store_key
from callrec.db import audit, tokens
from callrec.retention.sweeper import sweep

ALICE, BOB = "+12125550123", "+12125550777"  # callers (New York)
HELD_CALL = "CA" + "1e1d" * 8  # Twilio call SIDs: CA + 32 hex digits
WITHDRAWN_CALL = "CA" + "3d3d" * 8


class Callbacks:
    def __init__(self) -> None:
        self.received: list[tuple[dict[str, Any], str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append((json.loads(body), request.headers.get("Callrec-Signature", "")))
        return web.Response(status=204)


@pytest.fixture
async def callbacks() -> AsyncIterator[tuple[Callbacks, str]]:
    sink = Callbacks()
    app = web.Application()
    app.router.add_post("/dsr-hook", sink.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield sink, str(server.make_url("/dsr-hook"))
    finally:
        await server.close()


@pytest.fixture
async def client(
    aiohttp_client: Any, app_config: Any, fake_twilio: Any, callbacks: tuple[Callbacks, str]
) -> Any:
    hook_origin = callbacks[1].split("/")[2]  # 127.0.0.1:<port>: callback_hosts match ports
    cfg = app_config(
        tenants={
            "acme": {
                "twilio_account_sid": TWILIO_SID,
                "twilio_auth_token": TWILIO_TOKEN,
                "twilio_api_base": fake_twilio.base,
                "webhook_secret": "pbx-shared-secret-for-tests",
                "callback_hosts": [hook_origin],
            },
            "other": {"webhook_secret": "x"},
        }
    )
    return await aiohttp_client(create_app(cfg, run_workers=False))


async def drain(client: Any) -> None:
    for _ in range(50):
        if not await client.app[worker_key].run_once():
            return


async def bearer(client: Any, *scopes: str, tenant: str = "acme") -> dict[str, str]:
    async with client.app[db_key].acquire() as conn:
        _, token = await tokens.create(conn, tenant=tenant, name="t", scopes=list(scopes))
    return {"Authorization": f"Bearer {token}"}


async def state(client: Any, rid: uuid.UUID) -> Any:
    async with client.app[db_key].acquire() as conn:
        return await conn.fetchrow(
            "SELECT state, wrapped_key, object_key, from_sealed, from_hash, destroy_reason "
            "FROM recordings WHERE id = $1",
            rid,
        )


def files(client: Any) -> set[Path]:
    return {p for p in client.app[config_key].storage_path.rglob("*") if p.is_file()}


async def expire(client: Any, *rids: uuid.UUID) -> None:
    async with client.app[db_key].acquire() as conn:
        await conn.execute(
            "UPDATE recordings SET expires_at = now() - interval '1 minute' WHERE id = ANY($1)", list(rids)
        )


async def run_sweep(client: Any, **kwargs: Any) -> Any:
    cfg = client.app[config_key]
    return await sweep(
        client.app[db_key],
        client.app[store_key],
        tenants=list(cfg.tenants),
        max_attempts=cfg.ingest.max_attempts,
        **kwargs,
    )


@pytest.fixture
def audio(audio_fixtures: Path) -> bytes:
    return (audio_fixtures / "call-without-announcement.wav").read_bytes()


# --- expiry ---------------------------------------------------------------------------------


async def test_sweep_destroys_expired_recordings_but_never_held_ones(
    client: Any, fake_twilio: Any, audio: bytes
) -> None:
    kept, gone, held = [
        await ingest_twilio(client, fake_twilio, audio, drain=True, caller=ALICE) for _ in range(3)
    ]
    assert len(files(client)) == 3
    await expire(client, gone, held)
    legal = await bearer(client, "holds:write", "holds:read")
    resp = await client.post(
        "/api/v1/legal-holds",
        headers=legal,
        json={"matter": "Smith v Acme", "reason": "litigation", "scope": {"recording_ids": [str(held)]}},
    )
    assert resp.status == 201 and (await resp.json())["covers"] == 1

    dry = await run_sweep(client, dry_run=True)
    assert (dry.expired, dry.held) == (1, 1)
    assert (await state(client, gone))["state"] == "stored"  # a dry run changes nothing

    report = await run_sweep(client)
    assert (report.destroyed, report.held, report.objects_deleted) == (1, 1, 1)
    tomb = await state(client, gone)
    assert tomb["state"] == "destroyed" and tomb["destroy_reason"] == "retention_expired"
    assert tomb["wrapped_key"] is None and tomb["object_key"] is None and tomb["from_sealed"] is None
    assert tomb["from_hash"] is None
    assert (await state(client, held))["state"] == "stored"
    assert (await state(client, kept))["state"] == "stored"
    assert len(files(client)) == 2
    again = await run_sweep(client)
    assert again.destroyed == 0  # idempotent

    hold_id = (await (await client.get("/api/v1/legal-holds", headers=legal)).json())["items"][0]["id"]
    released = await client.post(
        f"/api/v1/legal-holds/{hold_id}/release", headers=legal, json={"reason": "settled"}
    )
    assert released.status == 200
    assert (await state(client, held))["state"] == "stored"  # expiry waits for the next sweep
    assert (await run_sweep(client)).destroyed == 1
    assert (await state(client, held))["state"] == "destroyed"
    assert len(files(client)) == 1
    async with client.app[db_key].acquire() as conn:
        assert (await audit.verify(conn)).ok
        destroyed = await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'recording:destroyed'")
    assert destroyed == 2


async def test_concurrent_sweepers_destroy_each_recording_once(
    client: Any, fake_twilio: Any, audio: bytes
) -> None:
    rids = [await ingest_twilio(client, fake_twilio, audio, drain=True, caller=ALICE) for _ in range(6)]
    await expire(client, *rids)
    reports = await asyncio.gather(*(run_sweep(client, batch=2) for _ in range(3)))
    assert sum(r.destroyed for r in reports) == 6
    async with client.app[db_key].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'recording:destroyed'") == 6
    assert files(client) == set()


async def test_a_crash_after_the_tombstone_is_finished_by_the_object_job(
    client: Any, fake_twilio: Any, audio: bytes
) -> None:
    rid = await ingest_twilio(client, fake_twilio, audio, drain=True, caller=ALICE)
    await expire(client, rid)
    store = client.app[store_key]
    real, real_batch = store.delete_all_versions, store.delete_objects

    async def down(key: str) -> int:
        raise OSError("store unreachable")

    async def down_batch(keys: list[str]) -> dict[str, int]:
        raise OSError("store unreachable")

    store.delete_all_versions = down  # type: ignore[method-assign]
    store.delete_objects = down_batch  # type: ignore[method-assign]
    report = await run_sweep(client)
    assert report.destroyed == 1 and report.object_deletions_deferred == 1
    assert len(files(client)) == 1  # the ciphertext is still there, but its key is gone
    store.delete_all_versions = real  # type: ignore[method-assign]
    store.delete_objects = real_batch  # type: ignore[method-assign]
    await drain(client)  # the durable object.delete job
    assert files(client) == set()


# --- holds ----------------------------------------------------------------------------------


async def test_hold_scopes_and_preview(client: Any, fake_twilio: Any, audio: bytes) -> None:
    a1 = await ingest_twilio(client, fake_twilio, audio, drain=True, caller=ALICE, agent="agent-1")
    a2 = await ingest_twilio(client, fake_twilio, audio, drain=True, caller=ALICE, agent="agent-2")
    b1 = await ingest_twilio(client, fake_twilio, audio, drain=True, caller=BOB, agent="agent-1")
    legal = await bearer(client, "holds:write", "holds:read")

    async def covers(scope: dict[str, Any]) -> int:
        resp = await client.post("/api/v1/legal-holds/preview", headers=legal, json={"scope": scope})
        assert resp.status == 200, await resp.text()
        return int((await resp.json())["covers"])

    assert await covers({"phones": ["+1 212 555 0123"]}) == 2
    assert await covers({"phones": [ALICE], "agent": "agent-2"}) == 1
    assert await covers({"agent": "agent-1"}) == 2
    assert await covers({"recording_ids": [str(a1), str(b1)]}) == 2
    assert await covers({"from": "2000-01-01T00:00:00+00:00", "to": "2001-01-01T00:00:00+00:00"}) == 0
    assert await covers({"phones": [DESK]}) == 3

    resp = await client.post(
        "/api/v1/legal-holds",
        headers=legal,
        json={
            "matter": "Inquiry 7",
            "reason": "regulator",
            "review_at": "2027-03-31",
            "scope": {"phones": [ALICE]},
        },
    )
    hold = await resp.json()
    assert hold["scope"]["phones"] == 1 and "5550123" not in json.dumps(hold)
    detail = await (await client.get(f"/api/v1/legal-holds/{hold['id']}", headers=legal)).json()
    assert sorted(detail["recordings"]) == sorted([str(a1), str(a2)])

    # A recording ingested later for the same phone is covered too.
    a3 = await ingest_twilio(client, fake_twilio, audio, drain=True, caller=ALICE)
    detail = await (await client.get(f"/api/v1/legal-holds/{hold['id']}", headers=legal)).json()
    assert str(a3) in detail["recordings"] and detail["covers"] == 3
    viewer = await bearer(client, "recordings:read")
    rec = await (await client.get(f"/api/v1/recordings/{a3}", headers=viewer)).json()
    assert rec["holds"] == [{"id": hold["id"], "matter": "Inquiry 7"}]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"matter": "m", "reason": "r", "scope": {}}, "invalid_scope"),
        ({"matter": "m", "reason": "r"}, "invalid_scope"),
        ({"matter": "m", "reason": "r", "scope": {"phones": ["not a number"]}}, "invalid_phone"),
        ({"matter": "m", "reason": "r", "scope": {"recording_ids": ["nope"]}}, "invalid_scope"),
        (
            {
                "matter": "m",
                "reason": "r",
                "scope": {"from": "2027-01-01T00:00:00+00:00", "to": "2026-01-01T00:00:00+00:00"},
            },
            "invalid_scope",
        ),
        ({"matter": "m", "reason": "r", "scope": {"colour": "red"}}, "invalid_scope"),
        ({"reason": "r", "scope": {"agent": "a"}}, "invalid_body"),
        ({"matter": "m", "reason": "r", "review_at": "soon", "scope": {"agent": "a"}}, "invalid_body"),
    ],
)
async def test_bad_holds_are_400(client: Any, body: dict[str, Any], code: str) -> None:
    legal = await bearer(client, "holds:write")
    resp = await client.post("/api/v1/legal-holds", headers=legal, json=body)
    assert resp.status == 400 and (await resp.json())["error"]["code"] == code
    async with client.app[db_key].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM legal_holds") == 0


async def test_only_holds_write_places_or_releases_and_tenants_are_apart(client: Any) -> None:
    reader = await bearer(client, "holds:read")
    body = {"matter": "m", "reason": "r", "scope": {"agent": "agent-1"}}
    assert (await client.post("/api/v1/legal-holds", headers=reader, json=body)).status == 403
    legal = await bearer(client, "holds:write", "holds:read")
    hold = await (await client.post("/api/v1/legal-holds", headers=legal, json=body)).json()
    release = f"/api/v1/legal-holds/{hold['id']}/release"
    assert (await client.post(release, headers=reader, json={"reason": "x"})).status == 403
    other = await bearer(client, "holds:write", "holds:read", tenant="other")
    assert (await client.get(f"/api/v1/legal-holds/{hold['id']}", headers=other)).status == 404
    assert (await client.post(release, headers=other, json={"reason": "x"})).status == 404
    assert (await client.post(release, headers=legal, json={"reason": "done"})).status == 200
    twice = await client.post(release, headers=legal, json={"reason": "done"})
    assert twice.status == 409


# --- deletion requests ----------------------------------------------------------------------


async def test_deletion_request_withholds_held_recordings_and_completes_on_release(
    client: Any, fake_twilio: Any, audio: bytes, callbacks: tuple[Callbacks, str]
) -> None:
    sink, hook = callbacks
    first = await ingest_twilio(client, fake_twilio, audio, drain=True, caller=ALICE, call_id=HELD_CALL)
    second = await ingest_twilio(client, fake_twilio, audio, drain=True, caller=ALICE)
    bobs = await ingest_twilio(client, fake_twilio, audio, drain=True, caller=BOB)
    legal = await bearer(client, "holds:write", "holds:read")
    hold = await (
        await client.post(
            "/api/v1/legal-holds",
            headers=legal,
            json={
                "matter": "Case 12",
                "reason": "a reason that names people",
                "scope": {"call_ids": [HELD_CALL]},
            },
        )
    ).json()

    dpo = await bearer(client, "deletions:write", "deletions:read")
    resp = await client.post(
        "/api/v1/deletion-requests",
        headers={**dpo, "Idempotency-Key": "ticket-1"},
        json={
            "subject": {"phone": ALICE},
            "reason": "caller asked",
            "external_ref": "TCK-1",
            "callback_url": hook,
        },
    )
    assert resp.status == 202
    req = await resp.json()
    assert req["status"] == "received" and req["due_at"] > req["received_at"]
    again = await client.post(
        "/api/v1/deletion-requests",
        headers={**dpo, "Idempotency-Key": "ticket-1"},
        json={
            "subject": {"phone": ALICE},
            "reason": "caller asked",
            "external_ref": "TCK-1",
            "callback_url": hook,
        },
    )
    assert again.status == 200 and (await again.json())["id"] == req["id"]
    reused = await client.post(
        "/api/v1/deletion-requests",
        headers={**dpo, "Idempotency-Key": "ticket-1"},
        json={"subject": {"phone": BOB}},
    )
    assert reused.status == 422

    await drain(client)
    detail = await (await client.get(f"/api/v1/deletion-requests/{req['id']}", headers=dpo)).json()
    assert detail["status"] == "partially_completed"
    outcomes = {o["recording_id"]: o for o in detail["outcomes"]}
    assert outcomes[str(first)]["outcome"] == "withheld_legal_hold"
    assert outcomes[str(first)]["hold"] == {"id": hold["id"], "matter": "Case 12"}
    assert "reason" not in json.dumps(outcomes[str(first)]["hold"])
    assert outcomes[str(second)]["outcome"] == "deleted"
    assert str(bobs) not in outcomes
    assert (await state(client, first))["state"] == "stored"
    assert (await state(client, second))["state"] == "destroyed"
    assert (await state(client, bobs))["state"] == "stored"

    # A new recording of the same caller while the request is open: erased as it arrives.
    late = await ingest_twilio(client, fake_twilio, audio, drain=True, caller=ALICE)
    assert (await state(client, late))["state"] == "destroyed"

    released = await client.post(
        f"/api/v1/legal-holds/{hold['id']}/release", headers=legal, json={"reason": "case closed"}
    )
    assert (await released.json())["erased_now"] == [str(first)]
    assert (await state(client, first))["state"] == "destroyed"
    detail = await (await client.get(f"/api/v1/deletion-requests/{req['id']}", headers=dpo)).json()
    assert detail["status"] == "completed" and detail["completed_at"]
    assert {o["outcome"] for o in detail["outcomes"]} == {"deleted"}

    await drain(client)  # object deletions and callbacks
    assert len(files(client)) == 1  # only Bob's recording still has an object
    statuses = [body["status"] for body, _ in sink.received]
    assert statuses == ["processing", "partially_completed", "completed"]
    for body, signature in sink.received:
        t, v1 = (part.split("=", 1)[1] for part in signature.split(","))
        raw = json.dumps(body).encode()
        assert body["id"] == req["id"]
        expected = hmac.new(
            b"pbx-shared-secret-for-tests", f"{t}.".encode() + raw, hashlib.sha256
        ).hexdigest()
        assert v1 == expected

    cert = await (await client.get(f"/api/v1/deletion-requests/{req['id']}/certificate", headers=dpo)).json()
    assert cert["status"] == "completed" and cert["summary"]["deleted"] == 3
    assert "5550123" not in json.dumps(cert) and "TCK-1" == cert["external_ref"]
    async with client.app[db_key].acquire() as conn:
        for item in cert["recordings"]:
            row = await conn.fetchrow(
                "SELECT hash, action, recording_id FROM audit_log WHERE seq = $1", item["audit"]["seq"]
            )
            assert bytes(row["hash"]).hex() == item["audit"]["hash"]
            assert row["action"] == "recording:destroyed" and str(row["recording_id"]) == item["recording_id"]
        assert (await audit.verify(conn)).ok


async def test_deletion_request_statuses_and_filters(client: Any, fake_twilio: Any, audio: bytes) -> None:
    rid = await ingest_twilio(client, fake_twilio, audio, drain=True, caller=BOB)
    dpo = await bearer(client, "deletions:write", "deletions:read")
    unknown = await client.post(
        "/api/v1/deletion-requests", headers=dpo, json={"subject": {"recording_ids": [str(uuid.uuid4())]}}
    )
    by_id = await client.post(
        "/api/v1/deletion-requests",
        headers=dpo,
        json={"subject": {"recording_ids": [str(rid)]}, "law": "ccpa"},
    )
    assert unknown.status == 202 and by_id.status == 202
    ccpa = await by_id.json()
    from datetime import datetime

    due = datetime.fromisoformat(ccpa["due_at"]) - datetime.fromisoformat(ccpa["received_at"])
    assert due.days == 45
    await drain(client)
    rejected = await (
        await client.get(f"/api/v1/deletion-requests/{(await unknown.json())['id']}", headers=dpo)
    ).json()
    assert rejected["status"] == "rejected" and "no recording" in rejected["rejection_reason"]
    listing = await (
        await client.get("/api/v1/deletion-requests", params={"status": "completed"}, headers=dpo)
    ).json()
    assert [i["id"] for i in listing["items"]] == [ccpa["id"]]
    async with client.app[db_key].acquire() as conn:
        await conn.execute(
            "UPDATE deletion_requests SET status = 'received', due_at = now() - interval '1 day' "
            "WHERE id = $1",
            uuid.UUID(ccpa["id"]),
        )
    overdue = await (
        await client.get("/api/v1/deletion-requests", params={"overdue": "true"}, headers=dpo)
    ).json()
    assert [i["id"] for i in overdue["items"]] == [ccpa["id"]] and overdue["items"][0]["overdue"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"subject": {}}, "invalid_subject"),
        ({"subject": {"phone": "+12125550123", "call_id": "x"}}, "invalid_subject"),
        ({"subject": {"phone": "tomorrow"}}, "invalid_phone"),
        ({"subject": {"recording_ids": []}}, "invalid_subject"),
        ({"subject": {"recording_ids": ["x"]}}, "invalid_subject"),
        ({"subject": {"email": "a@b.c"}}, "invalid_subject"),
        ({"subject": {"call_id": "c"}, "law": "lgpd"}, "invalid_body"),
        (
            {"subject": {"call_id": "c"}, "callback_url": "https://evil.example.com/x"},
            "media_host_not_allowed",
        ),
        ({"subject": {"call_id": "c"}, "name": "Alice"}, "invalid_body"),
    ],
)
async def test_bad_deletion_requests_are_400(client: Any, body: dict[str, Any], code: str) -> None:
    dpo = await bearer(client, "deletions:write")
    resp = await client.post("/api/v1/deletion-requests", headers=dpo, json=body)
    assert resp.status == 400 and (await resp.json())["error"]["code"] == code
    async with client.app[db_key].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM deletion_requests") == 0


async def test_consent_withdrawal_respects_holds(client: Any, fake_twilio: Any, audio: bytes) -> None:
    rid = await ingest_twilio(client, fake_twilio, audio, drain=True, caller=ALICE, call_id=WITHDRAWN_CALL)
    legal = await bearer(client, "holds:write")
    await client.post(
        "/api/v1/legal-holds",
        headers=legal,
        json={"matter": "m", "reason": "r", "scope": {"call_ids": [WITHDRAWN_CALL]}},
    )
    body = json.dumps(
        {"event": "consent_withdrawn", "call_id": WITHDRAWN_CALL, "at": "2026-11-24T09:00:00+00:00"}
    ).encode()
    import time

    t = int(time.time())
    sig = hmac.new(b"pbx-shared-secret-for-tests", f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    resp = await client.post(
        "/webhooks/events/acme", data=body, headers={"Callrec-Signature": f"t={t},v1={sig}"}
    )
    assert (await resp.json())["withheld"] == [str(rid)]
    assert (await state(client, rid))["state"] == "stored"
