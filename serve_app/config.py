"""Settings, one home each: the run-time batch knobs, what decides the compiled graphs, what a
model replica needs, and the builder's arguments. Pydantic only (the light client imports this).
"""

from __future__ import annotations

import argparse
import os
from typing import Annotated, Literal, get_args, get_origin

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
# `sdturbo serve`'s Prometheus port (the OpenTelemetry exporter's conventional one): Ray's
# metrics agent serves every replica's metrics, and Serve's own, at /metrics there.
METRICS_PORT = 9464


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


# torch.compile modes that turn on Inductor's CUDA graphs (cudagraph trees).
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")

IntList = Annotated[list[Annotated[int, Field(ge=1)]], BeforeValidator(parse_int_list)]


class BatchConfig(BaseModel):
    """The queue, batch and admission knobs: Serve's ``user_config``, applied in
    ``reconfigure()`` at run time without reloading the model."""

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
    uncompiled: Literal["eager", "reject"] = Field(
        "eager",
        description="With compile, a request for a size (or guidance) outside the compiled set: "
        "'eager' runs it on the uncompiled modules, 'reject' answers 422 naming the compiled "
        "sizes. Either way no request compiles.",
    )


class CompileSettings(BaseModel):
    """Everything that decides which graphs get compiled: an artifact's manifest records these,
    and a server that differs from them names the difference at start-up."""

    model_config = ConfigDict(extra="forbid")

    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        "auto", description="auto: float16 on CUDA, float32 on CPU."
    )
    compile: bool = Field(
        False,
        description="torch.compile the generate step's UNet step, VAE decode and text "
        "encoder for every fast-path shape, all at start-up.",
    )
    compile_mode: str = Field(
        "max-autotune-no-cudagraphs",
        description="torch.compile mode. Modes with Inductor's own CUDA graphs "
        f"({', '.join(CUDAGRAPH_MODES)}) need cuda_graphs=false: the generate step captures "
        "its own.",
    )
    warmup_sizes: IntList = Field(
        default_factory=lambda: [512],
        description="Square sizes prepared at start-up: the fast path's sizes (compiled with "
        "compile, CUDA-graphed on a GPU).",
    )
    batch_buckets: IntList = Field(
        default_factory=lambda: [1, 2, 4, 8],
        min_length=1,
        description="The fast path's batch sizes: a batch is padded up to the next one and "
        "split above the largest (each is compiled and captured at start-up).",
    )
    image_to_image: bool = Field(
        True,
        description="Prepare image-to-image's fast path too: its VAE encode (compiled with "
        "compile) and its denoising calls per (steps, strength) start. Off: shorter start-up; "
        "image-to-image requests then run on the uncompiled modules.",
    )
    compile_vae_decoder: bool = Field(
        True, description="With compile: also compile the VAE decode (~77% of 1-step FLOPs)."
    )
    compile_text_encoder: bool = Field(
        True, description="With compile: also compile the text encoder (run on cache misses)."
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

    cuda_graphs: bool = Field(
        True,
        description="CUDA: capture the text encoder, the denoising loop (per step count) and "
        "the decode of every fast-path shape as CUDA graphs at start-up, compiled or not.",
    )
    prompt_cache_size: int = Field(
        1024,
        ge=0,
        le=1_000_000,
        description="Prompt embeddings kept on the device, least recently used dropped "
        "(0: off). SD-Turbo's are 77x1024 fp16: 158 KB each.",
    )
    compile_cache_miss: Literal["compile", "eager"] = Field(
        "compile",
        description="With compile, when no compile cache fits this machine (none shipped, built "
        "for another GPU or software, or missing on the first shape): 'compile' every shape now "
        "(minutes on a GPU), or serve uncompiled at once with a warning and /ping saying so "
        "('eager': the container's setting, so a replica never compiles inside SageMaker's "
        "health-check window).",
    )
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

    load_attempts: int = Field(
        1,
        ge=1,
        le=10,
        description="Starts of the model a replica tries (a growing pause between them) before "
        "it stays failed: /ping 503 with the reason, and sdturbo serve and serve run exit "
        "with it. huggingface_hub already retries a download 5 times (~45 s) within each.",
    )

    @model_validator(mode="after")
    def _one_kind_of_cuda_graphs(self) -> ModelSettings:
        if self.compile and self.cuda_graphs and self.compile_mode in CUDAGRAPH_MODES:
            raise ValueError(
                f"compile_mode={self.compile_mode} captures CUDA graphs of its own: use "
                "max-autotune-no-cudagraphs or default, or set cuda_graphs=false"
            )
        return self


class MetricsSettings(BaseModel):
    """What a replica's metrics are named by, and where its CloudWatch EMF lines go."""

    model_config = ConfigDict(extra="forbid")

    endpoint_name: str | None = Field(
        None,
        min_length=1,
        max_length=255,
        description="The SageMaker endpoint serving this (Terraform sets it): the EMF lines' "
        "EndpointName dimension. Set, EMF lines are written every emf_interval_s.",
    )
    variant_name: str = Field(
        "AllTraffic",
        min_length=1,
        max_length=255,
        description="The production variant: the EMF lines' VariantName dimension.",
    )
    metrics_namespace: str = Field(
        "SDTurbo",
        min_length=1,
        max_length=255,
        description="CloudWatch namespace of the EMF metrics.",
    )
    emf_interval_s: float | None = Field(
        None,
        gt=0,
        le=3600,
        description="Seconds between EMF lines (sooner when a metric holds 100 values). "
        "Default: 60 when endpoint_name is set, else no EMF lines; set, they are written even "
        "without an endpoint name (EndpointName 'local').",
    )
    emf_path: str | None = Field(
        None,
        description="Where EMF lines are appended. Default: the standard output of the "
        "process that started the server (sdturbo serve: the container's, which SageMaker "
        "ships to CloudWatch Logs); '-': the replica's own standard output.",
    )

    @property
    def emf_every_s(self) -> float | None:
        """Seconds between EMF lines; None: none are written."""
        if self.emf_interval_s is not None:
            return self.emf_interval_s
        return 60.0 if self.endpoint_name else None


class AppArgs(MetricsSettings, ModelSettings, BatchConfig):
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

    def metrics_settings(self) -> MetricsSettings:
        return MetricsSettings.model_validate(
            self.model_dump(include=set(MetricsSettings.model_fields))
        )

    def model_settings(self) -> ModelSettings:
        return ModelSettings.model_validate(
            self.model_dump(include=set(ModelSettings.model_fields))
        )


def add_settings_options(parser, model: type[BaseModel], exclude=()) -> None:
    """One ``--field-name`` per settings field (``--flag/--no-flag`` for booleans), named and
    described as the field is: the server's and the build's flags are the settings, not a
    hand-written copy. Unset flags stay None: the settings model keeps its default."""
    for name, field in model.model_fields.items():
        if name in exclude:
            continue
        flag = f"--{name.replace('_', '-')}"
        default = field.get_default(call_default_factory=True)
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        help_text = f"{field.description or ''} (default: {shown}; env {ENV_PREFIX}{name.upper()})"
        help_text = help_text.replace("%", "%%")  # argparse formats help with %
        if field.annotation is bool:
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif get_origin(field.annotation) is Literal:
            choices = [str(choice) for choice in get_args(field.annotation)]
            parser.add_argument(flag, dest=name, default=None, choices=choices, help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=None, metavar="VALUE", help=help_text)


def settings_given(args: argparse.Namespace, model: type[BaseModel]) -> dict:
    """The settings flags that were given (raw strings; the settings model parses them)."""
    return {
        name: getattr(args, name)
        for name in model.model_fields
        if getattr(args, name, None) is not None
    }


def settings_from_environment(environ=None) -> dict[str, str]:
    """AppArgs fields given as SDTURBO_<FIELD> environment variables."""
    environ = os.environ if environ is None else environ
    fields = {name.upper(): name for name in AppArgs.model_fields}
    return {
        fields[key.removeprefix(ENV_PREFIX)]: value
        for key, value in environ.items()
        if key.startswith(ENV_PREFIX) and key.removeprefix(ENV_PREFIX) in fields
    }


def unknown_environment_settings(environ=None) -> list[str]:
    """SDTURBO_* variables that name no setting, each with the setting it most resembles: a
    typo in a SageMaker model's environment would otherwise be ignored in silence."""
    import difflib

    environ = os.environ if environ is None else environ
    names = [f"{ENV_PREFIX}{name.upper()}" for name in AppArgs.model_fields]
    lines = []
    for key in sorted(environ):
        if key.startswith(ENV_PREFIX) and key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            lines.append(f"{key}" + (f" (did you mean {close[0]}?)" if close else ""))
    return lines
