"""Portal pages for privacy, legal, auditor and admin: roles, flows, audit."""

from __future__ import annotations

import asyncio
import csv
import io
import re
from pathlib import Path
from typing import Any

import pytest

from callrec.app import worker_key
from callrec.appkeys import db_key

PAGES = [
    "/portal/holds",
    "/portal/deletions",
    "/portal/access",
    "/portal/quarantine",
    "/portal/audit",
    "/portal/audit.csv",
    "/portal/jobs",
    "/portal/admin",
]
ALLOWED = {
    "support": set(),
    "supervisor": set(),
    "privacy": {"/portal/deletions", "/portal/access", "/portal/quarantine"},
    "legal": {"/portal/holds"},
    "auditor": {"/portal/audit", "/portal/audit.csv"},
    "admin": {"/portal/jobs", "/portal/admin"},
}


def csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]*)"', html)
    assert match
    return match.group(1)


@pytest.mark.parametrize("role", sorted(ALLOWED))
async def test_every_page_against_every_role(browser: Any, staff_factory: Any, role: str) -> None:
    who = await staff_factory(role)
    b = browser()
    await b.login(who)
    for page in PAGES:
        resp = await b.get(page)
        assert resp.status == (200 if page in ALLOWED[role] else 403), (role, page, resp.status)


async def test_legal_places_a_hold_with_a_preview_and_releases_it(
    browser: Any, staff_factory: Any, portal: Any, ingest_call: Any, audio_fixtures: Path
) -> None:
    audio = (audio_fixtures / "call-without-announcement.wav").read_bytes()
    for _ in range(2):
        await ingest_call(audio)
    legal = await staff_factory("legal")
    b = browser()
    await b.login(legal)
    token = csrf(await (await b.get("/portal/holds")).text())
    scope = {"phones": "+1 212 555 0123", "matter": "Smith v Acme", "reason": "pending litigation"}
    preview = await b.post("/portal/holds", {"csrf_token": token, "action": "preview", **scope})
    assert preview.status == 200 and "This hold covers 2 recordings" in await preview.text()
    placed = await b.post("/portal/holds", {"csrf_token": token, "action": "place", **scope})
    assert placed.status == 303
    async with portal.app[db_key].acquire() as conn:
        hold_id = await conn.fetchval("SELECT id FROM legal_holds WHERE released_at IS NULL")
    assert hold_id is not None
    empty = await b.post(
        "/portal/holds", {"csrf_token": token, "action": "place", "matter": "m", "reason": "r"}
    )
    assert empty.status == 400 and "at least one scope" in await empty.text()
    released = await b.post(f"/portal/holds/{hold_id}/release", {"csrf_token": token, "reason": "settled"})
    assert released.status == 303
    async with portal.app[db_key].acquire() as conn:
        assert await conn.fetchval("SELECT released_at IS NOT NULL FROM legal_holds") is True
        entries = await conn.fetch("SELECT action, details FROM audit_log WHERE action LIKE 'hold:%'")
    assert sorted(e["action"] for e in entries) == ["hold:placed", "hold:released"]
    # The hold's id, never its matter (case names name people; the audit log keeps them forever).
    assert all("Smith" not in e["details"] and str(hold_id) in e["details"] for e in entries)


async def test_privacy_makes_a_deletion_request_for_a_caller(
    browser: Any, staff_factory: Any, portal: Any, ingest_call: Any, audio_fixtures: Path
) -> None:
    rid = await ingest_call((audio_fixtures / "call-without-announcement.wav").read_bytes())
    privacy = await staff_factory("privacy")
    b = browser()
    await b.login(privacy)
    token = csrf(await (await b.get("/portal/deletions")).text())
    resp = await b.post(
        "/portal/deletions",
        {"csrf_token": token, "phone": "+12125550123", "law": "gdpr", "external_ref": "CALL-77"},
    )
    assert resp.status == 303
    while await portal.app[worker_key].run_once():
        pass
    page = await (await b.get(resp.headers["Location"])).text()
    assert "completed" in page and str(rid) in page and "deleted" in page
    queue = await (await b.get("/portal/deletions")).text()
    assert "CALL-77" in queue
    both = await b.post("/portal/deletions", {"csrf_token": token, "phone": "+12125550123", "call_id": "x"})
    assert both.status == 400


