# The SageMaker execution role, least privilege: no managed policies, every grant scoped to
# this stack's bucket prefixes, repository, topics, key, alarms and log groups (VPC access
# excepted, see VpcAccess). The GitHub OIDC roles follow.

data "aws_iam_policy_document" "sagemaker_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["sagemaker.amazonaws.com"]
    }
    condition {
      # Confused-deputy guard: only SageMaker acting for this account may assume the role.
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "execution" {
  name_prefix        = "${var.name}-exec-"
  description        = "SageMaker execution role for the ${var.name} endpoints"
  assume_role_policy = data.aws_iam_policy_document.sagemaker_assume.json
}

locals {
  # Endpoint names are fixed, so alarms and the role can name them before the endpoints exist.
  sync_endpoint_name  = "${var.name}-sync"
  async_endpoint_name = "${var.name}-async"
}

data "aws_iam_policy_document" "execution" {
  # checkov:skip=CKV_AWS_111: VpcAccess is the exact action list AWS documents for models with VpcConfig, on "*" as documented; SageMaker creates the interfaces (no ARN to name beforehand) and some of these actions take no resource.
  # checkov:skip=CKV_AWS_356: as above: AWS's documented VPC statement for hosted endpoints uses Resource "*"; scoping it breaks CreateEndpoint.
  # checkov:skip=CKV_AWS_109: ec2:Create/DeleteNetworkInterfacePermission on "*" are part of AWS's documented VPC statement: SageMaker grants itself use of the interfaces it creates for the model.
  statement {
    sid       = "ListArtifactsAndInputs"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.this.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["models/*", "inputs/*"]
    }
  }

  statement {
    # Every version under models/, not only the deployed one: a blue/green rollback, or an
    # old fleet scaling out mid-update, downloads the previous artifact.
    sid     = "ReadArtifactsAndInputs"
    actions = ["s3:GetObject"]
    resources = [
      "${aws_s3_bucket.this.arn}/models/*",
      "${aws_s3_bucket.this.arn}/inputs/*",
    ]
  }

  statement {
    sid     = "WriteOutputsAndFailures"
    actions = ["s3:PutObject", "s3:AbortMultipartUpload"]
    resources = [
      "${aws_s3_bucket.this.arn}/outputs/*",
      "${aws_s3_bucket.this.arn}/failures/*",
    ]
  }

  statement {
    sid       = "UseTheStackKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey", "kms:DescribeKey"]
    resources = [aws_kms_key.this.arn]
  }

  statement {
    sid = "PullImage"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:GetDownloadUrlForLayer",
    ]
    resources = [aws_ecr_repository.this.arn]
  }

  statement {
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"] # GetAuthorizationToken supports no resource-level permission.
  }

  statement {
    sid     = "WriteLogs"
    actions = ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = [
      "arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:/aws/sagemaker/*",
      "arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:/aws/sagemaker/*:log-stream:*",
    ]
  }

  statement {
    sid       = "PutMetrics"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"] # PutMetricData supports no resource-level permission; narrowed by namespace.
    condition {
      test     = "StringLike"
      variable = "cloudwatch:namespace"
      values   = ["AWS/SageMaker", "/aws/sagemaker/*"]
    }
  }

  statement {
    sid       = "NotifyAsyncResults"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.success.arn, aws_sns_topic.error.arn]
  }

  statement {
    # Deployment guardrails read the auto-rollback alarms with the execution role (AWS:
    # "Auto-Rollback Configuration and Monitoring").
    sid       = "ReadRollbackAlarms"
    actions   = ["cloudwatch:DescribeAlarms"]
    resources = [for name in local.rollback_alarm_names : "arn:${local.partition}:cloudwatch:${var.region}:${local.account_id}:alarm:${name}"]
  }

  # VpcConfig: exactly the statement of AWS's "Give SageMaker AI Hosted Endpoints Access to
  # Resources in Your Amazon VPC" (Add Permissions for Endpoint Access for Containers Running
  # in a VPC to Custom IAM Policies). A missing action fails CreateEndpoint; scoping the ENI
  # actions to ARNs fails too, as SageMaker manages interfaces (and their permissions) that
  # do not exist when this policy is written.
  statement {
    sid = "VpcAccess"
    actions = [
      "ec2:CreateNetworkInterface",
      "ec2:CreateNetworkInterfacePermission",
      "ec2:DeleteNetworkInterface",
      "ec2:DeleteNetworkInterfacePermission",
      "ec2:DescribeDhcpOptions",
      "ec2:DescribeNetworkInterfaces",
      "ec2:DescribeSecurityGroups",
      "ec2:DescribeSubnets",
      "ec2:DescribeVpcEndpoints",
      "ec2:DescribeVpcs",
    ]
    resources = ["*"]
  }
}

