"""Metrics: the engine's recorder calls, request ids and the access line (in-process, fast), the
EMF lines against the EMF specification, and a real server's Prometheus endpoint and EMF lines
checked against a known sequence of requests."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from serve_app.config import AppArgs, MetricsSettings
from serve_app.engine.metrics import Recorder, Sample, Sampler
from serve_app.metrics import build_recorder
from serve_app.metrics.emf import MAX_VALUES, UNITS, EmfRecorder, line_writer
from tests.conftest import deploy_app, fixed_cost, wait_for

# --- the EMF specification, as a validator -------------------------------------------------
# CloudWatch_Embedded_Metric_Format_Specification: the root holds "_aws" (an object with a
# Timestamp, ms since the epoch, and CloudWatchMetrics, an array of MetricDirectives); a
# MetricDirective has Namespace (1-255 chars), Dimensions (an array of DimensionSets, each an
# array of up to 30 member names) and Metrics (up to 100 MetricDefinitions: Name, 1-255 chars,
# and optionally Unit, one of CloudWatch's units, and StorageResolution 1 or 60); every name a
# directive references is a member of the root: a dimension's value a string, a metric's a
# number or an array of up to 100 numbers.
CLOUDWATCH_UNITS = {
    "Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes",
    "Terabytes", "Bits", "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count",
    "Bytes/Second", "Kilobytes/Second", "Megabytes/Second", "Gigabytes/Second",
    "Terabytes/Second", "Bits/Second", "Kilobits/Second", "Megabits/Second", "Gigabits/Second",
    "Terabits/Second", "Count/Second", "None",
}  # fmt: skip


def emf_violations(line: str) -> list[str]:
    """What in ``line`` breaks the EMF specification (empty: a valid EMF event)."""
    try:
        root = json.loads(line)
    except ValueError as exc:
        return [f"not JSON: {exc}"]
    if not isinstance(root, dict) or not isinstance(root.get("_aws"), dict):
        return ["the root is not an object with an _aws object"]
    aws, problems = root["_aws"], []
    timestamp = aws.get("Timestamp")
    if not isinstance(timestamp, int) or isinstance(timestamp, bool) or timestamp <= 0:
        problems.append("_aws.Timestamp is not a positive integer (ms)")
    directives = aws.get("CloudWatchMetrics")
    if not isinstance(directives, list) or not directives:
        return [*problems, "_aws.CloudWatchMetrics is not a non-empty array"]
    for directive in directives:
        problems += directive_violations(directive, root)
    return problems


def directive_violations(directive: dict, root: dict) -> list[str]:
    problems = []
    namespace = directive.get("Namespace")
    if not isinstance(namespace, str) or not 1 <= len(namespace) <= 255:
        problems.append(f"bad Namespace {namespace!r}")
    for dimension_set in directive.get("Dimensions", []):
        if not isinstance(dimension_set, list) or len(dimension_set) > 30:
            problems.append(f"bad DimensionSet {dimension_set!r}")
            continue
        problems += [
            f"dimension {name} has no string value at the root"
            for name in dimension_set
            if not isinstance(root.get(name), str)
        ]
    definitions = directive.get("Metrics")
    if not isinstance(definitions, list) or len(definitions) > 100:
        return [*problems, "Metrics is not an array of at most 100 definitions"]
    for definition in definitions:
        problems += definition_violations(definition, root)
    return problems


def is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def definition_violations(definition: dict, root: dict) -> list[str]:
    name = definition.get("Name")
    if not isinstance(name, str) or not 1 <= len(name) <= 255:
        return [f"bad metric Name {name!r}"]
    problems = []
    if "Unit" in definition and definition["Unit"] not in CLOUDWATCH_UNITS:
        problems.append(f"{name}: unit {definition['Unit']!r} is not CloudWatch's")
    if definition.get("StorageResolution", 60) not in (1, 60):
        problems.append(f"{name}: StorageResolution must be 1 or 60")
    value = root.get(name)
    if isinstance(value, list):
        if not 1 <= len(value) <= 100:
            problems.append(f"{name}: an array of {len(value)} values (1 to 100)")
        if not all(is_number(number) for number in value):
            problems.append(f"{name}: {value!r} holds something other than numbers")
    elif not is_number(value):
        problems.append(f"{name}: {value!r} is not a number")
    return problems


def test_the_validator_catches_what_the_specification_forbids():
    good = {
        "_aws": {
            "Timestamp": 1,
            "CloudWatchMetrics": [
                {"Namespace": "N", "Dimensions": [["A"]], "Metrics": [{"Name": "M"}]}
            ],
        },
        "A": "x",
        "M": [1, 2],
    }
    assert emf_violations(json.dumps(good)) == []
    assert emf_violations("(ServeReplica pid=1) " + json.dumps(good))  # a prefixed line
    assert emf_violations(json.dumps({**good, "M": "1"}))
    assert emf_violations(json.dumps({**good, "M": list(range(101))}))
    assert emf_violations(json.dumps({**good, "A": 1}))


# --- EMF lines ------------------------------------------------------------------------------


def emf_recorder(lines: list[str], **kwargs) -> EmfRecorder:
    dimensions = {"EndpointName": "sdturbo-sync", "VariantName": "AllTraffic"}
    return EmfRecorder("SDTurbo", dimensions, lines.append, clock=lambda: 1700000000.5, **kwargs)


# The names and units agreed with infra/ (its dashboard.tf's server_metrics and the QueueWait
# alarm read exactly these).
AGREED_WITH_THE_DASHBOARD = {
    "QueueWait": "Milliseconds", "BatchSize": "Count", "BatchFill": "None",
    "TextEncoderTime": "Milliseconds", "UNetTime": "Milliseconds",
    "VaeDecodeTime": "Milliseconds", "EncodeTime": "Milliseconds", "RequestsShed": "Count",
    "Requests": "Count", "PromptCacheHits": "Count", "PromptCacheMisses": "Count",
    "CompileFallbacks": "Count", "CompileCacheMismatches": "Count", "GpuMemoryUsed": "Bytes",
    "QueueLength": "Count",
}  # fmt: skip


def test_emf_names_and_units_are_the_dashboards():
    assert UNITS == AGREED_WITH_THE_DASHBOARD


def test_emf_line_holds_an_interval_of_figures_with_the_dashboards_names():
    lines: list[str] = []
    emf = emf_recorder(lines)
    emf.request("/predict", 200, 50.0)
    emf.request("/invocations", 200, 60.0)
    emf.request("/ping", 200, 1.0)  # not a generation request
    emf.shed("overloaded")
    emf.request("/predict", 503, 1.0)
    emf.queue_wait(3.0)
    emf.queue_wait(4.0)
    emf.pipeline_call(2, 8, {"text_encoder": 1.5, "unet": 10.0, "vae_decode": 20.0, "copy": 1})
    emf.encoded(2.0)
    emf.encoded(2.5)
    emf.sampled(Sample(3, 3.0, 3, 5, prompt_cache_hits=4, prompt_cache_misses=1))
    emf.flush()
    assert len(lines) == 1 and emf_violations(lines[0]) == []
    event = json.loads(lines[0])
    directive = event["_aws"]["CloudWatchMetrics"][0]
    assert event["_aws"]["Timestamp"] == 1700000000500
    assert directive["Namespace"] == "SDTurbo"
    assert directive["Dimensions"] == [["EndpointName", "VariantName"]]
    assert (event["EndpointName"], event["VariantName"]) == ("sdturbo-sync", "AllTraffic")
    units = {d["Name"]: d["Unit"] for d in directive["Metrics"]}
    assert all(UNITS[name] == unit for name, unit in units.items())
    assert event["Requests"] == 3 and event["RequestsShed"] == 1
    assert event["QueueWait"] == [3.0, 4.0]
    assert (event["BatchSize"], event["BatchFill"]) == ([2], [0.25])
    assert (event["TextEncoderTime"], event["UNetTime"], event["VaeDecodeTime"]) == (
        [1.5],
        [10.0],
        [20.0],
    )
    assert event["EncodeTime"] == [2.0, 2.5] and event["QueueLength"] == [3]
    assert (event["PromptCacheHits"], event["PromptCacheMisses"]) == (4, 1)
    assert event["CompileFallbacks"] == 0 and event["CompileCacheMismatches"] == 0
    assert "GpuMemoryUsed" not in units  # no GPU: no values, no definition


def test_an_idle_interval_is_zeros_not_missing_data():
    lines: list[str] = []
    emf_recorder(lines).flush()
    event = json.loads(lines[0])
    assert emf_violations(lines[0]) == []
    assert event["Requests"] == 0 and event["RequestsShed"] == 0
    assert "QueueWait" not in event


def test_more_than_100_values_are_split_over_lines_none_lost():
    lines: list[str] = []
    emf = emf_recorder(lines)
    for i in range(MAX_VALUES * 2 + 5):
        emf.queue_wait(float(i))
        emf.request("/predict", 200, 1.0)
    emf.flush()
    assert len(lines) == 3 and all(emf_violations(line) == [] for line in lines)
    events = [json.loads(line) for line in lines]
    assert [v for e in events for v in e["QueueWait"]] == [float(i) for i in range(205)]
    assert sum(e["Requests"] for e in events) == 205  # counted once, on the first line


def test_a_full_interval_is_split_into_lines_that_fit_one_pipe_write():
    from serve_app.metrics.emf import MAX_LINE_BYTES

    lines: list[str] = []
    emf = emf_recorder(lines)
    for i in range(MAX_VALUES):
        emf.queue_wait(1234.56789 + i)
        emf.pipeline_call(8, 8, {"text_encoder": 1.23456, "unet": 123.456789, "vae_decode": 9.87})
        emf.encoded(12.3456789)
        emf.sampled(Sample(60, 60.0, 60, 60, gpu_memory_bytes=12345678901))
    emf.flush()
    assert len(lines) > 1 and all(len(line.encode()) <= MAX_LINE_BYTES for line in lines)
    assert all(emf_violations(line) == [] for line in lines)
    events = [json.loads(line) for line in lines]
    for name in ("QueueWait", "BatchSize", "UNetTime", "EncodeTime", "GpuMemoryUsed"):
        assert sum(len(e.get(name, [])) for e in events) == MAX_VALUES, name
    assert sum(e.get("Requests", 0) for e in events) == 0
    assert sum("Requests" in e for e in events) == 1  # the counts once


def test_the_writer_thread_writes_at_the_interval_and_when_a_metric_is_full(tmp_path):
    path = tmp_path / "emf.log"
    emf = EmfRecorder("SDTurbo", {"EndpointName": "e"}, line_writer(str(path)), 0.2).start()
    try:
        wait_for(lambda: path.exists() and path.read_text().count("\n") >= 2, timeout_s=10)
        for _ in range(MAX_VALUES):
            emf.queue_wait(1.0)
        wait_for(lambda: '"QueueWait":[1.0' in path.read_text(), timeout_s=10)
    finally:
        emf.close()
    assert all(emf_violations(line) == [] for line in path.read_text().splitlines())


def test_emf_is_on_with_an_endpoint_name_or_an_interval():
    assert MetricsSettings().emf_every_s is None
    assert MetricsSettings(endpoint_name="e").emf_every_s == 60
    assert MetricsSettings(emf_interval_s=5).emf_every_s == 5
    recorder = build_recorder(MetricsSettings(), prometheus=False)
    assert type(recorder) is Recorder  # nothing on: the no-op base


def test_settings_come_from_sdturbo_environment_variables():
    from serve_app.config import settings_from_environment

    environ = {
        "SDTURBO_ENDPOINT_NAME": "sdturbo-sync",
        "SDTURBO_VARIANT_NAME": "blue",
        "SDTURBO_METRICS_NAMESPACE": "Custom",
    }
    args = AppArgs.model_validate(settings_from_environment(environ))
    settings = args.metrics_settings()
    assert (settings.endpoint_name, settings.variant_name) == ("sdturbo-sync", "blue")
    assert settings.metrics_namespace == "Custom" and settings.emf_every_s == 60


# --- the engine's calls, the sampler, request ids and the access line (in-process) ---------


class Counting(Recorder):
    def __init__(self):
        self.calls: list[tuple] = []

    def request(self, route, status, total_ms):
        self.calls.append(("request", route, status))

    def shed(self, reason):
        self.calls.append(("shed", reason))

    def queue_wait(self, ms):
        self.calls.append(("queue_wait",))

    def pipeline_call(self, images, max_images, stages_ms):
        self.calls.append(("pipeline_call", images, max_images, tuple(stages_ms)))

    def encoded(self, ms):
        self.calls.append(("encoded",))


def test_a_request_is_recorded_once_at_each_point(http):
    http.engine.metrics = counting = Counting()
    response = http.post("/predict", json={"prompt": "a cat", "width": 64, "height": 64})
    assert response.status_code == 200
    assert counting.calls == [
        ("queue_wait",),
        ("pipeline_call", 1, 8, ("unet",)),
        ("encoded",),
        ("request", "/predict", 200),
    ]


def test_a_shed_is_counted_by_its_reason(http):
    http.engine.metrics = counting = Counting()
    http.engine.draining = True
    response = http.post("/invocations", json={"prompt": "a cat"})
    assert response.status_code == 503
    assert counting.calls == [("shed", "shutting_down"), ("request", "/invocations", 503)]


def test_the_request_id_is_echoed_or_made_on_every_route(http):
    echoed = http.post("/predict", json={"prompt": ""}, headers={"X-Request-Id": "abc-123"})
    assert echoed.status_code == 422 and echoed.headers["x-request-id"] == "abc-123"
    made = http.get("/no-such-route")
    assert made.status_code == 404 and len(made.headers["x-request-id"]) == 32
    assert http.get("/ping").headers["x-request-id"] != made.headers["x-request-id"]
    too_long = http.get("/ping", headers={"X-Request-Id": "x" * 500})
    assert too_long.headers["x-request-id"] != "x" * 500


def test_an_unhandled_error_keeps_its_request_id():
    from fastapi.testclient import TestClient

    from serve_app.api import create_api
    from tests.conftest import fake_engine

    api = create_api()
    api.state.engine = engine = fake_engine()

    async def broken(request):  # a bug in the engine: 500 from the catch-all handler
        raise RuntimeError("bug")

    engine.generate = broken
    with TestClient(api, raise_server_exceptions=False) as client:
        response = client.post("/predict", json={"prompt": "a cat"}, headers={"X-Request-Id": "r1"})
    engine.close()
    assert response.status_code == 500 and response.headers["x-request-id"] == "r1"


def test_one_access_line_per_request(http, caplog):
    with caplog.at_level(logging.INFO, logger="sdturbo.access"):
        http.post(
            "/predict",
            json={"prompt": "a cat", "width": 64, "height": 64},
            headers={"X-Request-Id": "line-1"},
        )
        http.post("/predict", json={"prompt": ""})
    lines = [r.getMessage() for r in caplog.records if r.name == "sdturbo.access"]
    assert len(lines) == 2
    fields = dict(part.split("=", 1) for part in lines[0].split())
    assert fields["request_id"] == "line-1" and fields["route"] == "/predict"
    assert fields["status"] == "200" and fields["method"] == "POST"
    assert float(fields["queue_ms"]) >= 0 and float(fields["total_ms"]) > 0
    assert "status=422" in lines[1] and "queue_ms=-" in lines[1]


class Statuses:
    def __init__(self, *statuses):
        self.statuses = list(statuses)
        self.backend = self

    def state(self):
        return {"queue_length": 2, "queued_units": 2.0, "queued_images": 3, "in_flight": 4}

    def status(self):
        return self.statuses.pop(0)


def test_the_sampler_turns_running_totals_into_increments():
    def status(state: str, mismatches: int, hits: int, misses: int) -> dict:
        return {
            "compile": {"state": state, "cache_mismatches": mismatches},
            "prompt_cache": {"hits": hits, "misses": misses},
        }

    engine = Statuses(
        status("compiled", 0, 5, 2),
        status("fallback", 3, 9, 2),
        status("fallback", 3, 1, 0),  # the prompt cache rebuilt by a reload
    )
    sampler = Sampler(engine, Recorder(), gpu_memory=lambda: 1024)
    first, second, third = sampler.sample(), sampler.sample(), sampler.sample()
    assert (first.prompt_cache_hits, first.prompt_cache_misses) == (5, 2)
    assert (second.prompt_cache_hits, second.prompt_cache_misses) == (4, 0)
    assert (third.prompt_cache_hits, third.prompt_cache_misses) == (1, 0)
    assert [s.compile_fallbacks for s in (first, second, third)] == [0, 1, 0]
    assert [s.compile_cache_mismatches for s in (first, second, third)] == [0, 3, 0]
    assert (first.queue_length, first.queued_images, first.gpu_memory_bytes) == (2, 3, 1024)


# --- a real server: Prometheus at Ray's metrics export port, EMF lines from the replica -----


def scrape(url: str, application: str) -> dict[tuple, float]:
    """Samples of ``application``'s sdturbo metrics: (name, frozenset of our labels) -> value."""
    ours = ("route", "status", "reason", "stage", "le")
    samples = {}
    for family in text_string_to_metric_families(requests.get(url, timeout=10).text):
        for sample in family.samples:
            if not sample.name.startswith("ray_sdturbo_"):
                continue
            if sample.labels.get("application") != application:
                continue
            labels = frozenset((k, v) for k, v in sample.labels.items() if k in ours)
            samples[(sample.name, labels)] = sample.value
    return samples


