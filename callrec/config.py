"""Configuration: a TOML file plus ``CALLREC_<SECTION>__<KEY>`` environment overrides.

Every key is documented with its default in ``config.example.toml``. Unknown keys and bad
values stop start-up with a :class:`ConfigError` that names the key, because a typo in a
retention period or a webhook secret must never be silently ignored.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

ENV_PREFIX = "CALLREC_"
DEFAULT_TENANT = "default"

# Hosts that serve recording media for the providers we support, on the default https port.
# Twilio serves RecordingUrl from api.twilio.com. Vonage serves recording_url from api.nexmo.com
# or api.vonage.com, or from the regional host that handled the call: the geo hosts
# api-us/-eu/-ap.vonage.com and their data centres api-us-3 (Virginia), api-us-4 (Oregon),
# api-eu-3 (Dublin), api-eu-4 (Frankfurt), api-ap-3 (Singapore), api-ap-4 (Sydney)
# (https://developer.vonage.com/en/voice/voice-api/concepts/regions). Plivo serves RecordUrl
# from media.plivo.com (api.plivo.com kept for older recordings).
DEFAULT_MEDIA_HOSTS = (
    "api.twilio.com",
    "api.nexmo.com",
    "api.vonage.com",
    "api-us.vonage.com",
    "api-eu.vonage.com",
    "api-ap.vonage.com",
    "api-us-3.vonage.com",
    "api-us-4.vonage.com",
    "api-eu-3.vonage.com",
    "api-eu-4.vonage.com",
    "api-ap-3.vonage.com",
    "api-ap-4.vonage.com",
    "media.plivo.com",
    "api.plivo.com",
)
# Provider API origins: call look-ups and provider-copy deletions go here, with the tenant's
# credentials, and never to an origin named in a callback.
DEFAULT_TWILIO_API_BASE = "https://api.twilio.com"
DEFAULT_VONAGE_API_BASE = "https://api.nexmo.com"
DEFAULT_PLIVO_API_BASE = "https://api.plivo.com"

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdy])\s*$")
# A year is 366 days, so that a period kept "for 7 years" never ends before seven calendar years.
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "y": 366 * 86400}
# Keys that may be given in years: periods of keeping evidence, never of keeping personal data,
# where a year of 366 days would keep it a day too long.
_YEAR_KEYS = frozenset({"audit.anchor_retention"})
_TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class ConfigError(Exception):
    """A configuration problem; the message names the offending key."""


def parse_duration(value: object, *, key: str, years: bool = False) -> timedelta:
    """Parse ``"90d"``, ``"12h"``, ``"30m"`` or ``"45s"``; with ``years``, also ``"7y"`` (366 days each)."""
    if not isinstance(value, str):
        raise ConfigError(f'{key}: expected a duration such as "90d", got {value!r}')
    match = _DURATION.match(value)
    if not match or int(match.group(1)) <= 0 or (match.group(2) == "y" and not years):
        units = "s, m, h, d or y" if years else "s, m, h or d"
        raise ConfigError(f"{key}: expected a positive duration with unit {units}, got {value!r}")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


# --- host allow-lists ----------------------------------------------------------------------

DEFAULT_PORTS = {"https": 443, "http": 80}
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
_PORT = re.compile(r"^[0-9]{1,5}$")


def _ip_or_none(host: str) -> str | None:
    """The canonical spelling of an IP literal (``0:0::1`` is ``::1``), or None for a name."""
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return None


def _host_entry(key: str, entry: object) -> tuple[str, int | None]:
    """``host``, ``host:port`` or ``[v6]``/``[v6]:port`` → (host, port or None), else ConfigError."""
    expected = "expected host or host:port (an IPv6 literal in brackets: [::1]:8443)"
    if not isinstance(entry, str):
        raise ConfigError(f"{key}: {expected}, got {entry!r}")
    problem = None
    if not entry:
        problem = "is empty"
    elif any(c.isspace() or not c.isprintable() for c in entry):
        problem = "contains whitespace or control characters"
    elif "://" in entry:
        problem = "has a scheme"
    elif "@" in entry:
        problem = "has user info"
    elif "/" in entry or "\\" in entry:
        problem = "has a path"
    elif "?" in entry or "#" in entry:
        problem = "has a query or fragment"
    if problem:
        raise ConfigError(f"{key}: {entry!r} {problem}; {expected}")
    if entry.startswith("["):
        match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(.*))?", entry)
        try:
            host = ipaddress.IPv6Address(match.group(1)).compressed if match else None
        except ValueError:
            host = None
        if host is None or match is None:
            raise ConfigError(f"{key}: {entry!r} is not a bracketed IPv6 literal; {expected}")
        port_text = match.group(2)
    else:
        host, colon, port_text_or_empty = entry.partition(":")
        if ":" in port_text_or_empty:
            raise ConfigError(f"{key}: {entry!r}: an IPv6 literal must be in brackets; {expected}")
        port_text = port_text_or_empty if colon else None
        host = host.lower()
        ip = _ip_or_none(host)
        if ip is not None:
            host = ip
        elif not _HOSTNAME.match(host) or len(host) > 253 or host.rpartition(".")[2].isdigit():
            # An all-digit last label is no DNS name: "127.1" or "2130706433" would reach an IP
            # address through the resolver while looking like something else.
            raise ConfigError(f"{key}: {entry!r} is not a host name or IP address; {expected}")
    if port_text is None:
        return host, None
    if not _PORT.match(port_text) or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"{key}: {entry!r} needs a port from 1 to 65535 after the colon; {expected}")
    return host, int(port_text)


@dataclass(frozen=True)
class HostAllowList:
    """The hosts and ports callrec may contact on a provider's or a client's say-so, parsed once
    at load: ``[ingest] media_hosts`` and each tenant's ``callback_hosts``.

    An entry ``host`` allows that host on the default port of the URL's scheme only (443 for
    https, 80 for http); ``host:port`` allows that port only, with either scheme. Hosts match
    case-insensitively (IP literals by value), ports exactly. Iterating yields the entries in
    their canonical spelling. :func:`callrec.ingest.media.check_media_url` applies it.
    """

    key: str = ""
    entries: tuple[str, ...] = ()
    default_port_hosts: frozenset[str] = frozenset()
    host_ports: frozenset[tuple[str, int]] = frozenset()

    @classmethod
    def parse(cls, values: Iterable[object], *, key: str) -> HostAllowList:
        """Raises :class:`ConfigError` naming ``key`` for anything but ``host`` or ``host:port``."""
        entries: list[str] = []
        bare: set[str] = set()
        with_port: set[tuple[str, int]] = set()
        for value in values:
            host, port = _host_entry(key, value)
            shown = f"[{host}]" if ":" in host else host
            if port is None:
                bare.add(host)
                entries.append(shown)
            else:
                with_port.add((host, port))
                entries.append(f"{shown}:{port}")
        return cls(key, tuple(dict.fromkeys(entries)), frozenset(bare), frozenset(with_port))

    def allows(self, *, scheme: str, host: str, port: int | None) -> bool:
        """Whether ``scheme://host:port`` may be contacted (``port`` None: the scheme's default)."""
        default = DEFAULT_PORTS.get(scheme)
        if default is None:
            return False
        name = _ip_or_none(host) or host.lower()
        effective = default if port is None else port
        if (name, effective) in self.host_ports:
            return True
        return effective == default and name in self.default_port_hosts

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


