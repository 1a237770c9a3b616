from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from callrec.config import ConfigError, config_from_mapping, load_config, parse_duration


def test_embedded_defaults_with_no_file_and_no_environment() -> None:
    cfg = load_config(None, environ={})
    assert cfg.database.url == ""
    assert cfg.storage.backend == "filesystem"
    assert cfg.keys.provider == "local"
    assert list(cfg.tenants) == ["default"]
    assert cfg.tenants["default"].retention == timedelta(days=90)
    assert cfg.storage_path == Path("callrec-data/objects")
    assert cfg.keyring_path == Path("callrec-data/keyring.json")


@pytest.mark.parametrize(
    ("text", "seconds"), [("90d", 90 * 86400), ("12h", 43200), ("30m", 1800), ("45s", 45)]
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text, key="k").total_seconds() == seconds


@pytest.mark.parametrize("text", ["90", "0d", "-1d", "1w", "d", "", "9 days"])
def test_bad_durations_name_the_key(text: str) -> None:
    with pytest.raises(ConfigError, match=r"tenants\.acme\.retention"):
        config_from_mapping({"tenants": {"acme": {"retention": text}}})


def test_file_and_environment_overrides(tmp_path: Path) -> None:
    path = tmp_path / "callrec.toml"
    path.write_text(
        'data_dir = "/srv/callrec"\n[server]\nport = 9000\n[tenants.acme]\nretention = "30d"\n'
        'webhook_secret = "s"\n',
        encoding="utf-8",
    )
    cfg = load_config(
        path,
        environ={
            "CALLREC_SERVER__PORT": "9100",
            "CALLREC_TENANTS__ACME__DELETE_PROVIDER_COPY": "true",
            "CALLREC_INGEST__MEDIA_HOSTS": "api.twilio.com, 127.0.0.1",
            "CALLREC_TEST_DATABASE_URL": "ignored: test harness only",
        },
    )
    assert cfg.server.port == 9100
    assert cfg.data_dir == Path("/srv/callrec")
    assert cfg.tenants["acme"].retention == timedelta(days=30)
    assert cfg.tenants["acme"].delete_provider_copy is True
    assert cfg.ingest.media_hosts.entries == ("api.twilio.com", "127.0.0.1")
    assert list(cfg.tenants) == ["acme"]


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"server": {"prot": 1}}, "server.prot"),
        ({"colour": "blue"}, "colour"),
        ({"server": {"port": "http"}}, "server.port"),
        ({"server": {"port": 70000}}, "server.port"),
        ({"storage": {"backend": "ftp"}}, "storage.backend"),
        ({"storage": {"backend": "s3"}}, "storage.bucket"),
        ({"keys": {"provider": "aws-kms"}}, "keys.kms_key_id"),
        ({"tenants": {"Acme Corp": {}}}, "tenants.Acme Corp"),
        ({"tenants": {"acme": {"delete_provider_copy": "sometimes"}}}, "tenants.acme.delete_provider_copy"),
        ({"tenants": {"acme": {"retention_days": 3}}}, "tenants.acme.retention_days"),
        ({"server": {"public_base_url": "callrec.example.com"}}, "server.public_base_url"),
        ({"audit": {"anchor_intervall": "1h"}}, "audit.anchor_intervall"),
        ({"audit": {"anchor_interval": "0h"}}, "audit.anchor_interval"),
        ({"audit": {"anchor_interval": "1y"}}, "audit.anchor_interval"),  # years only for retention
        ({"audit": {"anchor_retention": "forever"}}, "audit.anchor_retention"),
        ({"audit": {"anchor_prefix": "anchors"}}, "audit.anchor_prefix"),
        ({"audit": {"anchor_prefix": "../anchors/"}}, "audit.anchor_prefix"),
        (
            {"storage": {"backend": "s3", "bucket": "b"}, "audit": {"anchor_prefix": "recordings/anchors/"}},
            "audit.anchor_prefix",
        ),
        ({"storage": {"backend": "s3", "bucket": "b", "prefix": ""}}, "audit.anchor_prefix"),
    ],
)
def test_bad_config_names_the_key(raw: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(raw)
    assert key in str(info.value)


def test_audit_section_defaults_and_years() -> None:
    from datetime import timedelta

    cfg = config_from_mapping({"data_dir": "/srv/callrec"})
    assert cfg.audit.anchor_interval == timedelta(hours=1)
    assert cfg.audit.anchor_retention == timedelta(days=7 * 366)  # never short of seven calendar years
    assert cfg.audit.anchor_prefix == "audit-anchors/"
    assert cfg.anchor_path == Path("/srv/callrec/audit-anchors.jsonl")
    cfg = load_config(
        None,
        environ={"CALLREC_AUDIT__ANCHOR_RETENTION": "10y", "CALLREC_AUDIT__ANCHOR_INTERVAL": "15m"},
    )
    assert cfg.audit.anchor_retention == timedelta(days=3660)
    assert cfg.audit.anchor_interval == timedelta(minutes=15)
    with pytest.raises(ConfigError, match=r"tenants\.acme\.retention"):  # years are for evidence only
        config_from_mapping({"tenants": {"acme": {"retention": "1y"}}})


def test_environment_typo_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"server\.hots"):
        load_config(None, environ={"CALLREC_SERVER__HOTS": "127.0.0.2"})


