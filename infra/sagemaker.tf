# The SageMaker model and the two endpoints. Nothing here exists until image_tag is set, so the
# first apply can create the repository, bucket and roles that the image and artifact need.

locals {
  deploy       = var.image_tag != null
  variant_name = "AllTraffic"
  image_uri    = "${aws_ecr_repository.this.repository_url}:${coalesce(var.image_tag, "none")}"
  artifact_uri = "s3://${aws_s3_bucket.this.id}/${coalesce(var.model_artifact, "none/")}"
  # models/<version>/model.tar.gz is unpacked by SageMaker (ModelDataUrl); a folder is copied
  # as is (ModelDataSource, CompressionType None), with no untar at start-up.
  artifact_is_tarball = endswith(coalesce(var.model_artifact, "none/"), ".tar.gz")

  # A SageMaker model is immutable, and a fixed name would make every change a destroy before
  # create under a running endpoint. The name therefore carries a digest of everything the
  # model is made of: a new image, artifact or environment is a new model, new endpoint
  # configurations, and a blue/green update of both endpoints.
  model_identity = {
    image                 = local.image_uri
    artifact              = local.artifact_uri
    environment           = var.container_environment
    execution_role        = aws_iam_role.execution.arn
    subnets               = aws_subnet.private[*].id
    security_groups       = [aws_security_group.model.id]
    network_isolation     = true
    artifact_is_a_tarball = local.artifact_is_tarball
  }
  model_name = "${var.name}-${substr(coalesce(var.image_tag, "none"), 0, 8)}-${substr(sha256(jsonencode(local.model_identity)), 0, 10)}"
}

# The artifact's compile cache loads only with the torch/triton of the image that built it
# (the version name ends with that image's tag): another image still serves, but compiles at
# start-up. A warning, not an error: an image with the same dependencies is fine.
check "artifact_built_by_the_deployed_image" {
  assert {
    condition     = !local.deploy || var.model_artifact == null || strcontains(coalesce(var.model_artifact, "none"), "-${substr(coalesce(var.image_tag, "none"), 0, 12)}/")
    error_message = "model_artifact ${coalesce(var.model_artifact, "-")} was not built by image ${coalesce(var.image_tag, "-")}: its compile cache will be skipped and every instance compiles at start-up. Build one with: python -m optimize sagemaker-build --from-terraform infra --image-tag ${coalesce(var.image_tag, "-")} --tfvars infra/production.tfvars."
  }
}

resource "aws_sagemaker_model" "this" {
  count              = local.deploy ? 1 : 0
  name               = local.model_name
  execution_role_arn = aws_iam_role.execution.arn
  # No network at all for the container: it reads /opt/ml/model and answers on 8080, nothing else.
  enable_network_isolation = local.model_identity.network_isolation

  primary_container {
    image          = local.image_uri
    environment    = var.container_environment
    model_data_url = local.artifact_is_tarball ? local.artifact_uri : null

    dynamic "model_data_source" {
      for_each = local.artifact_is_tarball ? [] : [1]
      content {
        s3_data_source {
          s3_uri           = local.artifact_uri
          s3_data_type     = "S3Prefix"
          compression_type = "None"
        }
      }
    }
  }

  vpc_config {
    subnets            = local.model_identity.subnets
    security_group_ids = local.model_identity.security_groups
  }

  lifecycle {
    # The new model (a new name) exists before the endpoint configs that use it are replaced.
    create_before_destroy = true
    precondition {
      condition     = var.model_artifact != null
      error_message = "Deploying needs model_artifact: build one with `python -m optimize sagemaker-build --from-terraform infra --image-tag ${coalesce(var.image_tag, "-")} --tfvars infra/production.tfvars` (infra/README.md, step 6)."
    }
  }

  # The role's grants must exist before SageMaker validates access to image and data.
  depends_on = [aws_iam_role_policy.execution]
}

