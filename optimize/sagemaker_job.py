"""``python -m optimize sagemaker-build``: build the model artifact on the endpoints' own GPU type.

The compile cache in the artifact loads only on the GPU, torch and triton it was built with
(``serve_app/compile_cache.py``), and nobody has an A10G at hand. This command runs
``python -m optimize build`` as a SageMaker Processing job in the *same image* the endpoints run
(the ECR repository at ``--image-tag``), on the *same instance type*, and has SageMaker upload the
result to a new, never reused prefix ``models/<UTC time>-<image tag>/``. It waits with progress,
checks the artifact's manifest, and prints the ``model_artifact`` line for Terraform (or writes it
into a tfvars file with ``--tfvars``).

    python -m optimize sagemaker-build --from-terraform infra --image-tag "$SHA" \\
        --tfvars infra/production.tfvars
    python -m optimize sagemaker-build --bucket B --role-arn R --repository-url U \\
        --instance-type ml.g5.xlarge --image-tag "$SHA" -- --sizes 512 --batch-sizes 1,2,4,8

Weights come from the Hugging Face hub (the job then has internet access), or from a copy under
``s3://<bucket>/sources/`` (``--model s3://...``: the job runs with network isolation).
Arguments after ``--`` go to ``python -m optimize build`` unchanged.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from serve_app.config import MANIFEST_NAME

# Processing containers read inputs and write outputs under /opt/ml/processing (SageMaker
# developer guide: "How Amazon SageMaker Processing Runs Your Processing Container Image").
OUTPUT_DIR = "/opt/ml/processing/output"
SOURCE_DIR = "/opt/ml/processing/input/source"
CACHE_DIR = "/opt/ml/processing/cache"
TERMINAL = ("Completed", "Failed", "Stopped")
JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")  # CreateProcessingJob's pattern
TFVARS_LINE = re.compile(r"^model_artifact\s*=.*$", re.MULTILINE)


class JobError(Exception):
    """A failure worth one line; the command exits non-zero."""


@dataclass
class JobSettings:
    bucket: str
    role_arn: str
    repository_url: str
    instance_type: str
    image_tag: str
    model: str = "stabilityai/sd-turbo"
    tarball: bool = False
    build_args: list[str] = field(default_factory=list)
    volume_gb: int = 100
    max_runtime_s: int = 4 * 3600
    kms_key_arn: str | None = None
    name: str = "sdturbo"

    @property
    def image_uri(self) -> str:
        return f"{self.repository_url}:{self.image_tag}"

    @property
    def source_in_s3(self) -> bool:
        return self.model.startswith("s3://")


def version_name(image_tag: str, now: datetime) -> str:
    """models/<version>/: when, and which image built it (Terraform checks the tag against it)."""
    return f"{now.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}-{image_tag[:12]}"


def artifact_key(version: str, tarball: bool) -> str:
    """The value of Terraform's model_artifact: a folder (ModelDataSource) or a tarball."""
    return f"models/{version}/model.tar.gz" if tarball else f"models/{version}/model/"


def job_name(settings: JobSettings, now: datetime) -> str:
    name = f"{settings.name}-build-{now.astimezone(timezone.utc):%Y%m%d-%H%M%S}"
    if not JOB_NAME.match(name):
        raise JobError(f"invalid job name {name!r}: shorten --name")
    return name