resource "aws_iam_role_policy" "execution" {
  name   = "least-privilege"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

# --- GitHub Actions (OIDC): the image push role ---------------------------------------------

locals {
  github_enabled = var.github_repository != null
  github_oidc_arn = (
    var.create_github_oidc_provider
    ? one(aws_iam_openid_connect_provider.github[*].arn)
    : "arn:${local.partition}:iam::${local.account_id}:oidc-provider/token.actions.githubusercontent.com"
  )
}

resource "aws_iam_openid_connect_provider" "github" {
  count           = local.github_enabled && var.create_github_oidc_provider ? 1 : 0
  url             = "https://token.actions.githubusercontent.com"
  client_id_list  = ["sts.amazonaws.com"]
  thumbprint_list = ["6938fd4d98bab03faadb97b34396831e3780aea1"] # AWS no longer checks it for GitHub, but the API requires one.
}

data "aws_iam_policy_document" "github_assume" {
  count = local.github_enabled ? 1 : 0
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [local.github_oidc_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "token.actions.githubusercontent.com:aud"
      values   = ["sts.amazonaws.com"]
    }
    condition {
      # Only workflows on the main branch of this repository may push images.
      test     = "StringEquals"
      variable = "token.actions.githubusercontent.com:sub"
      values   = ["repo:${coalesce(var.github_repository, "none/none")}:ref:refs/heads/main"]
    }
  }
}

resource "aws_iam_role" "github_push" {
  count              = local.github_enabled ? 1 : 0
  name_prefix        = "${var.name}-gha-push-"
  description        = "GitHub Actions (OIDC): push images to ${aws_ecr_repository.this.name}"
  assume_role_policy = data.aws_iam_policy_document.github_assume[0].json
}

data "aws_iam_policy_document" "github_push" {
  statement {
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"] # GetAuthorizationToken supports no resource-level permission.
  }
  statement {
    sid = "PushToThisRepository"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:CompleteLayerUpload",
      "ecr:DescribeImages",
      "ecr:GetDownloadUrlForLayer",
      "ecr:InitiateLayerUpload",
      "ecr:PutImage",
      "ecr:UploadLayerPart",
    ]
    resources = [aws_ecr_repository.this.arn]
  }
  statement {
    sid       = "EncryptLayers"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey", "kms:DescribeKey"]
    resources = [aws_kms_key.this.arn]
  }
}

resource "aws_iam_role_policy" "github_push" {
  count  = local.github_enabled ? 1 : 0
  name   = "ecr-push"
  role   = aws_iam_role.github_push[0].id
  policy = data.aws_iam_policy_document.github_push.json
}

# --- GitHub Actions (OIDC): the plan role of deploy-infrastructure.yml -----------------------
# It reads everything (terraform plan refreshes every resource) and writes only the state lock:
# with use_lockfile the S3 backend creates and deletes <key>.tflock around every plan
# (HashiCorp: "Backend Type: s3", S3 bucket permissions). Plans never write the state itself.

locals {
  plan_role_enabled = local.github_enabled && var.tf_state_bucket != null
  state_bucket_arn  = "arn:${local.partition}:s3:::${coalesce(var.tf_state_bucket, "none")}"
}

resource "aws_iam_role" "github_plan" {
  count              = local.plan_role_enabled ? 1 : 0
  name_prefix        = "${var.name}-gha-plan-"
  description        = "GitHub Actions (OIDC): terraform plan of ${var.name} on the main branch"
  assume_role_policy = data.aws_iam_policy_document.github_assume[0].json
}

resource "aws_iam_role_policy_attachment" "github_plan_read_only" {
  count      = local.plan_role_enabled ? 1 : 0
  role       = aws_iam_role.github_plan[0].name
  policy_arn = "arn:${local.partition}:iam::aws:policy/ReadOnlyAccess"
}

data "aws_iam_policy_document" "github_plan" {
  statement {
    sid       = "ListState"
    actions   = ["s3:ListBucket"]
    resources = [local.state_bucket_arn]
  }

  statement {
    sid       = "ReadState"
    actions   = ["s3:GetObject"]
    resources = ["${local.state_bucket_arn}/${var.tf_state_key}"]
  }

  statement {
    sid       = "HoldTheStateLock"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = ["${local.state_bucket_arn}/${var.tf_state_key}.tflock"]
  }

  statement {
    # ReadOnlyAccess would let a plan read every request and image; a plan needs none of them.
    sid     = "NoUserData"
    effect  = "Deny"
    actions = ["s3:GetObject", "s3:GetObjectVersion"]
    resources = [
      "${aws_s3_bucket.this.arn}/inputs/*",
      "${aws_s3_bucket.this.arn}/outputs/*",
      "${aws_s3_bucket.this.arn}/failures/*",
    ]
  }
}

resource "aws_iam_role_policy" "github_plan" {
  count  = local.plan_role_enabled ? 1 : 0
  name   = "terraform-state-lock"
  role   = aws_iam_role.github_plan[0].id
  policy = data.aws_iam_policy_document.github_plan.json
}
