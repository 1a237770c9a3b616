"""The ``callrec`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from callrec.config import Config, ConfigError, load_config
from callrec.errors import CallrecError

log = logging.getLogger("callrec")


def _setup_logging(config: Config) -> None:
    logging.basicConfig(
        level=config.log_level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


def _fail(message: str, code: int = 2) -> int:
    print(f"callrec: {message}", file=sys.stderr)
    return code


def _tenant(config: Config, name: str | None) -> str:
    tenant = name or next(iter(config.tenants))
    if tenant not in config.tenants:
        raise ConfigError(f"unknown tenant {tenant!r}; configured: {', '.join(config.tenants)}")
    return tenant


async def _run_until_signalled(app: web.Application, config: Config, *, listen: bool) -> None:
    """Run ``app`` (serving HTTP when ``listen``) until SIGTERM or SIGINT, then shut down
    gracefully: the workers stop claiming at once and the jobs they hold get ``[ingest]
    shutdown_grace`` to finish, as do requests in flight; jobs still running then go back to the
    queue without spending an attempt. A second signal ends the grace at once; the jobs are put
    back all the same. Kubernetes stops pods this way (SIGTERM, then SIGKILL after
    terminationGracePeriodSeconds)."""
    from callrec.app import worker_key

    grace = config.ingest.shutdown_grace.total_seconds()
    loop = asyncio.get_running_loop()
    signalled = asyncio.Event()
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=grace)
    await runner.setup()  # opens the pool and store and starts the workers
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, signalled.set)
        if listen:
            await web.TCPSite(runner, config.server.host, config.server.port).start()
        await signalled.wait()
        log.info("shutting down (a second SIGTERM or SIGINT puts unfinished jobs back at once)")

        def hurry() -> None:
            worker = app.get(worker_key)
            if worker is not None:
                worker.hurry()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, hurry)
    finally:
        await runner.cleanup()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


# --- commands ------------------------------------------------------------------------------


def cmd_serve(config: Config, args: argparse.Namespace) -> int:
    from callrec.app import create_app

    app = create_app(config, run_workers=not args.no_workers)
    log.info(
        "callrec listening on %s:%s (public URL %s)",
        config.server.host,
        config.server.port,
        config.public_base_url,
    )
    asyncio.run(_run_until_signalled(app, config, listen=True))
    return 0


def cmd_worker(config: Config, args: argparse.Namespace) -> int:
    from callrec.app import create_app

    asyncio.run(_run_until_signalled(create_app(config, run_workers=True), config, listen=False))
    return 0


def cmd_sweep(config: Config, args: argparse.Namespace) -> int:
    """Destroy recordings past their expiry that no legal hold covers (what `serve` does on a timer)."""
    from callrec.db.pool import create_pool
    from callrec.retention.sweeper import sweep
    from callrec.storage import open_object_store

    async def run() -> dict[str, object]:
        pool = await create_pool(config)
        store = open_object_store(config.storage, root=config.storage_path)
        try:
            report = await sweep(
                pool,
                store,
                tenants=list(config.tenants),
                max_attempts=config.ingest.max_attempts,
                batch=config.retention.sweep_batch,
                dry_run=args.dry_run,
                orphan_grace=config.storage.orphan_grace,
            )
            return {**report.as_json(), "orphan_keys": len(report.orphans.keys)}
        finally:
            await store.close()
            await pool.close()

    report = asyncio.run(run())
    if args.dry_run:
        print(
            f"would destroy {report['expired']} expired recordings; {report['held']} expired but held; "
            f"would delete {report['orphan_keys']} orphaned objects"
        )
    else:
        del report["orphan_keys"]
        print(json.dumps(report))
    return 0


def cmd_storage_orphans(config: Config, args: argparse.Namespace) -> int:
    """Delete objects whose reference never committed (what the sweeper does after expiry), found
    through the intent rows written before each put, never by listing the bucket."""
    from callrec.db.pool import create_pool
    from callrec.storage import StoreUnavailable, open_object_store
    from callrec.storage.orphans import OrphanReport, collect

    async def run() -> OrphanReport:
        pool = await create_pool(config)
        store = open_object_store(config.storage, root=config.storage_path)
        try:
            return await collect(pool, store, grace=config.storage.orphan_grace, dry_run=args.dry_run)
        finally:
            await store.close()
            await pool.close()

    try:
        report = asyncio.run(run())
    except StoreUnavailable as exc:
        return _fail(f"the object store cannot be reached: {exc}", 3)
    grace = config.storage.orphan_grace
    if args.dry_run:
        for key in report.keys:
            print(key)
        print(
            f"would delete {len(report.keys)} orphaned objects (intents older than {grace})", file=sys.stderr
        )
        return 0
    print(json.dumps(report.as_json()))
    return 1 if report.deferred else 0


def cmd_storage_check(config: Config, args: argparse.Namespace) -> int:
    """What the bucket has against what callrec needs (versioning, Object Lock, lifecycle
    backstop, default encryption, public access block); --apply sets what is missing."""
    from callrec.storage import StoreUnavailable, open_object_store
    from callrec.storage.check import apply_fixes, check_bucket
    from callrec.storage.s3 import S3ObjectStore

    store = open_object_store(config.storage, root=config.storage_path)
    if not isinstance(store, S3ObjectStore):
        return _fail("storage check is for the s3 backend (the filesystem store needs no bucket settings)")
    retention = max(t.retention for t in config.tenants.values())

    async def run() -> list[Any]:
        try:
            findings = await check_bucket(
                store,
                retention=retention,
                anchor_prefix=config.audit.anchor_prefix,
                anchor_retention=config.audit.anchor_retention,
            )
            if args.apply:
                chosen = [f for f in findings if not (args.no_object_lock and f.name == "object-lock")]
                findings = await apply_fixes(
                    store,
                    chosen,
                    retention=retention,
                    margin=timedelta(days=7),
                    anchor_prefix=config.audit.anchor_prefix,
                    anchor_retention=config.audit.anchor_retention,
                )
            return findings
        finally:
            await store.close()

    try:
        findings = asyncio.run(run())
    except StoreUnavailable as exc:
        return _fail(f"the bucket cannot be reached: {exc}", 3)
    for f in findings:
        fixable = "  [fixable: --apply]" if f.fixable and f.status != "ok" else ""
        print(f"{f.status:<8} {f.name:<28} {f.detail}{fixable}")
    return 0 if all(f.status == "ok" for f in findings) else 1


def cmd_user_add(config: Config, args: argparse.Namespace) -> int:
    """A staff account for the portal. MFA is required: the otpauth:// URI is printed while
    enrolment is pending, so a script can enrol the account; the portal shows it as a QR code."""
    from callrec.crypto.keys import open_key_provider
    from callrec.db.pool import create_pool
    from callrec.portal import users

    tenant = _tenant(config, args.tenant)
    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else None
    provider = open_key_provider(config.keys, keyring_path=config.keyring_path)
    provider.ensure_tenant(tenant)

    async def run() -> users.NewAccount | None:
        pool = await create_pool(config)
        try:
            async with pool.acquire() as conn, conn.transaction():
                return await users.add(
                    conn,
                    kek=provider.kek(tenant),
                    tenant=tenant,
                    email=args.email,
                    role=args.role,
                    password=password,
                    actor="cli",
                    via="cli",
                )
        finally:
            await pool.close()

    try:
        account = asyncio.run(run())
    except ValueError as exc:  # a bad e-mail address, role or password: nothing was written
        return _fail(str(exc))
    if account is None:
        return _fail(f"{users.clean_email(args.email)} has an account already", 1)
    print(f"user {account.user.id} ({args.role}, tenant {tenant})")
    if account.password is not None:
        print(f"password: {account.password}")
    print(f"MFA pending: {account.enrol_uri}")
    return 0


def cmd_migrate(config: Config, args: argparse.Namespace) -> int:
    from callrec.db.migrate import migrate
    from callrec.db.pool import connect

    async def run() -> list[str]:
        async with connect(config, audit_keys=False) as conn:
            return await migrate(conn)

    applied = asyncio.run(run())
    print("applied: " + ", ".join(applied) if applied else "database is up to date")
    return 0


def cmd_token_create(config: Config, args: argparse.Namespace) -> int:
    from callrec.api.auth import SCOPES
    from callrec.db import audit, tokens
    from callrec.db.pool import create_pool

    unknown = [s for s in args.scope if s not in SCOPES]
    if unknown:
        known = "\n  ".join(f"{k}: {v}" for k, v in SCOPES.items())
        return _fail(f"unknown scope(s) {', '.join(unknown)}; known scopes:\n  {known}")
    tenant = _tenant(config, args.tenant)

    async def run() -> str:
        pool = await create_pool(
            config,
        )
        try:
            async with pool.acquire() as conn, conn.transaction():
                row, token = await tokens.create(
                    conn, tenant=tenant, name=args.name, scopes=sorted(set(args.scope))
                )
                await audit.record(
                    conn,
                    tenant=tenant,
                    actor="cli",
                    action=audit.AuditAction.TOKEN_CREATED,
                    details={"token_id": str(row.id), "name": args.name, "scopes": row.scopes},
                )
            return token
        finally:
            await pool.close()

    print(asyncio.run(run()))
    print("store this token now: it is not shown again", file=sys.stderr)
    return 0


def cmd_keys_rotate(config: Config, args: argparse.Namespace) -> int:
    from callrec.crypto.keys import open_key_provider
    from callrec.db import audit
    from callrec.db.pool import create_pool

    tenants = [_tenant(config, args.tenant)] if args.tenant else list(config.tenants)
    provider = open_key_provider(config.keys, keyring_path=config.keyring_path)

    async def run() -> None:
        pool = await create_pool(config)
        try:
            for tenant in tenants:
                provider.ensure_tenant(tenant)
                description = provider.rotate(tenant)
                async with pool.acquire() as conn, conn.transaction():
                    await audit.record(
                        conn,
                        tenant=tenant,
                        actor="cli",
                        action=audit.AuditAction.KEYS_ROTATED,
                        details={"provider": config.keys.provider, "result": description},
                    )
                print(f"{tenant}: {description}")
        finally:
            await pool.close()

    asyncio.run(run())
    return 0


# `callrec audit verify` exit codes, for scripts and monitoring.
VERIFY_INTACT = 0  # hash chain, MACs, checkpoint and anchors all agree
VERIFY_BROKEN = 1  # evidence of tampering (each problem printed)
VERIFY_UNCHECKED = 3  # could not finish: the key service or the anchor store is unavailable
VERIFY_UNAUTHENTICATED = 4  # the hash chain is intact but has never been authenticated (no checkpoint)


def cmd_audit_verify(config: Config, args: argparse.Namespace) -> int:
    """Every entry's hash link and MAC, the checkpoint, and the chain against every anchor in the
    anchor store. Prints counts and problems: sequence numbers and key ids, no personal data."""
    from callrec.anchoring import AnchorError, AnchorsRead, open_anchor_store
    from callrec.crypto.auditkeys import AuditKeyError, AuditKeyring
    from callrec.crypto.keys import KeyProviderError, open_key_provider
    from callrec.db import audit
    from callrec.db.pool import connect
    from callrec.storage import open_object_store

    async def run() -> tuple[audit.VerifyResult, AnchorsRead | None, str]:
        store = open_object_store(config.storage, root=config.storage_path)
        anchors = open_anchor_store(config, store)
        try:
            try:
                found: AnchorsRead | None = await anchors.read_all()
                note = ""
            except AnchorError as exc:
                found, note = None, str(exc)
            provider = await asyncio.to_thread(
                open_key_provider, config.keys, keyring_path=config.keyring_path
            )
            async with connect(config, audit_keys=False) as conn:
                # Only what exists: verifying never makes a key or a checkpoint.
                conn.audit_keyring = await AuditKeyring.open(conn, provider, create=False)
                result = await audit.verify(conn, anchors=found.anchors if found is not None else None)
            return result, found, note
        finally:
            await store.close()

    try:
        result, found, note = asyncio.run(run())
    except (KeyProviderError, AuditKeyError) as exc:
        return _fail(f"audit log NOT VERIFIED: {exc}", VERIFY_UNCHECKED)
    problems = [*result.problems, *(found.problems if found is not None else [])]
    if problems:
        print(f"audit log BROKEN ({result.entries} entries read):", file=sys.stderr)
        for problem in problems[:100]:
            print(f"  {problem}", file=sys.stderr)
        if len(problems) > 100:
            print(f"  ... and {len(problems) - 100} more", file=sys.stderr)
        return VERIFY_BROKEN
    print(f"audit log intact: {result.entries} entries, chain head at {result.head_seq}")
    if result.authenticated:
        keys = ", ".join(map(str, result.key_ids)) or "none yet"
        before = (
            f"; entries 1 to {result.checkpoint_seq} by the hash chain up to it"
            if result.checkpoint_seq
            else ""
        )
        print(
            f"  MACs: checked from the checkpoint at entry {result.checkpoint_seq} on "
            f"(audit keys {keys}){before}"
        )
    if found is None:
        print(f"audit log NOT VERIFIED against its anchors: {note}", file=sys.stderr)
        return VERIFY_UNCHECKED
    if result.newest_anchor is not None:
        newest = result.newest_anchor
        print(
            f"  anchors: {result.anchors} checked; the newest, of {newest.at:%Y-%m-%d %H:%M:%S} UTC, "
            f"records entry {newest.seq}"
        )
    else:
        print(
            "  anchors: none yet (`callrec audit anchor` writes one; `callrec serve` every anchor_interval)"
        )
    if not result.authenticated and result.entries:
        print(
            "audit log NOT AUTHENTICATED: no checkpoint yet, so the hash chain alone vouches for it; "
            "the first start of callrec serve (or of any command that writes) authenticates it",
            file=sys.stderr,
        )
        return VERIFY_UNAUTHENTICATED
    return VERIFY_INTACT


def cmd_audit_anchor(config: Config, args: argparse.Namespace) -> int:
    """Anchor the chain's head outside the database now (waiting for another writer if need be)."""
    from callrec.anchoring import AnchorError, open_anchor_store
    from callrec.anchoring.service import anchor_chain
    from callrec.crypto.auditkeys import AuditKeyError
    from callrec.crypto.keys import KeyProviderError
    from callrec.db.pool import create_pool
    from callrec.storage import open_object_store

    async def run() -> tuple[int, str]:
        store = open_object_store(config.storage, root=config.storage_path)
        pool = await create_pool(config)
        try:
            outcome = await anchor_chain(
                pool,
                open_anchor_store(config, store),
                interval=config.audit.anchor_interval,
                force=True,
                wait=True,
            )
            assert outcome.anchor is not None and outcome.location is not None
            return outcome.anchor.seq, outcome.location
        finally:
            await pool.close()
            await store.close()

    try:
        seq, location = asyncio.run(run())
    except (AnchorError, AuditKeyError, KeyProviderError) as exc:
        return _fail(f"anchor not written: {exc}", 3)
    print(f"audit chain anchored at entry {seq}: {location}")
    return 0


