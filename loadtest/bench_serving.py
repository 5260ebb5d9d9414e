"""Serving benchmark on the tiny model: ratios measured side by side in one run.

1. **Time outside the model** for a lone request (one client, 64x64): round trip minus the
   response's own ``inference_ms + encode_ms``, p50; through Serve (HAProxy -> replica), and
   through plain uvicorn serving the same routes and engine in-process: the floor.
2. **Batching**: images/s at N closed-loop clients with dynamic batching, over the same server
   with ``max_batch_size=1`` (a second app beside the first, same settings otherwise).

    python -m loadtest.bench_serving --output bench.json
"""

from __future__ import annotations

import argparse
import statistics
import sys

from loadtest import loadgen
from serve_app.config import AppArgs


def outside_model_ms(url: str, count: int) -> float:
    """p50 of round trip minus the server's inference and encode time, one client, 64x64."""
    samples = loadgen.run(
        loadgen.closed_loop(
            url + "/predict", lambda c, i: loadgen.payload(64, seed=i), 1, None, count + 10
        )
    )[10:]  # the first ones warm connections and caches
    assert all(s.status == 200 for s in samples), {s.status for s in samples}
    outside = [
        s.latency_s * 1000 - s.timings["inference_ms"] - s.timings["encode_ms"] for s in samples
    ]
    return statistics.median(outside)


def throughput(url: str, clients: int, seconds: float, size: int) -> dict:
    samples = loadgen.run(
        loadgen.closed_loop(
            url + "/predict",
            lambda c, i: loadgen.payload(size, seed=c * 10**6 + i),
            clients,
            seconds,
        )
    )
    return loadgen.summarize(samples)


def serve_figures(options: argparse.Namespace, args: AppArgs) -> dict:
    from serve_app.server import deploy, free_port, serve_session, wait_until_ready

    with serve_session(args, port=free_port()) as url:
        unbatched = args.model_copy(update={"max_batch_size": 1})
        deploy(unbatched, name="unbatched", route_prefix="/unbatched")
        wait_until_ready(url)
        wait_until_ready(url + "/unbatched")
        outside = outside_model_ms(url, options.latency_requests)
        batched = throughput(url, options.clients, options.seconds, options.size)
        single = throughput(url + "/unbatched", options.clients, options.seconds, options.size)
    return {"outside_model_p50_ms": outside, "batched": batched, "unbatched": single}


def uvicorn_floor(options: argparse.Namespace, args: AppArgs) -> float:
    """The same routes and engine (the real tiny pipeline) under plain uvicorn, no Ray."""
    import torch

    from serve_app.engine import Engine
    from serve_app.pipeline import DiffusersBackend
    from serve_app.server import free_port, uvicorn_session, wait_until_ready

    # The replica's thread count: Ray sets OMP_NUM_THREADS from num_cpus.
    torch.set_num_threads(max(1, int(args.num_cpus)))
    engine = Engine(
        DiffusersBackend(args.model_settings()),
        args.batch_config(),
        args.request_timeout_s,
        args.model,
    )
    with uvicorn_session(engine, port=free_port()) as url:
        wait_until_ready(url)
        return outside_model_ms(url, options.latency_requests)


def run(options: argparse.Namespace) -> dict:
    args = AppArgs(
        model=options.model,
        device="cpu",
        warmup_sizes=[options.size, 64],
        max_batch_size=options.max_batch_size,
    )
    serve = serve_figures(options, args)
    floor = uvicorn_floor(options, args)
    return {
        "model": options.model,
        "size": options.size,
        "clients": options.clients,
        **serve,
        "uvicorn_outside_model_p50_ms": floor,
        "outside_model_over_uvicorn": serve["outside_model_p50_ms"] / floor,
        "batching_speedup": serve["batched"]["per_s"] / serve["unbatched"]["per_s"],
    }


def report(result: dict) -> str:
    b, u = result["batched"], result["unbatched"]
    return "\n".join(
        [
            f"model={result['model']}, one replica; lone request 64x64, one client:",
            f"  outside the model p50: Serve (HAProxy) {result['outside_model_p50_ms']:.2f} ms, "
            f"plain uvicorn {result['uvicorn_outside_model_p50_ms']:.2f} ms "
            f"({result['outside_model_over_uvicorn']:.2f}x)",
            f"{result['clients']} closed-loop clients, {result['size']}x{result['size']}:",
            f"  batched   {b['per_s']:6.1f} images/s, mean batch {b['mean_batch_size']:.1f}, "
            f"p50 {b['p50_ms']:.0f} ms",
            f"  unbatched {u['per_s']:6.1f} images/s, mean batch {u['mean_batch_size']:.1f}, "
            f"p50 {u['p50_ms']:.0f} ms",
            f"  batching speed-up: {result['batching_speedup']:.2f}x",
        ]
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--size", type=int, default=128, help="square size for the throughput runs")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=10.0, help="length of each throughput run")
    p.add_argument("--latency-requests", type=int, default=60)
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--output", help="write the JSON summary here")
    return p


def main(argv: list[str] | None = None) -> int:
    return loadgen.benchmark_main(parser, run, report, argv)


if __name__ == "__main__":
    sys.exit(main())
