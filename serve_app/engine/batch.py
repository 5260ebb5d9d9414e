"""What crosses between the engine and a backend: a job per request, an image batch per pipeline
call, and what the call returns. Plain data, no torch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from serve_app.schemas import GenerateRequest


def batch_key(request: GenerateRequest) -> tuple:
    """Requests with equal keys can share one pipeline call (image-to-image only with its own
    kind, at the same strength)."""
    return (
        request.width,
        request.height,
        request.num_inference_steps,
        request.guidance_scale,
        request.image_strength,
    )


@dataclass(eq=False)
class Job:
    """One request inside the engine, with the future its batch resolves."""

    request: GenerateRequest
    seeds: list[int]
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)
    image: Any = None  # image-to-image: the input, uint8 height x width x 3, resized

    @property
    def images(self) -> int:
        return len(self.seeds)

    @property
    def key(self) -> tuple:
        return batch_key(self.request)


@dataclass(frozen=True)
class ImageBatch:
    """One pipeline call: images that share size, steps and guidance (and for image-to-image,
    strength); ``init_images`` holds one input per seed, or is None for text-to-image."""

    prompts: list[str]
    negative_prompts: list[str]
    seeds: list[int]
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    init_images: list[Any] | None = None
    strength: float | None = None

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
            init_images=(
                [job.image for job in jobs for _ in job.seeds] if first.image is not None else None
            ),
            strength=first.image_strength,
        )


@dataclass
class Generated:
    """A pipeline call's result: one uint8 HxWx3 image per seed (on the host), which prompts
    the text encoder truncated, and milliseconds per stage."""

    images: Sequence[Any]
    truncated: list[bool]
    stages_ms: dict[str, float] = field(default_factory=dict)