def settles(observe, expected, timeout_s: float) -> None:
    """``observe()`` comes to equal ``expected`` (exporters report on their own clock); the
    last observation is what a failure shows."""
    deadline = time.monotonic() + timeout_s
    while (observed := observe()) != expected and time.monotonic() < deadline:
        time.sleep(0.5)
    assert observed == expected


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.mark.integration
def test_prometheus_and_emf_count_a_known_sequence_exactly(server, tmp_path):
    from ray import serve

    from serve_app.server import metrics_url

    emf_path = tmp_path / "emf.log"
    app = deploy_app(
        server,
        "metered",
        fixed_cost(base_s=0.01),
        model="tiny",
        device="cpu",
        warmup_sizes=[64],
        max_queued_requests=1,
        emf_interval_s=0.5,
        emf_path=str(emf_path),
        endpoint_name="sdturbo-test",
    )
    small = {"prompt": "a cat", "width": 64, "height": 64}
    for i in range(3):
        response = app.post(
            "/predict", json={**small, "seed": i}, headers={"X-Request-Id": f"r{i}"}
        )
        assert response.status_code == 200 and response.headers["x-request-id"] == f"r{i}"
    assert app.post("/invocations", json={"prompt": ""}).status_code == 422
    # Draining: every generation request is now shed, deterministically.
    handle = serve.get_deployment_handle("SDTurboModel", app_name="metered")
    handle.drain.remote(1.0).result()
    for _ in range(2):
        shed = app.post("/predict", json=small)
        assert shed.status_code == 503 and shed.json()["error"]["type"] == "shutting_down"
        assert shed.headers["x-request-id"]

    url = metrics_url()
    assert url.startswith("http://127.0.0.1:")
    expected = {
        ("ray_sdturbo_requests_total", (("route", "/predict"), ("status", "200"))): 3,
        ("ray_sdturbo_requests_total", (("route", "/invocations"), ("status", "422"))): 1,
        ("ray_sdturbo_requests_total", (("route", "/predict"), ("status", "503"))): 2,
        ("ray_sdturbo_requests_shed_total", (("reason", "shutting_down"),)): 2,
        ("ray_sdturbo_queue_wait_ms_count", ()): 3,
        ("ray_sdturbo_batch_size_count", ()): 3,
        ("ray_sdturbo_batch_size_sum", ()): 3,
        ("ray_sdturbo_stage_ms_count", (("stage", "unet"),)): 3,
        ("ray_sdturbo_stage_ms_count", (("stage", "encode"),)): 3,
    }

    def observed() -> dict:
        samples = scrape(url, "metered")
        return {key: value(samples, key[0], **dict(key[1])) for key in expected}

    # Ray's metrics agent reports every second here: wait until it has, then compare exactly.
    settles(observed, expected, timeout_s=60)
    samples = scrape(url, "metered")
    assert value(samples, "ray_sdturbo_batch_fill_bucket", le="0.125") == 3  # 1 of 8
    assert value(samples, "ray_sdturbo_queue_length") == 0
    assert value(samples, "ray_sdturbo_requests_total", route="/ping", status="200") >= 1

    def emf_events() -> list[dict]:
        lines = emf_path.read_text().splitlines() if emf_path.exists() else []
        assert all(emf_violations(line) == [] for line in lines), lines
        return [json.loads(line) for line in lines]

    def emf_totals() -> tuple:
        events = emf_events()
        return (
            sum(e["Requests"] for e in events),
            sum(e["RequestsShed"] for e in events),
            sum(len(e.get("QueueWait", [])) for e in events),
            [v for e in events for v in e.get("BatchSize", [])],
        )

    settles(emf_totals, (6, 2, 3, [1, 1, 1]), timeout_s=30)
    event = emf_events()[-1]
    assert (event["EndpointName"], event["VariantName"]) == ("sdturbo-test", "AllTraffic")
    serve.delete("metered")


