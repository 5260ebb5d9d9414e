"""A tiny, random-weight pipeline of SD-Turbo's architecture family.

Built seeded in code, saved with ``save_pretrained`` and loaded back through the same
``from_pretrained`` call that loads ``stabilityai/sd-turbo``: no download, images are noise, but
shapes, dtypes, batching and timings behave like the real model at small scale.
"""

from __future__ import annotations

from pathlib import Path

from serve_app.models.storage import BUILD_VERSION, cache_root, save_once

TINY_MODEL = "tiny"
# AutoencoderTiny's default config is TAESD's (madebyollin/taesd): the real decoder's shape.
TAESD_RANDOM = "taesd-random"


def build_tiny_pipeline(seed: int = 0):
    """Return a seeded random-weight ``StableDiffusionPipeline`` shaped like SD-Turbo."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel

    from serve_app.models import clip

    torch.manual_seed(seed)
    tokenizer = clip.build_tokenizer()
    text_encoder = CLIPTextModel(
        clip.text_config(
            tokenizer,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
        )
    )
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    # Four blocks give the VAE the real scale factor 8: a 512x512 image is a 64x64 latent.
    vae = AutoencoderKL(
        block_out_channels=(4, 4, 8, 8),
        layers_per_block=1,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=512,
    )
    # SD-Turbo's scheduler: Euler with trailing timestep spacing (model card / scheduler_config).
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="trailing",
        prediction_type="epsilon",
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def ensure_tiny_model(folder: Path | None = None) -> Path:
    """Build and save the tiny model once; return the folder ``from_pretrained`` loads."""
    folder = Path(folder) if folder else cache_root() / f"tiny-v{BUILD_VERSION}"
    return save_once(folder, build_tiny_pipeline, "model_index.json")


def build_taesd_random(seed: int = 0):
    """TAESD's architecture (AutoencoderTiny's defaults) with seeded random weights."""
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    return AutoencoderTiny()


def ensure_taesd_random() -> Path:
    return save_once(cache_root() / f"taesd-random-v{BUILD_VERSION}", build_taesd_random)
