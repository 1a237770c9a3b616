# Optional RDS PostgreSQL (create_database = true): encrypted with a key of its own, TLS forced
# (rds.force_ssl), automated backups with point-in-time recovery, the master password generated
# and kept in Secrets Manager by RDS (never in Terraform state), reachable only from callrec's
# security groups. callrec connects with the database_url output and PGPASSWORD from the secret.

locals {
  database_major = split(".", var.database_engine_version)[0]
}

resource "aws_kms_key" "database" {
  count                   = var.create_database ? 1 : 0
  description             = "${var.name}: RDS storage, snapshots, Performance Insights and the master password secret"
  key_usage               = "ENCRYPT_DECRYPT"
  enable_key_rotation     = true
  rotation_period_in_days = var.kms_rotation_period_days
  deletion_window_in_days = var.kms_deletion_window_days
  policy                  = data.aws_iam_policy_document.kms_key_policy.json
  tags                    = local.tags
}

resource "aws_kms_alias" "database" {
  count         = var.create_database ? 1 : 0
  name          = "alias/${var.name}-database"
  target_key_id = aws_kms_key.database[0].key_id
}

resource "aws_db_subnet_group" "callrec" {
  count       = var.create_database ? 1 : 0
  name        = "${var.name}-database"
  description = "callrec's PostgreSQL"
  subnet_ids  = var.database_subnet_ids
  tags        = local.tags

  lifecycle {
    precondition {
      condition     = length(var.database_subnet_ids) >= 2 && var.database_vpc_id != ""
      error_message = "create_database needs database_vpc_id and at least two database_subnet_ids."
    }
  }
}

resource "aws_security_group" "database" {
  count       = var.create_database ? 1 : 0
  name        = "${var.name}-database"
  description = "callrec's PostgreSQL: reachable from callrec's processes only"
  vpc_id      = var.database_vpc_id
  tags        = local.tags
}

# count, not for_each: the groups' ids are often unknown until apply, their number is not.
resource "aws_vpc_security_group_ingress_rule" "database" {
  count                        = var.create_database ? length(var.database_client_security_group_ids) : 0
  security_group_id            = aws_security_group.database[0].id
  description                  = "PostgreSQL from callrec"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = var.database_client_security_group_ids[count.index]
  tags                         = local.tags
}

resource "aws_db_parameter_group" "callrec" {
  count       = var.create_database ? 1 : 0
  name        = "${var.name}-postgres${local.database_major}"
  family      = "postgres${local.database_major}"
  description = "callrec: TLS only, terse errors"

  # Refuse every connection that is not TLS.
  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }

  # Error reports without DETAIL lines: a unique violation's DETAIL repeats the key's value, and
  # no phone number may reach a log (rule 3 of docs/DESIGN).
  parameter {
    name  = "log_error_verbosity"
    value = "terse"
  }

  # No statement is logged, however slow: its text and parameters could hold personal data.
  parameter {
    name  = "log_statement"
    value = "none"
  }

  parameter {
    name  = "log_min_duration_statement"
    value = "-1"
  }

  tags = local.tags
}

data "aws_iam_policy_document" "rds_monitoring_trust" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["monitoring.rds.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "rds_monitoring" {
  count              = var.create_database ? 1 : 0
  name               = "${var.name}-rds-monitoring"
  description        = "Enhanced Monitoring of callrec's PostgreSQL"
  assume_role_policy = data.aws_iam_policy_document.rds_monitoring_trust.json
  tags               = local.tags
}

resource "aws_iam_role_policy_attachment" "rds_monitoring" {
  count      = var.create_database ? 1 : 0
  role       = aws_iam_role.rds_monitoring[0].name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}

resource "aws_db_instance" "callrec" {
  # checkov:skip=CKV2_AWS_30:No query logging: logged statements and their parameters would copy phone numbers and other personal data into CloudWatch (rule 3); errors are logged, tersely.
  count          = var.create_database ? 1 : 0
  identifier     = "${var.name}-postgres"
  engine         = "postgres"
  engine_version = var.database_engine_version
  instance_class = var.database_instance_class
  db_name        = var.database_name
  username       = var.database_username
  port           = 5432

  manage_master_user_password   = true
  master_user_secret_kms_key_id = aws_kms_key.database[0].arn

  allocated_storage     = var.database_allocated_storage_gb
  max_allocated_storage = var.database_max_allocated_storage_gb
  storage_type          = "gp3"
  storage_encrypted     = true
  kms_key_id            = aws_kms_key.database[0].arn

  db_subnet_group_name   = aws_db_subnet_group.callrec[0].name
  vpc_security_group_ids = [aws_security_group.database[0].id]
  publicly_accessible    = false
  multi_az               = var.database_multi_az
  parameter_group_name   = aws_db_parameter_group.callrec[0].name
  ca_cert_identifier     = "rds-ca-rsa2048-g1"

  iam_database_authentication_enabled = true

  # Automated backups: daily snapshots plus the transaction log, so any second in the window can
  # be restored (point-in-time recovery).
  backup_retention_period   = var.database_backup_retention_days
  backup_window             = "02:00-03:00"
  maintenance_window        = "sun:03:30-sun:04:30"
  copy_tags_to_snapshot     = true
  delete_automated_backups  = false
  deletion_protection       = var.database_deletion_protection
  skip_final_snapshot       = false
  final_snapshot_identifier = "${var.name}-postgres-final"

  auto_minor_version_upgrade      = true
  enabled_cloudwatch_logs_exports = ["postgresql", "upgrade"]
  monitoring_interval             = 60
  monitoring_role_arn             = aws_iam_role.rds_monitoring[0].arn

  performance_insights_enabled          = true
  performance_insights_kms_key_id       = aws_kms_key.database[0].arn
  performance_insights_retention_period = 7

  tags = local.tags

  depends_on = [aws_iam_role_policy_attachment.rds_monitoring]
}
