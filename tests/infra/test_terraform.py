"""infra/terraform: parsed with python-hcl2 (terraform cannot be installed here), scanned by checkov
in its own virtual environment, and held against what callrec's code expects of the bucket
(``callrec storage check``) and of its configuration (config.example.toml, callrec.config)."""

from __future__ import annotations

import dataclasses
import inspect
import re
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from callrec.config import AuditConfig, Config, StorageConfig, load_config
from callrec.storage import check
from callrec.storage.check import BACKSTOP_RULE_PREFIX, backstop_rules, check_bucket
from callrec.storage.s3 import S3ObjectStore

from . import checkov_env
from .terraform_hcl import (
    MODULE,
    REPO,
    Module,
    Unresolved,
    Values,
    configure_bucket,
    lifecycle_rules,
    load_module,
    one,
    parse,
    tf_files,
)

README = MODULE / "README.md"

# Outputs that are not callrec configuration keys, and what they are for.
PLATFORM_OUTPUTS = {
    "callrec_environment": "the configuration outputs again, as CALLREC_* variables",
    "runtime_role_arn": "the role callrec's processes run with",
    "runtime_instance_profile_name": "EC2 instance profile of the runtime role",
    "runtime_policy_arn": "the runtime policy, for a role of the platform's own",
    "admin_role_arn": "the role operators assume for storage check --apply, doctor, keys rotate",
    "admin_policy_arn": "the admin policy",
    "log_bucket": "where the access logs go",
    "database_master_user_secret_arn": "where the database password is (PGPASSWORD)",
}
# The configuration every deployment on this module needs.
REQUIRED_CONFIG = {
    ("storage", "backend"),
    ("storage", "bucket"),
    ("storage", "prefix"),
    ("storage", "region"),
    ("storage", "sse"),
    ("storage", "sse_kms_key_id"),
    ("keys", "provider"),
    ("keys", "kms_key_id"),
    ("database", "url"),
    ("audit", "anchor_prefix"),
}
BUCKET_KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555"
KEK_ARN = "arn:aws:kms:us-east-1:123456789012:key/66666666-7777-8888-9999-000000000000"


@pytest.fixture(scope="module")
def module() -> Module:
    return load_module()


def known(bucket: str = "callrec-recordings-example", *, bucket_key: str = BUCKET_KEY_ARN) -> dict[str, Any]:
    """Values for the resource attributes the tests need, as terraform would know them after apply."""
    return {
        "aws_s3_bucket.recordings.id": bucket,
        "aws_s3_bucket.recordings.arn": f"arn:aws:s3:::{bucket}",
        "aws_kms_key.bucket.arn": bucket_key,
        "aws_kms_key.kek.arn": KEK_ARN,
        "data.aws_region.current.name": "us-east-1",
    }


def values_for(module: Module, **variables: Any) -> Values:
    return Values(module, known(), {"bucket_name": "callrec-recordings-example", **variables})


# --- parsing ------------------------------------------------------------------------------------


def test_the_module_has_its_files() -> None:
    names = {p.name for p in tf_files()}
    assert {"versions.tf", "variables.tf", "outputs.tf", "s3.tf", "kms.tf", "iam.tf", "rds.tf"} <= names
    assert README.is_file()


@pytest.mark.parametrize("path", tf_files(), ids=lambda p: p.name)
def test_every_file_parses(path: Path) -> None:
    doc = parse(path)
    blocks = {"resource", "data", "variable", "output", "locals", "terraform"}
    assert set(doc) & blocks, f"{path.name} declares nothing"
    assert set(doc) <= blocks, f"{path.name}: unexpected top-level blocks {set(doc) - blocks}"


def test_every_variable_and_output_is_described(module: Module) -> None:
    for name, variable in module.variables.items():
        assert variable.get("description"), f"variable {name} has no description"
        assert variable.get("type"), f"variable {name} has no type"
    for name, output in module.outputs.items():
        assert output.get("description"), f"output {name} has no description"


# --- the buckets --------------------------------------------------------------------------------