def test_leases_are_short_and_renewed_well_before_they_run_out() -> None:
    ingest = load_config(None, environ={}).ingest
    # A dead worker's jobs are taken over within a minute; a SIGTERM fits Kubernetes' 30 s.
    assert ingest.lease <= timedelta(minutes=1) and ingest.heartbeat * 3 <= ingest.lease
    assert ingest.shutdown_grace < timedelta(seconds=30)
    cfg = load_config(None, environ={"CALLREC_INGEST__LEASE": "2m", "CALLREC_INGEST__SHUTDOWN_GRACE": "50s"})
    assert (cfg.ingest.lease, cfg.ingest.shutdown_grace) == (timedelta(minutes=2), timedelta(seconds=50))
    with pytest.raises(ConfigError, match=r"ingest\.heartbeat: must be at most half of ingest\.lease"):
        config_from_mapping({"ingest": {"lease": "15s"}})  # the 10 s heartbeat would be too slow
    with pytest.raises(ConfigError, match=r"ingest\.shutdown_grace"):
        config_from_mapping({"ingest": {"shutdown_grace": "0s"}})


def test_example_config_documents_every_key() -> None:
    """config.example.toml parses and mentions every key the loader knows."""
    import tomllib

    from callrec import config as config_module

    example = Path(__file__).resolve().parent.parent / "config.example.toml"
    text = example.read_text(encoding="utf-8")
    config_from_mapping(tomllib.loads(text))
    for section, cls in config_module._SECTIONS.items():
        for name in cls.__dataclass_fields__:
            assert f"{name} =" in text or f"# {name} =" in text, f"{section}.{name} is not documented"
    for name in config_module.TenantConfig.__dataclass_fields__:
        if name in ("policy", "announcements", "oidc"):  # tables of their own
            assert f"[tenants.default.{name}" in text or f"# [tenants.default.{name}" in text, name
        elif name != "name":
            assert f"{name} =" in text, f"tenants.<name>.{name} is not documented"
    for name in config_module.OidcConfig.__dataclass_fields__:
        assert f"# {name} =" in text, f"tenants.<name>.oidc.{name} is not documented"
    from callrec.consent.policy import PolicyConfig

    for name in PolicyConfig.__dataclass_fields__:
        assert f"{name} =" in text or f"policy.{name}]" in text, (
            f"tenants.<name>.policy.{name} is not documented"
        )


# --- media_hosts, callback_hosts and the provider API bases (issue 9, defect 4) ------------------

MALFORMED_HOST_ENTRIES = [
    "https://api.twilio.com",  # a scheme
    "api.twilio.com/2010-04-01",  # a path
    "api.twilio.com?x=1",  # a query
    "user@api.twilio.com",  # user info
    "api.twilio.com:",  # an empty port
    "api.twilio.com:0",  # out of range
    "api.twilio.com:65536",
    "api.twilio.com:https",
    " api.twilio.com",  # whitespace
    "api.twilio.com ",
    "api twilio.com",
    "",
    "::1",  # IPv6 without brackets
    "[::1]:",
    "[not-v6]:8443",
    "127.1",  # an IP address in disguise
    "api_twilio.com",
]


