"""Serving benchmark on the tiny model: ratios measured side by side in one run.

1. **Time outside the model** for a lone request (one client, 64x64): round trip minus the
   response's own ``inference_ms + encode_ms``, p50; through Serve (HAProxy -> replica), and
   through plain uvicorn serving the same routes and engine in-process: the floor.
2. **The cost of metrics** on a lone request: round-trip p50 with metrics and access lines over
   the same replica with both switched off (its ``record_metrics``), in rounds that alternate
   the two so drift cancels; and the recorder calls a lone request makes, timed alone (us).
3. **Batching**: images/s at N closed-loop clients with dynamic batching, over the same server
   with ``max_batch_size=1`` (a second app beside the first, same settings otherwise), with the
   server's view of the batched run from its Prometheus metrics (``server_view``): pipeline
   calls, batch fill, queue wait and stage times, beside the client's latency.

    python -m loadtest.bench_serving --output bench.json
"""

from __future__ import annotations

import argparse
import statistics
import sys

from loadtest import loadgen, server_view
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


def lone_latencies_ms(url: str, count: int, seed: int) -> list[float]:
    samples = loadgen.run(
        loadgen.closed_loop(
            url + "/predict", lambda c, i: loadgen.payload(64, seed=seed + i), 1, None, count
        )
    )
    assert all(s.status == 200 for s in samples), {s.status for s in samples}
    return [s.latency_s * 1000 for s in samples]


def metrics_cost(url: str, rounds: int, per_round: int) -> dict:
    """Lone-request round trip, p50, with and without metrics in the same replica,
    alternating in rounds."""
    from ray import serve

    model = serve.get_deployment_handle("SDTurboModel", app_name="sdturbo")
    lone_latencies_ms(url, 10, 0)  # warm: connections, caches
    measured: dict[str, list[float]] = {"with": [], "without": []}
    for r in range(rounds):
        order = ["with", "without"] if r % 2 == 0 else ["without", "with"]
        for name in order:
            model.record_metrics.remote(name == "with").result()
            measured[name] += lone_latencies_ms(url, per_round, 1000 * r)
    model.record_metrics.remote(True).result()
    with_ms = statistics.median(measured["with"])
    without_ms = statistics.median(measured["without"])
    return {
        "lone_p50_ms_with_metrics": with_ms,
        "lone_p50_ms_without_metrics": without_ms,
        "metrics_cost_ratio": with_ms / without_ms,
        "samples_each": len(measured["with"]),
    }


def recorder_cost_us(iterations: int = 5000) -> float:
    """Microseconds of recorder calls a lone request makes (Prometheus through Ray, and EMF):
    its request, queue wait, one pipeline call of 1 image with five stages, its encoding.
    Run in this process (Ray is initialised), without Serve's per-replica tags."""
    import time

    from serve_app.engine.metrics import Fanout
    from serve_app.metrics.emf import EmfRecorder
    from serve_app.metrics.prometheus import PrometheusRecorder

    emf = EmfRecorder("SDTurbo", {"EndpointName": "bench"}, lambda line: None, 3600)
    recorder = Fanout(PrometheusRecorder(), emf)
    stages = {"text_encoder": 1.0, "unet": 10.0, "vae_decode": 20.0, "copy": 0.5}
    start = time.perf_counter()
    for i in range(iterations):
        recorder.queue_wait(0.5)
        recorder.pipeline_call(1, 8, stages)
        recorder.encoded(2.0)
        recorder.request("/predict", 200, 40.0)
        if i % 90 == 0:
            emf.flush()  # as the writer thread would, before a metric holds 100 values
    return (time.perf_counter() - start) / iterations * 1e6