def cmd_audit_rotate_key(config: Config, args: argparse.Namespace) -> int:
    """A new audit key: it MACs entries and anchors from now on; older keys stay to verify."""
    from callrec.crypto.auditkeys import AuditKeyError
    from callrec.crypto.keys import KeyProviderError
    from callrec.db import audit
    from callrec.db.pool import create_pool

    async def run() -> int:
        pool = await create_pool(config)
        try:
            async with pool.acquire() as conn:
                keyring = audit.keyring_of(conn)
                assert keyring is not None  # create_pool attaches it
                key_id = await keyring.rotate(conn)
                async with conn.transaction():
                    for tenant in config.tenants:  # each tenant's auditor sees it in their log
                        await audit.record(
                            conn,
                            tenant=tenant,
                            actor="cli",
                            action=audit.AuditAction.KEYS_ROTATED,
                            details={"audit_key_id": key_id},
                        )
            return key_id
        finally:
            await pool.close()

    try:
        key_id = asyncio.run(run())
    except (AuditKeyError, KeyProviderError) as exc:
        return _fail(f"no new audit key: {exc}", 3)
    print(
        f"new audit key {key_id}: it MACs entries and anchors from now on (processes already running "
        "keep using theirs until they restart); older keys are kept to verify older entries"
    )
    return 0


