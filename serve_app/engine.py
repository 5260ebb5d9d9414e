"""The engine: one pipeline thread, the batch loop that feeds it, admission, timeouts, drain.

No torch and no Ray here. The Ray deployment (``model.py``) owns one Engine; so can a plain
uvicorn process (the benchmark floor) or a test with a fake backend. Data flows one way:
request -> Job in the BatchQueue -> ImageBatch on the pipeline thread -> uint8 images ->
encoded in the encoder pool -> GenerateResult.

Threads: every pipeline call, load and warm-up included, runs on one dedicated thread, because
Inductor's CUDA-graph trees are per thread (torch ``_inductor/cudagraph_trees.py``) and a second
thread would record them again. Encoding runs in a pool, overlapping the next pipeline call.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from serve_app.batching import BatchQueue, CostModel, ImageBatch, Job, cost_units
from serve_app.config import BatchConfig
from serve_app.schemas import GenerateRequest, Timings

logger = logging.getLogger("sdturbo")


class EngineError(Exception):
    """A request the engine did not complete; the ingress maps each kind to a status."""


class InvalidRequest(EngineError):
    """Valid alone, but not for this server's configuration (422)."""


class Overloaded(EngineError):
    """The queue is full, or the request would not start before its deadline (503)."""


class ShuttingDown(EngineError):
    """Draining for shutdown: no new work (503)."""


class ModelUnavailable(EngineError):
    """The model failed to load (503: another instance may serve it)."""


class TimedOut(EngineError):
    """Not done within the request timeout (504)."""


class GenerationFailed(EngineError):
    """The pipeline call failed: ``kind`` is 'out_of_memory' (503) or 'internal_error' (500)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class Backend(Protocol):
    """What the engine needs of a pipeline. ``load`` and ``generate`` run on the pipeline
    thread, ``encode`` in the encoder pool; the rest is cheap and runs anywhere."""

    token_limit: int

    def load(self) -> dict[str, float]: ...
    def check(self, request: GenerateRequest) -> None: ...
    def generate(self, batch: ImageBatch) -> Sequence[Any]: ...
    def truncated(self, prompts: list[str]) -> list[bool]: ...
    def is_out_of_memory(self, error: BaseException) -> bool: ...
    def encode(self, image: Any, output_format: str) -> bytes: ...


@dataclass
class GenerateResult:
    """The engine's answer to one request: encoded images and how they were made."""

    images: list[bytes]
    seeds: list[int]
    warnings: list[str]
    timings: Timings


@dataclass
class Outcome:
    """What a pipeline call gave one job."""

    images: list = field(default_factory=list)
    batch_size: int = 0
    started: float = 0.0
    inference_s: float = 0.0
    truncated: bool = False
    error: EngineError | None = None


LOADING, READY, FAILED = "loading", "ready", "failed"