_DEFAULT_MEDIA_ALLOW_LIST = HostAllowList.parse(DEFAULT_MEDIA_HOSTS, key="ingest.media_hosts")


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP literal: the only hosts plain http may reach."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_base(key: str, value: object) -> str:
    """A provider API origin, ``https://host[:port]`` with nothing after it (a trailing ``/`` is
    dropped); plain http only for a loopback host (a local fake provider in tests). The host part
    follows the allow-list grammar. Raises :class:`ConfigError` naming ``key``."""
    expected = "expected an origin such as https://api.example.com (plain http only for a loopback host)"
    if not isinstance(value, str):
        raise ConfigError(f"{key}: {expected}, got {value!r}")
    scheme, separator, rest = value.partition("://")
    scheme = scheme.lower()
    try:
        if not separator or scheme not in DEFAULT_PORTS:
            raise ConfigError("no http(s) scheme")
        host, port = _host_entry(key, rest[:-1] if rest.endswith("/") else rest)
    except ConfigError:
        raise ConfigError(f"{key}: {expected}, got {value!r}") from None
    if scheme == "http" and not is_loopback(host):
        raise ConfigError(f"{key}: {expected}, got {value!r}")
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}" + ("" if port is None else f":{port}")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    public_base_url: str = ""  # empty: http://{host}:{port}


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = ""  # empty: embedded PostgreSQL under data_dir
    pool_min: int = 1
    pool_max: int = 10


