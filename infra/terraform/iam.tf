# Two policies and two roles.
#
# runtime: what `callrec serve`, `callrec worker` and `callrec sweep` call, and nothing else: the
#   object store under storage_prefix (put, multipart, read, delete by version, legal holds, the
#   lock state of a version), the bucket's Object Lock setting, and the key-encryption key's
#   Encrypt/Decrypt with an encryption context. tests/infra/test_iam.py records every S3 and KMS
#   call callrec makes against moto and compares them with these statements both ways; the
#   README's table gives the reason for every grant that no recorded call needs.
# admin: `callrec storage check [--apply]` (the bucket's settings, read and write) and
#   `callrec keys rotate`. The admin role also carries the runtime policy: `callrec doctor` probes
#   the store and the key provider the way the service does, and `storage check` starts with the
#   same HeadBucket.

locals {
  recordings_objects = "${aws_s3_bucket.recordings.arn}/${var.storage_prefix}*"
  anchor_objects     = "${aws_s3_bucket.recordings.arn}/${var.anchor_prefix}*"
}

data "aws_iam_policy_document" "runtime" {
  # HeadBucket (readiness, ObjectStore.check) is authorised as s3:ListBucket, with no prefix to
  # condition on.
  statement {
    sid       = "HeadBucket"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.recordings.arn]
  }

  # Every listing callrec makes is ListObjectVersions of one key or of a tenant's common prefix,
  # always under storage_prefix (or, for the audit anchors, under anchor_prefix).
  statement {
    sid       = "ListVersionsUnderPrefixes"
    effect    = "Allow"
    actions   = ["s3:ListBucketVersions"]
    resources = [aws_s3_bucket.recordings.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${var.storage_prefix}*", "${var.anchor_prefix}*"]
    }
  }

  # supports_legal_hold(): whether S3 itself will refuse to delete a held version.
  statement {
    sid       = "ReadObjectLockSetting"
    effect    = "Allow"
    actions   = ["s3:GetBucketObjectLockConfiguration"]
    resources = [aws_s3_bucket.recordings.arn]
  }

  statement {
    sid    = "Recordings"
    effect = "Allow"
    actions = [
      # PutObject, CreateMultipartUpload, UploadPart, CompleteMultipartUpload
      "s3:PutObject",
      "s3:AbortMultipartUpload",
      # GetObject and HeadObject, without and with a VersionId
      "s3:GetObject",
      "s3:GetObjectVersion",
      # DeleteObject/DeleteObjects always name a version: both actions are checked
      "s3:DeleteObject",
      "s3:DeleteObjectVersion",
      "s3:PutObjectLegalHold",
      "s3:GetObjectLegalHold",
      # HeadObject reports a version's retain-until date only with this
      "s3:GetObjectRetention",
    ]
    resources = [local.recordings_objects]
  }

  # The audit chain's anchors: new objects under anchor_prefix, locked in compliance mode as they
  # are put (PutObject with ObjectLockMode needs s3:PutObjectRetention) and read back by listing
  # versions (an anchor's name is its record). No read, no delete, and no retention on recordings.
  statement {
    sid       = "AuditAnchors"
    effect    = "Allow"
    actions   = ["s3:PutObject", "s3:PutObjectRetention"]
    resources = [local.anchor_objects]
  }

  # callrec's key-encryption key, through Tink's awskms integration: Encrypt and Decrypt with
  # EncryptionContext {"associatedData": <hex>} (callrec always binds the tenant there).
  statement {
    sid       = "KeyEncryptionKey"
    effect    = "Allow"
    actions   = ["kms:Encrypt", "kms:Decrypt"]
    resources = [aws_kms_key.kek.arn]

    condition {
      test     = "ForAllValues:StringEquals"
      variable = "kms:EncryptionContextKeys"
      values   = ["associatedData"]
    }

    condition {
      test     = "Null"
      variable = "kms:EncryptionContextKeys"
      values   = ["false"]
    }
  }

  # SSE-KMS on the bucket: S3 calls KMS on the caller's behalf (GenerateDataKey for a put or a
  # multipart upload's start, Decrypt for a read and for each part), only through S3 in this
  # region and only for this bucket (with a bucket key the encryption context is the bucket's ARN).
  statement {
    sid       = "BucketKeyThroughS3"
    effect    = "Allow"
    actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
    resources = [aws_kms_key.bucket.arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${local.region}.amazonaws.com"]
    }

    condition {
      test     = "StringLike"
      variable = "kms:EncryptionContext:aws:s3:arn"
      values   = [aws_s3_bucket.recordings.arn, "${aws_s3_bucket.recordings.arn}/*"]
    }
  }
}

data "aws_iam_policy_document" "admin" {
  # `callrec storage check` reads each setting; `--apply` writes what is missing or wrong.
  # s3:PutBucketObjectLockConfiguration is left out on purpose: Object Lock is on from the bucket's
  # creation here, and the bucket policy denies changing it to everyone (s3.tf).
  statement {
    sid    = "BucketSettings"
    effect = "Allow"
    actions = [
      "s3:GetBucketVersioning",
      "s3:PutBucketVersioning",
      "s3:GetLifecycleConfiguration",
      "s3:PutLifecycleConfiguration",
      "s3:GetEncryptionConfiguration",
      "s3:PutEncryptionConfiguration",
      "s3:GetBucketPublicAccessBlock",
      "s3:PutBucketPublicAccessBlock",
    ]
    resources = [aws_s3_bucket.recordings.arn]
  }

  # `callrec keys rotate`: DescribeKey (an alias to the key's ARN), RotateKeyOnDemand, and
  # EnableKeyRotation where an on-demand rotation is refused.
  statement {
    sid       = "RotateKeyEncryptionKey"
    effect    = "Allow"
    actions   = ["kms:DescribeKey", "kms:RotateKeyOnDemand", "kms:EnableKeyRotation"]
    resources = [aws_kms_key.kek.arn]
  }
}

