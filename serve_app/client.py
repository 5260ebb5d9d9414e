"""``sdturbo invoke``: one request to a local server or a SageMaker endpoint, images to files.

    sdturbo invoke "a futuristic cat floating in the clouds" -o cat.png
    sdturbo invoke "a cat" --endpoint sdturbo-sync -o cat.png
    sdturbo invoke "a cat" --endpoint sdturbo-async --async --bucket my-bucket -o cat.png

No torch, no Ray: requests for HTTP, boto3 (imported only when needed) for SageMaker.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
import uuid
import webbrowser
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

DEFAULT_URL = "http://127.0.0.1:8000"
EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
# Request fields of the API (serve_app.schemas.GenerateRequest) and the options that set them.
REQUEST_OPTIONS = {
    "negative_prompt": "negative_prompt",
    "num_inference_steps": "steps",
    "guidance_scale": "guidance_scale",
    "seed": "seed",
    "width": "width",
    "height": "height",
    "num_images": "num_images",
    "output_format": "format",
}


class InvokeError(Exception):
    """A failure worth one line to the user; the command exits non-zero."""


def build_request(args: argparse.Namespace) -> dict:
    """The JSON body: the prompt and every option that was given (the server has the defaults)."""
    body = {"prompt": args.prompt}
    for field, option in REQUEST_OPTIONS.items():
        value = getattr(args, option)
        if value is not None:
            body[field] = value
    return body


def _error_text(status: int | str, body: bytes | str) -> str:
    """One line from an error body: ours is {"error": {"type", "message"}}, others are shown raw."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        error = json.loads(text)["error"]
        return f"{status} {error['type']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return f"{status}: {' '.join(text.split())[:300] or '(empty body)'}"


def decode_result(body: bytes) -> dict:
    """A response body as a dict with 'images' (bytes): our JSON, or raw image bytes."""
    if body[:1] != b"{":
        return {"images": [body]}
    try:
        result = json.loads(body)
        encoded = result.get("images") or [result["image"]]
        result["images"] = [base64.b64decode(image) for image in encoded]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvokeError(f"response is not an image result: {exc}") from None
    return result


def invoke_local(url: str, body: dict, timeout_s: float) -> dict:
    import requests

    target = url.rstrip("/") + "/predict"
    try:
        response = requests.post(target, json=body, timeout=timeout_s)
    except requests.ConnectionError:
        raise InvokeError(f"cannot connect to {url} (is the server running?)") from None
    except requests.Timeout:
        raise InvokeError(f"no response from {target} within {timeout_s:g} s") from None
    if response.status_code != 200:
        raise InvokeError(f"server returned {_error_text(response.status_code, response.content)}")
    return decode_result(response.content)


def aws_clients(region: str | None, endpoint_url: str | None, timeout_s: float) -> tuple:
    """sagemaker-runtime and s3 clients; SDK retries off, so a failure shows as one."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": 1, "mode": "standard"},
        read_timeout=max(70, int(timeout_s)),  # SageMaker's own limit is 60 s
        connect_timeout=10,
    )
    session = boto3.session.Session(region_name=region)
    runtime = session.client("sagemaker-runtime", endpoint_url=endpoint_url, config=config)
    s3 = session.client("s3", endpoint_url=endpoint_url, config=config)
    return runtime, s3


def invoke_sync(runtime, endpoint: str, body: dict) -> dict:
    response = runtime.invoke_endpoint(
        EndpointName=endpoint,
        Body=json.dumps(body).encode(),
        ContentType="application/json",
        Accept="application/json",
    )
    return decode_result(response["Body"].read())


def split_s3_uri(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise InvokeError(f"not an S3 location: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def submit_async(runtime, s3, endpoint: str, bucket: str, body: dict) -> dict:
    """Upload the request to s3://bucket/inputs/ and queue it; returns the invoke response."""
    key = f"inputs/{uuid.uuid4()}.json"
    s3.put_object(
        Bucket=bucket, Key=key, Body=json.dumps(body).encode(), ContentType="application/json"
    )
    return runtime.invoke_endpoint_async(
        EndpointName=endpoint,
        InputLocation=f"s3://{bucket}/{key}",
        ContentType="application/json",
        Accept="application/json",
    )


def _read_if_present(s3, uri: str | None) -> bytes | None:
    from botocore.exceptions import ClientError

    if not uri:
        return None
    bucket, key = split_s3_uri(uri)
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
            return None
        raise


def wait_for_result(
    s3,
    output_uri: str,
    failure_uri: str | None,
    timeout_s: float,
    poll_s: float = 2.0,
    progress: Callable[[float], None] | None = None,
) -> bytes:
    """Poll S3 until the output object (returned) or the failure object (raised) appears."""
    start = time.monotonic()
    while True:
        output = _read_if_present(s3, output_uri)
        if output is not None:
            return output
        failure = _read_if_present(s3, failure_uri)
        if failure is not None:
            raise InvokeError(f"endpoint failed: {_error_text('error', failure)}")
        elapsed = time.monotonic() - start
        if elapsed > timeout_s:
            raise InvokeError(f"no result at {output_uri} after {timeout_s:g} s")
        if progress:
            progress(elapsed)
        time.sleep(poll_s)


def progress_printer(stream=sys.stderr) -> Callable[[float], None]:
    """Elapsed time on one rewritten line on a terminal; a line every 30 s otherwise (CI logs)."""
    last = [-30.0]

    def show(elapsed: float) -> None:
        if stream.isatty():
            stream.write(f"\rwaiting for the async result... {elapsed:5.0f} s")
            stream.flush()
        elif elapsed - last[0] >= 30:
            last[0] = elapsed
            stream.write(f"waiting for the async result... {elapsed:.0f} s\n")

    return show


def invoke_async(runtime, s3, args: argparse.Namespace, body: dict) -> dict:
    response = submit_async(runtime, s3, args.endpoint, args.bucket, body)
    print(
        f"queued {response.get('InferenceId', '')} -> {response['OutputLocation']}", file=sys.stderr
    )
    progress = progress_printer()
    try:
        output = wait_for_result(
            s3,
            response["OutputLocation"],
            response.get("FailureLocation"),
            args.timeout,
            args.poll_interval,
            progress,
        )
    finally:
        if sys.stderr.isatty():
            sys.stderr.write("\n")
    return decode_result(output)


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
    body = build_request(args)
    if args.timeout is None:
        args.timeout = 900.0 if args.use_async else 120.0
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
    request.add_argument("--negative-prompt")
    request.add_argument("--steps", type=int, help="1-4 inference steps")
    request.add_argument("--guidance-scale", type=float)
    request.add_argument("--seed", type=int)
    request.add_argument("--width", type=int, help="multiple of 8, 64-1024")
    request.add_argument("--height", type=int, help="multiple of 8, 64-1024")
    request.add_argument("--num-images", type=int, help="1-4")
    request.add_argument("--format", choices=list(EXTENSIONS), help="png, jpeg or webp")
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
        help="seconds to wait for the image (default 120; 900 with --async, "
        "as a scale from zero takes minutes)",
    )
    target.add_argument("--poll-interval", type=float, default=2.0, help=argparse.SUPPRESS)
    p.set_defaults(func=invoke_command)
    return p
