"""Dockerfile and workflows: hadolint, actionlint, zizmor, and the image's entrypoint command.

The Dockerfile is linted and its contract with SageMaker is read from it here; the image itself
is built and run with podman in tests/container/test_image.py.
"""

from __future__ import annotations

import json
import re
import shutil
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
    # One file, two images: CUDA for AWS by default, CPU for the container test (build args).
    assert instructions("FROM")[-1].startswith("${BASE_IMAGE}")
    args = dict(arg.split("=", 1) for arg in instructions("ARG") if "=" in arg)
    # -base, not -runtime: torch's wheels carry the CUDA libraries (nvidia-* packages).
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-base-ubuntu[\d.]+", args["BASE_IMAGE"])
    # The torch build must run on driver 550 (CUDA 12.4, SageMaker's newest inference AMI):
    # a CUDA 12 build (minor-version compatibility), never 13.x, never PyPI's default.
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu12\d", args["TORCH_INDEX_URL"])
    assert args["SDTURBO_DEVICE"] == "cuda"  # no silent CPU fallback on a GPU endpoint
    assert args["PIP_CERT"] == args["PIP_FIND_LINKS"] == '""'  # build-host settings: off on AWS
    env = " ".join(instructions("ENV"))
    assert "SDTURBO_DEVICE=${SDTURBO_DEVICE}" in env and 'NVIDIA_REQUIRE_CUDA="cuda>=12.0"' in env
    assert json.loads(instructions("ENTRYPOINT")[-1]) == ["sdturbo"]  # exec form
    assert json.loads(instructions("CMD")[-1]) == ["serve"]
    assert instructions("EXPOSE") == ["8080"]
    assert any(
        "com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true" in label
        for label in instructions("LABEL")
    )
    runs = instructions("RUN")
    # Triton and Inductor compile at run time: a C/C++ compiler and the Python headers.
    packages = runs[0].split("--no-install-recommends", 1)[1].split("&&")[0].split()
    assert {"g++", "python3-dev"} <= set(packages), packages
    # The server's dependencies (the serve extra; not gpu: xformers would replace the cu126
    # torch) are installed from pyproject.toml alone, before the code is copied.
    deps = next(i for i, r in enumerate(runs) if 'pip install ".[serve]" "torch==' in r)
    assert instructions("COPY")[0] == "pyproject.toml ./"
    text = DOCKERFILE.read_text()
    assert text.index('pip install ".[serve]"') < text.index("COPY serve_app")
    assert "--no-deps" in runs[deps + 1]
    assert not any("gpu" in extras for r in runs for extras in re.findall(r"\.\[([\w,]*)\]", r))
    # No weights in the image: nothing but the packages is sent to the build.
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*")] == "*" and "**/*.safetensors" in ignore
    assert not any(re.search(r"huggingface|from_pretrained|\.safetensors", r) for r in runs)


def test_the_image_workflow_reruns_for_a_pushed_sha_and_frees_disk():
    import yaml

    job = yaml.safe_load((WORKFLOWS / "build-and-push.yml").read_text())["jobs"]["build-and-push"]
    steps = job["steps"]
    names = [s.get("name") or s.get("uses", "").split("@")[0] for s in steps]
    check = names.index("Skip an image already pushed")
    free = names.index("Free disk space")
    build = names.index("docker/build-push-action")
    assert check < free < build
    assert "aws ecr describe-images" in steps[check]["run"]
    assert "ImageNotFoundException" in steps[check]["run"]  # other errors still fail the job
    for step in steps[check + 1 :]:  # nothing is built or pushed for an existing tag
        assert step.get("if") == "steps.existing.outputs.exists != 'true'", step
