# --- naming -------------------------------------------------------------------------------------

variable "name" {
  description = "Prefix of the names of IAM roles, policies, KMS aliases and the database."
  type        = string
  default     = "callrec"

  validation {
    condition     = can(regex("^[a-zA-Z][a-zA-Z0-9-]{0,30}$", var.name))
    error_message = "name: a letter, then up to 30 letters, digits or hyphens."
  }
}

variable "tags" {
  description = "Tags added to every resource that takes tags."
  type        = map(string)
  default     = {}
}

# --- the recordings bucket ----------------------------------------------------------------------

variable "bucket_name" {
  description = "Name of the recordings bucket (globally unique). Output as storage_bucket."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name: 3 to 63 lower-case letters, digits, dots or hyphens."
  }
}

variable "log_bucket_name" {
  description = "Name of the bucket that receives the recordings bucket's access logs. Null: <bucket_name>-access-logs."
  type        = string
  default     = null
}

variable "storage_prefix" {
  description = "callrec's storage.prefix: every recording's key starts with it, and the lifecycle backstop covers exactly this prefix."
  type        = string
  default     = "recordings/"

  validation {
    condition     = can(regex("^([A-Za-z0-9._-]+/)+$", var.storage_prefix))
    error_message = "storage_prefix: segments of [A-Za-z0-9._-] ending in \"/\", such as \"recordings/\" (an empty prefix would put the audit anchors under the recordings' lifecycle rules)."
  }
}

variable "anchor_prefix" {
  description = "Where the audit chain's anchors are written (callrec's audit.anchor_prefix): outside storage_prefix, so that no lifecycle rule of the recordings applies to them."
  type        = string
  default     = "audit-anchors/"

  validation {
    condition     = can(regex("^([A-Za-z0-9._-]+/)+$", var.anchor_prefix))
    error_message = "anchor_prefix: segments of [A-Za-z0-9._-] ending in \"/\", such as \"audit-anchors/\"."
  }
}

variable "retention_days" {
  description = "The longest retention of any callrec tenant, in days (tenants.<t>.retention). The backstop expires current versions 7 days after it, as `callrec storage check` expects."
  type        = number
  default     = 90

  validation {
    condition     = var.retention_days >= 1 && floor(var.retention_days) == var.retention_days
    error_message = "retention_days: a whole number of days, at least 1."
  }
}

variable "log_retention_days" {
  description = "How long the access logs are kept, in days."
  type        = number
  default     = 365

  validation {
    condition     = var.log_retention_days >= 1
    error_message = "log_retention_days: at least 1."
  }
}

# --- KMS ----------------------------------------------------------------------------------------

variable "kms_deletion_window_days" {
  description = "Waiting period before a scheduled deletion of a KMS key takes effect. Deleting the key-encryption key makes every recording unreadable."
  type        = number
  default     = 30

  validation {
    condition     = var.kms_deletion_window_days >= 7 && var.kms_deletion_window_days <= 30
    error_message = "kms_deletion_window_days: 7 to 30."
  }
}

variable "kms_rotation_period_days" {
  description = "Automatic rotation period of the KMS keys, in days (90 to 2560)."
  type        = number
  default     = 365

  validation {
    condition     = var.kms_rotation_period_days >= 90 && var.kms_rotation_period_days <= 2560
    error_message = "kms_rotation_period_days: 90 to 2560."
  }
}

# --- who may assume the roles -------------------------------------------------------------------

variable "runtime_trusted_services" {
  description = "AWS services that may assume the runtime role (ec2.amazonaws.com for an instance profile, ecs-tasks.amazonaws.com for ECS)."
  type        = list(string)
  default     = ["ec2.amazonaws.com"]
}

variable "runtime_trusted_role_arns" {
  description = "IAM role ARNs that may assume the runtime role."
  type        = list(string)
  default     = []
}

variable "eks_oidc_provider_arn" {
  description = "EKS: the cluster's IAM OIDC provider ARN, for IAM roles for service accounts (IRSA). Empty: no IRSA trust."
  type        = string
  default     = ""
}

variable "eks_service_accounts" {
  description = "EKS: the \"namespace:name\" service accounts that may assume the runtime role through IRSA."
  type        = list(string)
  default     = ["callrec:callrec"]
}

variable "create_instance_profile" {
  description = "Create an EC2 instance profile for the runtime role."
  type        = bool
  default     = true
}

variable "admin_trusted_principal_arns" {
  description = "IAM principals (users or roles) that may assume the admin role. Empty: the account itself, so that the account's IAM policies decide."
  type        = list(string)
  default     = []
}

variable "admin_require_mfa" {
  description = "The admin role can be assumed only with MFA (aws:MultiFactorAuthPresent)."
  type        = bool
  default     = true
}

variable "permissions_boundary_arn" {
  description = "Permissions boundary set on both roles. Null: none."
  type        = string
  default     = null
}

# --- optional PostgreSQL ------------------------------------------------------------------------

variable "create_database" {
  description = "Create an RDS PostgreSQL instance (encrypted, TLS forced, backups with point-in-time recovery)."
  type        = bool
  default     = false
}

variable "database_subnet_ids" {
  description = "Private subnets of the database (at least two availability zones). Required with create_database."
  type        = list(string)
  default     = []
}

variable "database_vpc_id" {
  description = "VPC of the database's security group. Required with create_database."
  type        = string
  default     = ""
}

variable "database_client_security_group_ids" {
  description = "Security groups of callrec's processes: only they reach the database, on its port."
  type        = list(string)
  default     = []
}

variable "database_engine_version" {
  description = "PostgreSQL major version (callrec is tested on 16)."
  type        = string
  default     = "16"
}

variable "database_instance_class" {
  description = "RDS instance class."
  type        = string
  default     = "db.t4g.medium"
}

variable "database_allocated_storage_gb" {
  description = "Initial storage, in GiB; grows by itself up to database_max_allocated_storage_gb."
  type        = number
  default     = 50
}

variable "database_max_allocated_storage_gb" {
  description = "Storage autoscaling ceiling, in GiB."
  type        = number
  default     = 500
}

variable "database_name" {
  description = "Name of the database callrec uses."
  type        = string
  default     = "callrec"
}

variable "database_username" {
  description = "Master user name; its password is generated and kept in Secrets Manager by RDS."
  type        = string
  default     = "callrec"
}

variable "database_backup_retention_days" {
  description = "Automated backups and point-in-time recovery window, in days."
  type        = number
  default     = 14

  validation {
    condition     = var.database_backup_retention_days >= 7 && var.database_backup_retention_days <= 35
    error_message = "database_backup_retention_days: 7 to 35 (0 would turn off backups and point-in-time recovery)."
  }
}

variable "database_multi_az" {
  description = "A standby in another availability zone."
  type        = bool
  default     = true
}

variable "database_deletion_protection" {
  description = "Refuse to delete the instance until this is turned off."
  type        = bool
  default     = true
}