@pytest.mark.integration
def test_the_tiny_model_reports_its_stages_and_prompt_cache(server):
    from serve_app.server import metrics_url

    for _ in range(2):  # the same prompt twice: a miss, then a hit
        assert server.predict(width=64, height=64, seed=1).status_code == 200
    echoed = server.predict(width=64, height=64)
    assert echoed.headers["x-request-id"]
    url = metrics_url()

    def reported() -> dict:
        return scrape(url, "sdturbo")

    samples = wait_for(
        lambda: (
            (s := reported())
            and value(s, "ray_sdturbo_prompt_cache_hits_total") >= 1
            and all(
                value(s, "ray_sdturbo_stage_ms_count", stage=stage) >= 3
                for stage in ("text_encoder", "unet", "vae_decode", "encode")
            )
            and s
        ),
        timeout_s=60,
        poll_s=1,
    )
    assert value(samples, "ray_sdturbo_prompt_cache_misses_total") >= 1
    assert value(samples, "ray_sdturbo_compile_fallbacks_total") == 0
    assert value(samples, "ray_sdturbo_compile_cache_mismatches_total") == 0
    one_ms = value(samples, "ray_sdturbo_stage_ms_bucket", stage="unet", le="1.0")
    assert one_ms <= value(samples, "ray_sdturbo_stage_ms_bucket", stage="unet", le="2000.0")


