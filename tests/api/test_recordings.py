"""/api/v1/recordings: tokens and scopes, tenant isolation, filters, keyset pagination, bad input."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from callrec.appkeys import db_key
from callrec.db import recordings, tokens


def recording(tenant: str, *, call_id: str = "CA1", agent: str | None = None, stored_at: datetime) -> Any:
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
        from_hash=None,
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
        {"phone": "07700 900123"},  # not E.164
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
