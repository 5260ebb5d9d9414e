"""A replica's figures through Ray Serve's metrics API (``ray.serve.metrics``): Ray's metrics
agent on each node aggregates them beside Serve's own and exports them in Prometheus' text
format on the node's metrics export port (``ray.init(_metrics_export_port=...)``, ``ray start
--metrics-export-port``), at ``/metrics``. Ray prefixes every name with ``ray_``, adds ``_total``
to counters, and tags each series with its application, deployment and replica.

Buckets fit SD-Turbo: a 512x512 1-step image takes ~40 ms on an H200 (UNet ~10 ms, VAE decode
~25 ms, loadtest/measured/), a CPU replica seconds; queue waits run up to the request timeout.
"""

from __future__ import annotations

from ray.serve import metrics

from serve_app.engine.metrics import STAGES, Recorder, Sample

STAGE_MS_BUCKETS = [1, 2, 5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 2000]
QUEUE_WAIT_MS_BUCKETS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000]
REQUEST_MS_BUCKETS = [5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000]
# Ray's metrics agent rebuilds a histogram from its bucket counts, each value at its bucket's
# midpoint (ray/_private/telemetry/open_telemetry_metric_recorder.py): ``_count`` and the buckets
# are exact, ``_sum`` is approximate. Batch sizes sit at the middle of buckets one image wide
# (up to 8), so their ``_sum``, and the mean batch size, are exact there.
BATCH_SIZE_BUCKETS = [
    0.5,
    1.5,
    2.5,
    3.5,
    4.5,
    5.5,
    6.5,
    7.5,
    8.5,
    12.5,
    16.5,
    24.5,
    32.5,
    48.5,
    64.5,
]
BATCH_FILL_BUCKETS = [0.125, 0.25, 0.5, 0.75, 0.99, 1.0]


class PrometheusRecorder(Recorder):
    """Made in the replica (Serve's tags come from its context); Ray's calls are thread-safe."""

    def __init__(self):
        self.requests = metrics.Counter(
            "sdturbo_requests",
            description="HTTP requests answered, by route and status code.",
            tag_keys=("route", "status"),
        )
        self.request_ms = metrics.Histogram(
            "sdturbo_request_ms",
            description="Time from a request's arrival at the replica to its answer, ms.",
            boundaries=REQUEST_MS_BUCKETS,
            tag_keys=("route",),
        )
        self.shed_requests = metrics.Counter(
            "sdturbo_requests_shed",
            description="Generation requests refused before any work (503), by reason: "
            "overloaded, shutting_down, model_unavailable.",
            tag_keys=("reason",),
        )
        self.queue_wait_ms = metrics.Histogram(
            "sdturbo_queue_wait_ms",
            description="Time a request waited in the queue for the model, ms.",
            boundaries=QUEUE_WAIT_MS_BUCKETS,
        )
        self.batch_size = metrics.Histogram(
            "sdturbo_batch_size",
            description="Images per pipeline call.",
            boundaries=BATCH_SIZE_BUCKETS,
        )
        self.batch_fill = metrics.Histogram(
            "sdturbo_batch_fill",
            description="Images per pipeline call over max_batch_size (0..1).",
            boundaries=BATCH_FILL_BUCKETS,
        )
        self.stage_ms = metrics.Histogram(
            "sdturbo_stage_ms",
            description="Time per stage of a pipeline call (text_encoder, unet, vae_encode, "
            "vae_decode, copy) and per request's encoding (encode), ms.",
            boundaries=STAGE_MS_BUCKETS,
            tag_keys=("stage",),
        )
        self.queue_length = metrics.Gauge(
            "sdturbo_queue_length", description="Requests waiting for the model."
        )
        self.queued_images = metrics.Gauge(
            "sdturbo_queued_images", description="Images waiting for the model."
        )
        self.queued_work = metrics.Gauge(
            "sdturbo_queued_work_units",
            description="Work waiting, in cost units (one 512x512 1-step image is 1).",
        )
        self.in_flight = metrics.Gauge(
            "sdturbo_in_flight", description="Generation requests accepted and not answered."
        )
        self.cache_hits = metrics.Counter(
            "sdturbo_prompt_cache_hits", description="Prompt embeddings found in the cache."
        )
        self.cache_misses = metrics.Counter(
            "sdturbo_prompt_cache_misses",
            description="Prompt embeddings not in the cache (run through the text encoder).",
        )
        self.compile_fallbacks = metrics.Counter(
            "sdturbo_compile_fallbacks",
            description="Replicas that fell back to uncompiled modules (no fitting compile "
            "cache, or compilation failed): /ping's compile.state 'fallback'.",
        )
        self.compile_cache_mismatches = metrics.Counter(
            "sdturbo_compile_cache_mismatches",
            description="Graphs a loaded compile cache did not hold, so compiled at start-up "
            "(a cache built for other settings, or another GPU, driver or software version).",
        )
        self.gpu_memory = metrics.Gauge(
            "sdturbo_gpu_memory_bytes",
            description="GPU memory held by tensors (torch.cuda.memory_allocated).",
        )
        self._stage_tags = {stage: {"stage": stage} for stage in (*STAGES, "encode")}
        self._route_tags: dict[str, dict] = {}

    def request(self, route, status, total_ms):
        self.requests.inc(1, {"route": route, "status": str(status)})
        tags = self._route_tags.get(route)
        if tags is None:
            tags = self._route_tags[route] = {"route": route}
        self.request_ms.observe(total_ms, tags)

    def shed(self, reason):
        self.shed_requests.inc(1, {"reason": reason})

    def queue_wait(self, ms):
        self.queue_wait_ms.observe(ms)

    def pipeline_call(self, images, max_images, stages_ms):
        self.batch_size.observe(images)
        self.batch_fill.observe(min(1.0, images / max_images))
        for stage, ms in stages_ms.items():
            tags = self._stage_tags.get(stage)
            if tags is not None:
                self.stage_ms.observe(ms, tags)

    def encoded(self, ms):
        self.stage_ms.observe(ms, self._stage_tags["encode"])

    def sampled(self, sample: Sample):
        self.queue_length.set(sample.queue_length)
        self.queued_images.set(sample.queued_images)
        self.queued_work.set(sample.queued_units)
        self.in_flight.set(sample.in_flight)
        if sample.prompt_cache_hits:
            self.cache_hits.inc(sample.prompt_cache_hits)
        if sample.prompt_cache_misses:
            self.cache_misses.inc(sample.prompt_cache_misses)
        if sample.compile_fallbacks:
            self.compile_fallbacks.inc(sample.compile_fallbacks)
        if sample.compile_cache_mismatches:
            self.compile_cache_mismatches.inc(sample.compile_cache_mismatches)
        if sample.gpu_memory_bytes is not None:
            self.gpu_memory.set(sample.gpu_memory_bytes)
