"""The attacks of issue 9 (defect 3) on the audit chain, done as the database's owner would."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from callrec.db import audit


async def rewrite_as_owner(conn: Any, *, seq: int, actor: str) -> int:
    """What issue 9 did with database-owner rights, in one transaction: switch the no-update
    trigger off, change entry ``seq``'s actor, recompute ``prev_hash``/``hash`` of it and of every
    later entry with callrec's own functions, point ``audit_head`` at the new hashes, switch the
    trigger on again. Returns how many entries were rewritten. Uses nothing that a hash chain
    alone would not also give an attacker (the same code ran against main before the MACs)."""
    async with conn.transaction():
        await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
        rows = await conn.fetch(
            "SELECT seq, at, tenant, actor, action, recording_id, details, prev_hash FROM audit_log "
            "WHERE seq >= $1 ORDER BY seq",
            seq,
        )
        prev = bytes(rows[0]["prev_hash"])
        for row in rows:
            new_actor = actor if row["seq"] == seq else row["actor"]
            digest = audit.entry_hash(
                prev,
                audit._canonical(
                    seq=row["seq"],
                    at=row["at"],
                    tenant=row["tenant"],
                    actor=new_actor,
                    action=row["action"],
                    recording_id=row["recording_id"],
                    details=json.loads(row["details"]),
                ),
            )
            await conn.execute(
                "UPDATE audit_log SET actor = $2, prev_hash = $3, hash = $4 WHERE seq = $1",
                row["seq"],
                new_actor,
                prev,
                digest,
            )
            prev = digest
        await conn.execute("UPDATE audit_head SET seq = $1, hash = $2", rows[-1]["seq"], prev)
        await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")
    return len(rows)


async def truncate_as_owner(conn: Any, *, keep: int) -> None:
    """Remove every entry after ``keep`` and roll ``audit_head`` back to entry ``keep``: the
    hash links and MACs of what is left all still verify."""
    async with conn.transaction():
        await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
        await conn.execute("DELETE FROM audit_log WHERE seq > $1", keep)
        last = await conn.fetchrow("SELECT seq, hash, mac FROM audit_log WHERE seq = $1", keep)
        await conn.execute(
            "UPDATE audit_head SET seq = $1, hash = $2, mac = $3", keep, last["hash"], last["mac"]
        )
        await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")


async def legacy_append(conn: Any, n: int) -> None:
    """Entries as callrec's record() wrote them before 0007: hash chain and head, no MAC."""
    for i in range(n):
        head = await conn.fetchrow("SELECT seq, hash FROM audit_head WHERE id")
        seq, prev = (head["seq"] + 1, bytes(head["hash"])) if head else (1, audit.GENESIS)
        at = datetime.now(UTC)
        details = {"i": i}
        digest = audit.entry_hash(
            prev,
            audit._canonical(
                seq=seq,
                at=at,
                tenant="acme",
                actor="test",
                action="recording:viewed",
                recording_id=None,
                details=details,
            ),
        )
        await conn.execute(
            """INSERT INTO audit_log (seq, at, tenant, actor, action, details, prev_hash, hash)
               VALUES ($1, $2, 'acme', 'test', 'recording:viewed', $3, $4, $5)""",
            seq,
            at,
            json.dumps(details),
            prev,
            digest,
        )
        await conn.execute(
            """INSERT INTO audit_head (id, seq, hash) VALUES (true, $1, $2)
               ON CONFLICT (id) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash""",
            seq,
            digest,
        )
