"""``callrec storage check [--apply]``: the S3 bucket's configuration against what callrec needs.

What callrec needs from the bucket, and why:

- **versioning** Enabled: every write is a version, erasure deletes versions by id, and Object
  Lock requires it.
- **Object Lock** enabled, with no default retention: legal holds are mirrored onto object
  versions so that S3 itself refuses to delete a held recording (rule 1). A default retention
  would lock every new version for a fixed time and make erasure on request impossible, so it
  is reported as wrong. Enabling Object Lock is irreversible (versioning can then never be
  suspended). AWS allows it on an existing bucket once versioning is enabled; some
  S3-compatible servers only at creation, and moto only on an empty bucket.
  https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-lock-configure.html
- **lifecycle backstop**, scoped to the store's prefix, in rules whose IDs start with
  ``callrec-backstop-``: (a) expire current versions after the longest tenant retention plus a
  margin, (b) expire noncurrent versions, (c) remove expired delete markers, (d) abort
  incomplete multipart uploads. The sweeper destroys recordings on time; these rules catch
  what it missed (a lost database row, a crash between the object and the metadata).
  Rules (a) and (b) are only set on a bucket with Object Lock: S3 lifecycle cannot see
  callrec's holds, and without Object Lock the two together would destroy a held recording
  retention + margin + ``NONCURRENT_DAYS`` after it was written. With Object Lock, lifecycle
  never deletes a locked version: on a held recording (a) only adds a delete marker, the
  version stays readable by its id, and the sweeper erases both once the hold is released.
  https://docs.aws.amazon.com/AmazonS3/latest/userguide/lifecycle-configuration-examples.html
- **default encryption** (SSE-S3 or SSE-KMS): the objects are already ciphertext (callrec
  encrypts before upload); this is defence in depth for anything else written to the bucket.
- **public access block** with all four flags on.

- **audit anchors** (only when asked, as ``callrec storage check`` does): the audit chain's
  anchors (:mod:`callrec.anchoring.s3`) are objects under their own prefix, outside the store's,
  locked in compliance mode, which needs Object Lock on the bucket; and no lifecycle rule may
  expire what lies under that prefix before the anchors' retention ends (S3 would not delete a
  locked version, but a rule meant for recordings has no business there).

A requirement met by a rule under another ID (infrastructure code often writes its own) counts
as met. :func:`apply_fixes` only adds or replaces ``callrec-backstop-*`` rules and leaves every
other lifecycle rule as it is.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, cast

from botocore.exceptions import BotoCoreError, ClientError

from callrec.storage.base import StoreUnavailable

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_s3.type_defs import LifecycleRuleTypeDef, ServerSideEncryptionByDefaultTypeDef

    from callrec.storage.s3 import S3ObjectStore

_T = TypeVar("_T")

Status = Literal["ok", "missing", "wrong", "unknown"]

VERSIONING = "versioning"
OBJECT_LOCK = "object-lock"
EXPIRE_CURRENT = "lifecycle-expire-current"
EXPIRE_NONCURRENT = "lifecycle-expire-noncurrent"
DELETE_MARKERS = "lifecycle-delete-markers"
ABORT_MULTIPART = "lifecycle-abort-multipart"
OTHER_RULES = "lifecycle-other-rules"
ENCRYPTION = "default-encryption"
PUBLIC_ACCESS = "public-access-block"
ANCHORS = "audit-anchors"

BACKSTOP_RULE_PREFIX = "callrec-backstop-"
RULE_IDS = {
    EXPIRE_CURRENT: "callrec-backstop-expire-current",
    EXPIRE_NONCURRENT: "callrec-backstop-expire-noncurrent",
    DELETE_MARKERS: "callrec-backstop-delete-markers",
    ABORT_MULTIPART: "callrec-backstop-abort-multipart",
}
NONCURRENT_DAYS = 1
ABORT_MULTIPART_DAYS = 1

_PUBLIC_ACCESS_FLAGS = ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")
_ENCRYPTION_ALGORITHMS = frozenset({"AES256", "aws:kms", "aws:kms:dsse"})
# The answers of S3 (and moto) when a bucket has no such configuration at all.
_NOT_CONFIGURED = frozenset(
    {
        "ObjectLockConfigurationNotFoundError",
        "NoSuchLifecycleConfiguration",
        "ServerSideEncryptionConfigurationNotFoundError",
        "NoSuchPublicAccessBlockConfiguration",
    }
)
_DAY = timedelta(days=1)

_Rule = Mapping[str, Any]  # one lifecycle rule as S3 returns it


@dataclass(frozen=True)
class Finding:
    """One line of the report. ``fixable``: :func:`apply_fixes` can set it."""

    name: str
    status: Status
    detail: str
    fixable: bool


class _Fix(Protocol):
    """A fix: blocking, run in the store's thread pool; returns the S3 operation it performed
    and raises :class:`_Refused` when S3 refused it."""

    def __call__(
        self,
        client: S3Client,
        store: S3ObjectStore,
        names: Sequence[str],
        *,
        retention: timedelta,
        margin: timedelta,
    ) -> str: ...


@dataclass(frozen=True)
class _Read:
    """One bucket setting as read: the response, None when the bucket has none, or the error
    code that stopped us reading it (``error``)."""

    value: Mapping[str, Any] | None = None
    error: str = ""


@dataclass(frozen=True)
class _State:
    versioning: _Read
    object_lock: _Read
    lifecycle: _Read
    encryption: _Read
    public_access: _Read
    prefix: str
    sse: str = ""
    rules: tuple[_Rule, ...] = ()
    anchor_prefix: str | None = None  # checked only when given
    anchor_retention: timedelta = timedelta(0)


async def check_bucket(
    store: S3ObjectStore,
    *,
    retention: timedelta,
    margin: timedelta = timedelta(days=7),
    anchor_prefix: str | None = None,
    anchor_retention: timedelta = timedelta(0),
) -> list[Finding]:
    """Read the bucket's configuration and report each requirement, in a fixed order.

    ``retention`` is the longest retention of any tenant. With ``anchor_prefix``, the audit
    anchors' requirements are reported last (``anchor_retention``: how long they are locked).
    Raises :class:`StoreUnavailable` when the bucket is missing or the endpoint cannot be
    reached; a setting that cannot be read (no permission, not implemented by the server) is
    reported as ``unknown``."""
    _validate(retention, margin)
    await store.check()
    state = replace(await _read_state(store), anchor_prefix=anchor_prefix, anchor_retention=anchor_retention)
    return _evaluate(state, retention=retention, margin=margin)


async def apply_fixes(
    store: S3ObjectStore,
    findings: list[Finding],
    *,
    retention: timedelta,
    margin: timedelta,
    anchor_prefix: str | None = None,
    anchor_retention: timedelta = timedelta(0),
) -> list[Finding]:
    """Set what ``findings`` report missing or wrong, where callrec can, then check again and
    return the new findings. Leave a finding out of ``findings`` to leave that setting alone (for
    instance Object Lock, which cannot be undone).

    Versioning and Object Lock go first, because lifecycle rules (a) and (b) are only set once
    Object Lock is on. Each fix is decided again against the bucket as it is now. A fix that S3
    refuses is reported on the re-checked finding (``fixable`` False, the refusal in
    ``detail``) rather than raised. Lifecycle rules other than ``callrec-backstop-*`` are kept."""
    _validate(retention, margin)
    # Fixability is decided again below: lifecycle rules (a) and (b) become fixable once this
    # same run has enabled Object Lock.
    wanted = {f.name for f in findings if f.status in ("missing", "wrong")}
    refused: dict[str, str] = {}
    await store.check()

    for names, fix in (
        ((VERSIONING,), _fix_versioning),
        ((OBJECT_LOCK,), _fix_object_lock),
        ((ENCRYPTION,), _fix_encryption),
        ((PUBLIC_ACCESS,), _fix_public_access),
        (tuple(RULE_IDS), _fix_lifecycle),
    ):
        todo = [name for name in names if name in wanted]
        if not todo:
            continue
        now = {f.name: f for f in _evaluate(await _read_state(store), retention=retention, margin=margin)}
        todo = [name for name in todo if now[name].status != "ok" and now[name].fixable]
        if not todo:
            continue
        operation, code = await store.run_with_client(
            functools.partial(_attempt, fix, store, todo, retention=retention, margin=margin)
        )
        if code:
            for name in todo:
                refused[name] = f"--apply failed: S3 refused {operation} ({code})"

    after = await check_bucket(
        store,
        retention=retention,
        margin=margin,
        anchor_prefix=anchor_prefix,
        anchor_retention=anchor_retention,
    )
    return [
        replace(f, fixable=False, detail=f"{f.detail}; {refused[f.name]}")
        if f.name in refused and f.status != "ok"
        else f
        for f in after
    ]


# --- reading ---------------------------------------------------------------------------------


async def _read_state(store: S3ObjectStore) -> _State:
    bucket = store.bucket

    def read(client: S3Client) -> _State:
        lifecycle = _read(lambda: client.get_bucket_lifecycle_configuration(Bucket=bucket))
        rules = tuple(lifecycle.value.get("Rules", [])) if lifecycle.value is not None else ()
        return _State(
            # GetBucketVersioning answers without a Status on a bucket that never had one.
            versioning=_read(lambda: client.get_bucket_versioning(Bucket=bucket)),
            object_lock=_read(lambda: client.get_object_lock_configuration(Bucket=bucket)),
            lifecycle=lifecycle,
            encryption=_read(lambda: client.get_bucket_encryption(Bucket=bucket)),
            public_access=_read(lambda: client.get_public_access_block(Bucket=bucket)),
            prefix=store.prefix,
            sse=store.storage.sse,
            rules=rules,
        )

    return await store.run_with_client(read)


def _read(call: Callable[[], Mapping[str, Any]]) -> _Read:
    try:
        return _Read(value=call())
    except ClientError as exc:
        code = _code(exc)
        if code in _NOT_CONFIGURED:
            return _Read()
        if code == "NoSuchBucket":
            raise StoreUnavailable(f"S3 bucket does not exist ({code})") from None
        return _Read(error=code or "error")
    except BotoCoreError as exc:
        raise StoreUnavailable(f"S3 unavailable while checking the bucket: {type(exc).__name__}") from None


def _attempt(
    fix: _Fix,
    store: S3ObjectStore,
    names: Sequence[str],
    client: S3Client,
    *,
    retention: timedelta,
    margin: timedelta,
) -> tuple[str, str]:
    """Run a fix; return (operation, "") or (operation, S3's error code) when it was refused."""
    try:
        return fix(client, store, names, retention=retention, margin=margin), ""
    except _Refused as refused:
        return refused.operation, refused.code
    except BotoCoreError as exc:
        raise StoreUnavailable(f"S3 unavailable while fixing the bucket: {type(exc).__name__}") from None


class _Refused(Exception):
    def __init__(self, operation: str, code: str) -> None:
        super().__init__(operation, code)
        self.operation = operation
        self.code = code


def _call(operation: str, call: Callable[[], _T]) -> _T:
    try:
        return call()
    except ClientError as exc:
        raise _Refused(operation, _code(exc) or "error") from None


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "")) or str(
        exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
    )


