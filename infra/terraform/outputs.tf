# Outputs named <section>_<key> are the values of callrec's configuration keys [section] key
# (config.example.toml), one to one: storage_sse_kms_key_id is storage.sse_kms_key_id.
# callrec_environment holds the same values as CALLREC_<SECTION>__<KEY> variables.
# The other outputs (roles, policies, the log bucket, the database secret) are for the platform
# that runs callrec, not for callrec's configuration. tests/infra/test_terraform.py keeps it so.

output "storage_backend" {
  description = "storage.backend"
  value       = "s3"
}

output "storage_bucket" {
  description = "storage.bucket"
  value       = aws_s3_bucket.recordings.id
}

output "storage_prefix" {
  description = "storage.prefix: the lifecycle backstop covers exactly this prefix"
  value       = var.storage_prefix
}

output "storage_region" {
  description = "storage.region"
  value       = local.region
}

output "storage_sse" {
  description = "storage.sse: the bucket policy refuses an upload that asks for any other encryption"
  value       = "aws:kms"
}

output "storage_sse_kms_key_id" {
  description = "storage.sse_kms_key_id: the bucket policy refuses an upload that names another key"
  value       = aws_kms_key.bucket.arn
}

output "keys_provider" {
  description = "keys.provider"
  value       = "aws-kms"
}

output "keys_kms_key_id" {
  description = "keys.kms_key_id: the key-encryption key's ARN (Tink's awskms takes key ARNs)"
  value       = aws_kms_key.kek.arn
}

output "keys_kms_region" {
  description = "keys.kms_region"
  value       = local.region
}

locals {
  database_url = (
    var.create_database
    ? "postgresql://${aws_db_instance.callrec[0].username}@${aws_db_instance.callrec[0].address}:${aws_db_instance.callrec[0].port}/${aws_db_instance.callrec[0].db_name}?sslmode=verify-full"
    : null
  )

  callrec_environment = {
    CALLREC_STORAGE__BACKEND        = "s3"
    CALLREC_STORAGE__BUCKET         = aws_s3_bucket.recordings.id
    CALLREC_STORAGE__PREFIX         = var.storage_prefix
    CALLREC_STORAGE__REGION         = local.region
    CALLREC_STORAGE__SSE            = "aws:kms"
    CALLREC_STORAGE__SSE_KMS_KEY_ID = aws_kms_key.bucket.arn
    CALLREC_KEYS__PROVIDER          = "aws-kms"
    CALLREC_KEYS__KMS_KEY_ID        = aws_kms_key.kek.arn
    CALLREC_KEYS__KMS_REGION        = local.region
    CALLREC_AUDIT__ANCHOR_PREFIX    = var.anchor_prefix
  }
}

output "audit_anchor_prefix" {
  description = "audit.anchor_prefix: the only prefix besides storage.prefix where the runtime role may write, and no lifecycle rule expires anything"
  value       = var.anchor_prefix
}

output "database_url" {
  description = "database.url (null without create_database): no password in it; give callrec PGPASSWORD from database_master_user_secret_arn, and PGSSLROOTCERT the RDS CA bundle for sslmode=verify-full"
  value       = local.database_url
}

output "callrec_environment" {
  description = "The configuration outputs as callrec's environment variables (a Kubernetes ConfigMap, an ECS task definition, a systemd EnvironmentFile)"
  # A for expression rather than a conditional: the two results of a conditional must have one type.
  value = merge(
    local.callrec_environment,
    { for name, url in { CALLREC_DATABASE__URL = local.database_url } : name => url if url != null },
  )
}

# --- for the platform ------------------------------------------------------------------------

output "runtime_role_arn" {
  description = "Role for callrec serve, worker and sweep (instance profile, ECS task role, or IRSA annotation eks.amazonaws.com/role-arn)"
  value       = aws_iam_role.runtime.arn
}

output "runtime_instance_profile_name" {
  description = "EC2 instance profile of the runtime role (null when create_instance_profile is false)"
  value       = var.create_instance_profile ? aws_iam_instance_profile.runtime[0].name : null
}

output "runtime_policy_arn" {
  description = "The runtime policy, to attach to a role of your own instead"
  value       = aws_iam_policy.runtime.arn
}

output "admin_role_arn" {
  description = "Role for callrec storage check --apply, doctor and keys rotate"
  value       = aws_iam_role.admin.arn
}

output "admin_policy_arn" {
  description = "The admin policy (bucket settings, key rotation); the admin role has the runtime policy too"
  value       = aws_iam_policy.admin.arn
}

output "log_bucket" {
  description = "Bucket of the recordings bucket's S3 server access logs"
  value       = aws_s3_bucket.logs.id
}

output "database_master_user_secret_arn" {
  description = "Secrets Manager secret with the database's master password (null without create_database)"
  value       = var.create_database ? aws_db_instance.callrec[0].master_user_secret[0].secret_arn : null
}
