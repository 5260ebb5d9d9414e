"""Batching policy benchmark: batches formed when the model is free (the engine) over Ray
Serve's ``@serve.batch`` timer, side by side in one run, in-process.

Both drive the same fake pipeline of fixed cost (``loadtest.fakes``: ``base + per_image x n``,
a GPU-like shape where a batch of 8 costs far less than 8 calls) on one pipeline thread, with
the same ``max_batch_size``. Ray's policy is its own ``@serve.batch`` (2.60), used as is, with
``batch_wait_timeout_s`` as configured; only its start-up check that reads the replica context
is skipped, as there is no replica here. Closed-loop clients at 1, 4 and 32.

    python -m loadtest.bench_batching --output batching.json
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from loadtest import loadgen
from loadtest.fakes import FixedCostBackend
from serve_app.config import BatchConfig
from serve_app.engine import Engine
from serve_app.engine.batch import ImageBatch
from serve_app.schemas import GenerateRequest


class TimerPolicy:
    """Ray Serve's ``@serve.batch`` in front of the same backend and pipeline thread."""

    def __init__(self, backend: FixedCostBackend, max_batch_size: int, wait_s: float):
        from ray import serve
        from ray.serve import batching

        # Reads serve.get_replica_context(), which exists only in a replica; only logs.
        batching._BatchQueue._warn_if_max_batch_size_exceeds_max_ongoing_requests = lambda _: None
        self.backend = backend
        self._thread = ThreadPoolExecutor(max_workers=1)

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=wait_s)
        async def run(requests: list[GenerateRequest]) -> list:
            batch = ImageBatch(
                [r.prompt for r in requests],
                [""] * len(requests),
                list(range(len(requests))),
                requests[0].width,
                requests[0].height,
                1,
                0.0,
            )
            loop = asyncio.get_running_loop()
            generated = await loop.run_in_executor(self._thread, backend.generate, batch)
            return [len(requests)] * len(generated.images)

        self.run = run

    async def generate(self, request: GenerateRequest) -> int:
        return await self.run(request)


async def drive(generate, clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    request = GenerateRequest(prompt="a cat", width=64, height=64)
    stop = time.monotonic() + seconds

    async def client() -> None:
        while time.monotonic() < stop:
            start = time.perf_counter()
            await generate(request)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - start
    return {"per_s": len(latencies) / elapsed, "p50_ms": statistics.median(latencies) * 1000}


def measure(policy: str, clients: int, options: argparse.Namespace) -> dict:
    backend = FixedCostBackend(
        base_s=options.base_ms / 1000, per_image_s=options.per_image_ms / 1000
    )

    async def main() -> dict:
        if policy == "timer":
            timer = TimerPolicy(backend, options.max_batch_size, options.wait_ms / 1000)
            generate = timer.generate
        else:
            config = BatchConfig(max_batch_size=options.max_batch_size, max_queued_requests=10_000)
            engine = Engine(backend, config, 60, "fake")
            await asyncio.wrap_future(engine.start())
            generate = engine.generate
        result = await drive(generate, clients, options.seconds)
        result["mean_batch"] = statistics.mean(backend.calls) if backend.calls else 0.0
        return result

    return asyncio.run(main())


def run(options: argparse.Namespace) -> dict:
    rows = {}
    for clients in options.clients:
        free = measure("free", clients, options)
        timer = measure("timer", clients, options)
        rows[clients] = {
            "when_free": free,
            "timer": timer,
            "throughput_ratio": free["per_s"] / timer["per_s"],
            "p50_ratio": timer["p50_ms"] / free["p50_ms"],
        }
    return {"settings": vars(options), "clients": rows}


def report(result: dict) -> str:
    s = result["settings"]
    lines = [
        f"fake pipeline {s['base_ms']:g} ms + {s['per_image_ms']:g} ms/image, max_batch_size "
        f"{s['max_batch_size']}, Ray timer window {s['wait_ms']:g} ms",
        f"{'clients':>8} {'when free: img/s':>17} {'p50 ms':>7} {'batch':>6}"
        f" {'timer: img/s':>13} {'p50 ms':>7} {'batch':>6} {'throughput x':>13} {'p50 x':>6}",
    ]
    for clients, row in result["clients"].items():
        f, t = row["when_free"], row["timer"]
        lines.append(
            f"{clients:>8} {f['per_s']:>17.1f} {f['p50_ms']:>7.1f} {f['mean_batch']:>6.1f}"
            f" {t['per_s']:>13.1f} {t['p50_ms']:>7.1f} {t['mean_batch']:>6.1f}"
            f" {row['throughput_ratio']:>13.2f} {row['p50_ratio']:>6.2f}"
        )
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    from serve_app.config import parse_int_list

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clients", type=parse_int_list, default=[1, 4, 32])
    p.add_argument("--seconds", type=float, default=3.0, help="per policy and client count")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--wait-ms", type=float, default=50.0, help="Ray's batch_wait_timeout_s")
    p.add_argument("--base-ms", type=float, default=20.0, help="fixed cost of a pipeline call")
    p.add_argument("--per-image-ms", type=float, default=2.0)
    p.add_argument("--output", help="write the JSON result here")
    return p


def main(argv: list[str] | None = None) -> int:
    return loadgen.benchmark_main(parser, run, report, argv)


if __name__ == "__main__":
    sys.exit(main())
