"""Anchoring the audit chain outside the database (DESIGN.md rule 9).

Whoever holds the database can remove the newest audit entries and roll ``audit_head`` back with
them: the MACs of what is left still verify. An anchor, a MACed copy of the chain's head written
where the database's holder cannot change it, shows how far the chain reached at that moment, so
``callrec audit verify`` sees a log that ends before its newest anchor, or an entry that differs
from what an anchor recorded. Anchors are written every ``[audit] anchor_interval`` by one process
at a time (:mod:`callrec.anchoring.service`) and on demand (``callrec audit anchor``).

Two stores, chosen by the object store's backend:

- S3 (:class:`~callrec.anchoring.s3.S3AnchorStore`): one object per anchor under
  ``[audit] anchor_prefix``, locked by S3 Object Lock in compliance mode for
  ``[audit] anchor_retention``: not even the bucket's owner can delete or overwrite it before then.
- filesystem (:class:`~callrec.anchoring.filesystem.FileAnchorStore`): an append-only file, one
  JSON line per anchor, opened with ``O_APPEND`` and fsynced. Put it where the database's
  administrators cannot write (another machine's mount, ``chattr +a``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from callrec.anchoring.record import Anchor
from callrec.config import Config
from callrec.storage.base import ObjectStore

__all__ = ["Anchor", "AnchorError", "AnchorStore", "AnchorsRead", "open_anchor_store"]


class AnchorError(Exception):
    """The anchor store refused an anchor or cannot be reached or read. The message names the
    store and the error's code, never a credential."""


@dataclass(frozen=True)
class AnchorsRead:
    """Every anchor in the store, oldest first, and what the store holds that is not an anchor
    (``problems``: a torn or foreign line, an object that is no anchor), which verify reports."""

    anchors: list[Anchor]
    problems: list[str] = field(default_factory=list)


class AnchorStore(Protocol):
    @property
    def description(self) -> str:
        """Where the anchors go, for people: ``file /path`` or ``s3://bucket/prefix``."""
        ...

    async def put(self, anchor: Anchor) -> str:
        """Write ``anchor`` durably (fsynced; on S3, acknowledged under Object Lock) and return
        where it went. Raises :class:`AnchorError`."""
        ...

    async def read_all(self) -> AnchorsRead:
        """Every anchor written. Raises :class:`AnchorError` when the store cannot be read."""
        ...


def open_anchor_store(config: Config, store: ObjectStore) -> AnchorStore:
    """The anchor store beside ``store``: its bucket on S3, else the anchor file."""
    from callrec.storage.s3 import S3ObjectStore  # the S3 store imports boto3 only when used

    if isinstance(store, S3ObjectStore):
        from callrec.anchoring.s3 import S3AnchorStore

        return S3AnchorStore(
            store, prefix=config.audit.anchor_prefix, retention=config.audit.anchor_retention
        )
    from callrec.anchoring.filesystem import FileAnchorStore

    return FileAnchorStore(config.anchor_path)
