"""What a legal hold covers: the pure rule behind the SQL function ``hold_covers``.

A hold's scope is a conjunction of the criteria that are set; each list criterion matches any of
its items. A scope with no criterion at all is refused (it would silently hold everything).
The time range is half-open, [from, to), on the call's start (or, unknown, the time it was stored).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Scope:
    recording_ids: frozenset[uuid.UUID] | None = None
    call_ids: frozenset[str] | None = None
    phone_hashes: frozenset[bytes] | None = None
    time_from: datetime | None = None
    time_to: datetime | None = None
    agent: str | None = None

    def is_empty(self) -> bool:
        return all(
            v is None
            for v in (
                self.recording_ids,
                self.call_ids,
                self.phone_hashes,
                self.time_from,
                self.time_to,
                self.agent,
            )
        )


@dataclass(frozen=True)
class Facts:
    """What of a recording a hold looks at."""

    id: uuid.UUID
    call_id: str
    from_hash: bytes | None
    to_hash: bytes | None
    when: datetime
    agent: str | None


def covers(scope: Scope, rec: Facts) -> bool:
    if scope.is_empty():
        return False
    if scope.recording_ids is not None and rec.id not in scope.recording_ids:
        return False
    if scope.call_ids is not None and rec.call_id not in scope.call_ids:
        return False
    if scope.phone_hashes is not None and not ({rec.from_hash, rec.to_hash} & scope.phone_hashes):
        return False
    if scope.time_from is not None and rec.when < scope.time_from:
        return False
    if scope.time_to is not None and rec.when >= scope.time_to:
        return False
    return scope.agent is None or rec.agent == scope.agent
