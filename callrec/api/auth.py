"""Bearer-token authentication for ``/api/v1``. The token fixes the tenant: a request can
never name another tenant's data, so tenant isolation does not depend on each handler."""

from __future__ import annotations

from aiohttp import web

from callrec.appkeys import db_key
from callrec.db import tokens
from callrec.errors import CallrecError, Unauthorized

# Every scope a token can carry. Later features add theirs here so `token create` can check them.
SCOPES = {
    "recordings:read": "list and read recording metadata",
    "recordings:listen": "stream decrypted recording audio (audited)",
    "quarantine:review": "see, play, approve and reject quarantined recordings (the privacy role)",
    "holds:read": "read legal holds and what they cover",
    "holds:write": "place and release legal holds (the legal role)",
    "deletions:read": "read deletion requests, their outcomes and certificates",
    "deletions:write": "make deletion requests (GDPR Art. 17, CCPA)",
    "restrictions:write": "restrict and unrestrict recordings (GDPR Art. 18)",
    "restricted:read": "open restricted recordings (the privacy and legal roles)",
    "access:write": "make subject access requests (GDPR Art. 15/20): a ZIP of a subject's recordings",
    "jobs:admin": "list and retry dead ingest jobs",
}


class InsufficientScope(CallrecError):
    status = 403
    code = "insufficient_scope"


async def authenticate(request: web.Request, scope: str) -> tokens.ApiToken:
    header = request.headers.get("Authorization", "")
    kind, _, value = header.partition(" ")
    if kind.lower() != "bearer" or not value.strip():
        raise Unauthorized("send an API token as 'Authorization: Bearer <token>'")
    async with request.app[db_key].acquire() as conn:
        token = await tokens.lookup(conn, value.strip())
    if token is None:
        raise Unauthorized("the API token is unknown or revoked", code="invalid_token")
    if scope not in token.scopes:
        raise InsufficientScope(f"this token lacks the {scope!r} scope")
    return token


def actor(token: tokens.ApiToken) -> str:
    return f"token:{token.id}"
