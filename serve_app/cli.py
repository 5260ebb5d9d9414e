"""``sdturbo``: the SageMaker container entrypoint (``sdturbo serve``) and client commands."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from serve_app.client import add_invoke_parser
from serve_app.config import DEFAULT_MODEL

SAGEMAKER_MODEL_DIR = Path("/opt/ml/model")
# SageMaker kills the container 30 s after SIGTERM; leave time for Ray to stop after draining.
DRAIN_TIMEOUT_S = 20.0
logger = logging.getLogger("sdturbo")


def default_model() -> str:
    """SageMaker extracts the model artifact to /opt/ml/model; use it when it holds a pipeline."""
    if (SAGEMAKER_MODEL_DIR / "model_index.json").is_file():
        return str(SAGEMAKER_MODEL_DIR)
    return DEFAULT_MODEL


def serve_command(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from serve_app.app import build_app
    from serve_app.config import AppArgs

    app_args = AppArgs.model_validate({"model": args.model or default_model(), **dict(args.set)})
    # address="local": always a fresh single-node cluster for this container, never another one.
    ray.init(address="local", include_dashboard=False, log_to_driver=True)
    stop = threading.Event()
    # SageMaker sends SIGTERM, then SIGKILL 30 s later: drain in-flight requests, then exit.
    # Installed after ray.init (which sets its own exit-at-once handler), before the app starts.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(build_app(app_args), name="sdturbo", route_prefix="/")
    logger.info("serving %s on %s:%d", app_args.model, args.host, args.port)
    stop.wait()
    logger.info("SIGTERM: refusing new requests, draining those in flight")
    ingress = serve.get_deployment_handle("Ingress", app_name="sdturbo")
    remaining = ingress.drain.remote(DRAIN_TIMEOUT_S).result()
    logger.info("drained (%d requests still running); shutting down", remaining)
    serve.shutdown()
    ray.shutdown()
    return 0


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdturbo", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser(
        "serve", help="serve the SageMaker contract (/ping, /invocations)"
    )
    serve_parser.add_argument(
        "--model",
        help=f"hub id, local folder or 'tiny' (default: /opt/ml/model if it holds a "
        f"pipeline, else {DEFAULT_MODEL})",
    )
    serve_parser.add_argument("--host", default="0.0.0.0")
    serve_parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080")),
        help="default: $SAGEMAKER_BIND_TO_PORT or 8080",
    )
    serve_parser.add_argument(
        "--set",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any application argument, e.g. --set max_batch_size=16",
    )
    serve_parser.set_defaults(func=serve_command)
    add_invoke_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
