"""Dockerfile and workflows: hadolint, actionlint, zizmor, and the image's entrypoint command.

No Docker engine here, so the image is not built: the Dockerfile is linted, its contract with
SageMaker is read from it, and the command SageMaker runs (`ENTRYPOINT` + `serve`) is started
from the installed console script and must answer /ping.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
WORKFLOWS = REPO / ".github" / "workflows"
USES = re.compile(r"^\s*-?\s*uses:\s*(\S+)", re.MULTILINE)


def tool(name: str) -> str:
    """Path of a CLI tool: on PATH or in .venv-tools/bin (see infra/README.md); else fail."""
    found = shutil.which(name) or shutil.which(name, path=str(REPO / ".venv-tools" / "bin"))
    if not found:
        pytest.fail(f"{name} not found on PATH or in .venv-tools/bin: install it (infra/README.md)")
    return found


def lint(args: list[str]) -> None:
    result = subprocess.run(
        args, cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"{args}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"


def instructions(name: str) -> list[str]:
    """Arguments of every `NAME` instruction in the Dockerfile (continuations joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [m.group(1).strip() for m in re.finditer(rf"^{name}\s+(.+)$", text, re.MULTILINE)]


@pytest.mark.integration
def test_hadolint():
    lint([tool("hadolint"), "--failure-threshold", "info", str(DOCKERFILE)])


@pytest.mark.integration
def test_actionlint():
    lint([tool("actionlint"), "-no-color"])


@pytest.mark.integration
def test_zizmor_reports_nothing_at_medium_or_above():
    lint([tool("zizmor"), "--offline", "--min-severity", "medium", "--no-progress", str(WORKFLOWS)])


def test_workflows_pin_actions_by_sha_and_use_oidc():
    texts = {p.name: p.read_text() for p in WORKFLOWS.glob("*.yml")}
    assert set(texts) == {"ci.yml", "build-and-push.yml", "deploy-infrastructure.yml"}
    for name, text in texts.items():
        for ref in USES.findall(text):
            assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", ref), (
                f"{name}: {ref} not SHA-pinned"
            )
        assert "aws-access-key-id" not in text and "AWS_SECRET_ACCESS_KEY" not in text, name
        assert re.search(r"^permissions:", text, re.MULTILINE), f"{name}: no top-level permissions"
    for name in ("build-and-push.yml", "deploy-infrastructure.yml"):
        assert "role-to-assume:" in texts[name] and "id-token: write" in texts[name]
    deploy = texts["deploy-infrastructure.yml"]
    apply_job = deploy[deploy.index("\n  apply:") :]
    assert "environment: production" in apply_job and "terraform apply tfplan" in apply_job
    assert ":${{ github.sha }}" in texts["build-and-push.yml"]


def test_dockerfile_contract():
    assert instructions("FROM")[-1].startswith("${CUDA_IMAGE}")
    assert any("nvidia/cuda:" in arg and "runtime" in arg for arg in instructions("ARG"))
    assert json.loads(instructions("ENTRYPOINT")[-1]) == ["sdturbo"]  # exec form
    assert json.loads(instructions("CMD")[-1]) == ["serve"]
    assert instructions("EXPOSE") == ["8080"]
    assert any(
        "com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true" in label
        for label in instructions("LABEL")
    )
    runs = instructions("RUN")
    copies = instructions("COPY")
    # Dependencies (the gpu extra) are installed from pyproject.toml before the code is copied.
    deps = next(i for i, r in enumerate(runs) if 'pip install ".[gpu]"' in r)
    assert copies[0].startswith("pyproject.toml")
    text = DOCKERFILE.read_text()
    assert text.index('pip install ".[gpu]"') < text.index("COPY serve_app")
    assert "--no-deps" in runs[deps + 1]
    # No weights in the image: nothing but the package is sent to the build.
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*")] == "*" and "**/*.safetensors" in ignore
    assert not any(re.search(r"huggingface|from_pretrained|\.safetensors", r) for r in runs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
