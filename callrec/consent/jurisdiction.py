"""Where the parties of a call are, and which consent law that puts the call under.

A call may be recorded with the consent of one party in most places, but some jurisdictions require
every party's consent (in practice: everyone is told, by an announcement, before recording starts).
When the parties are in different jurisdictions the stricter rule applies: US courts apply the
all-party state's law to a call recorded from a one-party state (Kearney v. Salomon Smith Barney,
39 Cal. 4th 95 (2006)), and the safe practice everywhere is to follow the strictest law involved.

The regimes come from ``data/all_party_consent.toml`` (sources and the date each entry was checked
are in the file and in docs/policy.md); tenants override entries through their policy config.

Location comes from the numbers alone, with ``phonenumbers``' offline metadata:

- the country is the number's region (ISO 3166-1 alpha-2);
- for US and Canadian numbers, the state or province comes from the area code, through the
  geocoder's English descriptions ("California", "Chicago, IL", "Washington State"). The North
  American Numbering Plan does not separate mobile from fixed numbers, so an area code says where a
  number was issued, not where its user is now; that is the best evidence the number carries;
- toll-free, premium, non-geographic and unassigned numbers, and area codes that cover several
  provinces (902: Nova Scotia and Prince Edward Island; 867: the three territories), have no region.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from importlib import resources
from types import MappingProxyType

import phonenumbers
from phonenumbers import PhoneNumberType, geocoder

ONE_PARTY = "one_party"
ALL_PARTY = "all_party"
UNKNOWN = "unknown"
REGIMES = (ONE_PARTY, ALL_PARTY, UNKNOWN)
# An override value that drops the data file's entry, so the default rule applies again.
REMOVE = "remove"
OVERRIDE_VALUES = (*REGIMES, REMOVE)

DATA_FILE = "all_party_consent.toml"

# ISO 3166-2 codes of the subdivisions that locate() can return. The geocoder writes full names
# for most area codes and "City, XX" with the postal abbreviation (which is the ISO 3166-2
# suffix) for the rest. "British Colombia" is a misspelling in phonenumbers' own data.
_US_STATES = {
    "Alabama": "AL", "Alaska": "AK", "Arizona": "AZ", "Arkansas": "AR", "California": "CA",
    "Colorado": "CO", "Connecticut": "CT", "Delaware": "DE", "Florida": "FL", "Georgia": "GA",
    "Hawaii": "HI", "Idaho": "ID", "Illinois": "IL", "Indiana": "IN", "Iowa": "IA", "Kansas": "KS",
    "Kentucky": "KY", "Louisiana": "LA", "Maine": "ME", "Maryland": "MD", "Massachusetts": "MA",
    "Michigan": "MI", "Minnesota": "MN", "Mississippi": "MS", "Missouri": "MO", "Montana": "MT",
    "Nebraska": "NE", "Nevada": "NV", "New Hampshire": "NH", "New Jersey": "NJ", "New Mexico": "NM",
    "New York": "NY", "North Carolina": "NC", "North Dakota": "ND", "Ohio": "OH", "Oklahoma": "OK",
    "Oregon": "OR", "Pennsylvania": "PA", "Rhode Island": "RI", "South Carolina": "SC",
    "South Dakota": "SD", "Tennessee": "TN", "Texas": "TX", "Utah": "UT", "Vermont": "VT",
    "Virginia": "VA", "Washington": "WA", "Washington State": "WA", "West Virginia": "WV",
    "Wisconsin": "WI", "Wyoming": "WY", "District of Columbia": "DC", "Washington D.C.": "DC",
}  # fmt: skip
_CA_PROVINCES = {
    "Alberta": "AB", "British Columbia": "BC", "British Colombia": "BC", "Manitoba": "MB",
    "New Brunswick": "NB", "Newfoundland and Labrador": "NL", "Nova Scotia": "NS",
    "Northwest Territories": "NT", "Nunavut": "NU", "Ontario": "ON", "Prince Edward Island": "PE",
    "Quebec": "QC", "Saskatchewan": "SK", "Yukon": "YT",
}  # fmt: skip
_SUBDIVISIONS: Mapping[str, Mapping[str, str]] = {"US": _US_STATES, "CA": _CA_PROVINCES}
SUBDIVISION_CODES = frozenset(
    f"{country}-{code}" for country, names in _SUBDIVISIONS.items() for code in names.values()
)
_CITY_SUFFIX = re.compile(r",\s*([A-Z]{2})$")
# E.164 with the separators people type; no letters: phonenumbers would read "+1 800 FLOWERS" as
# a vanity number, which is not something a telephony provider sends.
_E164ISH = re.compile(r"^\+[0-9][0-9 ().-]*$")
# Number types that belong to a place. NANP numbers are FIXED_LINE_OR_MOBILE (see module docstring).
_GEOGRAPHIC = (PhoneNumberType.FIXED_LINE, PhoneNumberType.FIXED_LINE_OR_MOBILE)


class ConsentLawsError(ValueError):
    """An override or data-file entry that names no known jurisdiction or regime.

    ``code`` is the offending jurisdiction code (or ``""`` for the file as a whole), so that the
    config layer can name the exact key.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Party:
    country: str | None  # ISO 3166-1 alpha-2, e.g. "US"
    region: str | None  # ISO 3166-2 for US states and Canadian provinces, e.g. "US-CA"; else None

    @property
    def code(self) -> str | None:
        """The most specific code known: the region, else the country."""
        return self.region or self.country


