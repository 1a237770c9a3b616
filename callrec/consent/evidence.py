"""What the call itself says about consent and the announcement.

Evidence comes from two places that may disagree or arrive in any order: the tags that rode on
the recording's webhook (signed query string or upload metadata), and the signed call events
(``POST /webhooks/events/{tenant}``). Events are facts with times and win over tags; among events
the latest consent event decides, except that a caller who declined during the call stays
"opted out" for the policy even if a later event says otherwise (GDPR Art. 7(3): withdrawing must
be as easy as giving, and we err towards the refusal).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from callrec.db.events import CallEvent

CONSENT_METHODS = ("ivr_keypress", "verbal", "continued_after_notice", "none")
_CONSENT_EVENTS = {
    "consent_granted": "granted",
    "consent_declined": "declined",
    "consent_withdrawn": "withdrawn",
}


@dataclass(frozen=True)
class Evidence:
    consent: dict[str, Any]
    announcement: dict[str, Any]
    opted_out_during_call: bool
    pauses: list[tuple[str, datetime, bool]] = field(default_factory=list)

    @property
    def consent_status(self) -> str:
        return str(self.consent.get("status", "unknown"))


def gather(
    tags_consent: dict[str, Any], tags_announcement: dict[str, Any], events: Sequence[CallEvent]
) -> Evidence:
    """Combine webhook tags and call events into the consent and announcement records."""
    consent: dict[str, Any] = {
        "status": tags_consent.get("status", "unknown"),
        "method": None,
        "at": None,
        "basis": tags_consent.get("basis"),
        "purpose": tags_consent.get("purpose"),
    }
    opted_out = False
    announcement: dict[str, Any] = {
        "id": tags_announcement.get("id"),
        "version": tags_announcement.get("version"),
        "language": tags_announcement.get("language"),
        "played": bool(tags_announcement.get("id")),
        "played_at": None,
        "verified": None,
        "offset_ms": None,
        "score": None,
    }
    pauses: list[tuple[str, datetime, bool]] = []
    for event in sorted(events, key=lambda e: (e.at, e.id)):
        details = event.details
        if event.kind in _CONSENT_EVENTS:
            consent["status"] = _CONSENT_EVENTS[event.kind]
            consent["at"] = event.at.isoformat()
            method = details.get("method")
            consent["method"] = method if method in CONSENT_METHODS else None
            for name in ("basis", "purpose"):
                if details.get(name):
                    consent[name] = details[name]
            opted_out |= event.kind == "consent_declined"
        elif event.kind == "announcement_played":
            announcement["played"] = True
            announcement["played_at"] = event.at.isoformat()
            for name in ("id", "version", "language"):
                if details.get(name):
                    announcement[name] = details[name]
        elif event.kind in ("recording_paused", "recording_resumed"):
            pauses.append((event.kind, event.at, bool(details.get("cut_by_provider"))))
    if consent["method"] is None:
        consent["method"] = "continued_after_notice" if consent["status"] == "implied" else "none"
    return Evidence(
        consent=consent, announcement=announcement, opted_out_during_call=opted_out, pauses=pauses
    )
