"""Pure functions around a diffusers pipeline: load, optimise, warm up, generate, encode."""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from serve_app.config import ModelSettings
from serve_app.tiny import TINY_MODEL, ensure_tiny_model

logger = logging.getLogger("sdturbo")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        # fp16 on GPU halves memory and doubles tensor-core throughput; CPUs lack fast fp16.
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def resolve_model_path(model: str) -> str:
    """Map the model argument to what ``from_pretrained`` takes: a hub id or a folder."""
    if model == TINY_MODEL:
        return str(ensure_tiny_model())
    path = Path(model)
    if path.exists() and not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"{model} holds no diffusers pipeline (no model_index.json)")
    return model


def load_pipeline(model: str, device: torch.device, dtype: torch.dtype):
    """Load a text-to-image pipeline the same way for the hub, a local folder or the tiny model."""
    from diffusers import AutoPipelineForText2Image

    source = resolve_model_path(model)
    kwargs = {"dtype": dtype, "safety_checker": None, "requires_safety_checker": False}
    if dtype == torch.float16 and not Path(source).exists():
        # The hub repo ships an fp16 variant: half the download.
        try:
            pipe = AutoPipelineForText2Image.from_pretrained(source, variant="fp16", **kwargs)
        except (OSError, ValueError):
            pipe = AutoPipelineForText2Image.from_pretrained(source, **kwargs)
    else:
        pipe = AutoPipelineForText2Image.from_pretrained(source, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def optimize(pipe, settings: ModelSettings):
    """Apply the speed-ups the device supports; each is a setting so it can be compared."""
    cuda = pipe.device.type == "cuda"
    xformers = cuda and settings.attention == "xformers" and _enable_xformers(pipe)
    # One matmul for Q, K and V instead of three (diffusers' FusedAttnProcessor2_0, on SDPA;
    # xformers' processor does not take fused projections).
    if settings.fuse_qkv and not xformers and hasattr(pipe, "fuse_qkv_projections"):
        pipe.fuse_qkv_projections()
    if cuda and settings.channels_last:
        # Convolutions run in NHWC on tensor cores without layout transposes.
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if settings.compile:
        # Static shapes: one graph per (batch size, resolution), all compiled during warm-up;
        # generate() pads batches to those sizes. Room for every warmed shape plus a few more.
        shapes = len(settings.compile_batch_sizes) * max(1, len(settings.warmup_sizes))
        torch._dynamo.config.recompile_limit = max(
            torch._dynamo.config.recompile_limit, 2 * shapes + 8
        )
        # CPU kernels read the thread count at run time instead of baking in this process's:
        # a cache built with N threads then serves a replica with M (Ray sets num_cpus).
        import torch._inductor.config as inductor_config

        inductor_config.cpp.dynamic_threads = True
        options = {"mode": settings.compile_mode, "fullgraph": True, "dynamic": False}
        pipe.unet = torch.compile(pipe.unet, **options)
        if settings.compile_vae_decoder:
            pipe.vae.decoder = torch.compile(pipe.vae.decoder, **options)
        pipe._sdturbo_batch_sizes = sorted(set(settings.compile_batch_sizes))
    return pipe


def _enable_xformers(pipe) -> bool:
    try:  # the `gpu` extra
        pipe.enable_xformers_memory_efficient_attention()
    except (ImportError, ValueError) as exc:
        logger.warning("xformers unavailable (%s): using torch SDPA attention", exc)
        return False
    return True


def compiled_batch_sizes(pipe) -> list[int]:
    """The batch sizes the pipeline was compiled for (none: any size runs as it comes)."""
    return getattr(pipe, "_sdturbo_batch_sizes", [])


def batch_plan(n: int, sizes: list[int]) -> list[tuple[int, int]]:
    """Split n images into (images, padded size) calls that use compiled sizes only."""
    if not sizes:
        return [(n, n)]
    plan, largest = [], max(sizes)
    while n > largest:
        plan.append((largest, largest))
        n -= largest
    if n:
        plan.append((n, min(size for size in sizes if size >= n)))
    return plan


@dataclass(frozen=True)
class ImageBatch:
    """One pipeline call: images that share size, steps and guidance."""

    prompts: list[str]
    negative_prompts: list[str]
    seeds: list[int]
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float


def generate(pipe, batch: ImageBatch) -> np.ndarray:
    """Run the batch; return uint8 images shaped (N, H, W, 3).

    A compiled pipeline only sees the batch sizes it was compiled for: a batch is padded up to
    the next one (padding images are dropped) and split above the largest.
    """
    plan = batch_plan(len(batch.seeds), compiled_batch_sizes(pipe))
    if len(plan) == 1 and plan[0][0] == plan[0][1]:
        return _generate_call(pipe, batch)
    outputs, offset = [], 0
    for count, size in plan:
        pad = size - count
        part = ImageBatch(
            prompts=batch.prompts[offset : offset + count] + [""] * pad,
            negative_prompts=batch.negative_prompts[offset : offset + count] + [""] * pad,
            seeds=batch.seeds[offset : offset + count] + [0] * pad,
            width=batch.width,
            height=batch.height,
            num_inference_steps=batch.num_inference_steps,
            guidance_scale=batch.guidance_scale,
        )
        outputs.append(_generate_call(pipe, part)[:count])
        offset += count
    return np.concatenate(outputs)


def _generate_call(pipe, batch: ImageBatch) -> np.ndarray:
    """One pipeline call."""
    # One CPU generator per image: each image's noise depends on its seed alone, so a request
    # gets the same image whatever else shares its batch, on any device.
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in batch.seeds]
    use_guidance = batch.guidance_scale > 1.0
    images = pipe(
        prompt=batch.prompts,
        negative_prompt=batch.negative_prompts if use_guidance else None,
        num_inference_steps=batch.num_inference_steps,
        guidance_scale=batch.guidance_scale,
        width=batch.width,
        height=batch.height,
        generator=generators,
        output_type="np",
    ).images
    return (images * 255).round().clip(0, 255).astype(np.uint8)


