"""Portal recordings: every role against every route, IDOR, tenants, reason before play, audit."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from callrec.appkeys import db_key, keys_key
from callrec.portal import search as portal_search


def csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]*)"', html)
    assert match
    return match.group(1)


async def search(b: Any, **filters: str) -> tuple[str, str]:
    """Submit the recordings' filter form as a browser does: a POST, then the GET its 303 names.
    Returns that address and the result page."""
    token = await b.csrf("/portal/")
    resp = await b.post("/portal/search", {"csrf_token": token, **filters})
    assert resp.status == 303, await resp.text()
    location: str = resp.headers["Location"]
    page = await b.get(location)
    assert page.status == 200, await page.text()
    return location, await page.text()


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
    location, by_phone = await search(b, phone="+12125550123")
    assert "5550123" not in location
    assert str(first) in by_phone and "5550123" not in by_phone.split("<table")[1]
    _, bad = await search(b, phone="yesterday")
    assert "E.164" in bad and "No recordings match." in bad
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


# --- phone numbers stay out of addresses ---------------------------------------------------------

CALLER = "+12125550123"  # twilio_support's default caller
OTHER_CALLER = "+12125550188"


async def test_the_filter_form_posts_and_the_result_address_holds_no_number(
    browser: Any, staff_factory: Any, ingest_call: Any, audio_fixtures: Path
) -> None:
    data = (audio_fixtures / "call-without-announcement.wav").read_bytes()
    first = await ingest_call(data, caller=CALLER)
    second = await ingest_call(data, caller=OTHER_CALLER)
    b = browser()
    await b.login(await staff_factory("support"))
    page = await (await b.get("/portal/")).text()
    form = page[page.index('<form method="post" action="/portal/search"') :]
    assert 'name="csrf_token"' in form.split("</form>")[0]
    for typed in (OTHER_CALLER, "+1 (212) 555-0188", "+1 212 555 0188"):
        location, found = await search(b, phone=typed)
        assert location.startswith("/portal/?search=") and "after" not in location
        for digits in ("2125550188", "5550188", "212-555-0188", "555-0188"):
            assert digits not in location
        assert str(second) in found and str(first) not in found
        assert f'value="{typed}"' in found  # the form shows what was typed, in the page, not its address
    # A blank form is the unfiltered list.
    resp = await b.post("/portal/search", {"csrf_token": await b.csrf(), "phone": " "})
    assert resp.status == 303 and resp.headers["Location"] == "/portal/"
    # The form is a state-changing POST like any other: without the session's CSRF token it is refused.
    assert (await b.post("/portal/search", {"phone": OTHER_CALLER})).status == 403


@pytest.mark.parametrize("phone", ["%2B12125550123", "+12125550123", "2125550123", "yesterday"])
async def test_a_phone_number_in_the_address_is_refused(
    browser: Any, staff_factory: Any, recording: uuid.UUID, portal: Any, phone: str
) -> None:
    b = browser()
    await b.login(await staff_factory("supervisor"))
    resp = await b.get(f"/portal/?phone={phone}")
    assert resp.status == 400
    text = await resp.text()
    assert "Phone number field" in text and str(recording) not in text
    async with portal.app[db_key].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'recording:listed'") == 0


async def test_a_search_token_is_bound_to_its_session_and_short_lived(
    browser: Any, staff_factory: Any, recording: uuid.UUID
) -> None:
    supervisor = await staff_factory("supervisor")
    mine, theirs = browser(), browser()
    await mine.login(supervisor)
    await theirs.login(supervisor)  # the same person, another session
    location, found = await search(mine, phone=CALLER)
    assert str(recording) in found
    elsewhere = await (await theirs.get(location)).text()
    assert "This search has expired" in elsewhere and str(recording) not in elsewhere
    assert "No recordings match." in elsewhere and CALLER not in elsewhere
    # Tampered with: one character of the token changed.
    token = location.split("search=", 1)[1]
    bent = token[:-5] + ("A" if token[-5] != "A" else "B") + token[-4:]
    assert str(recording) not in await (await mine.get(f"/portal/?search={bent}")).text()
    # Past its lifetime (the clock is the only thing changed).
    cookie = mine.cookies["__Host-callrec_session"]
    sealed = portal_search.seal(cookie, {"phone": CALLER})
    assert portal_search.open_token(cookie, sealed) == {"phone": CALLER}
    later = time.time() + portal_search.TTL.total_seconds() + 1
    assert portal_search.open_token(cookie, sealed, now=later) is None
    assert portal_search.open_token(theirs.cookies["__Host-callrec_session"], sealed) is None
    # And after logout, the session that could read it is gone.
    await mine.post("/portal/logout", {"csrf_token": await mine.csrf()})
    assert (await mine.get(location)).headers["Location"] == "/portal/login"


async def test_paging_a_phone_search_keeps_the_number_out_of_every_address(
    browser: Any, staff_factory: Any, portal: Any
) -> None:
    async with portal.app[db_key].acquire() as conn:
        digest = await portal.app[keys_key].phone_hash(conn, "acme", OTHER_CALLER)
        await conn.execute(
            """INSERT INTO recordings (id, tenant, provider, provider_recording_id, call_id, state,
                                       stored_at, expires_at, duration_ms, channels, sample_rate,
                                       format, codec, size_bytes, sha256, from_hash)
               SELECT gen_random_uuid(), 'acme', 'upload', 'r' || n, 'c' || n, 'stored',
                      now() - n * interval '1 minute', now() + interval '90 days', 1000, 1, 8000,
                      'wav', 'pcm_s16le', 16000, '', CASE WHEN n <= 60 THEN $1::bytea END
               FROM generate_series(1, 70) n""",
            digest,
        )
        wanted = {
            str(r["id"]) for r in await conn.fetch("SELECT id FROM recordings WHERE from_hash = $1", digest)
        }
    assert len(wanted) == 60
    b = browser()
    await b.login(await staff_factory("support"))
    location, page = await search(b, phone=OTHER_CALLER)
    addresses = [location]
    seen: list[str] = []
    for _ in range(5):
        seen += re.findall(r'href="/portal/recordings/([0-9a-f-]{36})"', page)
        addresses += re.findall(r'(?:href|action|src)="([^"]*)"', page)
        following = re.search(r'<a href="([^"]*)">Next page</a>', page)
        if following is None:
            break
        page = await (await b.get(following.group(1).replace("&amp;", "&"))).text()
    assert len(seen) == 60 and set(seen) == wanted  # every match once, over two pages
    assert any("after=" in a for a in addresses)
    for address in addresses:
        for digits in ("2125550188", "5550188"):
            assert digits not in address, address
    async with portal.app[db_key].acquire() as conn:
        entries = await conn.fetch(
            "SELECT details::text AS d FROM audit_log WHERE action = 'recording:listed' ORDER BY seq"
        )
    # The page that gave the form, then the two result pages: the filter named, the number nowhere.
    assert [json.loads(e["d"])["filters"] for e in entries] == [[], ["phone"], ["phone"]]
    assert not any("5550188" in e["d"] for e in entries)