# --- evaluating (pure) -----------------------------------------------------------------------


def _evaluate(state: _State, *, retention: timedelta, margin: timedelta) -> list[Finding]:
    versioning = _versioning(state)
    object_lock = _object_lock(state, versioning_fixable=versioning.fixable)
    findings = [versioning, object_lock]
    findings += _lifecycle(state, retention=retention, margin=margin)
    findings += [_encryption(state), _public_access(state)]
    if state.anchor_prefix is not None:
        findings.append(_anchors(state, state.anchor_prefix))
    return findings


def _unknown(name: str, read: _Read, operation: str) -> Finding:
    return Finding(name, "unknown", f"could not read the setting ({operation}: {read.error})", False)


def _versioning(state: _State) -> Finding:
    read = state.versioning
    if read.error:
        return _unknown(VERSIONING, read, "GetBucketVersioning")
    status = (read.value or {}).get("Status")
    if status == "Enabled":
        return Finding(VERSIONING, "ok", "Enabled", False)
    if status == "Suspended":
        return Finding(VERSIONING, "wrong", "Suspended: new writes overwrite without keeping versions", True)
    return Finding(VERSIONING, "missing", "never enabled", True)


def _lock_enabled(state: _State) -> bool | None:
    """True or False, or None when the Object Lock configuration could not be read."""
    if state.object_lock.error:
        return None
    config = (state.object_lock.value or {}).get("ObjectLockConfiguration", {})
    return bool(config.get("ObjectLockEnabled") == "Enabled")


