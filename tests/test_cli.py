"""`sdturbo serve` (the SageMaker container entrypoint, started as SageMaker starts it) and
the README's `serve run` command."""

import base64
import contextlib
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

from serve_app import cli
from serve_app.config import settings_from_environment
from serve_app.ports import reserved_port
from serve_app.server import wait_until_ready
from tests.conftest import own_cluster_environment, wait_for, wait_until_all_arrived

# The README's command has no port flag: 8000, taken in turn by the tests that run it.
README_PORT = range(8000, 8001)


def test_settings_come_from_set_over_environment_over_defaults(monkeypatch):
    monkeypatch.setenv("SDTURBO_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("SDTURBO_WARMUP_SIZES", "256,512")
    monkeypatch.setenv("SDTURBO_NOT_A_SETTING", "x")
    monkeypatch.setenv("SAGEMAKER_BIND_TO_PORT", "9123")
    assert settings_from_environment() == {"max_batch_size": "16", "warmup_sizes": "256,512"}
    from serve_app.config import unknown_environment_settings

    environ = {"SDTURBO_MAX_BATCH_SIZES": "8", "SDTURBO_BATCH_BUCKETS": "1,2", "OTHER": "x"}
    assert unknown_environment_settings(environ) == [
        "SDTURBO_MAX_BATCH_SIZES (did you mean SDTURBO_MAX_BATCH_SIZE?)"
    ]
    args = cli.build_parser().parse_args(["serve", "--model", "tiny", "--set", "max_batch_size=4"])
    assert (args.port, args.host) == (9123, "0.0.0.0")
    settings = cli.app_args(args)
    assert (settings.max_batch_size, settings.warmup_sizes) == (4, [256, 512])


def test_without_a_model_in_opt_ml_model_serve_fails_at_once_with_one_line(tmp_path):
    sdturbo = shutil.which("sdturbo")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDTURBO_")}
    start = time.monotonic()
    proc = subprocess.run([sdturbo, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "/opt/ml/model holds no model" in lines[0], proc.stderr
    assert time.monotonic() - start < 15


def test_device_cuda_without_a_gpu_fails_at_once_not_on_the_cpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    sdturbo = shutil.which("sdturbo")
    env = {**os.environ, "SDTURBO_DEVICE": "cuda"}
    proc = subprocess.run(
        [sdturbo, "serve", "--model", "tiny"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "device=cuda but torch" in proc.stderr and "sees no usable GPU" in proc.stderr


@pytest.mark.integration
@pytest.mark.slow
def test_the_readmes_serve_run_command_serves_the_tiny_model(tmp_path):
    """`RAY_SERVE_ENABLE_HA_PROXY=1 serve run serve_app:app model=tiny`, verbatim (port 8000)."""
    env = {**own_cluster_environment(), "RAY_SERVE_ENABLE_HA_PROXY": "1"}
    # Unbuffered, and a Python traceback of every thread on SIGABRT: what the log shows if
    # Ctrl-C ever fails to stop it.
    env.update(PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1")
    log_path = tmp_path / "serve-run.log"
    with reserved_port(README_PORT, wait=True) as port, log_path.open("wb") as log:
        # As from a terminal, where Ctrl-C works: a runner that started this test in the
        # background (SIGINT ignored, which a child inherits across exec) must not decide it.
        ignored = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            process = subprocess.Popen(
                [shutil.which("serve"), "run", "serve_app:app", "model=tiny"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            signal.signal(signal.SIGINT, ignored)
        serve_the_tiny_model(process, f"http://127.0.0.1:{port}", log_path)


def serve_the_tiny_model(process: subprocess.Popen, url: str, log_path) -> None:
    try:
        wait_until_ready(url, timeout_s=180, process=process, log=log_path)
        response = requests.post(
            url + "/predict", json={"prompt": "a cat astronaut on the moon"}, timeout=60
        )
        assert response.status_code == 200, response.text
        image = Image.open(io.BytesIO(base64.b64decode(response.json()["image"])))
        assert image.size == (512, 512)
        refused = requests.post(url + "/predict", json={"prompt": "a cat", "width": "64"})
        assert refused.status_code == 422 and "width" in refused.json()["error"]["message"]
    finally:
        # Ctrl-C, as a user stops it: about 6 s on an idle host; the bound is for a host busy
        # with the other test worker (an image build, terraform).
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)  # faulthandler: every thread's stack to the log
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=15)
            process.kill()
            pytest.fail(f"serve run ignored Ctrl-C for 120 s:\n{log_path.read_text()[-8000:]}")


@pytest.mark.integration
@pytest.mark.slow
def test_sdturbo_serve_answers_ping_and_invocations_then_drains_on_sigterm(tmp_path):
    with reserved_port() as port:
        serve_and_drain(port, tmp_path)


def serve_and_drain(port: int, tmp_path) -> None:
    # Settings as SageMaker passes them: the model's environment.
    env = {
        **own_cluster_environment(),
        "SAGEMAKER_BIND_TO_PORT": str(port),
        "SDTURBO_WARMUP_SIZES": "64",
        "SDTURBO_DEVICE": "cpu",
    }
    log = (tmp_path / "serve.log").open("wb")
    # Exactly what the image runs: ENTRYPOINT ["sdturbo"] + SageMaker's "serve" argument.
    process = subprocess.Popen(
        [shutil.which("sdturbo"), "serve", "--model", "tiny"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        statuses = wait_until_ready(url, timeout_s=180, process=process, log=tmp_path / "serve.log")
        assert 503 in statuses, statuses  # loading, then warm
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
        # One alone first: admission then knows this size's cost, not only the 64x64 one's
        # (serve_app/engine/admission.py), and admits all four below whatever the machine's speed.
        assert requests.post(url + "/predict", json=slow, timeout=60).status_code == 200
        with ThreadPoolExecutor(4) as pool:
            in_flight = [
                pool.submit(requests.post, url + "/predict", json=slow, timeout=60)
                for _ in range(4)
            ]
            # One replica: /ping counts the requests it has accepted.
            assert wait_until_all_arrived(url, in_flight) >= 1  # SIGTERM finds work running
            process.send_signal(signal.SIGTERM)
            terminated = time.monotonic()
            try:
                wait_for(lambda: requests.get(url + "/ping", timeout=5).status_code == 503)
                late = requests.post(url + "/predict", json=slow, timeout=10)
                assert late.status_code == 503, late.text
                assert late.json()["error"]["type"] == "shutting_down"
            except requests.ConnectionError:
                pass  # already closed: refused either way
            statuses = [future.result().status_code for future in in_flight]
        assert statuses == [200] * 4
        assert process.wait(timeout=30) == 0
        assert time.monotonic() - terminated < 30
        text = (tmp_path / "serve.log").read_text()
        assert "drained (0 requests still running)" in text
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
