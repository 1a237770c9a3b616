# Two customer-managed keys, both rotated automatically:
#
# - the key-encryption key (KEK), callrec's keys.kms_key_id: callrec calls Encrypt and Decrypt on
#   it through Tink's awskms integration, always with an encryption context ({"associatedData":
#   hex}) that binds the tenant, so the runtime policy (iam.tf) allows only calls that carry one.
#   Rotation keeps the old key material: everything wrapped before still decrypts. Destroying
#   this key destroys every recording (crypto-shredding at the scale of the whole service).
# - the bucket key, storage.sse_kms_key_id: SSE-KMS on the recordings bucket, defence in depth
#   under callrec's own encryption; S3 uses it on the caller's behalf (kms:ViaService).
#
# Both key policies leave the key's use to IAM (the account principal), the way AWS's default
# key policy does; the roles in iam.tf get exactly the calls callrec makes.

data "aws_iam_policy_document" "kms_key_policy" {
  # checkov:skip=CKV_AWS_109:A key policy's Resource "*" is the key itself; the account's IAM policies then decide (iam.tf), as in AWS's default key policy.
  # checkov:skip=CKV_AWS_111:The account principal, not a wildcard principal, administers the key, and IAM policies then decide who uses it.
  # checkov:skip=CKV_AWS_356:In a key policy Resource "*" means this key only.
  statement {
    sid       = "AccountIAMDecides"
    effect    = "Allow"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }
}

resource "aws_kms_key" "kek" {
  description             = "${var.name}: key-encryption key (keys.kms_key_id); wraps every recording's key"
  key_usage               = "ENCRYPT_DECRYPT"
  enable_key_rotation     = true
  rotation_period_in_days = var.kms_rotation_period_days
  deletion_window_in_days = var.kms_deletion_window_days
  policy                  = data.aws_iam_policy_document.kms_key_policy.json
  tags                    = local.tags
}

resource "aws_kms_alias" "kek" {
  name          = "alias/${var.name}-kek"
  target_key_id = aws_kms_key.kek.key_id
}

resource "aws_kms_key" "bucket" {
  description             = "${var.name}: SSE-KMS of the recordings bucket (storage.sse_kms_key_id)"
  key_usage               = "ENCRYPT_DECRYPT"
  enable_key_rotation     = true
  rotation_period_in_days = var.kms_rotation_period_days
  deletion_window_in_days = var.kms_deletion_window_days
  policy                  = data.aws_iam_policy_document.kms_key_policy.json
  tags                    = local.tags
}

resource "aws_kms_alias" "bucket" {
  name          = "alias/${var.name}-recordings-bucket"
  target_key_id = aws_kms_key.bucket.key_id
}
