"""`sdturbo serve`: the SageMaker container entrypoint, started as SageMaker starts it."""

import io
import os
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from PIL import Image

from serve_app.cli import build_parser, default_model
from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_serve_defaults_to_sagemaker_port_and_model_dir(monkeypatch):
    monkeypatch.setenv("SAGEMAKER_BIND_TO_PORT", "9123")
    args = build_parser().parse_args(["serve"])
    assert (args.port, args.host) == (9123, "0.0.0.0")
    # /opt/ml/model holds no pipeline here, so the hub id is the default.
    assert default_model() == "stabilityai/sd-turbo"


def test_sdturbo_serve_answers_ping_and_invocations_then_drains_on_sigterm(tmp_path):
    port = free_port()
    env = {**os.environ, "SAGEMAKER_BIND_TO_PORT": str(port)}
    log = (tmp_path / "serve.log").open("wb")
    # Exactly what the image runs: ENTRYPOINT ["sdturbo"] + SageMaker's "serve" argument.
    sdturbo = shutil.which("sdturbo")
    assert sdturbo, "the sdturbo console script is not installed (pip install -e .)"
    process = subprocess.Popen(
        [
            sdturbo,
            "serve",
            "--model",
            "tiny",
            "--set",
            "warmup_sizes=64",
            "--set",
            "device=cpu",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if requests.get(url + "/ping", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("sdturbo serve never answered /ping with 200")
        response = requests.post(
            url + "/invocations",
            json={"prompt": "a cat astronaut", "width": 64, "height": 64},
            headers={"Accept": "image/png"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        assert Image.open(io.BytesIO(response.content)).size == (64, 64)

        # SIGTERM while requests are in flight: every accepted request completes, new ones are
        # refused, and the process exits before SageMaker's SIGKILL 30 s later.
        slow = {"prompt": "slow", "width": 512, "height": 512, "num_inference_steps": 4}
        with ThreadPoolExecutor(4) as pool:
            in_flight = [
                pool.submit(requests.post, url + "/predict", json=slow, timeout=60)
                for _ in range(4)
            ]
            time.sleep(1.0)
            process.send_signal(signal.SIGTERM)
            terminated = time.monotonic()
            time.sleep(0.5)
            try:
                late = requests.post(url + "/predict", json=slow, timeout=10)
                assert late.status_code == 503, late.text
            except requests.ConnectionError:
                pass  # already closed: refused either way
            statuses = [future.result().status_code for future in in_flight]
        assert statuses == [200] * 4
        assert process.wait(timeout=30) == 0
        assert time.monotonic() - terminated < 30
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
