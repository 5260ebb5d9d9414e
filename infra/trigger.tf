# Async inference without a client: a request JSON uploaded under inputs/ starts itself.
#
#   S3 "Object Created" (inputs/...) -> EventBridge rule -> Step Functions (Standard)
#     -> sagemakerruntime:InvokeEndpointAsync (AWS SDK integration, no code to deploy)
#     -> tags the request with where its result will appear
#
# SageMaker names the result after the inference id (API reference, InvokeEndpointAsync
# "Filename"), and the state machine passes the request's file name as that id, so
# inputs/fox.json ends up as outputs/fox.json.out (or failures/fox.json-error.out). The exact
# locations are also written on the request as tags (output-location, failure-location).
# Requests under inputs/direct/ are skipped: their uploader (`sdturbo invoke --async`) invokes
# the endpoint itself, and a second invocation would run the model twice.

locals {
  trigger_prefix     = "inputs/"
  trigger_skip       = "inputs/direct/*"
  state_machine_name = "${var.name}-async-trigger"
  # From the fixed name, not the resource: the grant then stays put while a deploy updates
  # the endpoint (a reference would make the policy unknown, and rewritten, on every deploy).
  async_endpoint_arn = "arn:${local.partition}:sagemaker:${var.region}:${local.account_id}:endpoint/${local.async_endpoint_name}"

  trigger_definition = {
    Comment = "Start an async inference on ${local.async_endpoint_name} for each request uploaded under s3://${aws_s3_bucket.this.id}/${local.trigger_prefix}"
    StartAt = "Route"
    States = {
      Route = {
        Type = "Choice"
        Choices = [{
          Variable      = "$.detail.object.key"
          StringMatches = local.trigger_skip
          Next          = "InvokedByItsUploader"
        }]
        Default = "Name"
      }
      InvokedByItsUploader = { Type = "Succeed" }
      Name = {
        Type = "Pass"
        Parameters = {
          "bucket.$" = "$.detail.bucket.name"
          "key.$"    = "$.detail.object.key"
          # The last path segment: inputs/team/fox.json -> fox.json.
          "name.$" = "States.ArrayGetItem(States.StringSplit($.detail.object.key, '/'), States.MathAdd(States.ArrayLength(States.StringSplit($.detail.object.key, '/')), -1))"
        }
        Next = "Invoke"
      }
      Invoke = {
        Type     = "Task"
        Resource = "arn:${local.partition}:states:::aws-sdk:sagemakerruntime:invokeEndpointAsync"
        Parameters = {
          EndpointName      = local.async_endpoint_name
          "InputLocation.$" = "States.Format('s3://{}/{}', $.bucket, $.key)"
          "InferenceId.$"   = "$.name"
          ContentType       = "application/json"
          Accept            = "application/json"
          # The queue waits out a scale from zero (RequestTTLSeconds, default 6 h); once
          # dequeued, an image takes seconds, but a first batch on a cold instance may not.
          InvocationTimeoutSeconds = 3600
        }
        ResultPath = "$.invoked"
        Retry = [{
          ErrorEquals     = ["States.ALL"]
          IntervalSeconds = 2
          MaxAttempts     = 3
          BackoffRate     = 2
        }]
        Catch = [{
          ErrorEquals = ["States.ALL"]
          ResultPath  = "$.error"
          Next        = "RecordRefusal"
        }]
        Next = "TagRequest"
      }
      TagRequest = {
        Type     = "Task"
        Resource = "arn:${local.partition}:states:::aws-sdk:s3:putObjectTagging"
        Parameters = {
          "Bucket.$" = "$.bucket"
          "Key.$"    = "$.key"
          Tagging = {
            TagSet = [
              { Key = "inference-id", "Value.$" = "$.invoked.InferenceId" },
              { Key = "output-location", "Value.$" = "$.invoked.OutputLocation" },
              { Key = "failure-location", "Value.$" = "$.invoked.FailureLocation" },
            ]
          }
        }
        ResultPath = null
        End        = true
      }
      # SageMaker refused the request (a name longer than the 64 characters of an inference
      # id, an endpoint being deleted...): say so where the caller looks for results.
      RecordRefusal = {
        Type     = "Task"
        Resource = "arn:${local.partition}:states:::aws-sdk:s3:putObject"
        Parameters = {
          "Bucket.$"  = "$.bucket"
          "Key.$"     = "States.Format('failures/{}-trigger-error.json', $.name)"
          "Body.$"    = "States.JsonToString($.error)"
          ContentType = "application/json"
        }
        ResultPath = null
        Next       = "Refused"
      }
      Refused = {
        Type  = "Fail"
        Error = "InvokeEndpointAsyncRefused"
        Cause = "SageMaker refused the request; the reason is in failures/<name>-trigger-error.json"
      }
    }
  }
}

