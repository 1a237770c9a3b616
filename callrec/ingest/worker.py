"""The ingest worker: claims jobs and turns them into stored, encrypted recordings.

For a Twilio recording: read the call's parties from Twilio's Calls resource, download the
media from an allow-listed host, check it with pydub, encrypt it under a fresh per-recording
key, store the ciphertext, then commit the metadata row, its audit entry and the job's
completion in one transaction. For a PBX upload the ciphertext is already stored by the
webhook; the worker decrypts it to check the audio and commits the same way.

A failure retries with backoff; audio that cannot be decoded goes straight to ``dead``
(retrying cannot fix it) and the stored ciphertext, if any, is removed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import phonenumbers
from aiohttp import web

from callrec import audio
from callrec.appkeys import config_key, db_key, keys_key, store_key
from callrec.config import TenantConfig
from callrec.crypto import envelope
from callrec.db import audit, jobs, recordings
from callrec.errors import CallrecError
from callrec.ingest.media import MediaError, check_media_url, download
from callrec.ingest.tags import Tags
from callrec.ingest.webhooks import INGEST_TWILIO, INGEST_UPLOAD, seal_and_store, spool_dir
from callrec.metrics import metrics_key
from callrec.providers import twilio

log = logging.getLogger(__name__)

DELETE_PROVIDER_COPY = "provider.delete_copy"
WORKER_ACTOR = "system:worker"
IDLE_POLL_S = 5.0


class PermanentError(Exception):
    """Retrying cannot help: the job goes to ``dead`` at once with this message."""


class LeaseLost(Exception):
    """Another worker took the job over (our lease expired); our work is discarded."""


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(self, app: web.Application, http: aiohttp.ClientSession) -> None:
        self.app = app
        self.config = app[config_key]
        self.pool: asyncpg.Pool = app[db_key]
        self.http = http
        self.id = _worker_id()
        self._wake = asyncio.Event()
        self._handlers: dict[str, Callable[[jobs.Job, TenantConfig], Awaitable[dict[str, Any]]]] = {
            INGEST_TWILIO: self._ingest_twilio,
            INGEST_UPLOAD: self._ingest_upload,
            DELETE_PROVIDER_COPY: self._delete_provider_copy,
        }

    # --- the loop -------------------------------------------------------------------------

    async def run(self, concurrency: int) -> None:
        """Run until cancelled: LISTEN for new jobs, and poll for retries and expired leases."""

        def wake(*_: object) -> None:
            self._wake.set()

        async with self.pool.acquire() as listener:
            await listener.add_listener(jobs.NOTIFY_CHANNEL, wake)
            try:
                await asyncio.gather(*(self._loop() for _ in range(concurrency)))
            finally:
                with contextlib.suppress(Exception):
                    await listener.remove_listener(jobs.NOTIFY_CHANNEL, wake)

    async def _loop(self) -> None:
        while True:
            try:
                worked = await self.run_once()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                log.warning("job queue unreachable; retrying shortly", exc_info=True)
                worked = False
            if worked:
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), IDLE_POLL_S)

    async def run_once(self) -> bool:
        """Claim and process one job; False when there was nothing to do."""
        async with self.pool.acquire() as conn:
            job = await jobs.claim(conn, worker_id=self.id, lease=self.config.ingest.lease)
        if job is None:
            return False
        await self.process(job)
        return True

    async def process(self, job: jobs.Job) -> None:
        log.info("job %s (%s) attempt %s", job.id, job.kind, job.attempts)
        metrics = self.app[metrics_key]
        started = time.perf_counter()
        outcome = "done"
        try:
            if job.attempts > job.max_attempts:
                raise PermanentError("the job's worker stopped (lease expired) on every attempt")
            tenant = self.config.tenant(job.tenant)
            if tenant is None:
                raise PermanentError(f"tenant {job.tenant!r} is no longer configured")
            handler = self._handlers.get(job.kind)
            if handler is None:
                raise PermanentError(f"unknown job kind {job.kind!r}")
            await handler(job, tenant)
        except LeaseLost:
            outcome = "lease_lost"
            log.warning("job %s: lease lost to another worker; discarding this attempt", job.id)
        except audio.AudioError as exc:
            # A truncated file may be a download cut short: fetch it again before giving up.
            outcome = await self._failed(job, _describe(exc), permanent=exc.code != "truncated")
        except PermanentError as exc:
            outcome = await self._failed(job, _describe(exc), permanent=True)
        except MediaError as exc:
            outcome = await self._failed(job, _describe(exc), permanent=exc.permanent)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("job %s failed: %s", job.id, exc.__class__.__name__, exc_info=True)
            outcome = await self._failed(job, _describe(exc), permanent=False)
        finally:
            metrics.job_seconds.labels(job.kind).observe(time.perf_counter() - started)
        metrics.jobs_finished.labels(job.kind, outcome).inc()

    async def _failed(self, job: jobs.Job, error: str, *, permanent: bool) -> str:
        """Record the failure; returns "retry" or "dead"."""
        async with self.pool.acquire() as conn, conn.transaction():
            state = await jobs.fail(
                conn,
                job,
                worker_id=self.id,
                error=error,
                retry_base=self.config.ingest.retry_base,
                permanent=permanent,
            )
            if state == "dead":
                await audit.record(
                    conn,
                    tenant=job.tenant,
                    actor=WORKER_ACTOR,
                    action=audit.AuditAction.INGEST_FAILED,
                    recording_id=_uuid_or_none(job.payload.get("recording_id")),
                    details={"job_id": job.id, "kind": job.kind, "attempts": job.attempts, "error": error},
                )
        if state == "dead" and job.kind == INGEST_UPLOAD:
            # The webhook stored the ciphertext; a recording that will never exist keeps nothing.
            with contextlib.suppress(Exception):
                await self.app[store_key].delete_all_versions(job.payload["object_key"])
        log.info("job %s -> %s: %s", job.id, state, error)
        return "dead" if state == "dead" else "retry"

    # --- handlers -------------------------------------------------------------------------

    async def _ingest_twilio(self, job: jobs.Job, tenant: TenantConfig) -> dict[str, Any]:
        p = job.payload
        recording_url = check_media_url(p["recording_url"], self.config.ingest.media_hosts)
        auth = _twilio_auth(tenant)
        timeout = aiohttp.ClientTimeout(
            total=self.config.ingest.fetch_timeout.total_seconds(), sock_connect=15
        )
        call = await self._get_json(
            twilio.call_url(recording_url, p["account_sid"], p["call_sid"]), auth, timeout
        )

        rid = p["recording_id"]
        keys = self.app[keys_key]
        sealed: dict[str, bytes] = {}
        hashes: dict[str, bytes] = {}
        async with self.pool.acquire() as conn:
            for role in ("from", "to"):
                value = call.get(role)
                if isinstance(value, str) and value:
                    sealed[role] = await keys.seal_phone(tenant.name, rid, role, value)
                    e164 = _e164_or_none(value)
                    if e164:
                        hashes[role] = await keys.phone_hash(conn, tenant.name, e164)
        media = await download(
            self.http,
            recording_url,
            headers=auth,
            max_bytes=self.config.ingest.max_media_mb * 1024 * 1024,
            timeout=timeout,
            directory=spool_dir(self.config),
        )
        try:
            info = await asyncio.to_thread(audio.probe_file, media.path)
            stored = await seal_and_store(
                self.app, tenant=tenant.name, recording_id=p["recording_id"], source=media.path
            )
        finally:
            media.path.unlink(missing_ok=True)

        started = _twilio_time(call.get("start_time")) or _twilio_time(p.get("start_time"))
        rec = self._recording(
            job,
            tenant,
            info=info,
            stored=stored,
            provider="twilio",
            call_id=p["call_sid"],
            provider_recording_id=p["recording_sid"],
            started_at=started,
            sha256=media.sha256,
            size_bytes=media.size,
            direction=call.get("direction"),
            sealed=sealed,
            hashes=hashes,
            source={"recording_source": p.get("source"), "track": p.get("track")},
        )
        await self._commit(job, tenant, rec, stored["object_key"])
        return {"recording_id": rid}

    async def _ingest_upload(self, job: jobs.Job, tenant: TenantConfig) -> dict[str, Any]:
        p = job.payload
        rid = p["recording_id"]
        store = self.app[store_key]
        kek = await self.app[keys_key].kek(tenant.name)
        handle = await asyncio.to_thread(
            envelope.unwrap_key, base64.b64decode(p["wrapped_key"]), kek, tenant=tenant.name, recording_id=rid
        )
        reader = await store.open_reader(p["object_key"], version_id=p["object_version"])
        with tempfile.NamedTemporaryFile(dir=spool_dir(self.config), prefix="check-", delete=True) as plain:

            def decrypt() -> str:
                import hashlib

                digest = hashlib.sha256()
                try:
                    stream = envelope.decrypt_stream(reader, handle, tenant=tenant.name, recording_id=rid)
                    while chunk := stream.read(envelope.CHUNK_SIZE):
                        digest.update(chunk)
                        plain.write(chunk)
                finally:
                    reader.close()
                plain.flush()
                return digest.hexdigest()

            digest = await asyncio.to_thread(decrypt)
            if digest != p["sha256"]:
                raise PermanentError("the stored upload does not match the SHA-256 taken at receipt")
            info = await asyncio.to_thread(audio.probe_file, Path(plain.name))
        rec = self._recording(
            job,
            tenant,
            info=info,
            stored=p,
            provider="upload",
            call_id=p["call_id"],
            provider_recording_id=p["provider_recording_id"],
            started_at=datetime.fromisoformat(p["started_at"]) if p.get("started_at") else None,
            sha256=p["sha256"],
            size_bytes=p["size_bytes"],
            direction=p.get("direction"),
            sealed={k: base64.b64decode(v) for k, v in p["sealed_phones"].items()},
            hashes={k: base64.b64decode(v) for k, v in p["phone_hashes"].items()},
            source={},
        )
        await self._commit(job, tenant, rec, None)
        return {"recording_id": rid}

    async def _delete_provider_copy(self, job: jobs.Job, tenant: TenantConfig) -> dict[str, Any]:
        p = job.payload
        url = twilio.recording_resource_url(
            check_media_url(p["recording_url"], self.config.ingest.media_hosts),
            p["account_sid"],
            p["recording_sid"],
        )
        auth = _twilio_auth(tenant)
        async with self.http.delete(
            url, headers=auth, timeout=aiohttp.ClientTimeout(total=30), allow_redirects=False
        ) as resp:
            if resp.status not in (200, 204, 404):
                raise MediaError(f"deleting the provider's copy failed with HTTP {resp.status}")
            gone_already = resp.status == 404
        async with self.pool.acquire() as conn, conn.transaction():
            if not await jobs.complete(conn, job.id, worker_id=self.id):
                raise LeaseLost
            await audit.record(
                conn,
                tenant=tenant.name,
                actor=WORKER_ACTOR,
                action=audit.AuditAction.PROVIDER_COPY_DELETED,
                recording_id=_uuid_or_none(p.get("recording_id")),
                details={
                    "provider": "twilio",
                    "provider_recording_id": p["recording_sid"],
                    "already_gone": gone_already,
                },
            )
        return {}

    # --- shared steps ---------------------------------------------------------------------

    async def _get_json(
        self, url: str, auth: dict[str, str], timeout: aiohttp.ClientTimeout
    ) -> dict[str, Any]:
        check_media_url(url, self.config.ingest.media_hosts)
        async with self.http.get(url, headers=auth, timeout=timeout, allow_redirects=False) as resp:
            if resp.status != 200:
                raise MediaError(f"the provider's Calls resource answered HTTP {resp.status}")
            body = await resp.json(content_type=None)
        if not isinstance(body, dict):
            raise MediaError("the provider's Calls resource did not return a JSON object")
        return body

    def _recording(
        self,
        job: jobs.Job,
        tenant: TenantConfig,
        *,
        info: audio.AudioInfo,
        stored: dict[str, Any],
        provider: str,
        call_id: str,
        provider_recording_id: str,
        started_at: datetime | None,
        sha256: str,
        size_bytes: int,
        direction: str | None,
        sealed: dict[str, bytes],
        hashes: dict[str, bytes],
        source: dict[str, Any],
    ) -> recordings.Recording:
        tags = Tags.from_payload(job.payload.get("tags") or {})
        now = datetime.now(UTC)
        return recordings.Recording(
            id=uuid.UUID(job.payload["recording_id"]),
            tenant=tenant.name,
            provider=provider,
            call_id=call_id,
            provider_recording_id=provider_recording_id,
            state="stored",
            started_at=started_at,
            stored_at=now,
            expires_at=now + tenant.retention,
            duration_ms=info.duration_ms,
            channels=info.channels,
            sample_rate=info.sample_rate,
            format=info.format,
            codec=info.codec,
            size_bytes=size_bytes,
            sha256=sha256,
            object_key=stored["object_key"],
            object_version=stored["object_version"],
            ciphertext_bytes=stored["ciphertext_bytes"],
            wrapped_key=base64.b64decode(stored["wrapped_key"]),
            direction=direction
            if direction in ("inbound", "outbound-api", "outbound-dial", "outbound")
            else None,
            from_sealed=sealed.get("from"),
            to_sealed=sealed.get("to"),
            from_hash=hashes.get("from"),
            to_hash=hashes.get("to"),
            announcement=tags.announcement,
            consent=tags.consent,
            agent=tags.agent,
            tags={},
            source={k: v for k, v in source.items() if v},
        )

    async def _commit(
        self, job: jobs.Job, tenant: TenantConfig, rec: recordings.Recording, discard_on_failure: str | None
    ) -> None:
        """Row + audit entry + job completion (+ follow-up jobs) in one transaction."""
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                if not await jobs.complete(
                    conn, job.id, worker_id=self.id, result={"recording_id": str(rec.id)}
                ):
                    raise LeaseLost
                if await recordings.insert(conn, rec):
                    await audit.record(
                        conn,
                        tenant=tenant.name,
                        actor=WORKER_ACTOR,
                        action=audit.AuditAction.RECORDING_INGESTED,
                        recording_id=rec.id,
                        details={
                            "provider": rec.provider,
                            "call_id": rec.call_id,
                            "provider_recording_id": rec.provider_recording_id,
                            "sha256": rec.sha256,
                            "size_bytes": rec.size_bytes,
                            "duration_ms": rec.duration_ms,
                            "expires_at": rec.expires_at.isoformat(),
                            "job_id": job.id,
                        },
                    )
                    if rec.provider == "twilio" and tenant.delete_provider_copy:
                        await jobs.enqueue(
                            conn,
                            tenant=tenant.name,
                            kind=DELETE_PROVIDER_COPY,
                            dedupe_key=rec.provider_recording_id,
                            payload={
                                k: job.payload[k]
                                for k in ("recording_id", "account_sid", "recording_sid", "recording_url")
                            },
                            max_attempts=self.config.ingest.max_attempts,
                        )
        except BaseException:
            if discard_on_failure:
                with contextlib.suppress(Exception):
                    await self.app[store_key].delete_all_versions(discard_on_failure)
            raise
        self.app[metrics_key].ingested_bytes.inc(rec.size_bytes)


def _twilio_auth(tenant: TenantConfig) -> dict[str, str]:
    """Twilio's REST API takes HTTP Basic auth with the account SID and auth token."""
    return {"Authorization": aiohttp.encode_basic_auth(tenant.twilio_account_sid, tenant.twilio_auth_token)}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, audio.AudioError):
        return f"audio {exc.code}: {exc}"
    if isinstance(exc, CallrecError):
        return f"{exc.code}: {exc.message}"
    text = str(exc)
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def _uuid_or_none(value: object) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None


def _e164_or_none(value: str) -> str | None:
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _twilio_time(value: object) -> datetime | None:
    """Twilio's REST times are RFC 2822 ("Tue, 10 Aug 2010 08:02:17 +0000")."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
