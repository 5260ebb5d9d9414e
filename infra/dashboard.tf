# One CloudWatch dashboard per endpoint: what SageMaker measures from outside (AWS/SageMaker,
# dimensions EndpointName + VariantName) beside what the server measures inside. The server
# writes its figures as CloudWatch Embedded Metric Format lines to stdout, which SageMaker ships
# to CloudWatch Logs; CloudWatch turns them into metrics in var.metrics_namespace with the
# dimensions [EndpointName, VariantName] (the container learns both from SDTURBO_ENDPOINT_NAME
# and SDTURBO_VARIANT_NAME, sagemaker.tf). No agent, and no permission beyond the execution
# role's logs:PutLogEvents (AWS: "Specification: Embedded metric format").

locals {
  # Every metric the serving code emits (EMF), by name and unit. tests/infra checks that the
  # dashboard names nothing else besides SageMaker's own metrics.
  server_metrics = {
    QueueWait              = "Milliseconds"
    BatchSize              = "Count"
    BatchFill              = "None" # 0..1: batch size / max_batch_size
    TextEncoderTime        = "Milliseconds"
    UNetTime               = "Milliseconds"
    VaeDecodeTime          = "Milliseconds"
    EncodeTime             = "Milliseconds"
    RequestsShed           = "Count"
    Requests               = "Count"
    PromptCacheHits        = "Count"
    PromptCacheMisses      = "Count"
    CompileFallbacks       = "Count"
    CompileCacheMismatches = "Count"
    GpuMemoryUsed          = "Bytes"
    QueueLength            = "Count"
  }

  dashboard_period = 60

  # A metric line of a widget: [namespace, name, dimension, value, ..., {options}].
  sagemaker_metric = {
    for kind, endpoint in local.endpoints : kind => {
      for stat in ["Sum", "Average", "p50", "p90", "p99", "Maximum"] : stat => {
        for name in [
          "Invocations", "ModelLatency", "OverheadLatency", "Invocation4XXErrors", "Invocation5XXErrors",
        ] : name => ["AWS/SageMaker", name, "EndpointName", endpoint, "VariantName", local.variant_name, { stat = stat, label = "${name} ${stat}" }]
      }
    }
  }
  server_metric = {
    for kind, endpoint in local.endpoints : kind => {
      for stat in ["Sum", "Average", "p50", "p90", "p99", "Maximum"] : stat => {
        for name, unit in local.server_metrics : name => [var.metrics_namespace, name, "EndpointName", endpoint, "VariantName", local.variant_name, { stat = stat, label = "${name} ${stat}" }]
      }
    }
  }

  dashboard_widgets = {
    for kind, endpoint in local.endpoints : kind => concat(
      [
        {
          title   = "Invocations and errors (SageMaker)"
          metrics = [for name in ["Invocations", "Invocation4XXErrors", "Invocation5XXErrors"] : local.sagemaker_metric[kind]["Sum"][name]]
        },
        {
          title   = "Model and overhead latency, microseconds (SageMaker)"
          metrics = [for m in [["ModelLatency", "p50"], ["ModelLatency", "p90"], ["OverheadLatency", "p90"]] : local.sagemaker_metric[kind][m[1]][m[0]]]
        },
        {
          title   = "Queue wait inside the server, ms (alarm: ${var.queue_wait_alarm_ms} ms p90)"
          metrics = [for stat in ["p50", "p90", "p99"] : local.server_metric[kind][stat]["QueueWait"]]
        },
        {
          title   = "Queue length and requests shed"
          metrics = [local.server_metric[kind]["Maximum"]["QueueLength"], local.server_metric[kind]["Sum"]["RequestsShed"], local.server_metric[kind]["Sum"]["Requests"]]
        },
        {
          title   = "Batch size and fill (0..1)"
          metrics = [local.server_metric[kind]["Average"]["BatchSize"], local.server_metric[kind]["Average"]["BatchFill"]]
        },
        {
          title   = "Stage times p90, ms"
          metrics = [for name in ["TextEncoderTime", "UNetTime", "VaeDecodeTime", "EncodeTime"] : local.server_metric[kind]["p90"][name]]
        },
        {
          title   = "Prompt cache, compile fallbacks and compile-cache mismatches"
          metrics = [for name in ["PromptCacheHits", "PromptCacheMisses", "CompileFallbacks", "CompileCacheMismatches"] : local.server_metric[kind]["Sum"][name]]
        },
        {
          title   = "GPU memory in use, bytes"
          metrics = [local.server_metric[kind]["Maximum"]["GpuMemoryUsed"]]
        },
      ],
      kind == "async" ? [
        {
          # The async queue as SageMaker sees it: what target tracking scales on.
          title   = "Backlog per instance (SageMaker, async)"
          metrics = [["AWS/SageMaker", "ApproximateBacklogSizePerInstance", "EndpointName", endpoint, { stat = "Average", label = "ApproximateBacklogSizePerInstance Average" }]]
        },
      ] : [],
    )
  }
}

resource "aws_cloudwatch_dashboard" "endpoint" {
  for_each       = local.endpoints
  dashboard_name = each.value
  dashboard_body = jsonencode({
    widgets = [
      for i, widget in local.dashboard_widgets[each.key] : {
        type   = "metric"
        x      = (i % 2) * 12
        y      = floor(i / 2) * 6
        width  = 12
        height = 6
        properties = {
          title   = widget.title
          metrics = widget.metrics
          region  = var.region
          period  = local.dashboard_period
          view    = "timeSeries"
          stacked = false
        }
      }
    ]
  })
}
