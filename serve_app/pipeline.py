"""The diffusers side: load, optimise, warm up, generate, encode; and the engine's Backend.

Pure functions over a pipeline, plus ``DiffusersBackend``, which holds what a replica prepared
(the pipeline, what was compiled, start-up timings) so no state lives on the diffusers object.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from serve_app.batching import ImageBatch
from serve_app.config import ModelSettings
from serve_app.engine import InvalidRequest
from serve_app.full import FULL_MODEL
from serve_app.schemas import GenerateRequest
from serve_app.tiny import TAESD_RANDOM, TINY_MODEL, ensure_taesd_random, ensure_tiny_model

logger = logging.getLogger("sdturbo")


def resolve_device(device: str, require: bool = True) -> torch.device:
    """The torch device for a setting; ``require``: fail if it is not usable here."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if require and device == "cuda" and not torch.cuda.is_available():
        # A GPU host whose driver is older than torch's CUDA build lands here too: say so
        # rather than serve fp32 on the CPU behind a healthy /ping.
        raise RuntimeError(
            f"device=cuda but torch {torch.__version__} (CUDA {torch.version.cuda}) sees no "
            "usable GPU: check the driver (nvidia-smi) against torch's CUDA build"
        )
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
    if model == FULL_MODEL:
        from serve_app.full import ensure_full_model

        return str(ensure_full_model())
    path = Path(model)
    if path.exists() and not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"{model} holds no diffusers pipeline (no model_index.json)")
    return model


