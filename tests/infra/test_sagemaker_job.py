"""``python -m optimize sagemaker-build``: the artifact build job, its request and its role.

The request is checked against botocore's model of CreateProcessingJob and then made for real
against the moto stack of conftest.py's ``deployment`` (same image, same instance type, role
from `terraform output`). moto runs no container: a job "completes" at once, and the test
uploads the manifest where SageMaker would have uploaded the job's output.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime, timezone

import boto3
import botocore.session
import pytest
from botocore.validate import validate_parameters

from optimize import job_request as job_req
from optimize import sagemaker_job as job
from optimize import tfvars as tfvars_file
from tests.infra.conftest import INFRA, REPO, SHA2, grants

NOW = datetime(2025, 3, 4, 5, 6, 7, tzinfo=timezone.utc)


def settings(**overrides) -> job_req.JobSettings:
    values = {
        "bucket": "bkt",
        "role_arn": "arn:aws:iam::123456789012:role/sdturbo-build-1",
        "repository_url": "123456789012.dkr.ecr.us-east-1.amazonaws.com/sdturbo",
        "instance_type": "ml.g5.xlarge",
        "image_tag": SHA2,
        "build_args": ["--warmup-sizes", "512"],
        **overrides,
    }
    return job_req.JobSettings(**values)


def check_against_the_api(request: dict) -> None:
    model = botocore.session.get_session().get_service_model("sagemaker")
    validate_parameters(request, model.operation_model("CreateProcessingJob").input_shape)


def test_the_job_runs_optimize_build_in_the_serving_image_on_the_endpoint_instance_type():
    version = job_req.version_name(SHA2, NOW)
    request = job_req.job_request(settings(), job_req.job_name(settings(), NOW), version)
    check_against_the_api(request)
    app = request["AppSpecification"]
    assert app["ImageUri"] == f"123456789012.dkr.ecr.us-east-1.amazonaws.com/sdturbo:{SHA2}"
    assert app["ContainerEntrypoint"] == ["python", "-m", "optimize", "build"]
    assert app["ContainerArguments"] == [
        "--model", "stabilityai/sd-turbo", "--output", "/opt/ml/processing/output/model",
        "--device", "cuda", "--compile", "--warmup-sizes", "512",
    ]  # fmt: skip
    # The arguments are the build's own: its parser takes them, and the job compiles.
    from optimize.__main__ import build_parser

    parsed = build_parser().parse_args([app["ContainerEntrypoint"][-1], *app["ContainerArguments"]])
    assert parsed.compile is True and parsed.warmup_sizes == "512"
    cluster = request["ProcessingResources"]["ClusterConfig"]
    assert (cluster["InstanceType"], cluster["InstanceCount"]) == ("ml.g5.xlarge", 1)
    (output,) = request["ProcessingOutputConfig"]["Outputs"]
    assert output["S3Output"] == {
        "S3Uri": f"s3://bkt/models/{version}/",
        "LocalPath": "/opt/ml/processing/output",
        "S3UploadMode": "EndOfJob",
    }
    # Hub weights: the job needs the network, and the image's HF_HUB_OFFLINE=1 is lifted.
    assert request["NetworkConfig"] == {"EnableNetworkIsolation": False}
    assert request["Environment"]["HF_HUB_OFFLINE"] == "0"


def test_weights_from_s3_run_without_any_network():
    source = "s3://bkt/sources/sd-turbo/"
    request = job_req.job_request(settings(model=source), "n", "v")
    check_against_the_api(request)
    assert request["NetworkConfig"] == {"EnableNetworkIsolation": True}
    assert request["Environment"]["HF_HUB_OFFLINE"] == "1"
    (source_input,) = request["ProcessingInputs"]
    assert source_input["S3Input"]["S3Uri"] == source
    args = request["AppSpecification"]["ContainerArguments"]
    assert args[args.index("--model") + 1] == source_input["S3Input"]["LocalPath"]


def test_the_artifact_key_is_what_terraform_accepts_and_checks():
    variables = (INFRA / "variables.tf").read_text()
    pattern = re.search(r'can\(regex\("(\^models/[^"]+)"', variables).group(1)
    check = re.search(r'"-\$\{substr\(coalesce\(var\.image_tag, "none"\), 0, (\d+)\)\}/"',
                      (INFRA / "sagemaker.tf").read_text())  # fmt: skip
    version = job_req.version_name(SHA2, NOW)
    assert version == f"20250304T050607Z-{SHA2[:12]}"
    for tarball in (False, True):
        key = job_req.artifact_key(version, tarball)
        assert re.fullmatch(pattern, key), key
        assert f"-{SHA2[: int(check.group(1))]}/" in key  # the image-matches-artifact check


def test_update_tfvars_replaces_the_line(tmp_path):
    tfvars = tmp_path / "production.tfvars"
    tfvars.write_text('region = "us-east-1"\nmodel_artifact = null\nalarm_emails = []\n')
    tfvars_file.update_tfvars(tfvars, "models/v1/model/")
    assert tfvars.read_text() == (
        'region = "us-east-1"\nmodel_artifact = "models/v1/model/"\nalarm_emails = []\n'
    )


# --- against the moto stack -----------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.slow
def test_the_command_starts_the_job_from_terraform_outputs(deployment):
    out = deployment.outputs["second"]
    env = {**deployment.env, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    result = subprocess.run(
        [sys.executable, "-m", "optimize", "sagemaker-build", "--from-terraform",
         str(deployment.stack), "--image-tag", SHA2, "--endpoint-url", deployment.moto.url,
         "--region", "us-east-1", "--no-wait", "--", "--warmup-sizes", "512"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert re.fullmatch(rf"models/\d{{8}}T\d{{6}}Z-{SHA2[:12]}/model/", summary["model_artifact"])
    assert "set in Terraform: model_artifact" in result.stderr
    described = deployment.client("sagemaker").describe_processing_job(
        ProcessingJobName=summary["job"]
    )
    assert described["RoleArn"] == out["build_role_arn"]
    app = described["AppSpecification"]
    assert app["ImageUri"] == f"{out['ecr_repository_url']}:{SHA2}"
    assert app["ContainerArguments"][-2:] == ["--warmup-sizes", "512"]
    output_config = described["ProcessingOutputConfig"]
    assert output_config["KmsKeyId"] == out["kms_key_arn"]
    version_prefix = summary["model_artifact"].removesuffix("model/")
    assert (
        output_config["Outputs"][0]["S3Output"]["S3Uri"] == f"s3://{out['bucket']}/{version_prefix}"
    )


class FakeSageMakerUpload:
    """botocore hooks: record the CreateProcessingJob request, and when the job is described,
    upload its artifact's manifest as SageMaker's EndOfJob upload would (or report a failure)."""

    def __init__(self, s3, fail: str | None = None):
        self.s3, self.fail, self.requests = s3, fail, []

    def install(self, sm) -> None:
        sm.meta.events.register("provide-client-params.sagemaker.CreateProcessingJob", self.record)
        sm.meta.events.register("after-call.sagemaker.DescribeProcessingJob", self.finish)

    def record(self, params, **_):
        self.requests.append(json.loads(json.dumps(params)))

    def finish(self, parsed, **_):
        if self.fail:
            parsed.update(ProcessingJobStatus="Failed", FailureReason=self.fail)
            return
        uri = parsed["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"]
        bucket, prefix = uri.removeprefix("s3://").split("/", 1)
        environment = {"device_kind": "cuda", "device_name": "NVIDIA A10G", "cuda": "12.6"}
        manifest = json.dumps({"environment": environment}).encode()
        self.s3.put_object(Bucket=bucket, Key=f"{prefix}model/{job.MANIFEST_NAME}", Body=manifest)


@pytest.mark.integration
@pytest.mark.slow
def test_the_command_waits_checks_the_artifact_and_writes_the_tfvars(
    deployment, monkeypatch, tmp_path, capsys
):
    out = deployment.outputs["second"]
    s3 = deployment.client("s3")
    fake = FakeSageMakerUpload(s3)
    make_client = boto3.session.Session.client

    def client(session, service, *args, **kwargs):
        made = make_client(session, service, *args, **kwargs)
        if service == "sagemaker":
            fake.install(made)
        return made

    monkeypatch.setattr(boto3.session.Session, "client", client)
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TF_CLI_CONFIG_FILE", deployment.env["TF_CLI_CONFIG_FILE"])
    tfvars = tmp_path / "production.tfvars"
    tfvars.write_text((deployment.stack / "production.tfvars").read_text())
    from optimize.__main__ import main

    code = main(["sagemaker-build", "--from-terraform", str(deployment.stack), "--image-tag",
                 SHA2, "--endpoint-url", deployment.moto.url, "--region", "us-east-1",
                 "--tfvars", str(tfvars), "--poll-interval", "0"])  # fmt: skip
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["built_on"]["device_name"] == "NVIDIA A10G"
    assert f'model_artifact = "{summary["model_artifact"]}"' in tfvars.read_text()
    assert "Completed" in stderr  # the progress line
    (request,) = fake.requests
    cluster = request["ProcessingResources"]["ClusterConfig"]
    assert cluster["InstanceType"] == out["instance_type"]  # the endpoints' own type
    assert request["RoleArn"] == out["build_role_arn"]

    # The version now exists: a second build may never write into it.
    sm, s3 = deployment.client("sagemaker"), deployment.client("s3")
    config = job_req.JobSettings(
        bucket=out["bucket"], role_arn=out["build_role_arn"],
        repository_url=out["ecr_repository_url"], instance_type=out["instance_type"],
        image_tag=SHA2,
    )  # fmt: skip
    version = summary["model_artifact"].split("/")[1]
    when = datetime.strptime(version.split("-")[0], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    with pytest.raises(job.JobError, match="already exists; artifacts are immutable"):
        job.run_build(config, sm, s3, now=when, poll_s=0)

    # A failed job is one line, with where its logs are.
    failing = FakeSageMakerUpload(s3, fail="AlgorithmError: CUDA out of memory")
    failing.install(sm)
    with pytest.raises(job.JobError) as failed:
        job.run_build(config, sm, s3, now=NOW, poll_s=0, stream=tmp_path.joinpath("log").open("w"))
    assert "failed: AlgorithmError: CUDA out of memory" in str(failed.value)
    assert "/aws/sagemaker/ProcessingJobs" in str(failed.value)


@pytest.mark.integration
@pytest.mark.slow
def test_the_build_role_reads_sources_and_writes_new_versions_only(deployment):
    out = deployment.outputs["second"]
    allowed = grants(deployment.role_policy(out["build_role_arn"], "least-privilege"))
    bucket = f"arn:aws:s3:::{out['bucket']}"
    logs = "arn:aws:logs:us-east-1:123456789012:log-group:/aws/sagemaker/ProcessingJobs"
    repository = "arn:aws:ecr:us-east-1:123456789012:repository/sdturbo"
    assert allowed == {
        "s3:ListBucket": {bucket},
        "s3:GetObject": {f"{bucket}/sources/*"},
        "s3:PutObject": {f"{bucket}/models/*"},
        "s3:AbortMultipartUpload": {f"{bucket}/models/*"},
        "kms:Decrypt": {out["kms_key_arn"]},
        "kms:GenerateDataKey": {out["kms_key_arn"]},
        "kms:DescribeKey": {out["kms_key_arn"]},
        "ecr:BatchCheckLayerAvailability": {repository},
        "ecr:BatchGetImage": {repository},
        "ecr:GetDownloadUrlForLayer": {repository},
        "ecr:GetAuthorizationToken": {"*"},
        "logs:CreateLogGroup": {logs, f"{logs}:log-stream:*"},
        "logs:CreateLogStream": {logs, f"{logs}:log-stream:*"},
        "logs:PutLogEvents": {logs, f"{logs}:log-stream:*"},
        "logs:DescribeLogStreams": {logs, f"{logs}:log-stream:*"},
        "cloudwatch:PutMetricData": {"*"},
    }
    role = deployment.client("iam").get_role(RoleName=out["build_role_arn"].split("/")[-1])
    trust = role["Role"]["AssumeRolePolicyDocument"]["Statement"][0]
    assert trust["Principal"] == {"Service": "sagemaker.amazonaws.com"}