async def test_privacy_reviews_quarantine(
    browser: Any, staff_factory: Any, portal: Any, ingest_call: Any, audio_fixtures: Path
) -> None:
    keep = await ingest_call((audio_fixtures / "call-without-announcement.wav").read_bytes())
    drop = await ingest_call((audio_fixtures / "call-without-announcement.wav").read_bytes())
    async with portal.app[db_key].acquire() as conn:
        await conn.execute("UPDATE recordings SET state = 'quarantined' WHERE id = ANY($1)", [keep, drop])
    privacy = await staff_factory("privacy")
    b = browser()
    await b.login(privacy)
    page = await (await b.get("/portal/quarantine")).text()
    assert str(keep) in page and str(drop) in page
    token = csrf(page)
    assert (
        await b.post(
            f"/portal/quarantine/{keep}",
            {"csrf_token": token, "decision": "approve", "reason": "notice confirmed by agent"},
        )
    ).status == 303
    assert (
        await b.post(
            f"/portal/quarantine/{drop}",
            {"csrf_token": token, "decision": "reject", "reason": "no notice given"},
        )
    ).status == 303
    async with portal.app[db_key].acquire() as conn:
        states = {r["id"]: r["state"] for r in await conn.fetch("SELECT id, state FROM recordings")}
    assert states[keep] == "stored" and states[drop] == "destroyed"


async def test_auditor_reads_verifies_and_exports_the_log(
    browser: Any, staff_factory: Any, portal: Any
) -> None:
    auditor = await staff_factory("auditor")
    b = browser()
    await b.login(auditor)
    page = await (await b.get("/portal/audit?action=user:login")).text()
    assert "Hash chain intact" in page and "user:login" in page
    export = await b.get("/portal/audit.csv")
    assert export.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(await export.text())))
    assert rows[0][:4] == ["seq", "at", "actor", "action"] and len(rows) > 1
    async with portal.app[db_key].acquire() as conn:
        await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
        await conn.execute("UPDATE audit_log SET details = '{}' WHERE seq = 1")
    # Views walk only what was added since the last full walk (an hour at most ago)...
    assert "Hash chain intact" in await (await b.get("/portal/audit")).text()
    # ...and the next full walk finds the edit, and keeps showing it.
    from datetime import timedelta

    from callrec.portal.chain import chain_key

    portal.app[chain_key].full_every = timedelta(0)
    broken = await (await b.get("/portal/audit")).text()
    assert "Hash chain BROKEN" in broken and "entry 1: content does not match" in broken
    portal.app[chain_key].full_every = timedelta(hours=1)
    assert "Hash chain BROKEN" in await (await b.get("/portal/audit")).text()


async def test_admin_retries_dead_jobs_and_manages_tokens(
    browser: Any, staff_factory: Any, portal: Any
) -> None:
    async with portal.app[db_key].acquire() as conn:
        job_id = await conn.fetchval(
            """INSERT INTO jobs (tenant, kind, dedupe_key, payload, max_attempts, state, attempts, last_error)
               VALUES ('acme', 'ingest.twilio', 'RE9', '{}', 3, 'dead', 3, 'audio undecodable: x')
               RETURNING id"""
        )
    admin = await staff_factory("admin")
    b = browser()
    await b.login(admin)
    page = await (await b.get("/portal/jobs")).text()
    assert "audio undecodable" in page
    assert (await b.post(f"/portal/jobs/{job_id}/retry", {"csrf_token": csrf(page)})).status == 303
    async with portal.app[db_key].acquire() as conn:
        assert await conn.fetchval("SELECT state FROM jobs WHERE id = $1", job_id) == "queued"
    admin_page = await (await b.get("/portal/admin")).text()
    created = await b.post(
        "/portal/admin/tokens", {"csrf_token": csrf(admin_page), "name": "dsr", "scope": "deletions:write"}
    )
    html = await created.text()
    token = re.search(r"<code>(crt_[^<]+)</code>", html)
    assert created.status == 200 and token
    resp = await portal.get(
        "/api/v1/deletion-requests", headers={"Authorization": f"Bearer {token.group(1)}"}
    )
    assert resp.status == 403  # the scope is deletions:write only
    async with portal.app[db_key].acquire() as conn:
        token_id = await conn.fetchval("SELECT id FROM api_tokens")
    assert (await b.post(f"/portal/admin/tokens/{token_id}/revoke", {"csrf_token": csrf(html)})).status == 303
    resp = await portal.post(
        "/api/v1/deletion-requests",
        json={"subject": {"call_id": "c"}},
        headers={"Authorization": f"Bearer {token.group(1)}"},
    )
    assert resp.status == 401


