"""Who may do what in the portal. Roles belong to one tenant; nothing crosses tenants.

- support: lists and plays recordings, but not restricted or quarantined ones.
- supervisor: support, plus the agent (performance) filters.
- privacy: deletion, access and restriction requests, quarantine review; opens restricted recordings.
- legal: legal holds; opens restricted recordings.
- auditor: reads the audit log only.
- admin: users, API tokens, tenant settings; no recordings.
"""

from __future__ import annotations

from aiohttp import web

LIST_RECORDINGS = "recordings:list"
LISTEN = "recordings:listen"
AGENT_FILTER = "recordings:agent-filter"
OPEN_RESTRICTED = "recordings:restricted"
QUARANTINE_REVIEW = "quarantine:review"
DELETIONS = "deletions"
ACCESS_REQUESTS = "access-requests"
RESTRICTIONS = "restrictions"
HOLDS = "holds"
AUDIT_LOG = "audit:read"
DEAD_JOBS = "jobs:dead"
ADMIN = "admin"

PERMISSIONS: dict[str, frozenset[str]] = {
    "support": frozenset({LIST_RECORDINGS, LISTEN}),
    "supervisor": frozenset({LIST_RECORDINGS, LISTEN, AGENT_FILTER}),
    "privacy": frozenset(
        {
            LIST_RECORDINGS,
            LISTEN,
            AGENT_FILTER,
            OPEN_RESTRICTED,
            QUARANTINE_REVIEW,
            DELETIONS,
            ACCESS_REQUESTS,
            RESTRICTIONS,
        }
    ),
    "legal": frozenset({LIST_RECORDINGS, LISTEN, AGENT_FILTER, OPEN_RESTRICTED, HOLDS}),
    "auditor": frozenset({AUDIT_LOG}),
    "admin": frozenset({ADMIN, DEAD_JOBS}),
}


def can(role: str, permission: str) -> bool:
    return permission in PERMISSIONS.get(role, frozenset())


def require(role: str, permission: str) -> None:
    if not can(role, permission):
        raise web.HTTPForbidden(text="Your role does not open this page.")


def visible_states(role: str) -> tuple[str, ...]:
    """Quarantined recordings are for the privacy reviewers only."""
    return ("stored", "quarantined") if can(role, QUARANTINE_REVIEW) else ("stored",)
