"""Admission: whether a request may wait for the model, decided in microseconds.

Refused at once (503, retry): the queue is full, or the work already waiting (plus what is left
of the running call, at the measured speed) would not finish well within the request timeout
(``ADMIT_WITHIN`` of it). A 503 in milliseconds beats a 504 after the full timeout, and leaves
the queue to requests that will be served. A request with nothing ahead of it is never refused
for its cost: retrying would bring it back to the same idle model.
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
    """Seconds per pipeline call as a fixed part plus seconds per cost unit, fitted by least
    squares over finished calls, each call weighing ``decay`` times less than the next.

    One ratio (seconds per unit) is not enough: a call's fixed part (kernel launches, the text
    encoder, Python) dominates a small image, so after small calls a ratio would see a queue of
    large ones as several times its real cost and shed it. Until calls of two sizes have been
    seen, or where the fit is not a fixed part and a positive slope, the ratio through zero is
    used (the cautious reading: all of it scales with the work)."""

    def __init__(self, decay: float = 0.8):
        self.decay = decay
        self._sums = (0.0, 0.0, 0.0, 0.0, 0.0)  # weight, units, seconds, units², units·seconds
        self.call_s = 0.0
        self.seconds_per_unit: float | None = None

    def observe(self, units: float, seconds: float) -> None:
        if units <= 0:
            return
        new = (1.0, units, seconds, units * units, units * seconds)
        weight, x, y, xx, xy = (
            self.decay * total + value for total, value in zip(self._sums, new, strict=True)
        )
        self._sums = (weight, x, y, xx, xy)
        spread = weight * xx - x * x
        slope = (weight * xy - x * y) / spread if spread > 1e-6 * weight * xx else 0.0
        if slope > 0.0 and slope * x <= y:
            self.call_s, self.seconds_per_unit = (y - slope * x) / weight, slope
        else:
            self.call_s, self.seconds_per_unit = 0.0, y / x

    def seconds(self, units: float, calls: int = 0) -> float:
        """Estimated seconds for that much work in that many calls; 0 until a call was seen."""
        if self.seconds_per_unit is None:
            return 0.0
        return calls * self.call_s + units * self.seconds_per_unit


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

    def _running_left_s(self) -> float:
        """Seconds the running call still needs, by the cost model."""
        if not self._running_units:
            return 0.0
        elapsed = time.perf_counter() - self._running_since
        return max(0.0, self.costs.seconds(self._running_units, calls=1) - elapsed)

    def refusal(
        self,
        queued: int,
        queued_units: float,
        max_queued: int,
        timeout_s: float,
        calls: int = 0,
        extra: float = 0,
    ) -> Overloaded | None:
        """Why a request (of ``extra`` units; 0 before its body is read) is refused now, with
        ``calls`` pipeline calls needed for what waits and for it."""
        if queued >= max_queued:
            return Overloaded(f"{queued} requests are already waiting; retry shortly")
        if not queued and not self._running_units:
            # Nothing ahead of it: a 503 would send it back to this same idle model. Alone, it
            # runs (an estimate from other sizes can be far off) and its call teaches the model.
            return None
        wait_s = self.costs.seconds(queued_units + extra, calls) + self._running_left_s()
        if wait_s > ADMIT_WITHIN * timeout_s:
            return Overloaded(
                f"the queue holds ~{wait_s:.0f} s of work, more than the {timeout_s:g} s "
                "timeout; retry shortly"
            )
        return None
