"""Soak: steady load on the tiny model for a bounded time, on loopback.

Prints per-interval latency, failures and the resident memory of each Serve replica, and the
summary the README quotes: zero failures, flat latency, memory growth after warm-up < 10%.

    python -m loadtest.soak --minutes 3 --clients 4 --output soak.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time

import psutil
import requests

from loadtest.bench_serving import _free_port
from serve_app.config import AppArgs


def replica_rss(app: str = "soak") -> dict[str, int]:
    """Resident memory of each replica process of this app, by deployment and pid."""
    sizes = {}
    for process in psutil.process_iter(["pid", "cmdline", "memory_info"]):
        title = " ".join(process.info["cmdline"] or [])
        if title.startswith(f"ray::ServeReplica:{app}:"):
            # The title ends with the method running now: keep only the deployment.
            deployment = title.split()[0].split(".")[0].rsplit(":", 1)[-1]
            sizes[f"{deployment}:{process.info['pid']}"] = process.info["memory_info"].rss
    return sizes


def soak(url: str, clients: int, seconds: float, interval_s: float, size: int) -> dict:
    samples: list[tuple[float, float, bool]] = []  # (time, latency, ok)
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(index: int) -> None:
        with requests.Session() as session:
            i = 0
            while time.monotonic() < stop:
                payload = {
                    "prompt": "soak",
                    "width": size,
                    "height": size,
                    "seed": index * 10**6 + i,
                }
                start = time.perf_counter()
                try:
                    ok = session.post(url, json=payload, timeout=60).status_code == 200
                except requests.RequestException:
                    ok = False
                with lock:
                    samples.append((time.monotonic(), time.perf_counter() - start, ok))
                i += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    begin = time.monotonic()
    memory = [(0.0, replica_rss())]
    for thread in threads:
        thread.start()
    while time.monotonic() < stop:
        time.sleep(interval_s)
        memory.append((time.monotonic() - begin, replica_rss()))
        with lock:
            recent = [lat for t, lat, _ in samples if t > time.monotonic() - interval_s]
        if recent:
            print(
                f"t={memory[-1][0]:5.0f}s p50={statistics.median(recent) * 1000:6.1f}ms "
                f"n={len(recent)} rss_mb={sum(memory[-1][1].values()) / 2**20:.0f}",
                flush=True,
            )
    for thread in threads:
        thread.join()
    return summarize(samples, memory, begin, interval_s)


def summarize(samples, memory, begin, interval_s) -> dict:
    intervals: dict[int, list[float]] = {}
    for t, latency, _ok in samples:
        intervals.setdefault(int((t - begin) // interval_s), []).append(latency)
    p50s = [statistics.median(v) * 1000 for _, v in sorted(intervals.items()) if len(v) > 5]
    # Memory after the first interval (allocator and caches warmed) versus the end.
    warm, end = memory[1][1], memory[-1][1]
    growth = {name: (end[name] - warm[name]) / warm[name] for name in end if name in warm}
    return {
        "requests": len(samples),
        "failures": sum(1 for *_, ok in samples if not ok),
        "p50_ms_first_interval": p50s[0],
        "p50_ms_last_interval": p50s[-1],
        "p50_ms_per_interval": p50s,
        "rss_mb_warm": {k: v / 2**20 for k, v in warm.items()},
        "rss_mb_end": {k: v / 2**20 for k, v in end.items()},
        "rss_growth_max": max(growth.values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--interval-s", type=float, default=20.0)
    parser.add_argument("--output")
    options = parser.parse_args(argv)

    import ray
    from ray import serve

    from serve_app import build_app

    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        args = AppArgs(model="tiny", device="cpu", warmup_sizes=[options.size])
        serve.run(build_app(args), name="soak", route_prefix="/")
        result = soak(
            f"http://127.0.0.1:{port}/predict",
            options.clients,
            options.minutes * 60,
            options.interval_s,
            options.size,
        )
    finally:
        serve.shutdown()
        ray.shutdown()
    print(json.dumps({k: v for k, v in result.items() if k != "p50_ms_per_interval"}, indent=2))
    if options.output:
        with open(options.output, "w") as f:
            json.dump(result, f, indent=2)
    ok = result["failures"] == 0 and result["rss_growth_max"] < 0.10
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
