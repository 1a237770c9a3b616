"""infra/terraform read with python-hcl2, for tests/infra/test_terraform.py and test_iam.py.

``terraform`` itself cannot be installed here, so the module is parsed as HCL and the few
expressions the tests need are evaluated by :class:`Values`: references (``var.x`` from its default
or an override, ``local.x`` from its definition, anything else from values the test supplies),
string templates, whole numbers and ``+``. Anything else raises :class:`Unresolved` rather than
being guessed at.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hcl2
from hcl2.utils import SerializationOptions

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "infra" / "terraform"

# Plain strings and Python lists/dicts, no block markers: the shape python-hcl2 had before 8.
_OPTIONS = SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)


def tf_files() -> list[Path]:
    return sorted(MODULE.glob("*.tf"))


def parse(path: Path) -> dict[str, Any]:
    with path.open() as f:
        parsed: dict[str, Any] = hcl2.load(f, serialization_options=_OPTIONS)
    return parsed


@dataclass
class Module:
    """The module's top-level blocks by kind and name, from every .tf file."""

    resources: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    data: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    locals: dict[str, Any] = field(default_factory=dict)

    def resource(self, kind: str, name: str) -> dict[str, Any]:
        return self.resources[(kind, name)]

    def of_kind(self, kind: str) -> Iterator[tuple[str, dict[str, Any]]]:
        for (k, name), body in self.resources.items():
            if k == kind:
                yield name, body


def load_module() -> Module:
    module = Module()
    for path in tf_files():
        doc = parse(path)
        for block in doc.get("resource", []):
            for kind, named in block.items():
                for name, body in named.items():
                    module.resources[(kind, name)] = body
        for block in doc.get("data", []):
            for kind, named in block.items():
                for name, body in named.items():
                    module.data[(kind, name)] = body
        for block in doc.get("variable", []):
            module.variables.update(block)
        for block in doc.get("output", []):
            module.outputs.update(block)
        for block in doc.get("locals", []):
            module.locals.update(block)
    return module


def one(block: object) -> dict[str, Any]:
    """A nested block that occurs once (python-hcl2 gives every nested block as a list)."""
    assert isinstance(block, list) and len(block) == 1, block
    item = block[0]
    assert isinstance(item, dict)
    return item


class Unresolved(Exception):
    """An expression the test cannot evaluate without terraform."""


_REFERENCE = re.compile(r"^[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*|\[\d+\])*$")
_INTERPOLATION = re.compile(r"\$\{([^{}]*)\}")


class Values:
    """Evaluates the module's simple expressions. ``known`` gives the values of references to
    resources and data sources (``aws_s3_bucket.recordings.arn``); ``variables`` overrides
    variable defaults."""

    def __init__(
        self,
        module: Module,
        known: Mapping[str, Any] | None = None,
        variables: Mapping[str, Any] | None = None,
    ) -> None:
        self._module = module
        self._known = dict(known or {})
        self._variables = dict(variables or {})

    def __call__(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self(v) for v in value]
        if isinstance(value, dict):
            return {k: self(v) for k, v in value.items()}
        if not isinstance(value, str) or "${" not in value:
            return value
        whole = _INTERPOLATION.fullmatch(value)
        if whole:
            return self._expression(whole.group(1))
        return _INTERPOLATION.sub(lambda m: str(self._expression(m.group(1))), value)

    def _expression(self, text: str) -> Any:
        text = text.strip()
        if re.fullmatch(r"-?\d+", text):
            return int(text)
        if "+" in text:
            terms = [self._expression(t) for t in text.split("+")]
            if not all(isinstance(t, int) for t in terms):
                raise Unresolved(text)
            return sum(terms)
        if not _REFERENCE.match(text):
            raise Unresolved(text)
        if text.startswith("var."):
            name = text[4:]
            if name in self._variables:
                return self._variables[name]
            variable = self._module.variables[name]
            if "default" not in variable:
                raise Unresolved(f"{text} has no default; the test must give it")
            return self(variable["default"])
        if text.startswith("local."):
            return self(self._module.locals[text[6:]])
        if text in self._known:
            return self._known[text]
        raise Unresolved(text)


