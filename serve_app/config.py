"""Settings: the builder's typed arguments, and what the model deployment needs of them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_MODEL = "stabilityai/sd-turbo"
# SageMaker's real-time payload limit is 6 MB; a larger body is refused before it is read.
MAX_BODY_BYTES = 6 * 1024 * 1024


class BatchConfig(BaseModel):
    """Batching knobs, passed as ``user_config`` so they change at run time without a redeploy."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(8, ge=1, le=64, description="Most images in one pipeline call.")
    # Ray Serve (2.60, batching.py) forms the next batch while the current one runs, so under
    # load a batch holds about arrival rate x this wait: keep it near one batch's run time.
    batch_wait_timeout_s: float = Field(
        0.05, ge=0.0, le=1.0, description="How long a batch waits to fill after its first request."
    )


class ModelSettings(BaseModel):
    """What a model replica needs to load, optimise and warm up its pipeline."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(
        DEFAULT_MODEL,
        description="Hub id, local diffusers folder (model_index.json at its root), or 'tiny'.",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        "auto", description="auto: float16 on CUDA, float32 on CPU."
    )
    compile: bool = Field(False, description="torch.compile the UNet and VAE decoder.")
    compile_mode: str = Field("max-autotune-no-cudagraphs", description="torch.compile mode.")
    warmup_sizes: list[int] = Field(
        default_factory=lambda: [512], description="Square sizes run once at start-up."
    )
    # The fast path (optimize/README.md). Each switch exists so its effect can be measured.
    compile_batch_sizes: list[Annotated[int, Field(ge=1, le=64)]] = Field(
        default_factory=lambda: [1, 2, 4, 8],
        min_length=1,
        description="With compile: the batch sizes compiled and warmed up at start-up; a batch "
        "is padded up to the next one (and split above the largest) so no request recompiles.",
    )
    compile_vae_decoder: bool = Field(
        True, description="With compile: also compile the VAE decoder (~77% of 1-step FLOPs)."
    )
    channels_last: bool = Field(True, description="CUDA: channels-last UNet and VAE.")
    fuse_qkv: bool = Field(
        True, description="Fuse attention Q/K/V projections into one matmul (UNet and VAE)."
    )
    attention: Literal["sdpa", "xformers"] = Field(
        "sdpa", description="CUDA attention kernels: torch SDPA, or xformers (the gpu extra)."
    )

    inject_oom_above: int = Field(
        0, ge=0, description="Fault injection for tests: out-of-memory above this many images."
    )

    @field_validator("warmup_sizes", "compile_batch_sizes", mode="before")
    @classmethod
    def _comma_separated(cls, value):
        # `serve run ... warmup_sizes=256,512` passes a string.
        if isinstance(value, str):
            return [int(part) for part in value.split(",") if part.strip()]
        return value


class AppArgs(ModelSettings, BatchConfig):
    """Arguments of ``serve run serve_app:app key=value ...`` (and of ``sdturbo serve``)."""

    min_replicas: int = Field(1, ge=0, description="0 lets the model scale to zero when idle.")
    max_replicas: int = Field(1, ge=1)
    max_ongoing_requests: int | None = Field(
        None, ge=1, description="Per model replica; default 2 x max_batch_size so batches fill."
    )
    max_queued_requests: int = Field(
        64, ge=-1, description="Requests waiting for a replica beyond this get 503 (-1: no bound)."
    )
    request_timeout_s: float = Field(
        50.0,
        gt=0,
        le=3600,
        description="A request not done by then gets 504 (SageMaker's is 60 s).",
    )
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per model replica.")
    num_gpus: float | None = Field(None, ge=0, description="GPUs per replica; default 1 on CUDA.")

    @model_validator(mode="after")
    def _replicas_ordered(self) -> AppArgs:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self

    def batch_config(self) -> BatchConfig:
        return BatchConfig.model_validate(self.model_dump(include=set(BatchConfig.model_fields)))

    def model_settings(self) -> ModelSettings:
        return ModelSettings.model_validate(
            self.model_dump(include=set(ModelSettings.model_fields))
        )
