"""The privacy role's access requests and restrictions in the portal: same functions as the API,
same audit entries (marked ``via: portal``), and nothing changed by bad input."""

from __future__ import annotations

import io
import json
import re
import uuid
import zipfile
from pathlib import Path
from typing import Any

from callrec.appkeys import db_key

CALLER = "+12125550123"


def csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]*)"', html)
    assert match
    return match.group(1)


async def audit_of(portal: Any, action: str) -> list[dict[str, Any]]:
    async with portal.app[db_key].acquire() as conn:
        rows = await conn.fetch(
            "SELECT actor, recording_id, details FROM audit_log WHERE action = $1 ORDER BY seq", action
        )
    return [{**dict(r), "details": json.loads(r["details"])} for r in rows]


async def test_privacy_prepares_a_copy_for_a_caller(
    browser: Any, staff_factory: Any, portal: Any, ingest_call: Any, audio_fixtures: Path
) -> None:
    audio = (audio_fixtures / "call-without-announcement.wav").read_bytes()
    theirs = [await ingest_call(audio, caller=CALLER) for _ in range(2)]
    await ingest_call(audio, caller="+12125550999")  # someone else's call
    privacy = await staff_factory("privacy")
    b = browser()
    await b.login(privacy)
    page = await (await b.get("/portal/access")).text()
    resp = await b.post("/portal/access", {"csrf_token": csrf(page), "phone": "+1 (212) 555-0123"})
    html = await resp.text()
    assert resp.status == 200 and "<strong>2 recordings</strong> found" in html
    link = re.search(r'id="link" class="wide" type="text" value="([^"]+)"', html)
    assert link
    url = link.group(1).replace("&amp;", "&")
    path = url.split("://", 1)[1].split("/", 1)[1]
    # The link works without a portal session: it is the capability, for the caller.
    download = await portal.get("/" + path)
    assert download.status == 200 and download.headers["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(await download.read()))
    names = set(archive.namelist())
    assert {f"recordings/{rid}.wav" for rid in theirs} | {"metadata.json"} == names
    for rid in theirs:
        assert archive.read(f"recordings/{rid}.wav")[:4] == b"RIFF"  # decrypted audio
    listed = await (await b.get("/portal/access")).text()
    assert "downloaded" in listed and privacy.email in listed
    assert url not in listed  # the link is shown once; only its hash is stored
    requested = await audit_of(portal, "access:requested")
    assert len(requested) == 1 and requested[0]["details"]["via"] == "portal"
    assert sorted(requested[0]["details"]["recording_ids"]) == sorted(str(r) for r in theirs)
    assert CALLER not in json.dumps(requested[0]["details"]) and "5550123" not in json.dumps(requested)
    assert len(await audit_of(portal, "access:downloaded")) == 1


async def test_a_bad_access_request_changes_nothing(browser: Any, staff_factory: Any, portal: Any) -> None:
    privacy = await staff_factory("privacy")
    b = browser()
    await b.login(privacy)
    token = csrf(await (await b.get("/portal/access")).text())
    for form, message in (
        ({}, "either the caller"),
        ({"phone": CALLER, "call_id": "CA1"}, "either the caller"),
        ({"phone": "tomorrow"}, "Phone"),
        ({"call_id": "x" * 200}, "at most 128"),
    ):
        resp = await b.post("/portal/access", {"csrf_token": token, **form})
        assert resp.status == 400 and message in await resp.text(), form
    async with portal.app[db_key].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM access_requests") == 0
    assert await audit_of(portal, "access:requested") == []


async def test_restriction_hides_a_recording_from_support_until_lifted(
    browser: Any, staff_factory: Any, portal: Any, ingest_call: Any, audio_fixtures: Path
) -> None:
    rid = await ingest_call((audio_fixtures / "call-without-announcement.wav").read_bytes())
    privacy, support, legal = (
        await staff_factory("privacy"),
        await staff_factory("support"),
        await staff_factory("legal"),
    )
    p, s, lg = browser(), browser(), browser()
    for who, b in ((privacy, p), (support, s), (legal, lg)):
        await b.login(who)
    assert str(rid) in await (await s.get("/portal/")).text()
    page = await (await p.get(f"/portal/recordings/{rid}")).text()
    assert "Restrict this recording" in page
    support_page = await (await s.get(f"/portal/recordings/{rid}")).text()
    assert "/restriction" not in support_page  # the form is for the privacy role only
    token = csrf(page)

    no_reason = await p.post(
        f"/portal/recordings/{rid}/restriction", {"csrf_token": token, "action": "restrict"}
    )
    assert no_reason.status == 400
    async with portal.app[db_key].acquire() as conn:
        assert await conn.fetchval("SELECT restricted FROM recordings WHERE id = $1", rid) is False

    done = await p.post(
        f"/portal/recordings/{rid}/restriction",
        {"csrf_token": token, "action": "restrict", "reason": "caller contests accuracy, ref DSR-9"},
    )
    assert done.status == 303 and done.headers["Location"] == f"/portal/recordings/{rid}"
    assert str(rid) not in await (await s.get("/portal/")).text()
    assert (await s.get(f"/portal/recordings/{rid}")).status == 404
    assert (await s.get(f"/portal/recordings/{rid}/audio")).status == 404
    assert (await lg.get(f"/portal/recordings/{rid}")).status == 200  # legal still opens it
    assert "Lift the restriction" in await (await p.get(f"/portal/recordings/{rid}")).text()

    lifted = await p.post(
        f"/portal/recordings/{rid}/restriction",
        {"csrf_token": token, "action": "unrestrict", "reason": "accuracy confirmed"},
    )
    assert lifted.status == 303
    assert (await s.get(f"/portal/recordings/{rid}")).status == 200
    restricted, unrestricted = (
        await audit_of(portal, "recording:restricted"),
        await audit_of(portal, "recording:unrestricted"),
    )
    assert [(r["recording_id"], r["details"]) for r in restricted] == [
        (rid, {"reason": "caller contests accuracy, ref DSR-9", "via": "portal"})
    ]
    assert [r["details"]["reason"] for r in unrestricted] == ["accuracy confirmed"]


async def test_restriction_of_an_unknown_or_foreign_recording_is_not_found(
    browser: Any, staff_factory: Any, portal: Any, ingest_call: Any, audio_fixtures: Path
) -> None:
    rid = await ingest_call((audio_fixtures / "call-without-announcement.wav").read_bytes())
    outsider = await staff_factory("privacy", tenant="other")
    b = browser()
    await b.login(outsider)
    token = csrf(await (await b.get("/portal/access")).text())
    for target in (rid, uuid.uuid4()):
        resp = await b.post(
            f"/portal/recordings/{target}/restriction",
            {"csrf_token": token, "action": "restrict", "reason": "should not work"},
        )
        assert resp.status == 404
    async with portal.app[db_key].acquire() as conn:
        assert await conn.fetchval("SELECT restricted FROM recordings WHERE id = $1", rid) is False
    assert await audit_of(portal, "recording:restricted") == []
