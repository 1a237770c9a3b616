"""Per-tenant key services for the app: the tenant's key-encryption key (from the configured
provider) and the tenant's phone-lookup key (random, stored in the database wrapped by the KEK).

Phone numbers are sealed under the KEK with the recording id as context, and found again only
through ``phone_hash`` (HMAC-SHA256 under the lookup key), so neither a database dump nor the
audit log reveals them.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from callrec.crypto import envelope
from callrec.crypto.keys import KeyProvider
from callrec.db import Conn

LOOKUP_PURPOSE = "phone-lookup"


class TenantKeys:
    def __init__(self, provider: KeyProvider) -> None:
        self.provider = provider
        self._lookup: dict[str, bytes] = {}

    async def kek(self, tenant: str) -> Any:
        return await asyncio.to_thread(self.provider.kek, tenant)

    async def lookup_key(self, conn: Conn, tenant: str) -> bytes:
        cached = self._lookup.get(tenant)
        if cached is not None:
            return cached
        kek = await self.kek(tenant)
        context = f"callrec:tenant-key:{tenant}:{LOOKUP_PURPOSE}"
        wrapped = await conn.fetchval(
            "SELECT wrapped FROM tenant_keys WHERE tenant = $1 AND purpose = $2", tenant, LOOKUP_PURPOSE
        )
        if wrapped is None:
            fresh = await asyncio.to_thread(envelope.seal, kek, os.urandom(32), context=context)
            await conn.execute(
                """INSERT INTO tenant_keys (tenant, purpose, wrapped) VALUES ($1, $2, $3)
                   ON CONFLICT (tenant, purpose) DO NOTHING""",
                tenant,
                LOOKUP_PURPOSE,
                fresh,
            )
            # Another process may have won the race: always use what the table holds.
            wrapped = await conn.fetchval(
                "SELECT wrapped FROM tenant_keys WHERE tenant = $1 AND purpose = $2", tenant, LOOKUP_PURPOSE
            )
        key = await asyncio.to_thread(envelope.open_sealed, kek, bytes(wrapped), context=context)
        self._lookup[tenant] = key
        return key

    async def phone_hash(self, conn: Conn, tenant: str, e164: str) -> bytes:
        return envelope.keyed_hash(await self.lookup_key(conn, tenant), e164)

    async def seal_phone(self, tenant: str, recording_id: str, role: str, value: str) -> bytes:
        kek = await self.kek(tenant)
        return await asyncio.to_thread(
            envelope.seal, kek, value.encode(), context=f"callrec:phone:{tenant}:{recording_id}:{role}"
        )

    async def open_phone(self, tenant: str, recording_id: str, role: str, sealed: bytes) -> str:
        kek = await self.kek(tenant)
        plain = await asyncio.to_thread(
            envelope.open_sealed, kek, sealed, context=f"callrec:phone:{tenant}:{recording_id}:{role}"
        )
        return plain.decode()
