"""The out-of-memory policy: a pipeline call that runs out of accelerator memory is retried as
two halves (by request), down to a single request, which alone gets ``OutOfMemory``.

Any other failure fails only that call's requests (``GenerationFailed``, traceback logged,
none returned): the server keeps serving.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from serve_app.engine.batch import Generated, ImageBatch, Job
from serve_app.engine.errors import GenerationFailed, OutOfMemory
from serve_app.engine.results import Outcome

logger = logging.getLogger("sdturbo")


def run_halving(
    jobs: list[Job],
    generate: Callable[[ImageBatch], Generated],
    is_out_of_memory: Callable[[BaseException], bool],
) -> dict[int, Outcome]:
    """Outcomes by ``id(job)``, every job with one."""
    outcomes: dict[int, Outcome] = {}
    _run(jobs, generate, is_out_of_memory, outcomes)
    return outcomes


def _run(jobs, generate, is_out_of_memory, outcomes) -> None:
    batch = ImageBatch.of(jobs)
    started = time.perf_counter()
    try:
        result = generate(batch)
    except Exception as exc:
        if not is_out_of_memory(exc):
            logger.exception("pipeline call of %d images failed", len(batch.seeds))
            error = GenerationFailed("image generation failed")
            outcomes.update({id(job): Outcome(error=error) for job in jobs})
        elif len(jobs) > 1:
            logger.warning("out of memory on %d requests: retrying as two halves", len(jobs))
            middle = len(jobs) // 2
            _run(jobs[:middle], generate, is_out_of_memory, outcomes)
            _run(jobs[middle:], generate, is_out_of_memory, outcomes)
        else:
            logger.error("out of memory on one request of %d images", jobs[0].images)
            outcomes[id(jobs[0])] = Outcome(
                error=OutOfMemory(
                    "not enough accelerator memory for this request; retry, or ask for fewer "
                    "or smaller images"
                )
            )
        return
    elapsed = time.perf_counter() - started
    offset = 0
    for job, cut in zip(jobs, _per_job(result.truncated, jobs), strict=True):
        outcomes[id(job)] = Outcome(
            images=list(result.images[offset : offset + job.images]),
            batch_size=len(batch.seeds),
            started=started,
            inference_s=elapsed,
            truncated=cut,
            stages_ms=result.stages_ms,
        )
        offset += job.images


def _per_job(truncated: list[bool], jobs: list[Job]) -> list[bool]:
    """Per-image flags to per-request ones (a request's images share its prompt)."""
    flags, offset = [], 0
    for job in jobs:
        flags.append(any(truncated[offset : offset + job.images]))
        offset += job.images
    return flags
