"""``sdturbo invoke``: its options, the call to the chosen target, the images to files."""

from __future__ import annotations

import argparse
import sys
import webbrowser
from pathlib import Path

from serve_app.client.local import invoke_local
from serve_app.client.request import add_request_options, build_request
from serve_app.client.results import InvokeError
from serve_app.client.sagemaker import aws_clients, invoke_async, invoke_sync

DEFAULT_URL = "http://127.0.0.1:8000"
EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}


def output_paths(output: str | None, count: int, fmt: str) -> list[Path]:
    """cat.png, then cat-1.png, cat-2.png... for more images."""
    path = Path(output or f"sdturbo{EXTENSIONS.get(fmt, '.png')}")
    return [path] + [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(1, count)]


def save_images(result: dict, output: str | None, fmt: str) -> list[Path]:
    paths = output_paths(output, len(result["images"]), fmt)
    for path, image in zip(paths, result["images"], strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image)
    return paths


def describe(result: dict, paths: list[Path]) -> str:
    line = f"wrote {', '.join(map(str, paths))}"
    if "seeds" in result:
        line += f" ({result['width']}x{result['height']}, seed {result['seeds'][0]}"
        timings = result.get("timings") or {}
        if timings:
            line += (
                f", total {timings['total_ms']:.0f} ms: inference {timings['inference_ms']:.0f}"
                f", queue {timings['queue_ms']:.0f}, batch {timings['batch_size']}"
            )
        line += ")"
    return line


def _invoke(args: argparse.Namespace, body: dict) -> dict:
    if not args.endpoint:
        if args.use_async:
            raise InvokeError("--async needs --endpoint (the local server answers directly)")
        return invoke_local(args.url, body, args.timeout)
    runtime, s3 = aws_clients(args.region, args.endpoint_url, args.timeout)
    if not args.use_async:
        return invoke_sync(runtime, args.endpoint, body)
    if not args.bucket:
        raise InvokeError("--async needs --bucket (where the request is uploaded)")
    return invoke_async(runtime, s3, args, body)


def invoke_command(args: argparse.Namespace) -> int:
    try:
        body = build_request(args)
    except InvokeError as exc:
        print(f"sdturbo invoke: error: {exc}", file=sys.stderr)
        return 2
    if args.timeout is None:
        # Async: a request to a sleeping endpoint waits for the scale-out alarm (~2 min), an
        # instance, the model download and the warm-up, which SageMaker allows up to 1200 s
        # each (infra: model_data_download_timeout_s, startup_health_check_timeout_s).
        args.timeout = 3600.0 if args.use_async else 120.0
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        aws_errors: tuple = (BotoCoreError, ClientError)
    except ImportError:  # boto3 is a dependency; only a broken install lands here
        aws_errors = ()
    try:
        result = _invoke(args, body)
        paths = save_images(result, args.output, body.get("output_format", "png"))
    except InvokeError as exc:
        print(f"sdturbo invoke: error: {exc}", file=sys.stderr)
        return 1
    except aws_errors as exc:
        print(f"sdturbo invoke: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"sdturbo invoke: error: {exc}", file=sys.stderr)
        return 1
    print(describe(result, paths))
    for warning in result.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    if args.open:
        webbrowser.open(paths[0].resolve().as_uri())
    return 0


def add_invoke_parser(commands) -> argparse.ArgumentParser:
    """Register ``sdturbo invoke`` on the CLI's subcommands."""
    p = commands.add_parser(
        "invoke",
        help="generate an image with a local server or a SageMaker endpoint",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompt", help="what to draw")
    p.add_argument(
        "-o",
        "--output",
        help="image file (default sdturbo.<format>); more images get -1, -2... suffixes",
    )
    p.add_argument("--open", action="store_true", help="open the image when done")
    request = p.add_argument_group("request (server defaults when unset)")
    request.add_argument(
        "--image",
        metavar="PATH",
        help="image-to-image: the input image (PNG, JPEG or WebP), sent base64",
    )
    add_request_options(request)
    target = p.add_argument_group("target")
    target.add_argument("--url", default=DEFAULT_URL, help=f"local server (default {DEFAULT_URL})")
    target.add_argument("--endpoint", help="SageMaker endpoint name (instead of --url)")
    target.add_argument(
        "--async",
        dest="use_async",
        action="store_true",
        help="asynchronous endpoint: upload, invoke, wait for the S3 output",
    )
    target.add_argument("--bucket", help="with --async: S3 bucket for the request (inputs/)")
    target.add_argument("--region", help="AWS region (default: the AWS configuration's)")
    target.add_argument("--endpoint-url", help="AWS API endpoint override, e.g. a moto server")
    target.add_argument(
        "--timeout",
        type=float,
        help="seconds to wait for the image (default 120; 3600 with --async, "
        "as a scale from zero can take half an hour)",
    )
    target.add_argument("--poll-interval", type=float, default=2.0, help=argparse.SUPPRESS)
    p.set_defaults(func=invoke_command)
    return p
