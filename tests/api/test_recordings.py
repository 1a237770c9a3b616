"""/api/v1/recordings: tokens and scopes, tenant isolation, filters, keyset pagination, bad input; the
search by phone number, which takes its filters in a POST body because URLs end up in access logs."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from callrec.appkeys import db_key, keys_key
from callrec.db import recordings, tokens

SEARCH = "/api/v1/recordings/search"
CALLER = "+447700900123"  # Ofcom's range for drama: never a real subscriber
OTHER_CALLER = "+12125550188"


def recording(
    tenant: str,
    *,
    call_id: str = "CA1",
    agent: str | None = None,
    stored_at: datetime,
    from_hash: bytes | None = None,
) -> Any:
    return recordings.Recording(
        id=uuid.uuid4(),
        tenant=tenant,
        provider="twilio",
        call_id=call_id,
        provider_recording_id="RE" + uuid.uuid4().hex,
        state="stored",
        started_at=None,
        stored_at=stored_at,
        expires_at=stored_at + timedelta(days=90),
        duration_ms=1000,
        channels=1,
        sample_rate=8000,
        format="wav",
        codec="pcm_s16le",
        size_bytes=16000,
        sha256="0" * 64,
        object_key=None,
        object_version=None,
        ciphertext_bytes=None,
        wrapped_key=None,
        direction="inbound",
        from_sealed=None,
        to_sealed=None,
        from_hash=from_hash,
        to_hash=None,
        agent=agent,
    )


async def make_token(client: Any, tenant: str, *scopes: str) -> dict[str, str]:
    async with client.app[db_key].acquire() as conn:
        _, token = await tokens.create(conn, tenant=tenant, name="t", scopes=list(scopes))
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def seeded(client: Any) -> list[Any]:
    base = datetime(2026, 11, 1, tzinfo=UTC)
    rows = [
        recording("acme", call_id=f"CA{i % 3}", agent=f"agent-{i % 2}", stored_at=base + timedelta(hours=i))
        for i in range(25)
    ]
    rows.append(recording("other", call_id="CA0", stored_at=base))
    async with client.app[db_key].acquire() as conn:
        for row in rows:
            assert await recordings.insert(conn, row)
    return rows


async def test_keyset_pagination_walks_every_row_once_newest_first(client: Any, seeded: list[Any]) -> None:
    auth = await make_token(client, "acme", "recordings:read")
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params = {"limit": "7"} | ({"cursor": cursor} if cursor else {})
        page = await (await client.get("/api/v1/recordings", params=params, headers=auth)).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    acme = sorted((r for r in seeded if r.tenant == "acme"), key=lambda r: r.stored_at, reverse=True)
    assert seen == [str(r.id) for r in acme]


async def test_filters(client: Any, seeded: list[Any]) -> None:
    auth = await make_token(client, "acme", "recordings:read")

    async def ids(**params: str) -> set[str]:
        resp = await client.get("/api/v1/recordings", params={"limit": "200", **params}, headers=auth)
        assert resp.status == 200, await resp.text()
        return {item["id"] for item in (await resp.json())["items"]}

    acme = [r for r in seeded if r.tenant == "acme"]
    assert await ids(call_id="CA1") == {str(r.id) for r in acme if r.call_id == "CA1"}
    assert await ids(agent="agent-0") == {str(r.id) for r in acme if r.agent == "agent-0"}
    lo, hi = acme[5].stored_at, acme[10].stored_at
    assert await ids(**{"from": lo.isoformat(), "to": hi.isoformat()}) == {
        str(r.id) for r in acme if lo <= r.stored_at < hi
    }


async def test_tenants_never_see_each_other(client: Any, seeded: list[Any]) -> None:
    other = await make_token(client, "other", "recordings:read", "recordings:listen")
    page = await (await client.get("/api/v1/recordings", params={"limit": "200"}, headers=other)).json()
    assert [item["tenant"] for item in page["items"]] == ["other"]
    acme_id = next(str(r.id) for r in seeded if r.tenant == "acme")
    assert (await client.get(f"/api/v1/recordings/{acme_id}", headers=other)).status == 404
    assert (await client.get(f"/api/v1/recordings/{acme_id}/audio", headers=other)).status == 404


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "unauthorized"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 401, "unauthorized"),
        ({"Authorization": "Bearer crt_not-a-real-token"}, 401, "invalid_token"),
    ],
)
async def test_missing_or_bad_tokens(client: Any, headers: dict[str, str], status: int, code: str) -> None:
    resp = await client.get("/api/v1/recordings", headers=headers)
    assert resp.status == status
    assert (await resp.json())["error"]["code"] == code


async def test_scopes_are_enforced(client: Any, seeded: list[Any]) -> None:
    read_only = await make_token(client, "acme", "recordings:read")
    listen_only = await make_token(client, "acme", "recordings:listen")
    rid = next(str(r.id) for r in seeded if r.tenant == "acme")
    resp = await client.get(f"/api/v1/recordings/{rid}/audio", headers=read_only)
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "insufficient_scope"
    assert (await client.get("/api/v1/recordings", headers=listen_only)).status == 403


async def test_revoked_token_is_refused(client: Any) -> None:
    auth = await make_token(client, "acme", "recordings:read")
    async with client.app[db_key].acquire() as conn:
        await conn.execute("UPDATE api_tokens SET revoked_at = now()")
    assert (await client.get("/api/v1/recordings", headers=auth)).status == 401


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "201"},
        {"limit": "ten"},
        {"cursor": "not-a-cursor!"},
        {"from": "last tuesday"},
        {"from": "2026-11-01T00:00:00"},  # no offset: ambiguous
        {"colour": "blue"},
    ],
)
async def test_bad_parameters_are_400(client: Any, params: dict[str, str]) -> None:
    auth = await make_token(client, "acme", "recordings:read")
    resp = await client.get("/api/v1/recordings", params=params, headers=auth)
    assert resp.status == 400
    body = await resp.json()
    assert set(body["error"]) == {"code", "message"}


async def test_unknown_and_malformed_ids_are_404(client: Any) -> None:
    auth = await make_token(client, "acme", "recordings:read")
    for rid in (str(uuid.uuid4()), "not-a-uuid", "../../etc/passwd"):
        resp = await client.get(f"/api/v1/recordings/{rid}", headers=auth)
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "not_found"


async def test_unknown_route_and_wrong_method_are_json(client: Any) -> None:
    missing = await client.get("/api/v1/nothing-here")
    assert missing.status == 404 and "error" in await missing.json()
    wrong = await client.delete("/api/v1/recordings")
    assert wrong.status == 405 and "error" in await wrong.json()


# --- phone numbers stay out of URLs: POST /api/v1/recordings/search ----------------------------------


async def phone_hash(client: Any, tenant: str, e164: str) -> bytes:
    async with client.app[db_key].acquire() as conn:
        digest: bytes = await client.app[keys_key].phone_hash(conn, tenant, e164)
    return digest


@pytest.fixture
async def callers(client: Any) -> dict[str, list[Any]]:
    """Recordings of two callers in acme (12 and 3) and one of the first caller in other."""
    base = datetime(2026, 11, 1, tzinfo=UTC)
    rows: dict[str, list[Any]] = {CALLER: [], OTHER_CALLER: [], "other": []}
    for i in range(15):
        number = CALLER if i % 5 else OTHER_CALLER
        digest = await phone_hash(client, "acme", number)
        rows[number].append(
            recording("acme", call_id=f"CA{i % 3}", stored_at=base + timedelta(hours=i), from_hash=digest)
        )
    rows["other"].append(
        recording("other", stored_at=base, from_hash=await phone_hash(client, "other", CALLER))
    )
    async with client.app[db_key].acquire() as conn:
        for row in [r for group in rows.values() for r in group]:
            assert await recordings.insert(conn, row)
    return rows


def newest_first(rows: list[Any]) -> list[str]:
    return [str(r.id) for r in sorted(rows, key=lambda r: r.stored_at, reverse=True)]


@pytest.mark.parametrize("phone", [CALLER, "+44 7700 900123", "+44 (0)7700 900123"])
async def test_the_list_refuses_a_phone_number_in_its_url(client: Any, callers: Any, phone: str) -> None:
    auth = await make_token(client, "acme", "recordings:read")
    resp = await client.get("/api/v1/recordings", params={"phone": phone}, headers=auth)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "personal_data_in_url"
    assert "POST /api/v1/recordings/search" in error["message"]
    assert "900123" not in error["message"]
    async with client.app[db_key].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'recording:listed'") == 0


async def test_search_by_phone_walks_every_match_once_and_no_cursor_holds_the_number(
    client: Any, callers: dict[str, list[Any]]
) -> None:
    auth = await make_token(client, "acme", "recordings:read")
    seen: list[str] = []
    cursors: list[str] = []
    body: dict[str, Any] = {"phone": "+44 7700 900123", "limit": 5}
    for _ in range(10):
        resp = await client.post(SEARCH, json=body, headers=auth)
        assert resp.status == 200, await resp.text()
        page = await resp.json()
        seen += [item["id"] for item in page["items"]]
        if page["next_cursor"] is None:
            break
        cursors.append(page["next_cursor"])
        body = {**body, "cursor": page["next_cursor"]}
    assert seen == newest_first(callers[CALLER])
    assert len(cursors) == 2
    for cursor in cursors:
        decoded = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        assert "7700900123" not in decoded and "900123" not in decoded
    other = await (await client.post(SEARCH, json={"phone": OTHER_CALLER}, headers=auth)).json()
    assert [item["id"] for item in other["items"]] == newest_first(callers[OTHER_CALLER])


async def test_search_answers_exactly_like_the_list(client: Any, callers: dict[str, list[Any]]) -> None:
    auth = await make_token(client, "acme", "recordings:read")
    lo = datetime(2026, 11, 1, 3, tzinfo=UTC).isoformat()
    filters = {"call_id": "CA1", "from": lo, "state": "stored"}
    listed = await client.get("/api/v1/recordings", params={**filters, "limit": "2"}, headers=auth)
    searched = await client.post(SEARCH, json={**filters, "limit": 2}, headers=auth)
    assert listed.status == searched.status == 200
    first = await listed.json()
    assert first == await searched.json()
    assert len(first["items"]) == 2 and first["next_cursor"]
    cursor = first["next_cursor"]
    listed = await client.get(
        "/api/v1/recordings", params={**filters, "limit": "2", "cursor": cursor}, headers=auth
    )
    searched = await client.post(SEARCH, json={**filters, "limit": 2, "cursor": cursor}, headers=auth)
    assert await listed.json() == await searched.json()
    # The same audit entries: a look at each page, naming the filters given and never their values.
    async with client.app[db_key].acquire() as conn:
        entries = await conn.fetch(
            "SELECT actor, details FROM audit_log WHERE action = 'recording:listed' ORDER BY seq"
        )
    details = [json.loads(e["details"]) for e in entries]
    assert len(details) == 4
    assert details[0] == details[1] and details[2] == details[3]
    assert details[0]["filters"] == ["call_id", "from", "state"]


async def test_the_search_audit_entry_names_the_phone_filter_but_not_the_number(
    client: Any, callers: dict[str, list[Any]]
) -> None:
    auth = await make_token(client, "acme", "recordings:read")
    resp = await client.post(SEARCH, json={"phone": CALLER, "limit": 3}, headers=auth)
    assert resp.status == 200
    async with client.app[db_key].acquire() as conn:
        (entry,) = await conn.fetch(
            "SELECT details::text AS d FROM audit_log WHERE action = 'recording:listed'"
        )
    assert json.loads(entry["d"])["filters"] == ["phone"]
    for digits in ("7700900123", "900123", "+44"):
        assert digits not in entry["d"]


async def test_search_keeps_tenants_and_scopes(client: Any, callers: dict[str, list[Any]]) -> None:
    other = await make_token(client, "other", "recordings:read")
    page = await (await client.post(SEARCH, json={"phone": CALLER}, headers=other)).json()
    assert [item["id"] for item in page["items"]] == [str(callers["other"][0].id)]
    assert (await client.post(SEARCH, json={"phone": CALLER})).status == 401
    listen_only = await make_token(client, "acme", "recordings:listen")
    resp = await client.post(SEARCH, json={"phone": CALLER}, headers=listen_only)
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "insufficient_scope"
    read = await make_token(client, "acme", "recordings:read")
    resp = await client.post(SEARCH, json={"state": "quarantined"}, headers=read)
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "insufficient_scope"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "invalid_body"),
        (b"not json", "invalid_body"),
        (b"[]", "invalid_body"),
        (b'"+447700900123"', "invalid_body"),
        (b"[" * 8000, "invalid_body"),
        (b"\xff\xfe\x00", "invalid_body"),
        (json.dumps({"colour": "blue"}).encode(), "invalid_body"),
        (json.dumps({"phone": 447700900123}).encode(), "invalid_body"),
        (json.dumps({"phone": [CALLER]}).encode(), "invalid_body"),
        (json.dumps({"phone": None}).encode(), "invalid_body"),
        (json.dumps({"call_id": ""}).encode(), "invalid_body"),
        (json.dumps({"agent": "a" * 65}).encode(), "invalid_body"),
        (json.dumps({"limit": "10"}).encode(), "invalid_body"),
        (json.dumps({"limit": True}).encode(), "invalid_body"),
        (json.dumps({"limit": 2.5}).encode(), "invalid_body"),
        (json.dumps({"limit": 0}).encode(), "invalid_body"),
        (json.dumps({"limit": 201}).encode(), "invalid_body"),
        (json.dumps({"phone": "07700 900123"}).encode(), "invalid_phone"),  # not E.164
        (json.dumps({"state": "lost"}).encode(), "invalid_parameter"),
        (json.dumps({"from": "last tuesday"}).encode(), "invalid_parameter"),
        (json.dumps({"cursor": "not-a-cursor!"}).encode(), "invalid_cursor"),
        (json.dumps({"agent": "a\x00b"}).encode(), "invalid_characters"),
        (b'{"agent": "a\\ud800b"}', "invalid_characters"),
    ],
)
async def test_bad_search_bodies_are_400_with_a_stable_code(client: Any, body: bytes, code: str) -> None:
    auth = await make_token(client, "acme", "recordings:read")
    resp = await client.post(SEARCH, data=body, headers={**auth, "Content-Type": "application/json"})
    assert resp.status == 400, await resp.text()
    error = (await resp.json())["error"]
    assert set(error) == {"code", "message"} and error["code"] == code
    assert "900123" not in error["message"]  # a message names the key, never echoes the number


async def test_search_bodies_are_bounded_whatever_their_length_says(client: Any) -> None:
    auth = await make_token(client, "acme", "recordings:read")
    big = json.dumps({"agent": "a", "call_id": "x" * 9000}).encode()
    declared = await client.post(SEARCH, data=big, headers={**auth, "Content-Type": "application/json"})
    assert declared.status == 413
    assert (await declared.json())["error"]["code"] == "payload_too_large"

    async def chunks() -> Any:  # no Content-Length: chunked transfer encoding
        for _ in range(100):
            yield b" " * 1024

    streamed = await client.post(SEARCH, data=chunks(), headers={**auth, "Content-Type": "application/json"})
    assert streamed.status == 413
    assert (await streamed.json())["error"]["code"] == "payload_too_large"