def _for_bucket(module: Module, kind: str, bucket: str) -> dict[str, Any]:
    matches = [
        body for _, body in module.of_kind(kind) if body["bucket"] == f"${{aws_s3_bucket.{bucket}.id}}"
    ]
    assert len(matches) == 1, f"{kind} for aws_s3_bucket.{bucket}: {len(matches)} found"
    return matches[0]


def test_recordings_bucket_has_object_lock_with_no_default_retention(module: Module) -> None:
    assert module.resource("aws_s3_bucket", "recordings")["object_lock_enabled"] is True
    # That resource exists to set a default retention; callrec must not have one.
    assert not list(module.of_kind("aws_s3_bucket_object_lock_configuration"))


@pytest.mark.parametrize("bucket", ["recordings", "logs"])
def test_every_bucket_is_hardened(module: Module, bucket: str) -> None:
    versioning = one(_for_bucket(module, "aws_s3_bucket_versioning", bucket)["versioning_configuration"])
    assert versioning["status"] == "Enabled"
    block = _for_bucket(module, "aws_s3_bucket_public_access_block", bucket)
    for flag in ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets"):
        assert block[flag] is True, flag
    ownership = one(_for_bucket(module, "aws_s3_bucket_ownership_controls", bucket)["rule"])
    assert ownership["object_ownership"] == "BucketOwnerEnforced"
    sse = one(_for_bucket(module, "aws_s3_bucket_server_side_encryption_configuration", bucket)["rule"])
    assert one(sse["apply_server_side_encryption_by_default"])["sse_algorithm"] in ("aws:kms", "AES256")
    assert _for_bucket(module, "aws_s3_bucket_lifecycle_configuration", bucket)["rule"]
    assert module.resource("aws_s3_bucket", bucket)["force_destroy"] is False
    policy = _for_bucket(module, "aws_s3_bucket_policy", bucket)["policy"]
    document = module.data[
        (
            "aws_iam_policy_document",
            policy.removeprefix("${data.aws_iam_policy_document.").removesuffix(".json}"),
        )
    ]
    no_tls = [
        s
        for s in document["statement"]
        if s["effect"] == "Deny"
        and s["actions"] == ["s3:*"]
        and {"test": "Bool", "variable": "aws:SecureTransport", "values": ["false"]} in s["condition"]
    ]
    assert len(no_tls) == 1, "no statement denies plain HTTP"
    arn = f"${{aws_s3_bucket.{bucket}.arn}}"
    assert set(no_tls[0]["resources"]) == {arn, f"{arn}/*"}


def test_recordings_bucket_encrypts_with_its_key_and_a_bucket_key(module: Module) -> None:
    rule = one(module.resource("aws_s3_bucket_server_side_encryption_configuration", "recordings")["rule"])
    by_default = one(rule["apply_server_side_encryption_by_default"])
    assert by_default == {"sse_algorithm": "aws:kms", "kms_master_key_id": "${aws_kms_key.bucket.arn}"}
    assert rule["bucket_key_enabled"] is True


def test_access_logs_go_to_the_log_bucket(module: Module) -> None:
    logging = module.resource("aws_s3_bucket_logging", "recordings")
    assert logging["target_bucket"] == "${aws_s3_bucket.logs.id}"
    [delivery] = [
        s
        for s in module.data[("aws_iam_policy_document", "logs_bucket")]["statement"]
        if s["effect"] == "Allow"
    ]
    assert one(delivery["principals"])["identifiers"] == ["logging.s3.amazonaws.com"]
    assert {
        "test": "ArnLike",
        "variable": "aws:SourceArn",
        "values": ["${aws_s3_bucket.recordings.arn}"],
    } in delivery["condition"]
    # the logging service may write under s3-access/ only, which is where the recordings' logs go
    assert delivery["resources"] == ["${aws_s3_bucket.logs.arn}/s3-access/*"]
    assert values_for(module)(logging["target_prefix"]) == "s3-access/callrec-recordings-example/"


def test_kms_keys_rotate(module: Module) -> None:
    keys = dict(module.of_kind("aws_kms_key"))
    assert {"kek", "bucket"} <= set(keys)
    for name, key in keys.items():
        assert key["enable_key_rotation"] is True, name
        assert key["rotation_period_in_days"] == "${var.kms_rotation_period_days}", name
        assert key["policy"], name


