output "sync_endpoint_name" {
  description = "Real-time endpoint (aws sagemaker-runtime invoke-endpoint); null until image_tag is set."
  value       = try(aws_sagemaker_endpoint.this["sync"].name, null)
}

output "async_endpoint_name" {
  description = "Async endpoint (aws sagemaker-runtime invoke-endpoint-async); null until image_tag is set."
  value       = try(aws_sagemaker_endpoint.this["async"].name, null)
}

output "model_names" {
  description = "The release's SageMaker model per endpoint: endpoint, image tag and a digest of image, artifact and environment."
  value       = { for kind, name in local.current_config : kind => local.configs[name].model_name }
}

output "release" {
  description = "Per endpoint: the endpoint config and model this release switches it to, and those of the live release kept beside them (`python -m optimize release verify` reads this)."
  value = {
    for kind, endpoint in local.endpoints : kind => {
      endpoint_name        = endpoint
      endpoint_config_name = local.current_config[kind]
      model_name           = local.configs[local.current_config[kind]].model_name
      kept_configs         = sort([for name, c in local.configs : name if c.kind == kind && c.role == "live"])
      live_instance_count  = lookup(local.live_count, kind, null)
    }
  }
}

output "dashboard_names" {
  description = "CloudWatch dashboard per endpoint."
  value       = { for kind, d in aws_cloudwatch_dashboard.endpoint : kind => d.dashboard_name }
}

output "metrics_namespace" {
  description = "Namespace of the server's own metrics."
  value       = var.metrics_namespace
}

output "image_tag" {
  description = "Deployed image tag (null before the first deploy)."
  value       = var.image_tag
}

output "instance_type" {
  description = "Instance type of the endpoints, and of the artifact build job."
  value       = var.instance_type
}

output "bucket" {
  description = "Bucket for artifacts (models/), build sources (sources/) and async inputs/, outputs/, failures/."
  value       = aws_s3_bucket.this.id
}

output "model_artifact_uri" {
  description = "The deployed artifact (null before the first deploy)."
  value       = var.model_artifact == null ? null : "s3://${aws_s3_bucket.this.id}/${var.model_artifact}"
}

output "async_input_prefix" {
  description = "Upload a request JSON here and it runs by itself (outputs/<name>.out)."
  value       = "s3://${aws_s3_bucket.this.id}/${local.trigger_prefix}"
}

output "async_output_path" {
  description = "S3OutputPath of the async endpoint."
  value       = "s3://${aws_s3_bucket.this.id}/outputs/"
}

output "async_failure_path" {
  description = "S3FailurePath of the async endpoint."
  value       = "s3://${aws_s3_bucket.this.id}/failures/"
}

output "trigger_state_machine_arn" {
  description = "State machine that starts an inference for each upload under inputs/ (its executions show each request's fate)."
  value       = one(aws_sfn_state_machine.async_trigger[*].arn)
}

output "ecr_repository_url" {
  description = "Repository to push images to, tagged with the commit SHA."
  value       = aws_ecr_repository.this.repository_url
}

output "success_topic_arn" {
  description = "SNS topic announcing async results."
  value       = aws_sns_topic.success.arn
}

output "error_topic_arn" {
  description = "SNS topic announcing async failures."
  value       = aws_sns_topic.error.arn
}

output "alarm_topic_arn" {
  description = "SNS topic of the error, latency and queue-age alarms."
  value       = aws_sns_topic.alarms.arn
}

output "execution_role_arn" {
  description = "SageMaker execution role of the endpoints."
  value       = aws_iam_role.execution.arn
}

output "build_role_arn" {
  description = "Role of the artifact build job (python -m optimize sagemaker-build --role-arn)."
  value       = aws_iam_role.build.arn
}

output "kms_key_arn" {
  description = "KMS key encrypting the bucket, repository and topics."
  value       = aws_kms_key.this.arn
}

output "github_push_role_arn" {
  description = "Role for build-and-push.yml (repository variable AWS_PUSH_ROLE_ARN); null without github_repository."
  value       = one(aws_iam_role.github_push[*].arn)
}

output "github_plan_role_arn" {
  description = "Role for the plan job of deploy-infrastructure.yml (AWS_PLAN_ROLE_ARN); null without github_repository and tf_state_bucket."
  value       = one(aws_iam_role.github_plan[*].arn)
}

output "vpc_id" {
  description = "Private VPC of the endpoints."
  value       = aws_vpc.this.id
}
