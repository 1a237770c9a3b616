"""The audit chain's status on the auditor's page, without walking the whole log on every view.

Walking the chain costs about 17 to 20 µs an entry (docs/benchmarks.md): 17 s for a million entries,
far too long for a page. So the status keeps what it has verified (the newest entry found intact
and its hash): a view walks only the entries added since, and the whole chain is walked again when
the last full walk is older than ``FULL_EVERY``; ``callrec serve`` does that in the background, so
views seldom wait for it. An edit to an old entry is therefore shown within ``FULL_EVERY``;
``callrec audit verify`` walks everything at once.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from aiohttp import web

from callrec.db import audit

log = logging.getLogger(__name__)

FULL_EVERY = timedelta(hours=1)


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    through_seq: int  # entries 1..through_seq are verified
    problems: list[str]
    full_walk_at: datetime  # when the whole chain was last walked


class ChainStatus:
    def __init__(self, *, full_every: timedelta = FULL_EVERY) -> None:
        self.full_every = full_every
        self._lock = asyncio.Lock()
        self._good: tuple[int, bytes] | None = None  # (seq, hash) of the newest entry verified
        self._full_at: datetime | None = None

    async def check(self, pool: asyncpg.Pool) -> ChainReport:
        async with self._lock:  # one walk at a time; a second view waits and walks what is left
            now = datetime.now(UTC)
            full = self._good is None or self._full_at is None or now - self._full_at >= self.full_every
            after, prev = (0, audit.GENESIS) if full or self._good is None else self._good
            async with pool.acquire() as conn:
                result = await audit.verify(conn, after_seq=after, prev_hash=prev)
            if full:
                self._full_at = now
            # A broken chain is walked in full next time, so that the page never shows a
            # problem as gone because only newer entries were looked at.
            self._good = (result.last_seq, result.last_hash) if result.ok else None
            if not result.ok:
                self._full_at = None
            return ChainReport(
                ok=result.ok,
                through_seq=result.last_seq,
                problems=result.problems,
                full_walk_at=now if full else self._full_at or now,
            )


chain_key = web.AppKey("audit_chain_status", ChainStatus)


async def run_full_walks(app: web.Application, pool: asyncpg.Pool) -> None:
    """In ``callrec serve``: keep the full walk fresh, so that auditors' views find it done."""
    status = app[chain_key]
    while True:
        try:
            await status.check(pool)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            log.warning("audit chain check failed; trying again later", exc_info=True)
        await asyncio.sleep(max(status.full_every.total_seconds() / 2, 1.0))
