"""What a replica measures, exported (the engine's ``Recorder`` interface, implemented):

- ``prometheus``: Ray Serve's metrics API, scraped at Ray's metrics export port (``/metrics``)
- ``emf``: CloudWatch Embedded Metric Format lines, aggregated per interval

``build_recorder`` makes a replica's recorder from its settings; ``gpu_memory_bytes`` is the
sampler's GPU reading. Ray is imported only by ``prometheus``, torch by nothing here.
"""

from __future__ import annotations

import sys

from serve_app.config import MetricsSettings
from serve_app.engine.metrics import Fanout, Recorder


def build_recorder(settings: MetricsSettings, prometheus: bool = True) -> Recorder:
    """Prometheus (through Ray, in a replica) and EMF lines when the settings ask; started."""
    recorders: list[Recorder] = []
    if prometheus:
        from serve_app.metrics.prometheus import PrometheusRecorder

        recorders.append(PrometheusRecorder())
    interval_s = settings.emf_every_s
    if interval_s is not None:
        from serve_app.metrics.emf import EmfRecorder, line_writer

        dimensions = {
            "EndpointName": settings.endpoint_name or "local",
            "VariantName": settings.variant_name,
        }
        writer = line_writer(settings.emf_path or "-")
        emf = EmfRecorder(settings.metrics_namespace, dimensions, writer, interval_s)
        recorders.append(emf.start())
    if not recorders:
        return Recorder()
    return recorders[0] if len(recorders) == 1 else Fanout(*recorders)


def gpu_memory_bytes() -> int | None:
    """Bytes held by tensors on the current GPU; None without CUDA in use. Never imports torch
    (the backend did, if it runs on torch) and never creates a CUDA context."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return None
    return int(torch.cuda.memory_allocated())
