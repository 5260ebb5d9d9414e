"""The HTTP API: request, response and error models (the OpenAPI schema at /docs).

Validation is strict: what the published schema does not allow is refused, nothing is coerced
(a boolean is not an integer, a string is not a number). Integers accept integral JSON numbers
such as ``2.0``, which JSON Schema's "integer" also accepts. Patterns use Python's ``re``, the
engine schemathesis and most Python clients check them with.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

OutputFormat = Literal["png", "jpeg", "webp"]
MEDIA_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
MAX_PROMPT_CHARS = 2000
# At least one character that is not whitespace.
NOT_BLANK = r"\S"


def _integral_float_to_int(value):
    # JSON Schema: 2.0 is an integer; 2.5 and true are not (strict mode refuses those).
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


INTEGRAL = BeforeValidator(_integral_float_to_int)
Integer = Annotated[int, INTEGRAL]


class GenerateRequest(BaseModel):
    """One text-to-image request."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        regex_engine="python-re",
        json_schema_extra={"examples": [{"prompt": "a cat astronaut on the moon", "seed": 42}]},
    )

    prompt: str = Field(
        ...,
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        pattern=NOT_BLANK,
        description="What to draw; CLIP reads its first 77 tokens.",
    )
    negative_prompt: str | None = Field(
        None,
        max_length=MAX_PROMPT_CHARS,
        description="What to avoid; used only with guidance_scale > 1.",
    )
    num_inference_steps: Integer = Field(
        1, ge=1, le=4, description="Denoising steps; SD-Turbo is distilled for 1 to 4."
    )
    guidance_scale: float = Field(
        0.0,
        ge=0.0,
        le=10.0,
        allow_inf_nan=False,
        description="Classifier-free guidance; SD-Turbo was trained without it (0, model card).",
    )
    # Bounds before the validator in the chain, or pydantic publishes them as "ge"/"le".
    seed: Annotated[int, Field(ge=0, le=2**32 - 1), INTEGRAL] | None = Field(
        None,
        description="Same seed, same image, alone or batched; image i uses seed + i; random if "
        "unset.",
    )
    width: Integer = Field(512, ge=64, le=1024, multiple_of=8, description="Width in pixels.")
    height: Integer = Field(512, ge=64, le=1024, multiple_of=8, description="Height in pixels.")
    num_images: Integer = Field(1, ge=1, le=4, description="Images for this prompt.")
    output_format: OutputFormat = Field("png", description="Encoding of the returned images.")

    def shape_key(self) -> tuple:
        """Requests with equal keys can share one pipeline call."""
        return (self.width, self.height, self.num_inference_steps, self.guidance_scale)


class Timings(BaseModel):
    """Where this request's time went, in milliseconds."""

    queue_ms: float = Field(description="Waiting for the model to take it into a batch.")
    inference_ms: float = Field(description="The pipeline call of the batch this request ran in.")
    encode_ms: float = Field(description="Encoding this request's images.")
    total_ms: float = Field(description="From the route receiving the request to the response.")
    batch_size: int = Field(description="Images in the pipeline call this request ran in.")


class GenerateResponse(BaseModel):
    """Generated images, base64-encoded, and how they were made."""

    image: str = Field(description="The first image, base64.")
    images: list[str] | None = Field(None, description="All images, when num_images > 1.")
    seed: int = Field(description="Seed of the first image.")
    seeds: list[int] = Field(description="Seed of every image.")
    model: str
    replicas: int | None = Field(
        None,
        description="Running model replicas as Serve's controller last reported them (read "
        "every few seconds in the background; null until first read).",
    )
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
    status: Literal["healthy", "loading", "draining", "failed"] = Field(
        description="healthy: loaded and warm; loading: weights, compile or warm-up under way."
    )
    model: str
