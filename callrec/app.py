"""The aiohttp application: one factory, every resource opened and closed in a cleanup context."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import aiohttp_jinja2
import asyncpg
from aiohttp import web

from callrec import audio, serverlog, spool
from callrec.anchoring import open_anchor_store
from callrec.anchoring.service import run_periodic as run_anchoring
from callrec.api import access as api_access
from callrec.api import deletions as api_deletions
from callrec.api import holds as api_holds
from callrec.api import openapi as api_openapi
from callrec.api import recordings as api_recordings
from callrec.api.body import clean_text
from callrec.appkeys import anchors_key, batcher_key, config_key, db_key, keys_key, store_key
from callrec.config import Config
from callrec.crypto.keys import open_key_provider
from callrec.db.intents import ObjectCollected
from callrec.db.pool import DatabaseUnavailable, create_pool
from callrec.errors import BadRequest, CallrecError
from callrec.ingest import webhooks
from callrec.ingest.batcher import JobBatcher
from callrec.ingest.deadline import with_body_deadline
from callrec.ingest.worker import Worker
from callrec.keyring import TenantKeys
from callrec.metrics import Metrics, metrics_handler, metrics_key
from callrec.portal.chain import ChainStatus, chain_key, run_full_walks
from callrec.portal.routes import setup_portal
from callrec.portal.sessions import portal_middleware, session_key
from callrec.retention.sweeper import sweep
from callrec.storage import open_object_store
from callrec.storage.base import StoreUnavailable

log = logging.getLogger(__name__)

request_id_key = web.RequestKey("request_id", str)
worker_key = web.AppKey("worker", Worker)

# Failures of our dependencies, not of the client: answered 503 so that the sender retries.
UNAVAILABLE = (
    DatabaseUnavailable,
    StoreUnavailable,
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    # A restart or failover ends every session (57P01/57P02). A statement sent on a connection whose
    # termination notice has arrived but whose socket is not closed yet fails inside asyncpg's
    # protocol ("cannot switch to state ..."): seen in tests/faults under a database restart.
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.InternalClientError,
    ObjectCollected,  # an upload slower than [storage] orphan_grace: its sender sends it again
)


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


@web.middleware
async def metrics_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    metrics = request.app[metrics_key]
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        metrics.http_requests.labels(route, request.method, str(status)).inc()
        metrics.http_latency.labels(route).observe(time.perf_counter() - started)


@web.middleware
async def input_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Query strings with NUL or invalid UTF-8 are refused before any handler sees them."""
    if not all(clean_text(k) and clean_text(v) for k, v in request.query.items()):
        raise BadRequest("the query string holds characters that are not allowed", code="invalid_characters")
    return await handler(request)


