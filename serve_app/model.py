"""The model deployment: load once, batch concurrent requests, generate, encode in parallel."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ray import serve

from serve_app.config import BatchConfig, ModelSettings
from serve_app.schemas import GenerateRequest, GenerationFailed, InvalidRequest

logger = logging.getLogger("ray.serve")


@dataclass
class Job:
    """One request inside the model replica."""

    request: GenerateRequest
    seeds: list[int]
    arrived: float = field(default_factory=time.perf_counter)


@dataclass
class JobResult:
    images: list = field(default_factory=list)  # uint8 arrays
    batch_size: int = 0
    started: float = 0.0
    inference_s: float = 0.0
    truncated: bool = False
    error: BaseException | None = None


def _group_key(request: GenerateRequest) -> tuple:
    # Only images of one size, step count and guidance can share a pipeline call.
    return (request.width, request.height, request.num_inference_steps, request.guidance_scale)


def _images_in(jobs: list[Job]) -> int:
    return sum(len(job.seeds) for job in jobs)


# A dead replica is noticed within a health-check period; /ping reports it from then on.
@serve.deployment(health_check_period_s=2, health_check_timeout_s=30)
class SDTurboModel:
    def __init__(self, settings: ModelSettings):
        from serve_app import pipeline

        self._pipeline = pipeline
        self.settings = settings
        self.max_batch_size = BatchConfig().max_batch_size
        # Load, compile cache, optimise, compile/warm-up: each phase logged with its time.
        # /ping turns 200 only once this returns, so only after warm-up.
        start = time.perf_counter()
        self.pipe, self.startup_timings = pipeline.prepare(settings, logger)
        logger.info(
            "model %s ready in %.1fs: %s",
            settings.model,
            time.perf_counter() - start,
            ", ".join(f"{name} {s:.1f}" for name, s in self.startup_timings.items()),
        )
        # Encoding runs in threads (Pillow releases the GIL), in parallel across a batch.
        self._encoder = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2))

    def reconfigure(self, user_config: dict) -> None:
        config = BatchConfig.model_validate(user_config or {})
        self.max_batch_size = config.max_batch_size
        self._run_batch.set_max_batch_size(config.max_batch_size)
        self._run_batch.set_batch_wait_timeout_s(config.batch_wait_timeout_s)

    def info(self) -> dict:
        return {
            "model": self.settings.model,
            "max_batch_size": self.max_batch_size,
            "pid": os.getpid(),
        }

    async def generate(self, request: GenerateRequest) -> dict:
        if request.num_images > self.max_batch_size:
            raise InvalidRequest(
                f"num_images={request.num_images} exceeds this server's max_batch_size "
                f"({self.max_batch_size})"
            )
        base = request.seed if request.seed is not None else secrets.randbelow(2**31)
        job = Job(request, [(base + i) % 2**32 for i in range(request.num_images)])
        result: JobResult = await self._run_batch(job)
        if result.error is not None:
            raise result.error
        loop = asyncio.get_running_loop()
        encode_start = time.perf_counter()
        encoded = await asyncio.gather(
            *(
                loop.run_in_executor(
                    self._encoder, self._pipeline.encode, image, request.output_format
                )
                for image in result.images
            )
        )
        warnings = []
        if result.truncated:
            limit = self.pipe.tokenizer.model_max_length
            warnings.append(f"prompt was truncated to the text encoder's {limit} tokens")
        if request.negative_prompt and request.guidance_scale <= 1.0:
            warnings.append("negative_prompt is ignored unless guidance_scale > 1")
        return {
            "images": list(encoded),
            "seeds": job.seeds,
            "model": self.settings.model,
            "warnings": warnings,
            "timings": {
                "queue_ms": (result.started - job.arrived) * 1000,
                "inference_ms": result.inference_s * 1000,
                "encode_ms": (time.perf_counter() - encode_start) * 1000,
                "batch_size": result.batch_size,
            },
        }

    # Batches are counted in images, not requests: a request for 4 images fills 4 slots.
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05, batch_size_fn=_images_in)
    async def _run_batch(self, jobs: list[Job]) -> list[JobResult]:
        results = {id(job): JobResult() for job in jobs}
        groups: dict[tuple, list[Job]] = defaultdict(list)
        for job in jobs:
            groups[_group_key(job.request)].append(job)
        for group in groups.values():
            # The pipeline runs in a thread: the replica's event loop keeps taking requests.
            await asyncio.to_thread(self._run_chunk, group, results)
        return [results[id(job)] for job in jobs]

    def _run_chunk(self, jobs: list[Job], results: dict[int, JobResult]) -> None:
        """Run jobs as one pipeline call; on out-of-memory, retry each half on its own."""
        import torch

        try:
            self._generate_into(jobs, results)
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(jobs) > 1:
                logger.warning("out of memory on %d requests: retrying as two halves", len(jobs))
                middle = len(jobs) // 2
                self._run_chunk(jobs[:middle], results)
                self._run_chunk(jobs[middle:], results)
                return
            logger.error("out of memory on a single request of %d images", len(jobs[0].seeds))
            results[id(jobs[0])].error = GenerationFailed(
                "out_of_memory",
                "not enough accelerator memory for this request; retry, or ask "
                "for fewer or smaller images",
            )
        except Exception:
            # Only the jobs of this call fail; the replica stays up. No traceback leaves it.
            logger.exception("pipeline call of %d requests failed", len(jobs))
            for job in jobs:
                results[id(job)].error = GenerationFailed(
                    "internal_error", "image generation failed"
                )

    def _generate_into(self, jobs: list[Job], results: dict[int, JobResult]) -> None:
        first = jobs[0].request
        batch = self._pipeline.ImageBatch(
            prompts=[job.request.prompt for job in jobs for _ in job.seeds],
            negative_prompts=[job.request.negative_prompt or "" for job in jobs for _ in job.seeds],
            seeds=[seed for job in jobs for seed in job.seeds],
            width=first.width,
            height=first.height,
            num_inference_steps=first.num_inference_steps,
            guidance_scale=first.guidance_scale,
        )
        if 0 < self.settings.inject_oom_above < len(batch.seeds):
            import torch

            raise torch.OutOfMemoryError(f"injected: {len(batch.seeds)} images in one call")
        started = time.perf_counter()
        truncated = self._pipeline.truncated_prompts(
            self.pipe, [job.request.prompt for job in jobs]
        )
        images = self._pipeline.generate(self.pipe, batch)
        elapsed = time.perf_counter() - started
        offset = 0
        for job, cut in zip(jobs, truncated, strict=True):
            result = results[id(job)]
            result.images = list(images[offset : offset + len(job.seeds)])
            result.batch_size = len(batch.seeds)
            result.started, result.inference_s, result.truncated = started, elapsed, cut
            offset += len(job.seeds)
