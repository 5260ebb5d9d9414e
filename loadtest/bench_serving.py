"""Serving benchmark on the tiny model: ratios measured side by side in one run.

1. Throughput at N concurrent clients with dynamic batching, over the same server with
   ``max_batch_size=1`` (changed through user_config, same replica, same process).
2. Serving overhead at one client: end-to-end HTTP p50 minus a direct in-process pipeline call
   (generate + encode) p50 with the same thread count as the replica.

    python -m loadtest.bench_serving --output bench.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from serve_app.config import AppArgs


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _deploy(args: AppArgs) -> None:
    from ray import serve

    from serve_app import build_app

    serve.run(build_app(args), name="bench", route_prefix="/")


def _payload(size: int, seed: int) -> dict:
    return {"prompt": "a cat astronaut on the moon", "width": size, "height": size, "seed": seed}


def throughput(url: str, clients: int, requests_per_client: int, size: int) -> dict:
    """Images per second with `clients` closed-loop clients, and the batch sizes seen."""
    batch_sizes: list[int] = []
    timings: list[dict] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        with requests.Session() as session:
            for i in range(requests_per_client):
                response = session.post(url, json=_payload(size, index * 1000 + i), timeout=120)
                response.raise_for_status()
                with lock:
                    timings.append(response.json()["timings"])
                    batch_sizes.append(timings[-1]["batch_size"])

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    elapsed = time.perf_counter() - start
    return {
        "images_per_s": len(batch_sizes) / elapsed,
        "mean_batch_size": statistics.mean(batch_sizes),
        **{
            f"mean_{key}": statistics.mean(t[key] for t in timings)
            for key in ("queue_ms", "inference_ms", "encode_ms", "total_ms")
        },
    }


def http_latencies(url: str, count: int, size: int) -> list[float]:
    latencies = []
    with requests.Session() as session:
        for i in range(count):
            start = time.perf_counter()
            session.post(url, json=_payload(size, i), timeout=120).raise_for_status()
            latencies.append(time.perf_counter() - start)
    return latencies


def direct_latencies(args: AppArgs, count: int, size: int) -> list[float]:
    import torch

    from serve_app import pipeline

    # Same thread count as the replica, whose CPU share Ray sets through OMP_NUM_THREADS.
    torch.set_num_threads(max(1, int(args.num_cpus)))
    device = pipeline.resolve_device(args.device)
    pipe = pipeline.load_pipeline(args.model, device, pipeline.resolve_dtype(args.dtype, device))
    pipeline.warmup(pipe, [size], [1])
    latencies = []
    for i in range(count):
        start = time.perf_counter()
        batch = pipeline.ImageBatch(["a cat astronaut on the moon"], [""], [i], size, size, 1, 0.0)
        pipeline.encode(pipeline.generate(pipe, batch)[0], "png")
        latencies.append(time.perf_counter() - start)
    return latencies


def run(options: argparse.Namespace) -> dict:
    import ray
    from ray import serve

    args = AppArgs(
        model=options.model,
        device="cpu",
        warmup_sizes=[options.size],
        max_batch_size=options.max_batch_size,
        batch_wait_timeout_s=options.batch_wait_timeout_s,
        # Fixed for both runs, so the only difference between them is the batch size.
        max_ongoing_requests=2 * options.max_batch_size,
    )
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}/predict"
    try:
        _deploy(args)
        http_latencies(url, 5, options.size)  # warm connections and caches
        batched = throughput(url, options.clients, options.requests_per_client, options.size)
        _deploy(args.model_copy(update={"max_batch_size": 1}))  # user_config only: same replica
        unbatched = throughput(url, options.clients, options.requests_per_client, options.size)
        http_p50 = statistics.median(http_latencies(url, options.latency_requests, options.size))
    finally:
        serve.shutdown()
        ray.shutdown()
    direct_p50 = statistics.median(direct_latencies(args, options.latency_requests, options.size))
    return {
        "model": options.model,
        "size": options.size,
        "clients": options.clients,
        "batched": batched,
        "unbatched": unbatched,
        "batching_speedup": batched["images_per_s"] / unbatched["images_per_s"],
        "http_p50_ms": http_p50 * 1000,
        "direct_p50_ms": direct_p50 * 1000,
        "http_overhead_ms": (http_p50 - direct_p50) * 1000,
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--size", type=int, default=128, help="square image size in pixels")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests-per-client", type=int, default=8)
    p.add_argument("--latency-requests", type=int, default=30)
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--batch-wait-timeout-s", type=float, default=0.05)
    p.add_argument("--output", help="write the JSON summary here")
    return p


def report(result: dict) -> str:
    return "\n".join(
        [
            f"model={result['model']} size={result['size']}px clients={result['clients']}",
            f"batched   {result['batched']['images_per_s']:7.1f} images/s "
            f"(mean batch {result['batched']['mean_batch_size']:.1f})",
            f"unbatched {result['unbatched']['images_per_s']:7.1f} images/s "
            f"(mean batch {result['unbatched']['mean_batch_size']:.1f})",
            f"batching speed-up: {result['batching_speedup']:.2f}x",
            f"one client: HTTP p50 {result['http_p50_ms']:.1f} ms, direct pipeline+encode p50 "
            f"{result['direct_p50_ms']:.1f} ms, "
            f"serving overhead {result['http_overhead_ms']:.1f} ms",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    options = parser().parse_args(argv)
    result = run(options)
    print(report(result))
    if options.output:
        with open(options.output, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
