"""Shared fixtures: the tiny model; the HTTP app in-process on a fake engine (fast); one real
Ray Serve server for the whole run (slow), on which other tests deploy their own apps."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import pytest
import requests

from loadtest.fakes import FixedCostBackend
from serve_app.config import AppArgs, BatchConfig
from serve_app.engine import Engine
from serve_app.server import configure_ray_environment, free_port
from serve_app.tiny import ensure_tiny_model

# Before any Ray process starts: the HAProxy ingress and the rest of the server's settings.
configure_ray_environment()


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    return ensure_tiny_model()


@pytest.fixture(scope="session")
def tiny_pipe(tiny_model_dir):
    from serve_app import pipeline

    device = pipeline.resolve_device("cpu")
    return pipeline.load_pipeline(
        str(tiny_model_dir), device, pipeline.resolve_dtype("auto", device)
    )


def fake_engine(timeout_s: float = 30, config: BatchConfig | None = None, **backend) -> Engine:
    options = {"base_s": 0.001, "per_image_s": 0.0, **backend}
    return Engine(FixedCostBackend(**options), config or BatchConfig(), timeout_s, "fake")


@pytest.fixture
def http():
    """The routes and a real Engine on a fake backend, in this process (no Ray, no model)."""
    from fastapi.testclient import TestClient

    from serve_app.ingress import create_api

    api = create_api()
    api.state.engine = fake_engine()
    with TestClient(api) as client:
        client.engine = api.state.engine
        yield client
    api.state.engine.close()


class Server:
    """A running Serve application over HTTP, and what /ping said while it started."""

    def __init__(self, url: str, ping_statuses: list):
        self.url = url
        self.ping_statuses = ping_statuses

    def post(self, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 60)
        return requests.post(self.url + path, **kwargs)

    def predict(self, **fields) -> requests.Response:
        return self.post("/predict", json={"prompt": "a cat astronaut on the moon", **fields})


# Small images keep the tiny model fast on 2 cores.
TEST_APP_ARGS = {"model": "tiny", "device": "cpu", "warmup_sizes": [64], "max_batch_size": 8}


@pytest.fixture(scope="session")
def server():
    """One real server (Ray Serve, HAProxy, the tiny model) for the whole test run."""
    from serve_app.server import serve_session, wait_until_ready

    with serve_session(AppArgs(**TEST_APP_ARGS), port=free_port()) as url:
        yield Server(url, wait_until_ready(url, timeout_s=300))


def deploy_app(server: Server, name: str, backend_factory=None, **args) -> Server:
    """Another application on the shared server, at /<name>; ready when this returns."""
    from serve_app.server import deploy, wait_until_ready

    # A quarter CPU each: the test cluster has two, and several apps live beside the main one.
    args.setdefault("num_cpus", 0.25)
    deploy(AppArgs(**args), name=name, route_prefix=f"/{name}", backend_factory=backend_factory)
    url = f"{server.url}/{name}"
    return Server(url, wait_until_ready(url, timeout_s=300))


def fixed_cost(**options):
    """A backend factory for deploy_app: the fake, built in the replica."""
    return functools.partial(FixedCostBackend, **options)


def wait_for(predicate, timeout_s: float = 30, poll_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while not (result := predicate()):
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(poll_s)
    return result