# --- the lifecycle backstop, against callrec/storage/check.py -----------------------------------


def _margin() -> timedelta:
    """The margin `callrec storage check` uses when none is given (the CLI gives none)."""
    margin = inspect.signature(check_bucket).parameters["margin"].default
    assert isinstance(margin, timedelta)
    return margin


@pytest.mark.parametrize("retention_days", [90, 30, 366])
def test_backstop_rules_are_exactly_what_storage_check_sets(module: Module, retention_days: int) -> None:
    values = values_for(module, retention_days=retention_days)
    prefix = values("${var.storage_prefix}")
    ours = {r["ID"]: r for r in lifecycle_rules(module, values) if r["ID"].startswith(BACKSTOP_RULE_PREFIX)}
    wanted = backstop_rules(prefix, retention=timedelta(days=retention_days), margin=_margin())
    assert ours == {rule["ID"]: rule for rule in wanted.values()}


def test_lifecycle_rules_leave_the_audit_anchors_alone(module: Module) -> None:
    values = values_for(module)
    storage_prefix, anchor_prefix = values("${var.storage_prefix}"), values("${var.anchor_prefix}")
    assert not anchor_prefix.startswith(storage_prefix) and not storage_prefix.startswith(anchor_prefix)
    for rule in lifecycle_rules(module, values):
        if "Expiration" in rule or "NoncurrentVersionExpiration" in rule:
            # check.py's own test of whether a rule may apply to objects under a prefix
            assert not check._overlaps(rule, anchor_prefix), f"rule {rule['ID']} expires anchors"
        else:
            assert set(rule) == {"ID", "Status", "Filter", "AbortIncompleteMultipartUpload"}, rule
    assert module.variables["anchor_prefix"]["default"] == AuditConfig().anchor_prefix


@pytest.fixture
async def kms_bucket_key(moto_endpoint: str) -> str:
    kms = boto3.client("kms", region_name="us-east-1", endpoint_url=moto_endpoint)
    arn: str = kms.create_key(Description="bucket key for the terraform test")["KeyMetadata"]["Arn"]
    return arn


@pytest.fixture
async def described_bucket(
    module: Module, moto_endpoint: str, kms_bucket_key: str
) -> AsyncIterator[tuple[S3ObjectStore, Any, Values]]:
    """A moto bucket set up from the module's description of the recordings bucket, and a store on it
    configured from the module's outputs."""
    bucket = f"callrec-tf-{uuid.uuid4().hex[:12]}"
    values = Values(module, known(bucket, bucket_key=kms_bucket_key), {"bucket_name": bucket})
    client = boto3.client("s3", region_name="us-east-1", endpoint_url=moto_endpoint)
    configure_bucket(client, module, values, bucket, kms_key_arn=kms_bucket_key)
    outputs = {
        name: values(body["value"]) for name, body in module.outputs.items() if name.startswith("storage_")
    }
    store = S3ObjectStore(
        StorageConfig(
            backend=outputs["storage_backend"],
            bucket=outputs["storage_bucket"],
            prefix=outputs["storage_prefix"],
            region=outputs["storage_region"],
            sse=outputs["storage_sse"],
            sse_kms_key_id=outputs["storage_sse_kms_key_id"],
            endpoint_url=moto_endpoint,
        )
    )
    try:
        yield store, client, values
    finally:
        await store.close()


async def test_storage_check_passes_on_the_bucket_the_module_describes(
    described_bucket: tuple[S3ObjectStore, Any, Values],
) -> None:
    store, _, values = described_bucket
    findings = await check_bucket(
        store,
        retention=timedelta(days=values("${var.retention_days}")),
        # as `callrec storage check` calls it, with the anchors' prefix output as audit.anchor_prefix
        anchor_prefix=values("${var.anchor_prefix}"),
        anchor_retention=AuditConfig().anchor_retention,
    )
    assert [f for f in findings if f.status != "ok"] == []
    assert {f.name for f in findings} >= {*check.RULE_IDS, check.OBJECT_LOCK, check.ENCRYPTION, check.ANCHORS}


