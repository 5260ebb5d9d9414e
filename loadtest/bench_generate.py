"""The generate step against diffusers' own pipeline call, side by side in one process (CPU).

For the same batch (prompts, seeds, size, steps) it times, median of ``--repeats``:

- diffusers' ``StableDiffusionPipeline.__call__`` (``output_type="pt"``, then uint8 on the host,
  as the server did before);
- the project's ``Generator`` with the prompt cache off (every prompt through the text
  encoder) and on, warm (every prompt a hit);
- the text-encoder stage alone, miss against hit.

On a CPU the ratios show the host-side work removed (tokenizing once, no scheduler round trips,
the decode to uint8 fused) and what a cache hit saves; the GPU figures, where launch overhead
and syncs dominate, come from ``loadtest.bench_gpu`` on a lent GPU.

    python -m loadtest.bench_generate
    python -m loadtest.bench_generate --model sd-turbo-random --size 256 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from loadtest import loadgen


def timed(call, repeats: int) -> float:
    call()  # warm
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def run(model: str, size: int, batch: int, steps: int, repeats: int) -> dict:
    import torch

    from serve_app.engine.batch import ImageBatch
    from serve_app.pipeline.generate import Generator
    from serve_app.pipeline.loading import load_pipeline, resolve_model_path

    pipe = load_pipeline(resolve_model_path(model), torch.device("cpu"), torch.float32)
    prompts = [f"a photo of a cat, variation {i}" for i in range(batch)]
    seeds = list(range(batch))
    request = ImageBatch(prompts, [""] * batch, seeds, size, size, steps, 0.0)

    def diffusers_call():
        with torch.inference_mode():
            images = pipe(
                prompt=prompts,
                num_inference_steps=steps,
                guidance_scale=0.0,
                width=size,
                height=size,
                generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
                output_type="pt",
            ).images
            return (images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)

    uncached, cached = Generator(pipe, prompt_cache_size=0), Generator(pipe, prompt_cache_size=64)
    result = {
        "model": model,
        "size": size,
        "batch": batch,
        "steps": steps,
        "torch_threads": torch.get_num_threads(),
        "diffusers_ms": timed(diffusers_call, repeats),
        "generator_ms": timed(lambda: uncached(request), repeats),
        "generator_cached_ms": timed(lambda: cached(request), repeats),
        "text_encoder_miss_ms": statistics.median(
            uncached(request).stages_ms["text_encoder"] for _ in range(repeats)
        ),
        "text_encoder_hit_ms": statistics.median(
            cached(request).stages_ms["text_encoder"] for _ in range(repeats)
        ),
    }
    result["diffusers_over_generator"] = result["diffusers_ms"] / result["generator_ms"]
    result["miss_over_hit_text_encoder"] = (
        result["text_encoder_miss_ms"] / result["text_encoder_hit_ms"]
    )
    return result


def report(r: dict) -> str:
    return "\n".join(
        [
            f"{r['model']}, {r['size']}x{r['size']}, batch {r['batch']}, {r['steps']} step(s), "
            f"CPU ({r['torch_threads']} threads), median ms per call:",
            f"  diffusers __call__        {r['diffusers_ms']:9.1f}",
            f"  Generator, cache off      {r['generator_ms']:9.1f}  "
            f"(diffusers / Generator: {r['diffusers_over_generator']:.2f}x)",
            f"  Generator, cache hits     {r['generator_cached_ms']:9.1f}",
            f"  text encoder stage: miss {r['text_encoder_miss_ms']:.2f} ms, hit "
            f"{r['text_encoder_hit_ms']:.2f} ms ({r['miss_over_hit_text_encoder']:.1f}x)",
        ]
    )


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--output", help="write the results as JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    def run_options(o: argparse.Namespace) -> dict:
        return run(o.model, o.size, o.batch, o.steps, o.repeats)

    return loadgen.benchmark_main(parser, run_options, report, argv)


if __name__ == "__main__":
    sys.exit(main())
