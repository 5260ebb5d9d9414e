"""``sdturbo``: the SageMaker container entrypoint (``sdturbo serve``) and the client
(``sdturbo invoke``). ``serve`` needs the ``serve`` extra; ``invoke`` needs only the client.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from serve_app.client import add_invoke_parser
from serve_app.config import (
    ENV_PREFIX,
    METRICS_PORT,
    AppArgs,
    add_settings_options,
    parse_key_value,
    settings_given,
)

SAGEMAKER_MODEL_DIR = Path("/opt/ml/model")
# SageMaker kills the container 30 s after SIGTERM; leave time for Ray to stop after draining.
DRAIN_TIMEOUT_S = 20.0
APP_NAME = "sdturbo"
logger = logging.getLogger("sdturbo")


class StartupError(Exception):
    """Serving cannot start; one line says why."""


def model_source(explicit: str | None, environ=None) -> str:
    """--model, else SDTURBO_MODEL, else SageMaker's /opt/ml/model, which must hold a pipeline:
    with network isolation a hub id could never be downloaded."""
    environ = os.environ if environ is None else environ
    model = explicit or environ.get(f"{ENV_PREFIX}MODEL")
    if model:
        return model
    if (SAGEMAKER_MODEL_DIR / "model_index.json").is_file():
        return str(SAGEMAKER_MODEL_DIR)
    raise StartupError(
        f"{SAGEMAKER_MODEL_DIR} holds no model (no model_index.json): SageMaker copies the "
        "model artifact there (python -m optimize build); give --model to serve another"
    )


def app_args(args: argparse.Namespace):
    """Settings: flags (--max-batch-size 16, or --set max_batch_size=16) over SDTURBO_*
    environment variables over the defaults."""
    from pydantic import ValidationError

    from serve_app.config import settings_from_environment, unknown_environment_settings

    for line in unknown_environment_settings():
        logger.warning("sdturbo serve: ignoring %s: not a setting", line)
    values = {**settings_from_environment(), **dict(args.set), **settings_given(args, AppArgs)}
    values["model"] = model_source(args.model or values.get("model"))
    try:
        return AppArgs.model_validate(values)
    except ValidationError as exc:
        raise StartupError(f"invalid settings: {exc}") from None


def check_before_start(settings) -> None:
    """Fail in seconds, with one line, on what would otherwise fail inside Ray."""
    try:
        from serve_app.pipeline.loading import resolve_device, resolve_model_path
    except ImportError as exc:
        raise StartupError(
            f"the server is not installed ({exc}): pip install 'sdturbo[serve]'"
        ) from None
    try:
        resolve_device(settings.device)
        resolve_model_path(settings.model)
    except (RuntimeError, FileNotFoundError) as exc:
        raise StartupError(str(exc)) from None


def check_metrics_port(port: int) -> None:
    """A taken Prometheus port stops Ray's start after ~30 s with a message that does not name
    it (Ray 2.60's metrics agent dies): say so now instead."""
    import socket

    if not port:
        return
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise StartupError(
                f"the metrics port {port} is in use: give another with --metrics-port or "
                f"{ENV_PREFIX}METRICS_PORT (0: a free one)"
            ) from None


def drain_replicas(timeout_s: float) -> int:
    """Ask every model replica to refuse new requests and finish accepted ones."""
    from ray import serve

    deployment = serve.status().applications[APP_NAME].deployments["SDTurboModel"]
    replicas = sum(deployment.replica_states.values()) or 1
    handle = serve.get_deployment_handle("SDTurboModel", app_name=APP_NAME)
    remaining: dict[int, int] = {}
    deadline = time.monotonic() + timeout_s
    # Serve has no broadcast: calls spread over replicas; repeat until each one answered.
    while len(remaining) < replicas and time.monotonic() < deadline:
        left = max(0.1, deadline - time.monotonic())
        calls = [handle.drain.remote(left) for _ in range(2 * replicas)]
        for call in calls:
            info = call.result()
            remaining[info["pid"]] = info["remaining"]
    return sum(remaining.values())


def watch(stop: threading.Event) -> str | None:
    """Until SIGTERM (None), or until the model has failed to start for good: why, in one line
    (the container then exits, and SageMaker reports the endpoint as failed)."""
    from ray import serve

    from serve_app.server import model_failure

    handle = serve.get_deployment_handle("SDTurboModel", app_name=APP_NAME)
    ready = False
    while not stop.wait(1.0):
        reason = model_failure(APP_NAME)
        if reason is not None:
            return reason
        if ready:
            continue
        try:
            info = handle.info.remote().result(timeout_s=10)
        except Exception:  # a replica being replaced; Serve reports it in its log
            continue
        if info["status"] == "healthy":
            ready = True
            timings = ", ".join(f"{k} {v:.1f}" for k, v in info["startup_timings"].items())
            logger.info("ready: model %s warm (%s)", info["model"], timings)
    return None


def serve_command(args: argparse.Namespace) -> int:
    try:
        settings = app_args(args)
        check_before_start(settings)
        check_metrics_port(args.metrics_port)
    except StartupError as exc:
        print(f"sdturbo serve: error: {exc}", file=sys.stderr)
        return 2
    from serve_app.server import metrics_url, serve_session

    stop = threading.Event()
    with serve_session(
        settings,
        host=args.host,
        port=args.port,
        name=APP_NAME,
        log_to_driver=True,
        metrics_port=args.metrics_port or None,
    ) as url:
        # SageMaker sends SIGTERM, then SIGKILL 30 s later: drain in-flight requests, then exit.
        # Installed after ray.init (which sets its own exit-at-once handler).
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        logger.info("serving %s on %s (loading; /ping is 200 once warm)", settings.model, url)
        logger.info("Prometheus metrics: %s", metrics_url())
        failure = watch(stop)
        if failure is None:
            logger.info("SIGTERM: refusing new requests, draining those in flight")
            remaining = drain_replicas(DRAIN_TIMEOUT_S)
            logger.info("drained (%d requests still running); shutting down", remaining)
    if failure is not None:  # the last line, after Ray's own shutdown lines
        print(f"sdturbo serve: error: the model failed to start: {failure}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdturbo", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser(
        "serve", help="serve the SageMaker contract (/ping, /invocations) and /predict"
    )
    serve_parser.add_argument(
        "--model",
        help=f"hub id, local folder or 'tiny' (default: ${ENV_PREFIX}MODEL, else "
        f"{SAGEMAKER_MODEL_DIR}, which must then hold a pipeline)",
    )
    serve_parser.add_argument("--host", default="0.0.0.0")
    serve_parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080")),
        help="default: $SAGEMAKER_BIND_TO_PORT or 8080",
    )
    serve_parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get(f"{ENV_PREFIX}METRICS_PORT", METRICS_PORT)),
        help=f"Prometheus metrics (every replica's, and Ray Serve's) at "
        f"http://127.0.0.1:PORT/metrics; 0: a free port, logged at start-up (default: "
        f"${ENV_PREFIX}METRICS_PORT or {METRICS_PORT}; a busy port stops Ray's start)",
    )
    serve_parser.add_argument(
        "--set",
        type=parse_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"any server setting by its name, e.g. --set max_batch_size=16 (the same as "
        f"--max-batch-size 16, or {ENV_PREFIX}MAX_BATCH_SIZE=16 in the environment)",
    )
    add_settings_options(
        serve_parser.add_argument_group("server settings (serve_app.config.AppArgs)"),
        AppArgs,
        exclude={"model"},
    )
    serve_parser.set_defaults(func=serve_command)
    add_invoke_parser(commands)
    return parser


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse, set up logging, run the chosen subcommand (``sdturbo``, ``python -m optimize``)."""
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return args.func(args)


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
