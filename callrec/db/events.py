"""Provider events that are not recordings (e.g. Twilio's RecordingStatus absent/failed)."""

from __future__ import annotations

import json
from typing import Any

from callrec.db import Conn


async def record_provider_event(
    conn: Conn,
    *,
    tenant: str,
    provider: str,
    kind: str,
    call_id: str | None,
    provider_recording_id: str,
    details: dict[str, Any],
) -> bool:
    """Insert once per (tenant, provider, kind, recording); False for a repeat."""
    created = await conn.fetchval(
        """INSERT INTO provider_events
               (tenant, provider, kind, call_id, provider_recording_id, details)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (tenant, provider, kind, provider_recording_id) DO NOTHING
           RETURNING id""",
        tenant,
        provider,
        kind,
        call_id,
        provider_recording_id,
        json.dumps(details),
    )
    return created is not None