@dataclass(frozen=True)
class StorageConfig:
    backend: str = "filesystem"
    path: str = ""  # filesystem root; empty: <data_dir>/objects
    bucket: str = ""
    prefix: str = "recordings/"
    endpoint_url: str = ""
    region: str = ""
    sse: str = ""  # "", "AES256" or "aws:kms"
    sse_kms_key_id: str = ""
    multipart_threshold_mb: int = 16
    # An object put whose reference (recording row, job) has not committed after this long is an
    # orphan of a crash and is deleted by the sweeper (callrec.storage.orphans).
    orphan_grace: timedelta = timedelta(hours=1)


@dataclass(frozen=True)
class KeysConfig:
    provider: str = "local"
    path: str = ""  # local keyring file; empty: <data_dir>/keyring.json
    kms_key_id: str = ""  # aws-kms: key ARN (or alias ARN)
    kms_endpoint_url: str = ""
    kms_region: str = ""


@dataclass(frozen=True)
class IngestConfig:
    # Where recording media may be fetched from: host (default port) or host:port entries.
    media_hosts: HostAllowList = _DEFAULT_MEDIA_ALLOW_LIST
    max_media_mb: int = 512
    # The longest recording accepted: decoding stops a second past it, whatever the file declares.
    max_duration: timedelta = timedelta(hours=6)
    fetch_timeout: timedelta = timedelta(minutes=5)
    # A PBX upload's whole body must arrive within this (a client trickling bytes holds a handler).
    upload_timeout: timedelta = timedelta(minutes=10)
    max_attempts: int = 8
    retry_base: timedelta = timedelta(seconds=5)
    # How long a claim on a job lasts unless renewed: a worker that dies (kill -9, a lost machine)
    # leaves its jobs to others this long after its last renewal. Kept short because the heartbeat
    # renews it while the job runs.
    lease: timedelta = timedelta(seconds=30)
    # How often a worker renews the leases of the jobs it holds (one statement for all of them);
    # at most half the lease, so that a failed renewal is retried before the lease runs out.
    heartbeat: timedelta = timedelta(seconds=10)
    # On SIGTERM a worker stops claiming and gives the jobs it holds this long to finish, then puts
    # what is left back in the queue (no attempt spent). 25 s fits Kubernetes' default 30 s
    # terminationGracePeriodSeconds.
    shutdown_grace: timedelta = timedelta(seconds=25)
    workers: int = 2


@dataclass(frozen=True)
class RetentionConfig:
    sweep_interval: timedelta = timedelta(minutes=5)  # how often `serve` sweeps (0 is not allowed)
    sweep_batch: int = 500  # recordings destroyed per transaction
    sweep_in_serve: bool = True  # run the sweeper inside `callrec serve`


