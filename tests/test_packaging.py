"""The light client: a fresh venv with the package and its loadtest extra holds no torch, Ray or
diffusers, and `sdturbo invoke` from it works against the real server."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import built_once

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
HEAVY = {"torch", "ray", "diffusers", "transformers", "accelerate", "fastapi", "uvicorn"}


@pytest.fixture(scope="session")
def client_venv(tmp_path_factory, worker_id) -> Path:
    """A fresh venv with the client install; built once per run (the test against the server
    runs on the Ray worker, the others wherever xdist puts them)."""

    def build(venv: Path) -> None:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        install = subprocess.run(
            [venv / "bin" / "pip", "install", "-q", f"{ROOT}[loadtest]"],
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert install.returncode == 0, install.stderr[-3000:]

    return built_once(tmp_path_factory, worker_id, "client-venv", build)


def test_the_client_install_holds_nothing_of_the_server(client_venv):
    listed = subprocess.run(
        [client_venv / "bin" / "pip", "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    installed = {package["name"].lower() for package in json.loads(listed.stdout)}
    assert {"sdturbo", "locust", "pydantic", "requests", "boto3"} <= installed
    assert not installed & HEAVY, installed & HEAVY
    size_mb = sum(f.stat().st_size for f in client_venv.rglob("*") if f.is_file()) / 2**20
    print(f"\nclient venv with the loadtest extra: {len(installed)} packages, {size_mb:.0f} MB")


def test_sdturbo_invoke_from_the_client_install_against_the_server(client_venv, server, tmp_path):
    output = tmp_path / "cat.png"
    proc = subprocess.run(
        [
            client_venv / "bin" / "sdturbo",
            "invoke",
            "a cat",
            "--url",
            server.url,
            "--width",
            "64",
            "--height",
            "96",
            "--seed",
            "3",
            "-o",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert Image.open(io.BytesIO(output.read_bytes())).size == (64, 96)
    assert "seed 3" in proc.stdout
    server_side = subprocess.run(
        [client_venv / "bin" / "sdturbo", "serve", "--model", "tiny"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert server_side.returncode == 2 and "pip install 'sdturbo[serve]'" in server_side.stderr


def test_the_locust_scenarios_load_from_the_client_install(client_venv):
    proc = subprocess.run(
        [client_venv / "bin" / "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"), "--list"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=client_venv,  # not the checkout: the installed package must suffice
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "PredictUser" in proc.stdout and "SageMakerAsyncUser" in proc.stdout
