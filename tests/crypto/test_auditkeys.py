"""The audit keys: wrapped by the deployment's audit KEK (here AWS KMS, through moto over HTTP),
unwrapped once when the pool opens, and never fetched again while entries are written."""

from __future__ import annotations

from typing import Any

import asyncpg
import boto3
import pytest

from callrec.crypto.auditkeys import AUDIT_KEK, AuditKeyError, AuditKeyring
from callrec.crypto.keys import AwsKmsKeyProvider, LocalKeyProvider
from callrec.db import audit
from callrec.db.pool import create_pool


async def write(pool: asyncpg.Pool, n: int) -> None:
    async with pool.acquire() as conn, conn.transaction():
        for i in range(n):
            await audit.record(
                conn, tenant="acme", actor="t", action=audit.AuditAction.RECORDING_VIEWED, details={"i": i}
            )


async def test_kms_is_called_when_the_pool_opens_and_never_while_entries_are_written(
    config: Any, moto_endpoint: str
) -> None:
    kms = boto3.client("kms", endpoint_url=moto_endpoint, region_name="us-east-1")
    arn = kms.create_key(Description="callrec audit KEK")["KeyMetadata"]["Arn"]
    calls: list[str] = []
    kms.meta.events.register("before-call.kms", lambda **kw: calls.append(kw["event_name"]))
    pool = await create_pool(config, key_provider=AwsKmsKeyProvider(key_arn=arn, client=kms))
    try:
        assert calls and all(c.startswith("before-call.kms.") for c in calls)  # the first key wrapped
        opened = len(calls)
        await write(pool, 25)
        async with pool.acquire() as conn:
            assert (await audit.verify(conn)).ok
        assert len(calls) == opened  # nothing under the chain lock, nothing to verify
    finally:
        await pool.close()

    calls.clear()
    again = await create_pool(config, key_provider=AwsKmsKeyProvider(key_arn=arn, client=kms))
    try:
        assert calls == ["before-call.kms.Decrypt"]  # a process starting later: one unwrap
        await write(again, 5)
        async with again.acquire() as conn:
            assert (await audit.verify(conn)).ok
        assert calls == ["before-call.kms.Decrypt"]
    finally:
        await again.close()


async def test_the_wrapped_keys_open_only_under_this_deployments_audit_kek(
    db: asyncpg.Pool, config: Any, tmp_path: Any
) -> None:
    async with db.acquire() as conn:
        stored = await conn.fetchval("SELECT wrapped FROM audit_keys WHERE key_id = 1")
        assert len(stored) > 32  # ciphertext, not the key
        other = LocalKeyProvider(tmp_path / "another-keyring.json")
        other.ensure_tenant(AUDIT_KEK)
        with pytest.raises(AuditKeyError, match="none of the 1 audit key"):
            await AuditKeyring.open(conn, other, create=True)
        # Without create, a database without keys yields none rather than making one.
        await conn.execute("DELETE FROM audit_keys")
        assert await AuditKeyring.open(conn, other, create=False) is None
