"""Shared tools for the infra tests: terraform and moto, started for real and stopped afterwards.

The ``deployment`` fixture walks infra/README.md's path once per session against a moto server:
the bootstrap from the committed production.tfvars, an artifact version written into it (as
``python -m optimize sagemaker-build --tfvars`` does), the deploy workflow's own plan command,
the apply job's ``terraform apply tfplan``, then a second deploy (new image, new artifact) the
same way. Tests read what it recorded (plans as JSON) and what moto holds. Its terraform
commands share one AWS provider process (``provider_server``); a refused plan runs on
variables.tf alone (``refused_plan``).

The tools are real and must be installed (terraform on PATH; checkov and friends in
.venv-tools/bin; moto_server from the dev extra): a missing tool fails the test, never skips it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import botocore
import pytest
import requests
import yaml
from botocore.config import Config

from serve_app.ports import reserved_port

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
WORKFLOW = REPO / ".github" / "workflows" / "deploy-infrastructure.yml"
SHA = "0123456789abcdef0123456789abcdef01234567"
SHA2 = "89abcdef0123456789abcdef0123456789abcdef"
SHA3 = "fedcba9876543210fedcba9876543210fedcba98"
ARTIFACT = f"models/20250101T000000Z-{SHA[:12]}/model/"
ARTIFACT2 = f"models/20250202T000000Z-{SHA2[:12]}/model/"
ARTIFACT3 = f"models/20250115T000000Z-{SHA3[:12]}/model/"
# The release whose sync update rolls back (its queue-wait alarm fires during the bake).
FAILING_ALARM = "sdturbo-sync-queue-wait"
MIRROR_CANDIDATES = ("/opt/tf-plugins", "/usr/share/terraform/plugins", "~/.terraform.d/plugins")
EMULATED_SERVICES = (
    "applicationautoscaling",
    "cloudwatch",
    "ec2",
    "ecr",
    "events",
    "iam",
    "kms",
    "s3",
    "sagemaker",
    "sfn",
    "sns",
    "sts",
)
# What a user edits in production.tfvars before the bootstrap, plus what moto needs: its
# instance-type list has no ml.g5.*, and its application-autoscaling lacks ListTagsForResource
# (infra/README.md, "What the emulator lacks").
TEST_SETTINGS = {
    "github_repository": '"acme/sdturbo"',
    "tf_state_bucket": '"acme-tfstate"',
    "instance_type": '"ml.g4dn.xlarge"',
    "create_autoscaling": "false",
}


def tool(name: str) -> str:
    """Path of a CLI tool: on PATH, or in the repo's .venv-tools (see README); else fail."""
    found = shutil.which(name) or shutil.which(name, path=str(REPO / ".venv-tools" / "bin"))
    if not found:
        pytest.fail(f"{name} not found on PATH or in .venv-tools/bin: install it (infra/README.md)")
    return found


