"""Overload, a flood, timeouts, out-of-memory, a failed load, a killed replica and fuzzed input,
on the real server (Ray Serve, HAProxy). Faults come from the tests: apps deployed beside the
shared one with a fake backend of fixed cost (``loadtest.fakes``) that can fail on purpose."""

import os
import signal
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from loadtest import bench_flood
from tests.conftest import deploy_app, fixed_cost, wait_for
from tests.test_http import schemathesis

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAKE = {"model": "tiny", "device": "cpu", "warmup_sizes": [64], "num_cpus": 0.25}
SLOW_CALL_S = 1.0  # the `slow` app's pipeline call: well above a loaded host's HTTP tail


def assert_json_error(response: requests.Response, status: int, type_: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["type"] == type_


def timed_ping(url: str) -> float:
    start = time.perf_counter()
    requests.get(url + "/ping", timeout=5)
    return time.perf_counter() - start


@pytest.fixture(scope="module")
def slow(server):
    """Pipeline calls of a second, 4 images a batch, 4 requests may wait."""
    app = deploy_app(
        server,
        "slow",
        fixed_cost(base_s=SLOW_CALL_S),
        **FAKE,
        max_batch_size=4,
        max_queued_requests=4,
    )
    yield app
    from ray import serve

    serve.delete("slow")


def test_overload_is_shed_fast_with_retry_after_and_accepted_requests_finish(slow):
    pings: list[float] = []
    done = threading.Event()

    def ping_loop():
        while not done.is_set():
            pings.append(timed_ping(slow.url))
            time.sleep(0.05)

    def timed_post(_):
        start = time.perf_counter()
        response = slow.post("/predict", json={"prompt": "p", "width": 64, "height": 64})
        return response, time.perf_counter() - start

    pinger = threading.Thread(target=ping_loop)
    pinger.start()
    try:
        with ThreadPoolExecutor(24) as pool:
            results = list(pool.map(timed_post, range(24)))
    finally:
        done.set()
        pinger.join()
    accepted = [r for r, _ in results if r.status_code == 200]
    shed = [(r, t) for r, t in results if r.status_code != 200]
    assert accepted, "no request was served"
    # Shed without waiting for the model: each refusal faster than one pipeline call, which
    # every accepted request waited for at least (measured: tens of ms against 1000).
    assert len(shed) >= 12, f"only {len(shed)} of 24 refused with 1 running + 4 waiting"
    for response, seconds in shed:
        assert_json_error(response, 503, "overloaded")
        assert response.headers["Retry-After"] == "1"
        assert seconds < SLOW_CALL_S, seconds
    assert max(pings) < bench_flood.MAX_PING_S, f"/ping took {max(pings):.2f}s under load"


def test_ping_never_waits_behind_the_saturated_model(slow):
    """/ping reads the engine's state: no call, no wait behind the pipeline (SageMaker: < 2 s).
    Waiting behind it would put the median near half a pipeline call and the p99 near a whole
    one; measured here: a few ms median, 0.1-0.65 s p99 on a loaded two-core machine."""
    done = threading.Event()

    def keep_busy():  # 4 clients back to back: the pipeline never idles, the queue never empties
        with requests.Session() as session:
            while not done.is_set():
                session.post(slow.url + "/predict", json={"prompt": "p", "width": 64}, timeout=30)

    workers = [threading.Thread(target=keep_busy) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        # All four accepted: a batch runs and the queue holds the rest.
        wait_for(lambda: requests.get(slow.url + "/ping", timeout=5).json()["in_flight"] >= 4)
        with requests.Session() as session:
            pings = []
            for _ in range(200):
                start = time.perf_counter()
                assert session.get(slow.url + "/ping", timeout=5).status_code == 200
                pings.append(time.perf_counter() - start)
    finally:
        done.set()
        for worker in workers:
            worker.join()
    p99 = sorted(pings)[int(0.99 * len(pings)) - 1]
    print(
        f"\n/ping under saturation: p50 {statistics.median(pings) * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms"
    )
    # Waiting behind the pipeline would put the median near half a call: the median is the
    # test of that, robust to the tail. The tail is bounded by what SageMaker allows /ping
    # (2 s); a host busy with the other test worker has shown 0.65 s.
    assert statistics.median(pings) < SLOW_CALL_S / 10, sorted(pings)
    assert p99 < bench_flood.MAX_PING_S, sorted(pings)[-5:]


FLOOD_CALL_S = 4.0  # the `flood` app's pipeline call: far above a loaded host's flood tail


def test_a_flood_of_400_connections_gets_200_or_fast_503_and_ping_stays_fast(server):
    """400 connections at once on a pipeline of known cost: 1 batch of 8 may run and 8 wait.
    A 503 that waited for the pipeline would take a whole call; shedding takes none. (The
    client shares the host's cores with the server; seconds on the real tiny model are
    bench_flood's figures, in the README. On a host busy with the other test worker the
    slowest 503 of a flood of 400 has been 1.6 s.)"""
    from ray import serve

    app = deploy_app(
        server,
        "flood",
        fixed_cost(base_s=FLOOD_CALL_S),
        **FAKE,
        max_batch_size=8,
        max_queued_requests=8,
    )
    try:
        result = bench_flood.flood(app.url, 400, 512)
        print(
            f"\nflood of 400: {result['served']} served, {result['shed']} shed, slowest 503 "
            f"{result['slowest_503_s']:.2f} s, /ping max {result['ping_max_s']:.2f} s"
        )
        assert result["other"] == [], result  # nothing dropped, no other status
        assert result["shed_without_retry_after"] == 0
        assert 9 <= result["served"] <= 16, result  # the first call, then up to 8 + 8
        assert result["slowest_503_s"] < FLOOD_CALL_S, result
        assert result["ping_max_s"] < bench_flood.MAX_PING_S, result  # SageMaker's 2 s
        assert app.post("/predict", json={"prompt": "p", "width": 64, "height": 64}).ok
    finally:
        serve.delete("flood")


def test_out_of_memory_splits_the_batch_and_only_an_oversized_request_fails(server):
    from ray import serve

    app = deploy_app(server, "oom", fixed_cost(base_s=0.2, oom_above=2), **FAKE)
    try:
        payloads = [{"prompt": "p", "width": 64, "height": 64, "seed": s} for s in range(5)]
        with ThreadPoolExecutor(5) as pool:
            responses = list(pool.map(lambda p: app.post("/predict", json=p), payloads))
        assert [r.status_code for r in responses] == [200] * 5
        assert max(r.json()["timings"]["batch_size"] for r in responses) <= 2
        big = app.post("/predict", json={"prompt": "p", "width": 64, "height": 64, "num_images": 3})
        assert_json_error(big, 503, "out_of_memory")
        assert big.headers["Retry-After"] == "1" and "Traceback" not in big.text
        assert app.post("/predict", json={"prompt": "p", "width": 64, "height": 64}).ok
        assert requests.get(app.url + "/ping", timeout=5).status_code == 200
    finally:
        serve.delete("oom")


def test_a_request_past_its_deadline_gets_504_and_the_server_goes_on(server):
    from ray import serve

    # 0.5 s an image, a 0.9 s deadline: 4 images (2 s) cannot make it, 1 image (0.5 s) can.
    app = deploy_app(
        server, "strict", fixed_cost(base_s=0.0, per_image_s=0.5), **FAKE, request_timeout_s=0.9
    )
    one = {"prompt": "p", "width": 64, "height": 64}
    try:
        start = time.perf_counter()
        response = app.post("/predict", json={**one, "num_images": 4})
        assert_json_error(response, 504, "timeout")
        assert time.perf_counter() - start < 2.0  # at the deadline, not when the call ended

        # The running call cannot be interrupted: it finishes and its result is discarded;
        # meanwhile the engine refuses at once what could not finish in time (503). Then a
        # request that fits is served.
        def served() -> bool:
            again = app.post("/predict", json=one)
            assert again.status_code in (200, 503, 504), again.text
            return again.status_code == 200

        wait_for(served, timeout_s=30, poll_s=0.2)
    finally:
        serve.delete("strict")


def test_a_failed_load_says_so_on_ping_and_refuses_requests(server):
    """A replica whose model fails to load answers /ping 503 "failed" and requests 503
    model_unavailable with the reason, and stays so: its health check passes, since a
    replacement would fail the same way, forever (`sdturbo serve` and `serve run` exit 1 with
    the reason instead: tests/test_startup_failures.py)."""
    from ray import serve

    from serve_app.config import AppArgs
    from serve_app.server import deploy

    deploy(
        AppArgs(**FAKE),
        name="broken",
        route_prefix="/broken",
        # Loading takes a moment, as real weights do: the replica is up, then fails.
        backend_factory=fixed_cost(load_s=3.0, fail_load="weights are corrupt"),
    )
    url = server.url + "/broken"
    try:
        # While it is "failed" (a response is falsy when not ok: wrap it in a list).
        [ping, response] = wait_for(lambda: _failed_then_request(url), 90)
        assert ping.status_code == 503
        assert_json_error(response, 503, "model_unavailable")
        assert "weights are corrupt" in response.json()["error"]["message"]
        # Past Serve's health-check period (10 s by default): not replaced, still failed.
        time.sleep(12)
        assert _status(url + "/ping") == "failed"
    finally:
        serve.delete("broken")


def _failed_then_request(url: str) -> list[requests.Response] | None:
    ping = requests.get(url + "/ping", timeout=5)
    if ping.headers["content-type"] != "application/json" or ping.json()["status"] != "failed":
        return None
    response = requests.post(url + "/predict", json={"prompt": "p"}, timeout=10)
    return [ping, response] if response.status_code != 404 else None  # not yet replaced


def _status(url: str):
    try:
        return requests.get(url, timeout=5).json().get("status")
    except (requests.RequestException, ValueError):
        return None


def test_killed_model_replica_is_replaced_and_ping_recovers(server):
    """SIGKILL of the replica: Serve replaces it, /ping goes non-200 and back, serving resumes.

    In the second or two before Serve has noticed the death, a request routed to the dead
    process is answered by Ray's own proxy layer (a plain-text 500, or a reset connection):
    nothing in the replica can answer it. The test bounds that window and checks that every
    answer from our code is a 200 or a retryable 503, and that once /ping is back every request
    is served.
    """
    from ray import serve

    app = deploy_app(server, "victim", **FAKE)
    model = serve.get_deployment_handle("SDTurboModel", app_name="victim")
    pid = model.info.remote().result()["pid"]
    pings: list[tuple[float, int | str]] = []
    done = threading.Event()

    def ping_loop():
        while not done.is_set():
            try:
                status = requests.get(app.url + "/ping", timeout=2).status_code
            except requests.RequestException as exc:
                status = type(exc).__name__
            pings.append((time.perf_counter() - killed, status))
            time.sleep(0.1)

    os.kill(pid, signal.SIGKILL)
    killed = time.perf_counter()
    pinger = threading.Thread(target=ping_loop)
    pinger.start()
    responses: list[tuple[float, requests.Response | str]] = []
    try:
        while time.perf_counter() - killed < 120:
            try:
                response = app.post(
                    "/predict", json={"prompt": "p", "width": 64, "height": 64}, timeout=30
                )
            except requests.RequestException as exc:
                response = type(exc).__name__
            responses.append((time.perf_counter() - killed, response))
            up = _recovered(list(pings))
            if up is not None and sum(t > up + 1.0 for t, _ in responses) >= 3:
                break
            time.sleep(0.2)
    finally:
        done.set()
        pinger.join()
        serve.delete("victim")
    down = next(t for t, status in pings if status != 200)
    up = _recovered(pings)
    proxy_failures = [
        t
        for t, r in responses
        if isinstance(r, str) or (r.status_code == 500 and "json" not in r.headers["content-type"])
    ]
    print(
        f"\nreplica killed: /ping not 200 after {down:.1f}s, 200 again after {up:.1f}s; "
        f"{len(proxy_failures)} of {len(responses)} requests answered by Ray's proxy "
        f"(last {max(proxy_failures, default=0):.1f}s after the kill)"
    )
    assert max(proxy_failures, default=0) < up + 1.0, responses
    for t, response in responses:
        if isinstance(response, str) or "json" not in response.headers["content-type"]:
            continue
        assert response.status_code == 200 or (  # our code: served or told to retry
            response.status_code == 503
            and response.json()["error"]["type"] in ("model_unavailable", "overloaded")
        ), response.text
        if t > up + 1.0:
            assert response.status_code == 200, response.text


def _recovered(pings: list[tuple[float, int | str]]) -> float | None:
    """When /ping was 200 again after first failing."""
    down = next((t for t, status in pings if status != 200), None)
    if down is None:
        return None
    return next((t for t, status in pings if status == 200 and t > down), None)


def test_the_published_schema_holds_for_its_examples_on_the_real_server(server):
    """schemathesis's examples phase, every check, through HAProxy and Ray to the tiny model;
    the generated phases run in-process on the fake engine (tests/test_http.py)."""
    print(schemathesis(server.url, "examples")[-600:])
