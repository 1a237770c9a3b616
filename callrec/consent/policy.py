"""The recording policy: whether a recording is stored, quarantined, refused, or waits.

The worker asks :func:`decide` before anything is stored. The decision is pure (no I/O, no clock:
the caller says whether the grace period is over) and lists every rule that applied, each as a
:class:`Reason` with a stable ``code``; the strictest outcome wins (reject > quarantine > wait >
store). The rules, in the order ``decide`` checks them (docs/policy.md gives the law behind each):

``refusal``
    Consent declined, withdrawn before the decision, or the caller opted out during the call →
    reject. GDPR Art. 7(3) (withdrawal), Art. 17(1)(b) (erasure once consent is withdrawn), Art. 21.
``announcement_verification``
    A claimed announcement that the audio does not contain (``announcement_verified`` False)
    counts as not played. On its own it decides nothing; it is listed so that the claim and the
    evidence disagreeing is on record.
``all_party_announcement``
    Caller or callee in an all-party-consent jurisdiction and no *verified* announcement →
    ``PolicyConfig.all_party_without_announcement`` (quarantine, or reject). The state statutes in
    ``data/all_party_consent.toml``; the announcement is how consent of every party is obtained
    (e.g. RCW 9.73.030(3), Conn. Gen. Stat. § 52-570d(a)(2)).
``unknown_regime``
    Jurisdiction unknown → treated as ``PolicyConfig.unknown_regime`` (all_party by default, so the
    rule above applies with its own code).
``consent_by_notice``
    Consent recorded as "continued after notice" when no notice was played (not claimed, or not in
    the audio) → quarantine: the consent rests on an announcement that did not happen.
``late_consent`` / ``unknown_consent``
    Consent unknown: wait while the grace period runs (events may arrive after the recording), then
    ``PolicyConfig.unknown_consent`` (quarantine by default).
``gdpr_consent``
    Lawful basis "consent" with consent that is only implied (continued after notice) → quarantine.
    Not valid GDPR consent: Art. 4(11) requires a statement or clear affirmative action, Art. 7(1)
    that the controller can demonstrate it; EDPB Guidelines 05/2020 § 3.4 (silence or
    inactivity is not consent).
``lawful_basis``
    No GDPR Art. 6(1) basis (none given and no tenant default), or one that is not an Art. 6
    basis → quarantine.
``retention``
    Store: the tenant's retention, shortened (never lengthened) by the purpose's retention;
    quarantine: ``PolicyConfig.quarantine_retention``, never longer than that. GDPR Art. 5(1)(e).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType

from callrec.config import ConfigError, parse_duration
from callrec.consent.jurisdiction import ALL_PARTY, ONE_PARTY, UNKNOWN, ConsentLawsError, Jurisdiction
from callrec.consent.jurisdiction import validate_overrides as validate_consent_laws

STORE = "store"
QUARANTINE = "quarantine"
REJECT = "reject"
WAIT = "wait"
# Strictest first; decide() returns the strictest outcome among the rules that applied.
_SEVERITY = {REJECT: 3, QUARANTINE: 2, WAIT: 1, STORE: 0}

CONSENT_STATUSES = ("granted", "implied", "declined", "withdrawn", "unknown")
CONSENT_METHODS = ("ivr_keypress", "verbal", "continued_after_notice", "none")
# GDPR Art. 6(1)(a)-(f).
LAWFUL_BASES = (
    "consent",
    "contract",
    "legal_obligation",
    "vital_interests",
    "public_task",
    "legitimate_interests",
)

ALL_PARTY_ACTIONS = (QUARANTINE, REJECT)
UNKNOWN_REGIME_CHOICES = (ALL_PARTY, ONE_PARTY)
UNKNOWN_CONSENT_ACTIONS = (QUARANTINE, REJECT, STORE)


@dataclass(frozen=True)
class PolicyConfig:
    """A tenant's policy, ``[tenants.<t>.policy]``. ``version`` is recorded with every decision."""

    version: str = "1"
    all_party_without_announcement: str = QUARANTINE  # or "reject"
    unknown_regime: str = ALL_PARTY  # treat an unknown jurisdiction as all_party or one_party
    unknown_consent: str = QUARANTINE  # after the grace period: quarantine, reject or store
    grace_period: timedelta = timedelta(minutes=10)
    quarantine_retention: timedelta = timedelta(days=7)
    # Per purpose ("training": 30 days); can only shorten the tenant's retention, never lengthen it.
    purpose_retention: Mapping[str, timedelta] = field(default_factory=lambda: MappingProxyType({}))
    default_basis: str | None = None  # GDPR Art. 6 basis assumed when a recording carries none
    consent_laws: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("all_party_without_announcement", self.all_party_without_announcement, ALL_PARTY_ACTIONS),
            ("unknown_regime", self.unknown_regime, UNKNOWN_REGIME_CHOICES),
            ("unknown_consent", self.unknown_consent, UNKNOWN_CONSENT_ACTIONS),
        ):
            if value not in allowed:
                raise ValueError(f"{name}: expected one of {', '.join(allowed)}, got {value!r}")
        if self.default_basis is not None and self.default_basis not in LAWFUL_BASES:
            raise ValueError(f"default_basis: expected a GDPR Art. 6 basis, got {self.default_basis!r}")


