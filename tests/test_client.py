"""``sdturbo invoke``: against the real local server, and against a moto server for AWS.

What moto 5.2.1 offers of sagemaker-runtime, and so what these tests cannot show:
- invoke_endpoint and invoke_endpoint_async return canned results queued through moto's
  ``/moto-api/static/sagemaker/*-results``; no model runs and the request body is not read;
- the async call writes its canned result at once, to a bucket of moto's choosing, so waiting
  across a scale from zero is shown with an object written later by the test instead;
- neither checks that the endpoint exists, and a sync ModelError (the container's 4xx/5xx)
  cannot be queued, so the sync error path is covered by the local server's errors only.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest
import requests
from PIL import Image

from serve_app import cli, client
from tests.conftest import closed_port


def invoke(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["invoke", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def png_bytes(size=(32, 16), color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_every_request_option_reaches_the_body():
    parser = cli.build_parser()
    args = parser.parse_args(
        [
            "invoke",
            "a cat",
            "--negative-prompt",
            "dogs",
            "--steps",
            "2",
            "--guidance-scale",
            "1.5",
            "--seed",
            "9",
            "--width",
            "256",
            "--height",
            "128",
            "--num-images",
            "3",
            "--format",
            "webp",
        ]
    )
    assert client.build_request(args) == {
        "prompt": "a cat",
        "negative_prompt": "dogs",
        "num_inference_steps": 2,
        "guidance_scale": 1.5,
        "seed": 9,
        "width": 256,
        "height": 128,
        "num_images": 3,
        "output_format": "webp",
    }
    # Unset options are left to the server's defaults.
    assert client.build_request(parser.parse_args(["invoke", "x"])) == {"prompt": "x"}


def test_options_come_from_the_request_schema_and_are_checked_before_sending(capsys):
    from serve_app.schemas import GenerateRequest

    parser = cli.build_parser()
    invoke = parser._subparsers._group_actions[0].choices["invoke"]
    dests = {action.dest for action in invoke._actions}
    assert set(GenerateRequest.model_fields) <= dests  # every field, none repeated by hand
    args = parser.parse_args(["invoke", "a cat", "--width", "100", "--num-inference-steps", "9"])
    with pytest.raises(client.InvokeError, match="width: Input should be a multiple of 8"):
        client.build_request(args)
    assert cli.main(["invoke", "a cat", "--width", "100"]) == 2  # nothing was sent
    assert "invalid request: width" in capsys.readouterr().err


def test_image_is_read_from_a_path_and_sent_base64(tmp_path, capsys):
    import base64

    path = tmp_path / "sketch.png"
    path.write_bytes(png_bytes((64, 64)))
    parser = cli.build_parser()
    args = parser.parse_args(
        ["invoke", "a cat", "--image", str(path), "--strength", "0.5", "--steps", "2"]
    )
    body = client.build_request(args)
    assert base64.b64decode(body["image"]) == path.read_bytes()
    assert (body["strength"], body["num_inference_steps"]) == (0.5, 2)
    assert cli.main(["invoke", "x", "--image", str(tmp_path / "missing.png")]) == 2
    assert "--image" in capsys.readouterr().err
    # The request rule is checked before anything is sent: 2 steps x 0.25 runs none.
    args = parser.parse_args(["invoke", "x", "--image", str(path), "--strength", "0.25"])
    with pytest.raises(client.InvokeError, match="at least 1"):
        client.build_request(args)


def test_output_paths_number_extra_images(tmp_path):
    paths = client.output_paths(str(tmp_path / "cat.png"), 3, "png")
    assert [p.name for p in paths] == ["cat.png", "cat-1.png", "cat-2.png"]
    assert client.output_paths(None, 1, "jpeg")[0].name == "sdturbo.jpg"


def test_unreachable_server_is_one_line(capsys, tmp_path):
    with closed_port() as port:
        url = f"http://127.0.0.1:{port}"
        code, out, err = invoke(capsys, "a cat", "--url", url, "-o", str(tmp_path / "x.png"))
    assert code == 1 and out == ""
    assert err.strip().count("\n") == 0
    assert err.startswith("sdturbo invoke: error: cannot connect to")


def test_async_without_endpoint_or_bucket_is_refused(capsys):
    code, _, err = invoke(capsys, "a cat", "--async")
    assert code == 1 and "--async needs --endpoint" in err
    code, _, err = invoke(capsys, "a cat", "--endpoint", "e", "--async", "--region", "us-east-1")
    assert code == 1 and "--async needs --bucket" in err


# --- the real server -------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.slow
class TestLocalServer:
    def test_console_script_writes_the_image(self, server, tmp_path):
        executable = shutil.which("sdturbo")
        assert executable, "the sdturbo console script is not installed (pip install -e .)"
        out = tmp_path / "cat.png"
        proc = subprocess.run(
            [
                executable,
                "invoke",
                "a futuristic cat floating in the clouds",
                "-o",
                str(out),
                "--url",
                server.url,
                "--width",
                "96",
                "--height",
                "64",
                "--seed",
                "7",
                "--steps",
                "2",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        image = Image.open(out)
        assert (image.format, image.size) == ("PNG", (96, 64))
        assert "seed 7" in proc.stdout and "96x64" in proc.stdout

    def test_all_options_several_images_jpeg(self, server, capsys, tmp_path):
        code, out, err = invoke(
            capsys,
            "a cat",
            "-o",
            str(tmp_path / "cat.jpg"),
            "--url",
            server.url,
            "--num-images",
            "2",
            "--format",
            "jpeg",
            "--negative-prompt",
            "dogs",
            "--guidance-scale",
            "1.5",
            "--width",
            "64",
            "--height",
            "64",
            "--seed",
            "11",
        )
        assert code == 0, err
        for name in ("cat.jpg", "cat-1.jpg"):
            assert Image.open(tmp_path / name).format == "JPEG"
        assert "seed 11" in out

    def test_server_validation_error_is_one_line(self, server):
        # `sdturbo invoke` checks the schema before sending (exit 2, see above); a body that
        # skips that check gets the server's own 422, reported in one line.
        with pytest.raises(client.InvokeError) as raised:
            client.invoke_local(server.url, {"prompt": "a cat", "width": 65}, 30)
        message = str(raised.value)
        assert "\n" not in message
        assert "422 validation_error" in message and "width" in message


# --- AWS through a moto server ---------------------------------------------------------------


@pytest.fixture
def aws(moto_url, aws_credentials):
    runtime, s3 = client.aws_clients("us-east-1", moto_url, 30)
    return moto_url, runtime, s3


def queue_results(moto_url: str, kind: str, results: list[dict]) -> None:
    response = requests.post(
        f"{moto_url}/moto-api/static/sagemaker/{kind}", json={"results": results}, timeout=10
    )
    response.raise_for_status()


def response_body(image: bytes, seed: int = 5) -> str:
    encoded = base64.b64encode(image).decode()
    return json.dumps(
        {
            "image": encoded,
            "seed": seed,
            "seeds": [seed],
            "model": "tiny",
            "width": 32,
            "height": 16,
            "num_inference_steps": 1,
            "output_format": "png",
            "warnings": [],
            "timings": {
                "queue_ms": 1.0,
                "inference_ms": 2.0,
                "encode_ms": 3.0,
                "total_ms": 6.0,
                "batch_size": 1,
            },
        }
    )


def aws_args(moto_url: str) -> list[str]:
    return ["--region", "us-east-1", "--endpoint-url", moto_url]


@pytest.mark.integration
class TestMoto:
    def test_sync_endpoint(self, aws, capsys, tmp_path):
        moto_url, _, _ = aws
        image = png_bytes()
        queue_results(moto_url, "endpoint-results", [{"Body": response_body(image)}])
        out = tmp_path / "sync.png"
        code, stdout, err = invoke(
            capsys, "a cat", "--endpoint", "sd-sync", "-o", str(out), *aws_args(moto_url)
        )
        assert code == 0, err
        assert out.read_bytes() == image
        assert "seed 5" in stdout

    def test_async_uploads_the_request_then_reads_the_output(self, aws, capsys, tmp_path):
        moto_url, _, s3 = aws
        s3.create_bucket(Bucket="sd-async-in")
        image = png_bytes(color=(0, 90, 200))
        queue_results(moto_url, "async-endpoint-results", [{"data": response_body(image, 8)}])
        out = tmp_path / "async.png"
        code, _, err = invoke(
            capsys,
            "a cat",
            "--endpoint",
            "sd-async",
            "--async",
            "--bucket",
            "sd-async-in",
            "--seed",
            "8",
            "--width",
            "64",
            "--height",
            "64",
            "-o",
            str(out),
            *aws_args(moto_url),
        )
        assert code == 0, err
        assert out.read_bytes() == image
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="sd-async-in")["Contents"]]
        # Under inputs/direct/, which the bucket's upload trigger (infra/trigger.tf) skips: the
        # CLI invokes the endpoint itself, and a second invocation would run the model twice.
        assert len(keys) == 1 and keys[0].startswith("inputs/direct/") and keys[0].endswith(".json")
        uploaded = json.loads(s3.get_object(Bucket="sd-async-in", Key=keys[0])["Body"].read())
        assert uploaded == {"prompt": "a cat", "seed": 8, "width": 64, "height": 64}
        assert "queued" in err and "s3://" in err

    def test_async_failure_prints_the_body_and_exits_non_zero(self, aws, capsys, tmp_path):
        moto_url, _, s3 = aws
        s3.create_bucket(Bucket="sd-async-fail")
        failure = {"error": {"type": "out_of_memory", "message": "batch too large for the GPU"}}
        queue_results(
            moto_url, "async-endpoint-results", [{"is_failure": True, "data": json.dumps(failure)}]
        )
        out = tmp_path / "never.png"
        code, stdout, err = invoke(
            capsys,
            "a cat",
            "--endpoint",
            "sd-async",
            "--async",
            "--bucket",
            "sd-async-fail",
            "-o",
            str(out),
            *aws_args(moto_url),
        )
        assert code == 1 and stdout == "" and not out.exists()
        last = err.strip().splitlines()[-1]
        assert last == (
            "sdturbo invoke: error: endpoint failed: error out_of_memory: batch too large for "
            "the GPU"
        )

    def test_wait_polls_until_the_output_appears(self, aws):
        _, _, s3 = aws
        s3.create_bucket(Bucket="sd-async-out")
        image = png_bytes()
        writer = threading.Timer(
            1.0, lambda: s3.put_object(Bucket="sd-async-out", Key="out/1.out", Body=image)
        )
        seen: list[float] = []
        writer.start()
        try:
            body = client.wait_for_result(
                s3,
                "s3://sd-async-out/out/1.out",
                "s3://sd-async-out/failures/1-error.out",
                timeout_s=20,
                poll_s=0.1,
                progress=seen.append,
            )
        finally:
            writer.join()
        assert body == image
        assert len(seen) >= 3 and seen == sorted(seen)

    def test_wait_gives_up_after_its_timeout(self, aws):
        _, _, s3 = aws
        s3.create_bucket(Bucket="sd-async-empty")
        start = time.monotonic()
        with pytest.raises(client.InvokeError, match="no result"):
            client.wait_for_result(s3, "s3://sd-async-empty/o.out", None, timeout_s=0.5, poll_s=0.1)
        assert time.monotonic() - start < 5

    def test_aws_error_is_one_line(self, aws, capsys):
        moto_url, _, _ = aws
        code, _, err = invoke(
            capsys,
            "a cat",
            "--endpoint",
            "sd",
            "--async",
            "--bucket",
            "no-such-bucket",
            *aws_args(moto_url),
        )
        assert code == 1
        assert err.strip().count("\n") == 0 and "NoSuchBucket" in err

    def test_submit_async_uploads_where_the_trigger_does_not_look(self, aws):
        _, runtime, s3 = aws
        s3.create_bucket(Bucket="sd-async-direct")
        sent = client.submit_async(runtime, s3, "sdturbo-async", "sd-async-direct", {"prompt": "x"})
        (key,) = [o["Key"] for o in s3.list_objects_v2(Bucket="sd-async-direct")["Contents"]]
        assert key.startswith("inputs/direct/") and key.endswith(".json")
        assert json.loads(s3.get_object(Bucket="sd-async-direct", Key=key)["Body"].read()) == {
            "prompt": "x"
        }
        # moto answers an InputLocation it has seen with the same result: the one sent was key's.
        again = runtime.invoke_endpoint_async(
            EndpointName="sdturbo-async", InputLocation=f"s3://sd-async-direct/{key}"
        )
        assert again["OutputLocation"] == sent["OutputLocation"]


# --- S3 answers moto cannot give --------------------------------------------------------------


class FakeS3:
    """get_object answers from a script of error codes, then the body. A fake, not moto: moto
    answers a missing key with 404 whatever the caller's permissions (S3 says 403 without
    s3:ListBucket) and cannot be made to fail a GetObject with a 500."""

    def __init__(self, answers: list[str | bytes]):
        self.answers, self.asked = list(answers), []

    def get_object(self, Bucket, Key):
        from botocore.exceptions import ClientError

        self.asked.append(f"s3://{Bucket}/{Key}")
        answer = self.answers.pop(0) if self.answers else "NoSuchKey"
        if isinstance(answer, bytes):
            return {"Body": io.BytesIO(answer)}
        status = {"AccessDenied": 403, "NoSuchKey": 404}.get(answer, 500)
        raise ClientError(
            {"Error": {"Code": answer, "Message": answer},
             "ResponseMetadata": {"HTTPStatusCode": status}},
            "GetObject",
        )  # fmt: skip


def test_a_403_while_polling_means_not_yet_without_list_bucket():
    # Without s3:ListBucket, S3 answers GetObject of a missing key with 403 AccessDenied.
    s3 = FakeS3(["AccessDenied", "AccessDenied", "AccessDenied", "AccessDenied", b"image"])
    body = client.wait_for_result(s3, "s3://b/outputs/1.out", "s3://b/failures/1-error.out",
                                  timeout_s=10, poll_s=0)  # fmt: skip
    assert body == b"image"
    assert s3.asked[-1] == "s3://b/outputs/1.out"


def test_a_timeout_after_only_403s_says_that_a_403_may_mean_missing():
    s3 = FakeS3(["AccessDenied"] * 1000)
    with pytest.raises(client.InvokeError) as raised:
        client.wait_for_result(s3, "s3://b/outputs/1.out", None, timeout_s=0.05, poll_s=0.01)
    message = str(raised.value)
    assert "no result at s3://b/outputs/1.out" in message
    assert "403 AccessDenied" in message and "s3:ListBucket" in message


def test_other_s3_errors_stay_fatal():
    with pytest.raises(Exception, match="InternalError"):
        client.wait_for_result(FakeS3(["InternalError"]), "s3://b/o.out", None, 5, 0)


def test_async_waits_an_hour_by_default_sync_two_minutes(monkeypatch):
    # A request to an endpoint at zero waits for the wake-up alarm, an instance, the model
    # download and the warm-up: SageMaker allows 1200 s for each of the last two.
    seen = {}

    def fake_invoke(args, body):
        seen[args.use_async] = args.timeout
        raise client.InvokeError("stop here")

    monkeypatch.setattr(client.command, "_invoke", fake_invoke)
    for extra in (["--async", "--bucket", "b"], []):
        cli.main(["invoke", "a cat", "--endpoint", "e", *extra])
    assert seen == {True: 3600.0, False: 120.0}
    assert cli.main(["invoke", "a cat", "--endpoint", "e", "--async", "--bucket", "b",
                     "--timeout", "60"]) == 1  # fmt: skip
    assert seen[True] == 60.0


def test_progress_on_a_log_is_a_line_at_a_time_and_ends_with_the_total():
    stream = io.StringIO()
    show = client.progress_printer(stream, total_s=3600)
    for elapsed in (0.0, 2.0, 4.0):
        show(elapsed)
    show.close()
    lines = [line.strip("\r") for line in stream.getvalue().splitlines()]
    # Not a terminal: no redraw every half second, only the first and the final state.
    assert lines == [
        "waiting for the async result: 0/3600 s |          | 00:00",
        "waiting for the async result: 4/3600 s |          | 00:00",
    ]


def test_invoke_imports_neither_torch_nor_ray_itself():
    # serve_app/__init__ imports the Ray app builder, so import the module file alone.
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('c', {client.__file__!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "print('torch' in sys.modules, 'ray' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ},
    ).stdout
    assert out.split() == ["False", "False"]
