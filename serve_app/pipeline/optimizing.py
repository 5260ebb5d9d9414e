"""Speed-ups applied to a loaded pipeline's modules, and torch.compile's options and smoke test.

Each speed-up is a setting, so each can be measured alone (``loadtest/bench_gpu.py``).
"""

from __future__ import annotations

import logging

import torch

from serve_app.config import ModelSettings

logger = logging.getLogger("sdturbo")

# Diffusers' torch.compile guide for Stable Diffusion (optimization/fp16#torchcompile).
INDUCTOR_FLAGS = {
    "conv_1x1_as_mm": True,
    "coordinate_descent_tuning": True,
    "epilogue_fusion": False,
    "coordinate_descent_check_all_directions": True,
}
# Inductor's own CUDA graphs (cudagraph trees) would capture again what the generate step
# already captures per shape, and record per thread: the step's graphs are the one mechanism.
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")


def optimize(pipe, settings: ModelSettings):
    """Apply the module-level speed-ups the device supports."""
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
    return pipe


def _enable_xformers(pipe) -> bool:
    try:  # the `gpu` extra
        pipe.enable_xformers_memory_efficient_attention()
    except (ImportError, ValueError) as exc:
        logger.warning("xformers unavailable (%s): using torch SDPA attention", exc)
        return False
    return True


def inductor_settings(settings: ModelSettings) -> dict:
    """The Inductor configuration a compile cache depends on (recorded in the manifest)."""
    flags = dict(INDUCTOR_FLAGS) if settings.inductor_flags else {}
    # CPU kernels read the thread count at run time instead of baking in this process's:
    # a cache built with N threads then serves a replica with M (Ray sets num_cpus).
    return {"cpp.dynamic_threads": True, **flags}


def configure_inductor(settings: ModelSettings) -> None:
    import torch._inductor.config as inductor_config

    for name, value in inductor_settings(settings).items():
        target, _, attribute = name.rpartition(".")
        setattr(getattr(inductor_config, target) if target else inductor_config, attribute, value)


def compile_options(settings: ModelSettings) -> dict:
    """torch.compile options per stage; static shapes, one graph per shape, whole graphs."""
    options = {"mode": settings.compile_mode, "fullgraph": True, "dynamic": False}
    return {
        "unet": options,
        "decoder": options if settings.compile_vae_decoder else None,
        "text": options if settings.compile_text_encoder else None,
        "encoder": options,  # image-to-image's VAE encode, compiled when it is prepared
    }


def smoke_test(device: torch.device) -> str | None:
    """Compile and run one tiny kernel: None if torch.compile works here, else why not.

    Seconds where a broken toolchain (no C++ compiler, a ptxas too old for the GPU, a
    read-only cache folder) would otherwise surface only after minutes of compiling."""
    try:
        double = torch.compile(lambda x: x * 2 + 1, fullgraph=True, dynamic=False)
        value = double(torch.ones(8, device=device))
        if not bool((value == 3).all()):
            return "a compiled test kernel computed a wrong result"
    except Exception as exc:  # any failure means: do not compile here
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def fxgraph_cache_counts() -> dict[str, int]:
    """Inductor's FX-graph cache hits and misses so far in this process."""
    from torch._dynamo.utils import counters

    inductor = counters["inductor"]
    return {"hits": inductor["fxgraph_cache_hit"], "misses": inductor["fxgraph_cache_miss"]}
