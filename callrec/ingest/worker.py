"""The ingest worker: claims jobs and turns them into stored, encrypted recordings.

For a Twilio recording: read the call's parties from Twilio's Calls resource, download the
media from an allow-listed host, check it with pydub, encrypt it under a fresh per-recording
key, store the ciphertext, then commit the metadata row, its audit entry and the job's
completion in one transaction. For a PBX upload the ciphertext is already stored by the
webhook; the worker decrypts it to check the audio and commits the same way.

A failure retries with backoff; audio that cannot be decoded goes straight to ``dead``
(retrying cannot fix it) and the stored ciphertext, if any, is removed. Only a truncated file
fetched from a provider is fetched again: a download may have been cut short, while an upload's
bytes were received whole (and hashed) at the webhook and never change.

Each job runs under a short lease that one heartbeat per worker renews for all the jobs it holds
(``[ingest] lease`` and ``heartbeat``). A worker that dies leaves its jobs to the others within a
lease; a worker that finds a job no longer its own (its lease ran out and another claim took it,
or the database stayed unreachable until the lease ran out) cancels that job's handler. On
SIGTERM a worker stops claiming, lets its jobs finish within ``[ingest] shutdown_grace`` and puts
the rest back in the queue without spending their attempt.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import logging
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import phonenumbers
from aiohttp import web

from callrec import audio, erasure, faults
from callrec.appkeys import config_key, db_key, keys_key, store_key
from callrec.config import TenantConfig
from callrec.consent.announcement import Prompt, PromptError, verify_announcement
from callrec.consent.evidence import Evidence, gather
from callrec.consent.jurisdiction import ConsentLaws, Jurisdiction, classify, load_consent_laws, locate
from callrec.consent.policy import Decision, PolicyInput, Reason, decide
from callrec.consent.redaction import RedactionError, Span, merge, redact_file, spans_from_events
from callrec.crypto import envelope
from callrec.db import Conn, announcements, audit, deletions, events, holds, intents, jobs, recordings
from callrec.errors import BadRequest, CallrecError
from callrec.ingest.media import MediaError, check_media_url, download
from callrec.ingest.remote import PROVIDERS
from callrec.ingest.tags import Tags
from callrec.ingest.webhooks import (
    INGEST_PLIVO,
    INGEST_TWILIO,
    INGEST_UPLOAD,
    INGEST_VONAGE,
    discard_object,
    seal_and_store,
    sign_body,
    spool_dir,
)
from callrec.metrics import metrics_key
from callrec.retention import service

log = logging.getLogger(__name__)
DELETION_OUTCOMES = ("deleted", "withheld_legal_hold", "already_deleted")

DELETE_PROVIDER_COPY = "provider.delete_copy"
WORKER_ACTOR = "system:worker"
IDLE_POLL_S = 5.0
# After an unexpected error in a claim loop, so that a persistent one cannot spin.
LOOP_ERROR_PAUSE_S = 1.0
# After a failed lease renewal the heartbeat tries again this soon (until the lease runs out).
HEARTBEAT_RETRY_S = 1.0
# The least time a renewal is given, even when a lease is about to run out.
RENEWAL_MIN_WAIT_S = 0.5
# How long putting a job back at shutdown may take; past it the job's lease runs out by itself.
RELEASE_TIMEOUT_S = 5.0
# The job kinds whose handler fetches media from a provider: only there may a truncated file be
# a download cut short, worth fetching again.
REFETCHED_KINDS = frozenset({INGEST_TWILIO, INGEST_VONAGE, INGEST_PLIVO})

Handler = Callable[[jobs.Job, TenantConfig], Coroutine[Any, Any, None]]


class PermanentError(Exception):
    """Retrying cannot help: the job goes to ``dead`` at once with this message."""


class LeaseLost(Exception):
    """Another worker took the job over (our lease expired); our work is discarded."""


class _Released(Exception):
    """The shutdown's grace ran out before the job finished: it goes back to the queue."""


@dataclass(eq=False)
class _Held:
    """A job this worker runs: its handler's task, and when its lease runs out (on the
    ``time.monotonic`` clock) unless the heartbeat renews it."""

    job: jobs.Job
    task: asyncio.Task[None]
    expires: float
    # Why this worker cancelled the handler: "lost" (the lease) or "released" (shutdown).
    ending: str | None = None

    def end(self, why: str) -> None:
        if self.ending is None and not self.task.done():
            self.ending = why
            self.task.cancel()


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _holder(job: jobs.Job) -> str:
    """The claim this worker holds the job under (see Worker.claim)."""
    assert job.locked_by is not None, "a claimed job has a holder"
    return job.locked_by


