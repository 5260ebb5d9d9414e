"""``optimize build``: weights, compile cache and manifest, packed as a SageMaker model artifact.

The build starts the pipeline exactly as the server does (``pipeline.startup.prepare``: the
same loading, the same ``optimize`` function, the same warm-up of every configured shape), from
the very folder it writes, so what it compiles is what a server compiles.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from optimize.pack import pack_tarball, upload
from serve_app.config import MANIFEST_NAME, ModelSettings
from serve_app.pipeline import compile_cache, optimizing, toolchain
from serve_app.pipeline.loading import load_pipeline, resolve_device, resolve_dtype
from serve_app.pipeline.startup import prepare

logger = logging.getLogger("optimize")

# Components a text-to-image server never calls: not written to the artifact.
UNUSED_COMPONENTS = ("safety_checker", "feature_extractor", "image_encoder")


@dataclass
class BuildResult:
    output: Path
    manifest: dict
    timings: dict[str, float] = field(default_factory=dict)
    uploaded: list[str] = field(default_factory=list)


def is_tarball(output: Path) -> bool:
    return output.name.endswith((".tar.gz", ".tgz"))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(8 * 2**20):
            digest.update(chunk)
    return digest.hexdigest()


def file_table(folder: Path) -> list[dict]:
    return [
        {"path": p.relative_to(folder).as_posix(), "bytes": p.stat().st_size, "sha256": sha256(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    ]


def write_weights(settings: ModelSettings, source: str, folder: Path) -> str:
    """Load with the server's loader, drop what serving never uses, write safetensors."""
    target = resolve_device(settings.device, require=False)
    dtype = resolve_dtype(settings.dtype, target)
    # fp16 weights for a GPU can be written on any machine: the cast needs no GPU.
    load_device = target if target.type != "cuda" or torch.cuda.is_available() else "cpu"
    # A tiny decoder (settings.vae) is written into the artifact in place of SD's VAE.
    pipe = load_pipeline(source, torch.device(load_device), dtype, settings.vae)
    unused = {name: None for name in UNUSED_COMPONENTS if name in pipe.components}
    if unused:
        pipe.register_modules(**unused)
    pipe.save_pretrained(folder, safe_serialization=True)
    return type(pipe).__name__


@contextmanager
def fresh_inductor_cache():
    """Compile into an empty Inductor cache folder, so nothing is a hit and the shipped
    kernels are this model's only."""
    previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="inductor-build-") as folder:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
        try:
            yield Path(folder)
        finally:
            if previous is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous


def compile_into(settings: ModelSettings, folder: Path) -> dict:
    """Start the written folder as the server would; store what compiling it produced."""
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "compiling for a CUDA target needs a CUDA machine: build there, or pass "
            "--no-compile to write fp16 weights only"
        )
    # Compile every shape here, whatever the server's policy on a cache miss.
    serving = settings.model_copy(update={"model": str(folder), "compile_cache_miss": "compile"})
    with fresh_inductor_cache():
        prepared = prepare(serving, logger)
        if prepared.compile_status.state != "compiled":
            raise SystemExit(f"compiling failed: {prepared.compile_status.detail}")
        entry = compile_cache.save(folder)
    shapes = [
        {"batch_size": n, "height": size, "width": size}
        for size in settings.warmup_sizes
        for n in sorted(set(settings.batch_buckets))
    ]
    return {
        "enabled": True,
        "mode": settings.compile_mode,
        "shapes": shapes,
        "timings_s": prepared.timings,
        "cache": entry,
    }


def build_manifest(
    settings: ModelSettings, model: str, pipeline_class: str, folder: Path, compiled: dict
) -> dict:
    target = resolve_device(settings.device, require=False)
    # Start the server with these settings so it runs exactly the cached graphs.
    serving = settings.model_dump(include=set(compile_cache.COMPILE_SETTINGS))
    serving["vae"] = None  # a tiny decoder is already the artifact's own VAE
    return {
        "format": compile_cache.MANIFEST_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": model,
        "pipeline": pipeline_class,
        "dtype": str(resolve_dtype(settings.dtype, target)).removeprefix("torch."),
        "environment": toolchain.environment(target, optimizing.inductor_settings(settings)),
        "serve_settings": serving,
        "compile": compiled,
        "compile_cache": (compiled.get("cache") or {}),
        "files": file_table(folder),
    }


def build(
    settings: ModelSettings,
    output: Path,
    upload_to: str | None = None,
    endpoint_url: str | None = None,
) -> BuildResult:
    output = Path(output)
    if output.exists() and (output.is_file() or any(output.iterdir())):
        raise SystemExit(f"{output} exists: choose a new path")
    timings: dict[str, float] = {}
    parent = output.parent
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=parent) as work:
        folder = Path(work) / "model"
        start = time.perf_counter()
        pipeline_class = write_weights(settings, settings.model, folder)
        timings["weights_s"] = time.perf_counter() - start
        logger.info("weights written in %.1fs", timings["weights_s"])

        compiled: dict = {"enabled": False}
        if settings.compile:
            start = time.perf_counter()
            compiled = compile_into(settings, folder)
            timings["compile_s"] = time.perf_counter() - start
            logger.info(
                "compiled %d shapes in %.1fs", len(compiled["shapes"]), timings["compile_s"]
            )

        start = time.perf_counter()
        manifest = build_manifest(settings, settings.model, pipeline_class, folder, compiled)
        (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
        timings["manifest_s"] = time.perf_counter() - start

        start = time.perf_counter()
        if is_tarball(output):
            pack_tarball(folder, output)
        else:
            shutil.move(str(folder), output)
        timings["pack_s"] = time.perf_counter() - start
    result = BuildResult(output, manifest, timings)
    if upload_to:
        start = time.perf_counter()
        result.uploaded = upload(output, upload_to, endpoint_url)
        timings["upload_s"] = time.perf_counter() - start
    return result
