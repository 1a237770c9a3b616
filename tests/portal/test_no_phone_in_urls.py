"""No address that callrec makes or takes holds a phone number (DESIGN rule 3): proxies, load balancers
and ingress controllers write every URL to their access logs.

Recordings of known callers come in through the signed Twilio webhook (and more rows of one caller
straight into the table, so that a search by that number has a second page). Then every role logs in
through the real forms and crawls the portal: it follows every link it is shown (a few of each kind),
submits every form that asks for a phone number with one (as a browser would, a GET form putting its
fields in the address), and follows every redirect. Every href, src, action, formaction, Location and
link-like field value it meets is checked for the numbers' digits, however they are written. The API's
list and the portal's list refuse a number in their query strings.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus, urlencode, urljoin, urlsplit

import phonenumbers
import pytest
from twilio_support import DESK

from callrec.appkeys import db_key, keys_key
from callrec.db import tokens

CALLERS = ("+12125550188", "+447700900123")  # NANP's 555-01xx and Ofcom's drama range: fictional
NUMBERS = (*CALLERS, DESK)
ROLES = ("support", "supervisor", "privacy", "legal", "auditor", "admin")
MAX_PAGES = 80  # per role; every loop below is bounded by it
PER_SHAPE = 3  # pages visited per kind of address (/portal/recordings/{id} ...)
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def written_forms(e164: str) -> list[str]:
    """How a person or a program writes the number: E.164, international, national, RFC 3966."""
    number = phonenumbers.parse(e164)
    formats = [phonenumbers.PhoneNumberFormat.E164, phonenumbers.PhoneNumberFormat.INTERNATIONAL]
    formats += [phonenumbers.PhoneNumberFormat.NATIONAL, phonenumbers.PhoneNumberFormat.RFC3966]
    return [phonenumbers.format_number(number, f) for f in formats]


def holds_a_number(url: str) -> str | None:
    """The number a URL holds, in any of the usual writings: percent- or plus-encoded, with spaces,
    dashes, dots, slashes or brackets between the digits, with or without the country code or a
    trunk prefix. Checked on the national number and on its last seven digits (the subscriber
    number alone identifies a person too); shorter runs would match ids by chance."""
    text = unquote_plus(unquote_plus(url))
    squashed = re.sub(r"(?<=\d)[\s\-./()]+(?=\d)", "", text)
    for e164 in NUMBERS:
        national = str(phonenumbers.parse(e164).national_number)
        if national in squashed or national[-7:] in squashed:
            return e164
    return None


def test_the_detector_sees_every_writing_of_a_number() -> None:
    """The check below is only as good as this: each written form, encoded as a URL would carry it."""
    for e164 in NUMBERS:
        for written in written_forms(e164):
            for url in (
                f"/portal/?phone={written}",
                "/portal/?" + urlencode({"phone": written}),
                "/portal/?" + urlencode({"q": written}).replace("%2B", "+"),
                f"/api/v1/recordings/{written}",
            ):
                assert holds_a_number(url) == e164, url
    for harmless in (
        f"/portal/recordings/{uuid.uuid4()}",
        "/portal/?after=2026-11-23T10:00:00.123456+00:00_" + str(uuid.uuid4()),
        "/portal/audit?action=recording:played",
    ):
        assert holds_a_number(harmless) is None


@dataclass
class Form:
    method: str
    action: str
    fields: dict[str, str] = field(default_factory=dict)
    phone_fields: list[str] = field(default_factory=list)
    button: tuple[str, str] | None = None


class Page(HTMLParser):
    """Every address a page holds, the links to follow and its forms."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.addresses: list[str] = []
        self.links: list[str] = []
        self.forms: list[Form] = []
        self._form: Form | None = None
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        for name in ("href", "src", "action", "formaction"):
            if a.get(name):
                self.addresses.append(a[name])
        if tag == "meta" and a.get("http-equiv", "").lower() == "refresh":
            self.addresses.append(a.get("content", ""))
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        value = a.get("value", "")
        if tag == "input" and value.startswith(("http:", "https:", "/")):
            self.addresses.append(value)  # a link shown for copying (the access request's download link)
        if tag == "form":
            self._form = Form(method=a.get("method", "get").lower(), action=a.get("action", ""))
            return
        form, name = self._form, a.get("name", "")
        if form is None or not name:
            return
        kind = a.get("type", "text").lower()
        if tag == "button" or (tag == "input" and kind == "submit"):
            form.button = form.button or (name, value)
        elif (tag == "input" and kind == "tel") or name in ("phone", "phones"):
            form.phone_fields.append(name)
        elif tag == "input" and kind in ("checkbox", "radio"):
            if "checked" in a:
                form.fields[name] = value or "on"
        elif tag in ("input", "textarea"):
            form.fields.setdefault(name, value)
        elif tag == "select":
            self._select = name
        if tag == "option" and self._select:
            if self._select not in form.fields or "selected" in a:
                form.fields[self._select] = value

    def handle_endtag(self, tag: str) -> None:
        if tag == "form" and self._form is not None:
            self.forms.append(self._form)
            self._form = None
        elif tag == "select":
            self._select = None