@dataclass(frozen=True)
class Jurisdiction:
    caller_country: str | None
    caller_region: str | None
    callee_country: str | None
    callee_region: str | None
    regime: str  # one_party | all_party | unknown

    @classmethod
    def from_json(cls, raw: Mapping[str, object]) -> Jurisdiction:
        """Inverse of :meth:`as_json` (an upload's jurisdiction travels in its job payload)."""

        def text(name: str) -> str | None:
            value = raw.get(name)
            return value if isinstance(value, str) else None

        regime = raw.get("regime")
        return cls(
            caller_country=text("caller_country"),
            caller_region=text("caller_region"),
            callee_country=text("callee_country"),
            callee_region=text("callee_region"),
            regime=regime if isinstance(regime, str) and regime in (ONE_PARTY, ALL_PARTY) else UNKNOWN,
        )

    def as_json(self) -> dict[str, str | None]:
        return {
            "caller_country": self.caller_country,
            "caller_region": self.caller_region,
            "callee_country": self.callee_country,
            "callee_region": self.callee_region,
            "regime": self.regime,
        }


@dataclass(frozen=True)
class LawEntry:
    """One jurisdiction's regime and the evidence for it."""

    code: str
    regime: str
    name: str = ""
    source: str = ""
    url: str = ""
    note: str = ""
    checked: date | None = None
    overridden: bool = False  # True when a tenant override set this entry


@dataclass(frozen=True)
class ConsentLaws:
    """The consent regime of every jurisdiction callrec can place a party in.

    ``entries`` holds countries ("DE") and subdivisions ("US-CA"); ``subdivision_defaults`` holds,
    per country whose subdivisions ``locate`` resolves, the regime of a subdivision not listed.
    """

    entries: Mapping[str, LawEntry]
    subdivision_defaults: Mapping[str, LawEntry]
    checked: date
    overrides: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def entry_for(self, party: Party) -> LawEntry | None:
        """The entry that decides ``party``'s regime, or None when nothing is known."""
        if party.region is not None:
            entry = self.entries.get(party.region)
            if entry is not None:
                return entry
            country = party.region.split("-", 1)[0]
            return self.subdivision_defaults.get(country)
        if party.country is not None:
            return self.entries.get(party.country)
        return None

    def regime_for(self, party: Party) -> str:
        entry = self.entry_for(party)
        return entry.regime if entry is not None else UNKNOWN

    def all_party(self) -> tuple[str, ...]:
        """Codes of the jurisdictions listed as all-party, sorted."""
        return tuple(sorted(code for code, e in self.entries.items() if e.regime == ALL_PARTY))


