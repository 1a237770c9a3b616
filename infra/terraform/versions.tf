terraform {
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 5.41: aws_kms_key.rotation_period_in_days.
      version = ">= 5.41.0, < 7.0.0"
    }
  }
}

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

data "aws_region" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name

  log_bucket_name = coalesce(var.log_bucket_name, "${var.bucket_name}-access-logs")

  # What `callrec storage check` expects of the lifecycle backstop (callrec/storage/check.py:
  # RULE_IDS, NONCURRENT_DAYS, ABORT_MULTIPART_DAYS, and the 7-day margin the CLI passes).
  # tests/infra/test_terraform.py compares these rules with check.backstop_rules().
  backstop_margin_days = 7
  backstop_expire_days = var.retention_days + local.backstop_margin_days
  noncurrent_days      = 1
  abort_multipart_days = 1

  tags = merge({ "app" = "callrec" }, var.tags)
}
