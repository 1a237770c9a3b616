"""``/api/v1/access-requests``: a data subject's recordings, as a ZIP of the decrypted audio and a
metadata file, behind a short-lived link (GDPR Art. 15 access, Art. 20 portability).

The link is the capability: it carries a random token whose hash alone is stored, works for an hour,
and every download is audited. The ZIP is built in a private spool file and removed once sent.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import uuid
import zipfile
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from callrec import rights
from callrec.api.auth import actor, authenticate
from callrec.api.body import json_object
from callrec.api.deletions import parse_subject
from callrec.api.recordings import recording_json
from callrec.appkeys import config_key, db_key, keys_key, store_key
from callrec.crypto import envelope
from callrec.db import access, audit, recordings
from callrec.errors import BadRequest, NotFound
from callrec.ingest.webhooks import spool_dir


async def create_access_request(request: web.Request) -> web.Response:
    token = await authenticate(request, "access:write")
    body = await json_object(request)
    unknown = sorted(set(body) - {"subject"})
    if unknown:
        raise BadRequest(f"unknown keys: {', '.join(unknown)}", code="invalid_body")
    subject = await parse_subject(request, token.tenant, body.get("subject"))
    async with request.app[db_key].acquire() as conn, conn.transaction():
        grant = await rights.grant_access(
            conn, tenant=token.tenant, subject=subject, actor=actor(token), via="api"
        )
    return web.json_response(
        {
            "id": str(grant.request.id),
            "recordings": grant.recordings,
            "download_url": request.app[config_key].public_base_url + grant.download_path(),
            "expires_at": grant.request.expires_at.isoformat(),
        },
        status=201,
    )


async def download(request: web.Request) -> web.StreamResponse:
    try:
        request_id = uuid.UUID(request.match_info["id"])
    except ValueError:
        raise NotFound("no such access request") from None
    secret = request.query.get("token", "")
    async with request.app[db_key].acquire() as conn, conn.transaction():
        grant = await access.for_download(conn, request_id=request_id, token_hash=rights.token_hash(secret))
        if grant is None:
            raise NotFound("no such access request, or the link has expired", code="link_invalid")
        found = [
            rec
            for rid in grant.recording_ids
            if (rec := await recordings.get(conn, tenant=grant.tenant, recording_id=rid)) is not None
            and rec.wrapped_key is not None
        ]
        await audit.record(
            conn,
            tenant=grant.tenant,
            actor=f"access-link:{grant.id}",
            action=audit.AuditAction.ACCESS_DOWNLOADED,
            details={"request_id": str(grant.id), "recording_ids": [str(r.id) for r in found]},
        )
    config = request.app[config_key]
    kek = await request.app[keys_key].kek(grant.tenant)
    store = request.app[store_key]
    with tempfile.NamedTemporaryFile(dir=spool_dir(config), prefix="access-", suffix=".zip") as out:
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
            manifest: list[dict[str, Any]] = []
            for rec in found:
                assert rec.wrapped_key is not None and rec.object_key is not None
                handle = await asyncio.to_thread(
                    envelope.unwrap_key, rec.wrapped_key, kek, tenant=rec.tenant, recording_id=str(rec.id)
                )
                reader = await store.open_reader(rec.object_key, version_id=rec.object_version)
                name = f"recordings/{rec.id}.{rec.format or 'bin'}"
                await asyncio.to_thread(_add_decrypted, archive, name, reader, handle, rec)
                manifest.append({**recording_json(rec), "file": name})
            archive.writestr(
                "metadata.json",
                json.dumps({"generated_at": datetime.now(UTC).isoformat(), "recordings": manifest}, indent=2),
            )
        out.flush()
        size = out.tell()
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/zip",
                "Content-Disposition": f'attachment; filename="recordings-{grant.id}.zip"',
                "Cache-Control": "no-store",
            }
        )
        response.content_length = size
        await response.prepare(request)
        out.seek(0)
        while chunk := await asyncio.to_thread(out.read, 1 << 20):
            await response.write(chunk)
        await response.write_eof()
        return response


def _add_decrypted(
    archive: zipfile.ZipFile, name: str, reader: Any, handle: Any, rec: recordings.Recording
) -> None:
    try:
        plain = envelope.decrypt_stream(reader, handle, tenant=rec.tenant, recording_id=str(rec.id))
        with archive.open(name, "w") as entry:
            while chunk := plain.read(envelope.CHUNK_SIZE):
                entry.write(chunk)
    finally:
        reader.close()