def serve_figures(options: argparse.Namespace, args: AppArgs) -> dict:
    from serve_app.ports import reserved_port
    from serve_app.server import deploy, metrics_url, serve_session, wait_until_ready

    with reserved_port() as port, serve_session(args, port=port) as url:
        unbatched = args.model_copy(update={"max_batch_size": 1})
        deploy(unbatched, name="unbatched", route_prefix="/unbatched")
        wait_until_ready(url)
        wait_until_ready(url + "/unbatched")
        outside = outside_model_ms(url, options.latency_requests)
        cost = metrics_cost(url, options.cost_rounds, options.cost_requests)
        cost["recorder_us_per_request"] = recorder_cost_us()
        scrape_url = metrics_url()
        before = server_view.scrape(scrape_url, "sdturbo")
        batched = throughput(url, options.clients, options.seconds, options.size)
        # Ray's metrics agent reports every few seconds (10 s by default): wait for the last.
        view = settled_view(scrape_url, before, batched["requests"], args.max_batch_size)
        single = throughput(url + "/unbatched", options.clients, options.seconds, options.size)
    return {
        "outside_model_p50_ms": outside,
        "metrics_cost": cost,
        "batched": batched,
        "batched_server_view": view,
        "unbatched": single,
    }


def settled_view(url: str, before: dict, answered: int, max_batch_size: int) -> dict:
    """The server's view once its metrics count every request the client had answered."""
    import time

    deadline = time.monotonic() + 30
    while True:
        view = server_view.summarize(before, server_view.scrape(url, "sdturbo"), max_batch_size)
        if view["requests"] >= answered or time.monotonic() > deadline:
            return view
        time.sleep(1)


def uvicorn_floor(options: argparse.Namespace, args: AppArgs) -> float:
    """The same routes and engine (the real tiny pipeline) under plain uvicorn, no Ray."""
    import torch

    from serve_app.engine import Engine
    from serve_app.pipeline.backend import DiffusersBackend
    from serve_app.server import uvicorn_session, wait_until_ready

    # The replica's thread count: Ray sets OMP_NUM_THREADS from num_cpus.
    torch.set_num_threads(max(1, int(args.num_cpus)))
    engine = Engine(
        DiffusersBackend(args.model_settings()),
        args.batch_config(),
        args.request_timeout_s,
        args.model,
    )
    with uvicorn_session(engine) as url:
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
    b, u, cost = result["batched"], result["unbatched"], result["metrics_cost"]
    return "\n".join(
        [
            f"model={result['model']}, one replica; lone request 64x64, one client:",
            f"  outside the model p50: Serve (HAProxy) {result['outside_model_p50_ms']:.2f} ms, "
            f"plain uvicorn {result['uvicorn_outside_model_p50_ms']:.2f} ms "
            f"({result['outside_model_over_uvicorn']:.2f}x)",
            f"  metrics: lone request p50 {cost['lone_p50_ms_with_metrics']:.2f} ms with, "
            f"{cost['lone_p50_ms_without_metrics']:.2f} ms without "
            f"({cost['metrics_cost_ratio']:.3f}x, {cost['samples_each']} requests each); "
            f"recorder calls {cost['recorder_us_per_request']:.0f} us a request",
            f"{result['clients']} closed-loop clients, {result['size']}x{result['size']}:",
            f"  batched   {b['per_s']:6.1f} images/s, mean batch {b['mean_batch_size']:.1f}, "
            f"p50 {b['p50_ms']:.0f} ms",
            f"  unbatched {u['per_s']:6.1f} images/s, mean batch {u['mean_batch_size']:.1f}, "
            f"p50 {u['p50_ms']:.0f} ms",
            f"  batched, the {server_view.describe(result['batched_server_view'])}",
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
    p.add_argument("--cost-rounds", type=int, default=10, help="metrics cost: alternations")
    p.add_argument("--cost-requests", type=int, default=20, help="metrics cost: per round")
    p.add_argument("--output", help="write the JSON summary here")
    return p


def main(argv: list[str] | None = None) -> int:
    return loadgen.benchmark_main(parser, run, report, argv)


if __name__ == "__main__":
    sys.exit(main())
