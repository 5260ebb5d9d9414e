"""What a replica measures, as calls on a ``Recorder``: no Ray, no torch, no formatting.

The engine and the HTTP edge call a recorder at the points where a figure is known (a request
answered, a shed, a job taken from the queue, a pipeline call returned, a result encoded); the
state that is read rather than measured (queue length, the prompt cache's counts, the compile
state, GPU memory) is sampled once a second by ``Sampler``. The base class records nothing, so an
engine built without metrics (tests, benchmarks) pays one no-op call per event. The exporters
(``serve_app/metrics``: Prometheus through Ray Serve, CloudWatch EMF lines) subclass it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

# Stage names a backend may report in ``Generated.stages_ms`` (``pipeline/generate.py``), plus
# the engine's own encoding; a recorder exports these and ignores any other key.
STAGES = ("text_encoder", "unet", "vae_encode", "vae_decode", "copy")
# Refusals that are sheds: the request was turned away before any work was done on it.
SHED_REASONS = ("overloaded", "shutting_down", "model_unavailable")
logger = logging.getLogger("sdturbo")


@dataclass(frozen=True)
class Sample:
    """A replica's state at one instant; the counts are increments since the last sample."""

    queue_length: int
    queued_units: float
    queued_images: int
    in_flight: int
    prompt_cache_hits: int = 0
    prompt_cache_misses: int = 0
    compile_fallbacks: int = 0
    compile_cache_mismatches: int = 0
    gpu_memory_bytes: int | None = None  # None: no GPU in use


class Recorder:
    """Every figure the server reports; this base records nothing (the default)."""

    def request(self, route: str, status: int, total_ms: float) -> None:
        """An HTTP request answered (any route, any status)."""

    def shed(self, reason: str) -> None:
        """A generation request refused before any work (one of ``SHED_REASONS``)."""

    def queue_wait(self, ms: float) -> None:
        """A job taken from the queue into a pipeline call, after waiting ``ms``."""

    def pipeline_call(self, images: int, max_images: int, stages_ms: dict[str, float]) -> None:
        """A pipeline call returned: its images, the batch limit then, its stages' times."""

    def encoded(self, ms: float) -> None:
        """A request's images encoded (all of them, in parallel), in ``ms``."""

    def sampled(self, sample: Sample) -> None:
        """The replica's state, once a sampling period (``Sampler``)."""

    def close(self) -> None:
        """Flush what is held and stop any thread."""


class Fanout(Recorder):
    """Several recorders as one (Prometheus and EMF side by side)."""

    def __init__(self, *recorders: Recorder):
        self.recorders = recorders

    def request(self, route, status, total_ms):
        for recorder in self.recorders:
            recorder.request(route, status, total_ms)

    def shed(self, reason):
        for recorder in self.recorders:
            recorder.shed(reason)

    def queue_wait(self, ms):
        for recorder in self.recorders:
            recorder.queue_wait(ms)

    def pipeline_call(self, images, max_images, stages_ms):
        for recorder in self.recorders:
            recorder.pipeline_call(images, max_images, stages_ms)

    def encoded(self, ms):
        for recorder in self.recorders:
            recorder.encoded(ms)

    def sampled(self, sample):
        for recorder in self.recorders:
            recorder.sampled(sample)

    def close(self):
        for recorder in self.recorders:
            recorder.close()


class Sampler:
    """Reads an engine's state every ``period_s`` on a daemon thread and hands a ``Sample`` to
    its recorder: cumulative counts (the prompt cache's) become increments here, once, and a
    compile state that turned to ``fallback`` counts one fallback."""

    def __init__(
        self,
        engine,
        recorder: Recorder,
        gpu_memory: Callable[[], int | None] = lambda: None,
        period_s: float = 1.0,
    ):
        self.engine, self.recorder, self.gpu_memory = engine, recorder, gpu_memory
        self.period_s = period_s
        self._hits = self._misses = 0
        self._fell_back = False
        self._mismatches = 0
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> Sample:
        state = self.engine.state()
        status = self.engine.backend.status()
        cache = status.get("prompt_cache") or {}
        hits, misses = cache.get("hits", 0), cache.get("misses", 0)
        # A count below the last one: the cache was rebuilt (a reload); count from zero.
        new_hits = hits - self._hits if hits >= self._hits else hits
        new_misses = misses - self._misses if misses >= self._misses else misses
        self._hits, self._misses = hits, misses
        compile = status.get("compile", {})
        fell_back = compile.get("state") == "fallback"
        fallbacks = int(fell_back and not self._fell_back)
        self._fell_back = fell_back
        # A running total over the replica's start-ups: count what is new since the last sample.
        mismatches = compile.get("cache_mismatches", 0) - self._mismatches
        self._mismatches += mismatches
        return Sample(
            **state,
            prompt_cache_hits=new_hits,
            prompt_cache_misses=new_misses,
            compile_fallbacks=fallbacks,
            compile_cache_mismatches=mismatches,
            gpu_memory_bytes=self.gpu_memory(),
        )

    def start(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, name="sdturbo-metrics", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stopped.wait(self.period_s):
            try:
                self.recorder.sampled(self.sample())
            except Exception:  # a metric must never take the replica down
                logger.debug("metrics sample failed", exc_info=True)

    def stop(self) -> None:
        self._stopped.set()
