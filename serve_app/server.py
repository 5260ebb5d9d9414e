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
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from serve_app.config import AppArgs
from serve_app.ports import side_ports

RAY_ENVIRONMENT = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # Serve holds a draining ingress replica open this long (default 30 s) so a load balancer can
    # deregister it; SageMaker stops routing before SIGTERM and kills 30 s after, and
    # `sdturbo serve` drains requests itself first, so one second is enough.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
    # Network isolation: nothing may phone home.
    "RAY_USAGE_STATS_ENABLED": "0",
    # The node's address is the loopback one (Ray's choice on macOS and Windows; on Linux it
    # otherwise takes the host's address, ray/_private/services.py get_node_ip_address). The
    # cluster is one node, always ours; its metrics agent then binds the metrics export port
    # to 127.0.0.1 only (dashboard/modules/reporter/reporter_agent.py), as Ray's internal
    # ports; HTTP still binds the host serve_session is given.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}

# Nothing large crosses Ray's object store here (requests and images stay in the replica that
# serves HTTP), so a small store will do; SageMaker's /dev/shm is 64 MB and fixed
# (aws/sagemaker-python-sdk#2801): where /dev/shm is smaller, the store lives in /tmp.
OBJECT_STORE_BYTES = 128 * 2**20


def configure_ray_environment(http_port: int, environ=None) -> None:
    """Set Serve's settings for this process and the Ray processes it starts (unless set), and
    the side listeners' ports for the server on ``http_port`` (``serve_app.ports``)."""
    environ = os.environ if environ is None else environ
    for key, value in RAY_ENVIRONMENT.items():
        environ.setdefault(key, value)
    # Always those of this server: a port left in the environment by another server started
    # from this process (a test run's) would be that server's.
    environ.update({key: str(port) for key, port in side_ports(http_port).items()})


def shm_bytes(path: str = "/dev/shm") -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


def ray_init_options(log_to_driver: bool = False, metrics_port: int | None = None) -> dict:
    """``metrics_port``: where Ray's metrics agent serves Prometheus' /metrics (None: a free
    port Ray picks; ``metrics_url`` reads it back)."""
    options = {
        # Always a fresh single-node cluster for this process, never someone else's.
        "address": "local",
        "include_dashboard": False,
        "log_to_driver": log_to_driver,
        "object_store_memory": OBJECT_STORE_BYTES,
    }
    if metrics_port is not None:
        options["_metrics_export_port"] = metrics_port
    if shm_bytes() < OBJECT_STORE_BYTES + 16 * 2**20:
        options["_plasma_directory"] = tempfile.gettempdir()
    return options


def own_stdout() -> str:
    """This process's standard output, as a path another process can append to: replicas
    write EMF lines there, not through Ray's log forwarding, which prefixes each line with the
    worker's name (and CloudWatch needs the line to be the JSON object alone)."""
    path = f"/proc/{os.getpid()}/fd/1"
    return path if os.path.exists(path) else "-"


def metrics_url() -> str:
    """The running node's Prometheus endpoint (Ray's metrics agent)."""
    import ray

    node = next(node for node in ray.nodes() if node["Alive"])
    return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"


def deploy(
    args: AppArgs,
    name: str = "sdturbo",
    route_prefix: str = "/",
    backend_factory=None,
    version: str | None = None,
):
    """Deploy (or update) one application on the running Serve instance; under the same
    ``version``, an update of the batch knobs only reconfigures the running replicas."""
    from ray import serve

    from serve_app.app import compose

    application = compose(args, backend_factory, version)
    return serve.run(application, name=name, route_prefix=route_prefix)


@contextlib.contextmanager
def serve_session(
    args: AppArgs,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    name: str = "sdturbo",
    backend_factory=None,
    log_to_driver: bool = False,
    metrics_port: int | None = None,
) -> Iterator[str]:
    """Ray, Serve and the app on ``host:port``; yields the base URL; shuts everything down.

    Returns as soon as the replicas are constructed: they load and warm up in the background,
    answering /ping with 503 until ready (see ``wait_until_ready``). Prometheus metrics are at
    ``metrics_url()`` (``metrics_port``, or one Ray picks); EMF lines, when on, go to this
    process's standard output unless ``emf_path`` says otherwise.
    """
    configure_ray_environment(port)
    import ray
    from ray import serve

    if args.emf_every_s is not None and args.emf_path is None:
        args = args.model_copy(update={"emf_path": own_stdout()})
    ray.init(**ray_init_options(log_to_driver, metrics_port))
    try:
        serve.start(http_options={"host": host, "port": port})
        deploy(args, name=name, backend_factory=backend_factory)
        yield f"http://{host}:{port}"
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()


