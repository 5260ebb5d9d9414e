"""The engine: one model replica's lifecycle, admission, batch loop and encoding, composed.

Backend-agnostic (the diffusers backend, or a fake in tests and benchmarks); no torch here.
Data flows one way: request -> Job in the BatchQueue -> ImageBatch on the pipeline thread ->
uint8 images -> encoded in the encoder pool -> GenerateResult.

Threads: every pipeline call, load and warm-up included, runs on one dedicated thread: CUDA
graphs are captured and replayed there, and a stream's work stays in order. Encoding runs in a
pool sized to the machine's cores, overlapping the next pipeline call.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from serve_app.config import BatchConfig
from serve_app.engine import oom
from serve_app.engine.admission import Admission, cost_units
from serve_app.engine.batch import Generated, ImageBatch, Job
from serve_app.engine.errors import (
    EngineError,
    GenerationFailed,
    InvalidRequest,
    ModelUnavailable,
    ShuttingDown,
    TimedOut,
)
from serve_app.engine.metrics import Recorder
from serve_app.engine.queue import BatchQueue
from serve_app.engine.results import GenerateResult, Outcome, result_for
from serve_app.schemas import GenerateRequest

logger = logging.getLogger("sdturbo")


class Backend(Protocol):
    """What the engine needs of a pipeline. ``load`` and ``generate`` run on the pipeline
    thread, ``encode`` in the encoder pool; the rest is cheap and runs anywhere."""

    token_limit: int

    def load(self) -> dict[str, float]: ...
    def explain(self, error: BaseException) -> str: ...
    def check(self, request: GenerateRequest, uncompiled: str) -> None: ...
    def generate(self, batch: ImageBatch) -> Generated: ...
    def is_out_of_memory(self, error: BaseException) -> bool: ...
    def encode(self, image: Any, output_format: str) -> bytes: ...
    def status(self) -> dict: ...


LOADING, READY, FAILED = "loading", "ready", "failed"


def available_cores() -> int:
    """Cores this process may run on (a container's limit, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class Engine:
    def __init__(
        self,
        backend: Backend,
        config: BatchConfig,
        request_timeout_s: float,
        model_name: str,
        encoder_threads: int | None = None,
        load_attempts: int = 1,
        load_retry_s: float = 5.0,
        metrics: Recorder | None = None,
    ):
        self.backend = backend
        self.config = config
        self.request_timeout_s = request_timeout_s
        self.model_name = model_name
        self.metrics = metrics or Recorder()  # the base records nothing
        self.lifecycle = LOADING
        self.failure: str | None = None  # why the model could not start: one line
        self.load_attempts, self.load_retry_s = max(1, load_attempts), load_retry_s
        self.draining = False
        self.in_flight = 0
        self.startup_timings: dict[str, float] = {}
        self.replicas: int | None = None  # set by whoever hosts the engine (the deployment)
        self.batches_run = 0
        self.images_run = 0
        self._queue = BatchQueue()
        self._admission = Admission()
        self._loop_task: asyncio.Task | None = None
        self._pipeline = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdturbo-pipeline")
        # fpng and Pillow release the GIL while encoding: a batch's images encode in parallel.
        self._encoder = ThreadPoolExecutor(
            max_workers=encoder_threads or max(2, available_cores()),
            thread_name_prefix="sdturbo-encode",
        )
        self._loaded: Future | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> Future:
        """Load, optimise and warm up on the pipeline thread; returns at once."""
        if self._loaded is None:
            self._loaded = self._pipeline.submit(self._load)
        return self._loaded

    def _load(self) -> None:
        """Up to ``load_attempts`` tries (a backoff between them); then failed for good: /ping
        says why in one line, and no replica restarts the same failure in a loop."""
        start = time.perf_counter()
        for attempt in range(1, self.load_attempts + 1):
            try:
                self.startup_timings = self.backend.load()
                break
            except Exception as exc:
                reason = self.backend.explain(exc)
                # The traceback only when asked for (DEBUG): the line says what to do.
                logger.debug("model %s: start %d failed", self.model_name, attempt, exc_info=True)
                if attempt == self.load_attempts:
                    self.failure = reason
                    self.lifecycle = FAILED
                    logger.error("model %s failed to start: %s", self.model_name, reason)
                    raise ModelUnavailable(reason) from None
                wait_s = self.load_retry_s * attempt
                logger.warning(
                    "model %s failed to start (try %d of %d; again in %.0f s): %s",
                    self.model_name,
                    attempt,
                    self.load_attempts,
                    wait_s,
                    reason,
                )
                time.sleep(wait_s)
        self.lifecycle = READY
        logger.info(
            "model %s ready in %.1fs (%s)",
            self.model_name,
            time.perf_counter() - start,
            ", ".join(f"{name} {s:.1f}s" for name, s in self.startup_timings.items()),
        )

    @property
    def health(self) -> str:
        """healthy, loading, draining or failed: what /ping reports, read without waiting."""
        if self.lifecycle == FAILED:
            return "failed"
        if self.draining:
            return "draining"
        return "healthy" if self.lifecycle == READY else "loading"

    def ping(self) -> dict:
        """/ping's body (PingResponse), from state other threads keep current: no waiting."""
        body = {
            "status": self.health,
            "model": self.model_name,
            "replicas": self.replicas,
            "in_flight": self.in_flight,
        }
        if self.failure is not None:
            body["reason"] = self.failure
        return {**body, **self.backend.status()}

    def state(self) -> dict:
        """The queue and in-flight counts, read without waiting (the metrics sampler's)."""
        return {
            "queue_length": len(self._queue),
            "queued_units": self._queue.units,
            "queued_images": self._queue.images,
            "in_flight": self.in_flight,
        }

    def check_health(self) -> None:
        """Serve's health check. A model that failed to start does not raise here: Serve would
        replace the replica, whose start would fail the same way, forever. It stays failed
        instead, /ping says why, and ``sdturbo serve`` / ``serve run`` exit with that line."""

    def reconfigure(self, config: BatchConfig) -> None:
        self.config = config
        self._queue.notify()  # a waiting loop re-reads the new sizes

    async def drain(self, timeout_s: float) -> int:
        """Refuse new requests; wait for accepted ones; return how many are still running."""
        self.draining = True
        deadline = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.in_flight

    def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
        self._pipeline.shutdown(wait=False, cancel_futures=True)
        self._encoder.shutdown(wait=False, cancel_futures=True)

    # --- requests -------------------------------------------------------------------------

    async def generate(self, request: GenerateRequest, image: Any = None) -> GenerateResult:
        """``image``: image-to-image's input, decoded and resized (``api/images.py``)."""
        arrived = time.perf_counter()
        if (image is None) != (request.image is None):
            raise InvalidRequest("an image-to-image request needs its decoded image")
        self._admit(request)
        base = request.seed if request.seed is not None else secrets.randbelow(2**31)
        seeds = [(base + i) % 2**32 for i in range(request.num_images)]
        job = Job(request, seeds, asyncio.get_running_loop().create_future(), arrived, image)
        self._queue.put(job)
        self._ensure_loop()
        self.in_flight += 1
        try:
            return await asyncio.wait_for(self._finish(job), self.request_timeout_s)
        except asyncio.TimeoutError:
            raise TimedOut(f"not done within {self.request_timeout_s:g} s") from None
        finally:
            self._queue.remove(job)  # no-op once taken: a running call cannot be interrupted
            self.in_flight -= 1

    def refusal(self, request: GenerateRequest | None = None) -> EngineError | None:
        """Why a request would be refused now (None: it may wait). Without ``request``, as
        checked before its body is read: any request of no cost."""
        if self.draining:
            return ShuttingDown("the server is shutting down; retry elsewhere")
        if self.lifecycle == FAILED:
            return ModelUnavailable(f"the model failed to load ({self.failure})")
        images = self._queue.images + (request.num_images if request is not None else 0)
        return self._admission.refusal(
            len(self._queue),
            self._queue.units,
            self.config.max_queued_requests,
            self.request_timeout_s,
            calls=-(-images // self.config.max_batch_size),  # at least; more when sizes differ
            extra=cost_units(request) if request is not None else 0.0,
        )

    def _admit(self, request: GenerateRequest) -> None:
        if request.num_images > self.config.max_batch_size:
            raise InvalidRequest(
                f"num_images={request.num_images} exceeds this server's max_batch_size "
                f"({self.config.max_batch_size})"
            )
        self.backend.check(request, self.config.uncompiled)
        refusal = self.refusal(request)
        if refusal is not None:
            raise refusal

    async def _finish(self, job: Job) -> GenerateResult:
        outcome: Outcome = await job.future
        if outcome.error is not None:
            raise outcome.error
        loop = asyncio.get_running_loop()
        encode_start = time.perf_counter()
        images = await asyncio.gather(
            *(
                loop.run_in_executor(
                    self._encoder, self.backend.encode, image, job.request.output_format
                )
                for image in outcome.images
            )
        )
        done = time.perf_counter()
        self.metrics.encoded((done - encode_start) * 1000)
        return result_for(job, outcome, list(images), encode_start, done, self.backend.token_limit)

    # --- the batch loop -------------------------------------------------------------------

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._batch_loop())

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wrap_future(self.start())
        except BaseException:
            self._fail_waiting(ModelUnavailable(f"the model failed to load ({self.failure})"))
            return
        while True:
            await self._queue.wait()
            if self.config.batch_wait_timeout_s > 0:
                await self._queue.wait(self.config.max_batch_size, self.config.batch_wait_timeout_s)
            jobs = self._queue.take(self.config.max_batch_size)
            if not jobs:
                continue
            taken = time.perf_counter()
            for job in jobs:
                self.metrics.queue_wait((taken - job.arrived) * 1000)
            self._admission.call_started(sum(cost_units(job.request) for job in jobs))
            try:
                # The next batch is formed only when this call returns: the model is free.
                outcomes = await loop.run_in_executor(self._pipeline, self._run, jobs)
            except Exception:  # a bug in the engine itself: fail these, keep serving
                logger.exception("batch of %d requests failed", len(jobs))
                outcomes = [Outcome(error=GenerationFailed("image generation failed"))] * len(jobs)
            self._admission.call_finished()
            for job, outcome in zip(jobs, outcomes, strict=True):
                if not job.future.done():  # its caller may have timed out meanwhile
                    job.future.set_result(outcome)

    def _fail_waiting(self, error: EngineError) -> None:
        for job in self._queue.drain():
            if not job.future.done():
                job.future.set_result(Outcome(error=error))

    def _run(self, jobs: list[Job]) -> list[Outcome]:
        """On the pipeline thread: one call for the jobs, halved on out-of-memory."""
        outcomes = oom.run_halving(jobs, self._generate, self.backend.is_out_of_memory)
        self.batches_run += 1
        self.images_run += sum(job.images for job in jobs)
        return [outcomes[id(job)] for job in jobs]

    def _generate(self, batch: ImageBatch) -> Generated:
        """One backend call, measured (each half of an out-of-memory split counts as one)."""
        generated = self.backend.generate(batch)
        self.metrics.pipeline_call(
            len(batch.seeds), self.config.max_batch_size, generated.stages_ms
        )
        return generated
