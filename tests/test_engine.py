"""The engine's batching policy, admission, timeouts and faults, in-process with a fake backend
of fixed cost (no Ray, no model): fast, and exact about what the policy does."""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest

from loadtest.fakes import FixedCostBackend
from serve_app.config import BatchConfig
from serve_app.engine import Engine
from serve_app.engine.admission import CostModel
from serve_app.engine.errors import (
    InvalidRequest,
    ModelUnavailable,
    OutOfMemory,
    Overloaded,
    ShuttingDown,
    TimedOut,
)
from serve_app.schemas import GenerateRequest


def request(**fields) -> GenerateRequest:
    return GenerateRequest(**{"prompt": "a cat", "width": 64, "height": 64, **fields})


def engine(backend=None, timeout_s: float = 30, **config) -> Engine:
    return Engine(backend or FixedCostBackend(), BatchConfig(**config), timeout_s, "fake")


def run(coro):
    return asyncio.run(coro)


async def ready(e: Engine) -> Engine:
    await asyncio.wrap_future(e.start())
    return e


def test_a_lone_request_on_an_idle_model_waits_for_no_window():
    """Against the same requests with a 50 ms window, in the same run: the window shows in
    their queue time, and without it a lone request waits a small fraction of that."""
    window_s = 0.05

    async def queue_ms(**config) -> list[float]:
        e = await ready(engine(max_batch_size=8, **config))
        waited = []
        for i in range(20):
            result = await e.generate(request(seed=i))
            waited.append(result.timings.queue_ms)
        e.close()
        return waited

    without = run(queue_ms(batch_wait_timeout_s=0.0))
    with_window = run(queue_ms(batch_wait_timeout_s=window_s))
    assert statistics.median(with_window) >= window_s * 1000 * 0.9, with_window
    assert statistics.median(without) < statistics.median(with_window) / 10, without


def test_under_saturation_batches_take_what_queued_up_to_max_batch_size():
    backend = FixedCostBackend(base_s=0.02, per_image_s=0.001)

    async def client(e: Engine, index: int, stop: float) -> None:
        i = 0
        while time.monotonic() < stop:
            await e.generate(request(seed=index * 1000 + i))
            i += 1

    async def main():
        e = await ready(engine(backend, max_batch_size=8))
        stop = time.monotonic() + 1.5
        await asyncio.gather(*(client(e, i, stop) for i in range(32)))

    run(main())
    calls = backend.calls[2:]  # the first calls start before every client has sent
    assert statistics.mean(calls) >= 0.9 * 8, calls
    assert max(backend.calls) <= 8


def test_a_batch_holds_one_shape_and_the_head_request_goes_first():
    backend = FixedCostBackend(base_s=0.05)

    async def main():
        e = await ready(engine(backend, max_batch_size=8))
        first = asyncio.create_task(e.generate(request(seed=0)))
        await asyncio.sleep(0.01)  # the model is busy with it: the rest queue
        sizes = [(96, 64), (64, 64), (96, 64), (64, 64), (96, 64)]
        rest = [e.generate(request(width=w, height=h, seed=i)) for i, (w, h) in enumerate(sizes)]
        results = await asyncio.gather(first, *rest)
        return results

    results = run(main())
    # 1 alone, then the head's shape (96x64: 3 requests), then the other (64x64: 2).
    assert backend.calls == [1, 3, 2]
    assert [r.timings.batch_size for r in results] == [1, 3, 2, 3, 2, 3]


def test_images_not_requests_fill_a_batch():
    backend = FixedCostBackend(base_s=0.05)

    async def main():
        e = await ready(engine(backend, max_batch_size=4))
        busy = asyncio.create_task(e.generate(request()))
        await asyncio.sleep(0.01)
        waiting = [e.generate(request(num_images=3)), e.generate(request(num_images=2))]
        return await asyncio.gather(busy, *waiting)

    results = run(main())
    assert backend.calls == [1, 3, 2]  # 3 + 2 images exceed 4: two calls
    assert [len(r.images) for r in results] == [1, 3, 2]
    assert results[1].seeds == [results[1].seeds[0] + i for i in range(3)]


