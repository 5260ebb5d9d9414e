# The SageMaker models, endpoint configurations and the two endpoints (sync, async), one block
# each with for_each. Nothing here exists until image_tag is set, so the first apply can create
# the repository, bucket and roles that the image and artifact need.
#
# Each endpoint has two releases in play:
#   - current: what this apply rolls out (image_tag, model_artifact, container_environment,
#     instance_type, inference_ami_version);
#   - live: what the endpoint serves now, read from AWS before the plan by
#     `python -m optimize release live` (var.live_releases). It is kept, model and endpoint
#     config, so that a blue/green rollback lands on resources that still exist; it goes only
#     in a later release, once this one has been verified and is itself the live one.
# Models and configs are keyed by a digest of what they are made of, so the current release
# of one apply is the live release of the next with no change at all.

locals {
  deploy       = var.image_tag != null
  variant_name = "AllTraffic"
  endpoints    = local.deploy ? { sync = local.sync_endpoint_name, async = local.async_endpoint_name } : {}

  current_release = {
    image_tag             = coalesce(var.image_tag, "none")
    model_artifact        = coalesce(var.model_artifact, "none/")
    container_environment = var.container_environment
    instance_type         = var.instance_type
    inference_ami_version = var.inference_ami_version
  }
  # The live release of each endpoint, its unset fields taken from the current one.
  live_release = {
    for kind, live in var.live_releases : kind => merge(
      local.current_release,
      { for field, value in live : field => value if value != null && field != "instance_count" },
    ) if contains(keys(local.endpoints), kind)
  }

  # One entry per (endpoint, release). "current" sorts first, so when the live release is the
  # current one (a re-apply) the single model and config that result are the current ones.
  releases = flatten([
    for kind, endpoint in local.endpoints : [
      for role, release in { current = local.current_release, live = lookup(local.live_release, kind, null) } : {
        kind                         = kind
        endpoint                     = endpoint
        role                         = role
        release                      = release
        # The serving code reads these to name its CloudWatch metrics (EMF dimensions).
        environment = merge(release.container_environment, {
          SDTURBO_ENDPOINT_NAME     = endpoint
          SDTURBO_VARIANT_NAME      = local.variant_name
          SDTURBO_METRICS_NAMESPACE = var.metrics_namespace
        })
        image_uri    = "${aws_ecr_repository.this.repository_url}:${release.image_tag}"
        artifact_uri = "s3://${aws_s3_bucket.this.id}/${release.model_artifact}"
        # models/<version>/model.tar.gz is unpacked by SageMaker (ModelDataUrl); a folder is
        # copied as is (ModelDataSource, CompressionType None), with no untar at start-up.
        tarball = endswith(release.model_artifact, ".tar.gz")
      } if release != null
    ]
  ])

  # A SageMaker model is immutable, and a fixed name would make every change a destroy before
  # create under a running endpoint. The name therefore carries a digest of everything the
  # model is made of: a new image, artifact or environment is a new model, a new endpoint
  # config, and a blue/green update.
  models = {
    for r in local.releases : "${var.name}-${r.kind}-${substr(r.release.image_tag, 0, 8)}-${substr(sha256(jsonencode({
      image                 = r.image_uri
      artifact              = r.artifact_uri
      environment           = r.environment
      execution_role        = aws_iam_role.execution.arn
      subnets               = aws_subnet.private[*].id
      security_groups       = [aws_security_group.model.id]
      network_isolation     = true
      artifact_is_a_tarball = r.tarball
    })), 0, 10)}" => r...
  }

  # Endpoint configs likewise: named after a digest of everything but the initial instance
  # count (set once, at creation, from the live count: see instance_count below).
  configs = {
    for name, rs in local.models : "${rs[0].endpoint}-${substr(sha256(jsonencode({
      model                 = name
      instance_type         = rs[0].release.instance_type
      inference_ami_version = rs[0].release.inference_ami_version
      startup_timeout_s     = var.startup_health_check_timeout_s
      download_timeout_s    = var.model_data_download_timeout_s
      async                 = rs[0].kind == "async" ? local.async_inference : null
    })), 0, 12)}" => merge(rs[0], { model_name = name })
  }
  # What each endpoint is switched to.
  current_config = { for name, c in local.configs : c.kind => name if c.role == "current" }

  # The new fleet starts with the instances the endpoint runs now, so a release never shrinks a
  # scaled-out endpoint (UpdateEndpoint gives the new fleet InitialInstanceCount, and
  # autoscaling is suspended during the update and the bake). At least sync_instance_count for
  # the real-time endpoint; at least 1 for the async one (InitialInstanceCount has a minimum
  # of 1): `optimize release verify` returns an async endpoint that was at zero to zero.
  live_count = { for kind, live in var.live_releases : kind => live.instance_count }
  instance_count = {
    sync  = max(var.sync_instance_count, lookup(local.live_count, "sync", 0))
    async = max(1, lookup(local.live_count, "async", 1))
  }

  async_inference = {
    max_concurrent_invocations_per_instance = var.async_max_concurrent_invocations_per_instance
    s3_output_path                          = "s3://${aws_s3_bucket.this.id}/outputs/"
    s3_failure_path                         = "s3://${aws_s3_bucket.this.id}/failures/"
    kms_key_id                              = aws_kms_key.this.arn
    success_topic                           = aws_sns_topic.success.arn
    error_topic                             = aws_sns_topic.error.arn
  }
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