@dataclass(frozen=True)
class AuditConfig:
    """``[audit]``: anchoring the audit chain's head outside the database (:mod:`callrec.anchoring`)."""

    anchor_interval: timedelta = timedelta(hours=1)
    # S3 Object Lock (compliance mode) keeps each anchor object this long; nobody can shorten it.
    anchor_retention: timedelta = timedelta(days=7 * 366)
    # S3: where the anchors go, outside storage.prefix so that the recordings' lifecycle rules
    # never apply to them.
    anchor_prefix: str = "audit-anchors/"
    # Filesystem backend: the append-only anchor file; empty: <data_dir>/audit-anchors.jsonl.
    anchor_path: str = ""


@dataclass(frozen=True)
class AnnouncementConfig:
    """A registered announcement prompt: ``[tenants.<t>.announcements.<id>]``."""

    id: str
    audio: Path
    language: str
    version: str = "1"


@dataclass(frozen=True)
class OidcConfig:
    """Single sign-on to the staff portal through the tenant's OpenID Connect provider:
    ``[tenants.<t>.oidc]`` (``callrec.portal.sso`` runs the flow)."""

    # https URL; the provider's metadata is read from <issuer>/.well-known/openid-configuration.
    issuer: str = ""
    client_id: str = ""
    client_secret: str = ""
    # Space-separated; "openid" and "email" are required (accounts are matched by e-mail).
    scopes: str = "openid email"
    # The login page's button says "Sign in with <display_name>"; empty: the tenant's name.
    display_name: str = ""
    # "amr" values (RFC 8176) that count as multi-factor authentication done at the provider;
    # without one of them the staff member still passes callrec's own TOTP step. Only "mfa" by
    # default: "otp", "hwk" or "swk" alone can be a single factor (an e-mailed code, one key).
    mfa_amr: tuple[str, ...] = ("mfa",)
    # The ID token must say email_verified: true. A provider that leaves the claim out for the
    # addresses it manages (Entra ID) needs false here, and then only if its users cannot set
    # their own "email" (the "nOAuth" account takeover).
    require_email_verified: bool = True
    # Show the "Sign in with ..." button on the shared login page. Off by default: the page is
    # public and would list the companies using this callrec; staff can start at
    # <public_base_url>/portal/sso/<tenant> (a bookmark, or a tile at the provider) instead.
    listed: bool = False


@dataclass(frozen=True)
class TenantConfig:
    name: str
    retention: timedelta = timedelta(days=90)
    twilio_account_sid: str = ""
    twilio_auth_token: str = ""
    # Twilio's REST API for call look-ups and deletions (a Twilio region: its own origin).
    twilio_api_base: str = DEFAULT_TWILIO_API_BASE
    webhook_secret: str = ""
    delete_provider_copy: bool = False
    # Vonage signed webhooks (HS256 signature secret) and the application whose key fetches media.
    vonage_signature_secret: str = ""
    vonage_api_key: str = ""
    vonage_application_id: str = ""
    vonage_private_key_path: str = ""
    vonage_api_base: str = DEFAULT_VONAGE_API_BASE
    plivo_auth_id: str = ""
    plivo_auth_token: str = ""
    plivo_api_base: str = DEFAULT_PLIVO_API_BASE
    # Hosts deletion-request callback_urls may point at (no SSRF: nothing else is ever called);
    # the same host / host:port entries as [ingest] media_hosts.
    callback_hosts: HostAllowList = HostAllowList()
    # How long a deletion request may take: GDPR Art. 12(3) one month; CCPA 45 days.
    deletion_due: timedelta = timedelta(days=30)
    deletion_due_ccpa: timedelta = timedelta(days=45)
    # [tenants.<t>.policy]: the consent policy (callrec.consent.policy.PolicyConfig); always set
    # by the loader. Typed loosely here because the policy module itself imports this one.
    policy: Any = None
    announcements: Mapping[str, AnnouncementConfig] = field(default_factory=dict)
    # [tenants.<t>.oidc]: single sign-on for the portal; None (no table) turns it off.
    oidc: OidcConfig | None = None