resource "aws_iam_policy" "runtime" {
  name        = "${var.name}-runtime"
  description = "callrec serve/worker/sweep: the recordings bucket under ${var.storage_prefix} and ${var.anchor_prefix}, the key-encryption key"
  policy      = data.aws_iam_policy_document.runtime.json
  tags        = local.tags
}

resource "aws_iam_policy" "admin" {
  name        = "${var.name}-admin"
  description = "callrec storage check --apply, keys rotate: the recordings bucket's settings, rotation of the key-encryption key"
  policy      = data.aws_iam_policy_document.admin.json
  tags        = local.tags
}

# --- roles ---------------------------------------------------------------------------------------

data "aws_iam_policy_document" "runtime_trust" {
  dynamic "statement" {
    for_each = length(var.runtime_trusted_services) > 0 ? [1] : []
    content {
      sid     = "Services"
      effect  = "Allow"
      actions = ["sts:AssumeRole"]

      principals {
        type        = "Service"
        identifiers = var.runtime_trusted_services
      }

      condition {
        test     = "StringEquals"
        variable = "aws:SourceAccount"
        values   = [local.account_id]
      }
    }
  }

  dynamic "statement" {
    for_each = length(var.runtime_trusted_role_arns) > 0 ? [1] : []
    content {
      sid     = "Roles"
      effect  = "Allow"
      actions = ["sts:AssumeRole"]

      principals {
        type        = "AWS"
        identifiers = var.runtime_trusted_role_arns
      }
    }
  }

  dynamic "statement" {
    for_each = var.eks_oidc_provider_arn != "" ? [1] : []
    content {
      sid     = "EksServiceAccounts"
      effect  = "Allow"
      actions = ["sts:AssumeRoleWithWebIdentity"]

      principals {
        type        = "Federated"
        identifiers = [var.eks_oidc_provider_arn]
      }

      condition {
        test     = "StringEquals"
        variable = "${replace(var.eks_oidc_provider_arn, "/^.*oidc-provider//", "")}:sub"
        values   = [for account in var.eks_service_accounts : "system:serviceaccount:${account}"]
      }

      condition {
        test     = "StringEquals"
        variable = "${replace(var.eks_oidc_provider_arn, "/^.*oidc-provider//", "")}:aud"
        values   = ["sts.amazonaws.com"]
      }
    }
  }
}

resource "aws_iam_role" "runtime" {
  name                 = "${var.name}-runtime"
  description          = "callrec serve, worker and sweep"
  assume_role_policy   = data.aws_iam_policy_document.runtime_trust.json
  permissions_boundary = var.permissions_boundary_arn
  max_session_duration = 3600
  tags                 = local.tags

  lifecycle {
    precondition {
      condition     = length(var.runtime_trusted_services) + length(var.runtime_trusted_role_arns) > 0 || var.eks_oidc_provider_arn != ""
      error_message = "Nobody could assume the runtime role: set runtime_trusted_services, runtime_trusted_role_arns or eks_oidc_provider_arn."
    }
  }
}

resource "aws_iam_role_policy_attachment" "runtime" {
  role       = aws_iam_role.runtime.name
  policy_arn = aws_iam_policy.runtime.arn
}

resource "aws_iam_instance_profile" "runtime" {
  count = var.create_instance_profile ? 1 : 0
  name  = "${var.name}-runtime"
  role  = aws_iam_role.runtime.name
  tags  = local.tags
}

data "aws_iam_policy_document" "admin_trust" {
  statement {
    sid     = "Operators"
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type = "AWS"
      identifiers = (
        length(var.admin_trusted_principal_arns) > 0
        ? var.admin_trusted_principal_arns
        : ["arn:${local.partition}:iam::${local.account_id}:root"]
      )
    }

    dynamic "condition" {
      for_each = var.admin_require_mfa ? [1] : []
      content {
        test     = "Bool"
        variable = "aws:MultiFactorAuthPresent"
        values   = ["true"]
      }
    }
  }
}

resource "aws_iam_role" "admin" {
  name                 = "${var.name}-admin"
  description          = "callrec storage check --apply, doctor and keys rotate"
  assume_role_policy   = data.aws_iam_policy_document.admin_trust.json
  permissions_boundary = var.permissions_boundary_arn
  max_session_duration = 3600
  tags                 = local.tags
}

resource "aws_iam_role_policy_attachment" "admin" {
  role       = aws_iam_role.admin.name
  policy_arn = aws_iam_policy.admin.arn
}

# doctor writes, reads and deletes a probe object and wraps and unwraps a key, like the service.
resource "aws_iam_role_policy_attachment" "admin_runtime" {
  role       = aws_iam_role.admin.name
  policy_arn = aws_iam_policy.runtime.arn
}