def locate(e164: str | None) -> Party:
    """Country, and for US and Canadian numbers the state or province, of an E.164 number.

    Returns ``Party(None, None)`` for a missing, malformed (no leading "+", letters, wrong length)
    or invalid number: a number that cannot be placed puts its party in an unknown jurisdiction,
    which the policy treats conservatively. Never raises.
    """
    if not e164 or not _E164ISH.match(e164):
        return Party(None, None)
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return Party(None, None)
    if not phonenumbers.is_valid_number(number):
        return Party(None, None)
    country = phonenumbers.region_code_for_number(number)
    if not country or len(country) != 2 or not country.isalpha():
        return Party(None, None)  # "001": international freephone and other non-geographic codes
    names = _SUBDIVISIONS.get(country)
    if names is None or phonenumbers.number_type(number) not in _GEOGRAPHIC:
        return Party(country, None)
    return Party(country, _subdivision(country, geocoder.description_for_valid_number(number, "en")))


def _subdivision(country: str, description: str) -> str | None:
    """ "San Francisco, CA" / "California" → "US-CA"; anything ambiguous or unknown → None."""
    names = _SUBDIVISIONS[country]
    suffix = _CITY_SUFFIX.search(description)
    if suffix is not None:
        code = f"{country}-{suffix.group(1)}"
        return code if code in SUBDIVISION_CODES else None
    abbreviation = names.get(description.strip())
    return f"{country}-{abbreviation}" if abbreviation else None


def classify(caller: Party, callee: Party, rules: ConsentLaws) -> Jurisdiction:
    """The regime of a call between ``caller`` and ``callee``.

    all_party when either side is in an all-party jurisdiction (the stricter law governs a call
    that crosses a border); otherwise unknown when either side is unknown; otherwise one_party.
    """
    regimes = (rules.regime_for(caller), rules.regime_for(callee))
    if ALL_PARTY in regimes:
        regime = ALL_PARTY
    elif UNKNOWN in regimes:
        regime = UNKNOWN
    else:
        regime = ONE_PARTY
    return Jurisdiction(
        caller_country=caller.country,
        caller_region=caller.region,
        callee_country=callee.country,
        callee_region=callee.region,
        regime=regime,
    )


def normalise_code(code: str) -> str:
    """Validate a jurisdiction code and return it upper-cased.

    Accepted: an ISO 3166-1 alpha-2 country that ``phonenumbers`` knows ("DE"), or a US state,
    DC, or Canadian province/territory in ISO 3166-2 form ("US-CA", "CA-QC"); other subdivisions
    are refused because ``locate`` never produces them, so an override of one would do nothing.
    Raises :class:`ConsentLawsError`.
    """
    upper = code.strip().upper()
    if upper in SUBDIVISION_CODES or (len(upper) == 2 and upper in phonenumbers.SUPPORTED_REGIONS):
        return upper
    raise ConsentLawsError(
        code,
        f'{code!r} is not a known jurisdiction: use an ISO 3166-1 country code such as "DE", '
        'or a US state or Canadian province as ISO 3166-2, such as "US-CA" or "CA-QC"',
    )


@functools.cache
def _base_laws() -> ConsentLaws:
    """Parse the shipped data file once per process: it is package data and never changes."""
    text = resources.files(__package__).joinpath("data", DATA_FILE).read_text(encoding="utf-8")
    return _parse_data(tomllib.loads(text))


def _parse_entry(code: str, raw: object) -> LawEntry:
    if not isinstance(raw, Mapping):
        raise ConsentLawsError(code, f"{DATA_FILE}: entry {code!r} is not a table")
    regime, source, checked = raw.get("regime"), raw.get("source"), raw.get("checked")
    if regime not in REGIMES:
        raise ConsentLawsError(code, f"{DATA_FILE}: {code}.regime must be one of {', '.join(REGIMES)}")
    if not isinstance(source, str) or not source.strip():
        raise ConsentLawsError(code, f"{DATA_FILE}: {code}.source is required")
    if not isinstance(checked, date):
        raise ConsentLawsError(code, f"{DATA_FILE}: {code}.checked must be a date (YYYY-MM-DD)")
    return LawEntry(
        code=code,
        regime=str(regime),
        name=str(raw.get("name", "")),
        source=source,
        url=str(raw.get("url", "")),
        note=str(raw.get("note", "")),
        checked=checked,
    )


def _parse_data(raw: Mapping[str, object]) -> ConsentLaws:
    checked = raw.get("checked")
    if not isinstance(checked, date):
        raise ConsentLawsError("", f"{DATA_FILE}: a top-level 'checked' date is required")
    jurisdictions = raw.get("jurisdictions", {})
    defaults = raw.get("subdivision_defaults", {})
    if not isinstance(jurisdictions, Mapping) or not isinstance(defaults, Mapping):
        raise ConsentLawsError("", f"{DATA_FILE}: 'jurisdictions' and 'subdivision_defaults' must be tables")
    entries = {normalise_code(code): _parse_entry(code, body) for code, body in jurisdictions.items()}
    subdivision_defaults: dict[str, LawEntry] = {}
    for country, body in defaults.items():
        if country not in _SUBDIVISIONS:
            raise ConsentLawsError(country, f"{DATA_FILE}: no subdivisions are resolved for {country!r}")
        subdivision_defaults[country] = _parse_entry(country, body)
    return ConsentLaws(
        entries=MappingProxyType(entries),
        subdivision_defaults=MappingProxyType(subdivision_defaults),
        checked=checked,
    )


def validate_overrides(overrides: Mapping[str, object]) -> dict[str, str]:
    """Check per-tenant overrides and return them with normalised codes.

    Each key is a jurisdiction code (see :func:`normalise_code`); each value is ``"one_party"``,
    ``"all_party"``, ``"unknown"``, or ``"remove"`` to drop the data file's entry so that the
    default rule applies again. Raises :class:`ConsentLawsError` naming the offending code.
    """
    out: dict[str, str] = {}
    for code, value in overrides.items():
        if not isinstance(value, str) or value not in OVERRIDE_VALUES:
            raise ConsentLawsError(
                code, f"expected one of {', '.join(repr(v) for v in OVERRIDE_VALUES)}, got {value!r}"
            )
        normalised = normalise_code(code)
        if normalised in out:
            raise ConsentLawsError(code, f"{code!r} is given twice (as {normalised})")
        out[normalised] = value
    return out


def load_consent_laws(overrides: Mapping[str, str] | None = None) -> ConsentLaws:
    """The shipped consent laws with a tenant's ``overrides`` applied.

    ``overrides`` maps jurisdiction codes to a regime or ``"remove"``, e.g.
    ``{"US-CA": "all_party", "NO": "one_party", "US-MI": "remove"}``; an override wins over the
    data file. Raises :class:`ConsentLawsError` for an unknown code or value.
    """
    base = _base_laws()
    if not overrides:
        return base
    checked = validate_overrides(overrides)
    entries = dict(base.entries)
    for code, value in checked.items():
        if value == REMOVE:
            entries.pop(code, None)
            continue
        previous = entries.get(code)
        entries[code] = LawEntry(
            code=code,
            regime=value,
            name=previous.name if previous else "",
            source="tenant policy override",
            note=f"data file: {previous.regime}" if previous else "not in the data file",
            overridden=True,
        )
    return ConsentLaws(
        entries=MappingProxyType(entries),
        subdivision_defaults=base.subdivision_defaults,
        checked=base.checked,
        overrides=MappingProxyType(checked),
    )
