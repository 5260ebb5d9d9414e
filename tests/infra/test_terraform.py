"""infra/: terraform fmt, offline init + validate, checkov, and an apply against a moto server.

The tools are real and must be installed (terraform on PATH; checkov on PATH or in
.venv-tools/bin; moto_server from the dev extra): a missing tool fails the test, never skips it.

Emulator gaps (moto 5.2.x, also 5.2.5):
- application-autoscaling has no ListTagsForResource, which the provider calls after creating
  aws_appautoscaling_target, so the stack is applied with create_autoscaling=false. The scaling
  resources are checked in a `terraform plan` of the full stack instead, and the planned target
  and policies are registered through boto3 against the endpoint that was created.
- CreateModel ignores EnableNetworkIsolation (DescribeModel says false), so network isolation is
  checked in the plan, not through the API; the same drift makes a second plan replace the model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import requests
from botocore.config import Config

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
SHA = "0123456789abcdef0123456789abcdef01234567"
MIRROR_CANDIDATES = ("/opt/tf-plugins", "/usr/share/terraform/plugins", "~/.terraform.d/plugins")
EMULATED_SERVICES = (
    "applicationautoscaling",
    "cloudwatch",
    "ec2",
    "ecr",
    "iam",
    "kms",
    "s3",
    "sagemaker",
    "sns",
    "sts",
)


def tool(name: str) -> str:
    """Path of a CLI tool: on PATH, or in the repo's .venv-tools (see README); else fail."""
    found = shutil.which(name) or shutil.which(name, path=str(REPO / ".venv-tools" / "bin"))
    if not found:
        pytest.fail(f"{name} not found on PATH or in .venv-tools/bin: install it (infra/README.md)")
    return found


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 240):
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
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


@pytest.fixture(scope="module")
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


