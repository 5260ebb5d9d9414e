"""CI benchmark gate: ratios measured side by side in one run, each against a threshold.

Absolute numbers vary with the runner and its neighbours; ratios taken in one run on one machine
do not (much). Exits 1 when one falls below its bar; the JSON keeps the evidence.

1. batching speed-up: images/s with dynamic batching over max_batch_size=1, 16 clients;
2. HTTP overhead: end-to-end HTTP p50 over a direct pipeline+encode p50, one client;
3. start-up: cold start (plain folder, compiling) over artifact start (compile cache), by
   ``loadtest.bench_startup`` in fresh processes; skipped while that benchmark is absent.

    python -m loadtest.gate --output gate.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from loadtest import bench_serving


def serving(options: argparse.Namespace) -> dict:
    bench_options = bench_serving.parser().parse_args(
        ["--size", str(options.size), "--clients", str(options.clients)]
    )
    return bench_serving.run(bench_options)


def startup(options: argparse.Namespace) -> dict:
    """Cold and artifact time to first image from loadtest.bench_startup (its JSON output)."""
    if options.skip_startup:
        return {"status": "skipped"}
    if importlib.util.find_spec("loadtest.bench_startup") is None:
        return {"status": "pending", "reason": "loadtest/bench_startup.py does not exist yet"}
    with tempfile.TemporaryDirectory(prefix="gate-startup-") as work:
        output = Path(work) / "startup.json"
        command = [sys.executable, "-m", "loadtest.bench_startup", "--model", options.model]
        proc = subprocess.run(
            [*command, "--output", str(output)], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0 or not output.exists():
            return {"status": "error", "reason": proc.stderr[-2000:] or proc.stdout[-2000:]}
        result = json.loads(output.read_text())
    from loadtest.bench_startup import ARTIFACT, PLAIN_FOLDER

    cold = statistics.median(r["time_to_first_image_s"] for r in result[PLAIN_FOLDER])
    artifact = statistics.median(r["time_to_first_image_s"] for r in result[ARTIFACT])
    return {"status": "measured", "cold_start_s": cold, "artifact_start_s": artifact}


def _passes(row: dict) -> bool:
    if "min" in row:
        return row["value"] >= row["min"]
    return row["value"] <= row["max"]


def checks(serving_result: dict, startup_result: dict, options: argparse.Namespace) -> list:
    """Each ratio with its bar; a start-up ratio not measured yet is reported, not failed."""
    rows = [
        {
            "name": "batching_speedup",
            "value": serving_result["batching_speedup"],
            "min": options.min_batching_speedup,
        },
        {
            "name": "http_over_direct_p50",
            "value": serving_result["http_p50_ms"] / serving_result["direct_p50_ms"],
            "max": options.max_http_overhead_ratio,
        },
    ]
    for row in rows:
        row["passed"] = _passes(row)
    startup_row = {"name": "startup_speedup", "min": options.min_startup_speedup}
    if startup_result["status"] == "measured":
        startup_row["value"] = startup_result["cold_start_s"] / startup_result["artifact_start_s"]
        startup_row["passed"] = _passes(startup_row)
    else:  # pending or skipped passes; a benchmark that ran and broke does not
        startup_row.update(value=None, status=startup_result["status"])
        startup_row["passed"] = startup_result["status"] != "error"
    return [*rows, startup_row]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--size", type=int, default=128, help="square image size in pixels")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument(
        "--min-batching-speedup",
        type=float,
        default=1.3,
        help="batched over unbatched images/s (default 1.3; target 1.5, ~1.5-1.75 measured)",
    )
    p.add_argument(
        "--max-http-overhead-ratio",
        type=float,
        default=3.0,
        help="most HTTP p50 / direct pipeline p50 (default 3.0)",
    )
    p.add_argument(
        "--min-startup-speedup",
        type=float,
        default=1.5,
        help="cold start over artifact start (default 1.5)",
    )
    p.add_argument("--skip-startup", action="store_true", help="leave out the start-up ratio")
    p.add_argument("--output", type=Path, help="write the JSON summary here")
    return p


def report(rows: list[dict]) -> str:
    lines = []
    for row in rows:
        value = "n/a" if row["value"] is None else f"{row['value']:.2f}"
        status = "PASS" if row["passed"] else "FAIL"
        note = f" ({row['status']})" if "status" in row else ""
        bar = f"min {row['min']:.2f}" if "min" in row else f"max {row['max']:.2f}"
        lines.append(f"{status} {row['name']}: {value} ({bar}){note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    options = parser().parse_args(argv)
    serving_result = serving(options)
    print(bench_serving.report(serving_result), flush=True)
    startup_result = startup(options)
    rows = checks(serving_result, startup_result, options)
    passed = all(row["passed"] for row in rows)
    summary = {
        "passed": passed,
        "checks": rows,
        "serving": serving_result,
        "startup": startup_result,
    }
    if options.output:
        options.output.write_text(json.dumps(summary, indent=2))
    print(report(rows))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
