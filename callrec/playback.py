"""Streaming a recording's decrypted audio, with HTTP Range, and an audit entry for every listen.

Shared by the API (bearer tokens) and the portal (staff sessions): the caller has already decided
that this actor may listen; here the listen is put on the record before a single byte leaves.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiohttp import web

from callrec import audio
from callrec.appkeys import db_key, keys_key, store_key
from callrec.crypto import envelope
from callrec.db import audit, recordings
from callrec.errors import NotFound, RangeNotSatisfiable

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """A single byte range (RFC 9110 §14.1.2) as inclusive (start, end); None for the whole body.

    Multiple ranges are answered with the whole body, which RFC 9110 allows.
    """
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if not match:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":  # suffix range: the last N bytes
        length = int(last)
        if length == 0:
            raise RangeNotSatisfiable("the requested range is empty")
        return max(size - length, 0), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        raise RangeNotSatisfiable(f"the recording has {size} bytes")
    return start, end


async def serve_audio(
    request: web.Request, rec: recordings.Recording, *, actor: str, details: dict[str, Any] | None = None
) -> web.StreamResponse:
    if rec.wrapped_key is None or rec.object_key is None or rec.size_bytes is None or rec.format is None:
        raise NotFound("this recording's audio no longer exists", code="audio_destroyed")
    size, wrapped_key, object_key = rec.size_bytes, rec.wrapped_key, rec.object_key
    try:
        span = parse_range(request.headers.get("Range"), size)
    except RangeNotSatisfiable:
        resp = web.json_response(
            {"error": {"code": "range_not_satisfiable", "message": f"the recording has {size} bytes"}},
            status=416,
        )
        resp.headers["Content-Range"] = f"bytes */{size}"
        return resp
    start, end = span if span else (0, size - 1)
    async with request.app[db_key].acquire() as conn, conn.transaction():
        await audit.record(
            conn,
            tenant=rec.tenant,
            actor=actor,
            action=audit.AuditAction.RECORDING_PLAYED,
            recording_id=rec.id,
            details={"range": [start, end] if span else None, **(details or {})},
        )

    kek = await request.app[keys_key].kek(rec.tenant)
    handle = await asyncio.to_thread(
        envelope.unwrap_key, wrapped_key, kek, tenant=rec.tenant, recording_id=str(rec.id)
    )
    reader = await request.app[store_key].open_reader(object_key, version_id=rec.object_version)
    try:
        plain = await asyncio.to_thread(
            envelope.decrypt_stream, reader, handle, tenant=rec.tenant, recording_id=str(rec.id)
        )
        stream = web.StreamResponse(status=206 if span else 200)
        stream.content_type = audio.content_type_for_format(rec.format)
        stream.content_length = end - start + 1
        stream.headers["Accept-Ranges"] = "bytes"
        stream.headers["Cache-Control"] = "no-store"
        if span:
            stream.headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        await stream.prepare(request)
        # Tink's stream is sequential: skip to the start of the range by decrypting past it.
        skip = start
        while skip > 0:
            chunk = await asyncio.to_thread(plain.read, min(skip, envelope.CHUNK_SIZE))
            if not chunk:
                break
            skip -= len(chunk)
        remaining = end - start + 1
        while remaining > 0:
            chunk = await asyncio.to_thread(plain.read, min(remaining, envelope.CHUNK_SIZE))
            if not chunk:
                break
            await stream.write(chunk)
            remaining -= len(chunk)
        await stream.write_eof()
        return stream
    finally:
        await asyncio.to_thread(reader.close)