async def test_storage_check_would_notice_a_backstop_rule_missing(
    described_bucket: tuple[S3ObjectStore, Any, Values], module: Module
) -> None:
    """The comparison above is not vacuous: without any one of the module's backstop rules, the
    check reports that requirement."""
    store, client, values = described_bucket
    rules = lifecycle_rules(module, values)
    for name, rule_id in check.RULE_IDS.items():
        kept = [r for r in rules if r["ID"] != rule_id]
        client.put_bucket_lifecycle_configuration(Bucket=store.bucket, LifecycleConfiguration={"Rules": kept})
        findings = {f.name: f for f in await check_bucket(store, retention=timedelta(days=90))}
        if name == check.ABORT_MULTIPART:
            # the module's bucket-wide abort rule meets this requirement too
            assert findings[name].status == "ok"
        else:
            assert findings[name].status == "missing", name


# --- outputs and callrec's configuration --------------------------------------------------------


def _config_keys() -> set[tuple[str, str]]:
    """(section, key) of every key of callrec.config's sections."""
    keys = set()
    defaults = Config()
    for section in dataclasses.fields(Config):
        value = getattr(defaults, section.name)
        if dataclasses.is_dataclass(value):
            keys |= {(section.name, f.name) for f in dataclasses.fields(value)}
    return keys


def _documented_keys() -> set[tuple[str, str]]:
    """(section, key) of every key config.example.toml shows, set or commented out."""
    keys = set()
    section = ""
    for line in (REPO / "config.example.toml").read_text().splitlines():
        header = re.match(r"^\[([a-z_.]+)\]$", line.strip())
        if header:
            section = header.group(1)
            continue
        key = re.match(r"^#?\s?([a-z_]+) = ", line)
        if key and section:
            keys.add((section, key.group(1)))
    return keys


def _config_output(name: str) -> tuple[str, str]:
    sections = {section for section, _ in _config_keys()}
    section, _, key = name.partition("_")
    assert section in sections and key, f"output {name} is neither <section>_<key> nor in PLATFORM_OUTPUTS"
    return section, key


def test_outputs_name_real_config_keys(module: Module) -> None:
    config_keys, documented = _config_keys(), _documented_keys()
    assert ("storage", "sse_kms_key_id") in documented  # the parse of config.example.toml works
    named = set()
    for name, output in module.outputs.items():
        if name in PLATFORM_OUTPUTS:
            continue
        section, key = _config_output(name)
        assert (section, key) in config_keys, f"output {name}: callrec has no key {section}.{key}"
        assert (section, key) in documented, (
            f"output {name}: config.example.toml does not show {section}.{key}"
        )
        assert output["description"].startswith(f"{section}.{key}"), name
        named.add((section, key))
    assert REQUIRED_CONFIG <= named, f"missing outputs for {sorted(REQUIRED_CONFIG - named)}"
    assert set(PLATFORM_OUTPUTS) <= set(module.outputs), "PLATFORM_OUTPUTS lists outputs that are gone"


def test_storage_sse_is_aws_kms(module: Module) -> None:
    # The bucket policy refuses uploads that ask for anything else.
    assert module.outputs["storage_sse"]["value"] == "aws:kms"
    assert module.outputs["storage_sse_kms_key_id"]["value"] == "${aws_kms_key.bucket.arn}"
    assert module.outputs["keys_provider"]["value"] == "aws-kms"
    assert module.outputs["keys_kms_key_id"]["value"] == "${aws_kms_key.kek.arn}"
    assert module.outputs["storage_backend"]["value"] == "s3"


def test_environment_output_matches_the_config_outputs_one_to_one(module: Module) -> None:
    environment = module.locals["callrec_environment"]
    from_env = {}
    for variable, expression in environment.items():
        section, _, key = variable.removeprefix("CALLREC_").lower().partition("__")
        from_env[(section, key)] = expression
    from_outputs = {
        _config_output(name): output["value"]
        for name, output in module.outputs.items()
        if name not in PLATFORM_OUTPUTS and name != "database_url"
    }
    assert from_env == from_outputs
    # database.url joins only with a database
    assert "{CALLREC_DATABASE__URL = local.database_url}" in module.outputs["callrec_environment"]["value"]
    assert module.outputs["database_url"]["value"] == "${local.database_url}"


