"""Soak: steady load on the tiny model for a bounded time, on loopback.

Prints per-interval latency, failures and the resident memory of each Serve replica, and the
summary the README quotes: zero failures, flat latency, memory growth after warm-up < 10%.

    python -m loadtest.soak --minutes 3 --clients 4 --output soak.json
"""

from __future__ import annotations

import argparse
import json
import sys

import psutil

from loadtest import loadgen
from serve_app.config import AppArgs

APP = "soak"


def replica_rss() -> dict[str, int]:
    """Resident memory of each replica process of this app, by deployment and pid."""
    sizes = {}
    for process in psutil.process_iter(["pid", "cmdline", "memory_info"]):
        title = " ".join(process.info["cmdline"] or [])
        if title.startswith(f"ray::ServeReplica:{APP}:"):
            # The title ends with the method running now: keep only the deployment.
            deployment = title.split()[0].split(".")[0].rsplit(":", 1)[-1]
            sizes[f"{deployment}:{process.info['pid']}"] = process.info["memory_info"].rss
    return sizes


def soak(url: str, clients: int, seconds: float, interval_s: float, size: int) -> dict:
    intervals, memory = [], [replica_rss()]
    for index in range(max(1, round(seconds / interval_s))):
        samples = loadgen.run(
            loadgen.closed_loop(
                url + "/predict",
                lambda c, i, index=index: loadgen.payload(
                    size, seed=(index * 1000 + c) * 10**4 + i
                ),
                clients,
                interval_s,
                timeout_s=60,
            )
        )
        summary = loadgen.summarize(samples, interval_s)
        memory.append(replica_rss())
        intervals.append(summary)
        print(
            f"t={(index + 1) * interval_s:5.0f}s p50={summary['p50_ms']:6.1f}ms "
            f"n={summary['requests']} statuses={summary['statuses']} "
            f"rss_mb={sum(memory[-1].values()) / 2**20:.0f}",
            flush=True,
        )
    # Memory after the first interval (allocator and caches warmed) versus the end.
    warm, end = memory[1], memory[-1]
    growth = {name: (end[name] - warm[name]) / warm[name] for name in end if name in warm}
    return {
        "requests": sum(s["requests"] for s in intervals),
        "failures": sum(s["requests"] - s["statuses"].get("200", 0) for s in intervals),
        "p50_ms_per_interval": [s["p50_ms"] for s in intervals],
        "rss_mb_warm": {k: v / 2**20 for k, v in warm.items()},
        "rss_mb_end": {k: v / 2**20 for k, v in end.items()},
        "rss_growth_max": max(growth.values(), default=0.0),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--interval-s", type=float, default=20.0)
    parser.add_argument("--output")
    options = parser.parse_args(argv)

    from serve_app.ports import reserved_port
    from serve_app.server import serve_session, wait_until_ready

    args = AppArgs(model="tiny", device="cpu", warmup_sizes=[options.size])
    with reserved_port() as port, serve_session(args, port=port, name=APP) as url:
        wait_until_ready(url)
        result = soak(url, options.clients, options.minutes * 60, options.interval_s, options.size)
    print(json.dumps({k: v for k, v in result.items() if k != "p50_ms_per_interval"}, indent=2))
    if options.output:
        with open(options.output, "w") as f:
            json.dump(result, f, indent=2)
    ok = result["failures"] == 0 and result["rss_growth_max"] < 0.10
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