def cmd_jobs_list(config: Config, args: argparse.Namespace) -> int:
    from callrec.db import jobs
    from callrec.db.pool import connect

    async def run() -> list[jobs.Job]:
        async with connect(config) as conn:
            return await jobs.list_jobs(conn, state=args.state, tenant=args.tenant, limit=args.limit)

    found = asyncio.run(run())
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "id": j.id,
                        "tenant": j.tenant,
                        "kind": j.kind,
                        "state": j.state,
                        "attempts": j.attempts,
                        "last_error": j.last_error,
                        "updated_at": j.updated_at.isoformat(),
                    }
                    for j in found
                ],
                indent=2,
            )
        )
        return 0
    if not found:
        print(f"no {args.state} jobs")
    for j in found:
        print(
            f"{j.id}\t{j.tenant}\t{j.kind}\t{j.state}\tattempts={j.attempts}\t{j.updated_at:%Y-%m-%d %H:%M}\t"
            f"{j.last_error or ''}"
        )
    return 0


def cmd_jobs_retry(config: Config, args: argparse.Namespace) -> int:
    from callrec.db import audit, jobs
    from callrec.db.pool import connect

    async def run() -> list[int]:
        missing: list[int] = []
        async with connect(config) as conn:
            for job_id in args.job_id:
                async with conn.transaction():
                    job = await jobs.retry_dead(conn, job_id, tenant=args.tenant)
                    if job is None:
                        missing.append(job_id)
                        continue
                    await audit.record(
                        conn,
                        tenant=job.tenant,
                        actor="cli",
                        action=audit.AuditAction.INGEST_RETRIED,
                        details={"job_id": job.id, "kind": job.kind},
                    )
                print(f"job {job_id} queued again")
        return missing

    missing = asyncio.run(run())
    if missing:
        return _fail(f"not dead (or not found): {', '.join(map(str, missing))}", 1)
    return 0


