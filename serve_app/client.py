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

from pydantic import ValidationError

from serve_app.schemas import GenerateRequest

DEFAULT_URL = "http://127.0.0.1:8000"
EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
# Every request field is an option, typed, bounded and described by the API's own schema
# (serve_app.schemas.GenerateRequest); the shorter spellings of earlier releases stay as aliases.
ALIASES = {"num_inference_steps": "--steps", "output_format": "--format"}
JSON_TYPES = {"integer": int, "number": float, "string": str}


class InvokeError(Exception):
    """A failure worth one line to the user; the command exits non-zero."""


def build_request(args: argparse.Namespace) -> dict:
    """The JSON body: the prompt and every option given (the server has the defaults), checked
    against the request schema before anything is sent."""
    body = {"prompt": args.prompt}
    for field in GenerateRequest.model_fields:
        value = getattr(args, field, None)
        if field != "prompt" and value is not None:
            body[field] = value
    try:
        GenerateRequest.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise InvokeError(f"invalid request: {problems}") from None
    return body


def add_request_options(group) -> None:
    properties = GenerateRequest.model_json_schema()["properties"]
    for field, spec in properties.items():
        if field == "prompt":
            continue
        spec = {**spec, **spec.get("anyOf", [{}])[0]}  # optional fields: the non-null branch
        flags = [f"--{field.replace('_', '-')}", *([ALIASES[field]] if field in ALIASES else [])]
        bounds = [f"{spec['minimum']:g}-{spec['maximum']:g}"] if "maximum" in spec else []
        bounds += [f"multiple of {spec['multipleOf']}"] if "multipleOf" in spec else []
        group.add_argument(
            *flags,
            dest=field,
            type=JSON_TYPES[spec["type"]],
            choices=spec.get("enum"),
            help=spec.get("description", "") + (f" ({', '.join(bounds)})" if bounds else ""),
        )


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
    """Upload the request to s3://bucket/inputs/direct/ and queue it; returns the invoke response.

    Under inputs/direct/ because the bucket's trigger (infra/trigger.tf) starts an inference for
    every other request uploaded under inputs/; this one is invoked right here, and without the
    prefix the model would run it twice.
    """
    key = f"inputs/direct/{uuid.uuid4()}.json"
    s3.put_object(
        Bucket=bucket, Key=key, Body=json.dumps(body).encode(), ContentType="application/json"
    )
    return runtime.invoke_endpoint_async(
        EndpointName=endpoint,
        InputLocation=f"s3://{bucket}/{key}",
        ContentType="application/json",
        Accept="application/json",
    )


def _read_if_present(s3, uri: str | None, denied: set[str] | None = None) -> bytes | None:
    """The object's bytes, or None while it does not exist yet.

    Without s3:ListBucket on the bucket, S3 answers a missing key with 403 AccessDenied, not
    404 (S3 API reference, GetObject: "If you don't have the s3:ListBucket permission, Amazon
    S3 returns an HTTP status code 403"), so a 403 also means "not there yet" while polling;
    the URI is added to ``denied`` so a timeout can say so.
    """
    from botocore.exceptions import ClientError

    if not uri:
        return None
    bucket, key = split_s3_uri(uri)
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code in ("NoSuchKey", "404", "NotFound"):
            return None
        if code in ("AccessDenied", "403", "Forbidden"):
            if denied is not None:
                denied.add(uri)
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
    denied: set[str] = set()
    while True:
        output = _read_if_present(s3, output_uri, denied)
        if output is not None:
            return output
        failure = _read_if_present(s3, failure_uri, denied)
        if failure is not None:
            raise InvokeError(f"endpoint failed: {_error_text('error', failure)}")
        elapsed = time.monotonic() - start
        if elapsed > timeout_s:
            hint = ""
            if denied:
                hint = (
                    " (S3 answered 403 AccessDenied: without s3:ListBucket a missing object "
                    "looks like this, so it may simply not exist; check s3:GetObject on "
                    f"{', '.join(sorted(denied))} too)"
                )
            raise InvokeError(f"no result at {output_uri} after {timeout_s:g} s{hint}")
        if progress:
            progress(elapsed)
        time.sleep(poll_s)


class LogLines:
    """tqdm redraws its line in place with \\r; in a log (not a terminal) each draw is a line."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").rstrip("\n")
        if text.strip():
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_printer(stream=None, total_s: float | None = None) -> Callable[[float], None]:
    """A tqdm bar of the seconds waited (out of ``total_s``, the timeout) on stderr.

    Redrawn in place on a terminal; at most a line every 30 s otherwise (CI logs). Call the
    returned function with the elapsed seconds, and its ``close()`` when done.
    """
    from tqdm import tqdm

    stream = stream or sys.stderr
    tty = hasattr(stream, "isatty") and stream.isatty()
    bar = tqdm(
        total=total_s,
        desc="waiting for the async result",
        unit="s",
        file=stream if tty else LogLines(stream),
        mininterval=0.5 if tty else 30,
        dynamic_ncols=tty,
        bar_format=(
            "{desc}: {n:.0f}/{total:.0f} s |{bar}| {elapsed}"
            if total_s
            else "{desc}: {n:.0f} s [{elapsed}]"
        ),
    )

    def show(elapsed: float) -> None:
        bar.update(max(0.0, elapsed - bar.n))

    show.close = bar.close  # type: ignore[attr-defined]
    return show


def invoke_async(runtime, s3, args: argparse.Namespace, body: dict) -> dict:
    response = submit_async(runtime, s3, args.endpoint, args.bucket, body)
    print(
        f"queued {response.get('InferenceId', '')} -> {response['OutputLocation']}", file=sys.stderr
    )
    progress = progress_printer(total_s=args.timeout)
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
        progress.close()  # type: ignore[attr-defined]
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
    add_request_options(p.add_argument_group("request (server defaults when unset)"))
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
