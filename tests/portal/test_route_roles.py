"""One test: every portal route (read from the router, so a new route cannot be forgotten)
against every role, GET and POST, with the status each role must get."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest

from callrec.portal.accounts import ROLES

RECORDING_ROLES = {"support", "supervisor", "privacy", "legal"}
# route (method, path template) -> roles that may use it; the public and pre-MFA routes are
# checked separately (they work for everyone).
EXPECTED: dict[tuple[str, str], set[str]] = {
    ("GET", "/portal/"): RECORDING_ROLES,
    ("POST", "/portal/search"): RECORDING_ROLES,
    ("GET", "/portal/recordings/{id}"): RECORDING_ROLES,
    ("POST", "/portal/recordings/{id}/reason"): RECORDING_ROLES,
    ("GET", "/portal/recordings/{id}/audio"): RECORDING_ROLES,
    ("GET", "/portal/holds"): {"legal"},
    ("POST", "/portal/holds"): {"legal"},
    ("POST", "/portal/holds/{id}/release"): {"legal"},
    ("GET", "/portal/deletions"): {"privacy"},
    ("POST", "/portal/deletions"): {"privacy"},
    ("GET", "/portal/deletions/{id}"): {"privacy"},
    ("GET", "/portal/quarantine"): {"privacy"},
    ("POST", "/portal/quarantine/{id}"): {"privacy"},
    ("GET", "/portal/audit"): {"auditor"},
    ("GET", "/portal/audit.csv"): {"auditor"},
    ("GET", "/portal/jobs"): {"admin"},
    ("POST", "/portal/jobs/{id}/retry"): {"admin"},
    ("GET", "/portal/access"): {"privacy"},
    ("POST", "/portal/access"): {"privacy"},
    ("POST", "/portal/recordings/{id}/restriction"): {"privacy"},
    ("GET", "/portal/admin"): {"admin"},
    ("POST", "/portal/admin/users"): {"admin"},
    ("POST", "/portal/admin/users/{id}/disable"): {"admin"},
    ("POST", "/portal/admin/users/{id}/enable"): {"admin"},
    ("POST", "/portal/admin/users/{id}/unlock"): {"admin"},
    ("POST", "/portal/admin/users/{id}/reset-mfa"): {"admin"},
    ("POST", "/portal/admin/users/{id}/unlink-sso"): {"admin"},
    ("POST", "/portal/admin/tokens"): {"admin"},
    ("POST", "/portal/admin/tokens/{id}/revoke"): {"admin"},
}
OPEN = {
    ("GET", "/portal/login"),
    ("POST", "/portal/login"),
    ("GET", "/portal/mfa"),
    ("POST", "/portal/mfa"),
    ("POST", "/portal/logout"),
    ("GET", "/portal"),
    ("GET", "/portal/static/"),
    ("GET", "/portal/sso/callback"),
    ("GET", "/portal/sso/{tenant}"),
}


def portal_routes(app: Any) -> set[tuple[str, str]]:
    found = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter") or info.get("prefix", "")
        if path.startswith("/portal") and route.method in ("GET", "POST"):
            found.add((route.method, path.rstrip("/") + "/" if path == "/portal/static" else path))
    return found


def test_every_portal_route_has_an_expectation(portal: Any) -> None:
    routes = portal_routes(portal.app)
    assert routes - OPEN == set(EXPECTED), "a portal route has no role expectation here (or one is stale)"


@pytest.mark.parametrize("role", ROLES)
async def test_every_route_against_every_role(
    browser: Any, staff_factory: Any, portal: Any, role: str
) -> None:
    who = await staff_factory(role)
    b = browser()
    await b.login(who)
    home = await b.get("/portal/mfa")  # a logged-in session is redirected away; take the token from any page
    page = await b.get(
        "/portal/" if role in RECORDING_ROLES else "/portal/audit" if role == "auditor" else "/portal/admin"
    )
    token = re.search(r'name="csrf_token" value="([^"]*)"', await page.text())
    assert home.status == 303 and token
    for (method, template), allowed in sorted(EXPECTED.items()):
        path = template.replace("{id}", str(uuid.uuid4()) if "jobs" not in template else "999999")
        if method == "GET":
            resp = await b.get(path)
        else:
            resp = await b.post(path, {"csrf_token": token.group(1)})
        if role in allowed:
            # Allowed: the page answers (200), or the made-up id / empty form is refused on its merits.
            assert resp.status in (200, 303, 400, 404), (role, method, path, resp.status)
        else:
            assert resp.status == 403, (role, method, path, resp.status)