@pytest.mark.parametrize("entry", MALFORMED_HOST_ENTRIES)
def test_malformed_media_host_stops_start_up_naming_the_key(entry: str) -> None:
    with pytest.raises(ConfigError, match=r"^ingest\.media_hosts: "):
        config_from_mapping({"ingest": {"media_hosts": ["api.twilio.com", entry]}})


# In the environment's comma-separated form, spaces around an entry separate it from the next.
@pytest.mark.parametrize("entry", [e for e in MALFORMED_HOST_ENTRIES if e and e == e.strip()])
def test_malformed_media_host_in_the_environment_names_the_key(entry: str) -> None:
    with pytest.raises(ConfigError, match=r"^ingest\.media_hosts: "):
        load_config(None, environ={"CALLREC_INGEST__MEDIA_HOSTS": f"api.twilio.com,{entry}"})


def test_media_hosts_from_the_environment_keep_their_ports() -> None:
    cfg = load_config(None, environ={"CALLREC_INGEST__MEDIA_HOSTS": "API.Twilio.com, 127.0.0.1:8443,[::1]:9"})
    hosts = cfg.ingest.media_hosts
    assert hosts.entries == ("api.twilio.com", "127.0.0.1:8443", "[::1]:9")
    assert hosts.allows(scheme="https", host="api.twilio.com", port=443)
    assert not hosts.allows(scheme="https", host="api.twilio.com", port=8443)
    assert hosts.allows(scheme="http", host="127.0.0.1", port=8443)
    assert not hosts.allows(scheme="http", host="127.0.0.1", port=80)
    assert hosts.allows(scheme="http", host="0:0::1", port=9)


def test_a_bare_host_allows_only_the_schemes_default_port() -> None:
    hosts = config_from_mapping({"ingest": {"media_hosts": ["media.example.com"]}}).ingest.media_hosts
    assert hosts.allows(scheme="https", host="MEDIA.example.com", port=None)
    assert hosts.allows(scheme="https", host="media.example.com", port=443)
    assert hosts.allows(scheme="http", host="media.example.com", port=80)
    assert not hosts.allows(scheme="http", host="media.example.com", port=443)
    assert not hosts.allows(scheme="https", host="media.example.com", port=18103)
    assert not hosts.allows(scheme="https", host="other.example.com", port=443)


def test_malformed_callback_host_names_the_tenants_key() -> None:
    with pytest.raises(ConfigError, match=r"^tenants\.acme\.callback_hosts: "):
        config_from_mapping({"tenants": {"acme": {"callback_hosts": ["https://hooks.example.com/dsr"]}}})


def test_api_bases_default_to_the_providers_and_are_origins() -> None:
    tenant = config_from_mapping(
        {"tenants": {"acme": {"twilio_api_base": "https://API.dublin.ie1.twilio.com/"}}}
    )
    acme = tenant.tenants["acme"]
    assert acme.twilio_api_base == "https://api.dublin.ie1.twilio.com"
    assert acme.vonage_api_base == "https://api.nexmo.com"
    assert acme.plivo_api_base == "https://api.plivo.com"
    assert config_from_mapping({}).tenants["default"].twilio_api_base == "https://api.twilio.com"


@pytest.mark.parametrize("name", ["twilio_api_base", "vonage_api_base", "plivo_api_base"])
@pytest.mark.parametrize(
    "value",
    [
        "https://api.example.com/2010-04-01",  # a path
        "https://api.example.com?x=1",
        "https://user:pw@api.example.com",
        "http://api.example.com",  # plain http off loopback
        "api.example.com",
        "https://api.example.com:",
        "",
    ],
)
def test_malformed_api_base_stops_start_up_naming_the_key(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"^tenants\.acme\.{name}: "):
        config_from_mapping({"tenants": {"acme": {name: value}}})


def test_cli_start_up_stops_on_a_malformed_media_host(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from callrec.cli import main

    monkeypatch.delenv("CALLREC_CONFIG", raising=False)
    monkeypatch.setenv("CALLREC_INGEST__MEDIA_HOSTS", "api.twilio.com,127.0.0.1:")
    assert main(["migrate"]) == 2  # before any database is touched
    assert "ingest.media_hosts" in capsys.readouterr().err
