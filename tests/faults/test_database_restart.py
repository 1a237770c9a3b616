"""PostgreSQL (a server of this test's own) stopped and started again under load: webhooks and API
calls get 503 with Retry-After while it is down, never a 500 (a request in flight at the shutdown
included); callrec recovers without a restart; no acknowledged job is lost."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from fault_support import (
    RssSampler,
    listen_token,
    new_twilio_sid,
    peak_rss_mib,
    post_twilio,
    post_upload,
    upload_metadata,
    wait_until,
)

from callrec.app import create_app
from callrec.appkeys import db_key

DOWN_S = 15


async def test_a_database_restart_under_load_answers_503_then_recovers_and_loses_nothing(
    app_config: Any,
    own_postgres: Any,
    aiohttp_client: Any,
    fake_twilio: Any,
    audio_fixtures: Path,
    counts: dict[str, Any],
) -> None:
    cfg = app_config(
        database={"url": own_postgres.url},
        ingest={"retry_base": "1s", "workers": 2},
        retention={"sweep_in_serve": False},
    )
    client = await aiohttp_client(create_app(cfg, run_workers=True))
    app = client.app
    audio = (audio_fixtures / "call-without-announcement.wav").read_bytes()
    token = await listen_token(app)
    auth = {"Authorization": f"Bearer {token}"}
    acknowledged: set[str] = set()
    refused: list[tuple[str, str]] = []  # (kind, id) answered 503, to be sent again
    statuses: dict[str, list[int]] = {"twilio": [], "upload": [], "api": []}
    sent = 0

    async def twilio(sid: str | None = None) -> int:
        nonlocal sent
        sid = sid or new_twilio_sid()
        fake_twilio.media[sid] = audio
        sent += 1
        resp = await post_twilio(client, fake_twilio, sid)
        if resp.status in (200, 202):
            acknowledged.add(sid)
        elif resp.status == 503:
            assert int(resp.headers["Retry-After"]) > 0
            refused.append(("twilio", sid))
        return int(resp.status)

    async def upload(name: str) -> int:
        nonlocal sent
        sent += 1
        resp = await post_upload(client, upload_metadata(name), audio)
        if resp.status in (200, 202):
            acknowledged.add(name)
        elif resp.status == 503:
            assert int(resp.headers["Retry-After"]) > 0
            refused.append(("upload", name))
        return int(resp.status)

    async def api() -> int:
        resp = await client.get("/api/v1/recordings", headers=auth)
        if resp.status == 503:
            assert int(resp.headers["Retry-After"]) > 0
            assert (await resp.json())["error"]["code"] == "unavailable"
        return int(resp.status)

    async with RssSampler() as rss:
        for i in range(4):
            assert await twilio() == 202
            assert await upload(f"before-{i}") == 202
            assert await api() == 200
        async with app[db_key].acquire() as conn:
            acked_before = {r["dedupe_key"] for r in await conn.fetch("SELECT dedupe_key FROM jobs")}

        # One callback in flight when the server shuts down (fast mode, as a restart or a failover
        # does): its insert waits on a row lock that another session holds.
        in_flight_sid = new_twilio_sid()
        blocker = await asyncpg.connect(own_postgres.url)
        await blocker.execute("BEGIN")
        await blocker.execute(
            """INSERT INTO jobs (tenant, kind, dedupe_key, payload, max_attempts)
               VALUES ('acme', 'ingest.twilio', $1, '{}', 1)""",
            in_flight_sid,
        )
        in_flight = asyncio.create_task(twilio(in_flight_sid))
        async with app[db_key].acquire() as conn:

            async def waiting() -> bool:
                n = await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                )
                return bool(n == 1)

            assert await wait_until(waiting, timeout=20, step=0.1)

        await asyncio.to_thread(own_postgres.stop)
        down_at = time.monotonic()
        assert await asyncio.wait_for(in_flight, 30) == 503
        blocker.terminate()
        i = 0
        while time.monotonic() - down_at < DOWN_S:
            statuses["twilio"].append(await twilio())
            statuses["upload"].append(await upload(f"down-{i}"))
            statuses["api"].append(await api())
            assert (await client.get("/healthz")).status == 200
            i += 1
            await asyncio.sleep(1)
        ready = await client.get("/readyz")
        assert ready.status == 503 and (await ready.json())["checks"]["database"].startswith("unavailable")
        await asyncio.to_thread(own_postgres.start)
        down_s = round(time.monotonic() - down_at, 1)
        during = [503] + statuses["twilio"] + statuses["upload"] + statuses["api"]  # with the one in flight
        assert set(during) == {503}, during  # every request while it was down: 503, none a 500

        # Recovery without restarting callrec: the pool reconnects by itself.
        after: list[int] = []

        async def api_back() -> bool:
            after.append(await api())
            return after[-1] == 200

        assert await wait_until(api_back, timeout=30, step=0.5)
        for kind, name in list(refused):  # the senders retry what was refused
            assert await (twilio(name) if kind == "twilio" else upload(name)) in (200, 202)
        for i in range(4):
            assert await twilio() == 202
            assert await upload(f"after-{i}") == 202

        async def drained() -> bool:
            async with app[db_key].acquire() as conn:
                n = await conn.fetchval("SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')")
            return bool(n == 0)

        assert await wait_until(drained, timeout=90, step=0.5)

    async with app[db_key].acquire() as conn:
        stored = [
            r["provider_recording_id"]
            for r in await conn.fetch("SELECT provider_recording_id FROM recordings")
        ]
        states = {r["state"] for r in await conn.fetch("SELECT state FROM jobs")}
        jobs_now = {r["dedupe_key"] for r in await conn.fetch("SELECT dedupe_key FROM jobs")}
    assert acked_before <= jobs_now  # no acknowledged job lost across the restart
    assert sorted(stored) == sorted(acknowledged) and states == {"done"}
    counts.update(
        down_s=down_s,
        sent=sent,
        acknowledged=len(acknowledged),
        refused_503_while_down=len(during),
        errors_500=during.count(500),
        requests_503_after_restart=after.count(503),
        stored=len(stored),
        duplicates=len(stored) - len(set(stored)),
        peak_rss_mib_test_process=peak_rss_mib(rss.peak_kib),
    )


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.CrashShutdownError("terminating connection because of crash of another server process"),
        asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress"),
    ],
)
async def test_errors_of_a_database_going_away_are_503_not_500(
    app_config: Any, aiohttp_client: Any, error: Exception
) -> None:
    """What asyncpg raises when the server ends a session under a statement (the restart test
    meets the last one when a callback's insert returns just before its session is terminated)."""
    app = create_app(app_config(), run_workers=False)

    async def failing(request: web.Request) -> web.Response:
        raise error

    app.router.add_post("/webhooks/test-only", failing)
    client = await aiohttp_client(app)
    resp = await client.post("/webhooks/test-only")
    assert resp.status == 503
    assert int(resp.headers["Retry-After"]) > 0
    assert (await resp.json())["error"]["code"] == "unavailable"