def test_batch_wait_timeout_trades_a_lone_requests_latency_for_batch_size():
    async def main():
        e = await ready(engine(max_batch_size=8, batch_wait_timeout_s=0.1))
        return [await e.generate(request()) for _ in range(3)]

    results = run(main())
    assert all(r.timings.queue_ms >= 90 for r in results)


def test_reconfigure_changes_the_batch_size_at_run_time():
    backend = FixedCostBackend(base_s=0.05)

    async def main():
        e = await ready(engine(backend, max_batch_size=8))
        e.reconfigure(BatchConfig(max_batch_size=2))
        busy = asyncio.create_task(e.generate(request()))
        await asyncio.sleep(0.01)
        await asyncio.gather(busy, *(e.generate(request()) for _ in range(4)))
        with pytest.raises(InvalidRequest, match="max_batch_size"):
            await e.generate(request(num_images=3))

    run(main())
    assert backend.calls == [1, 2, 2]


def test_a_full_queue_is_shed_at_once():
    async def main():
        e = await ready(engine(FixedCostBackend(base_s=0.3), max_queued_requests=2))
        running = asyncio.create_task(e.generate(request()))
        await asyncio.sleep(0.01)  # taken into a batch: no longer waiting
        tasks = [asyncio.create_task(e.generate(request())) for _ in range(5)]
        done, _ = await asyncio.wait(tasks, timeout=0.05)
        outcomes = await asyncio.gather(running, *tasks, return_exceptions=True)
        return outcomes, len(done)

    outcomes, done_early = run(main())
    shed = [o for o in outcomes if isinstance(o, Overloaded)]
    # One runs, two wait, three are refused, and those within 50 ms.
    assert len(shed) == 3 and sum(not isinstance(o, Exception) for o in outcomes) == 3
    assert done_early == 3


def test_a_request_that_could_not_finish_in_time_is_refused_not_timed_out():
    async def main():
        e = await ready(engine(FixedCostBackend(base_s=0.2), timeout_s=1.0))
        await e.generate(request())  # the engine learns ~0.2 s per call
        tasks = [asyncio.create_task(e.generate(request(width=512, height=512))) for _ in range(10)]
        return await asyncio.gather(*tasks, return_exceptions=True)

    outcomes = run(main())
    assert not any(isinstance(o, TimedOut) for o in outcomes), outcomes
    assert any(isinstance(o, Overloaded) for o in outcomes)
    assert "timeout" in str(next(o for o in outcomes if isinstance(o, Overloaded)))


def test_the_cost_model_separates_a_calls_fixed_part_from_its_work():
    costs = CostModel()
    costs.observe(1.0, 0.25)
    assert costs.seconds(4.0, calls=1) == pytest.approx(1.0)  # one size seen: all of it scales
    for units in (0.01, 1.0, 0.01, 2.0):
        costs.observe(units, 0.05 + 0.2 * units)  # later calls outweigh the first
    # Exact on affine costs: 3 calls of 1.5 units each, not 4.5 x the small calls' ratio (~5 s).
    assert costs.seconds(4.5, calls=3) == pytest.approx(3 * 0.05 + 0.2 * 4.5, rel=0.05)


def test_after_small_calls_a_burst_of_large_ones_that_fits_the_timeout_is_admitted():
    """A call's fixed part weighs most on a small image: a ratio learned on small calls would
    see this burst as 25 s of work against a 4 s timeout and shed it; it takes ~1 s."""
    large = {"width": 256, "height": 256, "num_images": 4}

    async def main():
        e = await ready(
            engine(FixedCostBackend(base_s=0.05, per_image_s=0.02), timeout_s=4, max_batch_size=4)
        )
        await e.generate(request())
        await e.generate(request(**large))  # the engine has seen both sizes
        return await asyncio.gather(
            *(e.generate(request(**large)) for _ in range(8)), return_exceptions=True
        )

    outcomes = run(main())
    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes


def test_a_timed_out_request_leaves_the_queue_and_the_engine_goes_on():
    backend = FixedCostBackend(base_s=0.3)

    async def main():
        e = await ready(engine(backend, timeout_s=0.2))
        running = asyncio.create_task(e.generate(request()))
        await asyncio.sleep(0.01)
        waiting = [e.generate(request(width=96)) for _ in range(2)]
        outcomes = await asyncio.gather(running, *waiting, return_exceptions=True)
        assert all(isinstance(o, TimedOut) for o in outcomes)
        await asyncio.sleep(0.5)  # the running call finishes; its result is discarded
        e.request_timeout_s = 5
        await e.generate(request())

    run(main())
    # The first call was running when its caller gave up; the two waiting ones never ran.
    assert backend.calls == [1, 1]


def test_out_of_memory_halves_the_batch_and_only_an_oversized_request_fails():
    backend = FixedCostBackend(base_s=0.05, oom_above=2)

    async def main():
        e = await ready(engine(backend, max_batch_size=8))
        busy = asyncio.create_task(e.generate(request()))
        await asyncio.sleep(0.01)
        small = [e.generate(request(seed=i)) for i in range(4)]
        big = e.generate(request(num_images=3))
        return await asyncio.gather(busy, *small, big, return_exceptions=True)

    *served, big = run(main())
    assert all(not isinstance(r, Exception) for r in served)
    assert max(r.timings.batch_size for r in served) <= 2
    assert isinstance(big, OutOfMemory)


def test_a_failed_load_fails_waiting_requests_and_stays_failed():
    async def main():
        e = engine(FixedCostBackend(load_s=0.1, fail_load="weights are corrupt"))
        e.start()
        pending = asyncio.create_task(e.generate(request()))
        with pytest.raises(ModelUnavailable, match="weights are corrupt"):
            await pending
        assert e.health == "failed" and e.failure == "weights are corrupt"
        assert e.ping()["reason"] == "weights are corrupt"
        e.check_health()  # no raise: Serve must not restart the same failure in a loop
        with pytest.raises(ModelUnavailable, match="weights are corrupt"):
            await e.generate(request())
        assert e.backend.loads == 1

    run(main())


def test_a_transient_load_failure_recovers_within_the_attempts():
    backend = FixedCostBackend(fail_load="hub hiccup", fail_loads=1)
    e = Engine(backend, BatchConfig(), 30, "fake", load_attempts=3, load_retry_s=0.01)

    async def main():
        return await e.generate(request())

    assert run(main()).images and backend.loads == 2 and e.health == "healthy"


def test_load_attempts_bound_the_starts_then_it_stays_failed():
    backend = FixedCostBackend(fail_load="still broken")
    e = Engine(backend, BatchConfig(), 30, "fake", load_attempts=3, load_retry_s=0.01)
    with pytest.raises(ModelUnavailable, match="still broken"):
        e.start().result(timeout=10)
    assert backend.loads == 3 and e.health == "failed"


def test_requests_sent_while_loading_wait_and_are_served():
    async def main():
        e = engine(FixedCostBackend(load_s=0.3))
        e.start()
        assert e.health == "loading"
        result = await e.generate(request())
        assert e.health == "healthy"
        return result

    assert run(main()).timings.queue_ms >= 200


def test_drain_finishes_accepted_requests_and_refuses_new_ones():
    async def main():
        e = await ready(engine(FixedCostBackend(base_s=0.2)))
        accepted = [asyncio.create_task(e.generate(request())) for _ in range(3)]
        await asyncio.sleep(0.01)
        remaining = await e.drain(timeout_s=5)
        assert remaining == 0 and e.health == "draining"
        assert all(task.result().images for task in accepted)
        with pytest.raises(ShuttingDown):
            await e.generate(request())

    run(main())


def test_warnings_for_ignored_negative_prompt_and_truncation():
    async def main():
        e = await ready(engine())
        return await e.generate(request(prompt="word " * 100, negative_prompt="dogs"))

    warnings = run(main()).warnings
    assert any("truncated to the text encoder's 77 tokens" in w for w in warnings)
    assert any("negative_prompt is ignored" in w for w in warnings)