def _object_lock(state: _State, *, versioning_fixable: bool) -> Finding:
    enabled = _lock_enabled(state)
    if enabled is None:
        return _unknown(OBJECT_LOCK, state.object_lock, "GetObjectLockConfiguration")
    if enabled:
        config = (state.object_lock.value or {}).get("ObjectLockConfiguration", {})
        default = config.get("Rule", {}).get("DefaultRetention")
        if default:
            period = f"{default['Days']} days" if default.get("Days") else f"{default.get('Years')} years"
            return Finding(
                OBJECT_LOCK,
                "wrong",
                f"Enabled, but with a default retention ({default.get('Mode')}, {period}): every new "
                "version is locked for that time and cannot be erased on request; remove the "
                "default retention (callrec places legal holds itself)",
                False,
            )
        return Finding(OBJECT_LOCK, "ok", "Enabled, no default retention", False)
    versioning_on = (state.versioning.value or {}).get("Status") == "Enabled"
    fixable = versioning_on or versioning_fixable
    detail = "not enabled: legal holds are enforced by the database only"
    if fixable:
        detail += (
            "; --apply enables it (irreversible: versioning can then never be suspended; "
            "some S3-compatible servers allow it only when the bucket is created)"
        )
    else:
        detail += "; it needs versioning, which could not be read"
    return Finding(OBJECT_LOCK, "missing", detail, fixable)


