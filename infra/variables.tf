variable "name" {
  description = "Prefix for every resource name (endpoints are <name>-sync and <name>-async)."
  type        = string
  default     = "sdturbo"

  validation {
    # Endpoint-config name prefixes get a 26-character suffix and must stay within 63 characters.
    condition     = can(regex("^[a-z][a-z0-9-]{1,23}$", var.name))
    error_message = "name must be 2-24 characters: lower-case letters, digits and hyphens, starting with a letter."
  }
}

variable "region" {
  description = "AWS region to deploy into."
  type        = string
  default     = "us-east-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]$", var.region))
    error_message = "region must look like us-east-1."
  }
}

variable "tags" {
  description = "Tags merged into every resource (through the provider's default_tags)."
  type        = map(string)
  default     = {}
}

variable "image_tag" {
  description = "Commit SHA the image was pushed under (build-and-push.yml). null creates only the shared resources (bucket, repository, network, role) so the first image and model can be uploaded."
  type        = string
  default     = null

  validation {
    # Tags are immutable commit SHAs, never `latest`: a deployment names exactly one build.
    condition     = var.image_tag == null || can(regex("^[0-9a-f]{7,40}$", coalesce(var.image_tag, "x")))
    error_message = "image_tag must be a git commit SHA (7-40 lower-case hex characters)."
  }
}

variable "instance_type" {
  description = "SageMaker instance type for both endpoints (a GPU type: ml.g5.xlarge has one A10G)."
  type        = string
  default     = "ml.g5.xlarge"

  validation {
    condition     = startswith(var.instance_type, "ml.")
    error_message = "instance_type must be a SageMaker instance type such as ml.g5.xlarge."
  }
}

variable "model_data_compression" {
  description = "How the model artifact from `python -m optimize build` is stored: \"None\" = an uncompressed folder under s3://<bucket>/<model_prefix> (ModelDataSource, no untar at start-up), \"Gzip\" = s3://<bucket>/<model_prefix>model.tar.gz (ModelDataUrl)."
  type        = string
  default     = "None"

  validation {
    condition     = contains(["None", "Gzip"], var.model_data_compression)
    error_message = "model_data_compression must be \"None\" or \"Gzip\"."
  }
}

variable "model_prefix" {
  description = "Key prefix of the model artifact in the bucket; the execution role may read only this prefix and inputs/."
  type        = string
  default     = "model/"

  validation {
    condition     = can(regex("^[a-zA-Z0-9_.-]+(/[a-zA-Z0-9_.-]+)*/$", var.model_prefix)) && !contains(["inputs/", "outputs/", "failures/"], var.model_prefix)
    error_message = "model_prefix must end with / and must not be inputs/, outputs/ or failures/."
  }
}

variable "container_environment" {
  description = "Extra environment variables for the serving container."
  type        = map(string)
  default     = {}
}

variable "sync_instance_count" {
  description = "Instances behind the real-time endpoint, and its autoscaling minimum. Real-time endpoints cannot scale to zero; 1 keeps latency low, 2 survives an AZ or instance loss."
  type        = number
  default     = 1

  validation {
    condition     = var.sync_instance_count >= 1 && floor(var.sync_instance_count) == var.sync_instance_count
    error_message = "sync_instance_count must be a whole number >= 1."
  }
}

variable "sync_max_instance_count" {
  description = "Autoscaling maximum for the real-time endpoint."
  type        = number
  default     = 2

  validation {
    condition     = var.sync_max_instance_count >= 1 && floor(var.sync_max_instance_count) == var.sync_max_instance_count
    error_message = "sync_max_instance_count must be a whole number >= 1."
  }
}

variable "sync_invocations_per_instance_target" {
  description = "Target of SageMakerVariantInvocationsPerInstance (per minute) for the real-time endpoint."
  type        = number
  default     = 300

  validation {
    condition     = var.sync_invocations_per_instance_target > 0
    error_message = "sync_invocations_per_instance_target must be positive."
  }
}

variable "async_max_instance_count" {
  description = "Autoscaling maximum for the async endpoint (its minimum is 0)."
  type        = number
  default     = 2

  validation {
    condition     = var.async_max_instance_count >= 1 && floor(var.async_max_instance_count) == var.async_max_instance_count
    error_message = "async_max_instance_count must be a whole number >= 1."
  }
}

variable "async_max_concurrent_invocations_per_instance" {
  description = "Requests SageMaker hands one async instance at a time. Matched to the server's max_batch_size (8) so a full batch can form; more only queues inside the container."
  type        = number
  default     = 8

  validation {
    condition     = var.async_max_concurrent_invocations_per_instance >= 1 && var.async_max_concurrent_invocations_per_instance <= 1000
    error_message = "async_max_concurrent_invocations_per_instance must be between 1 and 1000."
  }
}

