"""The model deployment: one replica serves HTTP itself and runs the model (one Ray hop).

The routes are ``serve_app.api``'s; this class gives them an Engine. Its constructor checks what can
fail at once (the device, the model folder: a failure there fails the deployment) and starts
loading on the engine's pipeline thread, so the replica answers /ping 503 while it loads and
compiles, and 200 once warm. Requests that arrive meanwhile wait in the queue.
"""

from __future__ import annotations

import logging
import os
import threading

from ray import serve

from serve_app.api import create_api
from serve_app.config import BatchConfig, MetricsSettings, ModelSettings
from serve_app.engine import Engine
from serve_app.engine.metrics import Recorder, Sampler
from serve_app.metrics import build_recorder, gpu_memory_bytes

logger = logging.getLogger("ray.serve")
# Admission is the engine's (it sheds with our 503 and Retry-After, by queue length and by the
# time the queue needs); Serve's own bound only has to let every request, /ping included,
# reach the replica's event loop at once, so it is set far above any queue.
SERVE_MAX_ONGOING_REQUESTS = 100_000
REPLICA_COUNT_PERIOD_S = 2.0


def log_with_serve() -> None:
    """The ``sdturbo`` loggers (the access lines among them) at INFO through Serve's replica
    handlers: the replica's log file and stderr, which reaches the container's output. A
    replica's root logger has none (Python's default, WARNING), so they would be dropped."""
    ours = logging.getLogger("sdturbo")
    if ours.handlers:
        return
    for handler in logging.getLogger("ray.serve").handlers:
        ours.addHandler(handler)
    if ours.level == logging.NOTSET:
        ours.setLevel(logging.INFO)
    ours.propagate = False


@serve.deployment(
    health_check_period_s=2,
    health_check_timeout_s=30,
    max_ongoing_requests=SERVE_MAX_ONGOING_REQUESTS,
    # One access line per request, ours (sdturbo.access: it has the queue wait), not two.
    logging_config={"enable_access_log": False},
)
@serve.ingress()  # the app is built per replica, around its engine: __serve_build_asgi_app__
class SDTurboModel:
    def __init__(
        self,
        settings: ModelSettings,
        request_timeout_s: float,
        backend_factory=None,
        metrics: MetricsSettings | None = None,
    ):
        if backend_factory is None:
            from serve_app.pipeline.backend import DiffusersBackend  # torch: only in the replica

            backend_factory = DiffusersBackend
        log_with_serve()
        self.settings = settings
        self.metrics = build_recorder(metrics or MetricsSettings())
        self.engine = Engine(
            backend_factory(settings),
            BatchConfig(),
            request_timeout_s,
            settings.model,
            load_attempts=settings.load_attempts,
            metrics=self.metrics,
        )
        self.engine.start()
        self.sampler = Sampler(self.engine, self.metrics, gpu_memory_bytes).start()
        self._stopped = threading.Event()
        threading.Thread(target=self._count_replicas, name="sdturbo-replicas", daemon=True).start()

    def _count_replicas(self) -> None:
        """Keep /ping's ``replicas`` current from the controller, off the request path."""
        app_name = serve.get_replica_context().app_name
        while not self._stopped.wait(REPLICA_COUNT_PERIOD_S):
            try:
                app = serve.status().applications[app_name]
                states = app.deployments["SDTurboModel"].replica_states
                self.engine.replicas = states.get("RUNNING", 0)
            except Exception:  # the controller restarting: keep the last count
                logger.debug("replica count not read", exc_info=True)

    def __serve_build_asgi_app__(self):
        # Serve echoes (or makes) X-Request-Id on every response itself: not twice.
        api = create_api(request_id_header=False)
        api.state.engine = self.engine
        return api

    async def reconfigure(self, user_config: dict) -> None:
        self.engine.reconfigure(BatchConfig.model_validate(user_config or {}))

    def record_metrics(self, on: bool) -> None:
        """Metrics and access lines on or off, at once: only to measure what they cost in one
        replica (``loadtest/bench_serving.py``)."""
        self.engine.metrics = self.metrics if on else Recorder()
        logging.getLogger("sdturbo.access").disabled = not on

    def check_health(self) -> None:
        self.engine.check_health()

    async def drain(self, timeout_s: float) -> dict:
        """Refuse new requests, finish accepted ones; ``sdturbo serve`` calls it on SIGTERM."""
        remaining = await self.engine.drain(timeout_s)
        return {"pid": os.getpid(), "remaining": remaining}

    def info(self) -> dict:
        engine = self.engine
        return {
            "model": self.settings.model,
            "status": engine.health,
            "failure": engine.failure,
            "max_batch_size": engine.config.max_batch_size,
            "batches_run": engine.batches_run,
            "images_run": engine.images_run,
            "startup_timings": engine.startup_timings,
            "pid": os.getpid(),
        }

    def __del__(self):  # also after a constructor that failed part-way
        if hasattr(self, "_stopped"):
            self._stopped.set()
        if hasattr(self, "sampler"):
            self.sampler.stop()
        if hasattr(self, "metrics"):
            self.metrics.close()  # the last EMF line
        if hasattr(self, "engine"):
            self.engine.close()
