"""The load generator of the benchmarks, the soak and the flood tests: one asyncio client.

Two shapes: ``closed_loop`` (N clients, each sends its next request when the last one is
answered) and ``burst`` (every request opened at once, /ping timed alongside). Every request
becomes a ``Sample``; ``summarize`` turns samples into the figures the reports quote. (Locust,
``loadtest/locustfile.py``, is for users' load tests against a deployment; this is for
measuring the server in-process, where Locust's gevent would clash with Ray.)
"""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import requests


@dataclass
class Sample:
    started: float  # monotonic seconds
    latency_s: float
    status: int | None  # None: no HTTP answer (connection refused, reset, client timeout)
    retry_after: str | None = None
    timings: dict | None = None  # the server's own, from a JSON 200
    error: str | None = None


@dataclass
class Pings:
    latencies_s: list[float] = field(default_factory=list)
    statuses: list[int | None] = field(default_factory=list)


def payload(size: int = 64, seed: int | None = None, **fields) -> dict:
    body = {"prompt": "a cat astronaut on the moon", "width": size, "height": size, **fields}
    if seed is not None:
        body["seed"] = seed
    return body


def _session(timeout_s: float) -> aiohttp.ClientSession:
    # No connection cap: a burst of 1,000 is 1,000 connections at once.
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    return aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)
    )


async def _post(session: aiohttp.ClientSession, url: str, body: dict) -> Sample:
    start = time.monotonic()
    try:
        async with session.post(url, json=body) as response:
            data = await response.read()
            timings = None
            if response.status == 200 and response.content_type == "application/json":
                timings = json.loads(data).get("timings")
            return Sample(
                start,
                time.monotonic() - start,
                response.status,
                response.headers.get("Retry-After"),
                timings,
            )
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        return Sample(start, time.monotonic() - start, None, error=type(exc).__name__)


def _ping_from_outside(url: str, pings: Pings, stop: threading.Event, every_s: float) -> None:
    """/ping as SageMaker's health check sends it: from outside the flooding client (its own
    thread and connection), so the flood's event loop, busy with hundreds of answers, never
    delays a ping and the latency is the server's."""
    with requests.Session() as session:
        while not stop.is_set():
            start = time.monotonic()
            try:
                status = session.get(url, timeout=10).status_code
            except requests.RequestException:
                status = None
            pings.statuses.append(status)
            pings.latencies_s.append(time.monotonic() - start)
            stop.wait(every_s)


async def closed_loop(
    url: str,
    make_body: Callable[[int, int], dict],
    clients: int,
    duration_s: float | None = None,
    requests_per_client: int | None = None,
    timeout_s: float = 120,
) -> list[Sample]:
    """``clients`` closed-loop clients until ``duration_s`` or ``requests_per_client``."""
    samples: list[Sample] = []
    stop_at = time.monotonic() + duration_s if duration_s else None

    async def client(index: int, session) -> None:
        i = 0
        while (requests_per_client is None or i < requests_per_client) and (
            stop_at is None or time.monotonic() < stop_at
        ):
            samples.append(await _post(session, url, make_body(index, i)))
            i += 1

    async with _session(timeout_s) as session:
        await asyncio.gather(*(client(i, session) for i in range(clients)))
    return samples


async def burst(
    url: str, bodies: list[dict], ping_url: str | None = None, timeout_s: float = 120
) -> tuple[list[Sample], Pings]:
    """Open every request at once; time /ping every 50 ms until the last answer."""
    pings, stop = Pings(), threading.Event()
    pinger = threading.Thread(target=_ping_from_outside, args=(ping_url, pings, stop, 0.05))
    if ping_url:
        pinger.start()
    try:
        async with _session(timeout_s) as session:
            samples = await asyncio.gather(*(_post(session, url, body) for body in bodies))
    finally:
        stop.set()
        if ping_url:
            pinger.join()
    return list(samples), pings


def run(coro):
    return asyncio.run(coro)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(samples: list[Sample], elapsed_s: float | None = None) -> dict:
    """Counts by status, latency percentiles (ms), and the server's own timings (means)."""
    ok = [s for s in samples if s.status == 200]
    latencies = [s.latency_s * 1000 for s in ok]
    if elapsed_s is None and samples:
        elapsed_s = max(s.started + s.latency_s for s in samples) - min(s.started for s in samples)
    summary = {
        "requests": len(samples),
        "statuses": dict(Counter(str(s.status) for s in samples)),
        "p50_ms": percentile(latencies, 0.5),
        "p90_ms": percentile(latencies, 0.9),
        "p99_ms": percentile(latencies, 0.99),
        "per_s": len(ok) / elapsed_s if elapsed_s else 0.0,
    }
    timings = [s.timings for s in ok if s.timings]
    for key in ("batch_size", "queue_ms", "inference_ms", "encode_ms", "total_ms"):
        if timings:
            summary[f"mean_{key}"] = statistics.mean(t[key] for t in timings)
    return summary


def benchmark_main(parser, run, report, argv: list[str] | None) -> int:
    """A benchmark's command line: parse, run, print the report, keep the JSON (``--output``)."""
    options = parser().parse_args(argv)
    result = run(options)
    print(report(result))
    if options.output:
        with open(options.output, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0