def run(args: list[str] | str, cwd: Path, env: dict[str, str], timeout: float = 300):
    return subprocess.run(
        args,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        shell=isinstance(args, str),
        executable="/bin/bash" if isinstance(args, str) else None,
    )


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (
        f"{result.args}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    return result.stdout


def provider_mirror() -> Path | None:
    """Root of a local provider mirror (the folder above registry.terraform.io), if any."""
    for candidate in (os.environ.get("TF_PROVIDER_MIRROR", ""), *MIRROR_CANDIDATES):
        path = Path(candidate).expanduser()
        if candidate and (path / "registry.terraform.io" / "hashicorp" / "aws").is_dir():
            return path
    return None


def copy_stack(target: Path) -> Path:
    """A copy of infra/ (lock file included) so terraform never writes into the repository."""
    shutil.copytree(INFRA, target, ignore=shutil.ignore_patterns(".terraform", "*.tfstate*"))
    return target


@pytest.fixture(scope="session")
def tf_env(tmp_path_factory) -> dict[str, str]:
    """Environment for terraform: the local mirror where there is one (offline), no real AWS."""
    root = tmp_path_factory.mktemp("tfcli")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TF_"))}
    env.update(TF_IN_AUTOMATION="1", TF_INPUT="0", CHECKPOINT_DISABLE="1")
    env.update(
        AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1"
    )
    mirror = provider_mirror()
    config = root / "cli.tfrc"
    if mirror:
        config.write_text(
            "provider_installation {\n"
            f'  filesystem_mirror {{\n    path    = "{mirror}"\n'
            '    include = ["registry.terraform.io/*/*"]\n  }\n'
            '  direct {\n    exclude = ["registry.terraform.io/*/*"]\n  }\n}\n'
        )
    else:  # elsewhere (GitHub runners) terraform downloads the provider as usual
        config.write_text("")
    env["TF_CLI_CONFIG_FILE"] = str(config)
    return env


# --- moto ------------------------------------------------------------------------------------


# Ports for moto servers: none of Ray's or the test servers' (serve_app.ports.LOCAL_PORTS).
MOTO_PORTS = range(9600, 9700)


class Moto:
    """A moto server on a free loopback port, with the gaps of moto_server_shim.py filled."""

    def __init__(self, folder: Path, extra_env: dict[str, str] | None = None):
        self.folder = folder
        # A port by design, not by probing (serve_app/ports.py): moto's interpreter must know
        # its own port before it starts, so port 0 will not do; held until stop().
        self._port = reserved_port(MOTO_PORTS)
        self.port = self._port.__enter__()
        self.url = f"http://127.0.0.1:{self.port}"
        # Step Functions' AWS SDK integrations name services as the Java SDK does
        # ("sagemakerruntime"); moto's interpreter asks boto3 for that name, which boto3 calls
        # "sagemaker-runtime". An alias of botocore's own model under AWS_DATA_PATH bridges it.
        data = folder / "botocore-data" / "sagemakerruntime"
        source = Path(botocore.__file__).parent / "data" / "sagemaker-runtime"
        shutil.copytree(source, data)
        env = {
            **os.environ,
            "MOTO_PORT": str(self.port),  # moto's interpreter calls AWS APIs on its own port
            "AWS_DATA_PATH": str(folder / "botocore-data"),
            "MOTO_IAM_LOAD_MANAGED_POLICIES": "true",  # the plan role attaches ReadOnlyAccess
            **(extra_env or {}),
        }
        self.log_path = folder / "moto.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("moto_server_shim.py")),
             "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=self._log,
            env=env,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            assert self.process.poll() is None, self.log_path.read_text()[-2000:]
            try:
                requests.get(self.url + "/moto-api/", timeout=2)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "moto server did not start"
                time.sleep(0.2)

    def client(self, service: str, **credentials):
        """A boto3 client for this server; no retries, so failures show."""
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=credentials.get("key", "test"),
            aws_secret_access_key=credentials.get("secret", "test"),
            config=Config(retries={"max_attempts": 1}),
        )

    def stop(self) -> None:
        self._stop_process()
        self._port.__exit__(None, None, None)

    def _stop_process(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


def emulator_override(url: str) -> str:
    endpoints = "\n".join(f'    {name} = "{url}"' for name in EMULATED_SERVICES)
    return f"""terraform {{
  backend "local" {{}}
}}
provider "aws" {{
  access_key                  = "test"
  secret_key                  = "test"
  skip_credentials_validation = true
  skip_metadata_api_check     = true
  s3_use_path_style           = true
  endpoints {{
{endpoints}
  }}
}}
"""


def set_tfvars(path: Path, values: dict[str, str]) -> None:
    """Edit a tfvars file as a person would: replace each setting's line, or append it."""
    lines = path.read_text().splitlines()
    for name, value in values.items():
        found = [i for i, line in enumerate(lines) if line.split("=")[0].strip() == name]
        if found:
            lines[found[0]] = f"{name} = {value}"
        else:
            lines.append(f"{name} = {value}")
    path.write_text("\n".join(lines) + "\n")


def workflow_command(job: str, step: str) -> str:
    """The first command line of a step of deploy-infrastructure.yml, as the runner runs it."""
    workflow = yaml.safe_load(WORKFLOW.read_text())
    steps = workflow["jobs"][job]["steps"]
    script = next(s["run"] for s in steps if s.get("name") == step)
    return script.replace("\\\n", " ").strip().splitlines()[0]


def planned(plan: dict, address: str) -> dict:
    for change in plan["resource_changes"]:
        if change["address"] == address:
            return change["change"]["after"]
    raise AssertionError(f"{address} is not in the plan")


def actions(plan: dict) -> dict[str, list[str]]:
    return {c["address"]: c["change"]["actions"] for c in plan["resource_changes"]}


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def grants(statements: list[dict]) -> dict[str, set[str]]:
    """Allowed action -> the resources it is allowed on (every statement must be an Allow)."""
    allowed: dict[str, set[str]] = {}
    for statement in statements:
        assert statement["Effect"] == "Allow", statement
        for action in as_list(statement["Action"]):
            allowed.setdefault(action, set()).update(as_list(statement["Resource"]))
    return allowed


@dataclass
class Deployment:
    moto: Moto
    stack: Path
    env: dict[str, str]
    plans: dict[str, dict] = field(default_factory=dict)
    outputs: dict[str, dict] = field(default_factory=dict)
    endpoint_configs: dict[str, dict] = field(default_factory=dict)
    live: dict[str, dict] = field(default_factory=dict)
    verified: dict[str, subprocess.CompletedProcess] = field(default_factory=dict)
    counts_after: dict[str, dict] = field(default_factory=dict)

    def terraform(self, *args: str, timeout: float = 300) -> str:
        return ok(run([tool("terraform"), *args, "-no-color"], self.stack, self.env, timeout))

    def plan_json(self, plan_file: str) -> dict:
        return json.loads(self.terraform("show", "-json", plan_file))

    def output_values(self) -> dict:
        return {k: v["value"] for k, v in json.loads(self.terraform("output", "-json")).items()}

    def client(self, service: str):
        return self.moto.client(service)

    def role_policy(self, role_arn: str, policy_name: str) -> list[dict]:
        """The statements of a role's inline policy, as moto holds them."""
        iam = self.client("iam")
        document = iam.get_role_policy(RoleName=role_arn.split("/")[-1], PolicyName=policy_name)
        return document["PolicyDocument"]["Statement"]

    def plan_changes(self, *args: str) -> dict[str, list[str]]:
        """What a plan (as ``plan``'s) would change: address -> actions, as ``show -json``
        names them, read from the plan's own JSON stream (``show -json`` would start the
        provider once more, ~3 s, for the same answer). Data sources read are left out."""
        stream = self.terraform(
            "plan", "-json", "-var-file=production.tfvars", "-var-file=live.tfvars.json", *args
        )
        changed = {}
        for line in stream.splitlines():
            message = json.loads(line)
            if message.get("type") == "planned_change" and message["change"]["action"] != "read":
                action = message["change"]["action"]
                # show -json: ["delete", "create"], or the reverse under create_before_destroy
                changed[message["change"]["resource"]["addr"]] = (
                    ["delete", "create"] if action == "replace" else [action]
                )
        return changed

    def plan(self, *args: str) -> dict:
        """A plan of the applied stack with the committed tfvars plus ``args``; nothing applied."""
        self._extra_plans = getattr(self, "_extra_plans", 0) + 1
        out = f"extra-{self._extra_plans}.plan"
        self.terraform(
            "plan",
            "-var-file=production.tfvars",
            "-var-file=live.tfvars.json",
            f"-out={out}",
            *args,
        )
        return self.plan_json(out)


@contextlib.contextmanager
def provider_server(stack: Path, env: dict[str, str], log: Path) -> Iterator[str]:
    """The stack's AWS provider (the one ``terraform init`` installed) started once, as a
    server terraform reattaches to (TF_REATTACH_PROVIDERS, terraform's mechanism for a
    provider it did not start): each command otherwise starts the 700 MB binary anew, one to
    three times, 2-3 s each on 2 cores, some thirty commands. Yields the variable's value."""
    # .terraform/providers/<host>/<namespace>/aws/<version>/<os_arch>/, a link into a mirror
    providers = stack / ".terraform" / "providers"
    binary = next(providers.glob("*/*/aws/*/*/terraform-provider-aws*"))
    with log.open("w") as out:
        proc = subprocess.Popen(
            [binary, "-debug"], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=stack
        )
    try:
        deadline = time.monotonic() + 120
        while (found := re.search(r"TF_REATTACH_PROVIDERS='(.+)'", log.read_text())) is None:
            assert proc.poll() is None, f"the provider exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"the provider never listened: {log}"
            time.sleep(0.1)
        yield found[1]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def snapshot_endpoint_configs(deployment: Deployment, outputs: dict) -> dict:
    sm = deployment.client("sagemaker")
    configs = {}
    for kind in ("sync", "async"):
        endpoint = sm.describe_endpoint(EndpointName=outputs[f"{kind}_endpoint_name"])
        configs[kind] = sm.describe_endpoint_config(
            EndpointConfigName=endpoint["EndpointConfigName"]
        )
    return configs


def scale(deployment: Deployment, counts: dict[str, int]) -> None:
    """What autoscaling does between releases: set each endpoint's desired instance count."""
    sm = deployment.client("sagemaker")
    for kind, count in counts.items():
        sm.update_endpoint_weights_and_capacities(
            EndpointName=f"sdturbo-{kind}",
            DesiredWeightsAndCapacities=[
                {"VariantName": "AllTraffic", "DesiredInstanceCount": count}
            ],
        )


def desired_counts(deployment: Deployment) -> dict[str, int]:
    sm = deployment.client("sagemaker")
    return {
        kind: sm.describe_endpoint(EndpointName=f"sdturbo-{kind}")["ProductionVariants"][0][
            "DesiredInstanceCount"
        ]
        for kind in ("sync", "async")
    }


def set_alarm(deployment: Deployment, name: str, state: str) -> None:
    deployment.client("cloudwatch").set_alarm_state(
        AlarmName=name, StateValue=state, StateReason="test"
    )


def release(deployment: Deployment, name: str, image: str, artifact: str) -> None:
    """One run of deploy-infrastructure.yml, its commands verbatim: read the live release, plan,
    apply, verify (whose failure is recorded, not raised: a rollback must fail it)."""
    stack = deployment.stack
    set_tfvars(stack / "production.tfvars", {"model_artifact": f'"{artifact}"'})
    env = {**deployment.env, "IMAGE_TAG": image, "PYTHONPATH": str(REPO),
           "AWS_ENDPOINT_URL": deployment.moto.url}  # fmt: skip
    ok(run(workflow_command("plan", "Read what the endpoints serve now"), stack, env))
    deployment.live[name] = json.loads((stack / "live.tfvars.json").read_text())
    ok(run(workflow_command("plan", "terraform plan"), stack, env))
    deployment.plans[name] = deployment.plan_json("tfplan")
    ok(run(workflow_command("apply", "terraform apply"), stack, env, 420))
    deployment.verified[name] = run(workflow_command("apply", "Verify the release"), stack, env)
    deployment.outputs[name] = deployment.output_values()
    deployment.endpoint_configs[name] = snapshot_endpoint_configs(
        deployment, deployment.outputs[name]
    )
    deployment.counts_after[name] = desired_counts(deployment)


@pytest.fixture(scope="session")
def refused_plan(tf_env, tmp_path_factory):
    """``refused_plan(*args)``: the error output of a plan of infra/ with the committed tfvars
    (the test values written in, as the deployment's) and ``args``, which must be refused by a
    variable's validation; the same plan without the last argument must pass, so the refusal is
    that argument's. Validation reads only variables.tf: the plan runs on it alone, with no
    provider and no state (a plan of the deployed stack takes 7-8 s on 2 cores, this one a
    fraction of a second)."""
    folder = tmp_path_factory.mktemp("variables")
    for name in ("variables.tf", "production.tfvars"):
        shutil.copy2(INFRA / name, folder)
    set_tfvars(folder / "production.tfvars", TEST_SETTINGS)

    def plan(*args: str) -> subprocess.CompletedProcess:
        # image_tag set needs model_artifact set (a release names both).
        argv = [
            "plan",
            "-no-color",
            "-var-file=production.tfvars",
            f"-var=model_artifact={ARTIFACT2}",
        ]
        return run([tool("terraform"), *argv, *args], folder, tf_env)

    def refused(*args: str) -> str:
        ok(plan(*args[:-1]))
        result = plan(*args)
        assert result.returncode != 0, result.stdout[-2000:]
        return " ".join(result.stderr.split())

    return refused


@pytest.fixture(scope="session")
def moto(tmp_path_factory) -> Iterator[Moto]:
    """The one moto server of tests/infra (with moto_server_shim.py's gaps filled)."""
    server = Moto(tmp_path_factory.mktemp("moto"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def deployment(tf_env, tmp_path_factory, moto) -> Iterator[Deployment]:
    """infra/README.md's path against moto: bootstrap, then three releases through the deploy
    workflow's own commands: a first one; one whose sync update rolls back (its queue-wait alarm
    fires during the bake) after autoscaling left sync at 3 instances and async at 0; and the
    next, which succeeds."""
    folder = tmp_path_factory.mktemp("deployment")
    # Executions of the trigger's state machine run in moto's ASL interpreter.
    requests.post(
        moto.url + "/moto-api/config",
        json={"stepfunctions": {"execute_state_machine": True}},
        timeout=10,
    ).raise_for_status()
    stack = copy_stack(folder / "infra")
    (stack / "zz_emulator_override.tf").write_text(emulator_override(moto.url))
    set_tfvars(stack / "production.tfvars", TEST_SETTINGS)
    d = Deployment(moto, stack, tf_env)
    d.terraform("init", "-input=false", "-lockfile=readonly")
    with provider_server(stack, tf_env, folder / "provider.log") as reattach:
        d.env = {**tf_env, "TF_REATTACH_PROVIDERS": reattach}

        # 2. Bootstrap, as the README says: the committed tfvars, nothing else.
        d.terraform("plan", "-var-file=production.tfvars", "-out=bootstrap.plan")
        d.plans["bootstrap"] = d.plan_json("bootstrap.plan")
        d.terraform("apply", "bootstrap.plan", timeout=420)
        d.outputs["bootstrap"] = d.output_values()

        # 6. The artifact build wrote its version into the tfvars (the job itself is tested in
        # test_sagemaker_job.py); 7. the deploy workflow, release after release.
        release(d, "deploy", SHA, ARTIFACT)
        scale(d, {"sync": 3, "async": 0})
        set_alarm(d, FAILING_ALARM, "ALARM")
        release(d, "rolled-back", SHA3, ARTIFACT3)
        set_alarm(d, FAILING_ALARM, "OK")
        scale(d, {"async": 0})
        release(d, "second", SHA2, ARTIFACT2)
        yield d
