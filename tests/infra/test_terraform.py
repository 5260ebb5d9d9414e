"""infra/: terraform fmt, offline init + validate with the committed lock file, checkov, and the
settings that state locking depends on. The stack applied against moto is in test_deploy.py.

The tools are real and must be installed (terraform on PATH; checkov on PATH or in
.venv-tools/bin): a missing tool fails the test, never skips it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
import yaml

from tests.infra.conftest import INFRA, REPO, WORKFLOW, copy_stack, ok, run, tool


def test_terraform_fmt(tf_env):
    ok(run([tool("terraform"), "fmt", "-check", "-recursive", "-diff"], INFRA, tf_env, 60))


@pytest.mark.slow  # a tool run of seconds
def test_init_with_the_committed_lock_file_and_validate_offline(tf_env, tmp_path):
    stack = copy_stack(tmp_path / "infra")
    terraform = tool("terraform")
    # -lockfile=readonly, as CI runs it: the committed lock file must already pin the provider.
    ok(run([terraform, "init", "-backend=false", "-input=false", "-no-color",
            "-lockfile=readonly"], stack, tf_env))  # fmt: skip
    out = ok(run([terraform, "validate", "-json"], stack, tf_env, 120))
    assert json.loads(out)["valid"] is True
    assert (stack / ".terraform.lock.hcl").read_text() == (
        INFRA / ".terraform.lock.hcl"
    ).read_text()


def test_the_provider_lock_file_is_committed_not_ignored():
    lock = (INFRA / ".terraform.lock.hcl").read_text()
    aws = r'provider "registry.terraform.io/hashicorp/aws" \{\s*version\s*=\s*"5\.'
    assert re.search(aws, lock), lock
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "infra/.terraform.lock.hcl"], cwd=REPO, check=False
    )
    assert ignored.returncode == 1, ".gitignore still ignores infra/.terraform.lock.hcl"


def test_state_locking_uses_a_lock_file_and_terraform_that_supports_it():
    versions = (INFRA / "versions.tf").read_text()
    required = re.search(r'required_version\s*=\s*">=\s*(\d+)\.(\d+)"', versions)
    assert required and (int(required[1]), int(required[2])) >= (1, 10), "use_lockfile: >= 1.10"
    workflow = yaml.safe_load(WORKFLOW.read_text())
    for name, job in workflow["jobs"].items():
        setup = next(s for s in job["steps"] if "setup-terraform" in s.get("uses", ""))
        major, minor = map(int, setup["with"]["terraform_version"].split(".")[:2])
        assert (major, minor) >= (1, 10), name
        init = next(s["run"] for s in job["steps"] if s.get("name") == "terraform init")
        assert '-backend-config="use_lockfile=true"' in init, name
        assert "-lockfile=readonly" in init, name
        assert "dynamodb_table" not in init, name
    readme = (INFRA / "README.md").read_text()
    assert '-backend-config="use_lockfile=true"' in readme


def test_inference_ami_versions_are_sagemakers_gpu_amis():
    import botocore.session

    model = botocore.session.get_session().get_service_model("sagemaker")
    documented = set(model.shape_for("ProductionVariantInferenceAmiVersion").enum)
    block = re.search(
        r'variable "inference_ami_version" \{(.*?)\n\}', (INFRA / "variables.tf").read_text(), re.S
    ).group(1)
    allowed = set(re.findall(r'"(al2\S*-ami-sagemaker-inference-\S+)"', block))
    default = re.search(r'default\s*=\s*"([^"]+)"', block).group(1)
    assert allowed and allowed <= documented and "neuron" not in " ".join(allowed)
    assert default == "al2-ami-sagemaker-inference-gpu-3-1"  # driver 550, CUDA 12.4


@pytest.mark.slow  # a tool run of seconds
def test_checkov_passes_and_every_skip_is_justified():
    result = run(
        [tool("checkov"), "-d", str(INFRA), "--framework", "terraform", "--output", "json",
         "--quiet", "--skip-download"],
        REPO, {**os.environ, "BC_SKIP_MAPPING": "TRUE"}, 300,
    )  # fmt: skip
    report = json.loads(result.stdout)
    summary = report["summary"]
    failed = [f"{c['check_id']} {c['resource']}" for c in report["results"]["failed_checks"]]
    assert summary["failed"] == 0 and not failed, failed
    assert result.returncode == 0, result.stderr[-2000:]
    assert summary["passed"] > 50, summary  # it really scanned the stack
    skips = re.findall(
        r"checkov:skip=([A-Z0-9_]+)(.*)", "".join(p.read_text() for p in INFRA.glob("*.tf"))
    )
    assert len(skips) == summary["skipped"], (skips, summary)
    for check_id, reason in skips:
        assert len(reason.lstrip(": ").strip()) > 20, f"{check_id} is skipped without a reason"
