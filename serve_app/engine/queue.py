"""The batch queue: requests wait here until the model is free, then go as one pipeline call.

Policy (batches formed when the model is free, not on a timer). Ray Serve's ``@serve.batch``
keeps forming the next batch while one runs, so a lone request always waits its window and a
batch holds "arrival rate x window". Here the engine's loop takes a batch only when the previous
pipeline call has returned: everything queued meanwhile (up to ``max_batch_size`` images of the
head request's key) goes at once, and an idle model starts a lone request at once
(``batch_wait_timeout_s`` can trade that latency for size).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from serve_app.engine.admission import cost_units
from serve_app.engine.batch import Job


class BatchQueue:
    """FIFO of waiting jobs; ``take`` forms a batch of the head job's key."""

    def __init__(self):
        self._jobs: deque[Job] = deque()
        # Cost units and images waiting, kept current: read per request (and by the metrics
        # sampler's thread), never summed then.
        self.units = 0.0
        self.images = 0
        self._changed: asyncio.Event | None = None  # made in the loop that waits on it

    def __len__(self) -> int:
        return len(self._jobs)

    def _event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def put(self, job: Job) -> None:
        self._jobs.append(job)
        self.units += cost_units(job.request)
        self.images += job.images
        self._event().set()

    def notify(self) -> None:
        self._event().set()

    def remove(self, job: Job) -> bool:
        """Drop a job that is still waiting (its caller timed out or went away)."""
        try:
            self._jobs.remove(job)
        except ValueError:
            return False  # already taken into a batch
        self._recount()
        return True

    def _recount(self) -> None:
        # Recomputed, not decremented: float drift never accumulates.
        self.units = sum(cost_units(job.request) for job in self._jobs)
        self.images = sum(job.images for job in self._jobs)

    def take(self, max_images: int) -> list[Job]:
        """The head job and every later job of its key that fits, in arrival order."""
        while self._jobs and self._jobs[0].future.done():  # cancelled while waiting
            self._jobs.popleft()
        if not self._jobs:
            self._recount()
            return []
        head = self._jobs.popleft()  # always taken, even if max_images shrank since it came
        batch, room, rest = [head], max_images - head.images, deque()
        for job in self._jobs:
            if job.future.done():
                continue
            if job.key == head.key and job.images <= room:
                batch.append(job)
                room -= job.images
            else:
                rest.append(job)
        self._jobs = rest
        self._recount()
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

    def drain(self) -> list[Job]:
        """Every waiting job, removed."""
        jobs, self._jobs = list(self._jobs), deque()
        self._recount()
        return jobs