class Engine:
    def __init__(
        self,
        backend: Backend,
        config: BatchConfig,
        request_timeout_s: float,
        model_name: str,
        encoder_threads: int | None = None,
    ):
        self.backend = backend
        self.config = config
        self.request_timeout_s = request_timeout_s
        self.model_name = model_name
        self.state = LOADING
        self.failure: str | None = None
        self.draining = False
        self.in_flight = 0
        self.startup_timings: dict[str, float] = {}
        self.replicas: int | None = None  # set by whoever hosts the engine (the deployment)
        self.batches_run = 0
        self.images_run = 0
        self._queue = BatchQueue()
        self._costs = CostModel()
        self._running_units = 0.0
        self._running_since = 0.0
        self._loop_task: asyncio.Task | None = None
        self._pipeline = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdturbo-pipeline")
        # Pillow releases the GIL while encoding: a batch's images encode in parallel.
        self._encoder = ThreadPoolExecutor(
            max_workers=encoder_threads or max(2, os.cpu_count() or 2),
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
        start = time.perf_counter()
        try:
            self.startup_timings = self.backend.load()
        except BaseException as exc:
            self.failure = f"{type(exc).__name__}: {exc}"
            self.state = FAILED
            logger.exception("model %s failed to load", self.model_name)
            raise
        self.state = READY
        logger.info(
            "model %s ready in %.1fs (%s)",
            self.model_name,
            time.perf_counter() - start,
            ", ".join(f"{name} {s:.1f}s" for name, s in self.startup_timings.items()),
        )

    @property
    def status(self) -> str:
        """healthy, loading, draining or failed: what /ping reports, read without waiting."""
        if self.state == FAILED:
            return "failed"
        if self.draining:
            return "draining"
        return "healthy" if self.state == READY else "loading"

    def check_health(self) -> None:
        """Raise if this engine cannot serve (Serve then replaces the replica)."""
        if self.state == FAILED:
            raise RuntimeError(f"model failed to load: {self.failure}")

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

    async def generate(self, request: GenerateRequest) -> GenerateResult:
        arrived = time.perf_counter()
        self._admit(request)
        base = request.seed if request.seed is not None else secrets.randbelow(2**31)
        seeds = [(base + i) % 2**32 for i in range(request.num_images)]
        job = Job(request, seeds, asyncio.get_running_loop().create_future(), arrived)
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

    def refusal(self) -> EngineError | None:
        """Why any request would be refused now, before reading it (None: it may be taken)."""
        if self.draining:
            return ShuttingDown("the server is shutting down; retry elsewhere")
        if self.state == FAILED:
            return ModelUnavailable(f"the model failed to load ({self.failure})")
        if len(self._queue) >= self.config.max_queued_requests:
            return Overloaded(f"{len(self._queue)} requests are already waiting; retry shortly")
        return None

    def _admit(self, request: GenerateRequest) -> None:
        refusal = self.refusal()
        if refusal is not None:
            raise refusal
        if request.num_images > self.config.max_batch_size:
            raise InvalidRequest(
                f"num_images={request.num_images} exceeds this server's max_batch_size "
                f"({self.config.max_batch_size})"
            )
        self.backend.check(request)
        # Refuse now what could not finish in time anyway: a 503 in milliseconds beats a 504
        # after the full timeout, and leaves the queue to requests that will be served.
        wait_s = self._costs.seconds(self._queue.units + cost_units(request) + self._running_left())
        if wait_s > self.request_timeout_s:
            raise Overloaded(
                f"the queue holds ~{wait_s:.0f} s of work, more than the "
                f"{self.request_timeout_s:g} s timeout; retry shortly"
            )

    def _running_left(self) -> float:
        """Units of the running pipeline call not yet done, by the cost model's clock."""
        if not self._running_units or not self._costs.seconds_per_unit:
            return 0.0
        done = (time.perf_counter() - self._running_since) / self._costs.seconds_per_unit
        return max(0.0, self._running_units - done)

    async def _finish(self, job: Job) -> GenerateResult:
        outcome: Outcome = await job.future
        if outcome.error is not None:
            raise outcome.error
        request = job.request
        loop = asyncio.get_running_loop()
        encode_start = time.perf_counter()
        images = await asyncio.gather(
            *(
                loop.run_in_executor(
                    self._encoder, self.backend.encode, image, request.output_format
                )
                for image in outcome.images
            )
        )
        done = time.perf_counter()
        warnings = []
        if outcome.truncated:
            warnings.append(
                f"prompt was truncated to the text encoder's {self.backend.token_limit} tokens"
            )
        if request.negative_prompt and request.guidance_scale <= 1.0:
            warnings.append("negative_prompt is ignored unless guidance_scale > 1")
        return GenerateResult(
            images=list(images),
            seeds=job.seeds,
            warnings=warnings,
            timings=Timings(
                queue_ms=(outcome.started - job.arrived) * 1000,
                inference_ms=outcome.inference_s * 1000,
                encode_ms=(done - encode_start) * 1000,
                total_ms=(done - job.arrived) * 1000,
                batch_size=outcome.batch_size,
            ),
        )

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
            self._running_units = sum(cost_units(job.request) for job in jobs)
            self._running_since = time.perf_counter()
            try:
                # The next batch is formed only when this call returns: the model is free.
                outcomes = await loop.run_in_executor(self._pipeline, self._run, jobs)
            except Exception:  # a bug in the engine itself: fail these, keep serving
                logger.exception("batch of %d requests failed", len(jobs))
                error = GenerationFailed("internal_error", "image generation failed")
                outcomes = [Outcome(error=error)] * len(jobs)
            self._costs.observe(self._running_units, time.perf_counter() - self._running_since)
            self._running_units = 0.0
            for job, outcome in zip(jobs, outcomes, strict=True):
                if not job.future.done():  # its caller may have timed out meanwhile
                    job.future.set_result(outcome)

    def _fail_waiting(self, error: EngineError) -> None:
        while jobs := self._queue.take(2**31):
            for job in jobs:
                if not job.future.done():
                    job.future.set_result(Outcome(error=error))

    def _run(self, jobs: list[Job]) -> list[Outcome]:
        """On the pipeline thread: one call for the jobs, halved on out-of-memory."""
        outcomes: dict[int, Outcome] = {}
        self._run_split(jobs, outcomes)
        self.batches_run += 1
        self.images_run += sum(job.images for job in jobs)
        return [outcomes[id(job)] for job in jobs]

    def _run_split(self, jobs: list[Job], outcomes: dict[int, Outcome]) -> None:
        batch = ImageBatch.of(jobs)
        started = time.perf_counter()
        try:
            truncated = self.backend.truncated([job.request.prompt for job in jobs])
            images = self.backend.generate(batch)
        except Exception as exc:
            if not self.backend.is_out_of_memory(exc):
                # Only this call's requests fail; no traceback leaves the server.
                logger.exception("pipeline call of %d images failed", len(batch.seeds))
                error = GenerationFailed("internal_error", "image generation failed")
                outcomes.update({id(job): Outcome(error=error) for job in jobs})
            elif len(jobs) > 1:
                logger.warning("out of memory on %d requests: retrying as two halves", len(jobs))
                middle = len(jobs) // 2
                self._run_split(jobs[:middle], outcomes)
                self._run_split(jobs[middle:], outcomes)
            else:
                logger.error("out of memory on one request of %d images", jobs[0].images)
                error = GenerationFailed(
                    "out_of_memory",
                    "not enough accelerator memory for this request; retry, or ask for fewer "
                    "or smaller images",
                )
                outcomes[id(jobs[0])] = Outcome(error=error)
            return
        elapsed = time.perf_counter() - started
        offset = 0
        for job, cut in zip(jobs, truncated, strict=True):
            outcomes[id(job)] = Outcome(
                images=list(images[offset : offset + job.images]),
                batch_size=len(batch.seeds),
                started=started,
                inference_s=elapsed,
                truncated=cut,
            )
            offset += job.images
