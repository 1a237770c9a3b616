"""The audit chain's status on the auditor's page, without walking the whole log on every view.

Walking the chain costs about 17 to 20 µs an entry (docs/benchmarks.md): 17 s for a million entries,
far too long for a page. So the status keeps what it has verified (the newest entry found intact,
its hash and its MAC): a view walks only the entries added since, and the whole chain is walked
again when the last full walk is older than ``FULL_EVERY``; ``callrec serve`` does that in the
background, so views seldom wait for it. A full walk also checks the chain against every anchor in
the anchor store (a truncation shows there). An edit to an old entry is therefore shown within
``FULL_EVERY``; ``callrec audit verify`` walks everything at once.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
from aiohttp import web

from callrec.anchoring import AnchorError, AnchorStore
from callrec.crypto.auditkeys import AuditKeyError
from callrec.crypto.keys import KeyProviderError
from callrec.db import audit

log = logging.getLogger(__name__)

FULL_EVERY = timedelta(hours=1)


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    through_seq: int  # entries 1..through_seq are verified
    problems: list[str]
    full_walk_at: datetime  # when the whole chain was last walked
    authenticated: bool = False  # the chain carries MACs (from its checkpoint on)
    anchors: int | None = None  # anchors checked by the last full walk; None: not read
    anchor_note: str = ""  # why the anchors were not read
    key_ids: tuple[int, ...] = field(default=())


class ChainStatus:
    def __init__(self, *, full_every: timedelta = FULL_EVERY) -> None:
        self.full_every = full_every
        self._lock = asyncio.Lock()
        # (seq, hash, MAC) of the newest entry verified
        self._good: tuple[int, bytes, bytes | None] | None = None
        self._full_at: datetime | None = None
        self._anchors: int | None = None
        self._anchor_note = ""

    async def check(self, pool: asyncpg.Pool, anchors: AnchorStore | None = None) -> ChainReport:
        """Verify what is new (or everything, when a full walk is due: then against the anchors
        in ``anchors`` too)."""
        async with self._lock:  # one walk at a time; a second view waits and walks what is left
            now = datetime.now(UTC)
            full = self._good is None or self._full_at is None or now - self._full_at >= self.full_every
            after, prev, prev_mac = (0, audit.GENESIS, None) if full or self._good is None else self._good
            found = None
            if full and anchors is not None:
                try:
                    found = await anchors.read_all()
                    self._anchor_note = ""
                except AnchorError as exc:
                    self._anchor_note = f"the anchors could not be read: {exc}"
                    log.warning("audit chain check: %s", self._anchor_note)
            async with pool.acquire() as conn:
                result = await audit.verify(
                    conn,
                    after_seq=after,
                    prev_hash=prev,
                    prev_mac=prev_mac,
                    anchors=found.anchors if found is not None else None,
                )
            problems = [*result.problems, *(found.problems if found is not None else [])]
            ok = not problems
            if full:
                self._full_at = now
                self._anchors = result.anchors if found is not None else None
            # A broken chain is walked in full next time, so that the page never shows a
            # problem as gone because only newer entries were looked at.
            self._good = (result.last_seq, result.last_hash, result.last_mac) if ok else None
            if not ok:
                self._full_at = None
            return ChainReport(
                ok=ok,
                through_seq=result.last_seq,
                problems=problems,
                full_walk_at=now if full else self._full_at or now,
                authenticated=result.authenticated,
                anchors=self._anchors,
                anchor_note=self._anchor_note,
                key_ids=result.key_ids,
            )


chain_key = web.AppKey("audit_chain_status", ChainStatus)


async def run_full_walks(
    app: web.Application, pool: asyncpg.Pool, anchors: AnchorStore | None = None
) -> None:
    """In ``callrec serve``: keep the full walk fresh, so that auditors' views find it done."""
    status = app[chain_key]
    while True:
        try:
            await status.check(pool, anchors)
        except (
            OSError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            TimeoutError,
            AuditKeyError,
            KeyProviderError,
        ):
            log.warning("audit chain check failed; trying again later", exc_info=True)
        await asyncio.sleep(max(status.full_every.total_seconds() / 2, 1.0))
