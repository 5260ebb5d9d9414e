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
  description = "Commit SHA the image was pushed under (build-and-push.yml). null creates only the shared resources (bucket, repository, network, roles) so the first image can be pushed and the first artifact built; set, it deploys both endpoints (model_artifact must be set too)."
  type        = string
  default     = null

  validation {
    # Tags are immutable commit SHAs, never `latest`: a deployment names exactly one build.
    condition     = var.image_tag == null || can(regex("^[0-9a-f]{7,40}$", coalesce(var.image_tag, "x")))
    error_message = "image_tag must be a git commit SHA (7-40 lower-case hex characters)."
  }
}

variable "model_artifact" {
  description = "Key of the model artifact that `python -m optimize sagemaker-build` wrote under models/<version>/ (it prints this value): a folder ending in / (uncompressed ModelDataSource, no untar at start-up) or a key ending in .tar.gz (ModelDataUrl). A version is never overwritten, so a new artifact is a new key, a new model name and a rollout."
  type        = string
  default     = null

  validation {
    condition     = var.model_artifact == null || can(regex("^models/[A-Za-z0-9][A-Za-z0-9._-]*/([A-Za-z0-9._/-]+/|[A-Za-z0-9._-]+[.]tar[.]gz)$", coalesce(var.model_artifact, "x")))
    error_message = "model_artifact must be models/<version>/<folder>/ or models/<version>/<name>.tar.gz, as printed by python -m optimize sagemaker-build."
  }
}

variable "instance_type" {
  description = "SageMaker instance type for both endpoints and for the artifact build job (a GPU type: ml.g5.xlarge has one A10G). The compile cache in the artifact loads only on the GPU it was built on."
  type        = string
  default     = "ml.g5.xlarge"

  validation {
    condition     = startswith(var.instance_type, "ml.")
    error_message = "instance_type must be a SageMaker instance type such as ml.g5.xlarge."
  }
}

variable "inference_ami_version" {
  description = "InferenceAmiVersion of both production variants, i.e. the GPU driver and CUDA version of the instances. Without it ml.g4dn/g5 endpoints run NVIDIA driver 470 / CUDA 11.4, too old for a CUDA 12 torch (AWS: \"Best practices to minimize interruptions during GPU driver upgrades\"). al2-ami-sagemaker-inference-gpu-3-1 is driver 550 / CUDA 12.4."
  type        = string
  default     = "al2-ami-sagemaker-inference-gpu-3-1"

  validation {
    # The GPU values of ProductionVariant.InferenceAmiVersion that the pinned provider (5.100.0)
    # accepts: it validates against its SDK's enum, which stops at gpu-3-1, so
    # al2023-ami-sagemaker-inference-gpu-4-1 (in the API since) fails at plan time there.
    condition = contains([
      "al2-ami-sagemaker-inference-gpu-2",
      "al2-ami-sagemaker-inference-gpu-2-1",
      "al2-ami-sagemaker-inference-gpu-3-1",
    ], var.inference_ami_version)
    error_message = "inference_ami_version must be a GPU inference AMI the pinned provider accepts: al2-ami-sagemaker-inference-gpu-2, al2-ami-sagemaker-inference-gpu-2-1 or al2-ami-sagemaker-inference-gpu-3-1 (driver 550, CUDA 12.4)."
  }
}

variable "container_environment" {
  description = "Server settings for the container, SDTURBO_<FIELD>=value (e.g. SDTURBO_MAX_BATCH_SIZE = \"8\"). Part of the model's identity: a change is a new model and a rollout."
  type        = map(string)
  default     = {}

  validation {
    # CreateModel's Environment: keys [a-zA-Z_][a-zA-Z0-9_]*, at most 100 entries.
    condition     = length(var.container_environment) <= 97 && alltrue([for k in keys(var.container_environment) : can(regex("^[a-zA-Z_][a-zA-Z0-9_]*$", k))])
    error_message = "container_environment keys must match [a-zA-Z_][a-zA-Z0-9_]* (at most 97 entries: Terraform adds 3 of the 100)."
  }

  validation {
    # Terraform sets these per endpoint (sagemaker.tf); the serving code names its metrics by them.
    condition     = length(setintersection(keys(var.container_environment), ["SDTURBO_ENDPOINT_NAME", "SDTURBO_VARIANT_NAME", "SDTURBO_METRICS_NAMESPACE"])) == 0
    error_message = "container_environment must not set SDTURBO_ENDPOINT_NAME, SDTURBO_VARIANT_NAME or SDTURBO_METRICS_NAMESPACE: Terraform sets them (metrics_namespace for the last)."
  }
}

variable "live_releases" {
  description = "What each endpoint (sync, async) serves now and its desired instance count, as `python -m optimize release live` reads them from AWS before every plan (deploy-infrastructure.yml writes live.tfvars.json). The live release's model and endpoint config are kept through this release, so a rollback lands on resources that exist; the new fleet starts with instance_count instances. {} before the first deploy. Fields left null are the current release's."
  type = map(object({
    image_tag             = string
    model_artifact        = string
    container_environment = optional(map(string))
    instance_type         = optional(string)
    inference_ami_version = optional(string)
    instance_count        = number
  }))
  default = {}

  validation {
    condition     = alltrue([for k, v in var.live_releases : contains(["sync", "async"], k) && v.instance_count >= 0 && floor(v.instance_count) == v.instance_count])
    error_message = "live_releases: keys sync and async only, instance_count a whole number >= 0."
  }
}

