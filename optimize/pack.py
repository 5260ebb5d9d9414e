"""Pack the artifact (``model.tar.gz`` or a plain folder) and upload it to S3 with progress."""

from __future__ import annotations

import sys
import tarfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse


def pack_tarball(folder: Path, output: Path) -> Path:
    """``model.tar.gz`` with the pipeline at its root: SageMaker extracts it to /opt/ml/model."""
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    # Level 1: weights barely compress; a high level only costs build time.
    with tarfile.open(partial, "w:gz", compresslevel=1) as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
    partial.replace(output)
    return output


def parse_s3_url(url: str) -> tuple[str, str]:
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"expected s3://bucket/key, got {url!r}")
    return parsed.netloc, parsed.path.lstrip("/")


class Progress:
    """boto3 transfer callback: a percentage line on stderr, at most twice a second."""

    def __init__(self, total: int, label: str, stream=None):
        self.total, self.label, self.stream = max(total, 1), label, stream
        self.done, self._last = 0, 0.0
        self._lock = threading.Lock()  # boto3 calls back from its transfer threads

    def __call__(self, sent: int) -> None:
        with self._lock:
            self.done += sent
            now = time.monotonic()
            if now - self._last >= 0.5 or self.done >= self.total:
                self._last = now
                pct = 100 * self.done / self.total
                mib = self.done / 2**20
                print(
                    f"upload {self.label}: {pct:5.1f}% ({mib:.1f} MiB)",
                    file=self.stream or sys.stderr,
                    flush=True,
                )


def upload(path: Path, url: str, endpoint_url: str | None = None, client=None) -> list[str]:
    """Upload a tarball to s3://bucket/key (key ending in / gets the file name appended), or
    a folder's files under s3://bucket/prefix/ (for ``ModelDataSource`` with
    ``CompressionType: None``). Returns the s3:// URLs written.
    """
    import boto3
    from boto3.s3.transfer import TransferConfig

    bucket, key = parse_s3_url(url)
    client = client or boto3.client("s3", endpoint_url=endpoint_url)
    # 64 MiB parts: a 2.6 GB fp16 artifact in ~40 parts, uploaded 8 at a time.
    config = TransferConfig(multipart_chunksize=64 * 2**20, max_concurrency=8)
    if path.is_file():
        if not key or key.endswith("/"):
            key += path.name
        files = [(path, key)]
    else:
        prefix = key.rstrip("/") + "/" if key else ""
        files = [(p, prefix + p.relative_to(path).as_posix()) for p in sorted(path.rglob("*"))]
        files = [(p, k) for p, k in files if p.is_file()]
    total = sum(p.stat().st_size for p, _ in files)
    progress = Progress(total, f"{path.name} -> s3://{bucket}/{key}")
    for file, object_key in files:
        client.upload_file(str(file), bucket, object_key, Config=config, Callback=progress)
    return [f"s3://{bucket}/{object_key}" for _, object_key in files]
