"""Start-up benchmark: time to first image, plain folder vs the artifact, in fresh processes.

Side by side in one run, each start in a new Python process with an empty Inductor cache
folder (so nothing is reused from an earlier run), all with compilation on:

1. **plain folder**: the model as downloaded: everything compiles;
2. **artifact**: the folder ``python -m optimize build`` wrote: compile cache loaded first;
3. **artifact w/o kernels**: the same without ``inductor_cache/``, i.e. with only what
   ``torch.compiler.save_cache_artifacts`` stores (on a CPU, every C++ kernel is rebuilt).

Each child starts the pipeline with ``serve_app.pipeline.startup.prepare`` (what a replica runs) and
generates one image; it reports each phase, the FX-graph cache's hits and misses, and Dynamo's
own split of the compile time.

    python -m loadtest.bench_startup --model tiny --output startup.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtest.fresh import run_fresh
from serve_app.config import parse_int_list

PHASES = ("imports_s", "weights_s", "cache_s", "optimize_s", "warmup_s", "first_image_s")
# Keys of the JSON output (loadtest.gate reads them).
PLAIN_FOLDER, ARTIFACT, CACHE_ONLY = "plain folder", "artifact", "artifact w/o kernels"


def start(settings: dict) -> dict:
    """In a fresh process: start as a replica does, generate one image, report the phases."""
    began = time.time()
    from serve_app.config import ModelSettings
    from serve_app.engine.batch import ImageBatch
    from serve_app.pipeline.startup import prepare

    imported = time.time()
    prepared = prepare(ModelSettings.model_validate(settings))
    shapes = prepared.generator.shapes
    size = shapes.sizes[0] if shapes.sizes else 512
    first = time.perf_counter()
    batch = ImageBatch(["a cat"], [""], [1], size, size, 1, 0.0)
    image = prepared.generator(batch).images[0]
    from torch._dynamo.utils import calculate_time_spent

    return {
        "compile": prepared.compile_status.state,
        # The first image's pixels (small models only), to compare with an eager run.
        "pixels": image.tolist() if size <= 128 else None,
        "started_at": began,
        "done_at": time.time(),
        "imports_s": imported - began,
        **prepared.timings,
        "first_image_s": time.perf_counter() - first,
        "fxgraph_cache": prepared.cache,
        "cache_mismatches": prepared.cache_mismatches,
        "dynamo_phases_s": {name: round(s, 2) for name, s in calculate_time_spent().items()},
    }


def timed_start(model: str, settings: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="inductor-bench-") as cache:
        spawned = time.time()
        result, _ = run_fresh(
            "loadtest.bench_startup:start",
            {**settings, "model": model, "compile": True},
            env={"TORCHINDUCTOR_CACHE_DIR": cache},
        )
    result["time_to_first_image_s"] = result["done_at"] - spawned
    # What no phase covers: interpreter start-up and the first imports.
    result["process_s"] = result["time_to_first_image_s"] - sum(result[k] for k in PHASES)
    return result


def build_artifact(model: str, settings: dict, output: Path) -> float:
    """``python -m optimize build`` with exactly the settings the timed starts use."""
    sets = [
        f"{key}={','.join(map(str, value)) if isinstance(value, list) else value}"
        for key, value in settings.items()
    ]
    command = [
        sys.executable,
        "-m",
        "optimize",
        "build",
        "--model",
        model,
        "--output",
        str(output),
        *(arg for s in sets for arg in ("--set", s)),
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def median(rows: list[dict], key: str) -> float:
    return statistics.median(row.get(key, 0.0) for row in rows)


def report(results: dict[str, list[dict]]) -> str:
    names = list(results)
    lines = [f"\n{'phase (median s)':<24}" + "".join(f"{name:>22}" for name in names)]
    for key in ("time_to_first_image_s", "process_s", *PHASES):
        lines.append(f"{key:<24}" + "".join(f"{median(results[n], key):>22.1f}" for n in names))
    caches = [results[n][-1]["fxgraph_cache"] for n in names]
    lines.append(
        f"{'FX-graph cache hit/miss':<24}"
        + "".join(f"{c['hits']:>16}/{c['misses']:<5}" for c in caches)
    )
    cold = median(results[names[0]], "time_to_first_image_s")
    for name in names[1:]:
        ratio = median(results[name], "time_to_first_image_s") / cold
        lines.append(f"{name} / {names[0]}: {ratio:.0%}")
    lines.append("(target for the artifact: <= 40%)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny", help="tiny, sd-turbo-random, or a folder")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--compile-mode", default="default")
    parser.add_argument("--warmup-sizes", type=parse_int_list, default=[512], help="e.g. 256,512")
    parser.add_argument("--batch-buckets", type=parse_int_list, default=[1], help="e.g. 1,4")
    parser.add_argument("--repeats", type=int, default=1, help="starts of each kind, alternating")
    parser.add_argument("--artifact", type=Path, help="reuse a built artifact folder")
    parser.add_argument(
        "--cache-only",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"also time the '{CACHE_ONLY}' start (the gate needs only the first two)",
    )
    parser.add_argument("--output", type=Path, help="write all results as JSON here")
    args = parser.parse_args(argv)
    # One dict of settings for the build and every timed start: they compile the same graphs.
    settings = {
        "device": args.device,
        "compile": True,
        "compile_mode": args.compile_mode,
        "warmup_sizes": args.warmup_sizes,
        "batch_buckets": args.batch_buckets,
    }
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as work:
        artifact, build_s = args.artifact, None
        if artifact is None:
            artifact = Path(work) / "artifact"
            print(f"building the artifact ({args.model}, {settings})...", flush=True)
            build_s = build_artifact(args.model, settings, artifact)
            print(f"built in {build_s:.1f}s", flush=True)
        from serve_app.pipeline.loading import resolve_model_path

        starts = {PLAIN_FOLDER: resolve_model_path(args.model), ARTIFACT: str(artifact)}
        if args.cache_only:
            cache_only = Path(work) / "cache-only"
            shutil.copytree(artifact, cache_only, ignore=shutil.ignore_patterns("inductor_cache"))
            starts[CACHE_ONLY] = str(cache_only)
        results: dict[str, list[dict]] = {name: [] for name in starts}
        for i in range(args.repeats):
            for name, model in starts.items():
                print(f"run {i + 1}/{args.repeats}: {name}...", flush=True)
                results[name].append(timed_start(model, settings))
    print(report(results))
    if args.output:
        args.output.write_text(json.dumps({"build_s": build_s, **results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
