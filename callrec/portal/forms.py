"""What every logged-in portal page needs: who is asking, the template context, and form fields
read with clear messages (a BadRequest becomes the portal's error page, status 400)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from callrec.db import staff
from callrec.errors import BadRequest
from callrec.portal.sessions import session_key


def staff_user(request: web.Request) -> staff.StaffUser:
    return request[session_key].user


def actor(request: web.Request) -> str:
    """The audit actor: the account id, never the e-mail address."""
    return f"staff:{staff_user(request).id}"


def page_context(request: web.Request, **values: Any) -> dict[str, Any]:
    session = request[session_key]
    return {"session": session, "csrf_token": session.csrf_token, "now": datetime.now(UTC), **values}


def form_text(
    form: Any, name: str, *, label: str, required: bool = True, max_length: int = 500
) -> str | None:
    value = str(form.get(name, "")).strip()
    if not value:
        if required:
            raise BadRequest(f"{label} is required.")
        return None
    if len(value) > max_length:
        raise BadRequest(f"{label} is at most {max_length} characters.")
    return value


def path_uuid(request: web.Request, name: str = "id") -> uuid.UUID:
    """An id from the path; anything else is a page that does not exist."""
    try:
        return uuid.UUID(request.match_info[name])
    except ValueError:
        raise web.HTTPNotFound() from None
