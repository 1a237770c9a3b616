"""One anchor: the audit chain's head at a moment, MACed, as written outside the database.

An anchor records when it was made, the seq of the chain's head then, the head's MAC (the MAC of
that entry, or of the checkpoint when no entry follows it) and the id of the audit key that MACed
the anchor itself. Two encodings of the same fields, each enough to check it:

- a JSON line (the filesystem's anchor file, and the body of an S3 anchor object);
- an object name (S3): the fields themselves, so that ``callrec audit verify`` learns a thousand
  anchors from one ListObjectVersions page instead of one GetObject each (an hourly anchor makes
  61,000 of them in seven years). Object Lock protects the name as much as the body.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from callrec.crypto.auditkeys import MAC_BYTES, AuditKeys

VERSION = 1
_NAME = re.compile(
    r"^(?P<seq>\d{16})-(?P<at>\d{8}T\d{6}\.\d{6}Z)-k(?P<key>\d{1,10})"
    r"-(?P<head>[0-9a-f]{64})-(?P<mac>[0-9a-f]{64})\.json$"
)
_NAME_TIME = "%Y%m%dT%H%M%S.%fZ"


@dataclass(frozen=True)
class Anchor:
    at: datetime
    seq: int
    head_mac: bytes
    key_id: int
    mac: bytes

    @staticmethod
    def canonical(*, at: datetime, seq: int, head_mac: bytes, key_id: int) -> bytes:
        body = {
            "v": VERSION,
            "at": at.astimezone(UTC).isoformat(timespec="microseconds"),
            "seq": seq,
            "head_mac": head_mac.hex(),
            "key_id": key_id,
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def make(cls, keys: AuditKeys, *, at: datetime, seq: int, head_mac: bytes) -> Anchor:
        """An anchor of entry ``seq`` (its MAC ``head_mac``), MACed with the newest audit key.
        ``at`` is kept to the microsecond, as every encoding carries it."""
        at = at.astimezone(UTC)
        key_id = keys.primary_id
        mac = keys.anchor_mac(key_id, cls.canonical(at=at, seq=seq, head_mac=head_mac, key_id=key_id))
        return cls(at=at, seq=seq, head_mac=head_mac, key_id=key_id, mac=mac)

    def authentic(self, keys: AuditKeys) -> bool:
        """Whether the MAC is right; the caller checks first that ``keys`` has ``key_id``."""
        canonical = self.canonical(at=self.at, seq=self.seq, head_mac=self.head_mac, key_id=self.key_id)
        return keys.same(keys.anchor_mac(self.key_id, canonical), self.mac)

    # --- encodings -----------------------------------------------------------------------------

    def to_json(self) -> str:
        """One line of JSON (no newline)."""
        body: dict[str, Any] = json.loads(
            self.canonical(at=self.at, seq=self.seq, head_mac=self.head_mac, key_id=self.key_id)
        )
        body["mac"] = self.mac.hex()
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str | bytes) -> Anchor:
        """Parse :meth:`to_json`'s line. Raises :class:`ValueError` for anything else."""
        try:
            body = json.loads(line)
            if not isinstance(body, dict) or body.get("v") != VERSION:
                raise ValueError("not an anchor")
            at = datetime.fromisoformat(body["at"])
            anchor = cls(
                at=at if at.tzinfo else at.replace(tzinfo=UTC),
                seq=body["seq"],
                head_mac=bytes.fromhex(body["head_mac"]),
                key_id=body["key_id"],
                mac=bytes.fromhex(body["mac"]),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError("not an anchor") from exc
        anchor._check()
        return anchor

    @property
    def name(self) -> str:
        """The object name (without prefix): sorts by seq."""
        return (
            f"{self.seq:016d}-{self.at.astimezone(UTC).strftime(_NAME_TIME)}-k{self.key_id}"
            f"-{self.head_mac.hex()}-{self.mac.hex()}.json"
        )

    @classmethod
    def from_name(cls, name: str) -> Anchor:
        """Parse :attr:`name`. Raises :class:`ValueError` for anything else."""
        match = _NAME.match(name)
        if match is None:
            raise ValueError("not an anchor name")
        anchor = cls(
            at=datetime.strptime(match["at"], _NAME_TIME).replace(tzinfo=UTC),
            seq=int(match["seq"]),
            head_mac=bytes.fromhex(match["head"]),
            key_id=int(match["key"]),
            mac=bytes.fromhex(match["mac"]),
        )
        anchor._check()
        return anchor

    def _check(self) -> None:
        if not isinstance(self.seq, int) or isinstance(self.seq, bool) or not 0 <= self.seq < 10**16:
            raise ValueError("anchor seq out of range")
        if not isinstance(self.key_id, int) or isinstance(self.key_id, bool) or self.key_id <= 0:
            raise ValueError("anchor key id out of range")
        if len(self.head_mac) != MAC_BYTES or len(self.mac) != MAC_BYTES:
            raise ValueError("anchor MACs have the wrong length")
