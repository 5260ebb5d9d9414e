# KMS key, S3 bucket (model artifact + async I/O), ECR repository, SNS topics.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
}

# One customer-managed key for the bucket, the repository and the topics: access to the data
# then needs both an IAM grant and this key, and CloudTrail logs every use.
data "aws_iam_policy_document" "kms" {
  # checkov:skip=CKV_AWS_109: a key policy's "*" resource is this key only; the account root delegates to IAM (AWS's default key policy).
  # checkov:skip=CKV_AWS_111: as above: the key policy's "*" is this key, and IAM policies then decide who may use it.
  # checkov:skip=CKV_AWS_356: as above: "*" in a key policy cannot name any other resource.
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"] # In a key policy "*" means this key.
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  # CloudWatch alarms publish to the alarm topic, which this key encrypts; CloudWatch is a
  # service principal, so only the key policy can grant it (AWS SNS guide: "Configure AWS KMS
  # permissions for AWS services", CloudWatch row).
  statement {
    sid       = "CloudWatchAlarmsPublishToTheEncryptedTopic"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["cloudwatch.amazonaws.com"]
    }
  }
}

resource "aws_kms_key" "this" {
  description             = "${var.name}: model artifact, async I/O, images, notifications"
  enable_key_rotation     = true
  deletion_window_in_days = var.kms_deletion_window_days
  policy                  = data.aws_iam_policy_document.kms.json
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this.key_id
}

# --- S3 -------------------------------------------------------------------------------------

resource "aws_s3_bucket" "this" {
  # checkov:skip=CKV_AWS_18: access logs need a second bucket; CloudTrail data events cover audit where required.
  # checkov:skip=CKV_AWS_144: cross-region replication of transient async I/O and a rebuildable artifact is not worth its cost.
  bucket_prefix = "${var.name}-"
  force_destroy = var.force_destroy
}

# Object events go to EventBridge, where a rule starts an async inference for every request
# uploaded under inputs/ (trigger.tf). EventBridge gets every event; rules filter them.
resource "aws_s3_bucket_notification" "this" {
  bucket      = aws_s3_bucket.this.id
  eventbridge = true
}

resource "aws_s3_bucket_public_access_block" "this" {
  bucket                  = aws_s3_bucket.this.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "this" {
  bucket = aws_s3_bucket.this.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_versioning" "this" {
  bucket = aws_s3_bucket.this.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  bucket = aws_s3_bucket.this.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.this.arn
    }
    bucket_key_enabled = true # fewer KMS calls, lower cost
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    id     = "expire-outputs"
    status = "Enabled"
    filter {
      prefix = "outputs/"
    }
    expiration {
      days = var.output_expiry_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 1
    }
  }

  rule {
    id     = "expire-inputs"
    status = "Enabled"
    filter {
      prefix = "inputs/"
    }
    expiration {
      days = var.input_expiry_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 1
    }
  }

  rule {
    id     = "expire-failures"
    status = "Enabled"
    filter {
      prefix = "failures/"
    }
    expiration {
      days = var.failure_expiry_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 1
    }
  }

  rule {
    # Artifacts under models/ are never overwritten (see the bucket policy), so noncurrent
    # versions only come from inputs/outputs/failures or an aborted upload.
    id     = "housekeeping"
    status = "Enabled"
    filter {
      prefix = "" # the whole bucket
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
  }

  depends_on = [aws_s3_bucket_versioning.this]
}

data "aws_iam_policy_document" "bucket" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.this.arn,
      "${aws_s3_bucket.this.arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  # models/<version>/ is immutable: only the artifact build job's role may write there (it
  # writes a new version prefix each time; optimize/sagemaker_job.py refuses an existing one),
  # and nobody deletes. A running endpoint downloads its artifact on every scale-out, so the
  # bytes behind a model name must never change (AWS: an uncompressed ModelDataSource prefix
  # must hold only that model's files).
  statement {
    sid       = "OnlyTheBuildJobWritesArtifacts"
    effect    = "Deny"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.this.arn}/models/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "ArnNotEquals"
      variable = "aws:PrincipalArn"
      values   = [aws_iam_role.build.arn]
    }
  }

  dynamic "statement" {
    # force_destroy asks for a deletable bucket (tests, throw-away stacks).
    for_each = var.force_destroy ? [] : [1]
    content {
      sid       = "ArtifactsAreNeverDeleted"
      effect    = "Deny"
      actions   = ["s3:DeleteObject", "s3:DeleteObjectVersion"]
      resources = ["${aws_s3_bucket.this.arn}/models/*"]
      principals {
        type        = "*"
        identifiers = ["*"]
      }
    }
  }
}

resource "aws_s3_bucket_policy" "this" {
  bucket = aws_s3_bucket.this.id
  policy = data.aws_iam_policy_document.bucket.json

  depends_on = [aws_s3_bucket_public_access_block.this]
}

# --- ECR ------------------------------------------------------------------------------------

resource "aws_ecr_repository" "this" {
  name                 = var.name
  image_tag_mutability = "IMMUTABLE" # a tag is a commit SHA and always names the same image
  force_delete         = var.force_destroy

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = aws_kms_key.this.arn
  }
}

locals {
  # The deployed image and any pinned rollback target must stay pullable: every scale-out
  # (each wake from zero) pulls the model's image again.
  protected_image_tags = distinct(concat(var.image_tag == null ? [] : [var.image_tag], var.protected_image_tags))
}

resource "aws_ecr_lifecycle_policy" "this" {
  repository = aws_ecr_repository.this.name
  # ECR evaluates rules by priority and "an image that matches the tagging requirements of a
  # higher priority rule cannot be expired by a rule with a lower priority"; a tagPatternList
  # matches an image only if it has *all* the listed tags, so each protected tag gets its own
  # rule, which keeps its one image (ECR user guide: "Lifecycle policy properties").
  policy = jsonencode({
    rules = concat(
      [for i, tag in local.protected_image_tags : {
        rulePriority = i + 1
        description  = "Never expire ${tag}: a deployed model pulls it."
        selection = {
          tagStatus      = "tagged"
          tagPatternList = [tag]
          countType      = "imageCountMoreThan"
          countNumber    = 1
        }
        action = { type = "expire" }
      }],
      [{
        # "any" must be the last rule (highest rulePriority).
        rulePriority = 100
        description  = "Keep the ${var.ecr_keep_images} most recent other images; older SHAs can be rebuilt from git."
        selection = {
          tagStatus   = "any"
          countType   = "imageCountMoreThan"
          countNumber = var.ecr_keep_images
        }
        action = { type = "expire" }
      }],
    )
  })
}

# --- SNS ------------------------------------------------------------------------------------

resource "aws_sns_topic" "success" {
  name              = "${var.name}-async-success"
  kms_master_key_id = aws_kms_key.this.arn
}

resource "aws_sns_topic" "error" {
  name              = "${var.name}-async-error"
  kms_master_key_id = aws_kms_key.this.arn
}
