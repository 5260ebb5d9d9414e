"""The model deployment: one replica serves HTTP itself and runs the model (one Ray hop).

The routes are ``ingress.py``'s; this class gives them an Engine. Its constructor checks what can
fail at once (the device, the model folder: a failure there fails the deployment) and starts
loading on the engine's pipeline thread, so the replica answers /ping 503 while it loads and
compiles, and 200 once warm. Requests that arrive meanwhile wait in the queue.
"""

from __future__ import annotations

import logging
import os
import threading

from ray import serve

from serve_app.config import BatchConfig, ModelSettings
from serve_app.engine import Engine
from serve_app.ingress import create_api

logger = logging.getLogger("ray.serve")
# Admission is the engine's (it sheds with our 503 and Retry-After, by queue length and by the
# time the queue needs); Serve's own bound only has to let every request, /ping included,
# reach the replica's event loop at once, so it is set far above any queue.
SERVE_MAX_ONGOING_REQUESTS = 100_000
REPLICA_COUNT_PERIOD_S = 2.0


# A failed load is noticed within a health-check period, and Serve replaces the replica.
@serve.deployment(
    health_check_period_s=2,
    health_check_timeout_s=30,
    max_ongoing_requests=SERVE_MAX_ONGOING_REQUESTS,
)
@serve.ingress()  # the app is built per replica, around its engine: __serve_build_asgi_app__
class SDTurboModel:
    def __init__(self, settings: ModelSettings, request_timeout_s: float, backend_factory=None):
        if backend_factory is None:
            from serve_app.pipeline import DiffusersBackend  # torch: only in the replica

            backend_factory = DiffusersBackend
        self.settings = settings
        self.engine = Engine(
            backend_factory(settings), BatchConfig(), request_timeout_s, settings.model
        )
        self.engine.start()
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
        api = create_api()
        api.state.engine = self.engine
        return api

    async def reconfigure(self, user_config: dict) -> None:
        self.engine.reconfigure(BatchConfig.model_validate(user_config or {}))

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
            "status": engine.status,
            "max_batch_size": engine.config.max_batch_size,
            "batches_run": engine.batches_run,
            "images_run": engine.images_run,
            "startup_timings": engine.startup_timings,
            "pid": os.getpid(),
        }

    def __del__(self):  # also after a constructor that failed part-way
        if hasattr(self, "_stopped"):
            self._stopped.set()
        if hasattr(self, "engine"):
            self.engine.close()