def load_pipeline(model: str, device: torch.device, dtype: torch.dtype, vae: str | None = None):
    """Load a text-to-image pipeline the same way for the hub, a local folder or the tiny model;
    ``vae``: an AutoencoderTiny to decode with instead."""
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
    if vae is not None:
        pipe.vae = load_tiny_decoder(vae, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_tiny_decoder(vae: str, dtype: torch.dtype):
    """TAESD-family AutoencoderTiny: ~77% of SD-Turbo's 1-step FLOPs are the VAE decoder, and
    TAESD decodes the same latents in a fraction of them (diffusers docs, "Tiny AutoEncoder")."""
    from diffusers import AutoencoderTiny

    source = str(ensure_taesd_random()) if vae == TAESD_RANDOM else vae
    return AutoencoderTiny.from_pretrained(source, torch_dtype=dtype)


# Diffusers' torch.compile guide for Stable Diffusion (optimization/fp16#torchcompile).
INDUCTOR_FLAGS = {
    "conv_1x1_as_mm": True,
    "coordinate_descent_tuning": True,
    "epilogue_fusion": False,
    "coordinate_descent_check_all_directions": True,
}


def optimize(pipe, settings: ModelSettings):
    """Apply the speed-ups the device supports; each is a setting so it can be measured alone."""
    from diffusers import AutoencoderKL

    cuda = pipe.device.type == "cuda"
    xformers = cuda and settings.attention == "xformers" and _enable_xformers(pipe)
    # One matmul for Q, K and V instead of three (FusedAttnProcessor2_0, on SDPA; xformers'
    # processor does not take fused projections, nor does AutoencoderTiny have attention).
    if settings.fuse_qkv and not xformers:
        pipe.fuse_qkv_projections(vae=isinstance(pipe.vae, AutoencoderKL))
    if cuda and settings.channels_last:
        # Convolutions run in NHWC on tensor cores without layout transposes.
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if cuda and settings.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if settings.compile:
        import torch._inductor.config as inductor_config

        # CPU kernels read the thread count at run time instead of baking in this process's:
        # a cache built with N threads then serves a replica with M (Ray sets num_cpus).
        inductor_config.cpp.dynamic_threads = True
        if settings.inductor_flags:
            for name, value in INDUCTOR_FLAGS.items():
                setattr(inductor_config, name, value)
        # Static shapes, one graph per (batch size, size), all compiled during warm-up.
        options = {"mode": settings.compile_mode, "fullgraph": True, "dynamic": False}
        pipe.unet = torch.compile(pipe.unet, **options)
        if settings.compile_vae_decoder:
            pipe.vae.decoder = torch.compile(pipe.vae.decoder, **options)
        if settings.compile_text_encoder:
            pipe.text_encoder = torch.compile(pipe.text_encoder, **options)
    return pipe


def _enable_xformers(pipe) -> bool:
    try:  # the `gpu` extra
        pipe.enable_xformers_memory_efficient_attention()
    except (ImportError, ValueError) as exc:
        logger.warning("xformers unavailable (%s): using torch SDPA attention", exc)
        return False
    return True


@dataclass(frozen=True)
class Compiled:
    """What a pipeline was compiled for; empty: nothing was, any shape runs as it comes."""

    batch_sizes: tuple[int, ...] = ()
    sizes: tuple[int, ...] = ()

    def covers(self, width: int, height: int, guidance_scale: float) -> bool:
        # Guidance above 1 doubles the UNet's batch: a shape of its own, not compiled.
        return width == height and width in self.sizes and guidance_scale <= 1.0

    def describe(self) -> str:
        return ", ".join(f"{s}x{s}" for s in self.sizes) + " with guidance_scale <= 1"


def batch_plan(n: int, sizes: tuple[int, ...] | list[int]) -> list[tuple[int, int]]:
    """Split n images into (images, padded size) calls that use the given sizes only."""
    if not sizes:
        return [(n, n)]
    plan, largest = [], max(sizes)
    while n > largest:
        plan.append((largest, largest))
        n -= largest
    if n:
        plan.append((n, min(size for size in sizes if size >= n)))
    return plan


def generate(pipe, batch: ImageBatch, compiled: Compiled = Compiled(), stages=None):
    """Run the batch; return uint8 images shaped (N, H, W, 3) on the host (a torch tensor).

    With compile on, a compiled shape is padded up to a compiled batch size (padding images are
    dropped) and split above the largest; anything else runs on the uncompiled modules. Either
    way Dynamo only runs what it compiled at start-up: no request ever compiles.
    """
    if not compiled.sizes:
        return _generate_call(pipe, batch, stages)
    with torch.compiler.set_stance("eager_on_recompile"):
        if not compiled.covers(batch.width, batch.height, batch.guidance_scale):
            return _generate_call(pipe, batch, stages)
        outputs, offset = [], 0
        for count, size in batch_plan(len(batch.seeds), compiled.batch_sizes):
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
            outputs.append(_generate_call(pipe, part, stages)[:count])
            offset += count
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def _generate_call(pipe, batch: ImageBatch, stages=None):
    """One pipeline call; the image leaves the device as uint8 (a quarter of float32's bytes)."""
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
        output_type="pt",  # [0, 1] NCHW, still on the device
    ).images
    with stages.stage("postprocess") if stages else contextlib.nullcontext():
        images = images.float().mul_(255).round_().clamp_(0, 255).to(torch.uint8)
        images = images.permute(0, 2, 3, 1)
        if images.device.type == "cuda":
            host = torch.empty(images.shape, dtype=torch.uint8, pin_memory=True)
            host.copy_(images, non_blocking=True)
            torch.cuda.current_stream(images.device).synchronize()
            return host
    return images.contiguous()


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
            batch = ImageBatch(["warm-up"] * n, [""] * n, list(range(n)), size, size, 1, 0.0)
            _generate_call(pipe, batch)
    return time.perf_counter() - start


def fxgraph_cache_counts() -> dict[str, int]:
    """Inductor's FX-graph cache hits and misses so far in this process."""
    from torch._dynamo.utils import counters

    inductor = counters["inductor"]
    return {"hits": inductor["fxgraph_cache_hit"], "misses": inductor["fxgraph_cache_miss"]}


@dataclass
class Prepared:
    """A ready pipeline, what it was compiled for, and how start-up went."""

    pipe: object
    compiled: Compiled
    timings: dict[str, float] = field(default_factory=dict)
    cache: dict[str, int] = field(default_factory=dict)


