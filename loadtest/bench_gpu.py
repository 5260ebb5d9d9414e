"""GPU benchmark of the fast path: the full SD-Turbo architecture, eager vs each optimisation.

For a machine with CUDA. Each variant runs in a fresh process (no compiled code or memory
shared between them) through the server's own ``optimize`` and ``warmup`` functions, and
reports per-image latency at batch 1, images per second at each batch size, and the time its
warm-up (compilation included) took. Default model: random weights of the full architecture
(``optimize.full``), whose timing is the real model's.

    python -m loadtest.bench_gpu --output gpu.json
    python -m loadtest.bench_gpu --variants eager,compile --batch-sizes 1,4

Anchors (A100, SD-Turbo 512², 1 step): torch.compile ~47 ms/image at batch 1, ~26 images/s at
batch 4; TensorRT ~36 ms. Target on an H100: <= 25 ms/image at batch 1, >= 60 images/s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# Cumulative: each variant adds one optimisation to the one before, except where noted.
VARIANTS: dict[str, dict] = {
    "eager": {"channels_last": False, "fuse_qkv": False, "compile": False},
    "channels_last": {"channels_last": True, "fuse_qkv": False, "compile": False},
    "fuse_qkv": {"channels_last": True, "fuse_qkv": True, "compile": False},
    # xformers instead of SDPA (fused projections do not apply to its processor).
    "xformers": {"channels_last": True, "attention": "xformers", "compile": False},
    "compile": {
        "channels_last": True,
        "fuse_qkv": True,
        "compile": True,
        "compile_mode": "max-autotune-no-cudagraphs",
    },
    "compile_unet_only": {
        "channels_last": True,
        "fuse_qkv": True,
        "compile": True,
        "compile_mode": "max-autotune-no-cudagraphs",
        "compile_vae_decoder": False,
    },
    # CUDA graphs remove per-kernel launch cost: matters most at batch 1.
    "compile_cudagraphs": {
        "channels_last": True,
        "fuse_qkv": True,
        "compile": True,
        "compile_mode": "max-autotune",
    },
}
DEFAULT_MODEL = "sd-turbo-random"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="sd-turbo-random (default), a local diffusers folder, or a hub id",
    )
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated, from: {', '.join(VARIANTS)}",
    )
    parser.add_argument("--batch-sizes", default="1,4,8,16")
    parser.add_argument("--size", type=int, default=512, help="square image size")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--iters", type=int, default=10, help="timed calls per batch size")
    parser.add_argument(
        "--device",
        choices=["cuda", "cpu"],
        default="cuda",
        help="cpu only to smoke-test this script with --model tiny: its numbers mean nothing",
    )
    parser.add_argument("--output", help="write results as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.batch_sizes = [int(n) for n in args.batch_sizes.split(",")]
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    return args


def load(model: str, device: str):
    import torch

    from serve_app import pipeline

    dtype = pipeline.resolve_dtype("auto", torch.device(device))
    if model == DEFAULT_MODEL:
        from optimize.full import build_full_pipeline

        return build_full_pipeline(device=device, dtype=dtype)
    return pipeline.load_pipeline(model, torch.device(device), dtype)


def child(args: argparse.Namespace) -> dict:
    """One variant in this process: optimise, warm up (compile), time every batch size."""
    import torch

    from serve_app import pipeline
    from serve_app.config import ModelSettings

    settings = ModelSettings(
        model=args.model,
        device=args.device,
        compile_batch_sizes=args.batch_sizes,
        warmup_sizes=[args.size],
        **VARIANTS[args.child],
    )
    if settings.attention == "xformers" and args.device == "cuda":
        import xformers  # noqa: F401  (the gpu extra): fail the row rather than time SDPA

    pipe = load(args.model, args.device)
    cuda = args.device == "cuda"
    pipe = pipeline.optimize(pipe, settings)
    # Eager variants warm up too (cuDNN autotuning, allocator), so only compiling shows here.
    warmup_s = pipeline.warmup(pipe, [args.size], args.batch_sizes)
    results = {}
    for n in args.batch_sizes:
        batch = pipeline.ImageBatch(
            ["a photo of a cat"] * n,
            [""] * n,
            list(range(n)),
            args.size,
            args.size,
            args.steps,
            0.0,
        )
        pipeline.generate(pipe, batch)
        times = []
        for _ in range(args.iters):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            pipeline.generate(pipe, batch)  # returns host arrays: the GPU work is finished
            times.append(time.perf_counter() - start)
        median = sorted(times)[len(times) // 2]
        results[n] = {
            "ms_per_call": median * 1000,
            "ms_per_image": median * 1000 / n,
            "images_per_s": n / median,
        }
    return {
        "variant": args.child,
        "settings": VARIANTS[args.child],
        "warmup_s": warmup_s,
        "batches": results,
        "gpu": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "max_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }


def run_variant(variant: str, args: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        "-m",
        "loadtest.bench_gpu",
        "--child",
        variant,
        "--model",
        args.model,
        "--device",
        args.device,
        "--batch-sizes",
        ",".join(map(str, args.batch_sizes)),
        "--size",
        str(args.size),
        "--steps",
        str(args.steps),
        "--iters",
        str(args.iters),
    ]
    proc = subprocess.run(
        command, capture_output=True, text=True, env=os.environ.copy(), check=False
    )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        return {"variant": variant, "error": " | ".join(tail)}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_table(rows: list[dict], batch_sizes: list[int]) -> None:
    header = f"{'variant':<22}{'ms/img b1':>10}" + "".join(
        f"{f'img/s b{n}':>11}" for n in batch_sizes
    )
    print("\n" + header + f"{'warm-up s':>11}")
    for row in rows:
        if "error" in row:
            print(f"{row['variant']:<22}failed: {row['error'][:120]}")
            continue
        batches = {int(n): r for n, r in row["batches"].items()}
        b1 = batches.get(1, {}).get("ms_per_image", float("nan"))
        line = f"{row['variant']:<22}{b1:>10.1f}"
        line += "".join(f"{batches[n]['images_per_s']:>11.1f}" for n in batch_sizes)
        print(line + f"{row['warmup_s']:>11.1f}")
    print("\ntarget (H100): <= 25 ms/image at batch 1, >= 60 images/s at the best batch size")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "bench_gpu needs a CUDA GPU: torch.cuda.is_available() is False on this machine "
            f"(torch {torch.__version__}).",
            file=sys.stderr,
        )
        return 2
    if args.child:
        print(json.dumps(child(args)))
        return 0
    rows = []
    for variant in args.variants:
        print(f"{variant}...", flush=True)
        rows.append(run_variant(variant, args))
    print_table(rows, args.batch_sizes)
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
