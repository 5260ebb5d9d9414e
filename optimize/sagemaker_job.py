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
        --instance-type ml.g5.xlarge --image-tag "$SHA" -- --warmup-sizes 512 --batch-buckets 1,2,4

Weights come from the Hugging Face hub (the job then has internet access), or from a copy under
``s3://<bucket>/sources/`` (``--model s3://...``: the job runs with network isolation).
Arguments after ``--`` go to ``python -m optimize build`` unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from optimize.job_request import (
    JobError,
    JobSettings,
    artifact_key,
    job_name,
    job_request,
    version_name,
)
from optimize.job_wait import wait_for_job
from optimize.terraform_outputs import TerraformError, terraform_outputs
from optimize.tfvars import update_tfvars
from serve_app.config import MANIFEST_NAME

__all__ = ["MANIFEST_NAME", "JobError", "JobSettings", "run_build", "sagemaker_build_command"]


def ensure_new_prefix(s3, bucket: str, prefix: str) -> None:
    """Refuse a version that already holds anything: artifacts are never overwritten."""
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    if listed.get("KeyCount", 0):
        raise JobError(f"s3://{bucket}/{prefix} already exists; artifacts are immutable")


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


def settings_from(args: argparse.Namespace) -> JobSettings:
    """Command-line values, falling back to the outputs of an applied stack."""
    try:
        outputs = terraform_outputs(args.from_terraform) if args.from_terraform else {}
    except TerraformError as exc:
        raise JobError(str(exc)) from None
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
        help="after --: arguments for `python -m optimize build` (e.g. --warmup-sizes 512)",
    )
    p.set_defaults(func=sagemaker_build_command)
    return p
