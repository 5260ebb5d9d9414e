"""Shared fixtures: the tiny model; the HTTP app in-process on a fake engine (fast); one real
Ray Serve server for the whole run (slow), on which other tests deploy their own apps."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

# One OpenMP thread per process, for this process and every one it starts (servers, builds,
# benchmarks; Ray's replicas get one per CPU they reserve anyway). Two pytest-xdist workers
# already fill the two cores: with torch's default of a thread per core, each process's
# OpenMP threads spin-wait for the other's, and the suite's CPU time nearly doubles (the
# tiny-model tests: 69 CPU-s with the default, 42 with one thread). Set before torch loads.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import requests
import torch

from loadtest.fakes import FixedCostBackend
from serve_app.config import AppArgs, BatchConfig
from serve_app.engine import Engine
from serve_app.models.tiny import ensure_tiny_model
from serve_app.ports import reserved_port

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # if a plugin loaded torch first

# Replicas report their metrics every second (Ray's default: 10 s), so tests wait less.
os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")

REPO = Path(__file__).resolve().parents[1]

# pytest-xdist (pyproject's addopts: -n 2 --dist loadgroup --no-loadscope-reorder). A group's
# tests run on one worker, in order:
# - "ray": the tests on the shared `server` (Ray in the worker's own process), first.
# - "clusters": the command-line tests, each starting a server (and its Ray cluster) of its own
#   as a subprocess, one at a time (two `serve run`s would both want Ray's dashboard port).
# - "deployment": the tests on terraform's applied stack (tests/infra/conftest.py's session
#   fixture, one apply against moto instead of one per worker).
# - every other test: its module's group, so module-scoped fixtures are built on one worker.
# What tests on both workers need (the compiled artifact, the client venv) is built once per run
# (``built_once``). Groups are queued longest first (LONGEST, from `pytest --durations`), so
# no long group starts last while the other worker idles.
CLUSTER_MODULES = {"test_cli.py", "test_startup_failures.py"}
LONGEST = [
    "ray", "tests/test_optimize.py", "deployment", "tests/container/test_image.py", "clusters"
]  # fmt: skip


@pytest.hookimpl(tryfirst=True)  # before xdist's, which turns the groups into node ids
def pytest_collection_modifyitems(config, items):
    def group(item) -> str:
        if "server" in item.fixturenames:
            return "ray"
        if item.path.name in CLUSTER_MODULES and item.get_closest_marker("integration"):
            return "clusters"
        if "deployment" in item.fixturenames:
            return "deployment"
        return str(item.path.relative_to(config.rootpath))

    groups = {item: group(item) for item in items}
    for item, name in groups.items():
        item.add_marker(pytest.mark.xdist_group(name))

    # Stable: collection order within a group and among the short ones. The compiled artifact
    # is built by the first test that needs it in tests/test_optimize.py's group (queued
    # second, so on the other worker from the start); the Ray group's tests on it come last,
    # when it is built, so the Ray worker never waits for the build.
    def order(item) -> tuple[int, int]:
        name = groups[item]
        compiled = "compiled_artifact" in item.fixturenames
        return LONGEST.index(name) if name in LONGEST else 99, compiled if name == "ray" else (
            -compiled
        )

    items.sort(key=order)


def built_once(tmp_path_factory, worker_id: str, name: str, build) -> Path:
    """``build(folder)`` once per test run, whichever pytest-xdist worker asks first; a worker
    that asks while another builds waits for it (a file lock in the run's shared temp folder)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = base if worker_id == "master" else base.parent  # parent: this run's, all workers'
    folder, done = root / name, root / f"{name}.done"
    with FileLock(root / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a failed build's leftovers
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


# What the compiled artifact covers: small enough to compile in well under a minute.
COMPILED = {
    "compile": True,
    "compile_mode": "default",
    "warmup_sizes": [64],
    "batch_buckets": [1],
}


@pytest.fixture(scope="session")
def compiled_artifact(tmp_path_factory, worker_id) -> Path:
    """The tiny model compiled (UNet step, VAE decode, text encoder; COMPILED's one shape) by
    ``optimize build`` in its own process, as a user runs it, then extracted as SageMaker
    extracts model.tar.gz. Built once per run: tests/test_optimize.py uses it on both workers
    (in a fresh process, and served through Ray)."""

    def build(folder: Path) -> None:
        output = folder / "model.tar.gz"
        proc = subprocess.run(
            [sys.executable, "-m", "optimize", "build", "--model", "tiny", "--device", "cpu",
             "--output", str(output), "--compile", "--compile-mode", COMPILED["compile_mode"],
             "--warmup-sizes", "64", "--batch-buckets", "1"],
            cwd=REPO, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        with tarfile.open(output) as tar:
            tar.extractall(folder / "extracted", filter="data")
        # A container reads it as root: readable whatever the umask.
        (folder / "extracted").chmod(0o755)

    return built_once(tmp_path_factory, worker_id, "compiled-artifact", build) / "extracted"


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    return ensure_tiny_model()


@pytest.fixture(scope="session")
def tiny_pipe(tiny_model_dir):
    from serve_app.pipeline import loading

    device = loading.resolve_device("cpu")
    return loading.load_pipeline(str(tiny_model_dir), device, loading.resolve_dtype("auto", device))


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """The AWS API for the client's and the artifact upload's tests: moto's server in a thread
    of this process, on a port the kernel picks. (tests/infra runs moto as terraform's, in its
    own process with a shim for what moto lacks: tests/infra/conftest.py.)"""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        yield "http://{}:{}".format(*server.get_host_and_port())
    finally:
        server.stop()


@pytest.fixture
def aws_credentials(monkeypatch) -> None:
    """Credentials moto accepts, and no profile of this machine's."""
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def fake_engine(timeout_s: float = 30, config: BatchConfig | None = None, **backend) -> Engine:
    options = {"base_s": 0.001, "per_image_s": 0.0, **backend}
    return Engine(FixedCostBackend(**options), config or BatchConfig(), timeout_s, "fake")


@pytest.fixture
def http():
    """The routes and a real Engine on a fake backend, in this process (no Ray, no model)."""
    from fastapi.testclient import TestClient

    from serve_app.api import create_api

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

    with reserved_port() as port, serve_session(AppArgs(**TEST_APP_ARGS), port=port) as url:
        yield Server(url, wait_until_ready(url, timeout_s=300))


def deploy_app(
    server: Server, name: str, backend_factory=None, version: str | None = None, **args
) -> Server:
    """Another application on the shared server, at /<name>; ready when this returns."""
    from serve_app.server import deploy, wait_until_ready

    # A quarter CPU each: the test cluster has two, and several apps live beside the main one.
    args.setdefault("num_cpus", 0.25)
    route = f"/{name}"
    deploy(AppArgs(**args), name, route, backend_factory=backend_factory, version=version)
    url = f"{server.url}/{name}"
    return Server(url, wait_until_ready(url, timeout_s=300))


def fixed_cost(**options):
    """A backend factory for deploy_app: the fake, built in the replica."""
    return functools.partial(FixedCostBackend, **options)


def own_cluster_environment(environ=None) -> dict[str, str]:
    """For a server started as a subprocess: its own Ray cluster, never the test run's (its
    side listeners' ports follow from its HTTP port, serve_app.ports), and a Prometheus port
    Ray picks (``sdturbo serve``'s fixed default is for a machine with one server)."""
    environ = os.environ if environ is None else environ
    return {**environ, "RAY_ADDRESS": "local", "SDTURBO_METRICS_PORT": "0"}


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A port nothing listens on while the context lasts: bound by the kernel's choice, never
    listened on, held (a connection to it is refused, and nobody else can take it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def listeners(pid: int) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every listening TCP socket of ``pid`` and its
    descendants (Ray's processes and HAProxy are children of the process that started Ray)."""
    import psutil

    root = psutil.Process(pid)
    names = {}
    for process in [root, *root.children(recursive=True)]:
        # A process that exits between the listing and the read listens on nothing.
        with contextlib.suppress(psutil.NoSuchProcess):
            names[process.pid] = process.name()
    return sorted(
        (c.laddr.ip, c.laddr.port, names[c.pid])
        for c in psutil.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.pid in names
    )


def wait_until_all_arrived(url: str, futures, timeout_s: float = 60) -> int:
    """Poll a one-replica server's /ping until every request in ``futures`` has reached it:
    answered (its future done) or in flight. Returns how many are in flight then. Counting the
    answered ones too means a fast first answer cannot hide a request that arrived (waiting for
    ``in_flight == len(futures)`` raced the first answer against the last arrival)."""
    deadline = time.monotonic() + timeout_s
    while True:
        # Answers first: one that lands between the two reads is counted in neither (we poll
        # again), never in both.
        answered = sum(future.done() for future in futures)
        in_flight = requests.get(url + "/ping", timeout=5).json()["in_flight"]
        if answered + in_flight >= len(futures):
            return in_flight
        assert time.monotonic() < deadline, f"{answered} answered, {in_flight} in flight"
        time.sleep(0.05)


def wait_for(predicate, timeout_s: float = 30, poll_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while not (result := predicate()):
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(poll_s)
    return result