# --- EventBridge: S3 event -> state machine ----------------------------------------------------

resource "aws_cloudwatch_event_rule" "async_inputs" {
  count       = local.deploy ? 1 : 0
  name        = "${var.name}-async-inputs"
  description = "Requests uploaded under s3://${aws_s3_bucket.this.id}/${local.trigger_prefix} start an async inference"
  event_pattern = jsonencode({
    source        = ["aws.s3"]
    "detail-type" = ["Object Created"]
    detail = {
      bucket = { name = [aws_s3_bucket.this.id] }
      object = { key = [{ prefix = local.trigger_prefix }] }
    }
  })
}

resource "aws_cloudwatch_event_target" "async_inputs" {
  count     = local.deploy ? 1 : 0
  rule      = aws_cloudwatch_event_rule.async_inputs[0].name
  target_id = "start-async-inference"
  arn       = aws_sfn_state_machine.async_trigger[0].arn
  role_arn  = aws_iam_role.trigger_events[0].arn

  retry_policy {
    # EventBridge's maximum: a throttled StartExecution is retried for a day.
    maximum_event_age_in_seconds = 86400
    maximum_retry_attempts       = 185
  }
}

data "aws_iam_policy_document" "events_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["events.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "trigger_events" {
  count              = local.deploy ? 1 : 0
  name_prefix        = "${var.name}-trigger-events-"
  description        = "EventBridge: start ${local.state_machine_name} for uploads under ${local.trigger_prefix}"
  assume_role_policy = data.aws_iam_policy_document.events_assume.json
}

data "aws_iam_policy_document" "trigger_events" {
  count = local.deploy ? 1 : 0
  statement {
    sid       = "StartTheTrigger"
    actions   = ["states:StartExecution"]
    resources = [aws_sfn_state_machine.async_trigger[0].arn]
  }
}

resource "aws_iam_role_policy" "trigger_events" {
  count  = local.deploy ? 1 : 0
  name   = "start-execution"
  role   = aws_iam_role.trigger_events[0].id
  policy = data.aws_iam_policy_document.trigger_events[0].json
}

# --- Step Functions: the state machine and its role ----------------------------------------------

data "aws_iam_policy_document" "states_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["states.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "trigger" {
  count              = local.deploy ? 1 : 0
  name_prefix        = "${var.name}-trigger-"
  description        = "${local.state_machine_name}: invoke ${local.async_endpoint_name} for uploaded requests"
  assume_role_policy = data.aws_iam_policy_document.states_assume.json
}

data "aws_iam_policy_document" "trigger" {
  count = local.deploy ? 1 : 0

  statement {
    # The caller of InvokeEndpointAsync needs no access to the input: the endpoint's execution
    # role reads it.
    sid       = "InvokeTheAsyncEndpoint"
    actions   = ["sagemaker:InvokeEndpointAsync"]
    resources = [local.async_endpoint_arn]
  }

  statement {
    sid       = "TagRequests"
    actions   = ["s3:PutObjectTagging"]
    resources = ["${aws_s3_bucket.this.arn}/${local.trigger_prefix}*"]
  }

  statement {
    sid       = "RecordRefusals"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.this.arn}/failures/*-trigger-error.json"]
  }

  statement {
    # The bucket's default encryption (SSE-KMS) for that record, through S3 only.
    sid       = "EncryptRefusals"
    actions   = ["kms:GenerateDataKey"]
    resources = [aws_kms_key.this.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "trigger" {
  count  = local.deploy ? 1 : 0
  name   = "least-privilege"
  role   = aws_iam_role.trigger[0].id
  policy = data.aws_iam_policy_document.trigger[0].json
}

resource "aws_sfn_state_machine" "async_trigger" {
  # checkov:skip=CKV_AWS_284: two SDK calls per request; X-Ray traces would add cost and an xray:* grant for nothing to profile.
  # checkov:skip=CKV_AWS_285: a Standard workflow keeps every execution's full history (inputs, parameters, errors) for 90 days in Step Functions itself; CloudWatch Logs would duplicate it.
  count      = local.deploy ? 1 : 0
  name       = local.state_machine_name
  type       = "STANDARD" # exactly-once, and each execution's history is kept for 90 days
  role_arn   = aws_iam_role.trigger[0].arn
  definition = jsonencode(local.trigger_definition)

  depends_on = [aws_iam_role_policy.trigger]
}
