"""Load shapes as plain data and state machines, free of Locust so they are testable anywhere.

``locustfile.py`` wraps them in a ``LoadTestShape``. Steady, step and spike are tables of named
stages; scale-from-zero reacts to the replica count it is fed:

1. wait until there are no replicas (Ray Serve ``min_replicas=0``; a SageMaker async endpoint
   scaled to 0 instances), sending nothing: a count that drops to 0, or 0 held for a while;
2. one user sends one request: time to the first image, split at the moment a replica runs;
3. a burst of users for a while, recording how replicas grow.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Stage:
    name: str
    until_s: float  # run time at which this stage ends
    users: int
    spawn_rate: float


def steady(users: int, seconds: float) -> list[Stage]:
    return [Stage("steady", seconds, users, max(1.0, users / 5))]


def step(users: int, seconds: float, steps: int = 4) -> list[Stage]:
    """`steps` equal increments up to `users`, each held for an equal share of the time."""
    return [
        Stage(
            f"step {i + 1}/{steps}",
            seconds * (i + 1) / steps,
            max(1, math.ceil(users * (i + 1) / steps)),
            float(users),
        )
        for i in range(steps)
    ]


def spike(users: int, seconds: float) -> list[Stage]:
    """A quarter of the users, then all of them at once for a fifth of the time, then back."""
    base = max(1, users // 4)
    return [
        Stage("base", seconds * 0.4, base, float(base)),
        Stage("spike", seconds * 0.6, users, float(users)),
        Stage("recover", seconds, base, float(users)),
    ]


SHAPES = {"steady": steady, "step": step, "spike": spike}


def stage_at(stages: list[Stage], run_time: float) -> Stage | None:
    """The stage running at `run_time`, None once the last has ended."""
    return next((stage for stage in stages if run_time < stage.until_s), None)


@dataclass
class ScaleFromZero:
    """The scale-from-zero run: feed it replica counts and request results, ask it for users."""

    burst_users: int = 16
    burst_seconds: float = 60.0
    zero_timeout_s: float = 900.0
    # A server still starting also shows 0 replicas: count zero only after seeing one replica
    # go, or after zero held this long (0 for SageMaker, whose InService-at-0 is unambiguous).
    zero_settle_s: float = 120.0
    first_timeout_s: float = 900.0
    phase: str = "wait_for_zero"
    started: float = field(default_factory=time.time)
    replicas: list[tuple[float, int]] = field(default_factory=list)  # (epoch s, count)
    seen_replica: bool = False
    zero_since: float | None = None
    zero_at: float | None = None
    submitted_at: float | None = None
    replica_at: float | None = None
    image_at: float | None = None
    first_timings: dict | None = None
    first_error: str | None = None
    burst_at: float | None = None
    error: str | None = None

    def observe_replicas(self, now: float, count: int | None) -> None:
        if count is None:
            return
        self.replicas.append((now, count))
        self.seen_replica = self.seen_replica or count > 0
        self.zero_since = (self.zero_since or now) if count == 0 else None
        if self.phase == "first_request" and count >= 1 and self.replica_at is None:
            self.replica_at = now

    def observe_request(
        self, start: float, end: float, ok: bool, timings: dict | None, error: str = ""
    ) -> None:
        """Record the first request sent after zero replicas were seen."""
        if self.phase != "first_request" or self.image_at is not None:
            return
        if self.zero_at is not None and start < self.zero_at:
            return
        self.submitted_at, self.image_at, self.first_timings = start, end, timings
        if not ok:
            self.first_error = error or "failed"

    def tick(self, now: float) -> tuple[int, float] | None:
        """Users and spawn rate for now, None when the run is over."""
        if self.phase == "wait_for_zero":
            settled = self.zero_since is not None and (
                self.seen_replica or now - self.zero_since >= self.zero_settle_s
            )
            if settled:
                self.phase, self.zero_at = "first_request", now
                return 1, 1.0
            if now - self.started > self.zero_timeout_s:
                self.error = f"replicas never reached 0 within {self.zero_timeout_s:g} s"
                return None
            return 0, 1.0
        if self.phase == "first_request":
            if self.image_at is not None:
                self.phase, self.burst_at = "burst", now
                return self.burst_users, float(self.burst_users)
            if now - (self.zero_at or now) > self.first_timeout_s:
                self.error = f"no first image within {self.first_timeout_s:g} s"
                return None
            return 1, 1.0
        if self.phase == "burst" and now - (self.burst_at or now) < self.burst_seconds:
            return self.burst_users, float(self.burst_users)
        self.phase = "done"
        return None

    def summary(self) -> dict:
        first = None
        if self.image_at is not None and self.submitted_at is not None:
            first = {
                "time_to_first_image_s": round(self.image_at - self.submitted_at, 3),
                "ok": self.first_error is None,
                "error": self.first_error,
                "phases_s": self._phases(),
                "server_timings_ms": self.first_timings,
            }
        burst = [(t, n) for t, n in self.replicas if self.burst_at and t >= self.burst_at]
        peak = max((n for _, n in burst), default=None)
        return {
            "waited_for_zero_s": round(self.zero_at - self.started, 1) if self.zero_at else None,
            "first_request": first,
            "burst": {
                "users": self.burst_users,
                "seconds": self.burst_seconds,
                "peak_replicas": peak,
                "seconds_to_peak": next(
                    (round(t - self.burst_at, 1) for t, n in burst if n == peak), None
                ),
            },
            "error": self.error,
        }

    def _phases(self) -> dict:
        """Submit -> a replica runs (scale decision, start, model load, warm-up) -> image."""
        if self.replica_at is None or self.submitted_at is None or self.image_at is None:
            return {}
        replica_at = min(max(self.replica_at, self.submitted_at), self.image_at)
        return {
            "until_replica_running": round(replica_at - self.submitted_at, 3),
            "replica_running_to_image": round(self.image_at - replica_at, 3),
        }


def http_replicas(session, host: str, timeout_s: float = 5.0) -> int | None:
    """Running model replicas from the server's /ping JSON (200 or 503); None if unreachable."""
    try:
        return int(session.get(host.rstrip("/") + "/ping", timeout=timeout_s).json()["replicas"])
    except Exception:  # a probe failure is a missing sample, not a failed test
        return None


def endpoint_instances(sagemaker, endpoint: str) -> int | None:
    """Current instances of an InService SageMaker endpoint (all variants); None otherwise."""
    try:
        description = sagemaker.describe_endpoint(EndpointName=endpoint)
    except Exception:
        return None
    if description.get("EndpointStatus") not in ("InService", "Updating"):
        return None  # Creating, Failed...: 0 instances there is not a scale to zero
    variants = description.get("ProductionVariants") or []
    return sum(int(v.get("CurrentInstanceCount") or 0) for v in variants)
