"""How long a recording is kept: the tenant's retention, shortened (never lengthened) for a
purpose that needs less (GDPR Art. 5(1)(e), storage limitation)."""

from __future__ import annotations

from datetime import timedelta

from callrec.config import Config


def retention_for(config: Config, tenant: str, purpose: str | None) -> timedelta:
    settings = config.tenants[tenant]
    retention: timedelta = settings.retention
    by_purpose = settings.policy.purpose_retention
    if purpose and purpose in by_purpose:
        retention = min(retention, by_purpose[purpose])
    return retention
