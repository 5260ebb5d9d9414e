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

from tests.infra.conftest import INFRA, REPO, WORKFLOW, copy_stack, ok, provider_mirror, run, tool

# ProductionVariantInferenceAmiVersion's GPU values in the SDK of hashicorp/aws 5.100.0 (read
# from its binary by the test below); botocore's model also lists al2023-...-gpu-4-1.
PROVIDER_INFERENCE_AMIS = {
    "al2-ami-sagemaker-inference-gpu-2",
    "al2-ami-sagemaker-inference-gpu-2-1",
    "al2-ami-sagemaker-inference-gpu-3-1",
}


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
    # infra/README.md: a real-time endpoint scales to zero only through inference components
    # with managed instance scaling; the pinned provider has no inference component resource.
    # (schema needs an initialised backend: read it in a folder of the provider pin alone)
    pin = tmp_path / "pin"
    pin.mkdir()
    versions = (stack / "versions.tf").read_text().replace('backend "s3" {}', "")
    (pin / "versions.tf").write_text(versions.split('provider "aws"')[0])
    (pin / ".terraform.lock.hcl").write_text((stack / ".terraform.lock.hcl").read_text())
    ok(run([terraform, "init", "-input=false", "-no-color", "-lockfile=readonly"], pin, tf_env))
    schema = json.loads(ok(run([terraform, "providers", "schema", "-json"], pin, tf_env, 120)))
    resources = schema["provider_schemas"]["registry.terraform.io/hashicorp/aws"][
        "resource_schemas"
    ]
    assert "aws_sagemaker_endpoint_configuration" in resources
    assert not [r for r in resources if "inference_component" in r]


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
    # ...and those the pinned provider accepts: it validates against its own SDK's enum, older
    # than botocore's (al2023-ami-sagemaker-inference-gpu-4-1 fails its plan).
    assert allowed <= PROVIDER_INFERENCE_AMIS, allowed - PROVIDER_INFERENCE_AMIS


def test_the_provider_enum_of_inference_amis_is_what_the_tests_say():
    """PROVIDER_INFERENCE_AMIS read from the pinned provider's binary (its SDK's enum values are
    string constants there), where a local mirror holds it."""
    mirror = provider_mirror()
    lock = (INFRA / ".terraform.lock.hcl").read_text()
    version = re.search(
        r'provider "registry.terraform.io/hashicorp/aws" \{\s*version\s*=\s*"([^"]+)"', lock
    )[1]
    binaries = (
        sorted(
            mirror.glob(f"registry.terraform.io/hashicorp/aws/{version}/*/terraform-provider-aws*")
        )
        if mirror
        else []
    )
    if not binaries:
        pytest.skip(f"no local mirror of hashicorp/aws {version} to read")
    text = binaries[0].read_bytes()
    found = set(
        re.findall(rb"al2[0-9]*-ami-sagemaker-inference-(?:gpu|neuron)-[0-9](?:-[0-9])?", text)
    )
    # Constants sit end to end in the binary: "...gpu-2-1al2-ami..." reads as gpu-2-1 here.
    assert {f.decode() for f in found} == PROVIDER_INFERENCE_AMIS | {
        "al2-ami-sagemaker-inference-neuron-2"
    }


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
