"""Start-up, phase by phase: weights, compile cache, speed-ups, the generate step, warm-up.

The server and ``optimize build`` both start this way, so an artifact compiles exactly what a
server runs. One log line per phase. Start-up cannot hang on compilation: a compile smoke test
runs first, and with ``compile_cache_miss=eager`` (the container's setting) a replica whose
cache is missing or does not fit serves uncompiled at once, loudly, instead of compiling every
shape inside SageMaker's health-check window.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from serve_app.config import ModelSettings
from serve_app.pipeline import compile_cache, optimizing, toolchain
from serve_app.pipeline.generate import Generator
from serve_app.pipeline.loading import (
    load_pipeline,
    resolve_device,
    resolve_dtype,
    resolve_model_path,
)

logger = logging.getLogger("sdturbo")


@dataclass(frozen=True)
class CompileStatus:
    """What /ping reports of compilation: ``off``, ``compiled``, or ``fallback`` (compile was
    asked for, but the replica serves uncompiled; ``detail`` says why)."""

    state: str
    detail: str | None = None


@dataclass
class Prepared:
    """A ready generate step, and how start-up went."""

    generator: Generator
    compile_status: CompileStatus
    timings: dict[str, float] = field(default_factory=dict)
    cache: dict[str, int] = field(default_factory=dict)  # FX-graph cache hits/misses in warm-up
    cache_loaded: bool = False  # an artifact's compile cache was loaded

    @property
    def cache_mismatches(self) -> int:
        """Graphs a loaded compile cache did not hold, so compiled at start-up: the cache was
        built for other settings, or another GPU, driver or software version (0 without a
        loaded cache: compiling then is expected)."""
        return self.cache.get("misses", 0) if self.cache_loaded else 0

    @property
    def pipe(self):
        return self.generator.pipe


class CompileFallback(Exception):
    """Compilation must not go on here; the replica serves uncompiled."""


def prepare(settings: ModelSettings, log: logging.Logger = logger) -> Prepared:
    timings: dict[str, float] = {}
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    start = time.perf_counter()
    pipe = load_pipeline(settings.model, device, dtype, settings.vae)
    timings["weights_s"] = time.perf_counter() - start
    log.info(
        "start-up: weights of %s on %s/%s in %.1fs",
        settings.model,
        device,
        dtype,
        timings["weights_s"],
    )
    if device.type == "cuda":
        env = toolchain.environment(device)
        log.info(
            "start-up: %s, driver %s, CUDA %s, torch %s",
            env["device_name"],
            env["driver"],
            env["cuda"],
            env["torch"],
        )

    start = time.perf_counter()
    status, loaded = _compile_plan(settings, device, log)
    timings["cache_s"] = time.perf_counter() - start

    start = time.perf_counter()
    pipe = optimizing.optimize(pipe, settings)
    timings["optimize_s"] = time.perf_counter() - start

    start = time.perf_counter()
    before = optimizing.fxgraph_cache_counts()
    try:
        generator = _warmed_generator(pipe, settings, status, loaded)
    except CompileFallback as exc:
        status = CompileStatus("fallback", str(exc))
        log.warning("start-up: COMPILE FALLBACK, serving uncompiled: %s", exc)
        generator = _warmed_generator(pipe, settings, status, loaded)
    timings["warmup_s"] = time.perf_counter() - start
    after = optimizing.fxgraph_cache_counts()
    cache = {key: after[key] - before[key] for key in after}
    log.info(
        "start-up: optimise %.1fs, %s %.1fs (sizes %s, batch buckets %s, CUDA graphs %s)",
        timings["optimize_s"],
        "compile+warm-up" if status.state == "compiled" else "warm-up",
        timings["warmup_s"],
        settings.warmup_sizes,
        list(generator.shapes.batch_sizes),
        "on" if settings.cuda_graphs and device.type == "cuda" else "off",
    )
    if status.state == "compiled":
        log.info("start-up: FX-graph cache %d hits, %d misses", cache["hits"], cache["misses"])
    return Prepared(generator, status, timings, cache, loaded)


def _compile_plan(settings: ModelSettings, device: torch.device, log) -> tuple[CompileStatus, bool]:
    """Whether to compile, and whether an artifact's cache was loaded."""
    folder = resolve_model_path(settings.model)
    if not settings.compile:
        if compile_cache.read_manifest_quietly(folder) is not None:
            log.info("start-up: compile is off, so the artifact's compile cache is not used")
        return CompileStatus("off"), False
    compile_cache.use_private_inductor_cache()
    optimizing.configure_inductor(settings)
    problem = optimizing.smoke_test(device)
    if problem is not None:
        detail = f"torch.compile does not work on this machine ({problem})"
        log.warning("start-up: COMPILE FALLBACK, serving uncompiled: %s", detail)
        return CompileStatus("fallback", detail), False
    inductor = optimizing.inductor_settings(settings)
    loaded, reason = compile_cache.load(folder, device, settings.model_dump(), inductor)
    log.info("start-up: %s", reason)
    if not loaded and settings.compile_cache_miss == "eager":
        log.warning("start-up: COMPILE FALLBACK, serving uncompiled: %s", reason)
        return CompileStatus("fallback", reason), False
    return CompileStatus("compiled"), loaded


def _warmed_generator(pipe, settings: ModelSettings, status: CompileStatus, loaded: bool):
    """The generate step with its fast path warmed for every configured shape.

    With a loaded cache and ``compile_cache_miss=eager``, the first shape is a probe: if its
    graphs miss the cache, the cache does not fit this machine after all, and compiling the
    rest would take minutes: raise ``CompileFallback`` instead."""
    compiled = status.state == "compiled"
    generator = Generator(
        pipe,
        prompt_cache_size=settings.prompt_cache_size,
        compile_options=optimizing.compile_options(settings) if compiled else None,
        graphs=settings.cuda_graphs,
    )
    sizes, buckets = sorted(set(settings.warmup_sizes)), sorted(set(settings.batch_buckets))
    if not compiled:
        # Without compile the buckets still get CUDA graphs on a GPU (no compile time).
        generator.warm_up(sizes, buckets, settings.image_to_image)
        return generator
    probe = loaded and settings.compile_cache_miss == "eager"
    before = optimizing.fxgraph_cache_counts()
    try:
        generator.warm_up(sizes[:1], buckets[:1], settings.image_to_image)
    except Exception as exc:  # a compile error: never a replica that cannot start
        raise CompileFallback(f"compiling failed ({type(exc).__name__}: {exc})") from exc
    misses = optimizing.fxgraph_cache_counts()["misses"] - before["misses"]
    if probe and misses:
        raise CompileFallback(
            f"the compile cache missed {misses} graph(s) of the first shape: it was built for "
            "another GPU, driver or software version; rebuild it (python -m optimize build)"
        )
    try:
        generator.warm_up(sizes, buckets, settings.image_to_image)
    except Exception as exc:
        raise CompileFallback(f"compiling failed ({type(exc).__name__}: {exc})") from exc
    return generator
