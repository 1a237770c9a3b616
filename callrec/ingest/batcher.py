"""Group commit for webhook acknowledgements.

A webhook may be acknowledged only once its job is committed (DESIGN.md, rule 4). Committing each
one in its own transaction costs several database round trips per request on one event loop. Here,
requests that arrive while a flush is in progress wait together and are written by the next flush
in a single ``INSERT ... SELECT FROM unnest(...)``; each request is answered only after the
statement that holds its job has committed. Under light load a flush holds one job and costs what
a single insert does; under heavy load the batch grows and the cost per acknowledgement falls.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg

from callrec.db import jobs


class JobBatcher:
    def __init__(self, pool: asyncpg.Pool, *, max_batch: int = 500) -> None:
        self._pool = pool
        self._max_batch = max_batch
        self._pending: list[tuple[jobs.NewJob, asyncio.Future[tuple[int, bool]]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def enqueue(
        self, *, tenant: str, kind: str, dedupe_key: str, payload: dict[str, Any], max_attempts: int
    ) -> tuple[int, bool]:
        """``(job_id, created)`` once the job is committed; raises what the database raised."""
        future: asyncio.Future[tuple[int, bool]] = asyncio.get_running_loop().create_future()
        self._pending.append((jobs.NewJob(tenant, kind, dedupe_key, payload, max_attempts), future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        # A cancelled request must not cancel the flush its job is part of: shield the wait.
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
            try:
                async with self._pool.acquire() as conn:
                    results = await jobs.enqueue_many(conn, [item for item, _ in batch])
            except Exception as exc:  # every caller in the batch gets the failure (a 503, nothing acked)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def close(self) -> None:
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher
