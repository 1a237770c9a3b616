"""Where parties are and which consent law governs their call: table-driven, each row named after
the rule it checks (see callrec/consent/jurisdiction.py and docs/policy.md)."""

from __future__ import annotations

from datetime import date

import pytest

from callrec.consent.jurisdiction import (
    ALL_PARTY,
    ONE_PARTY,
    UNKNOWN,
    ConsentLaws,
    ConsentLawsError,
    Jurisdiction,
    Party,
    _parse_data,
    classify,
    load_consent_laws,
    locate,
)

TODAY = date(2026, 11, 23)

# --- locate -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "country", "region"),
    [
        pytest.param("+14155550132", "US", "US-CA", id="nanp-area-code: 415 San Francisco -> California"),
        pytest.param("+12125550143", "US", "US-NY", id="nanp-area-code: 212 Manhattan -> New York"),
        pytest.param("+13125550188", "US", "US-IL", id="nanp-area-code: 312 Chicago -> Illinois"),
        pytest.param("+12065550111", "US", "US-WA", id="nanp-area-code: 206 Seattle -> 'Washington State'"),
        pytest.param("+12025550177", "US", "US-DC", id="nanp-area-code: 202 -> 'Washington D.C.'"),
        pytest.param("+13055550123", "US", "US-FL", id="nanp-area-code: 305 Miami -> Florida"),
        pytest.param("+14165550199", "CA", "CA-ON", id="nanp-area-code: 416 Toronto -> Ontario"),
        pytest.param("+16045550123", "CA", "CA-BC", id="nanp-area-code: 604 Vancouver -> British Columbia"),
        pytest.param("+15145550123", "CA", "CA-QC", id="nanp-area-code: 514 Montreal -> Quebec"),
        pytest.param("+1 (415) 555-0132", "US", "US-CA", id="e164-separators: spaces, brackets, hyphens"),
        pytest.param("+442079460958", "GB", None, id="country-only: +44 20 London"),
        pytest.param("+4722123456", "NO", None, id="country-only: +47 Oslo landline"),
        pytest.param("+4791234567", "NO", None, id="country-only: +47 mobile"),
        pytest.param("+4930123456", "DE", None, id="country-only: +49 Berlin"),
        pytest.param("+447911123456", "GG", None, id="country-only: +44 7911 is a Guernsey mobile range"),
        pytest.param("+18005550199", "US", None, id="no-region: toll-free 800"),
        pytest.param("+18885550123", "US", None, id="no-region: toll-free 888"),
        pytest.param("+19005550123", "US", None, id="no-region: premium 900"),
        pytest.param("+19025550123", "CA", None, id="no-region: 902 covers Nova Scotia and PEI"),
        pytest.param("+18675360000", "CA", None, id="no-region: 867 city without a territory suffix"),
        pytest.param("+17875550123", "PR", None, id="nanp-territory: Puerto Rico is its own ISO country"),
        pytest.param("+80012345678", None, None, id="non-geographic: international freephone"),
    ],
)
def test_locate(number: str, country: str | None, region: str | None) -> None:
    assert locate(number) == Party(country, region)


@pytest.mark.parametrize(
    "number",
    [
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
        pytest.param("14155550132", id="no leading +"),
        pytest.param("+1415", id="too short"),
        pytest.param("+1415555013299999", id="too long"),
        pytest.param("+1 800 FLOWERS", id="letters (vanity)"),
        pytest.param("+14155550132abc", id="trailing letters"),
        pytest.param("+15555550123", id="unassigned area code 555"),
        pytest.param("+999123456789", id="no such country code"),
        pytest.param("anonymous", id="provider placeholder"),
        pytest.param("+", id="plus only"),
    ],
)
def test_locate_malformed_is_unknown_and_never_raises(number: str | None) -> None:
    assert locate(number) == Party(None, None)


# --- the data file ------------------------------------------------------------------------------

# The all-party list as documented in docs/policy.md; changing the data file means changing both.
DOCUMENTED_ALL_PARTY = (
    "CH", "DE", "FR",
    "US-CA", "US-CT", "US-DE", "US-FL", "US-IL", "US-MA", "US-MD", "US-MI", "US-MT", "US-NH",
    "US-NV", "US-PA", "US-WA",
)  # fmt: skip


def test_data_file_lists_the_documented_all_party_jurisdictions() -> None:
    assert load_consent_laws().all_party() == DOCUMENTED_ALL_PARTY


def test_every_data_file_entry_names_its_source_and_when_it_was_checked() -> None:
    laws = load_consent_laws()
    assert laws.checked == TODAY
    for entry in (*laws.entries.values(), *laws.subdivision_defaults.values()):
        assert entry.source.strip(), entry.code
        assert entry.url.startswith("http"), entry.code
        assert entry.checked is not None and entry.checked <= TODAY, entry.code
        assert entry.name, entry.code
        assert not entry.overridden


@pytest.mark.parametrize(
    ("party", "regime"),
    [
        pytest.param(Party("US", "US-CA"), ALL_PARTY, id="listed-state: California all-party"),
        pytest.param(Party("US", "US-MI"), ALL_PARTY, id="disputed-state: Michigan decided all-party"),
        pytest.param(Party("US", "US-DE"), ALL_PARTY, id="disputed-state: Delaware decided all-party"),
        pytest.param(Party("US", "US-NV"), ALL_PARTY, id="disputed-state: Nevada telephone all-party"),
        pytest.param(Party("US", "US-CT"), ALL_PARTY, id="disputed-state: Connecticut civil all-party"),
        pytest.param(Party("US", "US-OR"), ONE_PARTY, id="disputed-state: Oregon telephone one-party"),
        pytest.param(Party("US", "US-VT"), ONE_PARTY, id="disputed-state: Vermont no statute"),
        pytest.param(Party("US", "US-NY"), ONE_PARTY, id="unlisted-state: subdivision default one-party"),
        pytest.param(Party("US", "US-DC"), ONE_PARTY, id="unlisted-state: DC subdivision default"),
        pytest.param(Party("CA", "CA-QC"), ONE_PARTY, id="province: Criminal Code s.184 default"),
        pytest.param(Party("CA", None), ONE_PARTY, id="country: Canada without province is one-party"),
        pytest.param(Party("US", None), UNKNOWN, id="country: US without state is unknown"),
        pytest.param(Party("DE", None), ALL_PARTY, id="country: Germany StGB 201"),
        pytest.param(Party("NO", None), ONE_PARTY, id="country: Norway straffeloven 205"),
        pytest.param(Party("GB", None), UNKNOWN, id="unlisted-country: GB deliberately unknown"),
        pytest.param(Party(None, None), UNKNOWN, id="unplaced: unknown"),
    ],
)
def test_regime_for(party: Party, regime: str) -> None:
    assert load_consent_laws().regime_for(party) == regime


# --- classify -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("caller", "callee", "regime"),
    [
        pytest.param("+12125550143", "+14165550199", ONE_PARTY, id="both-one-party: NY to ON"),
        pytest.param("+12125550143", "+14155550132", ALL_PARTY, id="either-all-party: callee in CA"),
        pytest.param("+13125550188", "+12125550143", ALL_PARTY, id="either-all-party: caller in IL"),
        pytest.param("+12065550111", "+13125550188", ALL_PARTY, id="either-all-party: both all-party"),
        pytest.param("+442079460958", "+14155550132", ALL_PARTY, id="all-party-beats-unknown: GB to CA"),
        pytest.param("+442079460958", "+12125550143", UNKNOWN, id="unknown-side: GB to NY"),
        pytest.param("+18005550199", "+12125550143", UNKNOWN, id="unknown-side: US toll-free caller"),
        pytest.param(None, "+12125550143", UNKNOWN, id="unknown-side: withheld caller"),
        pytest.param("+4722123456", "+12125550143", ONE_PARTY, id="both-one-party: Oslo to NY"),
        pytest.param("+4930123456", "+4722123456", ALL_PARTY, id="either-all-party: Berlin to Oslo"),
        pytest.param("+19025550123", "+16045550123", ONE_PARTY, id="country-level: 902 has no province"),
        pytest.param("garbage", "+4722123456", UNKNOWN, id="malformed-side: unknown"),
    ],
)
def test_classify(caller: str | None, callee: str, regime: str) -> None:
    a, b = locate(caller), locate(callee)
    jur = classify(a, b, load_consent_laws())
    assert jur.regime == regime
    assert (jur.caller_country, jur.caller_region, jur.callee_country, jur.callee_region) == (
        a.country,
        a.region,
        b.country,
        b.region,
    )


def test_jurisdiction_as_json() -> None:
    jur = classify(locate("+14155550132"), locate("+442079460958"), load_consent_laws())
    assert jur.as_json() == {
        "caller_country": "US",
        "caller_region": "US-CA",
        "callee_country": "GB",
        "callee_region": None,
        "regime": "all_party",
    }
    assert Jurisdiction(**jur.as_json()) == jur  # type: ignore[arg-type]


# --- tenant overrides ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "party", "regime"),
    [
        pytest.param({"US-CA": "one_party"}, Party("US", "US-CA"), ONE_PARTY, id="mark: state one-party"),
        pytest.param({"US-NY": "all_party"}, Party("US", "US-NY"), ALL_PARTY, id="add: state all-party"),
        pytest.param({"GB": "one_party"}, Party("GB", None), ONE_PARTY, id="add: country one-party"),
        pytest.param({"NO": "all_party"}, Party("NO", None), ALL_PARTY, id="mark: country all-party"),
        pytest.param({"US": "one_party"}, Party("US", None), ONE_PARTY, id="add: US without state"),
        pytest.param({"DE": "unknown"}, Party("DE", None), UNKNOWN, id="mark: unknown"),
        pytest.param({"US-MI": "remove"}, Party("US", "US-MI"), ONE_PARTY, id="remove: state to default"),
        pytest.param({"DE": "remove"}, Party("DE", None), UNKNOWN, id="remove: country to unknown"),
        pytest.param({"us-ca": "one_party"}, Party("US", "US-CA"), ONE_PARTY, id="normalise: lower case"),
        pytest.param({" NO ": "all_party"}, Party("NO", None), ALL_PARTY, id="normalise: spaces"),
    ],
)
def test_overrides(overrides: dict[str, str], party: Party, regime: str) -> None:
    laws = load_consent_laws(overrides)
    assert laws.regime_for(party) == regime
    entry = laws.entry_for(party)
    if entry is not None and entry.code in laws.overrides:
        assert entry.overridden and entry.source == "tenant policy override"


def test_overrides_do_not_leak_into_the_shipped_laws_or_other_tenants() -> None:
    acme = load_consent_laws({"US-CA": "one_party"})
    assert acme.regime_for(Party("US", "US-CA")) == ONE_PARTY
    assert load_consent_laws().regime_for(Party("US", "US-CA")) == ALL_PARTY
    assert load_consent_laws({"GB": "one_party"}).regime_for(Party("US", "US-CA")) == ALL_PARTY


def test_override_changes_classification() -> None:
    caller, callee = locate("+442079460958"), locate("+12125550143")
    assert classify(caller, callee, load_consent_laws()).regime == UNKNOWN
    assert classify(caller, callee, load_consent_laws({"GB": "one_party"})).regime == ONE_PARTY


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        pytest.param({"US-XX": "all_party"}, "US-XX", id="no such state"),
        pytest.param({"DE-BY": "all_party"}, "DE-BY", id="subdivision locate never produces"),
        pytest.param({"NY": "all_party"}, "NY", id="state without country"),
        pytest.param({"California": "all_party"}, "California", id="name instead of code"),
        pytest.param({"US-CA": "two_party"}, "US-CA", id="unknown regime"),
        pytest.param({"US-CA": ""}, "US-CA", id="empty regime"),
        pytest.param({"US-CA": "one_party", "us-ca": "all_party"}, "us-ca", id="same code twice"),
    ],
)
def test_bad_overrides_name_the_code(overrides: dict[str, str], code: str) -> None:
    with pytest.raises(ConsentLawsError) as info:
        load_consent_laws(overrides)
    assert info.value.code == code


def test_bad_override_value_type() -> None:
    with pytest.raises(ConsentLawsError):
        load_consent_laws({"US-CA": 1})  # type: ignore[dict-item]


# --- the data file's own format (it is edited by hand) ------------------------------------------

_ENTRY = {"regime": "all_party", "source": "a statute", "checked": TODAY}


def _de(**changes: object) -> dict[str, object]:
    return {"checked": TODAY, "jurisdictions": {"DE": {**_ENTRY, **changes}}}


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param({"jurisdictions": {"DE": _ENTRY}}, id="no top-level checked date"),
        pytest.param(_de(regime="two"), id="bad regime"),
        pytest.param(_de(source=""), id="no source"),
        pytest.param(_de(checked="2026-11-23"), id="date as text"),
        pytest.param({"checked": TODAY, "jurisdictions": {"XX": _ENTRY}}, id="unknown code"),
        pytest.param({"checked": TODAY, "subdivision_defaults": {"DE": _ENTRY}}, id="default for DE"),
        pytest.param({"checked": TODAY, "jurisdictions": {"DE": "all_party"}}, id="entry not a table"),
    ],
)
def test_malformed_data_is_refused(raw: dict[str, object]) -> None:
    with pytest.raises(ConsentLawsError):
        _parse_data(raw)


def test_minimal_data_parses() -> None:
    laws = _parse_data({"checked": TODAY, "jurisdictions": {"de": _ENTRY}})
    assert isinstance(laws, ConsentLaws)
    assert laws.regime_for(Party("DE", None)) == ALL_PARTY
    assert laws.regime_for(Party("US", "US-CA")) == UNKNOWN  # no subdivision default given
