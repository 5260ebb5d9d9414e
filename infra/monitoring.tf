# Alarms on what users feel: server errors, model latency, time queued inside the server, and
# requests stuck in the async queue. The error, latency and queue-wait alarms also gate
# rollouts (deployment_config in sagemaker.tf): SageMaker rolls an update back if one of them
# fires while the new fleet bakes. One dashboard per endpoint (dashboard.tf).

locals {
  alarm_endpoints = { sync = local.sync_endpoint_name, async = local.async_endpoint_name }
  # Names are fixed so the execution role can be granted DescribeAlarms before they exist.
  rollback_alarm_names = flatten([
    for kind, endpoint in local.alarm_endpoints : [
      "${endpoint}-5xx-errors", "${endpoint}-model-latency", "${endpoint}-queue-wait",
    ]
  ])
  rollback_alarms = {
    for kind in keys(aws_cloudwatch_metric_alarm.errors) : kind => [
      aws_cloudwatch_metric_alarm.errors[kind].alarm_name,
      aws_cloudwatch_metric_alarm.latency[kind].alarm_name,
      aws_cloudwatch_metric_alarm.queue_wait[kind].alarm_name,
    ]
  }
}

resource "aws_sns_topic" "alarms" {
  name              = "${var.name}-alarms"
  kms_master_key_id = aws_kms_key.this.arn
}

resource "aws_sns_topic_subscription" "alarm_emails" {
  for_each  = toset(var.alarm_emails)
  topic_arn = aws_sns_topic.alarms.arn
  protocol  = "email"
  endpoint  = each.value
}

resource "aws_cloudwatch_metric_alarm" "errors" {
  for_each          = local.deploy ? local.alarm_endpoints : {}
  alarm_name        = "${each.value}-5xx-errors"
  alarm_description = "${each.value} returns 5xx errors (the model failed, not the caller). Rolls back a deployment in progress."
  namespace         = "AWS/SageMaker"
  metric_name       = "Invocation5XXErrors"
  dimensions = {
    EndpointName = each.value
    VariantName  = local.variant_name
  }
  statistic           = "Sum"
  period              = 60
  evaluation_periods  = 2
  datapoints_to_alarm = 2
  threshold           = var.error_alarm_threshold
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching" # no traffic (an idle async endpoint) is not an error
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
}

resource "aws_cloudwatch_metric_alarm" "latency" {
  for_each          = local.deploy ? local.alarm_endpoints : {}
  alarm_name        = "${each.value}-model-latency"
  alarm_description = "${each.value}: ModelLatency p90 above ${var.model_latency_alarm_ms} ms. Rolls back a deployment in progress."
  namespace         = "AWS/SageMaker"
  metric_name       = "ModelLatency"
  dimensions = {
    EndpointName = each.value
    VariantName  = local.variant_name
  }
  extended_statistic  = "p90"
  period              = 60
  evaluation_periods  = 3
  datapoints_to_alarm = 3
  threshold           = var.model_latency_alarm_ms * 1000 # ModelLatency is in microseconds
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
}

# QueueWait is the serving code's own metric (EMF, namespace metrics_namespace): how long a
# request waited inside the server for a batch slot. p90 over the threshold for 3 minutes means
# the replicas cannot keep up (or a new release batches worse): it rolls a deployment back.
resource "aws_cloudwatch_metric_alarm" "queue_wait" {
  for_each          = local.deploy ? local.alarm_endpoints : {}
  alarm_name        = "${each.value}-queue-wait"
  alarm_description = "${each.value}: QueueWait p90 above ${var.queue_wait_alarm_ms} ms inside the server. Rolls back a deployment in progress."
  namespace         = var.metrics_namespace
  metric_name       = "QueueWait"
  dimensions = {
    EndpointName = each.value
    VariantName  = local.variant_name
  }
  extended_statistic  = "p90"
  period              = 60
  evaluation_periods  = 3
  datapoints_to_alarm = 3
  threshold           = var.queue_wait_alarm_ms # QueueWait is in milliseconds
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
}

resource "aws_cloudwatch_metric_alarm" "async_oldest_request" {
  count             = local.deploy ? 1 : 0
  alarm_name        = "${local.async_endpoint_name}-oldest-request"
  alarm_description = "A request has waited in the ${local.async_endpoint_name} queue for over ${var.async_oldest_request_alarm_s} s: longer than a scale from zero, so the endpoint is stuck or at its maximum."
  namespace         = "AWS/SageMaker"
  metric_name       = "ApproximateAgeOfOldestRequest"
  dimensions = {
    EndpointName = local.async_endpoint_name
  }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  threshold           = var.async_oldest_request_alarm_s
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
}
