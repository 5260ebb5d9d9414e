"""Pure functions around a diffusers pipeline: load, optimise, warm up, generate, encode."""

from __future__ import annotations

import contextlib
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
    if pipe.device.type == "cuda":
        # xformers comes with the `gpu` extra; without it torch's SDPA attention is the default.
        with contextlib.suppress(ImportError, ValueError):
            pipe.enable_xformers_memory_efficient_attention()
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if settings.compile:
        pipe.unet = torch.compile(pipe.unet, mode=settings.compile_mode, fullgraph=True)
        pipe.vae.decoder = torch.compile(pipe.vae.decoder, mode=settings.compile_mode)
    return pipe


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
    """Run one pipeline call; return uint8 images shaped (N, H, W, 3)."""
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
    """Run every configured shape once so no request pays for first-call costs; return seconds."""
    start = time.perf_counter()
    for size in sizes:
        for n in batch_sizes:
            generate(
                pipe, ImageBatch(["warm-up"] * n, [""] * n, list(range(n)), size, size, 1, 0.0)
            )
    return time.perf_counter() - start


def encode(image: np.ndarray, output_format: str) -> bytes:
    """Encode one uint8 HxWx3 image. PNG costs ~30 ms at 512x512: call this off the event loop."""
    from PIL import Image

    buffer = io.BytesIO()
    options = {"png": {"compress_level": 1}, "jpeg": {"quality": 90}, "webp": {"quality": 90}}
    Image.fromarray(image).save(buffer, format=output_format.upper(), **options[output_format])
    return buffer.getvalue()
