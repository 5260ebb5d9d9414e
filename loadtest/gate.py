"""CI benchmark gate: ratios measured side by side in one run, each against a bar.

Absolute numbers vary with the runner and its neighbours; ratios taken in one run on one machine
do not (much). Exits 1 when one misses its bar; the JSON keeps the evidence.

1. batching speed-up: images/s with dynamic batching over max_batch_size=1 (bench_serving);
2. HTTP path: time outside the model for a lone request, Serve over plain uvicorn serving the
   same app (bench_serving);
3. batching policy: a lone request's p50 with Ray's timer over the engine's "when free" policy,
   and throughput at 32 clients, engine over timer (bench_batching, fake pipeline);
4. start-up: cold start (plain folder, compiling) over artifact start (compile cache), in fresh
   processes (bench_startup);
5. encoding: a 512x512 natural image as PNG, Pillow's fastest level over the server's fpng
   (bench_encode).

    python -m loadtest.gate --output gate.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from loadtest import bench_batching, bench_encode, bench_serving, bench_startup


def serving(options: argparse.Namespace) -> dict:
    return bench_serving.run(
        bench_serving.parser().parse_args(
            ["--size", str(options.size), "--clients", str(options.clients)]
        )
    )


def policy(options: argparse.Namespace) -> dict:
    return bench_batching.run(bench_batching.parser().parse_args(["--seconds", "3"]))


def startup(options: argparse.Namespace) -> dict:
    """Cold and artifact time to first image, from loadtest.bench_startup's JSON output."""
    with tempfile.TemporaryDirectory(prefix="gate-startup-") as work:
        output = Path(work) / "startup.json"
        bench_startup.main(["--model", options.model, "--no-cache-only", "--output", str(output)])
        result = json.loads(output.read_text())
    key = "time_to_first_image_s"
    return {
        "cold_start_s": statistics.median(r[key] for r in result[bench_startup.PLAIN_FOLDER]),
        "artifact_start_s": statistics.median(r[key] for r in result[bench_startup.ARTIFACT]),
    }


def checks(
    serve: dict, batching: dict, start: dict, encode: dict, options: argparse.Namespace
) -> list:
    one, many = batching["clients"][1], batching["clients"][32]
    rows = [
        ("batching_speedup", serve["batching_speedup"], "min", options.min_batching_speedup),
        (
            "outside_model_over_uvicorn",
            serve["outside_model_over_uvicorn"],
            "max",
            options.max_outside_model_ratio,
        ),
        ("lone_request_p50_timer_over_free", one["p50_ratio"], "min", options.min_lone_p50_ratio),
        (
            "throughput_32_free_over_timer",
            many["throughput_ratio"],
            "min",
            options.min_saturated_ratio,
        ),
        (
            "startup_speedup",
            start["cold_start_s"] / start["artifact_start_s"],
            "min",
            options.min_startup_speedup,
        ),
        ("png_encode_speedup", encode["png_speedup_natural"], "min", options.min_png_speedup),
    ]
    return [
        {
            "name": name,
            "value": value,
            bound: bar,
            "passed": value >= bar if bound == "min" else value <= bar,
        }
        for name, value, bound, bar in rows
    ]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--size", type=int, default=128, help="square image size in pixels")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--min-batching-speedup", type=float, default=1.3)
    p.add_argument(
        "--max-outside-model-ratio",
        type=float,
        default=4.0,
        help="Serve over plain uvicorn, time outside the model (default 4)",
    )
    p.add_argument(
        "--min-lone-p50-ratio",
        type=float,
        default=2.0,
        help="a lone request's p50, timer over when-free (default 2)",
    )
    p.add_argument(
        "--min-saturated-ratio",
        type=float,
        default=0.9,
        help="throughput at 32 clients, when-free over timer (default 0.9)",
    )
    p.add_argument("--min-startup-speedup", type=float, default=1.5)
    p.add_argument(
        "--min-png-speedup",
        type=float,
        default=5.0,
        help="PNG of a natural 512x512 image, Pillow level 1 over fpng (default 5)",
    )
    p.add_argument("--output", type=Path, help="write the JSON summary here")
    return p


def report(rows: list[dict]) -> str:
    lines = []
    for row in rows:
        bar = f"min {row['min']:.2f}" if "min" in row else f"max {row['max']:.2f}"
        status = "PASS" if row["passed"] else "FAIL"
        lines.append(f"{status} {row['name']}: {row['value']:.2f} ({bar})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    options = parser().parse_args(argv)
    serve = serving(options)
    print(bench_serving.report(serve), flush=True)
    batching = policy(options)
    print(bench_batching.report(batching), flush=True)
    start = startup(options)
    encode = bench_encode.run(repeats=20)
    print(bench_encode.report(encode), flush=True)
    rows = checks(serve, batching, start, encode, options)
    passed = all(row["passed"] for row in rows)
    summary = {
        "passed": passed,
        "checks": rows,
        "serving": serve,
        "batching": batching,
        "encode": encode,
        "startup": start,
    }
    if options.output:
        options.output.write_text(json.dumps(summary, indent=2))
    print(report(rows))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