def shape(path: str) -> str:
    """The kind of address: ids replaced, query values dropped."""
    parts = urlsplit(path)
    keys = sorted({pair.split("=", 1)[0] for pair in parts.query.split("&") if pair})
    return UUID.sub("{id}", parts.path) + "?" + "&".join(keys)


def worth_visiting(path: str) -> bool:
    return (
        path.startswith("/portal")
        and not path.startswith(("/portal/static/", "/portal/logout", "/portal/sso/"))
        and not path.endswith("/audio")
    )


@dataclass
class Crawl:
    role: str
    seen: list[tuple[str, str]] = field(default_factory=list)  # (where, address)
    pages: int = 0
    submitted: list[str] = field(default_factory=list)

    def saw(self, where: str, address: str) -> None:
        self.seen.append((where, address))


async def crawl(b: Any, role: str) -> Crawl:
    result = Crawl(role)
    queue: deque[str] = deque(["/portal/"])
    visited: set[str] = set()
    per_shape: Counter[str] = Counter()
    submitted: set[tuple[str, str]] = set()

    async def take(where: str, resp: Any) -> None:
        """Note a response's addresses; queue what it links to; submit its phone forms."""
        base = where.removeprefix("POST ")
        if "Location" in resp.headers:
            result.saw(f"{where} Location", resp.headers["Location"])
            queue.appendleft(urljoin(base, resp.headers["Location"]))
        if not resp.content_type == "text/html":
            return
        page = Page()
        page.feed(await resp.text())
        for address in page.addresses:
            result.saw(where, address)
        queue.extend(urljoin(base, link) for link in page.links)
        for form in page.forms:
            if form.phone_fields and (form.method, form.action) not in submitted:
                submitted.add((form.method, form.action))
                await submit(where, form)

    async def submit(where: str, form: Form) -> None:
        # The first caller as typed by a person, then as E.164; a textarea of numbers gets them all.
        for written in (written_forms(CALLERS[0])[1], CALLERS[0]):
            data = dict(form.fields)
            for name in form.phone_fields:
                data[name] = "\n".join(CALLERS) if name == "phones" else written
            if form.button:
                data.setdefault(*form.button)
            action = form.action or where
            result.submitted.append(f"{form.method.upper()} {action}")
            if form.method == "get":
                address = action + "?" + urlencode(data)  # what a browser puts in its address bar
                result.saw(f"GET form on {where}", address)
                await take(address, await b.get(address))
            else:
                await take(f"POST {action}", await b.post(action, data))

    while queue and result.pages < MAX_PAGES:
        path = queue.popleft().replace("&amp;", "&")
        if path in visited or not worth_visiting(path) or per_shape[shape(path)] >= PER_SHAPE:
            continue
        visited.add(path)
        per_shape[shape(path)] += 1
        result.pages += 1
        await take(path, await b.get(path))
    return result


