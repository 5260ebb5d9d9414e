"""Overload, timeouts, out-of-memory, a killed replica and fuzzed input, on the real server."""

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import free_port, start_app

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FRAGILE_ARGS = {
    "model": "tiny",
    "device": "cpu",
    "warmup_sizes": [64],
    "max_batch_size": 4,
    # A small bound, so a flood overflows it: 4 running + 4 waiting, the rest refused.
    "max_ongoing_requests": 4,
    "max_queued_requests": 4,
    # Any pipeline call of more than 2 images raises the out-of-memory error a GPU would.
    "inject_oom_above": 2,
}
SLOW = {"prompt": "slow", "width": 512, "height": 512, "num_inference_steps": 4}


@pytest.fixture(scope="module")
def fragile(ray_cluster):
    from ray import serve

    yield start_app(FRAGILE_ARGS, free_port())
    serve.shutdown()


def assert_json_error(response: requests.Response, status: int, type_: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["type"] == type_


def timed_ping(url: str) -> float:
    start = time.perf_counter()
    requests.get(url + "/ping", timeout=5)
    return time.perf_counter() - start


def test_overload_is_shed_fast_with_retry_after_and_accepted_requests_finish(fragile):
    pings: list[float] = []
    done = threading.Event()

    def ping_loop():
        while not done.is_set():
            pings.append(timed_ping(fragile.url))
            time.sleep(0.1)

    def timed_post(_):
        start = time.perf_counter()
        response = fragile.post("/predict", json=SLOW)
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
    assert len(shed) >= 8, f"only {len(shed)} of 24 refused with 8 slots"
    for response, seconds in shed:
        assert_json_error(response, 503, "overloaded")
        assert response.headers["Retry-After"] == "1"
        assert seconds < 1.0
    assert max(pings) < 2.0, f"/ping took {max(pings):.2f}s under load"


def test_out_of_memory_splits_the_batch_and_every_request_succeeds(fragile):
    payloads = [{"prompt": "p", "width": 64, "height": 64, "seed": s} for s in range(4)]
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda p: fragile.post("/predict", json=p), payloads))
    assert [r.status_code for r in responses] == [200] * 4
    assert max(r.json()["timings"]["batch_size"] for r in responses) <= 2


def test_out_of_memory_on_one_request_fails_only_it_and_the_replica_stays_up(fragile):
    response = fragile.post(
        "/predict", json={"prompt": "p", "width": 64, "height": 64, "num_images": 3}
    )
    assert_json_error(response, 503, "out_of_memory")
    assert "Traceback" not in response.text
    assert fragile.post("/predict", json={"prompt": "p", "width": 64, "height": 64}).ok
    assert requests.get(fragile.url + "/ping", timeout=5).status_code == 200


def test_a_request_past_its_deadline_gets_504_and_the_server_goes_on(fragile):
    from ray import serve

    from serve_app import build_app
    from serve_app.config import AppArgs

    strict = AppArgs(**{**FRAGILE_ARGS, "request_timeout_s": 0.3, "num_cpus": 0.5})
    serve.run(build_app(strict), name="strict", route_prefix="/strict")
    try:
        start = time.perf_counter()
        response = fragile.post("/strict/predict", json={**SLOW, "width": 1024, "height": 1024})
        assert_json_error(response, 504, "timeout")
        assert time.perf_counter() - start < 1.5
        # A pipeline call cannot be interrupted: the timed-out one finishes, its result is
        # discarded, and quick requests are served again right after.
        quick = {"prompt": "quick", "width": 64, "height": 64}
        deadline = time.monotonic() + 20
        while not fragile.post("/strict/predict", json=quick).ok:
            assert time.monotonic() < deadline, "the strict app never served again"
            time.sleep(0.5)
    finally:
        serve.delete("strict")


def test_killed_model_replica_is_replaced_and_ping_recovers(fragile):
    from ray import serve

    model = serve.get_deployment_handle("SDTurboModel", app_name="default")
    pid = model.info.remote().result()["pid"]
    pings: list[tuple[float, int]] = []
    done = threading.Event()

    def ping_loop():
        while not done.is_set():
            status = requests.get(fragile.url + "/ping", timeout=5).status_code
            pings.append((time.perf_counter() - killed, status))
            time.sleep(0.1)

    os.kill(pid, signal.SIGKILL)
    killed = time.perf_counter()
    pinger = threading.Thread(target=ping_loop)
    pinger.start()
    responses = []
    try:
        while time.perf_counter() - killed < 90:
            payload = {"prompt": "p", "width": 64, "height": 64}
            responses.append(fragile.post("/predict", json=payload))
            statuses = [status for _, status in pings]
            if 503 in statuses and statuses[-1] == 200 and responses[-1].ok:
                break
            time.sleep(0.2)
    finally:
        done.set()
        pinger.join()
    down = next(t for t, status in pings if status == 503)
    up = next(t for t, status in pings if status == 200 and t > down)
    print(f"\nreplica killed: /ping 503 after {down:.1f}s, 200 again after {up:.1f}s")
    for response in responses:  # served, or a clear retryable error: never a 500
        assert response.status_code == 200 or response.json()["error"]["type"] in (
            "model_unavailable",
            "overloaded",
        ), response.text
    assert responses[-1].ok
    assert model.info.remote().result()["pid"] != pid


def test_fuzzed_requests_from_the_openapi_schema_get_no_5xx_and_json_errors(fragile):
    # Negative mode: schema-violating bodies, types and values, to /predict and /invocations.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{fragile.url}/openapi.json",
            "--mode",
            "negative",
            "--max-examples",
            "60",
            "--generation-deterministic",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,"
            "response_schema_conformance",
            "--include-method",
            "POST",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Tested: 2" in result.stdout and "No issues found" in result.stdout
