"""loadtest/: the shapes' logic, the locustfile run headless against the tiny server, the report.

Locust monkey-patches the process with gevent when imported, so it runs in subprocesses here,
never inside pytest (which also runs Ray).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from loadtest import gate, report, shapes

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = str(ROOT / "loadtest" / "locustfile.py")


def locust(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "locust", "-f", LOCUSTFILE, *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=ROOT,
        check=False,
    )


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# --- shapes, without Locust ------------------------------------------------------------------


def test_step_shape_climbs_in_named_stages():
    stages = shapes.step(16, 120)
    assert [(s.name, s.users, s.until_s) for s in stages] == [
        ("step 1/4", 4, 30),
        ("step 2/4", 8, 60),
        ("step 3/4", 12, 90),
        ("step 4/4", 16, 120),
    ]
    assert shapes.stage_at(stages, 45).users == 8
    assert shapes.stage_at(stages, 120) is None


def test_spike_shape_goes_up_and_back():
    stages = shapes.spike(16, 100)
    users = [shapes.stage_at(stages, t).users for t in (10, 50, 90)]
    assert users == [4, 16, 4]
    assert shapes.stage_at(shapes.steady(8, 30), 29).users == 8


def _feed(plan: shapes.ScaleFromZero, t: float, replicas: int):
    plan.observe_replicas(t, replicas)
    return plan.tick(t)


def test_scale_from_zero_waits_for_a_real_scale_down_then_measures():
    plan = shapes.ScaleFromZero(burst_users=8, burst_seconds=10, zero_settle_s=120)
    plan.started = 0.0
    # A server still starting shows 0 replicas: not a scale to zero.
    assert _feed(plan, 1, 0) == (0, 1.0)
    assert _feed(plan, 30, 1) == (0, 1.0)
    assert _feed(plan, 90, 0) == (1, 1.0)  # the replica went away: zero
    plan.observe_request(start=89.0, end=95.0, ok=True, timings=None)  # sent before: ignored
    assert plan.image_at is None
    assert _feed(plan, 91, 0) == (1, 1.0)
    assert _feed(plan, 97, 1) == (1, 1.0)  # replica running 7 s after the request
    plan.observe_request(start=90.0, end=99.0, ok=True, timings={"inference_ms": 50.0})
    assert _feed(plan, 100, 1) == (8, 8.0)  # burst
    assert _feed(plan, 105, 2) == (8, 8.0)
    assert _feed(plan, 111, 2) is None
    summary = plan.summary()
    first = summary["first_request"]
    assert first["time_to_first_image_s"] == 9.0 and first["ok"]
    assert first["phases_s"] == {"until_replica_running": 7.0, "replica_running_to_image": 2.0}
    assert first["server_timings_ms"] == {"inference_ms": 50.0}
    assert summary["burst"] == {"users": 8, "seconds": 10, "peak_replicas": 2, "seconds_to_peak": 5}
    assert summary["error"] is None and summary["waited_for_zero_s"] == 90


def test_scale_from_zero_accepts_a_settled_zero_and_times_out():
    settled = shapes.ScaleFromZero(zero_settle_s=0)  # SageMaker: InService at 0 is zero
    settled.started = 0.0
    assert _feed(settled, 1, 0) == (1, 1.0)
    never = shapes.ScaleFromZero(zero_timeout_s=5)
    never.started = 0.0
    assert _feed(never, 1, 1) == (0, 1.0)
    assert _feed(never, 6, 1) is None
    assert "never reached 0" in never.summary()["error"]


# --- the locustfile --------------------------------------------------------------------------


def test_locustfile_lists_its_users():
    result = locust("--list")
    assert result.returncode == 0, result.stderr
    users = ("PredictUser", "InvocationsUser", "ImageToImageUser", "SageMakerUser")
    for name in (*users, "SageMakerAsyncUser"):
        assert name in result.stdout


def test_sagemaker_users_need_an_endpoint():
    result = locust("SageMakerUser", "--headless", "-u", "1", "-t", "2s", timeout_s=60)
    assert result.returncode != 0
    assert "--endpoint-name" in result.stderr


@pytest.mark.integration
@pytest.mark.slow
class TestAgainstTheTinyServer:
    def test_headless_session_then_report(self, server, tmp_path):
        from serve_app.server import metrics_url

        prefix = tmp_path / "local"
        result = locust(
            "--headless", "-u", "4", "-r", "4", "-t", "8s", "--host", server.url,
            "--image-size", "64", "--csv", str(prefix), "--only-summary",
            "--metrics-url", metrics_url(),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        rows = {row["Name"]: row for row in read_csv(Path(f"{prefix}_stats.csv"))}
        for name in ("/predict", "/invocations"):
            assert int(rows[name]["Request Count"]) > 2, rows
            assert rows[name]["Failure Count"] == "0"
        samples = read_csv(Path(f"{prefix}_replicas.csv"))
        assert len(samples) >= 5 and {s["replicas"] for s in samples} == {"1"}

        done = subprocess.run(
            [sys.executable, "-m", "loadtest.report", str(prefix)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        image = Image.open(f"{prefix}_report.png")
        assert image.format == "PNG" and image.size[1] > image.size[0] / 2
        summary = Path(f"{prefix}_summary.md").read_text()
        assert "| POST /predict |" in summary and "| Aggregated |" in summary
        # The server's view, from its metrics (Ray reports them every second in tests).
        view = json.loads(Path(f"{prefix}_server.json").read_text())
        assert view["server"]["requests"] > 0 and view["server"]["pipeline_calls"] > 0
        assert view["server"]["queue_wait_ms"]["p50"] is not None
        assert {"unet", "vae_decode", "encode"} <= set(view["server"]["stage_ms_p50"])
        assert "The server's view" in summary and "queue wait p50" in summary

    def test_image_to_image_user(self, server, tmp_path):
        prefix = tmp_path / "img2img"
        result = locust(
            "ImageToImageUser", "--headless", "-u", "2", "-r", "2", "-t", "5s",
            "--host", server.url, "--image-size", "64", "--steps", "2", "--strength", "0.5",
            "--csv", str(prefix), "--only-summary",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        rows = {row["Name"]: row for row in read_csv(Path(f"{prefix}_stats.csv"))}
        assert int(rows["/predict image"]["Request Count"]) > 2, rows
        assert rows["/predict image"]["Failure Count"] == "0"

    def test_p95_threshold_sets_the_exit_code(self, server, tmp_path):
        result = locust(
            "--headless", "-u", "2", "-r", "2", "-t", "4s", "--host", server.url,
            "--image-size", "64", "--max-p95-ms", "1", "--only-summary",
        )  # fmt: skip
        assert result.returncode == 1
        assert "FAIL: p95" in result.stderr

    def test_step_shape_runs_its_stages(self, server, tmp_path):
        prefix = tmp_path / "step"
        result = locust(
            "--headless", "--shape", "step", "-u", "4", "-t", "8s", "--host", server.url,
            "--image-size", "64", "--csv", str(prefix), "--only-summary",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert "stage step 4/4: 4 users" in result.stderr
        users = {int(r["User Count"]) for r in read_csv(Path(f"{prefix}_stats_history.csv"))}
        assert {1, 2, 3, 4} <= users


# --- scale from zero, end to end through Locust, on a deterministic fake ---------------------


class FakeServer(BaseHTTPRequestHandler):
    """/ping reports 1 replica for its first pings, then 0 (scaled down); a /predict at 0
    'starts' one in 1 s. Counted in pings, not seconds: Locust may take seconds to start here,
    and a shape that first sees 0 takes it for a server still starting."""

    replicas = 1
    pings = 0
    WAKE_S, READY_S = 1.0, 0.5  # a replica 'starts', then its first request runs

    def log_message(self, *args) -> None:
        pass

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        cls = type(self)
        cls.pings += 1
        if cls.replicas == 1 and cls.pings > 3 and not hasattr(cls, "woken"):
            cls.replicas = 0
        self._reply(200 if cls.replicas else 503, {"replicas": cls.replicas})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        cls = type(self)
        if cls.replicas == 0:
            cls.woken = True
            time.sleep(cls.WAKE_S)
            cls.replicas = 1
            time.sleep(cls.READY_S)
        timings = {"queue_ms": 1, "inference_ms": 2, "encode_ms": 3, "total_ms": 6, "batch_size": 1}
        self._reply(200, {"image": "aGk=", "timings": timings})


@pytest.mark.integration
@pytest.mark.slow
def test_scale_from_zero_through_locust_on_a_fake(tmp_path):
    FakeServer.replicas, FakeServer.pings = 1, 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    prefix = tmp_path / "sfz"
    try:
        result = locust(
            "PredictUser", "--headless", "--shape", "scale-from-zero", "-u", "2",
            "--burst-seconds", "3", "--zero-timeout", "30", "--csv", str(prefix),
            "--host", f"http://127.0.0.1:{httpd.server_address[1]}", "--only-summary",
            timeout_s=60,
        )  # fmt: skip
    finally:
        httpd.shutdown()
        thread.join(timeout=5)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(Path(f"{prefix}_scale_from_zero.json").read_text())
    first = summary["first_request"]
    # The fake's sleeps are the floor; the ceiling is an order of magnitude above it; the phase
    # in between is ordered within the same run.
    floor = FakeServer.WAKE_S + FakeServer.READY_S
    took = first["time_to_first_image_s"]
    assert floor * 0.95 < took < floor * 10, summary
    assert FakeServer.WAKE_S * 0.95 < first["phases_s"]["until_replica_running"] < took, summary
    assert first["server_timings_ms"]["inference_ms"] == 2
    assert summary["burst"]["peak_replicas"] == 1 and summary["waited_for_zero_s"] is not None
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.report", str(prefix)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "time to first image" in done.stdout
    assert Path(f"{prefix}_report.png").stat().st_size > 1000


def test_report_names_a_missing_run(tmp_path, capsys):
    assert report.main([str(tmp_path / "nothing")]) == 1
    assert "nothing_stats_history.csv" in capsys.readouterr().err


# --- the CI gate's verdicts ------------------------------------------------------------------


def _gate_options(*argv: str):
    return gate.parser().parse_args(list(argv))


GOOD = {
    "serve": {"batching_speedup": 1.6, "outside_model_over_uvicorn": 2.0},
    "batching": {"clients": {1: {"p50_ratio": 3.0}, 32: {"throughput_ratio": 1.0}}},
    "start": {"cold_start_s": 50.0, "artifact_start_s": 10.0},
    "encode": {"png_speedup_natural": 20.0},
}
BAD = {
    "serve": {"batching_speedup": 1.1, "outside_model_over_uvicorn": 6.0},
    "batching": {"clients": {1: {"p50_ratio": 1.2}, 32: {"throughput_ratio": 0.5}}},
    "start": {"cold_start_s": 30.0, "artifact_start_s": 25.0},
    "encode": {"png_speedup_natural": 1.1},
}


def test_gate_passes_good_ratios():
    rows = gate.checks(
        *(GOOD[k] for k in ("serve", "batching", "start", "encode")), _gate_options()
    )
    assert [(r["name"], r["passed"]) for r in rows] == [
        ("batching_speedup", True),
        ("outside_model_over_uvicorn", True),
        ("lone_request_p50_timer_over_free", True),
        ("throughput_32_free_over_timer", True),
        ("startup_speedup", True),
        ("png_encode_speedup", True),
    ]
    assert rows[4]["value"] == 5.0


def test_gate_fails_each_ratio_past_its_bar(monkeypatch, tmp_path, capsys):
    rows = gate.checks(*(BAD[k] for k in ("serve", "batching", "start", "encode")), _gate_options())
    assert [r["passed"] for r in rows] == [False] * 6

    monkeypatch.setattr(gate, "serving", lambda options: BAD["serve"])
    monkeypatch.setattr(gate.bench_serving, "report", lambda result: "serving")
    monkeypatch.setattr(gate, "policy", lambda options: BAD["batching"])
    monkeypatch.setattr(gate.bench_batching, "report", lambda result: "policy")
    monkeypatch.setattr(gate, "startup", lambda options: BAD["start"])
    monkeypatch.setattr(gate.bench_encode, "run", lambda repeats: BAD["encode"])
    monkeypatch.setattr(gate.bench_encode, "report", lambda result: "encode")
    output = tmp_path / "gate.json"
    assert gate.main(["--output", str(output)]) == 1
    written = json.loads(output.read_text())
    assert written["passed"] is False and len(written["checks"]) == 6
    assert "FAIL startup_speedup: 1.20 (min 1.50)" in capsys.readouterr().out
