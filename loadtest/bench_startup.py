"""Start-up benchmark: time to first image, plain folder vs the artifact, in fresh processes.

Side by side in one run, each start in a new Python process with an empty Inductor cache
folder (so nothing is reused from an earlier run), both with compilation on:

1. **cold**: a plain diffusers folder (the model as downloaded): everything compiles;
2. **artifact**: the folder ``python -m optimize build`` wrote: compile cache loaded first;
3. **artifact w/o kernels**: the same without ``inductor_cache/``, i.e. with only what
   ``torch.compiler.save_cache_artifacts`` stores (on a CPU, every C++ kernel is rebuilt).

Each child starts the pipeline with ``serve_app.pipeline.prepare`` (what a server replica runs)
and generates one image; it reports each phase, and Dynamo/Inductor's own split of the compile
time, so the rest of the time is accounted for.

    python -m loadtest.bench_startup --model tiny --output startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASES = ("imports_s", "weights_s", "cache_s", "optimize_s", "warmup_s", "first_image_s")


def child(args: argparse.Namespace) -> None:
    """One start-up, in this (fresh) process; prints a JSON line of its timings."""
    imported = time.time()

    from serve_app import pipeline
    from serve_app.config import ModelSettings

    settings = ModelSettings(
        model=args.model,
        device=args.device,
        compile=True,
        compile_mode=args.compile_mode,
        compile_batch_sizes=args.batch_sizes,
        warmup_sizes=args.sizes,
    )
    torch_imported = time.time()
    pipe, timings = pipeline.prepare(settings)
    start = time.perf_counter()
    size = args.sizes[0]
    pipeline.generate(pipe, pipeline.ImageBatch(["a cat"], [""], [1], size, size, 1, 0.0))
    timings["first_image_s"] = time.perf_counter() - start
    done = time.time()
    from torch._dynamo.utils import calculate_time_spent, counters

    spent = {name: round(s, 2) for name, s in calculate_time_spent().items()}
    print(
        json.dumps(
            {
                "done_at": done,
                "imports_s": torch_imported - imported,
                **timings,
                "dynamo_phases_s": spent,
                "fxgraph_cache": {k: v for k, v in counters["inductor"].items() if "fxgraph" in k},
            }
        )
    )


def _compile_options(args: argparse.Namespace) -> list[str]:
    """What the build and each timed start share, so both compile the same shapes."""
    return [
        "--device",
        args.device,
        "--compile-mode",
        args.compile_mode,
        "--sizes",
        ",".join(map(str, args.sizes)),
        "--batch-sizes",
        ",".join(map(str, args.batch_sizes)),
    ]


def run_child(model: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="inductor-bench-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        command = [
            sys.executable,
            "-m",
            "loadtest.bench_startup",
            "--child",
            "--model",
            model,
            *_compile_options(args),
        ]
        spawned = time.time()
        proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"child failed ({model}):\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["time_to_first_image_s"] = result.pop("done_at") - spawned
    # What no phase covers: interpreter start-up and the first imports.
    result["process_s"] = result["time_to_first_image_s"] - sum(result[k] for k in PHASES)
    return result


def build_artifact(args: argparse.Namespace, output: Path) -> float:
    command = [
        sys.executable,
        "-m",
        "optimize",
        "build",
        "--model",
        args.model,
        "--output",
        str(output),
        *_compile_options(args),
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def plain_folder(model: str) -> str:
    from serve_app.pipeline import resolve_model_path

    return resolve_model_path(model)


def median(rows: list[dict], key: str) -> float:
    return statistics.median(row.get(key, 0.0) for row in rows)


def report(results: dict[str, list[dict]]) -> None:
    names = list(results)
    print(f"\n{'phase (median s)':<24}" + "".join(f"{name:>22}" for name in names))
    for key in ("time_to_first_image_s", "process_s", *PHASES):
        print(f"{key:<24}" + "".join(f"{median(results[n], key):>22.1f}" for n in names))
    cold = median(results[names[0]], "time_to_first_image_s")
    for name in names[1:]:
        ratio = median(results[name], "time_to_first_image_s") / cold
        print(f"{name} / {names[0]}: {ratio:.0%}")
    print("(target for the artifact: <= 40%)")
    for name in names:
        print(
            f"compile split, {name} (last run):", json.dumps(results[name][-1]["dynamo_phases_s"])
        )


# Keys of the JSON output (loadtest.gate reads them).
PLAIN_FOLDER, ARTIFACT = "plain folder", "artifact"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny", help="tiny, a local folder, or sd-turbo-random")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--compile-mode", default="default")
    parser.add_argument("--sizes", default="512", help="square sizes compiled, comma-separated")
    parser.add_argument("--batch-sizes", default="1", help="batch sizes compiled, comma-separated")
    parser.add_argument("--repeats", type=int, default=1, help="starts of each kind, alternating")
    parser.add_argument("--artifact", type=Path, help="reuse a built artifact folder")
    parser.add_argument("--output", type=Path, help="write all results as JSON here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.batch_sizes = [int(s) for s in args.batch_sizes.split(",")]
    if args.child:
        child(args)
        return 0

    with tempfile.TemporaryDirectory(prefix="bench-startup-") as work:
        artifact = args.artifact
        build_s = None
        if artifact is None:
            artifact = Path(work) / "artifact"
            print(
                f"building the artifact ({args.model}, sizes {args.sizes}, "
                f"batch sizes {args.batch_sizes})...",
                flush=True,
            )
            build_s = build_artifact(args, artifact)
            print(f"built in {build_s:.1f}s", flush=True)
        # The artifact without its kernel folder: what compile_cache.bin alone buys.
        cache_only = Path(work) / "cache-only"
        shutil.copytree(artifact, cache_only, ignore=shutil.ignore_patterns("inductor_cache"))
        starts = {
            PLAIN_FOLDER: plain_folder(args.model),
            ARTIFACT: str(artifact),
            "artifact w/o kernels": str(cache_only),
        }
        results: dict[str, list[dict]] = {name: [] for name in starts}
        for i in range(args.repeats):
            for name, model in starts.items():
                print(f"run {i + 1}/{args.repeats}: {name}...", flush=True)
                results[name].append(run_child(model, args))
    report(results)
    if args.output:
        args.output.write_text(json.dumps({"build_s": build_s, **results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