def _lifecycle(state: _State, *, retention: timedelta, margin: timedelta) -> list[Finding]:
    names = [*RULE_IDS, OTHER_RULES]
    if state.lifecycle.error:
        return [_unknown(name, state.lifecycle, "GetBucketLifecycleConfiguration") for name in names]
    rules = state.rules
    prefix = state.prefix
    retention_days = _days(retention)
    backstop_days = _days(retention + margin)
    lock = _lock_enabled(state)
    findings: list[Finding] = []

    def ours(name: str) -> _Rule | None:
        return next((r for r in rules if r.get("ID") == RULE_IDS[name]), None)

    def requirement(name: str, wanted: str, meets: Callable[[_Rule], bool]) -> Finding:
        meeting = [r for r in rules if _enabled(r) and _covers(r, prefix) and meets(r)]
        if meeting:
            by = ", ".join(repr(r.get("ID", "")) for r in meeting)
            return Finding(name, "ok", f"{wanted} (rule {by})", False)
        own = ours(name)
        if own is not None:
            return Finding(name, "wrong", f"rule {RULE_IDS[name]!r} does not {wanted}", True)
        return Finding(name, "missing", f"no rule to {wanted} under {prefix!r}", True)

    def destructive(
        name: str, wanted: str, meets: Callable[[_Rule], bool], destroys: Callable[[_Rule], bool]
    ) -> Finding:
        """(a) and (b) destroy data: they are only safe where Object Lock protects held versions."""
        if lock is None:
            return _unknown(name, state.object_lock, "GetObjectLockConfiguration")
        if lock:
            return requirement(name, wanted, meets)
        dangerous = [r for r in rules if _enabled(r) and _overlaps(r, prefix) and destroys(r)]
        if dangerous:
            ids = ", ".join(repr(r.get("ID", "")) for r in dangerous)
            return Finding(
                name,
                "wrong",
                f"rule {ids} can destroy recordings under a legal hold: without Object Lock, "
                "S3 lifecycle cannot see callrec's holds; enable Object Lock or remove the rule",
                False,
            )
        return Finding(
            name,
            "missing",
            "not set without Object Lock: S3 lifecycle cannot see callrec's holds and would "
            "destroy held recordings",
            False,
        )

    def expires_current_in_time(rule: _Rule) -> bool:
        return retention_days <= _int(rule.get("Expiration", {}).get("Days")) <= backstop_days

    def expires_current(rule: _Rule) -> bool:
        expiration = rule.get("Expiration", {})
        return bool(expiration.get("Days") or expiration.get("Date"))

    def expires_all_noncurrent(rule: _Rule) -> bool:
        expiration = rule.get("NoncurrentVersionExpiration", {})
        # NewerNoncurrentVersions keeps that many noncurrent versions for ever.
        return _int(expiration.get("NoncurrentDays")) > 0 and not expiration.get("NewerNoncurrentVersions")

    def expires_noncurrent(rule: _Rule) -> bool:
        return "NoncurrentVersionExpiration" in rule

    findings.append(
        destructive(
            EXPIRE_CURRENT,
            f"expire current versions after {backstop_days} days (retention {retention_days} + margin)",
            expires_current_in_time,
            expires_current,
        )
    )
    findings.append(
        destructive(
            EXPIRE_NONCURRENT, "expire noncurrent versions", expires_all_noncurrent, expires_noncurrent
        )
    )
    findings.append(
        requirement(
            DELETE_MARKERS,
            "remove expired delete markers",
            lambda r: r.get("Expiration", {}).get("ExpiredObjectDeleteMarker") is True,
        )
    )
    findings.append(
        requirement(
            ABORT_MULTIPART,
            "abort incomplete multipart uploads",
            lambda r: _int(r.get("AbortIncompleteMultipartUpload", {}).get("DaysAfterInitiation")) > 0,
        )
    )

    early = [
        r
        for r in rules
        if not str(r.get("ID", "")).startswith(BACKSTOP_RULE_PREFIX)
        and _enabled(r)
        and _overlaps(r, prefix)
        and (
            "Date" in r.get("Expiration", {})
            or 0 < _int(r.get("Expiration", {}).get("Days")) < retention_days
        )
    ]
    if early:
        ids = ", ".join(repr(r.get("ID", "")) for r in early)
        findings.append(
            Finding(
                OTHER_RULES,
                "wrong",
                f"rule {ids} expires objects under {prefix!r} before the retention of "
                f"{retention_days} days; change its scope or remove it",
                False,
            )
        )
    else:
        findings.append(
            Finding(OTHER_RULES, "ok", f"no other rule expires objects under {prefix!r} early", False)
        )
    return findings


