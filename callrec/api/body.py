"""Reading JSON request bodies with clear 400s."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from callrec.errors import BadRequest, PayloadTooLarge

MAX_JSON_BYTES = 1024 * 1024
# No request body callrec takes is nested more than a few levels; deeper is refused.
MAX_DEPTH = 32


def clean_text(value: str) -> bool:
    """PostgreSQL text cannot hold NUL, and lone surrogates are not UTF-8: both are refused early."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_strings(value: Any) -> None:
    """Refuse NUL and invalid UTF-8 anywhere in a parsed body, and nesting deeper than
    :data:`MAX_DEPTH`. Iterative, so that no body can exhaust the interpreter's stack."""
    stack: list[tuple[Any, str, int]] = [(value, "body", 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BadRequest(f"the body is nested more than {MAX_DEPTH} levels deep", code="invalid_body")
        if isinstance(item, str):
            if not clean_text(item):
                raise BadRequest(
                    f"{path} holds characters that are not allowed (NUL or invalid UTF-8)",
                    code="invalid_characters",
                )
        elif isinstance(item, dict):
            for key, child in item.items():
                stack.append((key, path, depth + 1))
                stack.append((child, f"{path}.{key}", depth + 1))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{index}]", depth + 1) for index, child in enumerate(item))


def parse_time(raw: str, name: str, *, default_utc: bool = False) -> datetime:
    """An ISO 8601 time with a UTC offset (or UTC assumed), within the years PostgreSQL stores."""
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise BadRequest(
            f"{name} must be an ISO 8601 time with a UTC offset", code="invalid_parameter"
        ) from None
    if parsed.tzinfo is None:
        if not default_utc:
            raise BadRequest(f"{name} must carry a UTC offset", code="invalid_parameter")
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise BadRequest(f"{name} is out of range", code="invalid_parameter") from None


async def read_body(request: web.Request, limit: int, too_large: str) -> bytes:
    """The whole body, up to ``limit`` bytes (413 with ``too_large`` past it, before reading when
    Content-Length says so). Reads until the end: one ``content.read(n)`` returns only what has
    arrived so far, and a body sent in pieces would be checked on its first piece."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(too_large)
    body = bytearray()
    async for chunk in request.content.iter_chunked(65536):
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(too_large)
    return bytes(body)


async def json_object(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_JSON_BYTES:
        raise BadRequest("the body is over 1 MiB", code="payload_too_large", status=413)
    try:
        body = await request.json()
    except RecursionError:
        # The json module recurses once per level of nesting: a body of a hundred thousand "["
        # exhausts the stack before anything could refuse it as too deep.
        raise BadRequest(
            f"the body is nested more than {MAX_DEPTH} levels deep", code="invalid_body"
        ) from None
    except ValueError:
        raise BadRequest("the body must be a JSON object", code="invalid_body") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_body")
    _check_strings(body)
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
