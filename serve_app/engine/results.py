"""What a request gets back: its images encoded, its seeds, warnings, and where its time went."""

from __future__ import annotations

from dataclasses import dataclass, field

from serve_app.engine.batch import Job
from serve_app.engine.errors import EngineError
from serve_app.schemas import Timings


@dataclass
class Outcome:
    """What a pipeline call gave one job."""

    images: list = field(default_factory=list)
    batch_size: int = 0
    started: float = 0.0
    inference_s: float = 0.0
    truncated: bool = False
    stages_ms: dict[str, float] = field(default_factory=dict)
    error: EngineError | None = None


@dataclass
class GenerateResult:
    """The engine's answer to one request: encoded images and how they were made."""

    images: list[bytes]
    seeds: list[int]
    warnings: list[str]
    timings: Timings
    stages_ms: dict[str, float] = field(default_factory=dict)


def warnings_for(job: Job, outcome: Outcome, token_limit: int) -> list[str]:
    warnings = []
    if outcome.truncated:
        warnings.append(f"prompt was truncated to the text encoder's {token_limit} tokens")
    request = job.request
    if request.negative_prompt and request.guidance_scale <= 1.0:
        warnings.append("negative_prompt is ignored unless guidance_scale > 1")
    return warnings


def result_for(
    job: Job, outcome: Outcome, images: list[bytes], encode_start: float, done: float, limit: int
) -> GenerateResult:
    return GenerateResult(
        images=images,
        seeds=job.seeds,
        warnings=warnings_for(job, outcome, limit),
        timings=Timings(
            queue_ms=(outcome.started - job.arrived) * 1000,
            inference_ms=outcome.inference_s * 1000,
            encode_ms=(done - encode_start) * 1000,
            total_ms=(done - job.arrived) * 1000,
            batch_size=outcome.batch_size,
        ),
        stages_ms=outcome.stages_ms,
    )