@web.middleware
async def errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    rid = request.headers.get("X-Request-Id", "")[:64] or uuid.uuid4().hex
    request[request_id_key] = rid
    try:
        response = await handler(request)
    except (asyncpg.DataError, asyncpg.CharacterNotInRepertoireError, asyncpg.UntranslatableCharacterError):
        # A backstop: input the handlers should have refused, and PostgreSQL did (nothing was written).
        log.warning("request %s: input refused by the database", rid, exc_info=True)
        if request.path.startswith("/portal"):
            return portal_error(request, 400, "Some of what you sent could not be stored as it is.")
        response = web.json_response(
            error_body("invalid_input", "the request holds values that cannot be stored"), status=400
        )
    except CallrecError as exc:
        if request.path.startswith("/portal"):
            return portal_error(request, exc.status, exc.message)
        response = web.json_response(error_body(exc.code, exc.message), status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if request.path.startswith("/portal"):
            return portal_error(
                request,
                exc.status,
                exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason,
            )
        response = web.json_response(
            error_body(exc.reason.lower().replace(" ", "_"), exc.reason),
            status=exc.status,
            headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"},
        )
    except UNAVAILABLE as exc:
        if isinstance(exc, ConnectionResetError) and request.transport is None:
            raise  # the client hung up mid-request: nothing is unavailable, and nobody is left to answer
        log.warning("request %s: a dependency is unavailable", rid, exc_info=True)
        if request.path.startswith("/portal"):
            return portal_error(request, 503, "A backing service is unavailable. Try again in a minute.")
        response = web.json_response(
            error_body("unavailable", "a backing service is unavailable; nothing was accepted, retry later"),
            status=503,
            headers={"Retry-After": "30"},
        )
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("request %s failed", rid)
        if request.path.startswith("/portal"):
            return portal_error(request, 500, f"Something went wrong on our side (request id {rid}).")
        response = web.json_response(error_body("internal", f"internal error (request id {rid})"), status=500)
    if not response.prepared:
        response.headers["X-Request-Id"] = rid
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def portal_error(request: web.Request, status: int, message: str) -> web.Response:
    """Portal errors are pages, not JSON: the same words, for a person."""
    titles = {400: "That did not work", 403: "Not for your role", 404: "Not found", 413: "Too large"}
    session = request.get(session_key)
    return aiohttp_jinja2.render_template(
        "error.html",
        request,
        {
            "title": titles.get(status, "Something went wrong"),
            "message": message,
            "session": session,
            # The page header's log-out form still needs the session's token.
            "csrf_token": session.csrf_token if session else "",
        },
        status=status,
    )


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    checks: dict[str, str] = {}
    try:
        async with request.app[db_key].acquire(timeout=5) as conn:
            await conn.fetchval("SELECT 1", timeout=5)
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unavailable ({exc.__class__.__name__})"
    try:
        await asyncio.wait_for(request.app[store_key].check(), 10)
        checks["store"] = "ok"
    except Exception as exc:
        checks["store"] = f"unavailable ({exc.__class__.__name__})"
    ok = all(v == "ok" for v in checks.values())
    return web.json_response(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status=200 if ok else 503
    )


async def run_sweeper(app: web.Application) -> None:
    """Sweep on an interval until cancelled; a failed sweep is logged and tried again next time."""
    config = app[config_key]
    while True:
        try:
            await sweep(
                app[db_key],
                app[store_key],
                tenants=list(config.tenants),
                max_attempts=config.ingest.max_attempts,
                batch=config.retention.sweep_batch,
                orphan_grace=config.storage.orphan_grace,
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("sweep failed; trying again at the next interval")
        await asyncio.sleep(config.retention.sweep_interval.total_seconds())


def create_app(config: Config, *, run_workers: bool = True) -> web.Application:
    # The metrics middleware is outermost so that it sees the status the error middleware chose.
    app = web.Application(
        # The portal middleware wraps the error middleware so that error pages get its security headers.
        middlewares=[metrics_middleware, portal_middleware, errors_middleware, input_middleware],
        client_max_size=1024 * 1024,
        handler_args=serverlog.handler_args(),
    )
    app[config_key] = config
    app[metrics_key] = Metrics()

    async def resources(app: web.Application) -> AsyncIterator[None]:
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Plaintext audio that processes killed mid-job left in the spool goes first.
        await asyncio.to_thread(spool.reclaim, config.data_dir)
        audio.configure_ffmpeg()
        provider = await asyncio.to_thread(open_key_provider, config.keys, keyring_path=config.keyring_path)
        for tenant in config.tenants:
            await asyncio.to_thread(provider.ensure_tenant, tenant)
        app[keys_key] = TenantKeys(provider)
        app[store_key] = open_object_store(config.storage, root=config.storage_path)
        app[anchors_key] = open_anchor_store(config, app[store_key])
        # Unwraps the audit keys once, here: no key-service call ever happens under the chain lock.
        app[db_key] = await create_pool(config, key_provider=provider)
        app[batcher_key] = JobBatcher(app[db_key])
        try:
            yield
        finally:
            await app[batcher_key].close()
            await app[db_key].close()
            await app[store_key].close()

    async def sweeper(app: web.Application) -> AsyncIterator[None]:
        tasks = []
        if run_workers and config.retention.sweep_in_serve:
            tasks.append(asyncio.create_task(run_sweeper(app)))
        if run_workers:
            # The audit chain's full walk, kept fresh for the auditors' page (callrec.portal.chain).
            tasks.append(asyncio.create_task(run_full_walks(app, app[db_key], app[anchors_key])))
            # Anchoring the chain outside the database; processes elect one writer (callrec.anchoring).
            tasks.append(
                asyncio.create_task(
                    run_anchoring(
                        app[db_key],
                        app[anchors_key],
                        interval=config.audit.anchor_interval,
                        failures=app[metrics_key].audit_anchor_failures,
                    )
                )
            )
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def workers(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=15, sock_read=60),
            headers={"User-Agent": "callrec"},
        ) as http:
            worker = Worker(app, http)
            app[worker_key] = worker
            if run_workers:
                worker.start(config.ingest.workers)
            try:
                yield
            finally:
                # The jobs held finish within [ingest] shutdown_grace, counted from stop_claiming;
                # what is left goes back to the queue, while the pool is still open.
                await worker.shutdown()

    async def stop_claiming(app: web.Application) -> None:
        # on_shutdown runs before in-flight requests are waited for and before any cleanup
        # context closes: the workers stop claiming at once, their grace runs meanwhile.
        worker = app.get(worker_key)
        if worker is not None:
            worker.stop()

    # The worker uses the pool and store, so its context must start after theirs.
    app.cleanup_ctx.append(resources)
    app.cleanup_ctx.append(workers)
    app.cleanup_ctx.append(sweeper)
    app.on_shutdown.append(stop_claiming)

    app[chain_key] = ChainStatus()
    setup_portal(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_post("/webhooks/twilio/{tenant}", webhooks.twilio_recording)
    app.router.add_post("/webhooks/upload/{tenant}", with_body_deadline(webhooks.pbx_upload))
    app.router.add_post("/webhooks/vonage/{tenant}", webhooks.vonage_recording)
    app.router.add_post("/webhooks/plivo/{tenant}", webhooks.plivo_recording)
    app.router.add_get("/api/v1/openapi.json", api_openapi.openapi_json)
    app.router.add_get("/api/v1/recordings", api_recordings.list_recordings)
    app.router.add_post("/api/v1/recordings/search", api_recordings.search_recordings)
    app.router.add_get("/api/v1/recordings/{id}", api_recordings.get_recording)
    app.router.add_get("/api/v1/recordings/{id}/audio", api_recordings.get_audio)
    app.router.add_post("/api/v1/recordings/{id}/approve", api_recordings.approve_quarantined)
    app.router.add_post("/api/v1/recordings/{id}/reject", api_recordings.reject_quarantined)
    app.router.add_post("/webhooks/events/{tenant}", webhooks.call_event)
    app.router.add_post("/api/v1/legal-holds", api_holds.create_hold)
    app.router.add_post("/api/v1/legal-holds/preview", api_holds.preview_hold)
    app.router.add_get("/api/v1/legal-holds", api_holds.list_holds)
    app.router.add_get("/api/v1/legal-holds/{id}", api_holds.get_hold)
    app.router.add_post("/api/v1/legal-holds/{id}/release", api_holds.release_hold)
    app.router.add_post("/api/v1/recordings/{id}/restrict", api_recordings.restrict)
    app.router.add_post("/api/v1/recordings/{id}/unrestrict", api_recordings.unrestrict)
    app.router.add_post("/api/v1/access-requests", api_access.create_access_request)
    app.router.add_get("/api/v1/access-requests/{id}/download", api_access.download)
    app.router.add_post("/api/v1/deletion-requests", api_deletions.create_request)
    app.router.add_get("/api/v1/deletion-requests", api_deletions.list_requests)
    app.router.add_get("/api/v1/deletion-requests/{id}", api_deletions.get_request)
    app.router.add_get("/api/v1/deletion-requests/{id}/certificate", api_deletions.certificate)
    return app
