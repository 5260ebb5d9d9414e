"""The CreateProcessingJob request of the artifact build: what runs, where, and where it lands."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

# Processing containers read inputs and write outputs under /opt/ml/processing (SageMaker
# developer guide: "How Amazon SageMaker Processing Runs Your Processing Container Image").
OUTPUT_DIR = "/opt/ml/processing/output"
SOURCE_DIR = "/opt/ml/processing/input/source"
CACHE_DIR = "/opt/ml/processing/cache"
JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")  # CreateProcessingJob's pattern


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
                # --compile: the job exists to build the caches on the endpoint's GPU (the
                # build's default is the server's, off); a later --no-compile still wins.
                *("--model", model, "--output", output, "--device", "cuda", "--compile"),
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
