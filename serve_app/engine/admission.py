"""Admission: whether a request may wait for the model, decided in microseconds.

Refused at once (503, retry): the queue is full, or the work already waiting (plus what is left
of the running call, at the measured speed) would not finish well within the request timeout
(``ADMIT_WITHIN`` of it). A 503
in milliseconds beats a 504 after the full timeout, and leaves the queue to requests that will
be served.
"""

from __future__ import annotations

import time

from serve_app.engine.errors import Overloaded
from serve_app.schemas import GenerateRequest

# Relative cost of one image, for admission estimates: UNet 678 GFLOP a step and VAE decode
# 2,480 GFLOP at 512x512 (SD-Turbo, counted with torch's FlopCounterMode), both proportional to
# pixels. One 512x512 1-step image is one unit; measured speed turns units into seconds.
_UNET, _VAE = 678.0, 2480.0
# Admit only work the measured speed finishes well inside the timeout: the estimate is an
# average, and the speed varies (a replica sharing its host, a cold shape, the average lagging
# a slowdown). A request admitted at 100 % of the timeout by the average times out half the
# time; one admitted within 75 % of it has room for a third of a slowdown.
ADMIT_WITHIN = 0.75


def cost_units(request: GenerateRequest) -> float:
    pixels = request.width * request.height / 512**2
    steps = request.num_inference_steps * (2 if request.guidance_scale > 1 else 1)
    return pixels * (steps * _UNET + _VAE) / (_UNET + _VAE) * request.num_images


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


class Admission:
    """The cost model, and the pipeline call in progress, turned into refusals."""

    def __init__(self):
        self.costs = CostModel()
        self._running_units = 0.0
        self._running_since = 0.0

    def call_started(self, units: float) -> None:
        self._running_units, self._running_since = units, time.perf_counter()

    def call_finished(self) -> None:
        self.costs.observe(self._running_units, time.perf_counter() - self._running_since)
        self._running_units = 0.0

    def _running_left(self) -> float:
        """Units of the running call not yet done, by the cost model's clock."""
        if not self._running_units or not self.costs.seconds_per_unit:
            return 0.0
        done = (time.perf_counter() - self._running_since) / self.costs.seconds_per_unit
        return max(0.0, self._running_units - done)

    def refusal(
        self, queued: int, queued_units: float, max_queued: int, timeout_s: float, extra: float = 0
    ) -> Overloaded | None:
        """Why a request (of ``extra`` units; 0 before its body is read) is refused now."""
        if queued >= max_queued:
            return Overloaded(f"{queued} requests are already waiting; retry shortly")
        wait_s = self.costs.seconds(queued_units + extra + self._running_left())
        if wait_s > ADMIT_WITHIN * timeout_s:
            return Overloaded(
                f"the queue holds ~{wait_s:.0f} s of work, more than the {timeout_s:g} s "
                "timeout; retry shortly"
            )
        return None