variable "metrics_namespace" {
  description = "CloudWatch namespace of the server's own metrics (EMF lines in its logs), passed to the container as SDTURBO_METRICS_NAMESPACE; the dashboards and the queue-wait alarm read it."
  type        = string
  default     = "SDTurbo"

  validation {
    condition     = can(regex("^[A-Za-z0-9._/#:-]{1,255}$", var.metrics_namespace)) && !startswith(var.metrics_namespace, "AWS/")
    error_message = "metrics_namespace must be 1-255 characters of A-Za-z0-9._/#:- and not start with AWS/."
  }
}

variable "queue_wait_alarm_ms" {
  description = "Alarm (and roll back a deployment) when the server's QueueWait p90 stays above this many milliseconds for 3 minutes."
  type        = number
  default     = 5000

  validation {
    condition     = var.queue_wait_alarm_ms > 0
    error_message = "queue_wait_alarm_ms must be positive."
  }
}

variable "protected_image_tags" {
  description = "Image tags the ECR lifecycle policy must never expire besides the deployed image_tag (e.g. the previous release, to roll back to)."
  type        = list(string)
  default     = []

  validation {
    condition     = length(var.protected_image_tags) <= 20 && alltrue([for t in var.protected_image_tags : can(regex("^[0-9a-f]{7,40}$", t))])
    error_message = "protected_image_tags: at most 20 commit SHAs."
  }
}

variable "ecr_keep_images" {
  description = "Images kept in the repository besides the protected ones (newest first); older ones expire."
  type        = number
  default     = 30

  validation {
    condition     = var.ecr_keep_images >= 1 && floor(var.ecr_keep_images) == var.ecr_keep_images
    error_message = "ecr_keep_images must be a whole number >= 1."
  }
}

variable "sync_instance_count" {
  description = "Instances behind the real-time endpoint, and its autoscaling minimum. Real-time endpoints cannot scale to zero; 1 keeps latency low, 2 survives an AZ or instance loss."
  type        = number
  default     = 1

  validation {
    condition     = var.sync_instance_count >= 1 && floor(var.sync_instance_count) == var.sync_instance_count
    error_message = "sync_instance_count must be a whole number >= 1 (a real-time endpoint cannot scale to zero with provider 5.100.0: infra/README.md)."
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
  description = "owner/name of the GitHub repository whose main branch may push images and plan, through OIDC (creates the push role, and the plan role with tf_state_bucket). null creates no GitHub role."
  type        = string
  default     = null

  validation {
    condition     = var.github_repository == null || can(regex("^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$", coalesce(var.github_repository, "x")))
    error_message = "github_repository must be owner/name."
  }

  validation {
    # production.tfvars ships with this placeholder: refuse it rather than trust a repository
    # that does not exist.
    condition     = var.github_repository != "OWNER/REPO"
    error_message = "Set github_repository in infra/production.tfvars to your owner/name."
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

variable "tf_state_bucket" {
  description = "Bucket holding this stack's Terraform state (the -backend-config bucket). With github_repository it creates the plan role for deploy-infrastructure.yml: ReadOnlyAccess plus the state object and its lock file. null creates no plan role."
  type        = string
  default     = null
}

variable "tf_state_key" {
  description = "Key of the state object in tf_state_bucket (the -backend-config key); the lock file is this key plus .tflock."
  type        = string
  default     = "sdturbo/terraform.tfstate"
}

# --- rollout and alarms ----------------------------------------------------------------------

variable "deployment_bake_s" {
  description = "Blue/green baking period: seconds the new fleet serves all traffic while the rollback alarms are watched, before the old fleet is terminated."
  type        = number
  default     = 600

  validation {
    # The bake is part of the update: it must leave time within deployment_timeout_s for the
    # new fleet to start (instance, download, warm-up).
    condition     = var.deployment_bake_s >= 0 && var.deployment_bake_s <= 1800
    error_message = "deployment_bake_s must be between 0 and 1800 (it runs within deployment_timeout_s, at most 3300)."
  }
}

variable "deployment_timeout_s" {
  description = "Longest a blue/green update may take (instance start, model download, warm-up, baking) before SageMaker rolls it back. At most 3300 s: the provider (5.100.0) waits 60 minutes for InService and then fails the apply while SageMaker carries on, so SageMaker must give up first. The apply job's 100 minutes and its 2-hour credentials cover this wait for both endpoints (they update in parallel) plus the rest of the apply."
  type        = number
  default     = 3300

  validation {
    condition     = var.deployment_timeout_s >= 600 && var.deployment_timeout_s <= 3300
    error_message = "deployment_timeout_s must be between 600 and 3300: the provider stops waiting for InService after 60 minutes."
  }
}

variable "alarm_emails" {
  description = "Addresses subscribed to the alarm topic (each must confirm by email)."
  type        = list(string)
  default     = []
}

variable "model_latency_alarm_ms" {
  description = "Alarm (and roll back a deployment) when ModelLatency p90 stays above this many milliseconds for 3 minutes."
  type        = number
  default     = 10000

  validation {
    condition     = var.model_latency_alarm_ms > 0
    error_message = "model_latency_alarm_ms must be positive."
  }
}

variable "error_alarm_threshold" {
  description = "Alarm (and roll back a deployment) when Invocation5XXErrors reach this many per minute for 2 minutes."
  type        = number
  default     = 1

  validation {
    condition     = var.error_alarm_threshold >= 1
    error_message = "error_alarm_threshold must be >= 1."
  }
}

variable "async_oldest_request_alarm_s" {
  description = "Alarm when the oldest queued async request is older than this: longer than a scale from zero takes (alarm + instance start + download + warm-up), so only a stuck queue trips it."
  type        = number
  default     = 2700

  validation {
    condition     = var.async_oldest_request_alarm_s >= 300
    error_message = "async_oldest_request_alarm_s must be >= 300."
  }
}
