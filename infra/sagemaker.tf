# The SageMaker model and the two endpoints. Nothing here exists until image_tag is set, so the
# first apply can create the repository and bucket that the image and model are pushed to.

locals {
  deploy          = var.image_tag != null
  variant_name    = "AllTraffic"
  model_s3_prefix = "s3://${aws_s3_bucket.this.id}/${var.model_prefix}"
  model_tarball   = "${local.model_s3_prefix}model.tar.gz"
  image_uri       = "${aws_ecr_repository.this.repository_url}:${coalesce(var.image_tag, "none")}"
  # SageMaker names the models it serves after the image tag too, so a rollout is one variable.
  short_sha = substr(coalesce(var.image_tag, "none"), 0, 12)
}

resource "aws_sagemaker_model" "this" {
  count              = local.deploy ? 1 : 0
  name               = "${var.name}-${local.short_sha}"
  execution_role_arn = aws_iam_role.execution.arn
  # No network at all for the container: it reads /opt/ml/model and answers on 8080, nothing else.
  enable_network_isolation = true

  primary_container {
    image       = local.image_uri
    environment = var.container_environment
    # Gzip: SageMaker downloads model.tar.gz and untars it into /opt/ml/model.
    model_data_url = var.model_data_compression == "Gzip" ? local.model_tarball : null

    # None: SageMaker copies the uncompressed prefix into /opt/ml/model, no untar at start-up.
    dynamic "model_data_source" {
      for_each = var.model_data_compression == "None" ? [1] : []
      content {
        s3_data_source {
          s3_uri           = local.model_s3_prefix
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

  # The role's grants must exist before SageMaker validates access to image and data.
  depends_on = [aws_iam_role_policy.execution]
}

resource "aws_sagemaker_endpoint_configuration" "sync" {
  # checkov:skip=CKV_AWS_98: GPU instances (g4dn, g5, g6) have NVMe instance storage, which SageMaker encrypts itself and for which it rejects KmsKeyId.
  count       = local.deploy ? 1 : 0
  name_prefix = "${var.name}-sync-"

  production_variants {
    variant_name                                      = local.variant_name
    model_name                                        = aws_sagemaker_model.this[0].name
    instance_type                                     = var.instance_type
    initial_instance_count                            = var.sync_instance_count
    container_startup_health_check_timeout_in_seconds = var.startup_health_check_timeout_s
    model_data_download_timeout_in_seconds            = var.model_data_download_timeout_s
  }

  lifecycle {
    # A new config (new image, new size) is created first and the endpoint switched to it.
    create_before_destroy = true
  }
}

resource "aws_sagemaker_endpoint_configuration" "async" {
  # checkov:skip=CKV_AWS_98: GPU instances (g4dn, g5, g6) have NVMe instance storage, which SageMaker encrypts itself and for which it rejects KmsKeyId.
  count       = local.deploy ? 1 : 0
  name_prefix = "${var.name}-async-"

  production_variants {
    variant_name = local.variant_name
    model_name   = aws_sagemaker_model.this[0].name
    # An async endpoint is created with one instance; autoscaling takes it to 0 when idle.
    instance_type                                     = var.instance_type
    initial_instance_count                            = 1
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

resource "aws_sagemaker_endpoint" "sync" {
  count                = local.deploy ? 1 : 0
  name                 = "${var.name}-sync"
  endpoint_config_name = aws_sagemaker_endpoint_configuration.sync[0].name
}

resource "aws_sagemaker_endpoint" "async" {
  count                = local.deploy ? 1 : 0
  name                 = "${var.name}-async"
  endpoint_config_name = aws_sagemaker_endpoint_configuration.async[0].name
}
