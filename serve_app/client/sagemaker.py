"""SageMaker endpoints: a sync invocation, or an async one (upload the request to S3, queue
it, poll S3 for the output or the failure)."""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable
from urllib.parse import urlparse

from serve_app.client.progress import progress_printer
from serve_app.client.results import InvokeError, decode_result, error_text

# S3 calls are retried: an async wait polls S3 for up to an hour while the inference carries on,
# and a few throttles or 5xx in a row must not end it. botocore's "standard" mode retries
# throttling, transient errors (500, 502, 503, 504) and connection errors with exponential
# backoff up to 20 s (botocore docs, "Retries"); total_max_attempts counts the first attempt.
S3_RETRIES = {"total_max_attempts": 6, "mode": "standard"}
# Invocations keep their setting: one retry at most ("max_attempts" counts retries), as before.
INVOKE_RETRIES = {"max_attempts": 1, "mode": "standard"}


def aws_clients(region: str | None, endpoint_url: str | None, timeout_s: float) -> tuple:
    """sagemaker-runtime and s3 clients; S3 (polled for up to an hour) retries transient errors."""
    import boto3
    from botocore.config import Config

    timeouts = Config(
        read_timeout=max(70, int(timeout_s)),  # SageMaker's own limit is 60 s
        connect_timeout=10,
    )
    session = boto3.session.Session(region_name=region)
    runtime = session.client(
        "sagemaker-runtime",
        endpoint_url=endpoint_url,
        config=timeouts.merge(Config(retries=INVOKE_RETRIES)),
    )
    s3 = session.client(
        "s3", endpoint_url=endpoint_url, config=timeouts.merge(Config(retries=S3_RETRIES))
    )
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
            raise InvokeError(f"endpoint failed: {error_text('error', failure)}")
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
