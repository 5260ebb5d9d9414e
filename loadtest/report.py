"""Turn a Locust ``--csv PREFIX`` run into plots and a short markdown summary.

    python -m loadtest.report results/local --output docs/loadtest-latency.png

Reads PREFIX_stats.csv and PREFIX_stats_history.csv (Locust's), and PREFIX_replicas.csv,
PREFIX_scale_from_zero.json and PREFIX_server.json (the locustfile's, when present: the last is
the server's view from its metrics, with ``--metrics-url``). Writes one PNG with latency
percentiles over time, throughput and users, and replicas; the summary goes to PREFIX_summary.md
and stdout.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path


def _number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):  # Locust writes "N/A" before the first response
        return None


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def history(prefix: str) -> dict[str, list]:
    """The aggregated time series of a run, seconds from its first row."""
    rows = [r for r in read_rows(Path(f"{prefix}_stats_history.csv")) if r["Name"] == "Aggregated"]
    if not rows:
        raise ValueError(f"{prefix}_stats_history.csv has no Aggregated rows")
    start = float(rows[0]["Timestamp"])
    series: dict[str, list] = {"t": [float(r["Timestamp"]) - start for r in rows], "start": start}
    for column, key in (
        ("50%", "p50"),
        ("95%", "p95"),
        ("99%", "p99"),
        ("Requests/s", "rps"),
        ("Failures/s", "fps"),
        ("User Count", "users"),
    ):
        series[key] = [_number(r.get(column)) for r in rows]
    return series


def replicas(prefix: str, start: float) -> tuple[list[float], list[float | None]] | None:
    path = Path(f"{prefix}_replicas.csv")
    if not path.exists():
        return None
    rows = read_rows(path)
    return [float(r["timestamp"]) - start for r in rows], [_number(r["replicas"]) for r in rows]


def plot(prefix: str, output: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    series = history(prefix)
    replica_series = replicas(prefix, series["start"])
    panels = 3 if replica_series else 2
    fig, axes = plt.subplots(panels, 1, figsize=(8, 2.3 * panels), sharex=True, dpi=80)
    latency, load = axes[0], axes[1]
    for key in ("p50", "p95", "p99"):
        latency.plot(series["t"], [v / 1000 if v else None for v in series[key]], label=key)
    latency.set_ylabel("latency (s)")
    latency.legend(loc="upper left", fontsize="small")
    latency.set_title(Path(prefix).name, fontsize="medium")
    load.plot(series["t"], series["rps"], label="requests/s")
    load.plot(series["t"], series["fps"], label="failures/s", color="tab:red")
    load.set_ylabel("per second")
    users = load.twinx()
    users.plot(series["t"], series["users"], color="grey", linestyle=":", label="users")
    users.set_ylabel("users (dotted)")
    load.legend(loc="upper left", fontsize="small")
    if replica_series:
        axes[2].step(*replica_series, where="post", color="tab:green")
        axes[2].set_ylabel("replicas")
        axes[2].set_ylim(bottom=0)
        axes[2].yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel("seconds")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output)
    plt.close(fig)
    return output


def _ms(value: str | None) -> str:
    number = _number(value)
    return "n/a" if number is None else f"{number:.0f}"


def summary(prefix: str) -> str:
    lines = [
        f"### Load test `{Path(prefix).name}`",
        "",
        "| request | count | failures | req/s | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in read_rows(Path(f"{prefix}_stats.csv")):
        name = f"{row['Type']} {row['Name']}".strip()
        lines.append(
            f"| {name} | {row['Request Count']} | {row['Failure Count']} "
            f"| {float(row['Requests/s']):.2f} | {_ms(row['50%'])} | {_ms(row['95%'])} "
            f"| {_ms(row['99%'])} | {_ms(row['Max Response Time'])} |"
        )
    scale = Path(f"{prefix}_scale_from_zero.json")
    if scale.exists():
        lines += ["", *scale_summary(json.loads(scale.read_text()))]
    server = Path(f"{prefix}_server.json")
    if server.exists():
        lines += ["", *server_summary(json.loads(server.read_text()))]
    return "\n".join(lines) + "\n"


def server_summary(view: dict) -> list[str]:
    """The server's view of the run (its Prometheus metrics) beside the client's latency."""
    server, client = view["server"], view["client"]

    def ms(value) -> str:
        return "n/a" if value is None else f"{value:.1f}"

    fill = server.get("batch_fill")
    waits = server["queue_wait_ms"]
    return [
        "#### The server's view (its metrics)",
        "",
        f"- requests: {server['requests']:.0f} answered by the server; the client made "
        f"{client['requests']} ({client['failures']} failed), p50 {ms(client['p50_ms'])} ms, "
        f"p95 {ms(client['p95_ms'])} ms",
        "- shed: " + ", ".join(f"{k} {v:.0f}" for k, v in server["shed"].items()),
        f"- pipeline calls: {server['pipeline_calls']:.0f}, mean batch "
        f"{ms(server['mean_batch_size'])}" + ("" if fill is None else f", fill {fill:.0%}"),
        f"- queue wait p50 / p90 / p99: {ms(waits['p50'])} / {ms(waits['p90'])} / "
        f"{ms(waits['p99'])} ms",
        "- stage p50: "
        + ", ".join(f"{stage} {ms(value)} ms" for stage, value in server["stage_ms_p50"].items()),
    ]


def scale_summary(result: dict) -> list[str]:
    lines = ["#### Scale from zero", ""]
    first = result.get("first_request")
    if result.get("error"):
        lines.append(f"- error: {result['error']}")
    if first:
        lines.append(f"- time to first image: **{first['time_to_first_image_s']:.1f} s**")
        for phase, seconds in (first.get("phases_s") or {}).items():
            lines.append(f"  - {phase.replace('_', ' ')}: {seconds:.1f} s")
        timings = first.get("server_timings_ms") or {}
        if timings:
            lines.append(
                "  - server timings: "
                + ", ".join(
                    f"{k.removesuffix('_ms')} {v:.0f}"
                    for k, v in timings.items()
                    if k != "batch_size"
                )
                + " ms"
            )
    burst = result.get("burst") or {}
    if burst.get("peak_replicas") is not None:
        lines.append(
            f"- burst of {burst['users']} users for {burst['seconds']:g} s: replicas peaked at "
            f"{burst['peak_replicas']} after {burst['seconds_to_peak']} s"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("prefix", help="the --csv prefix of a Locust run")
    parser.add_argument("--output", type=Path, help="PNG path (default PREFIX_report.png)")
    options = parser.parse_args(argv)
    try:
        image = plot(options.prefix, options.output or Path(f"{options.prefix}_report.png"))
        text = summary(options.prefix)
    except (OSError, ValueError, KeyError) as exc:
        print(f"report: error: {exc}", file=sys.stderr)
        return 1
    Path(f"{options.prefix}_summary.md").write_text(text)
    print(text)
    print(f"plot: {image}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
