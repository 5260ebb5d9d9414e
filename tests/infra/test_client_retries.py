"""The async client's S3 polling outlasts a transient S3 error (issue 17, item 9).

botocore's own retry handler is exercised: a ``before-send`` hook stands in for S3 and answers
three GetObject attempts in a row with 503 SlowDown, as S3 does under load; the fourth gets the
object. The old setting (``max_attempts: 1``: one retry) ended the wait at the second 503.
"""

from __future__ import annotations

import pytest
from botocore.awsrequest import AWSResponse

from serve_app import client


class Body:
    def __init__(self, data: bytes):
        self.data = data

    def stream(self, **_):
        yield self.data

    def read(self, *_):
        data, self.data = self.data, b""
        return data


@pytest.fixture
def clients(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    return client.aws_clients("us-east-1", "http://127.0.0.1:9", 30)


def test_polling_survives_a_transient_s3_error(clients):
    _, s3 = clients
    sent: list[str] = []

    def s3_under_load(request, **_):
        sent.append(request.url)
        if len(sent) <= 3:
            error = b"<Error><Code>SlowDown</Code><Message>Reduce your rate</Message></Error>"
            return AWSResponse(request.url, 503, {}, Body(error))
        return AWSResponse(request.url, 200, {"Content-Length": "5"}, Body(b"image"))

    s3.meta.events.register("before-send.s3.GetObject", s3_under_load)
    result = client.wait_for_result(s3, "s3://bkt/outputs/x.out", None, timeout_s=30, poll_s=0)
    assert result == b"image"
    assert len(sent) == 4  # one poll: three 503s retried by the SDK, then the object


def test_s3_retries_and_invocations_do_not(clients):
    runtime, s3 = clients
    assert s3.meta.config.retries["mode"] in ("standard", "adaptive")
    assert s3.meta.config.retries["total_max_attempts"] >= 4
    # InvokeEndpoint(Async) keeps its setting: not idempotent, a retry queues a second inference.
    assert runtime.meta.config.retries["total_max_attempts"] == 2
