"""The IAM policies of infra/terraform against the S3 and KMS calls callrec makes.

Every botocore call made during a workload against moto is recorded (a ``before-parameter-build``
hook on every client): the object store's whole contract, KMS wrapping through Tink, `storage check`
and `--apply`, `keys rotate`. Each call becomes the IAM requests AWS authorises it with (action,
resource, condition keys; :func:`iam_requests`), and these are evaluated against the policy documents
parsed from iam.tf, both ways: every request of a role is allowed (or withheld on purpose, with the
reason in :data:`WITHHELD`), and every action of every statement is used by some request of its role
(or granted on purpose, with the reason in :data:`UNUSED_GRANTS`). A scan of callrec/ for boto3 calls
keeps the workload honest: an operation the code can make but the workload never made fails the test.
The bucket policy is evaluated on the same requests: none of callrec's is denied, and the requests it
exists to refuse are.
"""

from __future__ import annotations

import ast
import asyncio
import copy
import dataclasses
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, BinaryIO

import boto3
import botocore.session
import pytest
from botocore.awsrequest import AWSResponse
from botocore.compat import HTTPHeaders

from callrec.anchoring import Anchor
from callrec.anchoring.s3 import S3AnchorStore
from callrec.config import AuditConfig, StorageConfig
from callrec.crypto import envelope
from callrec.crypto.keys import AwsKmsKeyProvider
from callrec.storage import base
from callrec.storage.base import ObjectLocked
from callrec.storage.check import apply_fixes, check_bucket
from callrec.storage.s3 import S3ObjectStore

from .terraform_hcl import REPO, Module, Values, configure_bucket, load_module

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's account
MIB = 1024 * 1024

# Calls the code can make that neither role is given, and why.
WITHHELD = {
    ("admin", "s3:PutBucketObjectLockConfiguration"): (
        "`storage check --apply` enables Object Lock on a bucket without it; this module's bucket has "
        "Object Lock from its creation, and the only change left to make would be a default retention "
        "that stops erasure on request, so the bucket policy denies the call to everyone"
    ),
}
# Operations found in callrec/ that the workload does not make, and why no role needs them.
NOT_RECORDED = {
    ("s3", "CreateBucket"): (
        "S3ObjectStore.ensure_bucket, for tests and the embedded setup; production buckets come "
        "from infra/terraform"
    ),
}
# Grants that no recorded call uses, and why they are there: (policy, statement sid, action).
UNUSED_GRANTS: dict[tuple[str, str, str], str] = {}
# Which policy documents of iam.tf each role carries.
ROLE_POLICIES = {"runtime": ("runtime",), "admin": ("admin", "runtime")}


# --- recording -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    phase: str
    service: str
    operation: str
    params: Mapping[str, Any]