class Worker:
    def __init__(self, app: web.Application, http: aiohttp.ClientSession) -> None:
        self.app = app
        self.config = app[config_key]
        self.pool: asyncpg.Pool = app[db_key]
        self.http = http
        self.id = _worker_id()
        self._claims = itertools.count(1)
        self._wake = asyncio.Event()
        self._held: dict[str, _Held] = {}  # by claim id
        self._stopping = False
        self._grace_timer: asyncio.TimerHandle | None = None
        self._stop_deadline = 0.0  # loop time at which the shutdown's grace runs out
        self._task: asyncio.Task[None] | None = None
        self._handlers: dict[str, Handler] = {
            INGEST_TWILIO: self._ingest_remote,
            INGEST_VONAGE: self._ingest_remote,
            INGEST_PLIVO: self._ingest_remote,
            INGEST_UPLOAD: self._ingest_upload,
            DELETE_PROVIDER_COPY: self._delete_provider_copy,
            erasure.DELETE_OBJECT: self._delete_object,
            service.DELETION_PROCESS: self._process_deletion,
            service.DELETION_CALLBACK: self._deletion_callback,
            service.HOLD_SYNC: self._sync_hold,
        }
        self._laws: dict[str, ConsentLaws] = {}
        self._prompts: dict[tuple[str, str, str], Prompt | None] = {}

    # --- the loop -------------------------------------------------------------------------

    def register(self, kind: str, handler: Handler) -> None:
        """Run ``handler`` for the jobs of ``kind``."""
        self._handlers[kind] = handler

    def start(self, concurrency: int) -> None:
        """Run :meth:`run` in the background until :meth:`shutdown`."""
        self._task = asyncio.create_task(self.run(concurrency))

    async def run(self, concurrency: int) -> None:
        """Claim and process jobs, ``concurrency`` at a time, until :meth:`stop`: LISTEN for new
        jobs, poll for retries and expired leases, and renew the leases of the jobs held (the
        heartbeat). Returns once stopped and every job held has finished or been put back."""

        def wake(*_: object) -> None:
            self._wake.set()

        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            async with self.pool.acquire() as listener:
                await listener.add_listener(jobs.NOTIFY_CHANNEL, wake)
                try:
                    await asyncio.gather(*(self._loop() for _ in range(concurrency)))
                finally:
                    with contextlib.suppress(Exception):
                        await listener.remove_listener(jobs.NOTIFY_CHANNEL, wake)
        finally:
            # Only now: the jobs that ran through the shutdown's grace needed their leases renewed.
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _loop(self) -> None:
        while not self._stopping:
            # Cleared before the claim, not after: a notification that arrives while we claim
            # must wake the wait below, or its job would sit until the idle poll.
            self._wake.clear()
            try:
                worked = await self.run_once()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                log.warning("job queue unreachable; retrying shortly", exc_info=True)
                worked = False
            except Exception:
                # Anything else (asyncpg's InternalClientError when the server ends a session under
                # a statement, a bug) must not end this loop: the process would go on answering
                # HTTP while claiming nothing. Log it and try again after a pause.
                log.exception("the job loop failed; retrying shortly")
                await asyncio.sleep(LOOP_ERROR_PAUSE_S)
                worked = False
            if worked or self._stopping:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), IDLE_POLL_S)

    def stop(self) -> None:
        """Stop claiming at once (SIGTERM). The jobs held may finish within ``[ingest]
        shutdown_grace``; then :meth:`hurry` puts back what is still running."""
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()  # idle loops see that they are done
        grace = self.config.ingest.shutdown_grace.total_seconds()
        loop = asyncio.get_running_loop()
        self._stop_deadline = loop.time() + grace
        self._grace_timer = loop.call_later(grace, self.hurry)
        if self._task is not None:
            log.info(
                "worker stopping: no longer claiming; %d job(s) running get %gs to finish",
                len(self._held),
                grace,
            )

    def hurry(self) -> None:
        """End the shutdown's grace now (when it runs out, or on a second signal): cancel the
        handlers still running; their loops put each job back in the queue (see :meth:`process`)."""
        self.stop()
        if self._held:
            log.warning("worker stopping: putting %d unfinished job(s) back in the queue", len(self._held))
        for held in list(self._held.values()):
            held.end("released")

    async def shutdown(self) -> None:
        """:meth:`stop`, then wait for the jobs held to finish or be put back."""
        self.stop()
        if self._task is not None:
            loop = asyncio.get_running_loop()
            # The grace, then time to put the jobs back; past that something is stuck.
            wait = max(self._stop_deadline - loop.time(), 0) + RELEASE_TIMEOUT_S + 1
            done, _ = await asyncio.wait({self._task}, timeout=wait)
            if not done:
                log.error("worker did not stop within its grace; cancelling it")
                self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                if (current := asyncio.current_task()) is not None and current.cancelling():
                    raise  # shutdown() itself was cancelled
            except Exception:
                log.exception("the worker had stopped on an error")
        if self._grace_timer is not None:
            self._grace_timer.cancel()

    async def claim(self) -> jobs.Job | None:
        """Take a job under an id of its own (this worker's id and a claim number): the loops of
        one worker share ``self.id``, and a loop whose lease ran out must not complete or fail the
        job once another loop, or another worker, has claimed it again."""
        async with self.pool.acquire() as conn:
            return await jobs.claim(
                conn, worker_id=f"{self.id}/{next(self._claims)}", lease=self.config.ingest.lease
            )

    async def run_once(self) -> bool:
        """Claim and process one job; False when there was nothing to do."""
        job = await self.claim()
        if job is None:
            return False
        if self._stopping:  # the shutdown began while we claimed: give the job back untouched
            await self._release(job)
            return True
        await self.process(job)
        return True

    async def process(self, job: jobs.Job) -> None:
        log.info("job %s (%s) attempt %s", job.id, job.kind, job.attempts)
        metrics = self.app[metrics_key]
        started = time.perf_counter()
        outcome = "done"
        try:
            # Every attempt counted by a claim ended without an outcome: the worker died (or lost
            # its lease) each time. A shutdown's release and a deferral give their attempt back.
            if job.attempts > job.max_attempts:
                raise PermanentError("the job's worker stopped (lease expired) on every attempt")
            tenant = self.config.tenant(job.tenant)
            if tenant is None:
                raise PermanentError(f"tenant {job.tenant!r} is no longer configured")
            handler = self._handlers.get(job.kind)
            if handler is None:
                raise PermanentError(f"unknown job kind {job.kind!r}")
            await self._hold(job, handler(job, tenant))
        except LeaseLost:
            outcome = "lease_lost"
            log.warning("job %s: lease lost to another worker; discarding this attempt", job.id)
        except _Released:
            outcome = await self._release(job)
        except audio.AudioError as exc:
            # A truncated download may have been cut short: fetch it again before giving up. An
            # upload was received whole and hashed at the webhook: its bytes will never change.
            refetch = exc.code == "truncated" and job.kind in REFETCHED_KINDS
            outcome = await self._failed(job, _describe(exc), permanent=not refetch)
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

    async def _hold(self, job: jobs.Job, work: Coroutine[Any, Any, None]) -> None:
        """Run a job's handler as a task of its own while the heartbeat renews its lease. Raises
        :class:`LeaseLost` when the heartbeat cancelled it (the job is no longer ours) and
        :class:`_Released` when the shutdown did (its grace ran out)."""
        claim = _holder(job)
        lease = self.config.ingest.lease.total_seconds()
        held = _Held(job, asyncio.create_task(work), time.monotonic() + lease)
        self._held[claim] = held
        try:
            await held.task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if held.ending is None or (current is not None and current.cancelling()):
                raise  # cancelled from outside (the app is going away), not by this worker
            if held.ending == "lost":
                raise LeaseLost from None
            raise _Released from None
        finally:
            del self._held[claim]

    async def _heartbeat(self) -> None:
        """Renew the leases of the jobs held every ``[ingest] heartbeat``; after a failed
        renewal try again within a second (each try stops what has run out meanwhile)."""
        interval = self.config.ingest.heartbeat.total_seconds()
        pause = interval
        while True:
            await asyncio.sleep(pause)
            try:
                renewed = await self.renew_leases()
            except Exception:  # a bug must not stop the heartbeat: every lease would run out
                log.exception("lease renewal failed")
                renewed = False
            pause = interval if renewed else min(interval, HEARTBEAT_RETRY_S)

    async def renew_leases(self) -> bool:
        """One heartbeat: renew the leases of every job held, in one statement. A job another
        claim holds now has its handler cancelled (LeaseLost). When the database cannot be
        reached, a job whose lease has run out meanwhile has its handler cancelled too, since
        another worker may take it over; False then, and the caller tries again soon."""
        held = [h for h in self._held.values() if h.ending is None]
        if not held:
            return True
        lease = self.config.ingest.lease
        sent = time.monotonic()
        # Wait no longer than the first lease has left: that is when its handler must stop.
        wait = min(
            self.config.ingest.heartbeat.total_seconds(),
            max(min(h.expires for h in held) - sent, RENEWAL_MIN_WAIT_S),
        )
        try:
            async with asyncio.timeout(wait), self.pool.acquire() as conn:
                renewal = await jobs.renew(conn, [(h.job.id, _holder(h.job)) for h in held], lease=lease)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            now = time.monotonic()
            expired = [h for h in held if h.expires <= now]
            log.warning(
                "lease renewal failed (%s); %d job(s) held, %d past their lease",
                exc.__class__.__name__,
                len(held),
                len(expired),
            )
            for h in expired:
                log.warning("job %s: its lease ran out unrenewed; stopping its work", h.job.id)
                h.end("lost")
            return False
        for h in held:
            claim = _holder(h.job)
            if claim in renewal.renewed:
                h.expires = sent + lease.total_seconds()
            elif claim in renewal.lost:
                log.warning("job %s: another claim holds it now; stopping its work", h.job.id)
                h.end("lost")
        return True

    async def _release(self, job: jobs.Job) -> str:
        """Put a job back in the queue at shutdown, its attempt not spent; returns the outcome."""
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT_S), self.pool.acquire() as conn:
                released = await jobs.release(conn, job, worker_id=_holder(job))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            log.warning(
                "job %s: could not be put back (database unreachable); it is taken over when its "
                "lease runs out",
                job.id,
                exc_info=True,
            )
            return "release_failed"
        if not released:  # finished just before the grace ran out, or taken over
            return "lease_lost"
        log.info("job %s put back in the queue for another worker", job.id)
        return "released"

    async def _failed(self, job: jobs.Job, error: str, *, permanent: bool) -> str:
        """Record the failure; returns "retry", "dead" or "lease_lost" (nothing recorded)."""
        async with self.pool.acquire() as conn, conn.transaction():
            state = await jobs.fail(
                conn,
                job,
                worker_id=_holder(job),
                error=error,
                retry_base=self.config.ingest.retry_base,
                permanent=permanent,
            )
            if state is None:
                # Our lease ran out and another worker holds the job now: its outcome is theirs.
                log.warning("job %s: lease lost before its failure was recorded: %s", job.id, error)
                return "lease_lost"
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

    # --- ingest: provider-specific front ends ------------------------------------------------

    async def _ingest_remote(self, job: jobs.Job, tenant: TenantConfig) -> None:
        """A recording the provider holds (Twilio, Vonage, Plivo): parties from its API, then media."""
        p = job.payload
        provider = PROVIDERS[p["provider"]]
        if not provider.configured(tenant):
            raise PermanentError(f"tenant {tenant.name!r} has no {provider.name} credentials configured")
        try:
            check_media_url(p["media_url"], self.config.ingest.media_hosts)
        except BadRequest as exc:  # queued before the allow-list changed: retrying cannot help
            raise PermanentError(exc.message) from None
        timeout = aiohttp.ClientTimeout(
            total=self.config.ingest.fetch_timeout.total_seconds(), sock_connect=15
        )
        lookup = provider.parties_request(p, tenant)
        caller, callee, direction, call_started = provider.parties(
            await self._get_json(lookup.url, lookup.headers, timeout)
        )
        rid = p["recording_id"]
        keys = self.app[keys_key]
        sealed: dict[str, bytes] = {}
        hashes: dict[str, bytes] = {}
        numbers: dict[str, str | None] = {}
        async with self.pool.acquire() as conn:
            for role, value in (("from", caller), ("to", callee)):
                numbers[role] = _e164_or_none(value) if value else None
                if value:
                    sealed[role] = await keys.seal_phone(tenant.name, rid, role, value)
                    if numbers[role]:
                        hashes[role] = await keys.phone_hash(conn, tenant.name, numbers[role] or "")
        intake = Intake(
            job=job,
            tenant=tenant,
            provider=provider.name,
            call_id=p["call_id"],
            provider_recording_id=p["provider_recording_id"],
            started_at=_iso_or_none(p.get("started_at")) or call_started,
            direction=direction,
            sealed=sealed,
            hashes=hashes,
            jurisdiction=self._jurisdiction(tenant, numbers.get("from"), numbers.get("to")),
            source=p.get("source") or {},
        )
        if not await self._decide_early(intake):
            return
        media = provider.media_request(p, tenant)
        downloaded = await download(
            self.http,
            check_media_url(media.url, self.config.ingest.media_hosts),
            headers=media.headers,
            max_bytes=self.config.ingest.max_media_mb * 1024 * 1024,
            timeout=timeout,
            directory=spool_dir(self.config),
        )
        try:
            faults.point("download")
            await self._decide_and_store(
                intake, downloaded.path, sha256=downloaded.sha256, size=downloaded.size, original=None
            )
        finally:
            downloaded.path.unlink(missing_ok=True)

    async def _ingest_upload(self, job: jobs.Job, tenant: TenantConfig) -> None:
        p = job.payload
        rid = p["recording_id"]
        intake = Intake(
            job=job,
            tenant=tenant,
            provider="upload",
            call_id=p["call_id"],
            provider_recording_id=p["provider_recording_id"],
            started_at=datetime.fromisoformat(p["started_at"]) if p.get("started_at") else None,
            direction=p.get("direction"),
            sealed={k: base64.b64decode(v) for k, v in p["sealed_phones"].items()},
            hashes={k: base64.b64decode(v) for k, v in p["phone_hashes"].items()},
            jurisdiction=Jurisdiction.from_json(p.get("jurisdiction") or {}),
            source={},
            explicit_spans=[Span(s["start_ms"], s["end_ms"]) for s in p.get("redact") or []],
        )
        if not await self._decide_early(intake):
            return
        store = self.app[store_key]
        kek = await self.app[keys_key].kek(tenant.name)
        handle = await asyncio.to_thread(
            envelope.unwrap_key, base64.b64decode(p["wrapped_key"]), kek, tenant=tenant.name, recording_id=rid
        )
        reader = await store.open_reader(p["object_key"], version_id=p["object_version"])
        with tempfile.NamedTemporaryFile(dir=spool_dir(self.config), prefix="check-", delete=True) as plain:

            def decrypt() -> str:
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
            faults.point("download")
            if digest != p["sha256"]:
                raise PermanentError("the stored upload does not match the SHA-256 taken at receipt")
            await self._decide_and_store(
                intake, Path(plain.name), sha256=p["sha256"], size=p["size_bytes"], original=p
            )

    # --- the decision -----------------------------------------------------------------------

    def _jurisdiction(self, tenant: TenantConfig, caller: str | None, callee: str | None) -> Jurisdiction:
        laws = self._laws.get(tenant.name)
        if laws is None:
            laws = self._laws[tenant.name] = load_consent_laws(tenant.policy.consent_laws)
        return classify(locate(caller), locate(callee), laws)

    def _grace_expired(self, intake: Intake) -> bool:
        grace: timedelta = intake.tenant.policy.grace_period
        return datetime.now(UTC) >= intake.job.created_at + grace

    async def _evidence(self, intake: Intake) -> Evidence:
        tags = Tags.from_payload(intake.job.payload.get("tags") or {})
        async with self.pool.acquire() as conn:
            found = await events.call_events(conn, tenant=intake.tenant.name, call_id=intake.call_id)
        return gather(tags.consent, tags.announcement, found)

    def _decide(self, intake: Intake, evidence: Evidence, *, verified: bool | None) -> Decision:
        return decide(
            PolicyInput(
                consent_status=evidence.consent_status,
                consent_method=evidence.consent["method"],
                basis=evidence.consent.get("basis"),
                purpose=evidence.consent.get("purpose"),
                announcement_claimed=bool(evidence.announcement["played"]),
                announcement_verified=verified,
                jurisdiction=intake.jurisdiction,
                opted_out_during_call=evidence.opted_out_during_call,
                grace_expired=self._grace_expired(intake),
            ),
            intake.tenant.policy,
            tenant_retention=intake.tenant.retention,
        )

    async def _decide_early(self, intake: Intake) -> bool:
        """Before touching the audio: refuse what consent already rules out, and wait for late
        consent events while the grace period runs. True when the audio should be processed."""
        evidence = await self._evidence(intake)
        decision = self._decide(intake, evidence, verified=None)
        if decision.decision == "reject":
            await self._reject(intake, evidence, decision, info=None)
            return False
        if decision.decision == "wait":
            until = intake.job.created_at + intake.tenant.policy.grace_period
            async with self.pool.acquire() as conn:
                await jobs.defer(
                    conn,
                    intake.job,
                    worker_id=_holder(intake.job),
                    until=until,
                    note="waiting for consent events until the grace period ends",
                )
            log.info("job %s: consent unknown; waiting until %s", intake.job.id, until.isoformat())
            return False
        return True

    async def _decide_and_store(
        self, intake: Intake, plain: Path, *, sha256: str, size: int, original: dict[str, Any] | None
    ) -> None:
        """Check the audio, verify the announcement, decide, redact, encrypt, store, commit.

        Every decode runs under ``[ingest] max_duration`` (callrec.audio's caps); a redacted
        recording is stored as FLAC, at most ``[ingest] max_media_mb`` like any other."""
        faults.point("decode")
        max_ms = int(self.config.ingest.max_duration.total_seconds() * 1000)
        # An AudioError is permanent but for a truncated download (see process and REFETCHED_KINDS).
        info = await asyncio.to_thread(audio.probe_file, plain, max_duration_ms=max_ms)
        evidence = await self._evidence(intake)  # events may have arrived during the download
        announcement = dict(evidence.announcement)
        if announcement["played"] and announcement.get("id"):
            prompt = await self._prompt(intake.tenant, announcement["id"], announcement.get("version"))
            if prompt is not None:
                check = await asyncio.to_thread(verify_announcement, plain, prompt)
                announcement.update(
                    verified=check.verified, offset_ms=check.offset_ms, score=round(check.score, 4)
                )
        decision = self._decide(intake, evidence, verified=announcement["verified"])
        if decision.decision == "wait":  # only when the grace period has not run out: look again then
            await self._decide_early(intake)
            return
        try:
            spans = merge(
                spans_from_events(evidence.pauses, started_at=intake.started_at, duration_ms=info.duration_ms)
                + intake.explicit_spans
            )
        except RedactionError as exc:
            # Storing card data we were told to cut is worse than losing the recording (PCI DSS 3.3.1).
            decision = decision.rejected(Reason("redaction_unplaceable", "pci_redaction", str(exc)))
            spans = []
        if decision.decision == "reject":
            await self._reject(intake, evidence, decision, info=info, announcement=announcement)
            return

        with tempfile.TemporaryDirectory(dir=spool_dir(self.config), prefix="redact-") as work:
            source = plain
            if spans:
                faults.point("redact")
                source = Path(work) / "redacted.flac"
                await asyncio.to_thread(
                    redact_file,
                    plain,
                    source,
                    spans,
                    info=info,
                    max_duration_ms=max_ms,
                    max_bytes=self.config.ingest.max_media_mb * 1024 * 1024,
                )
                info = await asyncio.to_thread(audio.probe_file, source, max_duration_ms=max_ms)
                sha256, size = await asyncio.to_thread(_digest, source)
            if original is not None and not spans:
                stored = {
                    k: original[k]
                    for k in ("object_key", "object_version", "ciphertext_bytes", "wrapped_key")
                }
                discard = None
            else:
                stored = await seal_and_store(
                    self.app,
                    tenant=intake.tenant.name,
                    recording_id=intake.job.payload["recording_id"],
                    source=source,
                    by=f"job:{intake.job.id}",
                )
                discard = stored["object_key"]
        now = datetime.now(UTC)
        rec = self._recording(
            intake,
            info=info,
            stored=stored,
            sha256=sha256,
            size=size,
            state="quarantined" if decision.decision == "quarantine" else "stored",
            stored_at=now,
            expires_at=now + (decision.retention or intake.tenant.retention),
            announcement=announcement,
            evidence=evidence,
            decision=decision,
            spans=spans,
        )
        superseded = original["object_key"] if original is not None and spans else None
        await self._commit(intake, rec, discard_on_failure=discard, superseded_object=superseded)

    async def _prompt(self, tenant: TenantConfig, announcement_id: str, version: str | None) -> Prompt | None:
        """The registered prompt audio for a claimed announcement (config file first, then the CLI's)."""
        key = (tenant.name, announcement_id, version or "")
        if key in self._prompts:
            return self._prompts[key]
        prompt: Prompt | None = None
        configured = tenant.announcements.get(announcement_id)
        if configured is not None and (version is None or version == configured.version):
            try:
                prompt = await asyncio.to_thread(Prompt.from_file, configured.audio)
            except (OSError, audio.AudioError, PromptError) as exc:
                # A broken prompt in the config cannot verify anything: the announcement stays
                # unverified (the policy treats that as not played) and the operator is told.
                log.error(
                    "tenant %s: announcement %s prompt is unusable: %s", tenant.name, announcement_id, exc
                )
        else:
            async with self.pool.acquire() as conn:
                found = await announcements.get_audio(
                    conn, tenant=tenant.name, announcement_id=announcement_id, version=version
                )
            if found is not None:
                with tempfile.NamedTemporaryFile(dir=spool_dir(self.config), suffix=".wav") as f:
                    f.write(found[1])
                    f.flush()
                    prompt = await asyncio.to_thread(Prompt.from_file, Path(f.name))
        self._prompts[key] = prompt
        return prompt

    async def _reject(
        self,
        intake: Intake,
        evidence: Evidence,
        decision: Decision,
        *,
        info: audio.AudioInfo | None,
        announcement: dict[str, Any] | None = None,
    ) -> None:
        """Nothing is stored: a tombstone and an audit entry say it happened and why, and the
        provider's copy (or the upload's ciphertext) is deleted."""
        p = intake.job.payload
        rid = uuid.UUID(p["recording_id"])
        now = datetime.now(UTC)
        tombstone = recordings.Recording(
            id=rid,
            tenant=intake.tenant.name,
            provider=intake.provider,
            call_id=intake.call_id,
            provider_recording_id=intake.provider_recording_id,
            state="rejected",
            started_at=intake.started_at,
            stored_at=now,
            expires_at=now,
            duration_ms=info.duration_ms if info else None,
            channels=info.channels if info else None,
            sample_rate=info.sample_rate if info else None,
            format=info.format if info else None,
            codec=info.codec if info else None,
            size_bytes=None,
            sha256=None,
            object_key=None,
            object_version=None,
            ciphertext_bytes=None,
            wrapped_key=None,
            direction=_direction(intake.direction),
            from_sealed=None,
            to_sealed=None,
            from_hash=None,
            to_hash=None,
            announcement=announcement or evidence.announcement,
            consent=evidence.consent,
            agent=Tags.from_payload(p.get("tags") or {}).agent,
            jurisdiction=intake.jurisdiction.as_json(),
            policy=decision.as_json(),
            destroyed_at=now,
            destroy_reason="policy_reject",
        )
        async with self.pool.acquire() as conn, conn.transaction():
            if not await jobs.complete(
                conn, intake.job.id, worker_id=_holder(intake.job), result={"decision": "reject"}
            ):
                raise LeaseLost
            if not await recordings.insert(conn, tombstone):
                return
            await audit.record(
                conn,
                tenant=intake.tenant.name,
                actor=WORKER_ACTOR,
                action=audit.AuditAction.RECORDING_REJECTED,
                recording_id=rid,
                details={
                    "provider": intake.provider,
                    "call_id": intake.call_id,
                    "provider_recording_id": intake.provider_recording_id,
                    "reasons": [r.code for r in decision.reasons],
                    "policy_version": decision.policy_version,
                    "job_id": intake.job.id,
                },
            )
            if intake.provider in PROVIDERS:
                await self._queue_provider_copy_deletion(conn, intake)
            elif p.get("object_key"):
                await jobs.enqueue(
                    conn,
                    tenant=intake.tenant.name,
                    kind=erasure.DELETE_OBJECT,
                    dedupe_key=p["object_key"],
                    payload={"object_key": p["object_key"], "recording_id": str(rid)},
                    max_attempts=self.config.ingest.max_attempts,
                )

    async def _queue_provider_copy_deletion(self, conn: Conn, intake: Intake) -> None:
        """Delete the provider's copy through a durable job; where the provider has no delete API
        (Vonage), record when its own retention removes it instead."""
        provider = PROVIDERS[intake.provider]
        if provider.delete_request(intake.job.payload, intake.tenant) is None:
            await audit.record(
                conn,
                tenant=intake.tenant.name,
                actor=WORKER_ACTOR,
                action=audit.AuditAction.PROVIDER_COPY_DELETED,
                recording_id=_uuid_or_none(intake.job.payload.get("recording_id")),
                details={
                    "provider": provider.name,
                    "provider_recording_id": intake.provider_recording_id,
                    "deleted": False,
                    "provider_deletes_after_days": provider.provider_retention_days,
                },
            )
            return
        await jobs.enqueue(
            conn,
            tenant=intake.tenant.name,
            kind=DELETE_PROVIDER_COPY,
            dedupe_key=f"{intake.provider}:{intake.provider_recording_id}",
            payload={
                k: intake.job.payload[k]
                for k in (
                    "recording_id",
                    "provider",
                    "media_url",
                    "call_id",
                    "provider_recording_id",
                    "account_sid",
                )
                if k in intake.job.payload
            },
            max_attempts=self.config.ingest.max_attempts,
        )

    # --- follow-up jobs ---------------------------------------------------------------------

    async def _delete_provider_copy(self, job: jobs.Job, tenant: TenantConfig) -> None:
        p = job.payload
        provider = PROVIDERS[p["provider"]]
        request = provider.delete_request(p, tenant)
        if request is None:
            raise PermanentError(f"{provider.name} offers no API to delete a recording")
        url = request.url  # built from the tenant's configured API base, never from the callback
        async with self.http.delete(
            url, headers=request.headers, timeout=aiohttp.ClientTimeout(total=30), allow_redirects=False
        ) as resp:
            if resp.status not in (200, 204, 404):
                raise MediaError(f"deleting the provider's copy failed with HTTP {resp.status}")
            gone_already = resp.status == 404
        async with self.pool.acquire() as conn, conn.transaction():
            if not await jobs.complete(conn, job.id, worker_id=_holder(job)):
                raise LeaseLost
            await audit.record(
                conn,
                tenant=tenant.name,
                actor=WORKER_ACTOR,
                action=audit.AuditAction.PROVIDER_COPY_DELETED,
                recording_id=_uuid_or_none(p.get("recording_id")),
                details={
                    "provider": provider.name,
                    "provider_recording_id": p["provider_recording_id"],
                    "deleted": True,
                    "already_gone": gone_already,
                },
            )

    async def _delete_object(self, job: jobs.Job, tenant: TenantConfig) -> None:
        """Every version of an erased or superseded object (a delete marker is not deletion)."""
        removed = await erasure.delete_erased_object(self.app[store_key], job.payload["object_key"])
        async with self.pool.acquire() as conn, conn.transaction():
            if not await jobs.complete(conn, job.id, worker_id=_holder(job), result={"versions": removed}):
                raise LeaseLost
            await audit.record(
                conn,
                tenant=tenant.name,
                actor=WORKER_ACTOR,
                action=audit.AuditAction.OBJECT_DELETED,
                recording_id=_uuid_or_none(job.payload.get("recording_id")),
                details={"versions": removed},
            )

    async def _process_deletion(self, job: jobs.Job, tenant: TenantConfig) -> None:
        """Decide a deletion request, then delete the erased recordings' objects in one batch.

        The decision is one transaction (job completion, tombstones with their keys destroyed,
        outcomes, audit entries), so every key is gone before any object is touched; a recording
        under a legal hold is withheld there and never reaches the batch. After the commit the
        objects go through :func:`callrec.erasure.delete_objects_now`, as the sweeper's do: their
        ``object.delete`` jobs, queued and held back in the transaction, are finished with an audit
        entry each, or, if the store fails, made due at once for the workers to retry."""
        erased: list[tuple[str, str]] = []
        async with self.pool.acquire() as conn, conn.transaction():
            if not await jobs.complete(conn, job.id, worker_id=_holder(job)):
                raise LeaseLost
            await service.process_request(
                conn,
                tenant=tenant.name,
                request_id=uuid.UUID(job.payload["request_id"]),
                actor="system:deletions",
                max_attempts=self.config.ingest.max_attempts,
                erased_objects=erased,
            )
        if not erased:
            return
        try:
            await erasure.delete_objects_now(self.pool, self.app[store_key], erased, actor=WORKER_ACTOR)
        except Exception:
            # Only the database can fail here (delete_objects_now hands a store failure to the
            # jobs itself). The request's job has committed as done, so failing it would misreport
            # it; the object.delete jobs still queued run after erasure.INLINE_DELETE_GRACE and
            # find whatever is left to delete.
            log.warning(
                "job %s: the inline deletion of %d object(s) did not finish; their object.delete jobs will",
                job.id,
                len(erased),
                exc_info=True,
            )

    async def _deletion_callback(self, job: jobs.Job, tenant: TenantConfig) -> None:
        """POST the request's new status to its callback_url, signed like our own webhooks."""
        async with self.pool.acquire() as conn:
            req = await deletions.get(
                conn, tenant=tenant.name, request_id=uuid.UUID(job.payload["request_id"])
            )
            outcomes = await deletions.outcomes(conn, request_id=req.id) if req else []
        if req is None or not req.callback_url:
            raise PermanentError("the deletion request or its callback_url is gone")
        url = check_media_url(req.callback_url, tenant.callback_hosts)
        counts = {k: sum(1 for o in outcomes if o.outcome == k) for k in DELETION_OUTCOMES}
        body = json.dumps(
            {
                "id": str(req.id),
                "status": job.payload["status"],
                "external_ref": req.external_ref,
                "received_at": req.received_at.isoformat(),
                "due_at": req.due_at.isoformat(),
                "completed_at": req.completed_at.isoformat() if req.completed_at else None,
                "outcomes": counts,
            }
        ).encode()
        headers = {
            "Content-Type": "application/json",
            "Callrec-Signature": sign_body(tenant.webhook_secret, body),
        }
        async with self.http.post(
            url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=30), allow_redirects=False
        ) as resp:
            if not 200 <= resp.status < 300:
                raise MediaError(f"the deletion callback answered HTTP {resp.status}")
        async with self.pool.acquire() as conn, conn.transaction():
            if not await jobs.complete(conn, job.id, worker_id=_holder(job)):
                raise LeaseLost

    async def _sync_hold(self, job: jobs.Job, tenant: TenantConfig) -> None:
        """Mirror legal holds onto S3 Object Lock: a version is locked while any active hold covers
        its recording, unlocked when none does. A store without Object Lock has nothing to do."""
        store = self.app[store_key]
        if await store.supports_legal_hold():
            async with self.pool.acquire() as conn:
                if job.payload.get("recording_id"):
                    ids = [uuid.UUID(job.payload["recording_id"])]
                else:
                    ids = await holds.covered_recording_ids(
                        conn, tenant=tenant.name, hold_id=uuid.UUID(job.payload["hold_id"])
                    )
                targets = []
                for rid in ids:
                    rec = await recordings.get(conn, tenant=tenant.name, recording_id=rid)
                    if rec is None or rec.object_key is None:
                        continue
                    held = bool(await holds.active_covering(conn, tenant=tenant.name, recording_id=rid))
                    targets.append((rec.object_key, rec.object_version, held))
            for key, version, held in targets:
                faults.point("hold.sync")
                await store.set_legal_hold(key, version_id=version, on=held)
        async with self.pool.acquire() as conn, conn.transaction():
            if not await jobs.complete(conn, job.id, worker_id=_holder(job)):
                raise LeaseLost

    # --- shared steps ---------------------------------------------------------------------

    async def _get_json(
        self, url: str, auth: dict[str, str], timeout: aiohttp.ClientTimeout
    ) -> dict[str, Any]:
        # url is built from the tenant's configured API base, never from the callback.
        async with self.http.get(url, headers=auth, timeout=timeout, allow_redirects=False) as resp:
            if resp.status != 200:
                raise MediaError(f"the provider's Calls resource answered HTTP {resp.status}")
            body = await resp.json(content_type=None)
        if not isinstance(body, dict):
            raise MediaError("the provider's Calls resource did not return a JSON object")
        return body

    def _recording(
        self,
        intake: Intake,
        *,
        info: audio.AudioInfo,
        stored: dict[str, Any],
        sha256: str,
        size: int,
        state: str,
        stored_at: datetime,
        expires_at: datetime,
        announcement: dict[str, Any],
        evidence: Evidence,
        decision: Decision,
        spans: list[Span],
    ) -> recordings.Recording:
        tags = Tags.from_payload(intake.job.payload.get("tags") or {})
        return recordings.Recording(
            id=uuid.UUID(intake.job.payload["recording_id"]),
            tenant=intake.tenant.name,
            provider=intake.provider,
            call_id=intake.call_id,
            provider_recording_id=intake.provider_recording_id,
            state=state,
            started_at=intake.started_at,
            stored_at=stored_at,
            expires_at=expires_at,
            duration_ms=info.duration_ms,
            channels=info.channels,
            sample_rate=info.sample_rate,
            format=info.format,
            codec=info.codec,
            size_bytes=size,
            sha256=sha256,
            object_key=stored["object_key"],
            object_version=stored["object_version"],
            ciphertext_bytes=stored["ciphertext_bytes"],
            wrapped_key=base64.b64decode(stored["wrapped_key"]),
            direction=_direction(intake.direction),
            from_sealed=intake.sealed.get("from"),
            to_sealed=intake.sealed.get("to"),
            from_hash=intake.hashes.get("from"),
            to_hash=intake.hashes.get("to"),
            announcement=announcement,
            consent=evidence.consent,
            agent=tags.agent,
            tags={},
            source={k: v for k, v in intake.source.items() if v},
            jurisdiction=intake.jurisdiction.as_json(),
            policy=decision.as_json(),
            redactions=[s.as_json() for s in spans],
        )

    async def _commit(
        self,
        intake: Intake,
        rec: recordings.Recording,
        *,
        discard_on_failure: str | None,
        superseded_object: str | None,
    ) -> None:
        """Row + audit entry + job completion (+ follow-up jobs) in one transaction."""
        job, tenant = intake.job, intake.tenant
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                if not await jobs.complete(
                    conn, job.id, worker_id=_holder(job), result={"recording_id": str(rec.id)}
                ):
                    raise LeaseLost
                inserted = await recordings.insert(conn, rec)
                if inserted and discard_on_failure:  # the object this attempt stored, referenced now
                    await intents.clear(conn, discard_on_failure)
                if inserted:
                    await audit.record(
                        conn,
                        tenant=tenant.name,
                        actor=WORKER_ACTOR,
                        action=audit.AuditAction.RECORDING_QUARANTINED
                        if rec.state == "quarantined"
                        else audit.AuditAction.RECORDING_INGESTED,
                        recording_id=rec.id,
                        details={
                            "provider": rec.provider,
                            "call_id": rec.call_id,
                            "provider_recording_id": rec.provider_recording_id,
                            "sha256": rec.sha256,
                            "size_bytes": rec.size_bytes,
                            "duration_ms": rec.duration_ms,
                            "expires_at": rec.expires_at.isoformat(),
                            "decision": rec.policy.get("decision"),
                            "reasons": [r["code"] for r in rec.policy.get("reasons", [])],
                            "redacted_spans": len(rec.redactions),
                            "job_id": job.id,
                        },
                    )
                    if rec.provider in PROVIDERS and tenant.delete_provider_copy:
                        await self._queue_provider_copy_deletion(conn, intake)
                    # A subject with an open deletion request: decided at once, never readable.
                    await service.apply_open_requests(
                        conn,
                        tenant=tenant.name,
                        recording_id=rec.id,
                        call_id=rec.call_id,
                        hashes=[h for h in (rec.from_hash, rec.to_hash) if h],
                        arrived_at=job.created_at,
                        max_attempts=self.config.ingest.max_attempts,
                    )
                    # Holds placed before this recording arrived cover it too; mirror them to the store.
                    for hold in await holds.active_covering(conn, tenant=tenant.name, recording_id=rec.id):
                        await jobs.enqueue(
                            conn,
                            tenant=tenant.name,
                            kind=service.HOLD_SYNC,
                            dedupe_key=f"{hold.id}:{rec.id}",
                            payload={"hold_id": str(hold.id), "recording_id": str(rec.id)},
                            max_attempts=self.config.ingest.max_attempts,
                        )
                    if superseded_object:  # the upload's unredacted original
                        await jobs.enqueue(
                            conn,
                            tenant=tenant.name,
                            kind=erasure.DELETE_OBJECT,
                            dedupe_key=superseded_object,
                            payload={"object_key": superseded_object, "recording_id": str(rec.id)},
                            max_attempts=self.config.ingest.max_attempts,
                        )
                faults.point("commit")
        except BaseException:
            if discard_on_failure:
                await discard_object(self.app, discard_on_failure)
            raise
        if not inserted and discard_on_failure:  # the recording was there already: ours is spare
            await discard_object(self.app, discard_on_failure)
        self.app[metrics_key].ingested_bytes.inc(rec.size_bytes or 0)


@dataclass
class Intake:
    """A recording on its way in: what is known about it before its audio is decided on."""

    job: jobs.Job
    tenant: TenantConfig
    provider: str
    call_id: str
    provider_recording_id: str
    started_at: datetime | None
    direction: str | None
    sealed: dict[str, bytes]
    hashes: dict[str, bytes]
    jurisdiction: Jurisdiction
    source: dict[str, Any]
    explicit_spans: list[Span] = field(default_factory=list)


def _digest(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _direction(value: str | None) -> str | None:
    return value if value in ("inbound", "outbound-api", "outbound-dial", "outbound") else None


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
    """E.164 for a provider's number; Vonage and Plivo give international digits without "+"."""
    if value.isdigit() and 8 <= len(value) <= 15:
        value = "+" + value
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _iso_or_none(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else None