def truncated_prompts(pipe, prompts: list[str]) -> list[bool]:
    """Which prompts exceed the text encoder's window (CLIP: 77 tokens) and get cut."""
    limit = pipe.tokenizer.model_max_length
    lengths = [len(ids) for ids in pipe.tokenizer(prompts, truncation=False).input_ids]
    return [length > limit for length in lengths]


def warmup(pipe, sizes: list[int], batch_sizes: list[int]) -> float:
    """Run every configured shape once so no request pays for first-call costs; return seconds.

    On a compiled pipeline this is where compilation happens: each (batch size, size) once.
    """
    start = time.perf_counter()
    for size in sizes:
        for n in batch_sizes:
            _generate_call(
                pipe, ImageBatch(["warm-up"] * n, [""] * n, list(range(n)), size, size, 1, 0.0)
            )
    return time.perf_counter() - start


def warmup_batch_sizes(settings: ModelSettings) -> list[int]:
    return sorted(set(settings.compile_batch_sizes)) if settings.compile else [1]


def prepare(settings: ModelSettings, log: logging.Logger = logger):
    """Start-up, phase by phase: weights, compile cache, optimise, compile/warm-up.

    Returns the ready pipeline and each phase's seconds; logs one line per phase. The server
    and ``optimize build`` both start this way, so the artifact compiles what the server runs.
    """
    from serve_app import compile_cache

    timings: dict[str, float] = {}
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    start = time.perf_counter()
    pipe = load_pipeline(settings.model, device, dtype)
    timings["weights_s"] = time.perf_counter() - start
    log.info(
        "start-up: weights of %s on %s/%s in %.1fs",
        settings.model,
        device,
        dtype,
        timings["weights_s"],
    )

    start = time.perf_counter()
    folder = resolve_model_path(settings.model)
    if settings.compile:
        _, reason = compile_cache.load(folder, device, settings.model_dump())
        log.info("start-up: %s (%.1fs)", reason, time.perf_counter() - start)
    elif compile_cache.read_manifest_quietly(folder) is not None:
        log.info("start-up: compile is off, so the artifact's compile cache is not used")
    timings["cache_s"] = time.perf_counter() - start

    start = time.perf_counter()
    pipe = optimize(pipe, settings)
    timings["optimize_s"] = time.perf_counter() - start
    batch_sizes = warmup_batch_sizes(settings)
    timings["warmup_s"] = warmup(pipe, settings.warmup_sizes, batch_sizes)
    log.info(
        "start-up: optimise %.1fs, %s %.1fs (sizes %s, batch sizes %s)",
        timings["optimize_s"],
        "compile+warm-up" if settings.compile else "warm-up",
        timings["warmup_s"],
        settings.warmup_sizes,
        batch_sizes,
    )
    return pipe, timings


def encode(image: np.ndarray, output_format: str) -> bytes:
    """Encode one uint8 HxWx3 image. PNG costs ~30 ms at 512x512: call this off the event loop."""
    from PIL import Image

    buffer = io.BytesIO()
    options = {"png": {"compress_level": 1}, "jpeg": {"quality": 90}, "webp": {"quality": 90}}
    Image.fromarray(image).save(buffer, format=output_format.upper(), **options[output_format])
    return buffer.getvalue()
