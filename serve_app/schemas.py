"""The HTTP API: request, response and error models (the OpenAPI schema at /docs).

Validation is strict: what the published schema does not allow is refused, nothing is coerced
(a boolean is not an integer, a string is not a number). Integers accept integral JSON numbers
such as ``2.0``, which JSON Schema's "integer" also accepts. Patterns use Python's ``re``, the
engine schemathesis and most Python clients check them with.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

OutputFormat = Literal["png", "jpeg", "webp"]
MEDIA_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
MAX_PROMPT_CHARS = 2000
# Image-to-image: an input image may hold at most this many pixels (checked from its header,
# before it is decoded: no decompression bombs); it is resized to width x height.
MAX_INPUT_PIXELS = 2048 * 2048
INPUT_FORMATS = ("PNG", "JPEG", "WEBP")
DEFAULT_STRENGTH = 0.5
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
    """One text-to-image request, or image-to-image with ``image``."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        regex_engine="python-re",
        json_schema_extra={
            "examples": [{"prompt": "a cat astronaut on the moon", "seed": 42}],
            # The rule `_image_to_image` enforces, published: a strength needs an input image.
            "dependentSchemas": {
                "strength": {
                    "anyOf": [
                        {"properties": {"strength": {"type": "null"}}},
                        {"properties": {"image": {"type": "string"}}, "required": ["image"]},
                    ]
                }
            },
        },
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
    image: str | None = Field(
        None,
        min_length=1,
        max_length=8 * 2**20,
        description="Image-to-image: the input image, base64 PNG, JPEG or WebP, at most "
        f"{MAX_INPUT_PIXELS} pixels ({int(MAX_INPUT_PIXELS**0.5)}x"
        f"{int(MAX_INPUT_PIXELS**0.5)}); resized to width x height (set them to the image's "
        "aspect ratio).",
    )
    strength: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="Image-to-image: how much of the input to redraw (1: all of it); "
        f"default {DEFAULT_STRENGTH} (1.0 at 1 step, where {DEFAULT_STRENGTH} would run none). "
        "int(num_inference_steps * strength) steps run and must be at least 1 (SD-Turbo's "
        "model card: 2 steps at 0.5).",
    )

    @model_validator(mode="after")
    def _image_to_image(self) -> GenerateRequest:
        if self.image is None:
            if self.strength is not None:
                raise ValueError("strength applies only with an input image")
            return self
        strength = self.image_strength
        if int(self.num_inference_steps * strength) < 1:
            raise ValueError(
                f"num_inference_steps * strength must be at least 1 (image-to-image runs "
                f"int(steps * strength) steps): {self.num_inference_steps} x {strength:g} "
                "runs none"
            )
        return self

    @property
    def image_strength(self) -> float | None:
        """The strength an image-to-image request runs with; None for text-to-image."""
        if self.image is None:
            return None
        if self.strength is not None:
            return self.strength
        return max(DEFAULT_STRENGTH, 1.0 / self.num_inference_steps)


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


class CompileInfo(BaseModel):
    state: Literal["off", "pending", "compiled", "fallback"] = Field(
        description="fallback: compile was asked for, but this replica serves uncompiled "
        "(the compile cache did not fit, or torch.compile failed here): see detail."
    )
    detail: str | None = None


class PromptCacheInfo(BaseModel):
    hits: int
    misses: int
    entries: int
    capacity: int


class PingResponse(BaseModel):
    status: Literal["healthy", "loading", "draining", "failed"] = Field(
        description="healthy: loaded and warm; loading: weights, compile or warm-up under way."
    )
    model: str
    replicas: int | None = Field(
        None,
        description="Running model replicas as Serve's controller last reported them (read "
        "every few seconds in the background; null until first read).",
    )
    reason: str | None = Field(None, description="Why the model failed to load.")
    in_flight: int = Field(
        0, ge=0, description="Requests this replica has accepted and not yet answered."
    )
    compile: CompileInfo | None = None
    prompt_cache: PromptCacheInfo | None = None