@dataclass(frozen=True)
class Config:
    data_dir: Path = Path("callrec-data")
    server: ServerConfig = field(default_factory=ServerConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    keys: KeysConfig = field(default_factory=KeysConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    tenants: Mapping[str, TenantConfig] = field(
        default_factory=lambda: {DEFAULT_TENANT: _tenant(DEFAULT_TENANT, {})}
    )
    log_level: str = "INFO"

    @property
    def public_base_url(self) -> str:
        base = self.server.public_base_url or f"http://{self.server.host}:{self.server.port}"
        return base.rstrip("/")

    @property
    def storage_path(self) -> Path:
        return Path(self.storage.path) if self.storage.path else self.data_dir / "objects"

    @property
    def keyring_path(self) -> Path:
        return Path(self.keys.path) if self.keys.path else self.data_dir / "keyring.json"

    @property
    def anchor_path(self) -> Path:
        return (
            Path(self.audit.anchor_path) if self.audit.anchor_path else self.data_dir / "audit-anchors.jsonl"
        )

    def tenant(self, name: str) -> TenantConfig | None:
        return self.tenants.get(name)


# --- loading -------------------------------------------------------------------------------

_SECTIONS: dict[str, type[Any]] = {
    "server": ServerConfig,
    "database": DatabaseConfig,
    "storage": StorageConfig,
    "keys": KeysConfig,
    "ingest": IngestConfig,
    "retention": RetentionConfig,
    "audit": AuditConfig,
}
_CHOICES = {
    "storage.backend": ("filesystem", "s3"),
    "keys.provider": ("local", "aws-kms"),
    "storage.sse": ("", "AES256", "aws:kms"),
    "log_level": ("DEBUG", "INFO", "WARNING", "ERROR"),
}


def _coerce(key: str, value: object, default: object) -> object:
    """Turn a TOML or environment value into the type of the field's default."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            out = value
        elif isinstance(value, str) and value.strip().isdigit():
            out = int(value)
        else:
            raise ConfigError(f"{key}: expected a whole number, got {value!r}")
        if out < 0 or (key.endswith("port") and out > 65535):
            raise ConfigError(f"{key}: {out} is out of range")
        return out
    if isinstance(default, timedelta):
        return parse_duration(value, key=key, years=key in _YEAR_KEYS)
    if isinstance(default, HostAllowList):
        return HostAllowList.parse(_strings(key, value), key=key)
    if isinstance(default, tuple):
        return _strings(key, value)
    if isinstance(default, Path):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a path, got {value!r}")
        return Path(value)
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    allowed = _CHOICES.get(key)
    if allowed is not None and value not in allowed:
        raise ConfigError(f"{key}: expected one of {', '.join(repr(a) for a in allowed)}, got {value!r}")
    return value


def _strings(key: str, value: object) -> tuple[str, ...]:
    """A TOML list of strings, or the environment's comma-separated form."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
    return tuple(value)


def _build(cls: type[Any], section: str, raw: Mapping[str, object], **extra: object) -> Any:
    defaults = cls(**extra)
    known = {f for f in cls.__dataclass_fields__ if f not in extra}
    values: dict[str, object] = dict(extra)
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"{section}.{key}: unknown key")
        values[key] = _coerce(f"{section}.{key}", value, getattr(defaults, key))
    return cls(**values)


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``CALLREC_SERVER__PORT=9000`` → ``{"server": {"port": "9000"}}``;
    ``CALLREC_TENANTS__ACME__RETENTION=30d`` → ``{"tenants": {"acme": {"retention": "30d"}}}``."""
    out: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == "CALLREC_CONFIG":
            continue
        if name.startswith("CALLREC_TEST_"):
            continue  # test-harness settings, not service configuration
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{name}: conflicts with another CALLREC_ variable")
            node = child
        node[path[-1]] = value
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load ``path`` (or ``$CALLREC_CONFIG``; none at all means embedded defaults) and apply
    environment overrides. Raises :class:`ConfigError` naming the key on any problem."""
    environ = os.environ if environ is None else environ
    if path is None and environ.get("CALLREC_CONFIG"):
        path = Path(environ["CALLREC_CONFIG"])
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    raw = _merge(raw, _env_overrides(environ))
    return config_from_mapping(raw)


def _tenant(name: str, body: Mapping[str, Any]) -> TenantConfig:
    from callrec.consent.policy import policy_config_from_mapping  # imports this module

    key = f"tenants.{name}"
    plain = {k: v for k, v in body.items() if k not in ("policy", "announcements", "oidc")}
    policy_raw = body.get("policy", {})
    if not isinstance(policy_raw, Mapping):
        raise ConfigError(f"{key}.policy: expected a table")
    announcements_raw = body.get("announcements", {})
    if not isinstance(announcements_raw, Mapping):
        raise ConfigError(f"{key}.announcements: expected a table of announcements")
    announcements = {}
    for ann_id, ann in announcements_raw.items():
        akey = f"{key}.announcements.{ann_id}"
        if not isinstance(ann, Mapping):
            raise ConfigError(f"{akey}: expected a table with audio, language and version")
        unknown = sorted(set(ann) - {"audio", "language", "version"})
        if unknown:
            raise ConfigError(f"{akey}.{unknown[0]}: unknown key")
        for field_name in ("audio", "language"):
            if not isinstance(ann.get(field_name), str) or not ann[field_name]:
                raise ConfigError(f"{akey}.{field_name}: required")
        version = ann.get("version", "1")
        if not isinstance(version, str | int):
            raise ConfigError(f"{akey}.version: expected a string")
        announcements[ann_id] = AnnouncementConfig(
            id=ann_id, audio=Path(ann["audio"]), language=ann["language"], version=str(version)
        )
    oidc = _oidc(f"{key}.oidc", body["oidc"]) if "oidc" in body else None
    if oidc is not None and name == "callback":
        raise ConfigError(
            f"{key}.oidc: a tenant named 'callback' cannot use single sign-on (its path is taken)"
        )
    tenant: TenantConfig = _build(TenantConfig, key, plain, name=name, announcements=announcements, oidc=oidc)
    if "callback_hosts" not in plain:  # an empty list names this tenant's key when it refuses
        tenant = replace(tenant, callback_hosts=HostAllowList(key=f"{key}.callback_hosts"))
    policy = policy_config_from_mapping(policy_raw, key=f"{key}.policy", tenant_retention=tenant.retention)
    return replace(
        tenant,
        policy=policy,
        twilio_api_base=api_base(f"{key}.twilio_api_base", tenant.twilio_api_base),
        vonage_api_base=api_base(f"{key}.vonage_api_base", tenant.vonage_api_base),
        plivo_api_base=api_base(f"{key}.plivo_api_base", tenant.plivo_api_base),
    )


# Plain http only for an identity provider on this machine (tests, a local development IdP).
_LOOPBACK_HTTP = re.compile(r"^http://(127\.0\.0\.1|localhost|\[::1\])(:\d{1,5})?(/[^\s?#]*)?$")
_HTTPS_URL = re.compile(r"^https://[^/\s?#@]+(/[^\s?#]*)?$")


def _oidc(key: str, raw: object) -> OidcConfig:
    """``[tenants.<t>.oidc]``. The issuer must be https (OpenID Connect Discovery 1.0 §2 and
    §4.3), because everything the portal trusts about a sign-in comes from it."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key}: expected a table with issuer, client_id and client_secret")
    oidc: OidcConfig = _build(OidcConfig, key, raw)
    if not oidc.issuer:
        raise ConfigError(f"{key}.issuer: required")
    if not (_HTTPS_URL.match(oidc.issuer) or _LOOPBACK_HTTP.match(oidc.issuer)):
        raise ConfigError(
            f"{key}.issuer: expected an https URL without query or fragment (plain http only for "
            f"127.0.0.1 or localhost), got {oidc.issuer!r}"
        )
    if not oidc.client_id:
        raise ConfigError(f"{key}.client_id: required")
    if not oidc.client_secret:
        env = "CALLREC_" + key.upper().replace(".", "__") + "__CLIENT_SECRET"
        raise ConfigError(f"{key}.client_secret: required (in the file or as {env})")
    scopes = oidc.scopes.split()
    if "openid" not in scopes or "email" not in scopes:
        raise ConfigError(f'{key}.scopes: must include "openid" and "email", got {oidc.scopes!r}')
    return replace(oidc, scopes=" ".join(scopes))


def _seconds(value: timedelta) -> str:
    return f"{value.total_seconds():g}s"


_KEY_PREFIX = re.compile(r"^([A-Za-z0-9_-][A-Za-z0-9._-]*/)+$")


def _check_anchor_prefix(audit: AuditConfig, storage: StorageConfig) -> None:
    """The anchors' S3 prefix: object-key segments ending in "/", and apart from the recordings'
    prefix, whose lifecycle rules (``callrec storage check``) expire what lies under it."""
    prefix = audit.anchor_prefix
    if not _KEY_PREFIX.match(prefix) or len(prefix) > 100:
        raise ConfigError(
            f'audit.anchor_prefix: expected segments of [A-Za-z0-9._-] ending in "/", such as '
            f'"audit-anchors/", got {prefix!r}'
        )
    if storage.backend == "s3" and (prefix.startswith(storage.prefix) or storage.prefix.startswith(prefix)):
        raise ConfigError(
            f"audit.anchor_prefix: {prefix!r} overlaps storage.prefix {storage.prefix!r}; the recordings' "
            "lifecycle rules apply under storage.prefix, so the anchors need a prefix of their own"
        )


def config_from_mapping(raw: Mapping[str, Any]) -> Config:
    top: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _SECTIONS or key == "tenants":
            if not isinstance(value, Mapping):
                raise ConfigError(f"{key}: expected a table")
            continue
        if key not in ("data_dir", "log_level"):
            raise ConfigError(f"{key}: unknown key")
        top[key] = _coerce(key, value, getattr(Config(), key))
    sections = {name: _build(cls, name, raw.get(name, {})) for name, cls in _SECTIONS.items()}

    tenants_raw = raw.get("tenants", {})
    tenants: dict[str, TenantConfig] = {}
    for name, body in tenants_raw.items():
        if not _TENANT_NAME.match(name):
            raise ConfigError(f"tenants.{name}: tenant names are lower-case letters, digits, '-' and '_'")
        if not isinstance(body, Mapping):
            raise ConfigError(f"tenants.{name}: expected a table")
        tenants[name] = _tenant(name, body)
    if not tenants:
        tenants = {DEFAULT_TENANT: _tenant(DEFAULT_TENANT, {})}

    storage: StorageConfig = sections["storage"]
    if storage.backend == "s3" and not storage.bucket:
        raise ConfigError('storage.bucket: required when storage.backend = "s3"')
    keys: KeysConfig = sections["keys"]
    if keys.provider == "aws-kms" and not keys.kms_key_id.startswith("arn:"):
        raise ConfigError('keys.kms_key_id: an AWS KMS key ARN is required when keys.provider = "aws-kms"')
    ingest: IngestConfig = sections["ingest"]
    if ingest.heartbeat * 2 > ingest.lease:
        raise ConfigError(
            f"ingest.heartbeat: must be at most half of ingest.lease ({_seconds(ingest.lease)}) so that a "
            f"failed renewal is retried before the lease runs out, got {_seconds(ingest.heartbeat)}"
        )
    _check_anchor_prefix(sections["audit"], storage)
    server: ServerConfig = sections["server"]
    if server.public_base_url and not re.match(r"^https?://[^/\s]+(/.*)?$", server.public_base_url):
        raise ConfigError(f"server.public_base_url: expected an http(s) URL, got {server.public_base_url!r}")
    return Config(tenants=tenants, **top, **sections)
