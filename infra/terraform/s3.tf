# The recordings bucket, set up the way `callrec storage check` wants it (callrec/storage/check.py):
# versioning; Object Lock with no default retention (callrec puts legal holds on object versions
# itself; a default retention would lock every version and make erasure on request impossible);
# the lifecycle backstop under storage_prefix only; default encryption SSE-KMS with a bucket key;
# all four public access blocks. On top: TLS only, no upload that names another encryption or
# another key, ACLs disabled, access logs to a bucket of their own.

resource "aws_s3_bucket" "recordings" {
  # checkov:skip=CKV_AWS_144:No cross-region replication: S3 does not replicate deletions of a version by id, so a replica would keep every erased recording's ciphertext (rule 2). Backups are the database's and the KMS key's (README).
  # checkov:skip=CKV2_AWS_62:No event notifications: callrec records every write in its database and audit log; nothing consumes S3 events.
  bucket = var.bucket_name
  # Object Lock can only be turned on with versioning and is irreversible. No
  # aws_s3_bucket_object_lock_configuration: that resource exists to set a default retention,
  # which callrec must not have.
  object_lock_enabled = true
  force_destroy       = false
  tags                = local.tags
}

resource "aws_s3_bucket_versioning" "recordings" {
  bucket = aws_s3_bucket.recordings.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "recordings" {
  bucket = aws_s3_bucket.recordings.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.bucket.arn
    }
    # S3 Bucket Keys cut the KMS requests of SSE-KMS (one data key per bucket and period).
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_public_access_block" "recordings" {
  bucket                  = aws_s3_bucket.recordings.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "recordings" {
  bucket = aws_s3_bucket.recordings.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_logging" "recordings" {
  bucket        = aws_s3_bucket.recordings.id
  target_bucket = aws_s3_bucket.logs.id
  target_prefix = "s3-access/${var.bucket_name}/"
}

# The backstop `callrec storage check` verifies, rule for rule (IDs, prefix, days): the sweeper
# destroys recordings on time, these rules catch what it missed. Scoped to storage_prefix, so that
# nothing expires the audit anchors under anchor_prefix. With Object Lock, lifecycle never deletes
# a held version: on a held recording the expiry only adds a delete marker.
resource "aws_s3_bucket_lifecycle_configuration" "recordings" {
  bucket = aws_s3_bucket.recordings.id

  rule {
    id     = "callrec-backstop-expire-current"
    status = "Enabled"

    filter {
      prefix = var.storage_prefix
    }

    expiration {
      days = local.backstop_expire_days
    }
  }

  rule {
    id     = "callrec-backstop-expire-noncurrent"
    status = "Enabled"

    filter {
      prefix = var.storage_prefix
    }

    noncurrent_version_expiration {
      noncurrent_days = local.noncurrent_days
    }
  }

  # S3 refuses ExpiredObjectDeleteMarker and Days in one Expiration, hence a rule of its own.
  rule {
    id     = "callrec-backstop-delete-markers"
    status = "Enabled"

    filter {
      prefix = var.storage_prefix
    }

    expiration {
      expired_object_delete_marker = true
    }
  }

  rule {
    id     = "callrec-backstop-abort-multipart"
    status = "Enabled"

    filter {
      prefix = var.storage_prefix
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = local.abort_multipart_days
    }
  }

  # Parts of an upload left anywhere in the bucket (the anchors' prefix included) are removed too;
  # this rule expires no object.
  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"

    filter {}

    abort_incomplete_multipart_upload {
      days_after_initiation = local.abort_multipart_days
    }
  }

  depends_on = [aws_s3_bucket_versioning.recordings]

  lifecycle {
    precondition {
      condition     = !startswith(var.anchor_prefix, var.storage_prefix) && !startswith(var.storage_prefix, var.anchor_prefix)
      error_message = "anchor_prefix and storage_prefix overlap: the recordings' lifecycle rules would expire the audit anchors."
    }
  }
}