@dataclass(frozen=True)
class PolicyInput:
    consent_status: str  # granted | implied | declined | withdrawn | unknown
    consent_method: str  # ivr_keypress | verbal | continued_after_notice | none
    basis: str | None  # GDPR Art. 6 basis, or None
    purpose: str | None
    announcement_claimed: bool
    announcement_verified: bool | None  # None: no registered prompt to check the audio against
    jurisdiction: Jurisdiction
    opted_out_during_call: bool
    grace_expired: bool  # True when the decision is taken after the grace period

    def __post_init__(self) -> None:
        # Status and method come from validated tags and events: anything else is a bug upstream.
        # The basis is checked by a rule instead, because event details carry it unvalidated.
        if self.consent_status not in CONSENT_STATUSES:
            raise ValueError(f"consent_status: expected one of {', '.join(CONSENT_STATUSES)}")
        if self.consent_method not in CONSENT_METHODS:
            raise ValueError(f"consent_method: expected one of {', '.join(CONSENT_METHODS)}")


@dataclass(frozen=True)
class Reason:
    code: str  # stable, machine-readable: "all_party_without_verified_announcement"
    rule: str  # the rule that produced it, as named in docs/policy.md: "all_party_announcement"
    detail: str  # for people; never a phone number, only jurisdiction codes and tag values

    def as_json(self) -> dict[str, str]:
        return {"code": self.code, "rule": self.rule, "detail": self.detail}


@dataclass(frozen=True)
class Decision:
    decision: str  # store | quarantine | reject | wait
    reasons: tuple[Reason, ...]
    policy_version: str
    retention: timedelta | None  # store and quarantine only

    def rejected(self, reason: Reason) -> Decision:
        """This decision overruled by a rule applied outside :func:`decide` (redaction spans that
        cannot be placed on the audio): nothing may be stored."""
        return Decision(REJECT, (reason, *self.reasons), self.policy_version, None)

    def as_json(self) -> dict[str, object]:
        return {
            "decision": self.decision,
            "reasons": [r.as_json() for r in self.reasons],
            "policy_version": self.policy_version,
            "retention_seconds": int(self.retention.total_seconds()) if self.retention is not None else None,
        }