def _encryption(state: _State) -> Finding:
    read = state.encryption
    if read.error:
        return _unknown(ENCRYPTION, read, "GetBucketEncryption")
    rules = (read.value or {}).get("ServerSideEncryptionConfiguration", {}).get("Rules", [])
    algorithms = [r.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm", "") for r in rules]
    if any(a in _ENCRYPTION_ALGORITHMS for a in algorithms):
        return Finding(ENCRYPTION, "ok", ", ".join(a for a in algorithms if a), False)
    if algorithms:
        return Finding(ENCRYPTION, "wrong", f"unexpected algorithm {', '.join(algorithms)!r}", True)
    return Finding(ENCRYPTION, "missing", f"none; --apply sets {_wanted_algorithm(state.sse)}", True)


def _public_access(state: _State) -> Finding:
    read = state.public_access
    if read.error:
        return _unknown(PUBLIC_ACCESS, read, "GetPublicAccessBlock")
    if read.value is None:
        return Finding(PUBLIC_ACCESS, "missing", "no public access block on the bucket", True)
    config = read.value.get("PublicAccessBlockConfiguration", {})
    off = [flag for flag in _PUBLIC_ACCESS_FLAGS if config.get(flag) is not True]
    if off:
        return Finding(PUBLIC_ACCESS, "wrong", f"off: {', '.join(off)}", True)
    return Finding(PUBLIC_ACCESS, "ok", "all four flags on", False)


def _anchors(state: _State, anchor_prefix: str) -> Finding:
    """The audit anchors' prefix: apart from the store's, lockable, and free of expiring rules."""
    if anchor_prefix.startswith(state.prefix) or state.prefix.startswith(anchor_prefix):
        return Finding(
            ANCHORS,
            "wrong",
            f"the anchors' prefix {anchor_prefix!r} overlaps the store's {state.prefix!r}",
            False,
        )
    lock = _lock_enabled(state)
    if lock is None:
        return _unknown(ANCHORS, state.object_lock, "GetObjectLockConfiguration")
    if not lock:
        return Finding(
            ANCHORS,
            "missing",
            "anchors are locked in compliance mode, which needs Object Lock on the bucket; "
            "until it is enabled (see object-lock) no anchor is written",
            False,
        )
    if state.lifecycle.error:
        return _unknown(ANCHORS, state.lifecycle, "GetBucketLifecycleConfiguration")
    keep = _days(state.anchor_retention) if state.anchor_retention > timedelta(0) else 0

    def early(rule: _Rule) -> bool:
        expiration = rule.get("Expiration", {})
        noncurrent = rule.get("NoncurrentVersionExpiration", {})
        return (
            "Date" in expiration
            or 0 < _int(expiration.get("Days")) < max(keep, 1)
            or 0 < _int(noncurrent.get("NoncurrentDays")) < max(keep, 1)
        )

    touching = [r for r in state.rules if _enabled(r) and _overlaps(r, anchor_prefix) and early(r)]
    if touching:
        ids = ", ".join(repr(r.get("ID", "")) for r in touching)
        return Finding(
            ANCHORS,
            "wrong",
            f"rule {ids} expires objects under the anchors' prefix {anchor_prefix!r} before their "
            f"retention of {keep} days ends; scope it to other prefixes",
            False,
        )
    return Finding(
        ANCHORS,
        "ok",
        f"under {anchor_prefix!r}, outside {state.prefix!r}, Object Lock on, "
        "no lifecycle rule expires them early",
        False,
    )


def _days(period: timedelta) -> int:
    return max(1, math.ceil(period / _DAY))


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _enabled(rule: _Rule) -> bool:
    return rule.get("Status") == "Enabled"


def _scope(rule: _Rule) -> tuple[str, bool, bool]:
    """(prefix, tagged, sized) of a rule: its key prefix, whether it only applies to objects
    with certain tags, and whether it only applies to objects of certain sizes. A rule without
    a Filter uses the old top-level Prefix."""
    if "Filter" not in rule:
        return str(rule.get("Prefix", "")), False, False
    flt: Mapping[str, Any] = rule["Filter"]
    conditions: Mapping[str, Any] = flt.get("And", flt)
    tagged = "Tag" in flt or bool(conditions.get("Tags"))
    sized = "ObjectSizeGreaterThan" in conditions or "ObjectSizeLessThan" in conditions
    return str(conditions.get("Prefix", "")), tagged, sized


def _covers(rule: _Rule, prefix: str) -> bool:
    """The rule applies to every object under ``prefix``."""
    rule_prefix, tagged, sized = _scope(rule)
    return prefix.startswith(rule_prefix) and not tagged and not sized


def _overlaps(rule: _Rule, prefix: str) -> bool:
    """The rule may apply to some object under ``prefix``. callrec's objects carry no tags, so
    a tag-filtered rule never does."""
    rule_prefix, tagged, _sized = _scope(rule)
    return not tagged and (prefix.startswith(rule_prefix) or rule_prefix.startswith(prefix))


def _wanted_algorithm(sse: str) -> str:
    return "SSE-KMS (aws:kms)" if sse == "aws:kms" else "SSE-S3 (AES256)"


def _validate(retention: timedelta, margin: timedelta) -> None:
    if retention <= timedelta(0):
        raise ValueError("retention must be positive")
    if margin < timedelta(0):
        raise ValueError("margin must not be negative")


# --- fixing (blocking; run through store.run_with_client) -------------------------------------


def _fix_versioning(
    client: S3Client, store: S3ObjectStore, names: Sequence[str], *, retention: timedelta, margin: timedelta
) -> str:
    operation = "PutBucketVersioning"
    _call(
        operation,
        lambda: client.put_bucket_versioning(
            Bucket=store.bucket, VersioningConfiguration={"Status": "Enabled"}
        ),
    )
    return operation


def _fix_object_lock(
    client: S3Client, store: S3ObjectStore, names: Sequence[str], *, retention: timedelta, margin: timedelta
) -> str:
    # No Rule: a default retention would lock every version and defeat erasure on request.
    operation = "PutObjectLockConfiguration"
    _call(
        operation,
        lambda: client.put_object_lock_configuration(
            Bucket=store.bucket, ObjectLockConfiguration={"ObjectLockEnabled": "Enabled"}
        ),
    )
    return operation


def _fix_encryption(
    client: S3Client, store: S3ObjectStore, names: Sequence[str], *, retention: timedelta, margin: timedelta
) -> str:
    by_default: ServerSideEncryptionByDefaultTypeDef = {"SSEAlgorithm": "AES256"}
    if store.storage.sse == "aws:kms":
        by_default = {"SSEAlgorithm": "aws:kms"}
        if store.storage.sse_kms_key_id:
            by_default["KMSMasterKeyID"] = store.storage.sse_kms_key_id
    operation = "PutBucketEncryption"
    _call(
        operation,
        lambda: client.put_bucket_encryption(
            Bucket=store.bucket,
            ServerSideEncryptionConfiguration={
                # S3 Bucket Keys cut the KMS requests of SSE-KMS; meaningless for SSE-S3.
                "Rules": [
                    {
                        "ApplyServerSideEncryptionByDefault": by_default,
                        "BucketKeyEnabled": store.storage.sse == "aws:kms",
                    }
                ]
            },
        ),
    )
    return operation


def _fix_public_access(
    client: S3Client, store: S3ObjectStore, names: Sequence[str], *, retention: timedelta, margin: timedelta
) -> str:
    operation = "PutPublicAccessBlock"
    _call(
        operation,
        lambda: client.put_public_access_block(
            Bucket=store.bucket,
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": True,
                "IgnorePublicAcls": True,
                "BlockPublicPolicy": True,
                "RestrictPublicBuckets": True,
            },
        ),
    )
    return operation