def test_callrec_loads_the_environment_output(module: Module) -> None:
    values = values_for(module)
    environ = values(module.locals["callrec_environment"])
    config = load_config(environ=environ)
    assert config.storage.backend == "s3"
    assert config.storage.bucket == "callrec-recordings-example"
    assert config.storage.prefix == "recordings/"
    assert config.storage.sse == "aws:kms"
    assert config.storage.sse_kms_key_id == BUCKET_KEY_ARN
    assert config.keys.provider == "aws-kms"
    assert config.keys.kms_key_id == KEK_ARN
    assert config.keys.kms_region == config.storage.region == "us-east-1"
    assert config.audit.anchor_prefix == "audit-anchors/"


def test_database_url_has_no_password_and_verifies_tls(module: Module) -> None:
    url = module.locals["database_url"]
    assert "sslmode=verify-full" in url
    assert "password" not in url.lower()
    assert "@${aws_db_instance.callrec[0].address}" in url
    with pytest.raises(Unresolved):  # a conditional: only terraform evaluates it
        values_for(module)(url)


# --- the optional database -----------------------------------------------------------------------


def test_database_is_optional_encrypted_tls_only_and_backed_up(module: Module) -> None:
    assert module.variables["create_database"]["default"] is False
    rds = parse(MODULE / "rds.tf")
    for block in rds["resource"]:
        for kind, named in block.items():
            for name, body in named.items():
                gate = body.get("count", body.get("for_each", ""))
                assert "var.create_database" in str(gate), f"{kind}.{name} is created without create_database"
    instance = module.resource("aws_db_instance", "callrec")
    assert instance["storage_encrypted"] is True
    assert instance["kms_key_id"] == "${aws_kms_key.database[0].arn}"
    assert instance["publicly_accessible"] is False
    assert instance["manage_master_user_password"] is True
    assert "password" not in instance
    assert instance["iam_database_authentication_enabled"] is True
    assert instance["backup_retention_period"] == "${var.database_backup_retention_days}"
    assert module.variables["database_backup_retention_days"]["default"] >= 7
    # point-in-time recovery is on whenever automated backups are; 0 days would turn both off
    assert (
        "var.database_backup_retention_days >= 7"
        in one(module.variables["database_backup_retention_days"]["validation"])["condition"]
    )
    parameters = {
        p["name"]: p["value"] for p in module.resource("aws_db_parameter_group", "callrec")["parameter"]
    }
    assert parameters["rds.force_ssl"] == "1"
    assert parameters["log_error_verbosity"] == "terse"  # no DETAIL lines with values in the logs


# --- checkov ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def checkov() -> Path:
    return checkov_env.ensure_checkov()


def _readme_skips() -> set[tuple[str, str]]:
    """(check id, resource) of each row of the README's table of skipped checks."""
    rows = set()
    for line in README.read_text().splitlines():
        match = re.match(r"^\|\s*`?(CKV2?_[A-Z]+_\d+)`?\s*\|\s*`([^`]+)`\s*\|\s*\S", line)
        if match:
            rows.add((match.group(1), match.group(2)))
    return rows


def test_checkov_finds_nothing_and_every_skip_is_explained(checkov: Path, module: Module) -> None:
    scan = checkov_env.scan(checkov, MODULE, framework="terraform")
    assert scan.parsing_errors == 0
    assert scan.resource_count >= len(module.resources)
    assert scan.failed == [], "\n".join(f"{f.check_id} {f.resource}: {f.name}" for f in scan.failed)
    assert scan.passed > 100
    for skip in scan.skipped:
        assert len(skip.comment) > 30, f"{skip.check_id} on {skip.resource}: the skip gives no reason"
    skipped = {(s.check_id, s.resource) for s in scan.skipped}
    assert skipped == _readme_skips(), "the README's table of skipped checks differs from the skip comments"


def test_readme_lists_every_variable_and_output(module: Module) -> None:
    text = README.read_text()

    def table(heading: str) -> set[str]:
        section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
        return set(re.findall(r"^\| `([a-z_0-9]+)` \|", section, flags=re.MULTILINE))

    assert table("Inputs") == set(module.variables)
    assert table("Outputs") == set(module.outputs)
