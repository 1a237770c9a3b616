"""Prometheus metrics, one registry per app (no process-global state).

What an on-call engineer needs first: are webhooks being acknowledged, is the queue draining,
are jobs dying. Queue depth and the age of the oldest runnable job are read from PostgreSQL at
scrape time, so every process reports the shared truth. Labels never carry tenant secrets,
phone numbers or recording ids.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from callrec.anchoring.service import last_anchor
from callrec.appkeys import db_key


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "callrec_http_requests",
            "HTTP requests by route and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "callrec_http_request_seconds",
            "HTTP request latency by route",
            ["route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.jobs_finished = Counter(
            "callrec_jobs_finished",
            "Jobs finished by kind and outcome (done, retry, dead)",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.job_seconds = Histogram(
            "callrec_job_seconds",
            "Time to process one job attempt",
            ["kind"],
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        self.ingested_bytes = Counter(
            "callrec_ingested_audio_bytes",
            "Audio bytes stored (before encryption)",
            registry=self.registry,
        )
        self.queue_jobs = Gauge(
            "callrec_queue_jobs",
            "Jobs in the queue by state",
            ["state"],
            registry=self.registry,
        )
        self.queue_oldest = Gauge(
            "callrec_queue_oldest_runnable_seconds",
            "Age of the oldest job that is due and not yet done",
            registry=self.registry,
        )
        # Anchoring the audit chain outside the database (callrec.anchoring): the newest anchor's
        # time, read at scrape time from the database and believed only when its MAC checks out
        # (0 when there is none), and this process's failed attempts. Alert on either.
        self.audit_anchor_last_success = Gauge(
            "callrec_audit_anchor_last_success_timestamp_seconds",
            "Unix time of the newest anchor of the audit chain written outside the database",
            registry=self.registry,
        )
        self.audit_anchor_failures = Counter(
            "callrec_audit_anchor_failures",
            "Failed attempts of this process to anchor the audit chain",
            registry=self.registry,
        )


metrics_key = web.AppKey("metrics", Metrics)


async def metrics_handler(request: web.Request) -> web.Response:
    metrics = request.app[metrics_key]
    async with request.app[db_key].acquire() as conn:
        rows = await conn.fetch("SELECT state, count(*) AS n FROM jobs GROUP BY state")
        oldest = await conn.fetchval(
            """SELECT coalesce(extract(epoch FROM now() - min(run_at)), 0) FROM jobs
               WHERE state = 'queued' AND run_at <= now()
                  OR state = 'running' AND lease_until < now()"""
        )
        anchor = await last_anchor(conn)
    counts = {r["state"]: r["n"] for r in rows}
    for state in ("queued", "running", "done", "dead"):
        metrics.queue_jobs.labels(state).set(counts.get(state, 0))
    metrics.queue_oldest.set(float(oldest or 0))
    metrics.audit_anchor_last_success.set(anchor.anchor.at.timestamp() if anchor and anchor.authentic else 0)
    body = generate_latest(metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