resource "aws_sagemaker_model" "release" {
  for_each           = { for name, rs in local.models : name => rs[0] }
  name               = each.key
  execution_role_arn = aws_iam_role.execution.arn
  # No network at all for the container: it reads /opt/ml/model and answers on 8080, nothing else.
  enable_network_isolation = true

  primary_container {
    image          = each.value.image_uri
    environment    = each.value.environment
    model_data_url = each.value.tarball ? each.value.artifact_uri : null

    dynamic "model_data_source" {
      for_each = each.value.tarball ? [] : [1]
      content {
        s3_data_source {
          s3_uri           = each.value.artifact_uri
          s3_data_type     = "S3Prefix"
          compression_type = "None"
        }
      }
    }
  }

  vpc_config {
    subnets            = aws_subnet.private[*].id
    security_group_ids = [aws_security_group.model.id]
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

resource "aws_sagemaker_endpoint_configuration" "this" {
  # checkov:skip=CKV_AWS_98: GPU instances (g4dn, g5, g6) have NVMe instance storage, which SageMaker encrypts itself and for which it rejects KmsKeyId.
  for_each = local.configs
  name     = each.key

  production_variants {
    variant_name                                      = local.variant_name
    model_name                                        = aws_sagemaker_model.release[each.value.model_name].name
    instance_type                                     = each.value.release.instance_type
    initial_instance_count                            = local.instance_count[each.value.kind]
    inference_ami_version                             = each.value.release.inference_ami_version
    container_startup_health_check_timeout_in_seconds = var.startup_health_check_timeout_s
    model_data_download_timeout_in_seconds            = var.model_data_download_timeout_s
  }

  dynamic "async_inference_config" {
    for_each = each.value.kind == "async" ? [local.async_inference] : []
    content {
      client_config {
        max_concurrent_invocations_per_instance = async_inference_config.value.max_concurrent_invocations_per_instance
      }
      output_config {
        s3_output_path  = async_inference_config.value.s3_output_path
        s3_failure_path = async_inference_config.value.s3_failure_path
        kms_key_id      = async_inference_config.value.kms_key_id
        notification_config {
          success_topic = async_inference_config.value.success_topic
          error_topic   = async_inference_config.value.error_topic
        }
      }
    }
  }

  lifecycle {
    create_before_destroy = true
    # The count is the live one at the time the config was made; a later change of the live
    # count must not replace a config an endpoint may be running on.
    ignore_changes = [production_variants[0].initial_instance_count]
  }
}

# Updates (a new endpoint config) roll out blue/green: SageMaker starts the new fleet, shifts
# all traffic to it, watches the rollback alarms for deployment_bake_s, and only then stops
# the old fleet; if an alarm fires, traffic goes back to the old fleet (AWS: "Blue/Green
# Deployments", "Auto-Rollback Configuration and Monitoring"). The provider then reports
# success all the same (it waits for InService only): `optimize release verify` checks that
# each endpoint runs the config created here, and the live config is still there to run on.
resource "aws_sagemaker_endpoint" "this" {
  for_each             = local.endpoints
  name                 = each.value
  endpoint_config_name = aws_sagemaker_endpoint_configuration.this[local.current_config[each.key]].name

  deployment_config {
    blue_green_update_policy {
      # At most the provider's own wait for InService (60 minutes, fixed in provider 5.100.0),
      # so SageMaker ends a slow update (and rolls it back) before Terraform stops waiting.
      maximum_execution_timeout_in_seconds = var.deployment_timeout_s
      termination_wait_in_seconds          = 0
      traffic_routing_configuration {
        type                     = "ALL_AT_ONCE"
        wait_interval_in_seconds = var.deployment_bake_s
      }
    }
    auto_rollback_configuration {
      dynamic "alarms" {
        for_each = local.rollback_alarms[each.key]
        content {
          alarm_name = alarms.value
        }
      }
    }
  }
}

# Stacks deployed before the for_each layout: the endpoints keep their identity; the old
# count-based model and configs are left in AWS (they may be what an endpoint serves) for a
# person to delete once the first release of this layout is verified (infra/README.md).
moved {
  from = aws_sagemaker_endpoint.sync[0]
  to   = aws_sagemaker_endpoint.this["sync"]
}

moved {
  from = aws_sagemaker_endpoint.async[0]
  to   = aws_sagemaker_endpoint.this["async"]
}

removed {
  from = aws_sagemaker_model.this
  lifecycle {
    destroy = false
  }
}

removed {
  from = aws_sagemaker_endpoint_configuration.sync
  lifecycle {
    destroy = false
  }
}

removed {
  from = aws_sagemaker_endpoint_configuration.async
  lifecycle {
    destroy = false
  }
}