@dataclass
class Recorder:
    phase: str | None = None
    calls: list[Call] = field(default_factory=list)

    def hook(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        if self.phase is None:
            return
        kept = {
            k: copy.deepcopy(v) for k, v in params.items() if k not in ("Body", "Plaintext", "CiphertextBlob")
        }
        self.calls.append(Call(self.phase, model.service_model.service_name, model.name, kept))


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    """Every botocore client created while the module runs reports its calls here."""
    recorder = Recorder()
    original = botocore.session.Session.create_client

    def create_client(self: botocore.session.Session, *args: Any, **kwargs: Any) -> Any:
        client = original(self, *args, **kwargs)
        client.meta.events.register("before-parameter-build", recorder.hook)
        return client

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(botocore.session.Session, "create_client", create_client)
        yield recorder


# --- from calls to IAM requests ------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    action: str
    resource: str
    context: Mapping[str, str | tuple[str, ...]]
    call: Call | None = None

    def __str__(self) -> str:
        how = f" ({self.call.service}:{self.call.operation})" if self.call else ""
        return f"{self.action} on {self.resource}{how} {dict(self.context)}"


# S3 operations on the bucket itself: the action AWS checks (Service Authorization Reference,
# "Actions defined by Amazon S3"; HeadBucket is authorised as s3:ListBucket).
S3_BUCKET_OPERATIONS = {
    "HeadBucket": "s3:ListBucket",
    "CreateBucket": "s3:CreateBucket",
    "GetObjectLockConfiguration": "s3:GetBucketObjectLockConfiguration",
    "PutObjectLockConfiguration": "s3:PutBucketObjectLockConfiguration",
    "GetBucketVersioning": "s3:GetBucketVersioning",
    "PutBucketVersioning": "s3:PutBucketVersioning",
    "GetBucketLifecycleConfiguration": "s3:GetLifecycleConfiguration",
    "PutBucketLifecycleConfiguration": "s3:PutLifecycleConfiguration",
    "GetBucketEncryption": "s3:GetEncryptionConfiguration",
    "PutBucketEncryption": "s3:PutEncryptionConfiguration",
    "GetPublicAccessBlock": "s3:GetBucketPublicAccessBlock",
    "PutPublicAccessBlock": "s3:PutBucketPublicAccessBlock",
}
# S3 operations on objects, without the variants that depend on parameters (see iam_requests).
S3_OBJECT_OPERATIONS = {
    # CreateMultipartUpload, UploadPart and CompleteMultipartUpload are all s3:PutObject.
    "PutObject": "s3:PutObject",
    "CreateMultipartUpload": "s3:PutObject",
    "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject",
    "AbortMultipartUpload": "s3:AbortMultipartUpload",
    "PutObjectLegalHold": "s3:PutObjectLegalHold",
    "GetObjectLegalHold": "s3:GetObjectLegalHold",
    "PutObjectRetention": "s3:PutObjectRetention",
    "GetObjectRetention": "s3:GetObjectRetention",
}
KMS_OPERATIONS = {
    "Encrypt": "kms:Encrypt",
    "Decrypt": "kms:Decrypt",
    "GenerateDataKey": "kms:GenerateDataKey",
    "DescribeKey": "kms:DescribeKey",
    "RotateKeyOnDemand": "kms:RotateKeyOnDemand",
    "EnableKeyRotation": "kms:EnableKeyRotation",
}
# Under SSE-KMS, S3 calls KMS with the caller's permissions: GenerateDataKey when an object (or a
# multipart upload) is created, Decrypt when it is read and for each part of a multipart upload
# (https://docs.aws.amazon.com/AmazonS3/latest/userguide/UsingKMSEncryption.html).
S3_KMS_ACTIONS = {
    "PutObject": "kms:GenerateDataKey",
    "CreateMultipartUpload": "kms:GenerateDataKey",
    "UploadPart": "kms:Decrypt",
    "CompleteMultipartUpload": "kms:Decrypt",
    "GetObject": "kms:Decrypt",
}
TLS = {"aws:SecureTransport": "true", "s3:TlsVersion": "1.3"}


def iam_requests(call: Call, *, sse_key: Callable[[str], str | None]) -> list[Request]:
    """The IAM requests one botocore call is authorised with. ``sse_key(bucket)``: the KMS key
    that encrypts the bucket's objects by default (None: no SSE-KMS)."""
    p = call.params
    out: list[Request] = []

    def add(action: str, resource: str, **context: str | tuple[str, ...]) -> None:
        out.append(Request(action, resource, context, call))

    if call.service == "kms":
        if call.operation not in KMS_OPERATIONS:
            raise KeyError(f"KMS {call.operation}: add its IAM action to KMS_OPERATIONS")
        context: dict[str, str | tuple[str, ...]] = {}
        if p.get("EncryptionContext"):
            context["kms:EncryptionContextKeys"] = tuple(sorted(p["EncryptionContext"]))
        add(KMS_OPERATIONS[call.operation], p["KeyId"], **context)
        return out
    assert call.service == "s3", call
    bucket = p["Bucket"]
    bucket_arn = f"arn:aws:s3:::{bucket}"
    op = call.operation
    if op in S3_BUCKET_OPERATIONS:
        add(S3_BUCKET_OPERATIONS[op], bucket_arn, **TLS)
    elif op == "ListObjectVersions":
        add(
            "s3:ListBucketVersions",
            bucket_arn,
            **TLS,
            **({"s3:prefix": p["Prefix"]} if "Prefix" in p else {}),
        )
    elif op == "ListObjectsV2":
        add("s3:ListBucket", bucket_arn, **TLS, **({"s3:prefix": p["Prefix"]} if "Prefix" in p else {}))
    elif op == "DeleteObjects":
        for entry in p["Delete"]["Objects"]:
            arn = f"{bucket_arn}/{entry['Key']}"
            add("s3:DeleteObject", arn, **TLS)
            if "VersionId" in entry:
                add("s3:DeleteObjectVersion", arn, **TLS)
    else:
        arn = f"{bucket_arn}/{p['Key']}"
        versioned = "VersionId" in p
        if op == "DeleteObject":
            # s3:DeleteObject always; a version by id also needs s3:DeleteObjectVersion.
            add("s3:DeleteObject", arn, **TLS)
            if versioned:
                add("s3:DeleteObjectVersion", arn, **TLS)
        elif op == "GetObject":
            add("s3:GetObjectVersion" if versioned else "s3:GetObject", arn, **TLS)
        elif op == "HeadObject":
            add("s3:GetObjectVersion" if versioned else "s3:GetObject", arn, **TLS)
            # callrec HEADs a version only to read its lock state, which HeadObject reports only to
            # a caller with these two (HeadObject, "x-amz-object-lock-*" response headers).
            add("s3:GetObjectLegalHold", arn, **TLS)
            add("s3:GetObjectRetention", arn, **TLS)
        elif op in S3_OBJECT_OPERATIONS:
            headers: dict[str, str] = {}
            if "ServerSideEncryption" in p:
                headers["s3:x-amz-server-side-encryption"] = p["ServerSideEncryption"]
            if "SSEKMSKeyId" in p:
                headers["s3:x-amz-server-side-encryption-aws-kms-key-id"] = p["SSEKMSKeyId"]
            add(S3_OBJECT_OPERATIONS[op], arn, **TLS, **headers)
            if "ObjectLockMode" in p or "ObjectLockRetainUntilDate" in p:
                add("s3:PutObjectRetention", arn, **TLS)
            if "ObjectLockLegalHoldStatus" in p:
                add("s3:PutObjectLegalHold", arn, **TLS)
        else:
            raise KeyError(f"S3 {op}: add its IAM actions to iam_requests")
    key = sse_key(bucket)
    if op in S3_KMS_ACTIONS and key is not None:
        key = p.get("SSEKMSKeyId", key)
        # With an S3 Bucket Key the encryption context is the bucket's ARN.
        add(
            S3_KMS_ACTIONS[op],
            key,
            **{
                "kms:ViaService": f"s3.{REGION}.amazonaws.com",
                "kms:EncryptionContext:aws:s3:arn": bucket_arn,
            },
        )
    return out


# --- policy evaluation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    policy: str
    sid: str
    effect: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    conditions: tuple[tuple[str, str, tuple[str, ...]], ...]


def statements(module: Module, values: Values, document: str) -> list[Statement]:
    body = module.data[("aws_iam_policy_document", document)]
    out = []
    for raw in values(body["statement"]):
        assert set(raw) <= {"sid", "effect", "actions", "resources", "condition", "principals"}, raw
        out.append(
            Statement(
                policy=document,
                sid=raw.get("sid", ""),
                effect=raw.get("effect", "Allow"),
                actions=tuple(raw["actions"]),
                resources=tuple(raw["resources"]),
                conditions=tuple(
                    (c["test"], c["variable"], tuple(c["values"])) for c in raw.get("condition", [])
                ),
            )
        )
    return out


def _operator(name: str) -> tuple[Callable[[str, str], bool], bool]:
    """(does one value match one policy value, is the operator negated)."""
    operators: dict[str, Callable[[str, str], bool]] = {
        "StringEquals": lambda v, w: v == w,
        "StringLike": fnmatchcase,
        "ArnLike": fnmatchcase,
        "ArnEquals": lambda v, w: v == w,
        "Bool": lambda v, w: v.lower() == w.lower(),
        "NumericLessThan": lambda v, w: float(v) < float(w),
    }
    negated = {"StringNotEquals": "StringEquals", "StringNotLike": "StringLike", "ArnNotLike": "ArnLike"}
    if name in negated:
        return operators[negated[name]], True
    return operators[name], False


def condition_holds(test: str, variable: str, wanted: tuple[str, ...], context: Mapping[str, Any]) -> bool:
    """IAM's condition semantics for the operators iam.tf and s3.tf use
    (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_condition_operators.html)."""
    value = context.get(variable)
    if test == "Null":
        return (value is None) == (wanted == ("true",))
    if test.endswith("IfExists"):
        if value is None:
            return True
        test = test.removesuffix("IfExists")
    if test.startswith("ForAllValues:"):
        match, negated = _operator(test.split(":", 1)[1])
        assert not negated
        values = value if isinstance(value, tuple) else () if value is None else (value,)
        return all(any(match(v, w) for w in wanted) for v in values)
    match, negated = _operator(test)
    if value is None:
        return negated
    assert isinstance(value, str)
    hit = any(match(value, w) for w in wanted)
    return not hit if negated else hit


def applies(statement: Statement, request: Request, action: str) -> bool:
    return (
        fnmatchcase(request.action.lower(), action.lower())
        and any(fnmatchcase(request.resource, r) for r in statement.resources)
        and all(condition_holds(t, v, w, request.context) for t, v, w in statement.conditions)
    )


def allowing(policy: list[Statement], request: Request) -> list[tuple[Statement, str]]:
    return [(s, a) for s in policy if s.effect == "Allow" for a in s.actions if applies(s, request, a)]


def denying(policy: list[Statement], request: Request) -> list[Statement]:
    return [s for s in policy if s.effect == "Deny" and any(applies(s, request, a) for a in s.actions)]


# --- the workload --------------------------------------------------------------------------------


class _FailingSource:
    """A source that breaks after ``fail_after`` bytes, like a disk going bad under the reader:
    the store must abort the multipart upload it started."""

    def __init__(self, inner: BinaryIO, fail_after: int) -> None:
        self._inner = inner
        self._left = fail_after

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            raise OSError("simulated read failure")
        data = self._inner.read(min(size, self._left) if size >= 0 else self._left)
        self._left -= len(data)
        return data

    def fileno(self) -> int:
        return self._inner.fileno()

    def close(self) -> None:
        self._inner.close()

    def __enter__(self) -> _FailingSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Deployment:
    module: Module
    values: Values
    bucket: str
    bucket_key: str
    kek: str
    calls: list[Call]
    # A bucket without any of the settings, on which `storage check --apply` sets them all: it
    # stands for the recordings bucket before it was set up, and is evaluated under its name.
    bare: str


async def _store_contract(store: S3ObjectStore, tmp: Path, patch: pytest.MonkeyPatch) -> None:
    """Every method of the object store, the way callrec's ingest, playback, holds, erasure and
    expiry use them."""
    await store.check()
    small, big = tmp / "small", tmp / "big"
    small.write_bytes(os.urandom(1024))
    big.write_bytes(os.urandom(11 * MIB))  # above the 5 MiB threshold: three parts
    a = await store.put_file("acme/rec-a", small)
    b = await store.put_file("acme/rec-b", big)
    with await store.open_reader("acme/rec-a") as reader:
        assert reader.read() == small.read_bytes()
    with await store.open_reader("acme/rec-b", version_id=b.version_id) as reader:
        assert len(reader.read()) == 11 * MIB
    assert [v.version_id for v in await store.list_versions("acme/rec-a")] == [a.version_id]
    assert await store.supports_legal_hold()
    await store.set_legal_hold("acme/rec-a", version_id=a.version_id, on=True)
    assert await store.legal_hold("acme/rec-a", version_id=a.version_id)
    with pytest.raises(ObjectLocked):  # DeleteObject refused, then HeadObject tells why
        await store.delete("acme/rec-a", version_id=a.version_id)
    with pytest.raises(ObjectLocked):  # DeleteObjects refused
        await store.delete_all_versions("acme/rec-a")
    await store.set_legal_hold("acme/rec-a", version_id=None, on=False)
    await store.delete("acme/rec-a")
    assert await store.delete_all_versions("acme/rec-b") == 1
    # Expiry: many keys of one tenant are found by listing their prefix, the rest one by one.
    many = [f"bulk/rec-{i:03d}" for i in range(60)]
    for key in [*many, "other/rec-x"]:
        await store.put_file(key, small)
    deleted = await store.delete_objects([*many, "other/rec-x"])
    assert set(deleted.values()) == {1}
    # A multipart upload whose source fails is aborted.
    real_open = base.open_source
    patch.setattr(base, "open_source", lambda path: _FailingSource(real_open(path), 6 * MIB))
    with pytest.raises(OSError, match="simulated"):
        await store.put_file("acme/rec-c", big)
    patch.setattr(base, "open_source", real_open)


async def _audit_anchors(store: S3ObjectStore, *, prefix: str) -> None:
    """What the anchoring service (`serve`, `worker`, `audit anchor`) and `audit verify` do."""
    anchors = S3AnchorStore(store, prefix=prefix, retention=AuditConfig().anchor_retention)
    anchor = Anchor(at=datetime.now(UTC), seq=7, head_mac=bytes(32), key_id=1, mac=bytes(range(32)))
    await anchors.put(anchor)
    assert (await anchors.read_all()).anchors == [anchor]


def _kms_wrapping(provider: AwsKmsKeyProvider) -> None:
    """What ingest and playback do with the key-encryption key: wrap a recording's key, unwrap it."""
    kek = provider.kek("acme")
    handle = envelope.new_recording_key()
    wrapped = envelope.wrap_key(handle, kek, tenant="acme", recording_id="rec-1")
    envelope.unwrap_key(wrapped, kek, tenant="acme", recording_id="rec-1")


def _refuse_on_demand_rotation(endpoint: str) -> Any:
    """A KMS client on which RotateKeyOnDemand is refused (imported key material), so that
    `keys rotate` falls back to EnableKeyRotation."""
    client = boto3.client("kms", region_name=REGION, endpoint_url=endpoint)

    def refuse(**_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        error = {"Code": "UnsupportedOperationException", "Message": "imported key material"}
        return AWSResponse(endpoint, 400, HTTPHeaders(), None), {
            "Error": error,
            "ResponseMetadata": {"HTTPStatusCode": 400},
        }

    client.meta.events.register("before-call.kms.RotateKeyOnDemand", refuse)
    return client


@pytest.fixture(scope="module")
def deployment(
    recorder: Recorder, moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Deployment:
    module = load_module()
    kms = boto3.client("kms", region_name=REGION, endpoint_url=moto_endpoint)
    bucket_key = kms.create_key(Description="recordings bucket key")["KeyMetadata"]["Arn"]
    kek = kms.create_key(Description="callrec key-encryption key")["KeyMetadata"]["Arn"]
    bucket = f"callrec-iam-{uuid.uuid4().hex[:12]}"
    values = Values(
        module,
        {
            "aws_s3_bucket.recordings.id": bucket,
            "aws_s3_bucket.recordings.arn": f"arn:aws:s3:::{bucket}",
            "aws_kms_key.bucket.arn": bucket_key,
            "aws_kms_key.kek.arn": kek,
            "data.aws_region.current.name": REGION,
        },
        {"bucket_name": bucket},
    )
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=moto_endpoint)
    configure_bucket(s3, module, values, bucket, kms_key_arn=bucket_key)
    bare = f"callrec-iam-bare-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bare)

    def store_on(name: str) -> S3ObjectStore:
        # configured as the module's outputs say; threshold at S3's minimum part size
        return S3ObjectStore(
            StorageConfig(
                backend="s3",
                bucket=name,
                prefix=values("${var.storage_prefix}"),
                region=REGION,
                endpoint_url=moto_endpoint,
                sse=values(module.outputs["storage_sse"]["value"]),
                sse_kms_key_id=values(module.outputs["storage_sse_kms_key_id"]["value"]),
                multipart_threshold_mb=5,
            )
        )

    retention = timedelta(days=values("${var.retention_days}"))
    anchor_prefix = values(module.outputs["audit_anchor_prefix"]["value"])
    # as `callrec storage check` calls it: the anchors' prefix is checked too
    anchoring = {"anchor_prefix": anchor_prefix, "anchor_retention": AuditConfig().anchor_retention}

    async def run_store(phase: str) -> None:
        recorder.phase = phase
        store = store_on(bucket)
        try:
            with pytest.MonkeyPatch.context() as patch:
                await _store_contract(store, tmp_path_factory.mktemp("objects"), patch)
            await _audit_anchors(store, prefix=anchor_prefix)
        finally:
            await store.close()

    async def run_admin() -> None:
        store, bare_store = store_on(bucket), store_on(bare)
        try:
            findings = await check_bucket(store, retention=retention, **anchoring)
            assert all(f.status == "ok" for f in findings), findings
            before = await check_bucket(bare_store, retention=retention, **anchoring)
            after = await apply_fixes(
                bare_store, before, retention=retention, margin=timedelta(days=7), **anchoring
            )
            assert all(f.status == "ok" for f in after), after
        finally:
            await store.close()
            await bare_store.close()

    keys_client = boto3.client("kms", region_name=REGION, endpoint_url=moto_endpoint)
    try:
        asyncio.run(run_store("runtime"))
        _kms_wrapping(AwsKmsKeyProvider(key_arn=kek, client=keys_client))
        recorder.phase = "admin"
        asyncio.run(run_admin())
        assert "rotated on demand" in AwsKmsKeyProvider(key_arn=kek, client=keys_client).rotate("acme")
        refusing = _refuse_on_demand_rotation(moto_endpoint)
        assert "automatic" in AwsKmsKeyProvider(key_arn=kek, client=refusing).rotate("acme")
    finally:
        recorder.phase = None
    return Deployment(module, values, bucket, bucket_key, kek, list(recorder.calls), bare)


def _requests(deployment: Deployment, phase: str) -> list[Request]:
    def sse_key(bucket: str) -> str | None:
        return deployment.bucket_key

    def as_recordings_bucket(call: Call) -> Call:
        if call.params.get("Bucket") != deployment.bare:
            return call
        return dataclasses.replace(call, params={**call.params, "Bucket": deployment.bucket})

    calls = [as_recordings_bucket(c) for c in deployment.calls if c.phase == phase]
    return [r for c in calls for r in iam_requests(c, sse_key=sse_key)]


def _role_policy(deployment: Deployment, role: str) -> list[Statement]:
    return [s for doc in ROLE_POLICIES[role] for s in statements(deployment.module, deployment.values, doc)]


# --- the tests -----------------------------------------------------------------------------------


def _boto_calls_in_code() -> dict[tuple[str, str], set[str]]:
    """(service, operation) of each boto3 S3 or KMS client method called in callrec/, with the
    files: attribute calls named like a client method, and get_paginator("name"), in every module
    that imports boto3 or botocore (the others call Tink AEADs and password hashers whose method
    names, encrypt or verify, happen to be KMS operations too)."""
    mappings = {
        service: boto3.client(service, region_name=REGION).meta.method_to_api_mapping
        for service in ("s3", "kms")
    }
    found: dict[tuple[str, str], set[str]] = {}
    for path in sorted((REPO / "callrec").rglob("*.py")):
        tree = ast.parse(path.read_text())
        imports = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        if not imports & {"boto3", "botocore"}:
            continue
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            name = node.func.attr
            if name == "get_paginator" and node.args and isinstance(node.args[0], ast.Constant):
                name = str(node.args[0].value)
            for service, mapping in mappings.items():
                if name in mapping:
                    found.setdefault((service, mapping[name]), set()).add(str(path.relative_to(REPO)))
    return found


def test_the_workload_makes_every_call_the_code_can_make(deployment: Deployment) -> None:
    in_code = _boto_calls_in_code()
    assert ("s3", "PutObject") in in_code and ("kms", "RotateKeyOnDemand") in in_code  # the scan works
    recorded = {(c.service, c.operation) for c in deployment.calls}
    never_made = set(in_code) - recorded
    assert never_made == set(NOT_RECORDED), (
        f"in callrec/ but not made by the workload: {sorted(never_made - set(NOT_RECORDED))} "
        f"(extend the workload, or say in NOT_RECORDED why no role needs it); "
        f"stale NOT_RECORDED entries: {sorted(set(NOT_RECORDED) - never_made)}"
    )
    # and nothing is called that the scan cannot see (Tink's awskms calls are named in keys.py too)
    assert recorded <= set(in_code), sorted(recorded - set(in_code))


@pytest.mark.parametrize("role", ["runtime", "admin"])
def test_every_call_of_a_role_is_allowed(deployment: Deployment, role: str) -> None:
    policy = _role_policy(deployment, role)
    refused = [r for r in _requests(deployment, role) if not allowing(policy, r)]
    unexplained = sorted({str(r) for r in refused if (role, r.action) not in WITHHELD})
    assert unexplained == [], "calls the role is not allowed to make:\n" + "\n".join(unexplained)
    withheld = {a for (phase, a) in WITHHELD if phase == role}
    assert withheld == {r.action for r in refused}, "WITHHELD lists actions that are not withheld"


@pytest.mark.parametrize("policy", ["runtime", "admin"])
def test_every_grant_is_used(deployment: Deployment, policy: str) -> None:
    """Each action of each statement allows at least one request of the role the policy is for."""
    document = statements(deployment.module, deployment.values, policy)
    requests = _requests(deployment, policy)
    used = {(s.sid, a) for r in requests for s, a in allowing(document, r)}
    granted = {(s.sid, a) for s in document if s.effect == "Allow" for a in s.actions}
    unused = granted - used
    explained = {(sid, a) for (p, sid, a) in UNUSED_GRANTS if p == policy}
    assert unused == explained, (
        f"grants no call uses: {sorted(unused - explained)}; "
        f"UNUSED_GRANTS entries that are used or gone: {sorted(explained - unused)}"
    )


def test_the_roles_carry_the_policies_the_tests_assume(deployment: Deployment) -> None:
    attachments = {
        (body["role"], body["policy_arn"])
        for _, body in deployment.module.of_kind("aws_iam_role_policy_attachment")
        if body["role"] in ("${aws_iam_role.runtime.name}", "${aws_iam_role.admin.name}")
    }
    expected = {
        (f"${{aws_iam_role.{role}.name}}", f"${{aws_iam_policy.{doc}.arn}}")
        for role, docs in ROLE_POLICIES.items()
        for doc in docs
    }
    assert attachments == expected
    for doc in ("runtime", "admin"):
        policy = deployment.module.resource("aws_iam_policy", doc)
        assert policy["policy"] == f"${{data.aws_iam_policy_document.{doc}.json}}"


def test_the_key_encryption_key_is_used_only_with_an_encryption_context(deployment: Deployment) -> None:
    policy = _role_policy(deployment, "runtime")
    wraps = [r for r in _requests(deployment, "runtime") if r.resource == deployment.kek]
    assert {r.action for r in wraps} == {"kms:Encrypt", "kms:Decrypt"}
    assert all(r.context == {"kms:EncryptionContextKeys": ("associatedData",)} for r in wraps), wraps
    # the condition bites: the same calls without a context, or with another one, are refused
    for action in ("kms:Encrypt", "kms:Decrypt"):
        assert not allowing(policy, Request(action, deployment.kek, {}))
        assert not allowing(
            policy, Request(action, deployment.kek, {"kms:EncryptionContextKeys": ("tenant",)})
        )
        assert not allowing(
            policy, Request(action, deployment.bucket_key, {"kms:EncryptionContextKeys": ("associatedData",)})
        )


def test_the_runtime_role_reaches_no_object_outside_its_prefixes(deployment: Deployment) -> None:
    policy = _role_policy(deployment, "runtime")
    bucket = f"arn:aws:s3:::{deployment.bucket}"
    for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObjectVersion", "s3:PutObjectLegalHold"):
        assert not allowing(policy, Request(action, f"{bucket}/elsewhere/x", TLS))
    assert not allowing(policy, Request("s3:ListBucketVersions", bucket, {**TLS, "s3:prefix": "elsewhere/"}))
    assert not allowing(policy, Request("s3:ListBucketVersions", bucket, TLS))  # no prefix: the whole bucket
    # anchors: written locked, never deleted, and no retention on a recording
    assert allowing(policy, Request("s3:PutObjectRetention", f"{bucket}/audit-anchors/a", TLS))
    assert not allowing(policy, Request("s3:DeleteObjectVersion", f"{bucket}/audit-anchors/a", TLS))
    assert not allowing(policy, Request("s3:PutObjectRetention", f"{bucket}/recordings/acme/r", TLS))
    assert not allowing(policy, Request("s3:BypassGovernanceRetention", f"{bucket}/recordings/acme/r", TLS))


def test_the_bucket_policy_denies_none_of_callrecs_calls(deployment: Deployment) -> None:
    policy = statements(deployment.module, deployment.values, "recordings_bucket")
    bucket = f"arn:aws:s3:::{deployment.bucket}"
    denied = [
        (r, denying(policy, r))
        for phase in ROLE_POLICIES
        for r in _requests(deployment, phase)
        if r.resource.startswith(bucket) and denying(policy, r)
    ]
    assert {(r.action, tuple(s.sid for s in by)) for r, by in denied} == {
        ("s3:PutBucketObjectLockConfiguration", ("DenyObjectLockConfigurationChanges",))
    }
    # the parts of a multipart upload carry no encryption header and must pass
    parts = [r for r in _requests(deployment, "runtime") if r.call and r.call.operation == "UploadPart"]
    assert parts and not any(denying(policy, r) for r in parts)


def test_the_bucket_policy_refuses_what_it_is_for(deployment: Deployment) -> None:
    policy = statements(deployment.module, deployment.values, "recordings_bucket")
    obj = f"arn:aws:s3:::{deployment.bucket}/recordings/acme/rec"
    sse = "s3:x-amz-server-side-encryption"
    key_id = "s3:x-amz-server-side-encryption-aws-kms-key-id"
    good = {**TLS, sse: "aws:kms", key_id: deployment.bucket_key}
    assert not denying(policy, Request("s3:PutObject", obj, good))
    assert denying(policy, Request("s3:PutObject", obj, {**good, sse: "AES256"}))
    assert denying(policy, Request("s3:PutObject", obj, {**good, key_id: deployment.kek}))
    assert denying(policy, Request("s3:GetObject", obj, {**TLS, "aws:SecureTransport": "false"}))
    assert denying(
        policy, Request("s3:ListBucket", obj.split("/")[0], {**TLS, "aws:SecureTransport": "false"})
    )
    assert denying(policy, Request("s3:GetObject", obj, {**TLS, "s3:TlsVersion": "1.1"}))


def test_storage_check_on_the_modules_bucket_only_reads_and_needs_the_admin_role(
    deployment: Deployment,
) -> None:
    """On the bucket this module sets up, `storage check` (no --apply) finds nothing to fix and only
    reads; the runtime role alone cannot read the bucket's settings."""
    checked = [
        c for c in deployment.calls if c.phase == "admin" and c.params.get("Bucket") == deployment.bucket
    ]
    assert checked
    assert all(c.operation.startswith(("Get", "Head")) for c in checked), sorted(
        {c.operation for c in checked}
    )
    runtime = _role_policy(deployment, "runtime")
    reads = [r for c in checked for r in iam_requests(c, sse_key=lambda _: deployment.bucket_key)]
    assert {r.action for r in reads if not allowing(runtime, r)} == {
        "s3:GetBucketVersioning",
        "s3:GetLifecycleConfiguration",
        "s3:GetEncryptionConfiguration",
        "s3:GetBucketPublicAccessBlock",
    }
