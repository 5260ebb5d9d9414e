"""Start the application on a fresh local Ray cluster, and stop it: the one way every entry point
(``sdturbo serve``, benchmarks, the soak, tests) runs a server, as Ray's docs do with a
``serve_session`` context manager.

The HTTP path is Ray Serve's HAProxy ingress (``RAY_SERVE_ENABLE_HA_PROXY=1``, HAProxy bundled
with ``ray[serve]``): one hop from HAProxy to the replica, measured at ~1.5 ms on a trivial app
where Serve's Python proxy costs ~13 ms. It must be in the environment before Ray starts; this
module sets it (and the rest below) for the processes it starts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator

import requests

from serve_app.config import AppArgs

RAY_ENVIRONMENT = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # Serve holds a draining ingress replica open this long (default 30 s) so a load balancer can
    # deregister it; SageMaker stops routing before SIGTERM and kills 30 s after, and
    # `sdturbo serve` drains requests itself first, so one second is enough.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
    # Network isolation: nothing may phone home.
    "RAY_USAGE_STATS_ENABLED": "0",
}
# Nothing large crosses Ray's object store here (requests and images stay in the replica that
# serves HTTP), so a small store will do; SageMaker's /dev/shm is 64 MB and fixed
# (aws/sagemaker-python-sdk#2801): where /dev/shm is smaller, the store lives in /tmp.
OBJECT_STORE_BYTES = 128 * 2**20


SIDE_PORTS = (
    "RAY_SERVE_HAPROXY_STATS_PORT",
    "RAY_SERVE_HAPROXY_METRICS_PORT",
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
)


def configure_ray_environment(environ=None) -> None:
    """Set Serve's settings for this process and the Ray processes it starts (unless set)."""
    environ = os.environ if environ is None else environ
    for key, value in RAY_ENVIRONMENT.items():
        environ.setdefault(key, value)
    # HAProxy's stats and metrics listeners and Serve's fallback proxy have fixed default ports
    # (8404, 9101, 8500): take free ones, so two servers (or a test run beside a server) never
    # collide.
    for key in SIDE_PORTS:
        environ.setdefault(key, str(free_port()))


def shm_bytes(path: str = "/dev/shm") -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


def ray_init_options(log_to_driver: bool = False) -> dict:
    options = {
        # Always a fresh single-node cluster for this process, never someone else's.
        "address": "local",
        "include_dashboard": False,
        "log_to_driver": log_to_driver,
        "object_store_memory": OBJECT_STORE_BYTES,
    }
    if shm_bytes() < OBJECT_STORE_BYTES + 16 * 2**20:
        options["_plasma_directory"] = tempfile.gettempdir()
    return options


def deploy(args: AppArgs, name: str = "sdturbo", route_prefix: str = "/", backend_factory=None):
    """Deploy (or update) one application on the running Serve instance."""
    from ray import serve

    from serve_app.app import compose

    return serve.run(compose(args, backend_factory), name=name, route_prefix=route_prefix)


@contextlib.contextmanager
def serve_session(
    args: AppArgs,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    name: str = "sdturbo",
    backend_factory=None,
    log_to_driver: bool = False,
) -> Iterator[str]:
    """Ray, Serve and the app on ``host:port``; yields the base URL; shuts everything down.

    Returns as soon as the replicas are constructed: they load and warm up in the background,
    answering /ping with 503 until ready (see ``wait_until_ready``).
    """
    configure_ray_environment()
    import ray
    from ray import serve

    ray.init(**ray_init_options(log_to_driver))
    try:
        serve.start(http_options={"host": host, "port": port})
        deploy(args, name=name, backend_factory=backend_factory)
        yield f"http://{host}:{port}"
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()


def wait_until_ready(url: str, timeout_s: float = 600, poll_s: float = 0.1) -> list[int | str]:
    """Poll ``url``/ping until 200; return every status seen (503 while loading).

    Raises RuntimeError if the model failed to load or the time runs out.
    """
    seen: list[int | str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            response = requests.get(url.rstrip("/") + "/ping", timeout=5)
            seen.append(response.status_code)
            if response.status_code == 200:
                return seen
            json_body = response.headers.get("content-type", "").startswith("application/json")
            if json_body and response.json().get("status") == "failed":
                raise RuntimeError(f"the model failed to load (see the replica's log): {url}")
        except requests.RequestException as exc:
            seen.append(type(exc).__name__)
        time.sleep(poll_s)
    raise RuntimeError(f"{url} not ready after {timeout_s:g} s; /ping gave {seen[-5:]}")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def uvicorn_session(engine, *, host: str = "127.0.0.1", port: int = 8000) -> Iterator[str]:
    """The same routes and engine under plain uvicorn in a thread, without Ray: the floor the
    serving benchmark compares Serve's HTTP path with, and a fast server for schema fuzzing."""
    import threading

    import uvicorn

    from serve_app.ingress import create_api

    api = create_api()
    api.state.engine = engine
    server = uvicorn.Server(uvicorn.Config(api, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    engine.start()
    url = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError(f"uvicorn did not start on {url}")
            time.sleep(0.01)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        engine.close()