def test_sdturbo_serve_refuses_a_taken_metrics_port_at_once():
    import socket

    from serve_app.cli import StartupError, check_metrics_port

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(StartupError, match=r"metrics port \d+ is in use"):
            check_metrics_port(taken.getsockname()[1])
    check_metrics_port(0)  # a free one, Ray's pick


def test_the_readme_scrape_example_names_the_default_port():
    from serve_app.config import METRICS_PORT

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert f"curl -s http://127.0.0.1:{METRICS_PORT}/metrics" in readme


# --- the load tests' reading of the metrics ---------------------------------------------------

EXPOSITION = """\
# TYPE ray_sdturbo_requests_total counter
ray_sdturbo_requests_total{application="a",replica="r1",route="/predict",status="200"} {ok}
ray_sdturbo_requests_total{application="a",replica="r2",route="/predict",status="200"} 1.0
ray_sdturbo_requests_total{application="b",replica="r3",route="/predict",status="200"} 7.0
# TYPE ray_sdturbo_requests_shed_total counter
ray_sdturbo_requests_shed_total{application="a",replica="r1",reason="overloaded"} {shed}
# TYPE ray_sdturbo_batch_size histogram
ray_sdturbo_batch_size_bucket{application="a",replica="r1",le="1.5"} {b1}
ray_sdturbo_batch_size_bucket{application="a",replica="r1",le="2.5"} {b2}
ray_sdturbo_batch_size_bucket{application="a",replica="r1",le="+Inf"} {b2}
ray_sdturbo_batch_size_count{application="a",replica="r1"} {b2}
ray_sdturbo_batch_size_sum{application="a",replica="r1"} {bsum}
# TYPE ray_sdturbo_queue_wait_ms histogram
ray_sdturbo_queue_wait_ms_bucket{application="a",replica="r1",le="10.0"} {q10}
ray_sdturbo_queue_wait_ms_bucket{application="a",replica="r1",le="20.0"} {q20}
ray_sdturbo_queue_wait_ms_bucket{application="a",replica="r1",le="+Inf"} {q20}
ray_sdturbo_queue_wait_ms_count{application="a",replica="r1"} {q20}
ray_sdturbo_queue_wait_ms_sum{application="a",replica="r1"} 0
"""


def exposition(**values) -> str:
    text = EXPOSITION
    for key, number in values.items():
        text = text.replace("{" + key + "}", str(float(number)))
    return text


def test_server_view_subtracts_two_scrapes_and_reads_quantiles_from_buckets():
    from loadtest import server_view

    before = server_view.parse(exposition(ok=2, shed=0, b1=1, b2=1, bsum=1, q10=1, q20=1), "a")
    after = server_view.parse(exposition(ok=6, shed=3, b1=3, b2=5, bsum=9, q10=3, q20=5), "a")
    view = server_view.summarize(before, after, max_batch_size=4)
    assert view["requests"] == 4  # the replicas summed, application b left out
    assert view["shed"]["overloaded"] == 3
    assert view["pipeline_calls"] == 4 and view["mean_batch_size"] == 2.0
    assert view["batch_fill"] == 0.5
    # four waits over the interval: two up to 10 ms, two in (10, 20]: the median is 10 ms
    assert view["queue_wait_ms"]["p50"] == pytest.approx(10.0)
    assert view["queue_wait_ms"]["p90"] == pytest.approx(18.0)
    assert "mean batch 2.0 (fill 50%)" in server_view.describe(view)
