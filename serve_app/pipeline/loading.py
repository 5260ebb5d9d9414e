"""Loading: which device and dtype, which weights, and ``from_pretrained`` for all of them.

The hub id, a local diffusers folder, the built-in tiny model and the random full-size one all
go through the same ``AutoPipelineForText2Image.from_pretrained`` call.
"""

from __future__ import annotations

from pathlib import Path

import torch

from serve_app.models.random_full import FULL_MODEL
from serve_app.models.tiny import TAESD_RANDOM, TINY_MODEL, ensure_taesd_random, ensure_tiny_model


def resolve_device(device: str, require: bool = True) -> torch.device:
    """The torch device for a setting; ``require``: fail if it is not usable here."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if require and device == "cuda" and not torch.cuda.is_available():
        # A GPU host whose driver is older than torch's CUDA build lands here too: say so
        # rather than serve fp32 on the CPU behind a healthy /ping.
        raise RuntimeError(
            f"device=cuda but torch {torch.__version__} (CUDA {torch.version.cuda}) sees no "
            "usable GPU: check the driver (nvidia-smi) against torch's CUDA build, or set "
            "device=cpu"
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
        from serve_app.models.random_full import ensure_full_model

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

    def load(**options):
        return AutoPipelineForText2Image.from_pretrained(source, **kwargs, **options)

    local = Path(source).exists()
    pipe = load() if local else _from_hub(load, source, fp16=dtype == torch.float16)
    if vae is not None:
        pipe.vae = load_tiny_decoder(vae, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _from_hub(load, source: str, fp16: bool):
    """A hub id: the local cache first (no network); else one quick request to the hub, so an
    unreachable hub or an unknown id fails in seconds rather than after huggingface_hub's
    retries of every file; then the download. fp16: the repo's fp16 variant (half the bytes)
    when it has one."""
    from huggingface_hub import HfApi, constants

    variants = [{"variant": "fp16"}, {}] if fp16 else [{}]
    for options in variants:
        try:
            return load(local_files_only=True, **options)
        except (OSError, ValueError):
            continue
    if not constants.HF_HUB_OFFLINE:
        HfApi().model_info(source, timeout=10)  # raises at once: unreachable, unknown, gated
    for options in variants[:-1]:
        try:
            return load(**options)
        except (OSError, ValueError):
            continue
    return load(**variants[-1])


def load_tiny_decoder(vae: str, dtype: torch.dtype):
    """TAESD-family AutoencoderTiny: ~77% of SD-Turbo's 1-step FLOPs are the VAE decoder, and
    TAESD decodes the same latents in a fraction of them (diffusers docs, "Tiny AutoEncoder")."""
    from diffusers import AutoencoderTiny

    source = str(ensure_taesd_random()) if vae == TAESD_RANDOM else vae
    return AutoencoderTiny.from_pretrained(source, torch_dtype=dtype)
