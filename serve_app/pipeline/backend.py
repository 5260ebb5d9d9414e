"""The engine's Backend for diffusers: what a replica prepared, behind the engine's interface.

Nothing fails in the constructor: ``load`` runs start-up on the engine's pipeline thread (where
every later ``generate`` runs too), and a failure there is explained in one line (``explain``).
"""

from __future__ import annotations

import torch

from serve_app.config import ModelSettings
from serve_app.engine.batch import Generated, ImageBatch
from serve_app.engine.errors import InvalidRequest
from serve_app.pipeline import encoding, failures
from serve_app.pipeline.generate import StaticShapes
from serve_app.pipeline.loading import resolve_device, resolve_model_path
from serve_app.pipeline.startup import Prepared, prepare
from serve_app.schemas import GenerateRequest


class DiffusersBackend:
    token_limit = 77  # CLIP's window; set from the tokenizer once loaded

    def __init__(self, settings: ModelSettings):
        self.settings = settings
        self.prepared: Prepared | None = None
        self.cache_mismatches = 0  # over every start-up of this replica (a running total)

    def load(self) -> dict[str, float]:
        resolve_device(self.settings.device)
        resolve_model_path(self.settings.model)
        self.prepared = prepare(self.settings)
        self.cache_mismatches += self.prepared.cache_mismatches
        self.token_limit = self.prepared.pipe.tokenizer.model_max_length
        return self.prepared.timings

    @property
    def static_shapes(self) -> StaticShapes:
        if self.prepared is not None:
            return self.prepared.generator.shapes
        return StaticShapes()

    def check(self, request: GenerateRequest, uncompiled: str) -> None:
        """``uncompiled``: the live policy (``BatchConfig``) for shapes outside the fast path."""
        shapes = self.static_shapes
        if (
            uncompiled == "reject"
            and shapes.sizes
            and not shapes.covers(request.width, request.height, request.guidance_scale)
        ):
            raise InvalidRequest(
                f"this server runs only its compiled shapes: {shapes.describe()} "
                f"(asked for {request.width}x{request.height}, guidance_scale "
                f"{request.guidance_scale:g})"
            )

    def generate(self, batch: ImageBatch) -> Generated:
        try:
            return self.prepared.generator(batch)
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise

    def explain(self, error: BaseException) -> str:
        return failures.explain(error, self.settings.model)

    def is_out_of_memory(self, error: BaseException) -> bool:
        return isinstance(error, torch.OutOfMemoryError)

    def encode(self, image, output_format: str) -> bytes:
        return encoding.encode(image, output_format)

    def status(self) -> dict:
        """Cheap, read from any thread: compilation and the prompt cache, for /ping."""
        if self.prepared is None:
            return {"compile": {"state": "pending" if self.settings.compile else "off"}}
        status = self.prepared.compile_status
        return {
            "compile": {
                "state": status.state,
                "detail": status.detail,
                "cache_mismatches": self.cache_mismatches,
            },
            "prompt_cache": self.prepared.generator.cache.describe(),
        }