variable "async_backlog_per_instance_target" {
  description = "Target of ApproximateBacklogSizePerInstance: queued requests per instance before scaling out (one full batch by default)."
  type        = number
  default     = 8

  validation {
    condition     = var.async_backlog_per_instance_target > 0
    error_message = "async_backlog_per_instance_target must be positive."
  }
}

variable "scale_in_cooldown_s" {
  description = "Seconds after a scale-in before another; the async endpoint reaches zero this long after its queue empties."
  type        = number
  default     = 600

  validation {
    condition     = var.scale_in_cooldown_s >= 0
    error_message = "scale_in_cooldown_s must be >= 0."
  }
}

variable "scale_out_cooldown_s" {
  description = "Seconds after a scale-out before another."
  type        = number
  default     = 300

  validation {
    condition     = var.scale_out_cooldown_s >= 0
    error_message = "scale_out_cooldown_s must be >= 0."
  }
}

variable "startup_health_check_timeout_s" {
  description = "Seconds SageMaker waits for /ping to answer 200 after the container starts. Sized for model load plus torch.compile warm-up (a few minutes on GPU)."
  type        = number
  default     = 1200

  validation {
    condition     = var.startup_health_check_timeout_s >= 60 && var.startup_health_check_timeout_s <= 3600
    error_message = "startup_health_check_timeout_s must be between 60 and 3600."
  }
}

variable "model_data_download_timeout_s" {
  description = "Seconds SageMaker may take to download the model artifact to the instance."
  type        = number
  default     = 1200

  validation {
    condition     = var.model_data_download_timeout_s >= 60 && var.model_data_download_timeout_s <= 3600
    error_message = "model_data_download_timeout_s must be between 60 and 3600."
  }
}

variable "output_expiry_days" {
  description = "Days after which async results under outputs/ are deleted."
  type        = number
  default     = 7

  validation {
    condition     = var.output_expiry_days >= 1
    error_message = "output_expiry_days must be >= 1."
  }
}

variable "input_expiry_days" {
  description = "Days after which async request payloads under inputs/ are deleted."
  type        = number
  default     = 7

  validation {
    condition     = var.input_expiry_days >= 1
    error_message = "input_expiry_days must be >= 1."
  }
}

variable "failure_expiry_days" {
  description = "Days after which async failure records under failures/ are deleted."
  type        = number
  default     = 30

  validation {
    condition     = var.failure_expiry_days >= 1
    error_message = "failure_expiry_days must be >= 1."
  }
}

variable "vpc_cidr" {
  description = "CIDR of the private VPC the endpoints run in (no internet gateway, no NAT: AWS services through VPC endpoints)."
  type        = string
  default     = "10.42.0.0/16"

  validation {
    condition     = can(cidrnetmask(var.vpc_cidr))
    error_message = "vpc_cidr must be an IPv4 CIDR block."
  }
}

variable "az_count" {
  description = "Availability zones (one private subnet each) the endpoints may use."
  type        = number
  default     = 2

  validation {
    condition     = var.az_count >= 2 && var.az_count <= 4
    error_message = "az_count must be between 2 and 4."
  }
}

variable "create_autoscaling" {
  description = "Create the Application Auto Scaling targets, policies and the HasBacklogWithoutCapacity alarm. Always true in AWS; false only for the moto emulator test, whose application-autoscaling API lacks ListTagsForResource."
  type        = bool
  default     = true
}

variable "github_repository" {
  description = "owner/name of the GitHub repository allowed to push images through OIDC (creates the push role). null creates no GitHub role."
  type        = string
  default     = null

  validation {
    condition     = var.github_repository == null || can(regex("^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$", coalesce(var.github_repository, "x")))
    error_message = "github_repository must be owner/name."
  }
}

variable "create_github_oidc_provider" {
  description = "Create the account's token.actions.githubusercontent.com OIDC provider (false when the account already has one)."
  type        = bool
  default     = true
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete a non-empty bucket and repository. Keep false in production."
  type        = bool
  default     = false
}

variable "kms_deletion_window_days" {
  description = "Waiting period before the KMS key is deleted after destroy."
  type        = number
  default     = 30

  validation {
    condition     = var.kms_deletion_window_days >= 7 && var.kms_deletion_window_days <= 30
    error_message = "kms_deletion_window_days must be between 7 and 30."
  }
}