def cmd_announcements_add(config: Config, args: argparse.Namespace) -> int:
    """Register an announcement prompt so the worker can verify it in recordings."""
    from callrec import audio
    from callrec.consent.announcement import Prompt, PromptError
    from callrec.db import announcements, audit
    from callrec.db.pool import create_pool
    from callrec.ingest.tags import parse_tags

    tenant = _tenant(config, args.tenant)
    parse_tags({"announcement": args.id, "announcement_version": args.version, "language": args.language})
    if not args.audio.is_file():
        return _fail(f"{args.audio}: no such file")
    audio.configure_ffmpeg()
    try:
        info = audio.probe_file(args.audio)
        Prompt.from_file(args.audio)
    except (audio.AudioError, PromptError) as exc:
        return _fail(f"{args.audio}: {exc}")
    data = args.audio.read_bytes()

    async def run() -> bool:
        pool = await create_pool(config)
        try:
            async with pool.acquire() as conn, conn.transaction():
                added = await announcements.add(
                    conn,
                    tenant=tenant,
                    announcement_id=args.id,
                    version=args.version,
                    language=args.language,
                    audio=data,
                )
                if added:
                    await audit.record(
                        conn,
                        tenant=tenant,
                        actor="cli",
                        action=audit.AuditAction.ANNOUNCEMENT_ADDED,
                        details={
                            "announcement": args.id,
                            "version": args.version,
                            "language": args.language,
                            "duration_ms": info.duration_ms,
                        },
                    )
            return added
        finally:
            await pool.close()

    if not asyncio.run(run()):
        return _fail(
            f"announcement {args.id!r} version {args.version!r} exists already; versions are immutable", 1
        )
    described = f"{args.id} v{args.version} ({args.language}, {info.duration_ms} ms)"
    print(f"{tenant}: announcement {described} registered")
    return 0


