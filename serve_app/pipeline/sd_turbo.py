"""SD-Turbo's sampling arithmetic as pure functions over diffusers' models and scheduler config.

What ``StableDiffusionPipeline.__call__`` and ``EulerDiscreteScheduler`` do for SD-Turbo, with
every host round trip taken out: sigmas and timesteps are precomputed per step count as device
tensors (diffusers' ``set_timesteps`` copies them to the device and back, and ``step`` finds its
index with ``nonzero()``), the Euler update runs in float32, and the VAE decode ends in uint8
NHWC on the device. The formulas and their order of operations are diffusers' own
(``schedulers/scheduling_euler_discrete.py``: ``scale_model_input`` and ``step`` with
``s_churn=0``), so in float32 the result equals the library pipeline's (tests/test_generate.py).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

STEP_COUNTS = (1, 2, 3, 4)  # SD-Turbo is distilled for 1 to 4 steps (model card)
PREDICTION_TYPES = ("epsilon", "v_prediction")


class UnsupportedModel(ValueError):
    """The pipeline is not one this generate step implements (SD-Turbo's family)."""


@dataclass(frozen=True)
class Schedule:
    """The timesteps and sigmas one run steps through, each a 0-d float32 device tensor of its
    own (so a compiled step sees the same input layout at every step). Text-to-image starts
    from pure noise (``noise * init_noise_sigma``); image-to-image enters the same schedule
    part-way, at ``sigmas[0]`` (``image_latents + noise * sigmas[0]``)."""

    timesteps: tuple[torch.Tensor, ...]
    sigmas: tuple[torch.Tensor, ...]  # one more than timesteps: the last is the final sigma
    init_noise_sigma: float

    def __len__(self) -> int:
        return len(self.timesteps)


def image_start(steps: int, strength: float) -> int:
    """Where image-to-image enters a ``steps``-step schedule: diffusers' ``get_timesteps``
    (``int(steps * strength)`` steps are run, the first ``steps - that`` skipped)."""
    run = min(int(steps * strength), steps)
    return max(steps - run, 0)


def check_supported(pipe) -> None:
    """Fail at start-up, in words, on a model this step would compute wrongly."""
    from diffusers import EulerDiscreteScheduler

    scheduler = pipe.scheduler
    if not isinstance(scheduler, EulerDiscreteScheduler):
        raise UnsupportedModel(
            f"the generate step implements SD-Turbo's EulerDiscreteScheduler; this model uses "
            f"{type(scheduler).__name__}"
        )
    if scheduler.config.prediction_type not in PREDICTION_TYPES:
        raise UnsupportedModel(f"prediction_type {scheduler.config.prediction_type!r}")
    if getattr(scheduler.config, "timestep_type", "discrete") != "discrete":
        raise UnsupportedModel("continuous timesteps")
    if pipe.unet.config.time_cond_proj_dim is not None:
        raise UnsupportedModel("a UNet conditioned on the guidance scale (LCM)")
    if getattr(pipe.text_encoder.config, "use_attention_mask", False):
        raise UnsupportedModel("a text encoder that takes an attention mask")


def schedules(scheduler, device: torch.device) -> dict[tuple[int, int], Schedule]:
    """By (steps, start): what ``scheduler.set_timesteps(steps)`` computes from index ``start``
    on (0: text-to-image; above: image-to-image), on the device, once."""
    scheduler = copy.deepcopy(scheduler)  # set_timesteps mutates: never the pipeline's own
    result = {}
    for steps in STEP_COUNTS:
        scheduler.set_timesteps(steps, device="cpu")
        timesteps = [t.to(device) for t in scheduler.timesteps.unbind()]
        sigmas = [s.to(device) for s in scheduler.sigmas.unbind()]
        for start in range(steps):
            result[(steps, start)] = Schedule(
                timesteps=tuple(timesteps[start:]),
                sigmas=tuple(sigmas[start:]),
                init_noise_sigma=float(scheduler.init_noise_sigma),
            )
    return result


def euler_step(unet, latents, embeds, timestep, sigma, sigma_next, prediction_type, guidance):
    """One denoising step: scale the input, predict, Euler update (float32 latents).

    ``guidance`` > 1: ``embeds`` holds the unconditional rows first, then the prompts' (as
    diffusers' classifier-free guidance orders them)."""
    cfg = guidance > 1.0
    model_input = torch.cat([latents] * 2) if cfg else latents
    model_input = model_input / ((sigma**2 + 1) ** 0.5)
    output = unet(
        model_input.to(unet.dtype), timestep, encoder_hidden_states=embeds, return_dict=False
    )[0].float()
    if cfg:
        uncond, text = output.chunk(2)
        output = uncond + guidance * (text - uncond)
    if prediction_type == "epsilon":
        denoised = latents - sigma * output
    else:  # v_prediction
        denoised = output * (-sigma / (sigma**2 + 1) ** 0.5) + (latents / (sigma**2 + 1))
    derivative = (latents - denoised) / sigma
    return latents + derivative * (sigma_next - sigma)


def decode_to_uint8(vae, latents):
    """Latents to uint8 NHWC images: the VAE (post-quant conv included), denormalisation and
    quantisation in one function, so a compiled decode covers all of it."""
    image = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype), return_dict=False)[0]
    image = (image / 2 + 0.5).clamp(0, 1)
    # As diffusers' "pt" output then x255, round: the pixels its numpy path gives.
    image = image.float().mul(255).round().clamp(0, 255).to(torch.uint8)
    return image.permute(0, 2, 3, 1).contiguous()


def samples_latents(vae) -> bool:
    """Whether the VAE's encoder gives a distribution to sample (AutoencoderKL: one Gaussian
    draw per image) rather than latents (AutoencoderTiny)."""
    from diffusers import AutoencoderTiny

    return not isinstance(vae, AutoencoderTiny)


def encode_to_latents(vae, pixels, eps):
    """uint8 NHWC images to scaled latents, as diffusers' image-to-image ``prepare_latents``:
    pixels to [-1, 1] (``VaeImageProcessor``'s arithmetic), the encoder, a sample of its latent
    distribution with the given standard-normal ``eps`` (unused by AutoencoderTiny), times the
    scaling factor. Float32 out."""
    image = (pixels.permute(0, 3, 1, 2).float() / 255.0) * 2.0 - 1.0
    encoded = vae.encode(image.to(vae.dtype))
    if hasattr(encoded, "latent_dist"):
        latents = encoded.latent_dist.mean + encoded.latent_dist.std * eps
    else:
        latents = encoded.latents
    return (vae.config.scaling_factor * latents).float()


def encode_text(text_encoder, ids):
    """Token ids (B, 77) to embeddings, as diffusers' ``encode_prompt`` with no clip skip."""
    return text_encoder(ids, attention_mask=None)[0]