data "aws_iam_policy_document" "recordings_bucket" {
  statement {
    sid     = "DenyWithoutTLS"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.recordings.arn,
      "${aws_s3_bucket.recordings.arn}/*",
    ]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  statement {
    sid     = "DenyOldTLS"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.recordings.arn,
      "${aws_s3_bucket.recordings.arn}/*",
    ]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "NumericLessThan"
      variable = "s3:TlsVersion"
      values   = ["1.2"]
    }
  }

  # An upload that asks for any encryption but SSE-KMS is refused. An upload that names none is
  # encrypted with the bucket's default (SSE-KMS, this module's key) by S3: it is not refused,
  # because the parts of a multipart upload (UploadPart, authorised as s3:PutObject) cannot carry
  # the header, and callrec uploads every file above storage.multipart_threshold_mb in parts.
  statement {
    sid       = "DenyOtherEncryption"
    effect    = "Deny"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.recordings.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "StringNotEquals"
      variable = "s3:x-amz-server-side-encryption"
      values   = ["aws:kms"]
    }

    # Only when the request names one: a missing key would make StringNotEquals true.
    condition {
      test     = "Null"
      variable = "s3:x-amz-server-side-encryption"
      values   = ["false"]
    }
  }

  statement {
    sid       = "DenyOtherKmsKey"
    effect    = "Deny"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.recordings.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "StringNotEquals"
      variable = "s3:x-amz-server-side-encryption-aws-kms-key-id"
      values   = [aws_kms_key.bucket.arn]
    }

    # Only when the request names one: a missing key would make StringNotEquals true.
    condition {
      test     = "Null"
      variable = "s3:x-amz-server-side-encryption-aws-kms-key-id"
      values   = ["false"]
    }
  }

  # Object Lock is on from the bucket's creation; the only change left to make to its
  # configuration is a default retention, which would stop erasure on request for its whole term
  # (in compliance mode not even the account's root user could shorten it).
  statement {
    sid       = "DenyObjectLockConfigurationChanges"
    effect    = "Deny"
    actions   = ["s3:PutBucketObjectLockConfiguration"]
    resources = [aws_s3_bucket.recordings.arn]

    principals {
      type        = "*"
      identifiers = ["*"]
    }
  }
}

resource "aws_s3_bucket_policy" "recordings" {
  bucket = aws_s3_bucket.recordings.id
  policy = data.aws_iam_policy_document.recordings_bucket.json

  # A bucket policy is refused while a public access block is being set.
  depends_on = [aws_s3_bucket_public_access_block.recordings]
}

# --- access logs ---------------------------------------------------------------------------------

resource "aws_s3_bucket" "logs" {
  # checkov:skip=CKV_AWS_18:This bucket receives the access logs; logging it into itself would loop, and into a third bucket only moves the question.
  # checkov:skip=CKV_AWS_144:No cross-region replication of access logs: they are kept for log_retention_days in one region.
  # checkov:skip=CKV_AWS_145:S3 server access logs can only be delivered to a bucket encrypted with SSE-S3 (AES256), not SSE-KMS.
  # checkov:skip=CKV2_AWS_62:No event notifications: nothing consumes the log bucket's events.
  bucket        = local.log_bucket_name
  force_destroy = false
  tags          = local.tags
}

resource "aws_s3_bucket_versioning" "logs" {
  bucket = aws_s3_bucket.logs.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "logs" {
  bucket = aws_s3_bucket.logs.id

  rule {
    apply_server_side_encryption_by_default {
      # The only encryption S3 server access logging can write to.
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_public_access_block" "logs" {
  bucket                  = aws_s3_bucket.logs.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "logs" {
  bucket = aws_s3_bucket.logs.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "logs" {
  bucket = aws_s3_bucket.logs.id

  rule {
    id     = "expire-access-logs"
    status = "Enabled"

    filter {}

    expiration {
      days = var.log_retention_days
    }

    noncurrent_version_expiration {
      noncurrent_days = 1
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }

  depends_on = [aws_s3_bucket_versioning.logs]
}

# Log delivery by the S3 logging service principal, only for the recordings bucket of this account
# (https://docs.aws.amazon.com/AmazonS3/latest/userguide/enable-server-access-logging.html).
data "aws_iam_policy_document" "logs_bucket" {
  statement {
    sid       = "S3ServerAccessLogs"
    effect    = "Allow"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.logs.arn}/s3-access/*"]

    principals {
      type        = "Service"
      identifiers = ["logging.s3.amazonaws.com"]
    }

    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = [aws_s3_bucket.recordings.arn]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }

  statement {
    sid     = "DenyWithoutTLS"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.logs.arn,
      "${aws_s3_bucket.logs.arn}/*",
    ]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "logs" {
  bucket     = aws_s3_bucket.logs.id
  policy     = data.aws_iam_policy_document.logs_bucket.json
  depends_on = [aws_s3_bucket_public_access_block.logs]
}
