"""Settings, one home each: the run-time batch knobs, what decides the compiled graphs, what a
model replica needs, and the builder's arguments. Pydantic only (the light client imports this).
"""

from __future__ import annotations

import argparse
import os
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

DEFAULT_MODEL = "stabilityai/sd-turbo"
# SageMaker's real-time payload limit is 6 MB; a larger body is refused before it is read.
MAX_BODY_BYTES = 6 * 1024 * 1024
# `sdturbo serve` reads any AppArgs field from SDTURBO_<FIELD> (SageMaker passes settings as the
# model's environment): SDTURBO_MAX_BATCH_SIZE=16, SDTURBO_DEVICE=cuda, SDTURBO_WARMUP_SIZES=512.
ENV_PREFIX = "SDTURBO_"
# The artifact's manifest (``optimize build`` writes it beside the weights); here, not in the
# compile-cache module, so light code (the SageMaker build job's client) reads the same name.
MANIFEST_NAME = "sdturbo_manifest.json"


def parse_int_list(value) -> list[int]:
    """'1,2,4' (a command line, an environment variable) or a list: the one parser of int lists."""
    if isinstance(value, str):
        try:
            return [int(part) for part in value.split(",") if part.strip()]
        except ValueError:
            raise ValueError(f"expected comma-separated integers, got {value!r}") from None
    return value


def parse_key_value(text: str) -> tuple[str, str]:
    """``--set KEY=VALUE`` (an argparse type): the setting's name and its raw value."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, value


IntList = Annotated[list[Annotated[int, Field(ge=1)]], BeforeValidator(parse_int_list)]


class BatchConfig(BaseModel):
    """The queue and batch knobs: Serve's ``user_config``, applied in ``reconfigure()`` at run
    time without reloading the model."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(8, ge=1, le=64, description="Most images in one pipeline call.")
    batch_wait_timeout_s: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="With the model idle and fewer than max_batch_size images queued, how long "
        "to wait for more before starting (0: at once). Under load a batch is whatever queued "
        "while the model was busy, so this only trades a lone request's latency for batch size.",
    )
    max_queued_requests: int = Field(
        64,
        ge=1,
        le=100_000,
        description="Requests waiting for the model beyond this get 503 at once; so does one "
        "that would not start before its timeout at the measured speed.",
    )


class CompileSettings(BaseModel):
    """Everything that decides which graphs get compiled: an artifact's manifest records these,
    and a server that differs from them names the difference at start-up."""

    model_config = ConfigDict(extra="forbid")

    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        "auto", description="auto: float16 on CUDA, float32 on CPU."
    )
    compile: bool = Field(False, description="torch.compile the UNet and VAE decoder.")
    compile_mode: str = Field("max-autotune-no-cudagraphs", description="torch.compile mode.")
    warmup_sizes: IntList = Field(
        default_factory=lambda: [512],
        description="Square sizes run once at start-up; with compile, the sizes compiled.",
    )
    compile_batch_sizes: IntList = Field(
        default_factory=lambda: [1, 2, 4, 8],
        min_length=1,
        description="With compile: the batch sizes compiled at start-up; a batch is padded up "
        "to the next one and split above the largest.",
    )
    compile_vae_decoder: bool = Field(
        True, description="With compile: also compile the VAE decoder (~77% of 1-step FLOPs)."
    )
    compile_text_encoder: bool = Field(
        False, description="With compile: also compile the text encoder."
    )
    inductor_flags: bool = Field(
        False,
        description="With compile: the Inductor flags diffusers' torch.compile guide gives for "
        "SD (conv 1x1 as mm, coordinate-descent tuning, no epilogue fusion).",
    )
    channels_last: bool = Field(True, description="CUDA: channels-last UNet and VAE.")
    fuse_qkv: bool = Field(
        True, description="Fuse attention Q/K/V projections into one matmul (UNet and VAE)."
    )
    attention: Literal["sdpa", "xformers"] = Field(
        "sdpa", description="CUDA attention kernels: torch SDPA, or xformers (the gpu extra)."
    )
    vae: str | None = Field(
        None,
        description="A folder or hub id with an AutoencoderTiny (e.g. madebyollin/taesd) to "
        "decode with instead of SD's VAE; 'taesd-random' builds one with random weights.",
    )


class ModelSettings(CompileSettings):
    """What a model replica needs to load, optimise and warm up its pipeline."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(
        DEFAULT_MODEL,
        description="Hub id, local diffusers folder (model_index.json at its root), 'tiny', or "
        "'sd-turbo-random' (the full architecture, random weights: real timing, noise images).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: cuda when a GPU is visible; 'cuda' fails without one."
    )
    cudnn_benchmark: bool = Field(
        False, description="CUDA: let cuDNN pick convolution algorithms by timing them."
    )
    uncompiled: Literal["eager", "reject"] = Field(
        "eager",
        description="With compile, a request for a size (or guidance) outside the compiled set: "
        "'eager' runs it on the uncompiled modules, 'reject' answers 422 naming the compiled "
        "sizes. Either way no request compiles.",
    )


class AppArgs(ModelSettings, BatchConfig):
    """Arguments of ``serve run serve_app:app key=value ...``, of the Serve config YAML and of
    ``sdturbo serve`` (``--set key=value`` or ``SDTURBO_<KEY>``)."""

    min_replicas: int | None = Field(
        None, ge=0, description="Default: one per visible GPU (1 on CPU); 0 scales to zero."
    )
    max_replicas: int | None = Field(None, ge=1, description="Default: min_replicas, at least 1.")
    request_timeout_s: float = Field(
        50.0, gt=0, le=3600, description="A request not done by then gets 504 (SageMaker: 60 s)."
    )
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per model replica.")
    num_gpus: float | None = Field(None, ge=0, description="GPUs per replica; default 1 on CUDA.")

    @model_validator(mode="after")
    def _replicas_ordered(self) -> AppArgs:
        low, high = self.min_replicas, self.max_replicas
        if low is not None and high is not None and low > high:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self

    def batch_config(self) -> BatchConfig:
        return BatchConfig.model_validate(self.model_dump(include=set(BatchConfig.model_fields)))

    def model_settings(self) -> ModelSettings:
        return ModelSettings.model_validate(
            self.model_dump(include=set(ModelSettings.model_fields))
        )


def settings_from_environment(environ=None) -> dict[str, str]:
    """AppArgs fields given as SDTURBO_<FIELD> environment variables."""
    environ = os.environ if environ is None else environ
    fields = {name.upper(): name for name in AppArgs.model_fields}
    return {
        fields[key.removeprefix(ENV_PREFIX)]: value
        for key, value in environ.items()
        if key.startswith(ENV_PREFIX) and key.removeprefix(ENV_PREFIX) in fields
    }