def job_request(settings: JobSettings, name: str, version: str) -> dict:
    """The CreateProcessingJob request: `python -m optimize build` in the serving image."""
    output = f"{OUTPUT_DIR}/model.tar.gz" if settings.tarball else f"{OUTPUT_DIR}/model"
    model = SOURCE_DIR if settings.source_in_s3 else settings.model
    request: dict = {
        "ProcessingJobName": name,
        "RoleArn": settings.role_arn,
        "AppSpecification": {
            "ImageUri": settings.image_uri,
            # The image's ENTRYPOINT is `sdturbo` (serve); the build is another module of it.
            "ContainerEntrypoint": ["python", "-m", "optimize", "build"],
            "ContainerArguments": [
                *("--model", model, "--output", output, "--device", "cuda"),
                *settings.build_args,
            ],
        },
        "ProcessingResources": {
            "ClusterConfig": {
                "InstanceCount": 1,
                "InstanceType": settings.instance_type,
                # fp32 download + fp16 copy + compile caches; no VolumeKmsKeyId: GPU types
                # with NVMe instance storage reject it (SageMaker encrypts that storage).
                "VolumeSizeInGB": settings.volume_gb,
            }
        },
        "ProcessingOutputConfig": {
            "Outputs": [
                {
                    "OutputName": "artifact",
                    "S3Output": {
                        # SageMaker uploads OUTPUT_DIR's content here once the build succeeded:
                        # models/<version>/model/... or models/<version>/model.tar.gz.
                        "S3Uri": f"s3://{settings.bucket}/models/{version}/",
                        "LocalPath": OUTPUT_DIR,
                        "S3UploadMode": "EndOfJob",
                    },
                }
            ],
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": settings.max_runtime_s},
        # Weights from S3 need no network at all; hub weights need the internet.
        "NetworkConfig": {"EnableNetworkIsolation": settings.source_in_s3},
        "Environment": {
            # Downloads go to the job's volume, not the container's small root filesystem.
            "HF_HOME": f"{CACHE_DIR}/huggingface",
            # The image sets HF_HUB_OFFLINE=1 (an endpoint never downloads); a build from the
            # hub must, and one from S3 has no network to try.
            "HF_HUB_OFFLINE": "1" if settings.source_in_s3 else "0",
        },
        "Tags": [
            {"Key": "sdturbo:image-tag", "Value": settings.image_tag},
            {"Key": "sdturbo:artifact", "Value": artifact_key(version, settings.tarball)},
        ],
    }
    if settings.kms_key_arn:
        request["ProcessingOutputConfig"]["KmsKeyId"] = settings.kms_key_arn
    if settings.source_in_s3:
        request["ProcessingInputs"] = [
            {
                "InputName": "source",
                "S3Input": {
                    "S3Uri": settings.model,
                    "LocalPath": SOURCE_DIR,
                    "S3DataType": "S3Prefix",
                    "S3InputMode": "File",
                },
            }
        ]
    return request


def ensure_new_prefix(s3, bucket: str, prefix: str) -> None:
    """Refuse a version that already holds anything: artifacts are never overwritten."""
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    if listed.get("KeyCount", 0):
        raise JobError(f"s3://{bucket}/{prefix} already exists; artifacts are immutable")


def wait_for_job(
    sm,
    name: str,
    poll_s: float = 30.0,
    stream=None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict:
    """Poll DescribeProcessingJob until it ends, with the status and elapsed time on stderr."""
    from tqdm import tqdm

    from serve_app.client import LogLines

    stream = stream or sys.stderr
    tty = hasattr(stream, "isatty") and stream.isatty()
    bar = tqdm(
        desc=name,
        bar_format="{desc}: {postfix} [{elapsed}]",
        file=stream if tty else LogLines(stream),
        mininterval=0 if tty else 60,  # a line a minute in CI logs
        dynamic_ncols=tty,
    )
    try:
        while True:
            described = sm.describe_processing_job(ProcessingJobName=name)
            status = described["ProcessingJobStatus"]
            bar.set_postfix_str(status)
            if status in TERMINAL:
                return described
            sleep(poll_s)
    finally:
        bar.close()


def read_manifest(s3, bucket: str, key: str) -> dict | None:
    """The folder artifact's manifest (None for a tarball, whose manifest is inside it)."""
    if key.endswith(".tar.gz"):
        s3.head_object(Bucket=bucket, Key=key)  # present, or ClientError
        return None
    body = s3.get_object(Bucket=bucket, Key=key + MANIFEST_NAME)["Body"].read()
    manifest = json.loads(body)
    environment = manifest.get("environment", {})
    if environment.get("device_kind") != "cuda":
        raise JobError(
            f"s3://{bucket}/{key} was built for {environment.get('device_kind')!r}, not cuda"
        )
    return manifest


def update_tfvars(path: Path, key: str) -> None:
    """Set model_artifact in a tfvars file (replacing the line, or appending one)."""
    line = f'model_artifact = "{key}"'
    text = path.read_text() if path.exists() else ""
    if TFVARS_LINE.search(text):
        text = TFVARS_LINE.sub(line, text, count=1)
    else:
        text += ("" if text.endswith("\n") or not text else "\n") + line + "\n"
    path.write_text(text)


def terraform_outputs(folder: Path) -> dict:
    """`terraform output -json` of an applied stack, as plain values."""
    try:
        result = subprocess.run(
            ["terraform", f"-chdir={folder}", "output", "-json"],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise JobError(f"terraform output in {folder} failed: {' '.join(detail.split())}") from None
    return {name: value["value"] for name, value in json.loads(result.stdout).items()}


def settings_from(args: argparse.Namespace) -> JobSettings:
    """Command-line values, falling back to the outputs of an applied stack."""
    outputs = terraform_outputs(args.from_terraform) if args.from_terraform else {}
    mapping = {
        "bucket": "bucket",
        "role_arn": "build_role_arn",
        "repository_url": "ecr_repository_url",
        "instance_type": "instance_type",
        "kms_key_arn": "kms_key_arn",
    }
    values = {attr: getattr(args, attr) or outputs.get(output) for attr, output in mapping.items()}
    required = ("bucket", "role_arn", "repository_url", "instance_type")
    missing = [attr for attr in required if not values[attr]]
    if missing:
        flags = ", ".join("--" + attr.replace("_", "-") for attr in missing)
        raise JobError(f"missing {flags} (or --from-terraform with an applied stack)")
    if args.model.startswith("s3://") and not args.model.startswith(
        f"s3://{values['bucket']}/sources/"
    ):
        raise JobError(f"--model from S3 must be under s3://{values['bucket']}/sources/")
    build_args = list(args.build_args)
    if build_args[:1] == ["--"]:
        build_args = build_args[1:]
    return JobSettings(
        **values,
        image_tag=args.image_tag,
        model=args.model,
        tarball=args.tarball,
        build_args=build_args,
        volume_gb=args.volume_gb,
        max_runtime_s=args.max_runtime,
        name=args.name,
    )


def run_build(
    settings: JobSettings,
    sm,
    s3,
    *,
    now: datetime | None = None,
    wait: bool = True,
    poll_s: float = 30.0,
    stream=None,
) -> dict:
    """Start the job, wait for it, check what it wrote. Returns a summary."""
    now = now or datetime.now(timezone.utc)
    version = version_name(settings.image_tag, now)
    key = artifact_key(version, settings.tarball)
    name = job_name(settings, now)
    ensure_new_prefix(s3, settings.bucket, f"models/{version}/")
    sm.create_processing_job(**job_request(settings, name, version))
    summary = {"job": name, "model_artifact": key, "image_tag": settings.image_tag}
    if not wait:
        return summary
    described = wait_for_job(sm, name, poll_s, stream)
    status = described["ProcessingJobStatus"]
    if status != "Completed":
        reason = described.get("FailureReason") or described.get("ExitMessage") or status
        raise JobError(
            f"job {name} {status.lower()}: {reason} (logs: CloudWatch log group "
            f"/aws/sagemaker/ProcessingJobs, streams {name}/*)"
        )
    manifest = read_manifest(s3, settings.bucket, key)
    if manifest:
        environment = manifest["environment"]
        summary["built_on"] = {
            k: environment.get(k) for k in ("device_name", "torch", "triton", "cuda")
        }
    return summary


def sagemaker_build_command(args: argparse.Namespace) -> int:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        settings = settings_from(args)
        session = boto3.session.Session(region_name=args.region)
        sm = session.client("sagemaker", endpoint_url=args.endpoint_url)
        s3 = session.client("s3", endpoint_url=args.endpoint_url)
        summary = run_build(settings, sm, s3, wait=not args.no_wait, poll_s=args.poll_interval)
    except KeyboardInterrupt:
        print(
            "\nstopped waiting; the job goes on (aws sagemaker stop-processing-job "
            "--processing-job-name <job> stops it)",
            file=sys.stderr,
        )
        return 130
    except (JobError, BotoCoreError, ClientError) as exc:
        print(f"sagemaker-build: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    line = f'model_artifact = "{summary["model_artifact"]}"'
    if args.no_wait:
        print(f"once job {summary['job']} has completed, set in Terraform: {line}", file=sys.stderr)
    elif args.tfvars:
        update_tfvars(args.tfvars, summary["model_artifact"])
        print(f"wrote {line} to {args.tfvars}; deploy image_tag={args.image_tag}", file=sys.stderr)
    else:
        print(f"set in Terraform: {line} (and image_tag={args.image_tag})", file=sys.stderr)
    return 0


def add_sagemaker_parser(commands) -> argparse.ArgumentParser:
    """Register ``python -m optimize sagemaker-build`` on the subcommands."""
    p = commands.add_parser(
        "sagemaker-build",
        help="run `build` as a SageMaker job on the endpoints' instance type and image",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--image-tag", required=True, help="the image (commit SHA) to build with and to deploy"
    )
    p.add_argument(
        "--from-terraform",
        type=Path,
        metavar="DIR",
        help="read bucket, role, repository, instance type and key from `terraform output` in DIR",
    )
    p.add_argument("--bucket", help="the stack's bucket (output: bucket)")
    p.add_argument("--role-arn", help="the build job's role (output: build_role_arn)")
    p.add_argument("--repository-url", help="ECR repository (output: ecr_repository_url)")
    p.add_argument("--instance-type", help="the endpoints' instance type (output: instance_type)")
    p.add_argument("--kms-key-arn", help="key for the uploaded artifact (output: kms_key_arn)")
    p.add_argument(
        "--model",
        default="stabilityai/sd-turbo",
        help="hub id (the job gets internet) or s3://<bucket>/sources/... (network isolation)",
    )
    p.add_argument("--tarball", action="store_true", help="model.tar.gz instead of a folder")
    p.add_argument("--tfvars", type=Path, help="write model_artifact into this tfvars file")
    p.add_argument("--volume-gb", type=int, default=100, help="job volume (default %(default)s)")
    p.add_argument(
        "--max-runtime", type=int, default=4 * 3600, help="seconds before SageMaker stops the job"
    )
    p.add_argument("--name", default="sdturbo", help="job name prefix (default %(default)s)")
    p.add_argument("--no-wait", action="store_true", help="start the job and return")
    p.add_argument("--poll-interval", type=float, default=30.0, help=argparse.SUPPRESS)
    p.add_argument("--region", help="AWS region (default: the AWS configuration's)")
    p.add_argument("--endpoint-url", help="AWS API endpoint override, e.g. a moto server")
    p.add_argument(
        "build_args",
        nargs=argparse.REMAINDER,
        help="after --: arguments for `python -m optimize build` (e.g. --sizes 512)",
    )
    p.set_defaults(func=sagemaker_build_command)
    return p
