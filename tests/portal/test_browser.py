"""End-to-end: Debian's Chromium, driven by Playwright, against the real app on 127.0.0.1.

A recording comes in through the signed Twilio webhook and the ingest worker (the fake Twilio
serves its media), staff accounts log in through the real login and TOTP forms, and the browser
does what a person does: enrol MFA from the QR page, search, open a recording, give a reason,
play the audio, place and release a legal hold, and read the play's audit entry as an auditor.
Keyboard use and 200 % zoom are checked too.

Screenshots of the main pages go to ``test-artifacts/browser/`` (gitignored); run with
``CALLREC_DOCS_SCREENSHOTS=1`` to refresh the README's copies in ``docs/screenshots/``. Layout
faults that a person would see (a QR code that does not render, codes broken over two lines, a
page that scrolls sideways at 200 % zoom) are collected and asserted at the end of each test, so
one run names them all and the screenshots are still taken.

The browser is Debian's ``chromium`` at /usr/bin/chromium (``scripts/install-browser`` installs
it); Playwright's own browser download is never used. Without the browser or the playwright
package these tests skip on a developer's machine and fail under CI (``CI`` set), so a CI run
cannot pass without them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import pyotp
import pytest
from portal_support import CHROMIUM, CHROMIUM_ARGS, PASSWORD, Staff, make_staff, need_browser

from callrec.appkeys import db_key

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
WAIT_MS = 10_000  # every Playwright wait is bounded by this
TEST_BUDGET_S = 60  # and each whole test by this


@asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        # Playwright gives each launch a fresh, empty profile (--user-data-dir in a temp folder).
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            yield browser
        finally:
            await browser.close()


async def new_page(browser: Any, **context_options: Any) -> Any:
    context = await browser.new_context(**context_options)
    context.set_default_timeout(WAIT_MS)
    context.set_default_navigation_timeout(WAIT_MS)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "console",
        lambda msg: (
            errors.append(msg.text) if msg.type == "error" and "Content Security" in msg.text else None
        ),
    )
    page.csp_errors = errors  # CSP violations would show a page that only works without our headers
    return page


# The screenshots shown in the README: CALLREC_DOCS_SCREENSHOTS=1 copies them into docs/screenshots/.
DOCS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
FOR_DOCS = {
    "02-mfa-enrolment": "mfa-enrolment.png",
    "04-recordings": "recordings.png",
    "07-recording-player": "recording-player.png",
    "08-audit-log": "audit-log.png",
    "09-hold-preview": "hold-preview.png",
}


async def shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True, timeout=WAIT_MS)
    if os.environ.get("CALLREC_DOCS_SCREENSHOTS") == "1" and name in FOR_DOCS:
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS / FOR_DOCS[name])
    return path


# --- the data: recordings through the real Twilio path, staff accounts ------------------------


async def log_in(page: Any, base: str, who: Staff) -> None:
    await page.goto(f"{base}/portal/login")
    await page.get_by_label("E-mail address").fill(who.email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Continue").click()
    await page.wait_for_url(re.compile(r"/portal/mfa$"))
    await page.get_by_label("Six-digit code from the app").fill(who.code())
    await page.get_by_role("button", name="Verify").click()
    await page.wait_for_url(re.compile(r"/portal/$"))


@pytest.fixture
def base(portal: Any) -> str:
    need_browser()
    url = str(portal.server.make_url("")).rstrip("/")
    assert url.startswith("http://127.0.0.1:"), url  # loopback only
    return url


@pytest.fixture
async def calls(portal: Any, ingest_call: Any, audio_fixtures: Path) -> dict[str, uuid.UUID]:
    with_notice = (audio_fixtures / "call-with-announcement.wav").read_bytes()
    without = (audio_fixtures / "call-without-announcement.wav").read_bytes()
    return {
        "billing": await ingest_call(with_notice, agent="agent-7", caller="+12125550188"),
        "other": await ingest_call(without, agent="agent-2"),
        "third": await ingest_call(with_notice, agent="agent-2"),
    }


# --- the tests ----------------------------------------------------------------------------------


async def test_enrol_search_open_give_reason_play_and_the_audit_entry(
    portal: Any, base: str, calls: dict[str, uuid.UUID]
) -> None:
    target = calls["billing"]
    reason = "ticket 4711: caller disputes the refund"
    supervisor = await make_staff(portal.app, "supervisor", enrolled=False)
    auditor = await make_staff(portal.app, "auditor")
    async with asyncio.timeout(TEST_BUDGET_S), chromium() as browser:
        page = await new_page(browser)

        # Log in; MFA is not enrolled yet, so the second step shows the QR code and the key.
        await page.goto(f"{base}/portal/login")
        await shot(page, "01-login")
        await page.get_by_label("E-mail address").fill(supervisor.email)
        await page.get_by_label("Password").fill(PASSWORD)
        await page.get_by_role("button", name="Continue").click()
        await page.wait_for_url(re.compile(r"/portal/mfa$"))
        # The session cookie is __Host-, Secure, HttpOnly, SameSite=Strict; Chromium keeps it on
        # http://127.0.0.1, a secure context, so this is the real cookie at work, not a workaround.
        cookies = {c["name"]: c for c in await page.context.cookies()}
        session = cookies["__Host-callrec_session"]
        assert session["secure"] and session["httpOnly"] and session["sameSite"] == "Strict"
        qr = page.get_by_role("img", name="QR code holding the authenticator set-up key")
        await qr.wait_for(state="visible")
        # Presentation faults are collected and asserted at the end, so that one run shows them all.
        problems: list[str] = []
        loaded = await qr.evaluate(
            "img => new Promise(done => img.complete ? done(img.naturalWidth > 0)"
            " : (img.onload = () => done(true), img.onerror = () => done(false)))"
        )
        if not loaded:
            problems.append("the MFA enrolment QR code (a data: SVG image) does not render")
        uri = await page.get_by_label("Set-up link").input_value()
        assert uri.startswith("otpauth://totp/") and f"secret={supervisor.secret}" in uri
        await shot(page, "02-mfa-enrolment")
        await page.get_by_label("Six-digit code from the app").fill(pyotp.parse_uri(uri).now())
        await page.get_by_role("button", name="Verify").click()
        await page.get_by_role("heading", name="Your recovery codes").wait_for()
        assert await page.locator("ol.codes li").count() >= 8
        wrapped = await page.locator("ol.codes code").evaluate_all(
            "codes => codes.filter(c => c.getClientRects().length > 1).map(c => c.textContent)"
        )
        if wrapped:
            problems.append(f"recovery codes broken over two lines: {wrapped}")
        await shot(page, "03-recovery-codes")
        await page.get_by_role("link", name="I have saved them").click()
        await page.wait_for_url(re.compile(r"/portal/$"))
        assert await page.locator("tbody tr").count() == 3
        await shot(page, "04-recordings")

        # Search: the agent filter (supervisors), then an exact phone number. The form posts and the
        # result's address holds an opaque search token: the number never reaches a URL.
        await page.get_by_label("Agent").fill("agent-7")
        await page.get_by_role("button", name="Filter").click()
        await page.wait_for_url(re.compile(r"/portal/\?search="))
        by_agent = page.url
        rows = page.locator("tbody tr")
        assert await rows.count() == 1
        assert await page.locator(f'a[href="/portal/recordings/{target}"]').count() == 1
        await page.get_by_label("Agent").fill("")
        phone_field = page.get_by_label("Phone number (exact, +E.164)")
        await phone_field.fill("+1 212 555 0188")
        await page.get_by_role("button", name="Filter").click()
        await page.wait_for_url(lambda url: "/portal/?search=" in url and url != by_agent)
        by_phone = page.url
        assert "5550188" not in unquote_plus(by_phone).replace(" ", "")
        assert await rows.count() == 1
        assert await phone_field.input_value() == "+1 212 555 0188"  # in the page, not its address
        assert "5550188" not in await page.locator("table").inner_text()  # never shown in full
        await shot(page, "05-recordings-filtered")

        # Open it, and the back button returns to the same search (a GET of the token's address).
        await page.locator(f'a[href="/portal/recordings/{target}"]').click()
        await page.wait_for_url(re.compile(rf"/portal/recordings/{target}$"))
        await page.go_back()
        await page.wait_for_url(by_phone)
        assert await rows.count() == 1
        assert await phone_field.input_value() == "+1 212 555 0188"

        # Open it again: no player before a reason.
        await page.locator(f'a[href="/portal/recordings/{target}"]').click()
        await page.wait_for_url(re.compile(rf"/portal/recordings/{target}$"))
        assert await page.locator("audio").count() == 0
        await page.get_by_role("heading", name=re.compile("^Policy decision")).wait_for()
        await shot(page, "06-recording-before-reason")
        await page.get_by_label(re.compile("Why do you need to listen")).fill(reason)
        await page.get_by_role("button", name="Open the player").click()
        await page.wait_for_url(re.compile(rf"/portal/recordings/{target}#player$"))
        wave = page.get_by_role("img", name="Waveform of the recording")
        await wave.wait_for(state="visible")
        assert await wave.locator("rect").count() > 10
        await page.locator("audio").wait_for(state="visible")
        await shot(page, "07-recording-player")

        # Play: the audio streams (200 or 206 through HTTP Range) and the clock moves.
        async with page.expect_response(
            lambda r: r.url.endswith(f"/portal/recordings/{target}/audio"), timeout=WAIT_MS
        ) as response_info:
            await page.locator("audio").evaluate("a => a.play()")
        response = await response_info.value
        assert response.status in (200, 206), response.status
        await page.wait_for_function(
            "() => document.querySelector('audio').currentTime > 0.2", timeout=WAIT_MS
        )
        await page.locator("audio").evaluate("a => a.pause()")
        assert page.csp_errors == []

        # The play's audit entry carries the reason.
        async with portal.app[db_key].acquire() as conn:
            plays = await conn.fetch(
                "SELECT actor, recording_id, details FROM audit_log WHERE action = 'recording:played'"
            )
        assert plays, "no audit entry for the play"
        for play in plays:
            details = json.loads(play["details"])
            assert play["recording_id"] == target and play["actor"].startswith("staff:")
            assert details["reason"] == reason and details["via"] == "portal"

        # ... and an auditor reads it in the portal.
        audit_page = await new_page(browser)
        await log_in(audit_page, base, auditor)
        await audit_page.goto(f"{base}/portal/audit?action=recording:played&recording={target}")
        await audit_page.get_by_text("Hash chain intact").wait_for()
        table = await audit_page.locator("tbody").inner_text()
        assert "recording:played" in table and reason in table
        await shot(audit_page, "08-audit-log")
        assert audit_page.csp_errors == []

        # Logging out ends the session.
        await page.get_by_role("button", name="Log out").click()
        await page.wait_for_url(re.compile(r"/portal/login$"))
        assert "__Host-callrec_session" not in {c["name"] for c in await page.context.cookies()}
        await page.goto(f"{base}/portal/recordings/{target}")
        assert page.url.endswith("/portal/login")  # the old session opens nothing
    assert not problems, "; ".join(problems)


async def test_legal_places_a_hold_with_a_scope_preview_and_releases_it(
    portal: Any, base: str, calls: dict[str, uuid.UUID]
) -> None:
    legal = await make_staff(portal.app, "legal")
    matter = "Doe v. Acme, case 26-cv-0042"
    async with asyncio.timeout(TEST_BUDGET_S), chromium() as browser:
        page = await new_page(browser)
        await log_in(page, base, legal)
        await page.get_by_role("link", name="Legal holds").click()
        await page.wait_for_url(re.compile(r"/portal/holds$"))
        await page.get_by_label("Matter").fill(matter)
        await page.get_by_label("Reason (seen by the legal team only)").fill(
            "Litigation notice of 2026-11-20"
        )
        await page.get_by_label("Agent").fill("agent-2")
        await page.get_by_role("button", name="Preview the scope").click()
        preview = page.get_by_role("status")
        await preview.wait_for()
        assert "This hold covers 2 recordings" in await preview.inner_text()
        # The form keeps what was typed, so "Place the hold" places exactly what was previewed.
        assert await page.get_by_label("Matter").input_value() == matter
        await shot(page, "09-hold-preview")
        async with portal.app[db_key].acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM legal_holds") == 0  # a preview places nothing
        await page.get_by_role("button", name="Place the hold").click()
        await page.wait_for_url(re.compile(r"/portal/holds$"))
        row = page.locator("tbody tr", has_text=matter)
        await row.wait_for()
        assert "active" in await row.inner_text()
        await shot(page, "10-holds")

        # The held recordings say so, in the list and on their page.
        await page.goto(f"{base}/portal/?held=yes")
        assert await page.locator("tbody tr").count() == 2
        await page.goto(f"{base}/portal/recordings/{calls['third']}")
        assert (
            matter
            in await page.locator("section", has=page.get_by_role("heading", name="Legal holds")).inner_text()
        )

        # Release it, with a reason.
        await page.goto(f"{base}/portal/holds")
        await row.get_by_label("Reason").fill("Case settled on 2026-12-01")
        await row.get_by_role("button", name="Release").click()
        await page.wait_for_url(re.compile(r"/portal/holds$"))
        assert "released" in await page.locator("tbody tr", has_text=matter).inner_text()
        await page.goto(f"{base}/portal/?held=yes")
        assert await page.get_by_text("No recordings match.").count() == 1
        assert page.csp_errors == []

    async with portal.app[db_key].acquire() as conn:
        hold = await conn.fetchrow("SELECT matter, scope_agent, released_at, release_reason FROM legal_holds")
        actions = [
            r["action"]
            for r in await conn.fetch("SELECT action FROM audit_log WHERE action LIKE 'hold:%' ORDER BY seq")
        ]
    assert hold["matter"] == matter and hold["scope_agent"] == "agent-2"
    assert hold["released_at"] is not None and hold["release_reason"] == "Case settled on 2026-12-01"
    assert actions == ["hold:placed", "hold:released"]


async def test_keyboard_only_login_and_the_recordings_at_200_percent_zoom(
    portal: Any, base: str, calls: dict[str, uuid.UUID]
) -> None:
    support = await make_staff(portal.app, "support")
    # 200 % zoom of a 1280 x 800 window: half the CSS pixels, each drawn twice as large.
    zoomed = {"viewport": {"width": 640, "height": 400}, "device_scale_factor": 2}
    async with asyncio.timeout(TEST_BUDGET_S), chromium() as browser:
        page = await new_page(browser, **zoomed)
        await page.goto(f"{base}/portal/login")

        # The e-mail field has the focus on arrival; Shift+Tab reaches the skip link, and Tab
        # walks the e-mail, the password and the button, in that order.
        focused = (
            "() => { const e = document.activeElement;"
            " return e.id || e.className || e.getAttribute('type') || e.tagName; }"
        )
        from playwright.async_api import expect

        # Autofocus lands once the page has loaded: wait for it (bounded) rather than sample once.
        await expect(page.locator("#email")).to_be_focused(timeout=5000)
        await page.keyboard.press("Shift+Tab")
        order = [await page.evaluate(focused)]
        skip = await page.get_by_role("link", name="Skip to content").bounding_box()
        assert skip and skip["x"] >= 0 and skip["y"] >= 0  # shown when focused, not off-screen
        await shot(page, "11-login-skip-link-200pct")
        for _ in range(3):
            await page.keyboard.press("Tab")
            order.append(await page.evaluate(focused))
        assert order == ["skip", "email", "password", "submit"], order
        focus = await page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
        assert focus != "none"  # the focused button is visibly marked

        # Log in with the keyboard alone.
        await page.get_by_label("E-mail address").focus()
        await page.keyboard.type(support.email)
        await page.keyboard.press("Tab")
        await page.keyboard.type(PASSWORD)
        await page.keyboard.press("Enter")
        await page.wait_for_url(re.compile(r"/portal/mfa$"))
        await expect(page.locator("#code")).to_be_focused(timeout=5000)  # autofocus
        await page.keyboard.type(support.code())
        await page.keyboard.press("Enter")
        await page.wait_for_url(re.compile(r"/portal/$"))

        # Readable at 200 %: nothing wider than the window on the main pages.
        problems: list[str] = []
        assert await page.locator("tbody tr").count() == 3
        for name, path in (
            ("12-recordings-200pct", "/portal/"),
            ("13-recording-200pct", f"/portal/recordings/{calls['billing']}"),
            ("14-login-200pct", "/portal/login"),
        ):
            await page.goto(f"{base}{path}")
            await shot(page, name)
            wide, window = await page.evaluate(
                "() => [document.documentElement.scrollWidth, window.innerWidth]"
            )
            if wide > window + 1:
                problems.append(
                    f"{path} scrolls sideways at 200 % zoom: {wide} CSS px in a {window} px window"
                )
        assert page.csp_errors == []
        assert not problems, "; ".join(problems)


async def test_admin_adds_an_account_and_privacy_restricts_a_recording_and_prepares_a_copy(
    portal: Any, base: str, calls: dict[str, uuid.UUID]
) -> None:
    admin, privacy = await make_staff(portal.app, "admin"), await make_staff(portal.app, "privacy")
    zoomed = {"viewport": {"width": 640, "height": 400}, "device_scale_factor": 2}
    problems: list[str] = []

    async def fits(page: Any, what: str) -> None:
        wide, window = await page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        if wide > window + 1:
            problems.append(f"{what} scrolls sideways at 200 % zoom: {wide} CSS px in a {window} px window")

    async with asyncio.timeout(TEST_BUDGET_S), chromium() as browser:
        page = await new_page(browser, **zoomed)
        await log_in(page, base, admin)
        await page.goto(f"{base}/portal/admin")
        await page.get_by_label("E-mail address").fill("new.agent@acme.example")
        await page.get_by_label("Role", exact=True).select_option("support")
        await page.get_by_role("button", name="Add the account").click()
        notice = page.get_by_role("status")
        await notice.wait_for()
        text = await notice.inner_text()
        assert "new.agent@acme.example" in text and "First password, shown only now" in text
        await shot(page, "15-admin-account-added-200pct")
        await fits(page, "the admin page")
        row = page.locator("tbody tr", has_text="new.agent@acme.example")
        await row.get_by_role("button", name="Disable new.agent@acme.example").click()
        await page.wait_for_url(re.compile(r"/portal/admin"))
        assert "disabled" in await page.locator("tbody tr", has_text="new.agent@acme.example").inner_text()

        page = await new_page(browser, **zoomed)
        await log_in(page, base, privacy)
        await page.goto(f"{base}/portal/recordings/{calls['other']}")
        await page.get_by_label("Reason (e.g. the caller's request reference)").fill(
            "DSR-31: accuracy contested"
        )
        await page.get_by_role("button", name="Restrict this recording").click()
        await page.wait_for_url(re.compile(rf"/portal/recordings/{calls['other']}$"))
        assert await page.get_by_role("button", name="Lift the restriction").count() == 1
        await fits(page, "a restricted recording")

        await page.get_by_role("link", name="Access requests").click()
        await page.wait_for_url(re.compile(r"/portal/access$"))
        await page.get_by_label("Caller's phone number (+E.164)").fill("+1 212 555 0188")
        await page.get_by_role("button", name="Prepare the copy").click()
        status = page.get_by_role("status")
        await status.wait_for()
        assert "1 recording" in await status.inner_text()
        link = await page.get_by_label("Download link").input_value()
        assert "/api/v1/access-requests/" in link and "token=" in link
        await shot(page, "16-access-request-200pct")
        await fits(page, "the access requests page")
        assert page.csp_errors == []

    async with portal.app[db_key].acquire() as conn:
        restricted = await conn.fetchval("SELECT restricted FROM recordings WHERE id = $1", calls["other"])
        granted = await conn.fetchval("SELECT recording_ids FROM access_requests")
        disabled = await conn.fetchval(
            "SELECT disabled_at IS NOT NULL FROM staff_users WHERE email = 'new.agent@acme.example'"
        )
    assert restricted is True and granted == [calls["billing"]] and disabled is True
    assert not problems, "; ".join(problems)
