"""A server that cannot start says why in one line and stops (issue 22): each way a replica's
start fails, on the tiny model, explained in words a user acts on; the start bounded; and the
entry points (`sdturbo serve`, the README's `serve run`) exiting non-zero with that line last.
The hub is made unreachable through the environment (HF_ENDPOINT), nothing is patched."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

from serve_app.config import BatchConfig, ModelSettings
from serve_app.engine import Engine
from serve_app.engine.errors import ModelUnavailable
from serve_app.pipeline import failures
from serve_app.pipeline.backend import DiffusersBackend
from serve_app.ports import reserved_port
from tests.conftest import closed_port, own_cluster_environment


def start_failure(model: str, **settings) -> tuple[str, float]:
    """Start a real engine on the diffusers backend; the one line it failed with, and when."""
    backend = DiffusersBackend(ModelSettings(model=model, device="cpu", **settings))
    engine = Engine(backend, BatchConfig(), 30, model)
    began = time.monotonic()
    with pytest.raises(ModelUnavailable):
        engine.start().result(timeout=120)
    took = time.monotonic() - began
    assert engine.health == "failed" and engine.ping()["reason"] == engine.failure
    assert "\n" not in engine.failure and "Traceback" not in engine.failure
    engine.close()
    return engine.failure, took


def test_a_folder_that_is_not_a_diffusers_model(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    line, took = start_failure(str(tmp_path))
    assert "holds no diffusers pipeline (no model_index.json)" in line
    assert "save_pretrained or optimize build" in line
    assert took < 10


def test_truncated_weights(tmp_path, tiny_model_dir):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    weights = next((folder / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    line, took = start_failure(str(folder))
    assert f"the weights of {folder} are truncated or corrupt" in line
    assert "rebuild the artifact" in line
    assert took < 30


def test_device_cuda_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    backend = DiffusersBackend(ModelSettings(model="tiny", device="cuda"))
    engine = Engine(backend, BatchConfig(), 30, "tiny")
    with pytest.raises(ModelUnavailable, match=r"sees no usable GPU.*device=cpu"):
        engine.start().result(timeout=60)
    engine.close()


def test_out_of_memory_and_an_unsupported_model_are_named():
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert failures.explain(oom, "m").startswith("out of GPU memory while loading or warming up")
    from serve_app.pipeline.sd_turbo import UnsupportedModel

    line = failures.explain(UnsupportedModel("a UNet conditioned on the guidance scale"), "lcm")
    assert line == (
        "lcm is not an SD-Turbo-family model this server runs: a UNet conditioned on the "
        "guidance scale"
    )


def unreachable_hub(tmp_path: Path, port: int) -> dict[str, str]:
    """Nothing listens on ``port``; an empty Hugging Face cache."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("SDTURBO_", "HF_"))}
    return {**environ, "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HOME": str(tmp_path)}


def run_to_exit(argv: list[str], env: dict, timeout_s: float) -> tuple[int, list[str], float]:
    began = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout_s)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    return proc.returncode, lines, time.monotonic() - began


@pytest.mark.integration
@pytest.mark.slow
def test_the_readmes_serve_run_with_an_unreachable_hub_exits_with_one_line(tmp_path):
    """The issue's case: `serve run serve_app:app` for the real model, no hub. Once a replica
    retried downloads, then Serve restarted it again and again; now one start, one line."""
    with closed_port() as hub:
        env = own_cluster_environment(unreachable_hub(tmp_path, hub))
        env["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
        argv = [shutil.which("serve"), "run", "serve_app:app", "device=cpu"]
        with reserved_port(range(8000, 8001), wait=True):  # `serve run`'s port
            code, lines, took = run_to_exit(argv, env, timeout_s=240)
    assert code == 1, lines[-20:]
    assert lines[-1].startswith("sdturbo: error: the model failed to start: cannot "), lines
    assert f"the Hugging Face hub ({env['HF_ENDPOINT']}) is unreachable" in lines[-1]
    assert "HF_HUB_OFFLINE=1" in lines[-1] and "model=tiny" in lines[-1]
    assert not any("Traceback" in line for line in lines), "\n".join(lines[-80:])
    assert took < 180  # not an endless restart loop: one start, then out


@pytest.mark.integration
@pytest.mark.slow
def test_sdturbo_serve_on_a_corrupt_folder_exits_non_zero_with_one_line(tmp_path, tiny_model_dir):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    weights = next((folder / "vae").glob("*.safetensors"))
    weights.write_bytes(b"not a safetensors file")
    env = own_cluster_environment({**os.environ, "SDTURBO_DEVICE": "cpu"})
    with reserved_port() as port:
        argv = [shutil.which("sdturbo"), "serve", "--model", str(folder), "--port", str(port)]
        code, lines, took = run_to_exit(argv, env, timeout_s=240)
    assert code == 1, lines[-20:]
    assert lines[-1].startswith("sdturbo serve: error: the model failed to start: the weights of")
    assert "truncated or corrupt" in lines[-1]
    assert not any("Traceback" in line for line in lines), "\n".join(lines[-80:])
    assert took < 180