resource "aws_sagemaker_endpoint_configuration" "sync" {
  # checkov:skip=CKV_AWS_98: GPU instances (g4dn, g5, g6) have NVMe instance storage, which SageMaker encrypts itself and for which it rejects KmsKeyId.
  count       = local.deploy ? 1 : 0
  name_prefix = "${local.sync_endpoint_name}-"

  production_variants {
    variant_name                                      = local.variant_name
    model_name                                        = aws_sagemaker_model.this[0].name
    instance_type                                     = var.instance_type
    initial_instance_count                            = var.sync_instance_count
    inference_ami_version                             = var.inference_ami_version
    container_startup_health_check_timeout_in_seconds = var.startup_health_check_timeout_s
    model_data_download_timeout_in_seconds            = var.model_data_download_timeout_s
  }

  lifecycle {
    # A new config (new model, new size) is created first and the endpoint switched to it.
    create_before_destroy = true
  }
}

resource "aws_sagemaker_endpoint_configuration" "async" {
  # checkov:skip=CKV_AWS_98: GPU instances (g4dn, g5, g6) have NVMe instance storage, which SageMaker encrypts itself and for which it rejects KmsKeyId.
  count       = local.deploy ? 1 : 0
  name_prefix = "${local.async_endpoint_name}-"

  production_variants {
    variant_name = local.variant_name
    model_name   = aws_sagemaker_model.this[0].name
    # An async endpoint is created with one instance; autoscaling takes it to 0 when idle.
    instance_type                                     = var.instance_type
    initial_instance_count                            = 1
    inference_ami_version                             = var.inference_ami_version
    container_startup_health_check_timeout_in_seconds = var.startup_health_check_timeout_s
    model_data_download_timeout_in_seconds            = var.model_data_download_timeout_s
  }

  async_inference_config {
    client_config {
      max_concurrent_invocations_per_instance = var.async_max_concurrent_invocations_per_instance
    }
    output_config {
      s3_output_path  = "s3://${aws_s3_bucket.this.id}/outputs/"
      s3_failure_path = "s3://${aws_s3_bucket.this.id}/failures/"
      kms_key_id      = aws_kms_key.this.arn
      notification_config {
        success_topic = aws_sns_topic.success.arn
        error_topic   = aws_sns_topic.error.arn
      }
    }
  }

  lifecycle {
    create_before_destroy = true
  }
}

# Updates (a new endpoint config) roll out blue/green: SageMaker starts the new fleet, shifts
# all traffic to it, watches the rollback alarms for deployment_bake_s, and only then stops
# the old fleet; if an alarm fires, traffic goes back to the old fleet (AWS: "Blue/Green
# Deployments", "Auto-Rollback Configuration and Monitoring").
resource "aws_sagemaker_endpoint" "sync" {
  count                = local.deploy ? 1 : 0
  name                 = local.sync_endpoint_name
  endpoint_config_name = aws_sagemaker_endpoint_configuration.sync[0].name

  deployment_config {
    blue_green_update_policy {
      maximum_execution_timeout_in_seconds = var.deployment_timeout_s
      termination_wait_in_seconds          = 0
      traffic_routing_configuration {
        type                     = "ALL_AT_ONCE"
        wait_interval_in_seconds = var.deployment_bake_s
      }
    }
    auto_rollback_configuration {
      dynamic "alarms" {
        for_each = local.rollback_alarms.sync
        content {
          alarm_name = alarms.value
        }
      }
    }
  }
}

resource "aws_sagemaker_endpoint" "async" {
  count                = local.deploy ? 1 : 0
  name                 = local.async_endpoint_name
  endpoint_config_name = aws_sagemaker_endpoint_configuration.async[0].name

  deployment_config {
    blue_green_update_policy {
      maximum_execution_timeout_in_seconds = var.deployment_timeout_s
      termination_wait_in_seconds          = 0
      traffic_routing_configuration {
        type                     = "ALL_AT_ONCE"
        wait_interval_in_seconds = var.deployment_bake_s
      }
    }
    auto_rollback_configuration {
      dynamic "alarms" {
        for_each = local.rollback_alarms.async
        content {
          alarm_name = alarms.value
        }
      }
    }
  }
}
