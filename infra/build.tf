# The artifact build job (python -m optimize sagemaker-build, optimize/sagemaker_job.py): a
# SageMaker Processing job that runs `python -m optimize build` in this repository's image, on
# the endpoints' instance type, so the compile cache matches the GPU, torch and triton that
# will load it (serve_app/compile_cache.py). Its role reads source weights under sources/ and
# writes a new version under models/; nothing else.

resource "aws_iam_role" "build" {
  name_prefix        = "${var.name}-build-"
  description        = "SageMaker Processing job that builds ${var.name} model artifacts"
  assume_role_policy = data.aws_iam_policy_document.sagemaker_assume.json
}

data "aws_iam_policy_document" "build" {
  # The stack key, the image, its logs and metrics: iam.tf, shared with the execution role.
  source_policy_documents = [data.aws_iam_policy_document.sagemaker_common["build"].json]

  statement {
    # Source weights uploaded by hand when the job runs without internet (--model s3://...).
    sid       = "ListSources"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.this.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["sources/*"]
    }
  }

  statement {
    sid       = "ReadSources"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.this.arn}/sources/*"]
  }

  statement {
    # SageMaker uploads the job's output with this role; the bucket policy lets only this
    # role write under models/, and no one delete there.
    sid       = "WriteArtifacts"
    actions   = ["s3:PutObject", "s3:AbortMultipartUpload"]
    resources = ["${aws_s3_bucket.this.arn}/models/*"]
  }
}

resource "aws_iam_role_policy" "build" {
  name   = "least-privilege"
  role   = aws_iam_role.build.id
  policy = data.aws_iam_policy_document.build.json
}