# --- the recordings bucket as S3 API calls ------------------------------------------------------


def lifecycle_rules(module: Module, values: Values, bucket: str = "recordings") -> list[dict[str, Any]]:
    """The aws_s3_bucket_lifecycle_configuration rules of ``bucket`` in the shape S3's
    PutBucketLifecycleConfiguration takes and GetBucketLifecycleConfiguration returns. A rule
    attribute this translation does not know fails the test rather than being dropped."""
    config = module.resource("aws_s3_bucket_lifecycle_configuration", bucket)
    rules = []
    for rule in config["rule"]:
        rule = values(rule)
        unknown = set(rule) - {
            "id",
            "status",
            "filter",
            "expiration",
            "noncurrent_version_expiration",
            "abort_incomplete_multipart_upload",
        }
        assert not unknown, f"rule {rule.get('id')}: no translation for {sorted(unknown)}"
        out: dict[str, Any] = {"ID": rule["id"], "Status": rule["status"]}
        flt = one(rule["filter"]) if rule.get("filter") else {}
        assert set(flt) <= {"prefix"}, f"rule {rule['id']}: no translation for filter {flt}"
        out["Filter"] = {"Prefix": flt["prefix"]} if "prefix" in flt else {}
        if "expiration" in rule:
            expiration = one(rule["expiration"])
            assert set(expiration) <= {"days", "expired_object_delete_marker"}, expiration
            out["Expiration"] = {}
            if "days" in expiration:
                out["Expiration"]["Days"] = expiration["days"]
            if "expired_object_delete_marker" in expiration:
                out["Expiration"]["ExpiredObjectDeleteMarker"] = expiration["expired_object_delete_marker"]
        if "noncurrent_version_expiration" in rule:
            noncurrent = one(rule["noncurrent_version_expiration"])
            assert set(noncurrent) == {"noncurrent_days"}, noncurrent
            out["NoncurrentVersionExpiration"] = {"NoncurrentDays": noncurrent["noncurrent_days"]}
        if "abort_incomplete_multipart_upload" in rule:
            abort = one(rule["abort_incomplete_multipart_upload"])
            assert set(abort) == {"days_after_initiation"}, abort
            out["AbortIncompleteMultipartUpload"] = {"DaysAfterInitiation": abort["days_after_initiation"]}
        rules.append(out)
    return rules


def configure_bucket(client: Any, module: Module, values: Values, bucket: str, *, kms_key_arn: str) -> None:
    """Create ``bucket`` (through a boto3 S3 client, on moto) with the settings the module gives the
    recordings bucket: Object Lock, versioning, default encryption, public access block, lifecycle.
    ``values`` must know ``aws_kms_key.bucket.arn`` (the KMS key created for the test)."""
    resource = module.resource("aws_s3_bucket", "recordings")
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=bool(resource["object_lock_enabled"]))
    versioning = one(module.resource("aws_s3_bucket_versioning", "recordings")["versioning_configuration"])
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": versioning["status"]})
    sse_rule = one(
        module.resource("aws_s3_bucket_server_side_encryption_configuration", "recordings")["rule"]
    )
    by_default = values(one(sse_rule["apply_server_side_encryption_by_default"]))
    assert by_default["kms_master_key_id"] == kms_key_arn
    client.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [
                {
                    "ApplyServerSideEncryptionByDefault": {
                        "SSEAlgorithm": by_default["sse_algorithm"],
                        "KMSMasterKeyID": by_default["kms_master_key_id"],
                    },
                    "BucketKeyEnabled": sse_rule["bucket_key_enabled"],
                }
            ]
        },
    )
    block = module.resource("aws_s3_bucket_public_access_block", "recordings")
    client.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": block["block_public_acls"],
            "IgnorePublicAcls": block["ignore_public_acls"],
            "BlockPublicPolicy": block["block_public_policy"],
            "RestrictPublicBuckets": block["restrict_public_buckets"],
        },
    )
    client.put_bucket_lifecycle_configuration(
        Bucket=bucket, LifecycleConfiguration={"Rules": lifecycle_rules(module, values)}
    )
