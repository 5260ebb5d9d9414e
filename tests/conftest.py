"""Shared fixtures: the tiny model, a Ray cluster, and the real Serve application over HTTP."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import pytest
import requests

from serve_app.tiny import ensure_tiny_model


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return ensure_tiny_model()


@pytest.fixture(scope="session")
def tiny_pipe(tiny_model_dir):
    from serve_app import pipeline

    device = pipeline.resolve_device("cpu")
    return pipeline.load_pipeline(
        str(tiny_model_dir), device, pipeline.resolve_dtype("auto", device)
    )


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


class Server:
    """A running Serve application and what was seen of /ping while it started."""

    def __init__(self, url: str, ping_statuses: list[int]):
        self.url = url
        self.ping_statuses = ping_statuses

    def post(self, path: str, **kwargs) -> requests.Response:
        return requests.post(self.url + path, timeout=60, **kwargs)

    def predict(self, **fields) -> requests.Response:
        return self.post("/predict", json={"prompt": "a cat astronaut on the moon", **fields})


def start_app(args: dict, port: int) -> Server:
    """Deploy the app in a thread and poll /ping from the start, recording each status."""
    from ray import serve

    from serve_app import build_app
    from serve_app.config import AppArgs

    serve.start(http_options={"host": "127.0.0.1", "port": port})
    deploy = threading.Thread(target=serve.run, args=(build_app(AppArgs(**args)),), daemon=True)
    deploy.start()
    url, statuses = f"http://127.0.0.1:{port}", []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.ConnectionError):
            statuses.append(requests.get(url + "/ping", timeout=5).status_code)
        if statuses and statuses[-1] == 200:
            break
        time.sleep(0.1)
    deploy.join(timeout=60)
    assert statuses and statuses[-1] == 200, f"server never became healthy: {statuses[-10:]}"
    return Server(url, statuses)


# Small images keep the tiny model fast on 2 cores; a wide batch window makes batching certain.
TEST_APP_ARGS = {
    "model": "tiny",
    "device": "cpu",
    "warmup_sizes": [64],
    "max_batch_size": 8,
    "batch_wait_timeout_s": 0.2,
}


@pytest.fixture(scope="module")
def server(ray_cluster):
    from ray import serve

    yield start_app(TEST_APP_ARGS, free_port())
    serve.shutdown()