@pytest.fixture()
def stack(tmp_path) -> Path:
    """A copy of infra/ so init/apply never write .terraform or state into the repository."""
    copy = tmp_path / "infra"
    shutil.copytree(INFRA, copy, ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*"))
    return copy


def test_terraform_fmt(tf_env):
    ok(run([tool("terraform"), "fmt", "-check", "-recursive", "-diff"], INFRA, tf_env, 60))


def test_terraform_init_and_validate_offline(tf_env, stack):
    terraform = tool("terraform")
    ok(run([terraform, "init", "-backend=false", "-input=false", "-no-color"], stack, tf_env))
    out = ok(run([terraform, "validate", "-json"], stack, tf_env, 120))
    assert json.loads(out)["valid"] is True


def test_checkov_passes_and_every_skip_is_justified():
    result = run(
        [
            tool("checkov"),
            "-d",
            str(INFRA),
            "--framework",
            "terraform",
            "--output",
            "json",
            "--quiet",
            "--skip-download",
        ],
        REPO,
        {**os.environ, "BC_SKIP_MAPPING": "TRUE"},
        180,
    )
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


# --- the emulator ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def moto(tmp_path) -> Iterator[str]:
    """A moto server on a free loopback port, stopped afterwards."""
    port = free_port()
    log = (tmp_path / "moto.log").open("wb")
    process = subprocess.Popen(
        [tool("moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (tmp_path / "moto.log").read_text()[-2000:]
            try:
                requests.get(url + "/moto-api/", timeout=2)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "moto server did not start"
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


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


def tf_vars(**overrides: object) -> list[str]:
    values = {
        "image_tag": SHA,
        "instance_type": "ml.g4dn.xlarge",  # moto's instance-type list has no ml.g5.*
        "create_autoscaling": "false",  # see the module docstring
        "force_destroy": "true",
        "kms_deletion_window_days": "7",
        "github_repository": "acme/sdturbo",
        **overrides,
    }
    return [arg for key, value in values.items() for arg in ("-var", f"{key}={value}")]


def client(service: str, url: str):
    """A boto3 client for the emulator, with dummy credentials and no retries (failures show)."""
    return boto3.client(
        service,
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(retries={"max_attempts": 1}),
    )


def planned(plan: dict, address: str) -> dict:
    for change in plan["resource_changes"]:
        if change["address"] == address:
            return change["change"]["after"]
    raise AssertionError(f"{address} is not in the plan")


def check_sagemaker(sm, outputs: dict) -> None:
    """The async endpoint config has its S3 paths, topics and concurrency; the sync one none."""
    bucket = outputs["bucket"]["value"]
    async_ep = sm.describe_endpoint(EndpointName=outputs["async_endpoint_name"]["value"])
    config = sm.describe_endpoint_config(EndpointConfigName=async_ep["EndpointConfigName"])
    out = config["AsyncInferenceConfig"]["OutputConfig"]
    assert out["S3OutputPath"] == f"s3://{bucket}/outputs/"
    assert out["S3FailurePath"] == f"s3://{bucket}/failures/"
    assert out["NotificationConfig"] == {
        "SuccessTopic": outputs["success_topic_arn"]["value"],
        "ErrorTopic": outputs["error_topic_arn"]["value"],
    }
    assert config["AsyncInferenceConfig"]["ClientConfig"] == {
        "MaxConcurrentInvocationsPerInstance": 8
    }
    variant = config["ProductionVariants"][0]
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] >= 900
    assert variant["InstanceType"] == "ml.g4dn.xlarge"

    sync_ep = sm.describe_endpoint(EndpointName=outputs["sync_endpoint_name"]["value"])
    sync_config = sm.describe_endpoint_config(EndpointConfigName=sync_ep["EndpointConfigName"])
    assert "AsyncInferenceConfig" not in sync_config
    assert sync_config["ProductionVariants"][0]["InitialInstanceCount"] >= 1

    model = sm.describe_model(ModelName=variant["ModelName"])
    assert model["PrimaryContainer"]["Image"].endswith(f"/sdturbo:{SHA}")
    assert model["PrimaryContainer"]["ModelDataSource"]["S3DataSource"] == {
        "S3Uri": f"s3://{bucket}/model/",
        "S3DataType": "S3Prefix",
        "CompressionType": "None",
    }
    assert len(model["VpcConfig"]["Subnets"]) == 2


def check_bucket_and_repository(s3, ecr, bucket: str) -> None:
    assert s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    sse = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]
    assert sse["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    policy = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
    assert any(
        s["Effect"] == "Deny" and s["Condition"]["Bool"]["aws:SecureTransport"] == "false"
        for s in policy["Statement"]
    )
    rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert any(r["Filter"].get("Prefix") == "outputs/" and "Expiration" in r for r in rules)
    repo = ecr.describe_repositories(repositoryNames=["sdturbo"])["repositories"][0]
    assert repo["imageTagMutability"] == "IMMUTABLE"
    assert repo["imageScanningConfiguration"] == {"scanOnPush": True}


def check_autoscaling_plan(plan: dict, endpoint: str) -> None:
    target = planned(plan, "aws_appautoscaling_target.async[0]")
    assert target["min_capacity"] == 0 and target["max_capacity"] >= 1
    assert target["resource_id"] == f"endpoint/{endpoint}/variant/AllTraffic"
    tracking = planned(plan, "aws_appautoscaling_policy.async_backlog[0]")
    metric = tracking["target_tracking_scaling_policy_configuration"][0]
    assert metric["customized_metric_specification"][0]["metric_name"] == (
        "ApproximateBacklogSizePerInstance"
    )
    step = planned(plan, "aws_appautoscaling_policy.async_wake[0]")
    assert step["policy_type"] == "StepScaling"
    adjustment = step["step_scaling_policy_configuration"][0]["step_adjustment"][0]
    assert (
        adjustment["scaling_adjustment"] >= 1 and adjustment["metric_interval_lower_bound"] == "0"
    )
    alarm = planned(plan, "aws_cloudwatch_metric_alarm.async_wake[0]")
    assert alarm["metric_name"] == "HasBacklogWithoutCapacity"
    assert alarm["dimensions"] == {"EndpointName": endpoint}
    # The alarm's action is the step policy (its ARN is known only after apply).
    alarm_config = next(
        r
        for r in plan["configuration"]["root_module"]["resources"]
        if r["address"] == "aws_cloudwatch_metric_alarm.async_wake"
    )
    references = alarm_config["expressions"]["alarm_actions"]["references"]
    assert "aws_appautoscaling_policy.async_wake[0].arn" in references


def register_planned_scaling(plan: dict, url: str) -> None:
    """Register the planned target and policies through boto3 (the provider cannot, see top)."""
    aas = client("application-autoscaling", url)
    cloudwatch = client("cloudwatch", url)
    target = planned(plan, "aws_appautoscaling_target.async[0]")
    key = {k: target[k] for k in ("service_namespace", "resource_id", "scalable_dimension")}
    camel = {
        "ServiceNamespace": key["service_namespace"],
        "ResourceId": key["resource_id"],
        "ScalableDimension": key["scalable_dimension"],
    }
    aas.register_scalable_target(
        **camel, MinCapacity=target["min_capacity"], MaxCapacity=target["max_capacity"]
    )
    step = planned(plan, "aws_appautoscaling_policy.async_wake[0]")
    config = step["step_scaling_policy_configuration"][0]
    policy_arn = aas.put_scaling_policy(
        PolicyName=step["name"],
        PolicyType="StepScaling",
        **camel,
        StepScalingPolicyConfiguration={
            "AdjustmentType": config["adjustment_type"],
            "MetricAggregationType": config["metric_aggregation_type"],
            "Cooldown": config["cooldown"],
            "StepAdjustments": [
                {
                    "MetricIntervalLowerBound": float(a["metric_interval_lower_bound"]),
                    "ScalingAdjustment": a["scaling_adjustment"],
                }
                for a in config["step_adjustment"]
            ],
        },
    )["PolicyARN"]
    alarm = planned(plan, "aws_cloudwatch_metric_alarm.async_wake[0]")
    cloudwatch.put_metric_alarm(
        AlarmName=alarm["alarm_name"],
        Namespace=alarm["namespace"],
        MetricName=alarm["metric_name"],
        Statistic=alarm["statistic"],
        Period=alarm["period"],
        EvaluationPeriods=alarm["evaluation_periods"],
        Threshold=alarm["threshold"],
        ComparisonOperator=alarm["comparison_operator"],
        AlarmActions=[policy_arn],
        Dimensions=[{"Name": k, "Value": v} for k, v in alarm["dimensions"].items()],
    )
    registered = aas.describe_scalable_targets(
        ServiceNamespace="sagemaker", ResourceIds=[key["resource_id"]]
    )["ScalableTargets"]
    assert [t["MinCapacity"] for t in registered] == [0]
    alarms = cloudwatch.describe_alarms(AlarmNames=[alarm["alarm_name"]])["MetricAlarms"]
    assert alarms[0]["AlarmActions"] == [policy_arn]


@pytest.mark.integration
@pytest.mark.slow
def test_apply_against_moto_then_destroy(tf_env, stack, moto):
    terraform = tool("terraform")
    (stack / "zz_emulator_override.tf").write_text(emulator_override(moto))
    ok(run([terraform, "init", "-input=false", "-no-color"], stack, tf_env))

    # Validation refuses a mutable tag before anything is created.
    refused = run([terraform, "plan", "-no-color", *tf_vars(image_tag="latest")], stack, tf_env)
    assert refused.returncode != 0 and "commit SHA" in refused.stderr

    try:
        ok(run([terraform, "apply", "-auto-approve", "-no-color", *tf_vars()], stack, tf_env, 420))
        outputs = json.loads(ok(run([terraform, "output", "-json"], stack, tf_env)))
        clients = {name: client(name, moto) for name in ("sagemaker", "s3", "ecr")}
        check_sagemaker(clients["sagemaker"], outputs)
        check_bucket_and_repository(clients["s3"], clients["ecr"], outputs["bucket"]["value"])

        # The full stack, autoscaling included, with the Gzip artifact layout.
        ok(
            run(
                [
                    terraform,
                    "plan",
                    "-no-color",
                    "-out=full.plan",
                    *tf_vars(create_autoscaling="true", model_data_compression="Gzip"),
                ],
                stack,
                tf_env,
                180,
            )
        )
        plan = json.loads(ok(run([terraform, "show", "-json", "full.plan"], stack, tf_env)))
        check_autoscaling_plan(plan, outputs["async_endpoint_name"]["value"])
        model = planned(plan, "aws_sagemaker_model.this[0]")
        assert model["enable_network_isolation"] is True  # moto drops it: checked in the plan
        container = model["primary_container"][0]
        assert container["model_data_url"].endswith("/model/model.tar.gz")
        assert not container.get("model_data_source")
        register_planned_scaling(plan, moto)
    finally:
        destroyed = run(
            [terraform, "destroy", "-auto-approve", "-no-color", *tf_vars()], stack, tf_env, 300
        )
    ok(destroyed)
    assert client("sagemaker", moto).list_endpoints()["Endpoints"] == []
