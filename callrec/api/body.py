"""Reading JSON request bodies with clear 400s."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from callrec.errors import BadRequest

MAX_JSON_BYTES = 1024 * 1024


async def json_object(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_JSON_BYTES:
        raise BadRequest("the body is over 1 MiB", code="payload_too_large", status=413)
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("the body must be a JSON object", code="invalid_body") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_body")
    return body


def required_str(body: dict[str, Any], name: str, *, max_length: int) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip() or len(value) > max_length:
        raise BadRequest(f"{name} is required: 1 to {max_length} characters", code="invalid_body")
    return value.strip()


def optional_str(body: dict[str, Any], name: str, *, max_length: int) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > max_length:
        raise BadRequest(f"{name} must be 1 to {max_length} characters", code="invalid_body")
    return value.strip()
