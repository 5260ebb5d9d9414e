"""The HTTP API: request, response and error models (the OpenAPI schema at /docs)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

OutputFormat = Literal["png", "jpeg", "webp"]
MEDIA_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
MAX_PROMPT_CHARS = 2000


class InvalidRequest(ValueError):
    """A request that is valid alone but that this server's configuration cannot take."""


class GenerationFailed(RuntimeError):
    """A request the model could not finish; ``kind`` is 'out_of_memory' or 'internal_error'."""

    def __init__(self, kind: str, message: str):
        super().__init__(kind, message)  # both in args, so it survives pickling across Ray

    @property
    def kind(self) -> str:
        return self.args[0]

    @property
    def message(self) -> str:
        return self.args[1]


class GenerateRequest(BaseModel):
    """One text-to-image request."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"prompt": "a cat astronaut on the moon", "seed": 42}]},
    )

    prompt: str = Field(..., min_length=1, max_length=MAX_PROMPT_CHARS, description="What to draw.")
    negative_prompt: str | None = Field(
        None,
        max_length=MAX_PROMPT_CHARS,
        description="What to avoid; used only with guidance_scale > 1.",
    )
    num_inference_steps: int = Field(
        1, ge=1, le=4, description="Denoising steps; SD-Turbo is distilled for 1 to 4."
    )
    guidance_scale: float = Field(
        0.0,
        ge=0.0,
        le=10.0,
        description="Classifier-free guidance; SD-Turbo was trained without it (0, model card).",
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=2**32 - 1,
        description=(
            "Same seed, same image, alone or batched; image i uses seed + i; random if unset."
        ),
    )
    width: int = Field(512, ge=64, le=1024, multiple_of=8, description="Image width in pixels.")
    height: int = Field(512, ge=64, le=1024, multiple_of=8, description="Image height in pixels.")
    num_images: int = Field(1, ge=1, le=4, description="Images for this prompt.")
    output_format: OutputFormat = Field("png", description="Encoding of the returned images.")

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, prompt: str) -> str:
        if not prompt.strip():
            raise ValueError("prompt must contain non-whitespace text")
        return prompt


class Timings(BaseModel):
    """Where this request's time went, in milliseconds."""

    queue_ms: float = Field(description="Waiting in the model replica for its batch to start.")
    inference_ms: float = Field(description="The pipeline call of the batch this request ran in.")
    encode_ms: float = Field(description="Encoding this request's images.")
    total_ms: float = Field(description="From the ingress receiving the request to the response.")
    batch_size: int = Field(description="Images in the pipeline call this request ran in.")


class GenerateResponse(BaseModel):
    """Generated images, base64-encoded, and how they were made."""

    image: str = Field(description="The first image, base64.")
    images: list[str] | None = Field(None, description="All images, when num_images > 1.")
    seed: int = Field(description="Seed of the first image.")
    seeds: list[int] = Field(description="Seed of every image.")
    model: str
    width: int
    height: int
    num_inference_steps: int
    output_format: OutputFormat
    warnings: list[str] = Field(default_factory=list, description="E.g. a truncated prompt.")
    timings: Timings


class ErrorDetail(BaseModel):
    type: str = Field(description="Machine-readable kind, e.g. 'validation_error'.")
    message: str = Field(description="What went wrong, for a person.")


class ErrorResponse(BaseModel):
    """Every error, 4xx or 5xx, has this body."""

    error: ErrorDetail


class PingResponse(BaseModel):
    status: Literal["healthy", "unavailable", "draining"]
    model: str
    replicas: int = Field(description="Running model replicas.")