@pytest.fixture
async def callers(portal: Any, ingest_call: Any, audio_fixtures: Path) -> None:
    """A recording from each caller through the real path, and 55 more rows of the first caller."""
    data = (audio_fixtures / "call-with-announcement.wav").read_bytes()
    for caller in CALLERS:
        await ingest_call(data, caller=caller)
    async with portal.app[db_key].acquire() as conn:
        digest = await portal.app[keys_key].phone_hash(conn, "acme", CALLERS[0])
        await conn.execute(
            """INSERT INTO recordings (id, tenant, provider, provider_recording_id, call_id, state,
                                       stored_at, expires_at, duration_ms, channels, sample_rate,
                                       format, codec, size_bytes, sha256, from_hash)
               SELECT gen_random_uuid(), 'acme', 'upload', 'r' || n, 'c' || n, 'stored',
                      now() - n * interval '1 minute', now() + interval '90 days', 1000, 1, 8000,
                      'wav', 'pcm_s16le', 16000, '', $1::bytea
               FROM generate_series(1, 55) n""",
            digest,
        )


async def test_no_portal_address_holds_a_phone_number_for_any_role(
    browser: Any, staff_factory: Any, callers: None
) -> None:
    crawls = []
    for role in ROLES:
        b = browser()
        assert (await b.login(await staff_factory(role))).status == 303
        crawls.append(await crawl(b, role))
    for c in crawls:
        print(f"{c.role}: {c.pages} pages, {len(c.seen)} addresses, forms with a number: {c.submitted}")
    leaks = [
        f"{c.role}: {where}: {address}"
        for c in crawls
        for where, address in c.seen
        if holds_a_number(address)
    ]
    assert not leaks, "addresses holding a phone number:\n" + "\n".join(leaks[:20])
    # The crawl reached what matters, so that the check above is not vacuous.
    by_role = {c.role: c for c in crawls}
    for role in ("support", "supervisor", "privacy", "legal"):
        c = by_role[role]
        assert any("/portal/search" in s or s.startswith("GET /portal/") for s in c.submitted), role
        paged = any("search=" in a and "after=" in a for _, a in c.seen)
        assert paged, f"{role} never reached the second page of the phone search"
    assert any("/portal/deletions" in s for s in by_role["privacy"].submitted)
    assert any("/portal/access" in s for s in by_role["privacy"].submitted)
    assert any("/portal/holds" in s for s in by_role["legal"].submitted)
    assert any("/api/v1/access-requests/" in address for _, address in by_role["privacy"].seen)
    assert by_role["auditor"].pages > 1 and by_role["admin"].pages > 1


@pytest.mark.parametrize("role", ["support", "legal"])
async def test_the_portal_list_refuses_a_number_in_its_address(
    browser: Any, staff_factory: Any, callers: None, role: str
) -> None:
    b = browser()
    await b.login(await staff_factory(role))
    for written in written_forms(CALLERS[0]):
        resp = await b.get("/portal/?" + urlencode({"phone": written}))
        assert resp.status == 400, written


async def test_the_api_refuses_a_number_in_a_query_and_takes_it_in_a_body(portal: Any, callers: None) -> None:
    async with portal.app[db_key].acquire() as conn:
        _, secret = await tokens.create(conn, tenant="acme", name="t", scopes=["recordings:read"])
    auth = {"Authorization": f"Bearer {secret}"}
    for written in written_forms(CALLERS[1]):
        resp = await portal.get("/api/v1/recordings", params={"phone": written}, headers=auth)
        assert resp.status == 400, written
        error = (await resp.json())["error"]
        assert error["code"] == "personal_data_in_url"
        assert "POST /api/v1/recordings/search" in error["message"]
    search = {"phone": written_forms(CALLERS[0])[1], "limit": 200}
    resp = await portal.post("/api/v1/recordings/search", json=search, headers=auth)
    assert resp.status == 200
    assert len((await resp.json())["items"]) == 1 + 55
