"""A deterministic stand-in for the diffusers backend, for tests and benchmarks about serving.

Each pipeline call costs ``base_s + per_image_s x images`` (a sleep: the thread releases the GIL
as a GPU call would), and image ``i`` is noise seeded by its seed alone, so batching never
changes pixels. ``oom_above`` makes a call of more images raise an out-of-memory error, as a
GPU would; ``fail_load`` makes start-up fail (only the first ``fail_loads`` starts, if given).
``functools.partial(FixedCostBackend, ...)`` is a ``backend_factory`` for
``serve_app.app.compose``: Ray pickles it with the app, the replica calls it.
"""

from __future__ import annotations

import io
import time

import numpy as np

from serve_app.engine.batch import Generated, ImageBatch
from serve_app.schemas import GenerateRequest


class FakeOutOfMemory(RuntimeError):
    """What the fake raises where CUDA would raise torch.OutOfMemoryError."""


class FixedCostBackend:
    token_limit = 77

    def __init__(
        self,
        settings=None,
        *,
        base_s: float = 0.02,
        per_image_s: float = 0.002,
        load_s: float = 0.0,
        oom_above: int | None = None,
        fail_load: str | None = None,
        fail_loads: int | None = None,
    ):
        self.base_s, self.per_image_s, self.load_s = base_s, per_image_s, load_s
        self.oom_above, self.fail_load = oom_above, fail_load
        # fail_load on the first fail_loads starts only (a transient failure); None: every one
        self.fail_loads, self.loads = fail_loads, 0
        self.calls: list[int] = []  # images per pipeline call, in order
        self.last_batch: ImageBatch | None = None

    def load(self) -> dict[str, float]:
        time.sleep(self.load_s)
        self.loads += 1
        if self.fail_load and (self.fail_loads is None or self.loads <= self.fail_loads):
            raise RuntimeError(self.fail_load)
        return {"load_s": self.load_s}

    def explain(self, error: BaseException) -> str:
        return str(error)

    def check(self, request: GenerateRequest, uncompiled: str) -> None:
        pass

    def generate(self, batch: ImageBatch) -> Generated:
        n = len(batch.seeds)
        if self.oom_above is not None and n > self.oom_above:
            raise FakeOutOfMemory(f"{n} images do not fit (fake)")
        started = time.perf_counter()
        time.sleep(self.base_s + self.per_image_s * n)
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.calls.append(n)
        self.last_batch = batch
        shape = (batch.height, batch.width, 3)
        images = [
            np.random.default_rng(seed).integers(0, 256, shape, np.uint8) for seed in batch.seeds
        ]
        truncated = [len(prompt.split()) > self.token_limit for prompt in batch.prompts]
        # The call's cost, reported as one stage (the metrics' per-stage times see it).
        return Generated(images, truncated, {"unet": elapsed_ms})

    def status(self) -> dict:
        return {"compile": {"state": "off"}}

    def is_out_of_memory(self, error: BaseException) -> bool:
        return isinstance(error, FakeOutOfMemory)

    def encode(self, image: np.ndarray, output_format: str) -> bytes:
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format=output_format.upper())
        return buffer.getvalue()