def decide(inp: PolicyInput, cfg: PolicyConfig, *, tenant_retention: timedelta) -> Decision:
    """Apply the rules in the module docstring to one recording.

    Returns every rule that applied (strictest first, then informational notes) and the strictest
    outcome. ``retention`` is set for store and quarantine, None for reject and wait. Raises
    nothing for any valid :class:`PolicyInput`.
    """
    hits: list[tuple[str, Reason]] = []
    notes: list[Reason] = []

    def hit(outcome: str, code: str, rule: str, detail: str) -> None:
        hits.append((outcome, Reason(code, rule, detail)))

    # refusal
    if inp.consent_status == "declined":
        hit(REJECT, "consent_declined", "refusal", "the caller declined to be recorded")
    if inp.opted_out_during_call:
        hit(REJECT, "opted_out_during_call", "refusal", "the caller opted out during the call")
    if inp.consent_status == "withdrawn":
        hit(REJECT, "consent_withdrawn", "refusal", "consent was withdrawn before the decision")

    # announcement_verification
    played = inp.announcement_claimed and inp.announcement_verified is not False
    verified = inp.announcement_claimed and inp.announcement_verified is True
    if inp.announcement_claimed and inp.announcement_verified is False:
        notes.append(
            Reason(
                "announcement_not_in_audio",
                "announcement_verification",
                "an announcement was claimed but the audio does not contain it; it counts as not played",
            )
        )

    # all_party_announcement / unknown_regime
    jur = inp.jurisdiction
    if not verified:
        missing = _announcement_state(inp)
        if jur.regime == ALL_PARTY:
            hit(
                cfg.all_party_without_announcement,
                "all_party_without_verified_announcement",
                "all_party_announcement",
                f"a party is in an all-party-consent jurisdiction ({_places(jur)}) and {missing}",
            )
        elif jur.regime == UNKNOWN and cfg.unknown_regime == ALL_PARTY:
            hit(
                cfg.all_party_without_announcement,
                "unknown_jurisdiction_without_verified_announcement",
                "unknown_regime",
                f"the jurisdiction is unknown ({_places(jur)}) and treated as all_party, and {missing}",
            )

    # consent_by_notice
    if (
        inp.consent_status in ("granted", "implied")
        and inp.consent_method == "continued_after_notice"
        and not played
    ):
        hit(
            QUARANTINE,
            "consent_without_notice",
            "consent_by_notice",
            "consent is recorded as continuing after a notice, but no notice was played",
        )

    # late_consent / unknown_consent
    if inp.consent_status == "unknown":
        if not inp.grace_expired:
            hit(
                WAIT, "consent_pending", "late_consent", "consent is unknown; waiting for late consent events"
            )
        elif cfg.unknown_consent != STORE:
            hit(
                cfg.unknown_consent,
                "consent_unknown",
                "unknown_consent",
                "consent is still unknown after the grace period",
            )
        else:
            notes.append(
                Reason(
                    "consent_unknown", "unknown_consent", "consent is unknown; the policy stores regardless"
                )
            )

    # lawful_basis / gdpr_consent
    basis = inp.basis if inp.basis is not None else cfg.default_basis
    if inp.basis is None and cfg.default_basis is not None:
        notes.append(
            Reason("default_basis", "lawful_basis", f"no basis given; tenant default {basis!r} applies")
        )
    if basis is None:
        hit(QUARANTINE, "no_lawful_basis", "lawful_basis", "no GDPR Art. 6 lawful basis given and no default")
    elif basis not in LAWFUL_BASES:
        # The value itself is not echoed: it comes unvalidated from event details.
        hit(QUARANTINE, "invalid_lawful_basis", "lawful_basis", "the basis given is not a GDPR Art. 6 basis")
    elif (
        basis == "consent"
        and inp.consent_status in ("granted", "implied")
        and (inp.consent_status == "implied" or inp.consent_method == "continued_after_notice")
    ):
        hit(
            QUARANTINE,
            "implied_consent_not_valid",
            "gdpr_consent",
            "the basis is consent, but continuing after a notice is not a clear affirmative action "
            "(GDPR Art. 4(11), 7)",
        )

    # retention
    retention = tenant_retention
    purpose_limit = cfg.purpose_retention.get(inp.purpose) if inp.purpose is not None else None
    if purpose_limit is not None and purpose_limit < tenant_retention:
        retention = purpose_limit

    if not hits:
        if retention < tenant_retention:
            notes.append(
                Reason(
                    "purpose_retention",
                    "retention",
                    f"purpose {inp.purpose!r} keeps recordings for {_days(retention)} "
                    f"instead of the tenant's {_days(tenant_retention)}",
                )
            )
        summary = Reason("policy_satisfied", "store", _summary(inp, basis, verified))
        return Decision(STORE, (summary, *notes), cfg.version, retention)

    hits.sort(key=lambda h: -_SEVERITY[h[0]])  # stable: rules keep their order within a severity
    outcome = hits[0][0]
    reasons = tuple(reason for _, reason in hits) + tuple(notes)
    if outcome == QUARANTINE:
        return Decision(QUARANTINE, reasons, cfg.version, min(cfg.quarantine_retention, retention))
    return Decision(outcome, reasons, cfg.version, None)


def _announcement_state(inp: PolicyInput) -> str:
    if not inp.announcement_claimed:
        return "no announcement was played"
    if inp.announcement_verified is False:
        return "the claimed announcement is not in the audio"
    return "the announcement could not be verified (no prompt registered for it)"