def cmd_announcements_list(config: Config, args: argparse.Namespace) -> int:
    from callrec.db import announcements
    from callrec.db.pool import connect

    tenant = _tenant(config, args.tenant)

    async def run() -> list[tuple[str, str, str, str]]:
        async with connect(config) as conn:
            return await announcements.list_for(conn, tenant=tenant)

    found = [(a.id, a.version, a.language, "config") for a in config.tenants[tenant].announcements.values()]
    found += asyncio.run(run())
    if not found:
        print(f"{tenant}: no announcements registered")
    for row in found:
        print("\t".join(row))
    return 0


# --- parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="callrec", description="Call-recording privacy middleware.")
    parser.add_argument(
        "--config",
        "-c",
        type=Path,
        help="TOML config file (default: $CALLREC_CONFIG, else embedded defaults in ./callrec-data)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the web service, workers and sweeper")
    serve.add_argument(
        "--no-workers", action="store_true", help="serve HTTP only; run `callrec worker` elsewhere"
    )
    serve.set_defaults(func=cmd_serve)
    sub.add_parser("worker", help="run ingest workers only").set_defaults(func=cmd_worker)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)
    sweep_p = sub.add_parser("sweep", help="destroy expired recordings that no legal hold covers")
    sweep_p.add_argument(
        "--dry-run", action="store_true", help="count what would be destroyed; change nothing"
    )
    sweep_p.set_defaults(func=cmd_sweep)
    storage_p = sub.add_parser("storage", help="the object store").add_subparsers(
        dest="storage_command", required=True
    )
    check_p = storage_p.add_parser("check", help="compare the S3 bucket's settings with what callrec needs")
    check_p.add_argument("--apply", action="store_true", help="set what is missing")
    check_p.add_argument(
        "--no-object-lock",
        action="store_true",
        help="with --apply: do not enable Object Lock (it cannot be undone)",
    )
    check_p.set_defaults(func=cmd_storage_check)
    orphans_p = storage_p.add_parser(
        "orphans", help="delete objects left by a crash between their put and its commit"
    )
    orphans_p.add_argument(
        "--dry-run", action="store_true", help="list what would be deleted; change nothing"
    )
    orphans_p.set_defaults(func=cmd_storage_orphans)

    token = sub.add_parser("token", help="API tokens").add_subparsers(dest="token_command", required=True)
    create = token.add_parser("create", help="create an API token and print it once")
    create.add_argument("name")
    create.add_argument("--scope", action="append", required=True, metavar="SCOPE")
    create.add_argument("--tenant")
    create.set_defaults(func=cmd_token_create)

    keys = sub.add_parser("keys", help="key-encryption keys").add_subparsers(
        dest="keys_command", required=True
    )
    rotate = keys.add_parser("rotate", help="add a new KEK version; old recordings stay readable")
    rotate.add_argument("--tenant")
    rotate.set_defaults(func=cmd_keys_rotate)

    audit_p = sub.add_parser("audit", help="the audit log").add_subparsers(
        dest="audit_command", required=True
    )
    audit_p.add_parser(
        "verify",
        help="check the hash chain, every MAC and every anchor; exit 0 intact, 1 broken, "
        "3 could not check, 4 not yet authenticated",
    ).set_defaults(func=cmd_audit_verify)
    audit_p.add_parser("anchor", help="anchor the chain's head outside the database now").set_defaults(
        func=cmd_audit_anchor
    )
    audit_p.add_parser(
        "rotate-key", help="a new audit key for MACs from now on; older keys stay to verify"
    ).set_defaults(func=cmd_audit_rotate_key)

    user = sub.add_parser("user", help="staff accounts for the portal").add_subparsers(
        dest="user_command", required=True
    )
    user_add = user.add_parser("add", help="create a staff account (prints the MFA enrolment URI)")
    user_add.add_argument("email")
    user_add.add_argument(
        "--role", required=True, help="support, supervisor, privacy, legal, auditor or admin"
    )
    user_add.add_argument("--tenant")
    user_add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    user_add.set_defaults(func=cmd_user_add)

    ann = sub.add_parser("announcements", help="announcement prompts verified in recordings").add_subparsers(
        dest="announcements_command", required=True
    )
    add = ann.add_parser("add", help="register the prompt audio of an announcement version")
    add.add_argument("id", help="the id callbacks claim, e.g. rec-notice")
    add.add_argument("audio", type=Path, help="the prompt as played to callers (WAV, MP3, ...)")
    add.add_argument("--version", required=True)
    add.add_argument("--language", required=True, help="BCP 47, e.g. en-GB")
    add.add_argument("--tenant")
    add.set_defaults(func=cmd_announcements_add)
    ann_list = ann.add_parser("list", help="registered announcements (config file and CLI)")
    ann_list.add_argument("--tenant")
    ann_list.set_defaults(func=cmd_announcements_list)

    jobs_p = sub.add_parser("jobs", help="the ingest job queue").add_subparsers(
        dest="jobs_command", required=True
    )
    ls = jobs_p.add_parser("list", help="list jobs (dead ones by default)")
    ls.add_argument("--state", default="dead", choices=("queued", "running", "done", "dead"))
    ls.add_argument("--tenant")
    ls.add_argument("--limit", type=int, default=100)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_jobs_list)
    retry = jobs_p.add_parser("retry", help="queue dead jobs again")
    retry.add_argument("job_id", type=int, nargs="+")
    retry.add_argument("--tenant")
    retry.set_defaults(func=cmd_jobs_retry)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}")
    _setup_logging(config)
    try:
        result: int = args.func(config, args)
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}")
    except CallrecError as exc:
        return _fail(exc.message)
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