async def test_auditor_filters_by_person_and_time_and_pages_back(
    browser: Any, staff_factory: Any, portal: Any
) -> None:
    from datetime import UTC, datetime, timedelta

    from callrec.db import audit

    auditor, agent = await staff_factory("auditor"), await staff_factory("support")
    async with portal.app[db_key].acquire() as conn, conn.transaction():
        agent_id = await conn.fetchval("SELECT id FROM staff_users WHERE email = $1", agent.email)
        for i in range(205):
            await audit.record(
                conn,
                tenant="acme",
                actor=f"staff:{agent_id}",
                action=audit.AuditAction.RECORDING_VIEWED,
                details={"n": i},
            )
        await audit.record(
            conn, tenant="other", actor=f"staff:{agent_id}", action=audit.AuditAction.RECORDING_VIEWED
        )
    b = browser()
    await b.login(auditor)
    first = await b.get(f"/portal/audit?actor=staff%3A{agent_id}&action=recording%3Aviewed")
    html = await first.text()
    assert first.status == 200 and html.count("<tr><td>") == 200
    assert agent.email in html  # the auditor reads names; the log keeps ids
    assert f'option value="staff:{agent_id}" selected' in html
    older = re.search(r'<a href="/portal/audit\?([^"]+)">Older entries</a>', html)
    assert older
    rest = await (await b.get("/portal/audit?" + older.group(1).replace("&amp;", "&"))).text()
    assert rest.count("<tr><td>") == 5 and "Older entries" not in rest  # 205 in all, none from "other"
    export = re.search(r'<a href="/portal/audit.csv\?([^"]+)">Export as CSV</a>', html)
    assert export and "before" not in export.group(1)
    rows = list(
        csv.reader(
            io.StringIO(
                await (await b.get("/portal/audit.csv?" + export.group(1).replace("&amp;", "&"))).text()
            )
        )
    )
    assert len(rows) == 206 and rows[0][-1] == "actor_name" and {r[-1] for r in rows[1:]} == {agent.email}

    # Both ends of a time range: three entries before a boundary, two after it.
    async def viewed(n: int) -> None:
        async with portal.app[db_key].acquire() as conn, conn.transaction():
            for _ in range(n):
                await audit.record(
                    conn, tenant="acme", actor="token:range", action=audit.AuditAction.RECORDING_VIEWED
                )

    await viewed(3)
    await asyncio.sleep(1.1)
    boundary = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    await asyncio.sleep(1.2)
    await viewed(2)
    stamp = boundary.strftime("%Y-%m-%dT%H:%M:%S")
    for query, expected in ((f"to={stamp}", 3), (f"from={stamp}", 2)):
        page = await (await b.get(f"/portal/audit?actor=token%3Arange&{query}")).text()
        assert page.count("<tr><td>") == expected, query

    later = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    none = await (await b.get(f"/portal/audit?from={later}")).text()
    assert "No entries match." in none
    bad = await b.get("/portal/audit?from=yesterday")
    assert bad.status == 400
