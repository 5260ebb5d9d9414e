output "sync_endpoint_name" {
  description = "Real-time endpoint (aws sagemaker-runtime invoke-endpoint); null until image_tag is set."
  value       = one(aws_sagemaker_endpoint.sync[*].name)
}

output "async_endpoint_name" {
  description = "Async endpoint (aws sagemaker-runtime invoke-endpoint-async); null until image_tag is set."
  value       = one(aws_sagemaker_endpoint.async[*].name)
}

output "model_name" {
  description = "SageMaker model serving image_tag."
  value       = one(aws_sagemaker_model.this[*].name)
}

output "bucket" {
  description = "Bucket for the model artifact (model_prefix) and async inputs/, outputs/, failures/."
  value       = aws_s3_bucket.this.id
}

output "model_s3_uri" {
  description = "Where to upload the model artifact for the chosen model_data_compression."
  value       = var.model_data_compression == "Gzip" ? local.model_tarball : local.model_s3_prefix
}

output "async_output_path" {
  description = "S3OutputPath of the async endpoint."
  value       = "s3://${aws_s3_bucket.this.id}/outputs/"
}

output "async_failure_path" {
  description = "S3FailurePath of the async endpoint."
  value       = "s3://${aws_s3_bucket.this.id}/failures/"
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

output "execution_role_arn" {
  description = "SageMaker execution role."
  value       = aws_iam_role.execution.arn
}

output "kms_key_arn" {
  description = "KMS key encrypting the bucket, repository and topics (use it for --sse-kms-key-id on uploads if needed)."
  value       = aws_kms_key.this.arn
}

output "github_push_role_arn" {
  description = "Role for build-and-push.yml (repository variable AWS_PUSH_ROLE_ARN); null without github_repository."
  value       = one(aws_iam_role.github_push[*].arn)
}

output "vpc_id" {
  description = "Private VPC of the endpoints."
  value       = aws_vpc.this.id
}
