"""The full SD-Turbo architecture with random weights, from its published configs.

The configs below are those of ``stabilityai/sd-turbo`` (``unet/``, ``vae/``, ``text_encoder/``
and ``scheduler/`` ``config.json`` on the hub; the same architecture as SD 2.1 at 512 px),
written out because the hub is unreachable here. Weights are random, so images are noise, but
every layer and shape is the real model's: its timing is the real model's timing.

The tokenizer is the byte-level one from ``serve_app.models.clip``: CLIP's BPE vocabulary is not
available offline. The text encoder keeps the real vocabulary size (49,408 embeddings) and
sequence length (77), so its cost is unchanged; token ids simply spell prompts byte by byte.
"""

from __future__ import annotations

from pathlib import Path

from serve_app.models.storage import BUILD_VERSION, cache_root, save_once

FULL_MODEL = "sd-turbo-random"

UNET_CONFIG = {
    "sample_size": 64,  # 512 px / VAE scale factor 8
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "up_block_types": [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ],
    "only_cross_attention": False,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-05,
    "cross_attention_dim": 1024,
    "attention_head_dim": [5, 10, 20, 20],
    "dual_cross_attention": False,
    "use_linear_projection": True,
    "class_embed_type": None,
    "num_class_embeds": None,
    "upcast_attention": None,
    "resnet_time_scale_shift": "default",
}

VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

# OpenCLIP ViT-H/14's text tower, as converted for SD 2.x (23 of its 24 layers are used).
TEXT_ENCODER_CONFIG = {
    "vocab_size": 49408,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "projection_dim": 1024,
    "num_hidden_layers": 23,
    "num_attention_heads": 16,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-05,
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "initializer_range": 0.02,
    "initializer_factor": 1.0,
}

SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
    "timestep_spacing": "trailing",
    "steps_offset": 1,
}


def build_components(seed: int = 0, device: str = "cpu") -> dict:
    """The pipeline's components; the networks are built on ``device`` ("meta": no memory)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    from serve_app.models import clip

    torch.manual_seed(seed)
    tokenizer = clip.build_tokenizer()
    text_config = clip.text_config(tokenizer, **TEXT_ENCODER_CONFIG)
    with torch.device(device):
        networks = {
            "unet": UNet2DConditionModel(**UNET_CONFIG),
            "vae": AutoencoderKL(**VAE_CONFIG),
            "text_encoder": CLIPTextModel(text_config),
        }
    # The scheduler keeps its sigmas on the CPU by design: built outside the device context.
    return {
        **networks,
        "tokenizer": tokenizer,
        "scheduler": EulerDiscreteScheduler(**SCHEDULER_CONFIG),
    }


def build_full_pipeline(seed: int = 0, device: str = "cpu", dtype=None):
    """A random-weight ``StableDiffusionPipeline`` of SD-Turbo's full size (~1.3B parameters).

    Built directly on ``device`` (random init on a GPU takes seconds, on 2 CPU cores about a
    minute), cast to ``dtype`` when given.
    """
    from diffusers import StableDiffusionPipeline

    components = build_components(seed, device)
    pipe = StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    if dtype is not None:
        pipe = pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ensure_full_model() -> Path:
    """Save the random full-size model once (fp16 safetensors, ~2.6 GB); return its folder."""
    import torch

    def build():
        return build_full_pipeline(dtype=torch.float16)

    return save_once(cache_root() / f"{FULL_MODEL}-v{BUILD_VERSION}", build, "model_index.json")