def start_for_serve_run(port: int = 8000) -> None:
    """For ``serve run serve_app:app``, which builds the app before it starts Ray and Serve:
    start them here first, as ``serve_session`` does. Serve's HTTP host in HAProxy mode is all
    interfaces (``DEFAULT_HTTP_HOST`` in ray/serve/_private/constants.py), and ``serve run``
    with an import path has no flag for it: here it is 127.0.0.1 unless
    ``RAY_SERVE_DEFAULT_HTTP_HOST`` asks for another (Ray itself ignores that variable in
    HAProxy mode). The side listeners take this server's ports (``serve_app.ports``)."""
    configure_ray_environment(port)
    import ray
    from ray import serve

    if not ray.is_initialized():  # as `serve run` would: RAY_ADDRESS, else a new local cluster
        ray.init(address=os.environ.get("RAY_ADDRESS"), namespace="serve")
    host = os.environ.get("RAY_SERVE_DEFAULT_HTTP_HOST") or "127.0.0.1"
    serve.start(http_options={"host": host, "port": port})


def wait_until_ready(
    url: str, timeout_s: float = 600, poll_s: float = 0.1, process=None, log=None
) -> list[int | str]:
    """Poll ``url``/ping until 200; return every status seen (503 while loading).

    Raises RuntimeError at once if the model failed to start (with /ping's reason) or the
    server's ``process`` (a Popen) exited (with the last lines of its ``log`` file), else when
    the time runs out.
    """
    seen: list[int | str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = ""
            if log is not None:
                lines = Path(log).read_text(errors="replace").splitlines()
                tail = "; its log ends:\n" + "\n".join(lines[-15:])
            raise RuntimeError(f"the server exited with status {process.returncode}{tail}")
        try:
            response = requests.get(url.rstrip("/") + "/ping", timeout=5)
            seen.append(response.status_code)
            if response.status_code == 200:
                return seen
            json_body = response.headers.get("content-type", "").startswith("application/json")
            if json_body and response.json().get("status") == "failed":
                reason = response.json().get("reason", "see the replica's log")
                raise RuntimeError(f"the model failed to start: {reason} ({url})")
        except requests.RequestException as exc:
            seen.append(type(exc).__name__)
        time.sleep(poll_s)
    raise RuntimeError(f"{url} not ready after {timeout_s:g} s; /ping gave {seen[-5:]}")


MODEL_DEPLOYMENT = "SDTurboModel"


def model_failure(app_name: str | None = None) -> str | None:
    """Why this Serve instance's model could not start (one line), or None while it can.

    Looks at the application (``app_name``, or every one with the model deployment): a
    deployment Serve gave up on, or a replica whose model failed to start for good."""
    from ray import serve

    for name, app in serve.status().applications.items():
        if MODEL_DEPLOYMENT not in app.deployments or app_name not in (None, name):
            continue
        if app.status == "DEPLOY_FAILED":
            message = app.deployments[MODEL_DEPLOYMENT].message or app.message
            return " ".join(message.split())[:500] or "the deployment failed"
        handle = serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name=name)
        try:
            info = handle.info.remote().result(timeout_s=10)
        except Exception:  # a replica being replaced, or none yet
            continue
        if info["status"] == "failed":
            return info["failure"] or "see the replica's log"
    return None


def exit_when_the_model_fails(poll_s: float = 1.0) -> None:
    """For ``serve run``: a thread in its process that, once the model has failed to start
    for good, prints why as the last line and exits 1. Serve would otherwise keep the process
    up with a replica that can never serve."""
    import threading

    def watch() -> None:
        import ray
        from ray import serve

        while True:
            time.sleep(poll_s)
            if not ray.is_initialized():  # serve run starts Ray after building the app
                continue
            try:
                reason = model_failure()
            except Exception:  # Serve not up yet, or shutting down
                continue
            if reason is not None:
                # From here on nothing else is printed: what Ray streams while it stops, and
                # the traceback `serve run`'s main thread prints when Serve goes away under a
                # deployment it still waits for (a loaded host showed one), go to /dev/null.
                sys.stdout.flush()
                sys.stderr.flush()
                stderr = os.dup(2)
                quiet = os.open(os.devnull, os.O_WRONLY)
                os.dup2(quiet, 1)
                os.dup2(quiet, 2)
                with contextlib.suppress(Exception):
                    serve.shutdown()
                # Stop Ray, bounded: we exit anyway.
                stopper = threading.Thread(target=ray.shutdown, daemon=True)
                stopper.start()
                stopper.join(timeout=15)
                # On stderr, where Ray's own lines go: the last line.
                line = f"sdturbo: error: the model failed to start: {reason}\n"
                os.write(stderr, line.encode())
                os._exit(1)

    threading.Thread(target=watch, name="sdturbo-watch", daemon=True).start()


@contextlib.contextmanager
def uvicorn_session(engine, *, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """The same routes and engine under plain uvicorn in a thread, without Ray: the floor the
    serving benchmark compares Serve's HTTP path with, and a fast server for schema fuzzing.
    Port 0 (the default): the kernel picks a free one; the URL yielded names it."""
    import threading

    import uvicorn

    from serve_app.api import create_api

    api = create_api()
    api.state.engine = engine
    server = uvicorn.Server(uvicorn.Config(api, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    engine.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError(f"uvicorn did not start on {host}:{port}")
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        engine.close()
