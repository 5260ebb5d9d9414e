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

# What every SageMaker role of this stack needs, the endpoints' execution role and the build
# job's role alike: the stack key, pulling this repository's image, and writing its own logs and
# metrics (each role to its own log groups and namespaces).
locals {
  sagemaker_roles = {
    # Endpoints log to /aws/sagemaker/Endpoints/<name>; the server's EMF metrics travel in those
    # logs, so logs:PutLogEvents is all they need (no cloudwatch:PutMetricData for them).
    execution = { log_groups = "/aws/sagemaker/*", metric_namespaces = ["AWS/SageMaker", "/aws/sagemaker/*"] }
    build     = { log_groups = "/aws/sagemaker/ProcessingJobs", metric_namespaces = ["/aws/sagemaker/ProcessingJobs"] }
  }
}

data "aws_iam_policy_document" "sagemaker_common" {
  for_each = local.sagemaker_roles

  statement {
    # The bucket and the repository are encrypted with the stack key.
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
      "arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:${each.value.log_groups}",
      "arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:${each.value.log_groups}:log-stream:*",
    ]
  }

  statement {
    sid       = "PutMetrics"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"] # PutMetricData supports no resource-level permission; narrowed by namespace.
    condition {
      test     = "StringLike"
      variable = "cloudwatch:namespace"
      values   = each.value.metric_namespaces
    }
  }
}

data "aws_iam_policy_document" "execution" {
  source_policy_documents = [data.aws_iam_policy_document.sagemaker_common["execution"].json]
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

# Each role trusts one GitHub environment of this repository, never a branch: a token's subject
# is repo:<owner/name>:environment:<name> as soon as a job names an environment (GitHub:
# "About security hardening with OpenID Connect", example subject claims), so another workflow
# on main with id-token: write can assume neither role. The environments (README, step 4) may
# be deployed from main only.
locals {
  github_environments = {
    push = "ecr-push"       # build-and-push.yml
    plan = "terraform-plan" # deploy-infrastructure.yml, plan job
  }
}

data "aws_iam_policy_document" "github_assume" {
  for_each = local.github_enabled ? local.github_environments : {}
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
      test     = "StringEquals"
      variable = "token.actions.githubusercontent.com:sub"
      values   = ["repo:${coalesce(var.github_repository, "none/none")}:environment:${each.value}"]
    }
  }
}

