"""The server's view of a load test, from its Prometheus metrics (Ray's metrics export port),
not from response bodies: scrape before and after, subtract, summarise.

    before = scrape(url); ...load...; view = summarize(before, scrape(url), max_batch_size=8)

Quantiles are estimated from the histogram buckets as Prometheus' ``histogram_quantile`` does
(linear within a bucket). Means come from ``_sum / _count``; Ray's metrics agent rebuilds
``_sum`` from bucket midpoints, so a mean is approximate except the batch size's (its buckets
are one image wide up to 16, ``serve_app/metrics/prometheus.py``).
"""

from __future__ import annotations

import math
from collections import defaultdict

import requests
from prometheus_client.parser import text_string_to_metric_families

PREFIX = "ray_sdturbo_"
LABELS = ("route", "status", "reason", "stage", "le")  # ours; Ray's and Serve's are summed over


def scrape(url: str, application: str | None = None, timeout_s: float = 10) -> dict:
    """The sdturbo samples at ``url`` (``.../metrics``), summed over replicas: (name, labels)
    -> value, labels a sorted tuple of our label pairs. ``application``: only that Serve app."""
    text = requests.get(url, timeout=timeout_s).text
    return parse(text, application)


def parse(text: str, application: str | None = None) -> dict:
    totals: dict = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith(PREFIX):
                continue
            if application is not None and sample.labels.get("application") != application:
                continue
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k in LABELS))
            totals[(sample.name.removeprefix(PREFIX), labels)] += sample.value
    return dict(totals)


def delta(before: dict, after: dict) -> dict:
    """Counters and histograms over the interval (gauges: their value after)."""
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


def total(samples: dict, name: str, **labels) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def quantile(samples: dict, name: str, q: float, **labels) -> float | None:
    """``histogram_quantile(q, name)`` over the interval; None without observations."""
    buckets: dict[float, float] = defaultdict(float)
    wanted = set(labels.items())
    for (n, ls), count in samples.items():
        if n == f"{name}_bucket" and wanted <= set(ls):
            buckets[float(dict(ls)["le"])] += count
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower, below = 0.0, 0.0
    for bound, cumulative in ordered:
        if cumulative >= rank:
            if math.isinf(bound):
                return lower  # beyond the last bound: its value is at least that
            if cumulative == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (cumulative - below)
        lower, below = bound, cumulative
    return lower


def mean(samples: dict, name: str, **labels) -> float | None:
    count = total(samples, f"{name}_count", **labels)
    return total(samples, f"{name}_sum", **labels) / count if count else None


STAGES = ("text_encoder", "unet", "vae_encode", "vae_decode", "copy", "encode")


def summarize(before: dict, after: dict, max_batch_size: int | None = None) -> dict:
    """What the server saw between two scrapes."""
    d = delta(before, after)
    batches = total(d, "batch_size_count")
    mean_batch = mean(d, "batch_size")
    view = {
        "requests": total(d, "requests_total", route="/predict")
        + total(d, "requests_total", route="/invocations"),
        "shed": {
            reason: total(d, "requests_shed_total", reason=reason)
            for reason in ("overloaded", "shutting_down", "model_unavailable")
        },
        "pipeline_calls": batches,
        "mean_batch_size": mean_batch,
        "batch_fill": (
            mean_batch / max_batch_size if mean_batch is not None and max_batch_size else None
        ),
        "queue_wait_ms": {
            "p50": quantile(d, "queue_wait_ms", 0.5),
            "p90": quantile(d, "queue_wait_ms", 0.9),
            "p99": quantile(d, "queue_wait_ms", 0.99),
        },
        "stage_ms_p50": {},
    }
    for stage in STAGES:
        p50 = quantile(d, "stage_ms", 0.5, stage=stage)
        if p50 is not None:
            view["stage_ms_p50"][stage] = p50
    return view


def describe(view: dict) -> str:
    """One line of the server's view, for a report beside the client's latency."""

    def ms(value) -> str:
        return "-" if value is None else f"{value:.1f}"

    fill = view["batch_fill"]
    parts = [
        f"server: {view['requests']:.0f} requests",
        f"shed {sum(view['shed'].values()):.0f}",
        f"{view['pipeline_calls']:.0f} pipeline calls",
        f"mean batch {ms(view['mean_batch_size'])}"
        + ("" if fill is None else f" (fill {fill:.0%})"),
        "queue wait p50/p90/p99 "
        + "/".join(ms(view["queue_wait_ms"][q]) for q in ("p50", "p90", "p99"))
        + " ms",
        "stages p50 "
        + ", ".join(f"{stage} {ms(v)}" for stage, v in view["stage_ms_p50"].items())
        + " ms",
    ]
    return "; ".join(parts)
