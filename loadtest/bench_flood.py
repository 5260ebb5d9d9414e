"""Flood benchmark: 400, then 1,000 requests opened at once against one replica.

What a server must do under a flood: answer every request (200, or 503 with Retry-After), shed
fast (every 503 in under a second), keep /ping under 2 s throughout (SageMaker's health check),
drop nothing, and serve normally afterwards. One asyncio client (``loadtest.loadgen``), the tiny
model, one replica, on loopback.

    python -m loadtest.bench_flood --output flood.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from loadtest import loadgen
from serve_app.config import AppArgs, parse_int_list

# What passes: the bars.
MAX_SHED_S = 1.0
MAX_PING_S = 2.0


def flood(url: str, connections: int, size: int) -> dict:
    bodies = [loadgen.payload(size, seed=i) for i in range(connections)]
    start = time.monotonic()
    samples, pings = loadgen.run(loadgen.burst(url + "/predict", bodies, url + "/ping"))
    shed = [s for s in samples if s.status == 503]
    served = [s for s in samples if s.status == 200]
    other = [s for s in samples if s.status not in (200, 503)]
    result = {
        "connections": connections,
        "served": len(served),
        "shed": len(shed),
        "other": [f"{s.status or s.error}" for s in other],
        "shed_without_retry_after": sum(1 for s in shed if s.retry_after is None),
        "slowest_503_s": max((s.latency_s for s in shed), default=0.0),
        "slowest_200_s": max((s.latency_s for s in served), default=0.0),
        "ping_max_s": max(pings.latencies_s, default=0.0),
        "ping_p99_s": loadgen.percentile(pings.latencies_s, 0.99),
        "pings": len(pings.latencies_s),
        "elapsed_s": time.monotonic() - start,
    }
    result["passed"] = (
        not other
        and result["shed_without_retry_after"] == 0
        and result["slowest_503_s"] < MAX_SHED_S
        and result["ping_max_s"] < MAX_PING_S
    )
    return result


def served_after(url: str) -> bool:
    samples = loadgen.run(
        loadgen.closed_loop(url + "/predict", lambda c, i: loadgen.payload(64), 1, None, 3)
    )
    return all(s.status == 200 for s in samples)


def run(options: argparse.Namespace) -> dict:
    from serve_app.ports import reserved_port
    from serve_app.server import serve_session, wait_until_ready

    args = AppArgs(model=options.model, device="cpu", warmup_sizes=[options.size, 64])
    with reserved_port() as port, serve_session(args, port=port) as url:
        wait_until_ready(url)
        rounds = [flood(url, n, options.size) for n in options.connections]
        after = served_after(url)
    return {
        "size": options.size,
        "rounds": rounds,
        "served_after": after,
        "passed": after and all(r["passed"] for r in rounds),
    }


def report(result: dict) -> str:
    lines = [f"flood at {result['size']}x{result['size']}, one replica:"]
    for r in result["rounds"]:
        lines.append(
            f"  {r['connections']:>5} at once: {r['served']} served, {r['shed']} shed (503), "
            f"other {len(r['other'])}; slowest 503 {r['slowest_503_s']:.2f} s, slowest 200 "
            f"{r['slowest_200_s']:.1f} s; /ping max {r['ping_max_s'] * 1000:.0f} ms over "
            f"{r['pings']} pings -> {'PASS' if r['passed'] else 'FAIL'}"
        )
    lines.append(f"  serves normally afterwards: {result['served_after']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--connections", type=parse_int_list, default=[400, 1000])
    parser.add_argument("--output", help="write the JSON result here")
    options = parser.parse_args(argv)
    result = run(options)
    print(report(result))
    if options.output:
        with open(options.output, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