resource "aws_iam_role" "github_push" {
  count              = local.github_enabled ? 1 : 0
  name_prefix        = "${var.name}-gha-push-"
  description        = "GitHub Actions (OIDC): push images to ${aws_ecr_repository.this.name}"
  assume_role_policy = data.aws_iam_policy_document.github_assume["push"].json
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
# It reads what `terraform plan` refreshes, this stack's resources, and writes only the state
# lock: with use_lockfile the S3 backend creates and deletes <key>.tflock around every plan
# (HashiCorp: "Backend Type: s3", S3 bucket permissions). No managed ReadOnlyAccess: that grants
# s3:GetObject on every bucket of the account. Here S3 reads are on the stack's bucket itself
# (its settings), never its objects; the other reads are Describe/Get/List, scoped to this
# stack's names where the service supports resource-level permissions.

locals {
  plan_role_enabled = local.github_enabled && var.tf_state_bucket != null
  state_bucket_arn  = "arn:${local.partition}:s3:::${coalesce(var.tf_state_bucket, "none")}"
  arn_prefix        = "arn:${local.partition}"
  here              = "${var.region}:${local.account_id}"
}

resource "aws_iam_role" "github_plan" {
  count              = local.plan_role_enabled ? 1 : 0
  name_prefix        = "${var.name}-gha-plan-"
  description        = "GitHub Actions (OIDC): terraform plan of ${var.name} (environment ${local.github_environments.plan})"
  assume_role_policy = data.aws_iam_policy_document.github_assume["plan"].json
}

data "aws_iam_policy_document" "github_plan" {
  # checkov:skip=CKV_AWS_356: ec2, application-autoscaling and the account-level Describe/List calls that a refresh makes support no resource-level permission; every other read is scoped to this stack's names.
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
    # Bucket-level reads only (policy, encryption, lifecycle, notifications...): an object
    # action needs an object ARN, which no statement here grants on this bucket.
    sid       = "ReadTheStackBucketSettings"
    actions   = ["s3:GetBucket*", "s3:Get*Configuration", "s3:GetAccelerateConfiguration", "s3:ListBucket"]
    resources = [aws_s3_bucket.this.arn]
  }

  statement {
    sid = "ReadTheStack"
    actions = [
      "ecr:DescribeRepositories", "ecr:GetLifecyclePolicy", "ecr:GetRepositoryPolicy", "ecr:ListTagsForResource",
      "kms:DescribeKey", "kms:GetKeyPolicy", "kms:GetKeyRotationStatus", "kms:ListResourceTags",
      "iam:GetRole", "iam:GetRolePolicy", "iam:ListRolePolicies", "iam:ListAttachedRolePolicies", "iam:ListRoleTags",
      "iam:GetOpenIDConnectProvider",
      "sagemaker:DescribeModel", "sagemaker:DescribeEndpointConfig", "sagemaker:DescribeEndpoint", "sagemaker:ListTags",
      "sns:GetTopicAttributes", "sns:ListTagsForResource", "sns:GetSubscriptionAttributes",
      "events:DescribeRule", "events:ListTargetsByRule", "events:ListTagsForResource",
      "states:DescribeStateMachine", "states:ListStateMachineVersions", "states:ListTagsForResource",
      "cloudwatch:DescribeAlarms", "cloudwatch:ListTagsForResource", "cloudwatch:GetDashboard",
    ]
    resources = [
      aws_ecr_repository.this.arn,
      aws_kms_key.this.arn,
      "${local.arn_prefix}:iam::${local.account_id}:role/${var.name}-*",
      "${local.arn_prefix}:iam::${local.account_id}:oidc-provider/token.actions.githubusercontent.com",
      "${local.arn_prefix}:sagemaker:${local.here}:model/${var.name}-*",
      "${local.arn_prefix}:sagemaker:${local.here}:endpoint-config/${var.name}-*",
      "${local.arn_prefix}:sagemaker:${local.here}:endpoint/${var.name}-*",
      "${local.arn_prefix}:sns:${local.here}:${var.name}-*",
      "${local.arn_prefix}:events:${local.here}:rule/${var.name}-*",
      "${local.arn_prefix}:states:${local.here}:stateMachine:${var.name}-*",
      "${local.arn_prefix}:cloudwatch:${local.here}:alarm:${var.name}-*",
      "arn:${local.partition}:cloudwatch::${local.account_id}:dashboard/${var.name}-*",
    ]
  }

  statement {
    # No resource-level permissions for these reads (AWS's Service Authorization Reference):
    # VPC, subnets, endpoints, security groups and zones; scaling targets and policies;
    # aliases; listing subscriptions.
    sid = "ReadWhatHasNoResourceLevelPermission"
    actions = [
      "ec2:DescribeVpcs", "ec2:DescribeVpcAttribute", "ec2:DescribeSubnets", "ec2:DescribeRouteTables",
      "ec2:DescribeSecurityGroups", "ec2:DescribeSecurityGroupRules", "ec2:DescribeVpcEndpoints",
      "ec2:DescribePrefixLists", "ec2:DescribeAvailabilityZones", "ec2:DescribeNetworkAcls",
      "ec2:DescribeVpcEndpointServices",
      "application-autoscaling:DescribeScalableTargets", "application-autoscaling:DescribeScalingPolicies",
      "application-autoscaling:ListTagsForResource",
      "kms:ListAliases", "sns:ListSubscriptionsByTopic", "ecr:DescribeImages",
    ]
    resources = ["*"]
  }

  statement {
    # Belt and braces: whatever else this role gains, no request, result or artifact.
    sid     = "NoUserData"
    effect  = "Deny"
    actions = ["s3:GetObject", "s3:GetObjectVersion"]
    resources = [
      "${aws_s3_bucket.this.arn}/*",
    ]
  }
}

resource "aws_iam_role_policy" "github_plan" {
  count  = local.plan_role_enabled ? 1 : 0
  name   = "terraform-plan"
  role   = aws_iam_role.github_plan[0].id
  policy = data.aws_iam_policy_document.github_plan.json
}
