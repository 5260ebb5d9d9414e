output "sync_endpoint_name" {
  description = "Real-time endpoint (aws sagemaker-runtime invoke-endpoint); null until image_tag is set."
  value       = one(aws_sagemaker_endpoint.sync[*].name)
}

output "async_endpoint_name" {
  description = "Async endpoint (aws sagemaker-runtime invoke-endpoint-async); null until image_tag is set."
  value       = one(aws_sagemaker_endpoint.async[*].name)
}

output "model_name" {
  description = "SageMaker model: image tag plus a digest of image, artifact and environment."
  value       = one(aws_sagemaker_model.this[*].name)
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
  value       = var.model_artifact == null ? null : local.artifact_uri
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
