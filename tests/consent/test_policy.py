"""The recording policy: table-driven, each row named after the rule it checks (the rule names
are those of callrec/consent/policy.py and docs/policy.md)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from callrec.config import ConfigError, config_from_mapping
from callrec.consent.jurisdiction import Jurisdiction
from callrec.consent.policy import (
    Decision,
    PolicyConfig,
    PolicyInput,
    Reason,
    decide,
    policy_config_from_mapping,
)

ONE_PARTY = Jurisdiction("US", "US-NY", "CA", "CA-ON", "one_party")
ALL_PARTY = Jurisdiction("US", "US-NY", "US", "US-CA", "all_party")
UNKNOWN = Jurisdiction("GB", None, "US", "US-NY", "unknown")
TENANT_RETENTION = timedelta(days=90)

# A recording that every rule accepts: explicit consent, a contract basis, a verified announcement.
BASE = PolicyInput(
    consent_status="granted",
    consent_method="ivr_keypress",
    basis="contract",
    purpose=None,
    announcement_claimed=True,
    announcement_verified=True,
    jurisdiction=ONE_PARTY,
    opted_out_during_call=False,
    grace_expired=True,
)
NOT_ANNOUNCED: dict[str, Any] = {"announcement_claimed": False, "announcement_verified": None}
CONSENT_UNKNOWN: dict[str, Any] = {"consent_status": "unknown", "consent_method": "none"}


def training(days: int) -> dict[str, Any]:
    return {"purpose_retention": {"training": timedelta(days=days)}}


def row(
    rule: str,
    case: str,
    inp: dict[str, Any],
    decision: str,
    codes: tuple[str, ...],
    cfg: dict[str, Any] | None = None,
) -> Any:
    return pytest.param(inp, cfg or {}, decision, codes, id=f"{rule}: {case}")


@pytest.mark.parametrize(
    ("inp", "cfg", "decision", "codes"),
    [
        row("store", "explicit consent, contract, verified announcement", {}, "store", ("policy_satisfied",)),
        row("store", "one-party needs no announcement", {**NOT_ANNOUNCED}, "store", ("policy_satisfied",)),
        # refusal
        row("refusal", "declined", {"consent_status": "declined"}, "reject", ("consent_declined",)),
        row("refusal", "opted out during the call", {"opted_out_during_call": True}, "reject",
            ("opted_out_during_call",)),
        row("refusal", "declined and opted out: both listed",
            {"consent_status": "declined", "opted_out_during_call": True}, "reject",
            ("consent_declined", "opted_out_during_call")),
        row("refusal", "withdrawn before the decision", {"consent_status": "withdrawn"}, "reject",
            ("consent_withdrawn",)),
        row("refusal", "beats all-party quarantine, both listed",
            {"consent_status": "declined", "jurisdiction": ALL_PARTY, **NOT_ANNOUNCED}, "reject",
            ("consent_declined", "all_party_without_verified_announcement")),
        row("refusal", "beats waiting for late consent",
            {"consent_status": "unknown", "opted_out_during_call": True, "grace_expired": False}, "reject",
            ("opted_out_during_call", "consent_pending")),
        # all_party_announcement
        row("all_party_announcement", "no announcement", {"jurisdiction": ALL_PARTY, **NOT_ANNOUNCED},
            "quarantine", ("all_party_without_verified_announcement",)),
        row("all_party_announcement", "claimed, no prompt to verify against",
            {"jurisdiction": ALL_PARTY, "announcement_verified": None}, "quarantine",
            ("all_party_without_verified_announcement",)),
        row("all_party_announcement", "verified announcement", {"jurisdiction": ALL_PARTY}, "store",
            ("policy_satisfied",)),
        row("all_party_announcement", "configured to reject", {"jurisdiction": ALL_PARTY, **NOT_ANNOUNCED},
            "reject", ("all_party_without_verified_announcement",),
            cfg={"all_party_without_announcement": "reject"}),
        # announcement_verification
        row("announcement_verification", "claimed but not in the audio counts as not played (all-party)",
            {"jurisdiction": ALL_PARTY, "announcement_verified": False}, "quarantine",
            ("all_party_without_verified_announcement", "announcement_not_in_audio")),
        row("announcement_verification", "noted even where one-party law needs no announcement",
            {"announcement_verified": False}, "store", ("policy_satisfied", "announcement_not_in_audio")),
        # unknown_regime
        row("unknown_regime", "treated as all-party by default", {"jurisdiction": UNKNOWN, **NOT_ANNOUNCED},
            "quarantine", ("unknown_jurisdiction_without_verified_announcement",)),
        row("unknown_regime", "treated as all-party, verified announcement", {"jurisdiction": UNKNOWN},
            "store", ("policy_satisfied",)),
        row("unknown_regime", "treated as one-party by config", {"jurisdiction": UNKNOWN, **NOT_ANNOUNCED},
            "store", ("policy_satisfied",), cfg={"unknown_regime": "one_party"}),
        row("unknown_regime", "all-party action reject applies", {"jurisdiction": UNKNOWN, **NOT_ANNOUNCED},
            "reject", ("unknown_jurisdiction_without_verified_announcement",),
            cfg={"all_party_without_announcement": "reject"}),
        # late_consent / unknown_consent
        row("late_consent", "unknown during the grace period waits",
            {**CONSENT_UNKNOWN, "grace_expired": False}, "wait",
            ("consent_pending",)),
        row("unknown_consent", "unknown after the grace period is quarantined",
            {**CONSENT_UNKNOWN}, "quarantine", ("consent_unknown",)),
        row("unknown_consent", "configured to reject", {**CONSENT_UNKNOWN},
            "reject", ("consent_unknown",), cfg={"unknown_consent": "reject"}),
        row("unknown_consent", "configured to store, noted", {**CONSENT_UNKNOWN},
            "store", ("policy_satisfied", "consent_unknown"), cfg={"unknown_consent": "store"}),
        row("late_consent", "quarantine beats wait, both listed",
            {**CONSENT_UNKNOWN, "grace_expired": False, "jurisdiction": ALL_PARTY, **NOT_ANNOUNCED},
            "quarantine", ("all_party_without_verified_announcement", "consent_pending")),
        # consent_by_notice
        row("consent_by_notice", "implied consent but no notice played",
            {"consent_status": "implied", "consent_method": "continued_after_notice", "basis": "contract",
             **NOT_ANNOUNCED},
            "quarantine", ("consent_without_notice",)),
        row("consent_by_notice", "implied consent, notice not in the audio",
            {"consent_status": "implied", "consent_method": "continued_after_notice",
             "announcement_verified": False},
            "quarantine", ("consent_without_notice", "announcement_not_in_audio")),
        row("consent_by_notice", "implied consent after a verified notice, non-consent basis",
            {"consent_status": "implied", "consent_method": "continued_after_notice",
             "basis": "legitimate_interests"},
            "store", ("policy_satisfied",)),
        # gdpr_consent
        row("gdpr_consent", "basis consent with implied consent",
            {"consent_status": "implied", "consent_method": "continued_after_notice", "basis": "consent"},
            "quarantine", ("implied_consent_not_valid",)),
        row("gdpr_consent", "basis consent, 'granted' by continuing after notice",
            {"consent_status": "granted", "consent_method": "continued_after_notice", "basis": "consent"},
            "quarantine", ("implied_consent_not_valid",)),
        row("gdpr_consent", "basis consent with a keypress", {"basis": "consent"}, "store",
            ("policy_satisfied",)),
        row("gdpr_consent", "basis consent given verbally", {"basis": "consent", "consent_method": "verbal"},
            "store", ("policy_satisfied",)),
        # lawful_basis
        row("lawful_basis", "none given, no default", {"basis": None}, "quarantine", ("no_lawful_basis",)),
        row("lawful_basis", "none given, tenant default applies", {"basis": None}, "store",
            ("policy_satisfied", "default_basis"), cfg={"default_basis": "legitimate_interests"}),
        row("lawful_basis", "given basis wins over the default", {"basis": "legal_obligation"}, "store",
            ("policy_satisfied",), cfg={"default_basis": "legitimate_interests"}),
        row("lawful_basis", "not an Art. 6 basis", {"basis": "vibes"}, "quarantine",
            ("invalid_lawful_basis",)),
        row("lawful_basis", "default basis consent checked like a given one",
            {"basis": None, "consent_status": "implied", "consent_method": "continued_after_notice"},
            "quarantine", ("implied_consent_not_valid", "default_basis"), cfg={"default_basis": "consent"}),
        # all applicable reasons, strictest first
        row("all_reasons", "every rule that applies is listed",
            {"basis": None, "jurisdiction": ALL_PARTY, "announcement_verified": False,
             **CONSENT_UNKNOWN, "grace_expired": False},
            "quarantine",
            ("all_party_without_verified_announcement", "no_lawful_basis", "consent_pending",
             "announcement_not_in_audio")),
    ],
)  # fmt: skip
def test_decide(inp: dict[str, Any], cfg: dict[str, Any], decision: str, codes: tuple[str, ...]) -> None:
    result = decide(replace(BASE, **inp), PolicyConfig(**cfg), tenant_retention=TENANT_RETENTION)
    assert result.decision == decision
    assert tuple(r.code for r in result.reasons) == codes
    assert all(r.rule and r.detail for r in result.reasons)


@pytest.mark.parametrize(
    ("inp", "cfg", "tenant", "retention"),
    [
        pytest.param({}, {}, 90, 90, id="retention: store keeps the tenant's retention"),
        pytest.param({"purpose": "training"}, training(30), 90, 30, id="retention: purpose shortens"),
        pytest.param({"purpose": "training"}, training(365), 90, 90, id="retention: purpose never lengthens"),
        pytest.param({"purpose": "billing"}, training(30), 90, 90, id="retention: other purpose untouched"),
        pytest.param({"basis": None}, {}, 90, 7, id="retention: quarantine keeps 7 days"),
        pytest.param({"basis": None}, {}, 3, 3, id="retention: quarantine never outlives the tenant's"),
        pytest.param({"basis": None, "purpose": "training"}, training(1), 90, 1,
                     id="retention: quarantine never outlives the purpose's"),
        pytest.param({"consent_status": "declined"}, {}, 90, None, id="retention: reject keeps nothing"),
        pytest.param({"consent_status": "unknown", "grace_expired": False}, {}, 90, None,
                     id="retention: wait has none yet"),
    ],
)  # fmt: skip
def test_retention(inp: dict[str, Any], cfg: dict[str, Any], tenant: int, retention: int | None) -> None:
    result = decide(replace(BASE, **inp), PolicyConfig(**cfg), tenant_retention=timedelta(days=tenant))
    assert result.retention == (timedelta(days=retention) if retention is not None else None)


def test_purpose_retention_is_explained() -> None:
    cfg = PolicyConfig(purpose_retention={"training": timedelta(days=30)})
    result = decide(replace(BASE, purpose="training"), cfg, tenant_retention=TENANT_RETENTION)
    assert [r.code for r in result.reasons] == ["policy_satisfied", "purpose_retention"]
    assert "30d" in result.reasons[1].detail and "90d" in result.reasons[1].detail


def test_decision_as_json_and_version() -> None:
    cfg = PolicyConfig(version="2026-11")
    result = decide(replace(BASE, basis=None), cfg, tenant_retention=TENANT_RETENTION)
    assert result == Decision(
        "quarantine",
        (Reason("no_lawful_basis", "lawful_basis", "no GDPR Art. 6 lawful basis given and no default"),),
        "2026-11",
        timedelta(days=7),
    )
    assert result.as_json() == {
        "decision": "quarantine",
        "reasons": [
            {
                "code": "no_lawful_basis",
                "rule": "lawful_basis",
                "detail": "no GDPR Art. 6 lawful basis given and no default",
            }
        ],
        "policy_version": "2026-11",
        "retention_seconds": 7 * 86400,
    }
    rejected = decide(replace(BASE, consent_status="declined"), cfg, tenant_retention=TENANT_RETENTION)
    assert rejected.as_json()["retention_seconds"] is None


def test_reasons_name_places_by_code_only() -> None:
    inp = replace(BASE, jurisdiction=ALL_PARTY, **NOT_ANNOUNCED)
    detail = decide(inp, PolicyConfig(), tenant_retention=TENANT_RETENTION).reasons[0].detail
    assert "US-CA" in detail and "+1" not in detail


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"consent_status": "maybe"}, id="unknown status"),
        pytest.param({"consent_method": "telepathy"}, id="unknown method"),
    ],
)
def test_policy_input_rejects_values_no_upstream_produces(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        replace(BASE, **changes)


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"all_party_without_announcement": "delete"}, id="all_party action"),
        pytest.param({"unknown_regime": "unknown"}, id="unknown_regime"),
        pytest.param({"unknown_consent": "wait"}, id="unknown_consent"),
        pytest.param({"default_basis": "vibes"}, id="default_basis"),
    ],
)
def test_policy_config_rejects_bad_choices(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        PolicyConfig(**changes)


# --- configuration ------------------------------------------------------------------------------

KEY = "tenants.acme.policy"


def test_config_defaults() -> None:
    assert policy_config_from_mapping({}, key=KEY) == PolicyConfig()
    cfg = PolicyConfig()
    assert (cfg.version, cfg.all_party_without_announcement, cfg.unknown_regime, cfg.unknown_consent) == (
        "1",
        "quarantine",
        "all_party",
        "quarantine",
    )
    assert (cfg.grace_period, cfg.quarantine_retention) == (timedelta(minutes=10), timedelta(days=7))
    assert (dict(cfg.purpose_retention), cfg.default_basis, dict(cfg.consent_laws)) == ({}, None, {})


def test_config_full() -> None:
    cfg = policy_config_from_mapping(
        {
            "version": 3,
            "all_party_without_announcement": "reject",
            "unknown_regime": "one_party",
            "unknown_consent": "reject",
            "grace_period": "30m",
            "quarantine_retention": "3d",
            "purpose_retention": {"training": "30d", "quality": "14d"},
            "default_basis": "legitimate_interests",
            "consent_laws": {"us-ca": "one_party", "GB": "all_party", "US-MI": "remove"},
        },
        key=KEY,
        tenant_retention=timedelta(days=90),
    )
    assert cfg.version == "3"
    assert cfg.all_party_without_announcement == "reject"
    assert cfg.unknown_regime == "one_party"
    assert cfg.unknown_consent == "reject"
    assert cfg.grace_period == timedelta(minutes=30)
    assert cfg.quarantine_retention == timedelta(days=3)
    assert dict(cfg.purpose_retention) == {"training": timedelta(days=30), "quality": timedelta(days=14)}
    assert cfg.default_basis == "legitimate_interests"
    assert dict(cfg.consent_laws) == {"US-CA": "one_party", "GB": "all_party", "US-MI": "remove"}


def test_config_empty_default_basis_clears_it() -> None:
    assert policy_config_from_mapping({"default_basis": ""}, key=KEY).default_basis is None


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        pytest.param({"colour": "red"}, f"{KEY}.colour", id="unknown key"),
        pytest.param({"version": ""}, f"{KEY}.version", id="empty version"),
        pytest.param({"version": True}, f"{KEY}.version", id="boolean version"),
        pytest.param({"all_party_without_announcement": "delete"}, f"{KEY}.all_party_without_announcement",
                     id="all-party action"),
        pytest.param({"unknown_regime": "unknown"}, f"{KEY}.unknown_regime", id="unknown_regime choice"),
        pytest.param({"unknown_consent": "wait"}, f"{KEY}.unknown_consent", id="unknown_consent choice"),
        pytest.param({"grace_period": "10"}, f"{KEY}.grace_period", id="duration without unit"),
        pytest.param({"grace_period": 600}, f"{KEY}.grace_period", id="duration as a number"),
        pytest.param({"quarantine_retention": "0d"}, f"{KEY}.quarantine_retention", id="zero duration"),
        pytest.param({"purpose_retention": "30d"}, f"{KEY}.purpose_retention", id="purposes not a table"),
        pytest.param({"purpose_retention": {"training": "30 days"}}, f"{KEY}.purpose_retention.training",
                     id="bad purpose duration"),
        pytest.param({"purpose_retention": {"training": "365d"}}, f"{KEY}.purpose_retention.training",
                     id="purpose longer than the tenant's retention"),
        pytest.param({"default_basis": "vibes"}, f"{KEY}.default_basis", id="not an Art. 6 basis"),
        pytest.param({"consent_laws": ["US-CA"]}, f"{KEY}.consent_laws", id="laws not a table"),
        pytest.param({"consent_laws": {"US-XX": "all_party"}}, f"{KEY}.consent_laws.US-XX",
                     id="unknown state"),
        pytest.param({"consent_laws": {"US-CA": "two_party"}}, f"{KEY}.consent_laws.US-CA",
                     id="unknown regime"),
    ],
)  # fmt: skip
def test_config_errors_name_the_key(raw: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        policy_config_from_mapping(raw, key=KEY, tenant_retention=timedelta(days=90))
    assert str(info.value).startswith(f"{named}:"), str(info.value)


def test_config_loader_builds_each_tenants_policy() -> None:
    """Wiring check: [tenants.<t>.policy] reaches PolicyConfig through callrec.config."""
    cfg = config_from_mapping(
        {"tenants": {"acme": {"policy": {"version": "7", "consent_laws": {"GB": "one_party"}}}}}
    )
    policy = cfg.tenants["acme"].policy
    assert isinstance(policy, PolicyConfig)
    assert policy.version == "7" and dict(policy.consent_laws) == {"GB": "one_party"}
    with pytest.raises(ConfigError, match=r"^tenants\.acme\.policy\.unknown_regime:"):
        config_from_mapping({"tenants": {"acme": {"policy": {"unknown_regime": "maybe"}}}})
