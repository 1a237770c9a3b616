"""Writing anchors: one process at a time, every ``[audit] anchor_interval`` and on demand.

The election is a PostgreSQL advisory lock, taken for the transaction that writes one anchor: a
process that finds it taken leaves the anchor to the holder (``callrec audit anchor`` waits for it
instead). Whether an anchor is due is read from ``audit_anchor_last``, the copy of the newest
anchor that the writer keeps in the database; that copy carries the anchor's MAC, so a row forged
to look recent (to make anchoring stop) is seen as no anchor at all, and one is written.

The chain's head is read as committed, without the chain lock: writers of audit entries never
wait for the anchor store. Nothing here calls the key provider: the audit keys were unwrapped
when the pool was opened.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

import asyncpg

from callrec.anchoring import AnchorError, AnchorStore
from callrec.anchoring.record import Anchor
from callrec.crypto.auditkeys import AuditKeyError
from callrec.crypto.keys import KeyProviderError
from callrec.db import Conn, audit
from callrec.storage.base import StoreError

log = logging.getLogger(__name__)

ANCHOR_LOCK = 0x617564616E63  # "audanc": elects the one process that writes an anchor
WAIT_FOR_LOCK = timedelta(seconds=60)  # `callrec audit anchor` waits this long for another writer


@dataclass(frozen=True)
class Outcome:
    reason: Literal["written", "busy", "not-due"]
    anchor: Anchor | None = None
    location: str | None = None


@dataclass(frozen=True)
class LastAnchor:
    """The newest anchor as noted in the database; ``authentic`` False when its MAC does not
    check out (then ``anchor`` must not be believed)."""

    anchor: Anchor
    location: str
    authentic: bool

    def age(self, now: datetime) -> timedelta:
        return now - self.anchor.at


async def last_anchor(conn: Conn) -> LastAnchor | None:
    """The newest anchor written, checked with the connection's audit keys."""
    found = await audit.last_anchor(conn)
    if found is None:
        return None
    anchor, location = found
    keyring = audit.keyring_of(conn)
    if keyring is not None and anchor.key_id not in keyring.keys:
        try:
            await keyring.refresh(conn)  # a key rotated in by another process
        except KeyProviderError:
            log.warning("the audit key of the last anchor cannot be loaded now (key service unavailable)")
    authentic = keyring is not None and anchor.key_id in keyring.keys and anchor.authentic(keyring.keys)
    return LastAnchor(anchor, location, authentic)


def _fresh(last: LastAnchor | None, now: datetime, interval: timedelta) -> bool:
    # An anchor "from the future" is no reason to wait: the row (or a clock) is wrong.
    return last is not None and last.authentic and timedelta(0) <= last.age(now) < interval


async def anchor_chain(
    pool: asyncpg.Pool, store: AnchorStore, *, interval: timedelta, force: bool, wait: bool
) -> Outcome:
    """Write an anchor of the chain's current head, if this process wins the election and (unless
    ``force``) the last anchor is older than ``interval``. With ``wait``, wait up to
    :data:`WAIT_FOR_LOCK` for another writer instead of leaving it the job.

    Raises :class:`~callrec.anchoring.AnchorError` when the store refuses the anchor, or when the
    chain cannot be anchored (not authenticated yet, another writer stuck);
    :class:`~callrec.crypto.auditkeys.AuditKeyError` when the pool carries no audit key."""
    async with pool.acquire() as conn:
        keyring = audit.keyring_of(conn)
        if keyring is None:
            raise AuditKeyError("anchoring needs the audit key: open the database through callrec.db.pool")
        async with conn.transaction():
            if wait:
                await conn.execute(f"SET LOCAL lock_timeout = '{int(WAIT_FOR_LOCK.total_seconds())}s'")
                try:
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", ANCHOR_LOCK)
                except asyncpg.LockNotAvailableError:
                    raise AnchorError(
                        "another process has been writing an anchor for over a minute"
                    ) from None
            elif not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", ANCHOR_LOCK):
                return Outcome("busy")
            now = datetime.now(UTC)
            if not force and _fresh(await last_anchor(conn), now, interval):
                return Outcome("not-due")
            seq, head_mac = await audit.chain_head(conn)
            if head_mac is None:
                raise AnchorError(
                    "the audit chain is not authenticated yet (no checkpoint): nothing to anchor"
                )
            anchor = Anchor.make(keyring.keys, at=now, seq=seq, head_mac=head_mac)
            location = await store.put(anchor)
            await audit.save_anchor(conn, anchor, location)
    return Outcome("written", anchor, location)


class _Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


# What a failed attempt may raise without being a bug: the store, the database, the keys.
FAILURES = (
    AnchorError,
    StoreError,
    AuditKeyError,
    KeyProviderError,
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    TimeoutError,
)


async def run_periodic(
    pool: asyncpg.Pool, store: AnchorStore, *, interval: timedelta, failures: _Counter
) -> None:
    """In ``callrec serve`` and ``callrec worker``: try every few seconds to a minute (a tenth of
    the interval) so that an anchor follows soon after it falls due, whichever process writes it;
    count each failed attempt in ``failures`` (the metric an alert watches) and try again."""
    tick = min(max(interval.total_seconds() / 10, 1.0), 60.0)
    while True:
        try:
            outcome = await anchor_chain(pool, store, interval=interval, force=False, wait=False)
            if outcome.anchor is not None:
                log.info("audit chain anchored at entry %d in %s", outcome.anchor.seq, store.description)
        except FAILURES as exc:
            failures.inc()
            log.warning("anchoring the audit chain failed; trying again: %s: %s", type(exc).__name__, exc)
        await asyncio.sleep(tick)
