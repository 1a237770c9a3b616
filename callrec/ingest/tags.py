"""Consent and announcement tags that ride on a webhook's query string (signed with it) or in
a PBX upload's metadata. Validated here; the consent policy (its own issue) decides on them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from callrec.consent.policy import LAWFUL_BASES  # GDPR Art. 6(1)(a)-(f)
from callrec.errors import BadRequest

CONSENT_STATUSES = ("granted", "declined", "implied", "unknown")

TAG_NAMES = ("announcement", "announcement_version", "language", "consent", "basis", "purpose", "agent")

_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
# BCP 47, loosely: "en", "en-GB", "nb-NO", "zh-Hant-TW".
_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8}){0,3}$")


@dataclass(frozen=True)
class Tags:
    announcement: dict[str, Any] = field(default_factory=dict)
    consent: dict[str, Any] = field(default_factory=dict)
    agent: str | None = None

    def as_payload(self) -> dict[str, Any]:
        return {"announcement": self.announcement, "consent": self.consent, "agent": self.agent}

    @classmethod
    def from_payload(cls, raw: Mapping[str, Any]) -> Tags:
        return cls(
            announcement=dict(raw.get("announcement") or {}),
            consent=dict(raw.get("consent") or {}),
            agent=raw.get("agent"),
        )


def _token(name: str, value: object) -> str:
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise BadRequest(f"tag {name!r} must be 1-64 letters, digits or . _ : -", code="invalid_tag")
    return value


def parse_tags(raw: Mapping[str, object]) -> Tags:
    """Validate the tags present in ``raw``; unknown keys are the caller's business."""
    announcement: dict[str, Any] = {}
    consent: dict[str, Any] = {}
    if raw.get("announcement") is not None:
        announcement["id"] = _token("announcement", raw["announcement"])
        announcement["claimed"] = True
    if raw.get("announcement_version") is not None:
        announcement["version"] = _token("announcement_version", raw["announcement_version"])
    language = raw.get("language")
    if language is not None:
        if not isinstance(language, str) or not _LANGUAGE.match(language):
            raise BadRequest("tag 'language' must be a BCP 47 language tag such as en-GB", code="invalid_tag")
        announcement["language"] = language
    status = raw.get("consent")
    if status is not None:
        if status not in CONSENT_STATUSES:
            raise BadRequest(
                f"tag 'consent' must be one of {', '.join(CONSENT_STATUSES)}", code="invalid_tag"
            )
        consent["status"] = status
    basis = raw.get("basis")
    if basis is not None:
        if basis not in LAWFUL_BASES:
            raise BadRequest(f"tag 'basis' must be one of {', '.join(LAWFUL_BASES)}", code="invalid_tag")
        consent["basis"] = basis
    if raw.get("purpose") is not None:
        consent["purpose"] = _token("purpose", raw["purpose"])
    agent = _token("agent", raw["agent"]) if raw.get("agent") is not None else None
    return Tags(announcement=announcement, consent=consent, agent=agent)