def prepare(settings: ModelSettings, log: logging.Logger = logger) -> Prepared:
    """Start-up, phase by phase: weights, compile cache, optimise, compile/warm-up.

    The server and ``optimize build`` both start this way, so the artifact compiles what the
    server runs. Logs one line per phase, and the compile cache's hits and misses.
    """
    from serve_app import compile_cache

    timings: dict[str, float] = {}
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    start = time.perf_counter()
    pipe = load_pipeline(settings.model, device, dtype, settings.vae)
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
    loaded = False
    if settings.compile:
        loaded, reason = compile_cache.load(folder, device, settings.model_dump())
        log.info("start-up: %s (%.1fs)", reason, time.perf_counter() - start)
    elif compile_cache.read_manifest_quietly(folder) is not None:
        log.info("start-up: compile is off, so the artifact's compile cache is not used")
    timings["cache_s"] = time.perf_counter() - start

    start = time.perf_counter()
    pipe = optimize(pipe, settings)
    timings["optimize_s"] = time.perf_counter() - start
    compiled = Compiled()
    batch_sizes = [1]
    if settings.compile:
        batch_sizes = sorted(set(settings.compile_batch_sizes))
        compiled = Compiled(tuple(batch_sizes), tuple(sorted(set(settings.warmup_sizes))))
    before = fxgraph_cache_counts()
    timings["warmup_s"] = warmup(pipe, settings.warmup_sizes, batch_sizes)
    after = fxgraph_cache_counts()
    cache = {key: after[key] - before[key] for key in after}
    log.info(
        "start-up: optimise %.1fs, %s %.1fs (sizes %s, batch sizes %s)",
        timings["optimize_s"],
        "compile+warm-up" if settings.compile else "warm-up",
        timings["warmup_s"],
        settings.warmup_sizes,
        batch_sizes,
    )
    if settings.compile:
        log.info("start-up: FX-graph cache %d hits, %d misses", cache["hits"], cache["misses"])
        if loaded and cache["misses"]:
            log.warning(
                "start-up: the compile cache MISSED %d of %d graphs, which compiled anew: "
                "the artifact was built for another GPU, driver or software version",
                cache["misses"],
                cache["hits"] + cache["misses"],
            )
    return Prepared(pipe, compiled, timings, cache)


def encode(image, output_format: str) -> bytes:
    """Encode one uint8 HxWx3 image. PNG costs ~30 ms at 512x512: call this off the event loop."""
    from PIL import Image

    array = image.numpy() if isinstance(image, torch.Tensor) else image
    buffer = io.BytesIO()
    options = {"png": {"compress_level": 1}, "jpeg": {"quality": 90}, "webp": {"quality": 90}}
    Image.fromarray(array).save(buffer, format=output_format.upper(), **options[output_format])
    return buffer.getvalue()


class DiffusersBackend:
    """The engine's Backend for a diffusers pipeline. The constructor only checks what can fail
    at once (the device, the model folder); ``load`` does the rest on the pipeline thread."""

    token_limit = 77  # CLIP's window; set from the tokenizer once loaded

    def __init__(self, settings: ModelSettings):
        self.settings = settings
        resolve_device(settings.device)
        resolve_model_path(settings.model)
        self.prepared: Prepared | None = None

    def load(self) -> dict[str, float]:
        self.prepared = prepare(self.settings)
        self.token_limit = self.prepared.pipe.tokenizer.model_max_length
        return self.prepared.timings

    @property
    def compiled(self) -> Compiled:
        if self.prepared is not None:
            return self.prepared.compiled
        if not self.settings.compile:
            return Compiled()
        return Compiled(
            tuple(sorted(set(self.settings.compile_batch_sizes))),
            tuple(sorted(set(self.settings.warmup_sizes))),
        )

    def check(self, request: GenerateRequest) -> None:
        compiled = self.compiled
        if (
            self.settings.uncompiled == "reject"
            and compiled.sizes
            and not compiled.covers(request.width, request.height, request.guidance_scale)
        ):
            raise InvalidRequest(
                f"this server runs only its compiled shapes: {compiled.describe()} "
                f"(asked for {request.width}x{request.height}, guidance_scale "
                f"{request.guidance_scale:g})"
            )

    def generate(self, batch: ImageBatch):
        try:
            return generate(self.prepared.pipe, batch, self.prepared.compiled)
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise

    def truncated(self, prompts: list[str]) -> list[bool]:
        return truncated_prompts(self.prepared.pipe, prompts)

    def is_out_of_memory(self, error: BaseException) -> bool:
        return isinstance(error, torch.OutOfMemoryError)

    def encode(self, image, output_format: str) -> bytes:
        return encode(image, output_format)
