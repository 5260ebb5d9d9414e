"""The batch queue: requests wait here until the model is free, then go as one pipeline call.

Plain asyncio, no torch: the policy is tested with a fake pipeline of fixed cost.

Policy (issue: batches formed when the model is free, not on a timer). Ray Serve's
``@serve.batch`` keeps forming the next batch while one runs, so a lone request always waits its
window and a batch holds "arrival rate x window". Here the engine's loop takes a batch only when
the previous pipeline call has returned: everything queued meanwhile (up to ``max_batch_size``
images of the head request's shape) goes at once, and an idle model starts a lone request at
once (``batch_wait_timeout_s`` can trade that latency for size).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

from serve_app.schemas import GenerateRequest

# Relative cost of one image, for admission estimates: UNet 678 GFLOP a step and VAE decode
# 2,480 GFLOP at 512x512 (SD-Turbo, counted with torch's FlopCounterMode), both proportional to
# pixels. One 512x512 1-step image is one unit; measured speed turns units into seconds.
_UNET, _VAE = 678.0, 2480.0


def cost_units(request: GenerateRequest) -> float:
    pixels = request.width * request.height / 512**2
    steps = request.num_inference_steps * (2 if request.guidance_scale > 1 else 1)
    return pixels * (steps * _UNET + _VAE) / (_UNET + _VAE) * request.num_images


@dataclass(eq=False)
class Job:
    """One request inside the engine, with the future its batch resolves."""

    request: GenerateRequest
    seeds: list[int]
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)

    @property
    def images(self) -> int:
        return len(self.seeds)


@dataclass(frozen=True)
class ImageBatch:
    """One pipeline call: images that share size, steps and guidance."""

    prompts: list[str]
    negative_prompts: list[str]
    seeds: list[int]
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float

    @classmethod
    def of(cls, jobs: list[Job]) -> ImageBatch:
        first = jobs[0].request
        return cls(
            prompts=[job.request.prompt for job in jobs for _ in job.seeds],
            negative_prompts=[job.request.negative_prompt or "" for job in jobs for _ in job.seeds],
            seeds=[seed for job in jobs for seed in job.seeds],
            width=first.width,
            height=first.height,
            num_inference_steps=first.num_inference_steps,
            guidance_scale=first.guidance_scale,
        )


class BatchQueue:
    """FIFO of waiting jobs; ``take`` forms a batch of the head job's shape."""

    def __init__(self):
        self._jobs: deque[Job] = deque()
        self._changed: asyncio.Event | None = None  # made in the loop that waits on it

    def __len__(self) -> int:
        return len(self._jobs)

    @property
    def images(self) -> int:
        return sum(job.images for job in self._jobs)

    @property
    def units(self) -> float:
        return sum(cost_units(job.request) for job in self._jobs)

    def _event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def put(self, job: Job) -> None:
        self._jobs.append(job)
        self._event().set()

    def notify(self) -> None:
        self._event().set()

    def remove(self, job: Job) -> bool:
        """Drop a job that is still waiting (its caller timed out or went away)."""
        try:
            self._jobs.remove(job)
        except ValueError:
            return False  # already taken into a batch
        return True

    def take(self, max_images: int) -> list[Job]:
        """The head job and every later job of its shape that fits, in arrival order."""
        while self._jobs and self._jobs[0].future.done():  # cancelled while waiting
            self._jobs.popleft()
        if not self._jobs:
            return []
        head = self._jobs.popleft()  # always taken, even if max_images shrank since it came
        batch, room, rest = [head], max_images - head.images, deque()
        for job in self._jobs:
            if job.future.done():
                continue
            if job.request.shape_key() == head.request.shape_key() and job.images <= room:
                batch.append(job)
                room -= job.images
            else:
                rest.append(job)
        self._jobs = rest
        return batch

    async def wait(self, min_images: int = 1, timeout_s: float | None = None) -> None:
        """Until at least ``min_images`` wait (or ``timeout_s`` passes)."""
        event = self._event()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.images < min_images:
            event.clear()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except asyncio.TimeoutError:
                return


class CostModel:
    """Seconds per cost unit, an exponential moving average over finished pipeline calls."""

    def __init__(self, smoothing: float = 0.3):
        self.smoothing = smoothing
        self.seconds_per_unit: float | None = None

    def observe(self, units: float, seconds: float) -> None:
        if units <= 0:
            return
        sample = seconds / units
        if self.seconds_per_unit is None:
            self.seconds_per_unit = sample
        else:
            self.seconds_per_unit += self.smoothing * (sample - self.seconds_per_unit)

    def seconds(self, units: float) -> float:
        """Estimated seconds for that much work; 0 until something was measured."""
        return units * (self.seconds_per_unit or 0.0)