def backstop_rules(prefix: str, *, retention: timedelta, margin: timedelta) -> dict[str, dict[str, Any]]:
    """The lifecycle rules callrec sets, by finding name. Each is its own rule: S3 does not
    allow ``ExpiredObjectDeleteMarker`` together with ``Days`` in one Expiration."""
    scope = {"Filter": {"Prefix": prefix}, "Status": "Enabled"}
    return {
        EXPIRE_CURRENT: {
            "ID": RULE_IDS[EXPIRE_CURRENT],
            **scope,
            "Expiration": {"Days": _days(retention + margin)},
        },
        EXPIRE_NONCURRENT: {
            "ID": RULE_IDS[EXPIRE_NONCURRENT],
            **scope,
            "NoncurrentVersionExpiration": {"NoncurrentDays": NONCURRENT_DAYS},
        },
        DELETE_MARKERS: {
            "ID": RULE_IDS[DELETE_MARKERS],
            **scope,
            "Expiration": {"ExpiredObjectDeleteMarker": True},
        },
        ABORT_MULTIPART: {
            "ID": RULE_IDS[ABORT_MULTIPART],
            **scope,
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": ABORT_MULTIPART_DAYS},
        },
    }


def _fix_lifecycle(
    client: S3Client, store: S3ObjectStore, names: Sequence[str], *, retention: timedelta, margin: timedelta
) -> str:
    """Merge by rule ID: the rules named are added or replaced, every other rule is written
    back as read. The configuration is replaced as a whole (S3 has no per-rule update), so it
    is read again here, just before writing, to lose as little as possible to a concurrent
    editor."""
    get = "GetBucketLifecycleConfiguration"
    try:
        current = client.get_bucket_lifecycle_configuration(Bucket=store.bucket)
    except ClientError as exc:
        if _code(exc) != "NoSuchLifecycleConfiguration":
            raise _Refused(get, _code(exc) or "error") from None
        current = None
    wanted = backstop_rules(store.prefix, retention=retention, margin=margin)
    replacing = {wanted[name]["ID"] for name in names}
    rules: list[dict[str, Any]] = []
    for rule in current.get("Rules", []) if current is not None else []:
        if rule.get("ID") in replacing:
            continue
        kept = dict(rule)
        if "Filter" not in kept and "Prefix" in kept:
            # S3 refuses a configuration that mixes the old top-level Prefix with Filter rules;
            # the Filter form means the same.
            kept["Filter"] = {"Prefix": kept.pop("Prefix")}
        rules.append(kept)
    rules += [wanted[name] for name in names]
    extra: dict[str, Any] = {}
    if current is not None and "TransitionDefaultMinimumObjectSize" in current:
        extra["TransitionDefaultMinimumObjectSize"] = current["TransitionDefaultMinimumObjectSize"]
    operation = "PutBucketLifecycleConfiguration"
    _call(
        operation,
        lambda: client.put_bucket_lifecycle_configuration(
            Bucket=store.bucket,
            LifecycleConfiguration={"Rules": cast("list[LifecycleRuleTypeDef]", rules)},
            **extra,
        ),
    )
    return operation
