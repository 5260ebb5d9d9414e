# Autoscaling. The async endpoint follows AWS's recipe for scaling to and from zero
# ("Autoscale an asynchronous endpoint", SageMaker developer guide):
#   - target tracking on ApproximateBacklogSizePerInstance scales out under load and in to 0
#     when the queue is empty;
#   - target tracking alone never leaves 0 (a per-instance metric with no instance), so a step
#     policy fires on the HasBacklogWithoutCapacity alarm and adds an instance as soon as a
#     request waits with none running.

locals {
  autoscale = local.deploy && var.create_autoscaling
}

resource "aws_appautoscaling_target" "async" {
  count              = local.autoscale ? 1 : 0
  service_namespace  = "sagemaker"
  resource_id        = "endpoint/${aws_sagemaker_endpoint.this["async"].name}/variant/${local.variant_name}"
  scalable_dimension = "sagemaker:variant:DesiredInstanceCount"
  min_capacity       = 0
  max_capacity       = var.async_max_instance_count
}

resource "aws_appautoscaling_policy" "async_backlog" {
  count              = local.autoscale ? 1 : 0
  name               = "${var.name}-async-backlog-per-instance"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.async[0].service_namespace
  resource_id        = aws_appautoscaling_target.async[0].resource_id
  scalable_dimension = aws_appautoscaling_target.async[0].scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = var.async_backlog_per_instance_target
    scale_in_cooldown  = var.scale_in_cooldown_s
    scale_out_cooldown = var.scale_out_cooldown_s

    customized_metric_specification {
      metric_name = "ApproximateBacklogSizePerInstance"
      namespace   = "AWS/SageMaker"
      statistic   = "Average"
      dimensions {
        name  = "EndpointName"
        value = aws_sagemaker_endpoint.this["async"].name
      }
    }
  }
}

resource "aws_appautoscaling_policy" "async_wake" {
  count              = local.autoscale ? 1 : 0
  name               = "${var.name}-async-has-backlog-without-capacity"
  policy_type        = "StepScaling"
  service_namespace  = aws_appautoscaling_target.async[0].service_namespace
  resource_id        = aws_appautoscaling_target.async[0].resource_id
  scalable_dimension = aws_appautoscaling_target.async[0].scalable_dimension

  step_scaling_policy_configuration {
    adjustment_type         = "ChangeInCapacity"
    metric_aggregation_type = "Average"
    cooldown                = var.scale_out_cooldown_s

    step_adjustment {
      metric_interval_lower_bound = 0
      scaling_adjustment          = 1
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "async_wake" {
  count             = local.autoscale ? 1 : 0
  alarm_name        = "${var.name}-async-has-backlog-without-capacity"
  alarm_description = "A request waits on ${aws_sagemaker_endpoint.this["async"].name} with no instance running: scale out from zero."
  namespace         = "AWS/SageMaker"
  metric_name       = "HasBacklogWithoutCapacity"
  dimensions = {
    EndpointName = aws_sagemaker_endpoint.this["async"].name
  }
  statistic           = "Average"
  period              = 60
  evaluation_periods  = 2
  datapoints_to_alarm = 2
  threshold           = 1
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "missing"
  alarm_actions       = [aws_appautoscaling_policy.async_wake[0].arn]
}

# Real-time endpoints cannot scale to zero here: that takes inference components with managed
# instance scaling (MinInstanceCount 0), and provider 5.100.0 has no inference component
# resource. They scale between sync_instance_count and sync_max_instance_count on invocations
# per instance.
resource "aws_appautoscaling_target" "sync" {
  count              = local.autoscale ? 1 : 0
  service_namespace  = "sagemaker"
  resource_id        = "endpoint/${aws_sagemaker_endpoint.this["sync"].name}/variant/${local.variant_name}"
  scalable_dimension = "sagemaker:variant:DesiredInstanceCount"
  min_capacity       = var.sync_instance_count
  max_capacity       = max(var.sync_instance_count, var.sync_max_instance_count)
}

resource "aws_appautoscaling_policy" "sync_invocations" {
  count              = local.autoscale ? 1 : 0
  name               = "${var.name}-sync-invocations-per-instance"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.sync[0].service_namespace
  resource_id        = aws_appautoscaling_target.sync[0].resource_id
  scalable_dimension = aws_appautoscaling_target.sync[0].scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = var.sync_invocations_per_instance_target
    scale_in_cooldown  = var.scale_in_cooldown_s
    scale_out_cooldown = var.scale_out_cooldown_s

    predefined_metric_specification {
      predefined_metric_type = "SageMakerVariantInvocationsPerInstance"
    }
  }
}
