"""Object intents: a row written before every object put, removed when the object's reference
commits (migration 0008). What stays behind names the objects that may have no reference: the
orphan collector (:mod:`callrec.storage.orphans`) reads them instead of listing the bucket.

The protocol that keeps a referenced object safe from the collector:

- a writer records the intent (:func:`record`) in its own committed transaction, then puts;
- the transaction that commits the reference removes the intent (:func:`clear`) and must find it
  unclaimed, or roll back (:class:`ObjectCollected`);
- the collector claims intents (:func:`claim_orphans`) only when they are older than the grace
  period and no recording and no queued or running job names their key, marks them, commits,
  and only then deletes the object. A writer that cleared first has committed its reference and
  the collector's claim skips the row; a collector that claimed first makes the writer's clear
  find nothing. Either way an object is never both referenced and deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from callrec.db import Conn


class ObjectCollected(Exception):
    """The orphan collector claimed this object before its reference committed (the writer took
    longer than ``[storage] orphan_grace``): the reference must not commit; put again."""


@dataclass(frozen=True)
class Intent:
    object_key: str
    tenant: str
    created_by: str
    created_at: datetime
    collecting_since: datetime | None


_COLUMNS = "object_key, tenant, created_by, created_at, collecting_since"

# The key is named by a recording, or by a job that will still read or delete it.
_REFERENCED = """(EXISTS (SELECT 1 FROM recordings r WHERE r.object_key = i.object_key)
                  OR EXISTS (SELECT 1 FROM jobs j WHERE j.state IN ('queued', 'running')
                                                  AND j.payload->>'object_key' = i.object_key))"""


async def record(conn: Conn, *, tenant: str, object_key: str, by: str) -> None:
    """Record the intent to put ``object_key``. Call outside any transaction of the caller's, or
    commit it before the put: an intent that rolls back with a failed request protects nothing."""
    await conn.execute(
        """INSERT INTO object_intents (object_key, tenant, created_by) VALUES ($1, $2, $3)
           ON CONFLICT (object_key) DO NOTHING""",
        object_key,
        tenant,
        by,
    )


async def clear(conn: Conn, object_key: str) -> None:
    """Remove the intent in the transaction that commits a reference to the object. Raises
    :class:`ObjectCollected` when the collector has claimed it (or it is gone): the caller's
    transaction must roll back."""
    status = await conn.execute(
        "DELETE FROM object_intents WHERE object_key = $1 AND collecting_since IS NULL", object_key
    )
    if not status.endswith(" 1"):
        raise ObjectCollected("the object was collected as an orphan before its reference committed")


async def forget(conn: Conn, object_key: str) -> None:
    """Remove the intent of an object its writer has deleted (claimed or not: either way it is gone)."""
    await conn.execute("DELETE FROM object_intents WHERE object_key = $1", object_key)


async def claim_orphans(conn: Conn, *, grace: timedelta, limit: int) -> list[Intent]:
    """Claim up to ``limit`` intents older than ``grace`` whose key nothing references, oldest
    first, and return them; intents already claimed by a collector that did not finish are taken
    again. Rows a writer is clearing at this moment are skipped (``SKIP LOCKED``), and a claim is
    final once committed: commit before deleting any object."""
    rows = await conn.fetch(
        f"""UPDATE object_intents i SET collecting_since = coalesce(i.collecting_since, now())
            WHERE i.object_key IN (
                    SELECT object_key FROM object_intents
                    WHERE created_at < now() - $1::interval
                    ORDER BY created_at LIMIT $2
                    FOR UPDATE SKIP LOCKED)
              AND (i.collecting_since IS NOT NULL OR NOT {_REFERENCED})
            RETURNING {_COLUMNS}""",
        grace,
        limit,
    )
    return [Intent(**dict(r)) for r in rows]


async def drop_referenced(conn: Conn, *, grace: timedelta) -> int:
    """Remove old intents whose key is referenced after all (a writer committed its reference
    without clearing the intent): the object is not an orphan, and the row protects nothing."""
    status = await conn.execute(
        f"""DELETE FROM object_intents i
            WHERE i.created_at < now() - $1::interval AND i.collecting_since IS NULL AND {_REFERENCED}""",
        grace,
    )
    return int(status.split()[-1])


async def orphans(conn: Conn, *, grace: timedelta, limit: int) -> list[Intent]:
    """What :func:`claim_orphans` would take now, claiming nothing (for ``--dry-run``)."""
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM object_intents i
            WHERE i.created_at < now() - $1::interval
              AND (i.collecting_since IS NOT NULL OR NOT {_REFERENCED})
            ORDER BY i.created_at LIMIT $2""",
        grace,
        limit,
    )
    return [Intent(**dict(r)) for r in rows]


async def finish(conn: Conn, object_keys: list[str]) -> int:
    """Remove the claimed intents whose objects the collector has deleted."""
    status = await conn.execute(
        "DELETE FROM object_intents WHERE object_key = ANY($1::text[]) AND collecting_since IS NOT NULL",
        object_keys,
    )
    return int(status.split()[-1])
