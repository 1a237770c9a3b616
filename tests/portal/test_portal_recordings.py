"""Portal recordings: every role against every route, IDOR, tenants, reason before play, audit."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from callrec.appkeys import db_key


def csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]*)"', html)
    assert match
    return match.group(1)


@pytest.fixture
async def recording(portal: Any, ingest_call: Any, audio_fixtures: Path) -> uuid.UUID:
    return await ingest_call((audio_fixtures / "call-with-announcement.wav").read_bytes())


ROUTES = [
    ("GET", "/portal/"),
    ("GET", "/portal/recordings/{id}"),
    ("POST", "/portal/recordings/{id}/reason"),
    ("GET", "/portal/recordings/{id}/audio"),
]
ALLOWED = {
    "support": {0, 1, 2, 3},
    "supervisor": {0, 1, 2, 3},
    "privacy": {0, 1, 2, 3},
    "legal": {0, 1, 2, 3},
    "auditor": set(),
    "admin": set(),
}


@pytest.mark.parametrize("role", sorted(ALLOWED))
async def test_every_route_against_every_role(
    browser: Any, staff_factory: Any, recording: uuid.UUID, role: str
) -> None:
    who = await staff_factory(role)
    b = browser()
    assert (await b.login(who)).status in (200, 303)
    for index, (method, template) in enumerate(ROUTES):
        path = template.format(id=recording)
        if method == "GET":
            resp = await b.get(path)
        else:
            page = await b.get(f"/portal/recordings/{recording}")
            token = csrf(await page.text()) if page.status == 200 else "x"
            resp = await b.post(path, {"csrf_token": token, "reason": "ticket 42: complaint about billing"})
        allowed = index in ALLOWED[role]
        if allowed:
            assert resp.status in (200, 206, 303), (role, path, resp.status)
        else:
            assert resp.status in (403,), (role, path, resp.status)


async def test_reason_before_play_and_each_listen_audited_with_it(
    browser: Any, staff_factory: Any, recording: uuid.UUID, portal: Any, audio_fixtures: Path
) -> None:
    ana = await staff_factory("support")
    b = browser()
    await b.login(ana)
    page = await b.get(f"/portal/recordings/{recording}")
    html = await page.text()
    assert "Why do you need to listen?" in html and "<audio" not in html
    assert (await b.get(f"/portal/recordings/{recording}/audio")).status == 403
    short = await b.post(f"/portal/recordings/{recording}/reason", {"csrf_token": csrf(html), "reason": "x"})
    assert short.status == 400
    resp = await b.post(
        f"/portal/recordings/{recording}/reason",
        {"csrf_token": csrf(html), "reason": "ticket 42: caller disputes the refund"},
    )
    assert resp.status == 303
    html = await (await b.get(f"/portal/recordings/{recording}")).text()
    assert "<audio" in html and 'class="wave"' in html and "<rect" in html
    audio = await b.get(f"/portal/recordings/{recording}/audio", headers={"Range": "bytes=0-99"})
    assert audio.status == 206 and len(await audio.read()) == 100
    whole = await b.get(f"/portal/recordings/{recording}/audio")
    assert await whole.read() == (audio_fixtures / "call-with-announcement.wav").read_bytes()
    async with portal.app[db_key].acquire() as conn:
        plays = await conn.fetch("SELECT actor, details FROM audit_log WHERE action = 'recording:played'")
    assert len(plays) == 2
    for play in plays:
        details = json.loads(play["details"])
        assert details["reason"] == "ticket 42: caller disputes the refund" and details["via"] == "portal"
        assert play["actor"].startswith("staff:")


async def test_ids_of_other_tenants_and_made_up_ids_are_404(
    browser: Any, staff_factory: Any, recording: uuid.UUID
) -> None:
    outsider = await staff_factory("support", tenant="other")
    b = browser()
    await b.login(outsider)
    for path in (
        f"/portal/recordings/{recording}",
        f"/portal/recordings/{recording}/audio",
        f"/portal/recordings/{uuid.uuid4()}",
        "/portal/recordings/not-a-uuid",
    ):
        assert (await b.get(path)).status == 404, path
    listing = await (await b.get("/portal/")).text()
    assert str(recording) not in listing


async def test_quarantined_and_restricted_are_kept_from_support(
    browser: Any, staff_factory: Any, recording: uuid.UUID, portal: Any
) -> None:
    async with portal.app[db_key].acquire() as conn:
        await conn.execute("UPDATE recordings SET restricted = true WHERE id = $1", recording)
    support, privacy = await staff_factory("support"), await staff_factory("privacy")
    s, p = browser(), browser()
    await s.login(support)
    await p.login(privacy)
    assert (await s.get(f"/portal/recordings/{recording}")).status == 404
    assert str(recording) not in await (await s.get("/portal/")).text()
    assert (await p.get(f"/portal/recordings/{recording}")).status == 200
    async with portal.app[db_key].acquire() as conn:
        await conn.execute(
            "UPDATE recordings SET restricted = false, state = 'quarantined' WHERE id = $1", recording
        )
    assert (await s.get(f"/portal/recordings/{recording}")).status == 404
    assert (await p.get(f"/portal/recordings/{recording}")).status == 200


async def test_filters_and_the_agent_filter_is_for_supervisors(
    browser: Any, staff_factory: Any, portal: Any, ingest_call: Any, audio_fixtures: Path
) -> None:
    data = (audio_fixtures / "call-without-announcement.wav").read_bytes()
    first = await ingest_call(data, agent="agent-1")
    second = await ingest_call(data, agent="agent-2")
    sup, support = await staff_factory("supervisor"), await staff_factory("support")
    b, s = browser(), browser()
    await b.login(sup)
    await s.login(support)
    filtered = await (await b.get("/portal/?agent=agent-2")).text()
    assert str(second) in filtered and str(first) not in filtered
    ignored = await (await s.get("/portal/?agent=agent-2")).text()
    assert str(first) in ignored and 'id="agent"' not in ignored  # support has no agent filter
    by_phone = await (await b.get("/portal/?phone=%2B12125550123")).text()
    assert str(first) in by_phone and "5550123" not in by_phone.split("<table")[1]
    bad = await (await b.get("/portal/?phone=yesterday")).text()
    assert "E.164" in bad
    expiring = await (await b.get("/portal/?expiring_days=7")).text()
    assert "No recordings match." in expiring


async def test_supervisors_filter_by_call_length_and_pick_agents_from_a_list(
    browser: Any, staff_factory: Any, portal: Any, ingest_call: Any, audio_fixtures: Path
) -> None:
    data = (audio_fixtures / "call-without-announcement.wav").read_bytes()
    short, long = await ingest_call(data, agent="agent-1"), await ingest_call(data, agent="agent-2")
    async with portal.app[db_key].acquire() as conn:
        # The fixtures are all under a minute: give one call the length of a long complaint.
        await conn.execute("UPDATE recordings SET duration_ms = 12 * 60000 WHERE id = $1", long)
    sup, support = await staff_factory("supervisor"), await staff_factory("support")
    b, s = browser(), browser()
    await b.login(sup)
    await s.login(support)
    longer = await (await b.get("/portal/?min_minutes=10")).text()
    assert str(long) in longer and str(short) not in longer
    shorter = await (await b.get("/portal/?max_minutes=10")).text()
    assert str(short) in shorter and str(long) not in shorter
    assert '<option value="agent-1"><option value="agent-2">' in shorter  # the agents' list
    bad = await (await b.get("/portal/?min_minutes=ten")).text()
    assert "whole minutes" in bad and str(short) in bad  # the bad filter is named and dropped
    ignored = await (await s.get("/portal/?min_minutes=10")).text()
    assert str(short) in ignored and 'id="min_minutes"' not in ignored and "agent-names" not in ignored


async def test_the_agent_list_is_each_agent_once(portal: Any) -> None:
    from callrec.db import recordings

    async with portal.app[db_key].acquire() as conn:
        await conn.execute(
            """INSERT INTO recordings (id, tenant, provider, provider_recording_id, call_id, state,
                                       agent, stored_at, expires_at, duration_ms, channels,
                                       sample_rate, format, codec, size_bytes, sha256)
               SELECT gen_random_uuid(), t, 'upload', 'r' || n || t, 'c' || n, 'stored',
                      CASE WHEN n % 7 = 0 THEN NULL WHEN n = 300 THEN 'gone-agent'
                           ELSE 'agent-' || (n % 5) END,
                      now(), now() + interval '90 days', 1000, 1, 8000, 'wav', 'pcm_s16le', 16000, ''
               FROM generate_series(1, 300) n, (VALUES ('acme'), ('other')) AS v(t)"""
        )
        # A destroyed recording's tombstone keeps its agent; the list is of live recordings.
        await conn.execute("UPDATE recordings SET state = 'destroyed' WHERE agent = 'gone-agent'")
        found = await recordings.agents(conn, tenant="acme")
        expected = [
            r["agent"]
            for r in await conn.fetch(
                """SELECT DISTINCT agent FROM recordings
                   WHERE tenant = 'acme' AND agent IS NOT NULL AND state = 'stored' ORDER BY 1"""
            )
        ]
        assert found == expected == [f"agent-{i}" for i in range(5)]
        assert await recordings.agents(conn, tenant="acme", limit=2) == ["agent-0", "agent-1"]
        assert await recordings.agents(conn, tenant="nobody") == []
        # The probe the loose scan repeats can read the partial index (its predicate matches).
        async with conn.transaction():
            await conn.execute("SET LOCAL enable_seqscan = off")
            plan = "\n".join(
                r[0]
                for r in await conn.fetch(
                    "EXPLAIN SELECT agent FROM recordings WHERE tenant = 'acme' AND agent > 'a' "
                    "AND state IN ('stored', 'quarantined') ORDER BY agent LIMIT 1"
                )
            )
    assert "recordings_agent" in plan