def _places(jur: Jurisdiction) -> str:
    caller = jur.caller_region or jur.caller_country or "unknown"
    callee = jur.callee_region or jur.callee_country or "unknown"
    return f"caller {caller}, callee {callee}"


def _days(value: timedelta) -> str:
    return f"{value.days}d" if value.seconds == 0 else f"{int(value.total_seconds())}s"


def _summary(inp: PolicyInput, basis: str | None, verified: bool) -> str:
    announcement = "verified announcement" if verified else "no verified announcement"
    return (
        f"regime {inp.jurisdiction.regime}, {announcement}, consent {inp.consent_status} "
        f"({inp.consent_method}), basis {basis}"
    )


# --- configuration --------------------------------------------------------------------------

_FIELDS = {
    "version",
    "all_party_without_announcement",
    "unknown_regime",
    "unknown_consent",
    "grace_period",
    "quarantine_retention",
    "purpose_retention",
    "default_basis",
    "consent_laws",
}
_CHOICES = {
    "all_party_without_announcement": ALL_PARTY_ACTIONS,
    "unknown_regime": UNKNOWN_REGIME_CHOICES,
    "unknown_consent": UNKNOWN_CONSENT_ACTIONS,
}


def policy_config_from_mapping(
    raw: Mapping[str, object], *, key: str, tenant_retention: timedelta | None = None
) -> PolicyConfig:
    """Build a :class:`PolicyConfig` from ``[tenants.<t>.policy]`` (TOML, or strings from
    ``CALLREC_*`` environment variables).

    ``key`` is the table's dotted name (``"tenants.acme.policy"``); every :class:`ConfigError`
    names ``f"{key}.<field>"`` (``f"{key}.purpose_retention.<purpose>"``,
    ``f"{key}.consent_laws.<code>"`` for entries of the sub-tables). When ``tenant_retention`` is
    given, a purpose retention longer than it is refused, because it could never take effect.
    """
    values: dict[str, object] = {}
    for name, value in raw.items():
        fkey = f"{key}.{name}"
        if name not in _FIELDS:
            raise ConfigError(f"{fkey}: unknown key")
        if name == "version":
            if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
                raise ConfigError(f'{fkey}: expected a non-empty string such as "2", got {value!r}')
            values[name] = str(value).strip()
        elif name in _CHOICES:
            allowed = _CHOICES[name]
            if value not in allowed:
                raise ConfigError(
                    f"{fkey}: expected one of {', '.join(repr(a) for a in allowed)}, got {value!r}"
                )
            values[name] = value
        elif name in ("grace_period", "quarantine_retention"):
            values[name] = parse_duration(value, key=fkey)
        elif name == "purpose_retention":
            values[name] = _purpose_retention(value, key=fkey, tenant_retention=tenant_retention)
        elif name == "default_basis":
            if value == "":
                values[name] = None  # lets an environment variable clear a file's default
            elif value not in LAWFUL_BASES:
                raise ConfigError(
                    f"{fkey}: expected a GDPR Art. 6 basis ({', '.join(LAWFUL_BASES)}), got {value!r}"
                )
            else:
                values[name] = value
        else:  # consent_laws
            values[name] = _consent_laws(value, key=fkey)
    return PolicyConfig(**values)  # type: ignore[arg-type]  # each value checked above


def _table(value: object, *, key: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{key}: expected a table, got {value!r}")
    return value


def _purpose_retention(
    value: object, *, key: str, tenant_retention: timedelta | None
) -> Mapping[str, timedelta]:
    out: dict[str, timedelta] = {}
    for purpose, text in _table(value, key=key).items():
        pkey = f"{key}.{purpose}"
        if not purpose.strip():
            raise ConfigError(f"{pkey}: a purpose needs a name")
        duration = parse_duration(text, key=pkey)
        if tenant_retention is not None and duration > tenant_retention:
            raise ConfigError(
                f"{pkey}: {text} is longer than the tenant's retention ({_days(tenant_retention)}); "
                "a purpose can only shorten retention"
            )
        out[purpose] = duration
    return MappingProxyType(out)


def _consent_laws(value: object, *, key: str) -> Mapping[str, str]:
    table = _table(value, key=key)
    try:
        return MappingProxyType(validate_consent_laws(table))
    except ConsentLawsError as exc:
        raise ConfigError(f"{key}.{exc.code}: {exc}") from None
