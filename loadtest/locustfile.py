"""Locust load tests for the SD-Turbo server: local HTTP, SageMaker sync and async endpoints.

    # Local (serve run serve_app:app model=tiny): the HTTP users, /predict and /invocations
    locust -f loadtest/locustfile.py --headless -u 8 -r 8 -t 30s --host http://127.0.0.1:8000

    # A shape instead of -u/-r: steady, step, spike (peak -u users over -t), or scale-from-zero
    locust -f loadtest/locustfile.py --headless --shape step -u 16 -t 2m --csv results/step
    locust -f loadtest/locustfile.py --headless --shape scale-from-zero -u 8 --burst-seconds 60 \\
        --host http://127.0.0.1:8000 --csv results/sfz

    # Image-to-image (name the user class): a generated sketch, or --input-image PATH
    locust -f loadtest/locustfile.py ImageToImageUser --headless -u 8 -t 30s --steps 2 \
        --strength 0.5 --host http://127.0.0.1:8000

    # SageMaker: name the user class
    locust -f loadtest/locustfile.py SageMakerUser --headless -u 4 -t 5m --endpoint-name NAME
    locust -f loadtest/locustfile.py SageMakerAsyncUser --headless --shape scale-from-zero \\
        --endpoint-name NAME --bucket BUCKET --csv results/aws-sfz

Pass/fail: --max-fail-ratio and --max-p95-ms set the exit code. With --csv, the replica count
is sampled into <prefix>_replicas.csv and scale-from-zero writes <prefix>_scale_from_zero.json;
``python -m loadtest.report <prefix>`` turns them into plots and a summary.
"""

from __future__ import annotations

import json
import logging
import time

import gevent
import requests
from locust import FastHttpUser, LoadTestShape, User, constant, events, task

from loadtest import server_view, shapes
from serve_app import client

logger = logging.getLogger("sdturbo.loadtest")
HTTP_USERS: list[type[User]] = []  # filled below: the users run when none is named
AWS_USERS: list[type[User]] = []


class State:
    """What the hooks share within one Locust process, set at init."""

    plan: shapes.ScaleFromZero | None = None
    stages: list[shapes.Stage] = []
    samples: list[tuple[float, int | None, int]] = []  # (epoch s, replicas, users)
    sampler: gevent.Greenlet | None = None
    server_before: dict | None = None  # the server's metrics at the start (--metrics-url)


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    add = parser.add_argument
    add("--prompt", default="a futuristic cat floating in the clouds", help="request prompt")
    add("--image-size", type=int, default=512, help="square image size (default 512)")
    add("--steps", type=int, default=1, help="inference steps, 1-4")
    add("--image-format", default="png", choices=["png", "jpeg", "webp"])
    add("--input-image", default="", help="ImageToImageUser: the input (default: a gradient)")
    add("--strength", type=float, default=0.5, help="ImageToImageUser: strength (default 0.5)")
    add(
        "--shape",
        default="",
        choices=["", *shapes.SHAPES, "scale-from-zero"],
        help="load shape; -u is its peak users and -t its length (default: plain -u/-r/-t)",
    )
    add("--burst-seconds", type=float, default=60.0, help="scale-from-zero: burst length")
    add(
        "--zero-timeout",
        type=float,
        default=900.0,
        help="scale-from-zero: give up waiting for 0 replicas after this many seconds",
    )
    add(
        "--zero-settle",
        type=float,
        default=120.0,
        help="scale-from-zero, local: 0 replicas held this long counts as scaled to zero even "
        "if no replica was seen leave (a starting server also shows 0)",
    )
    add(
        "--metrics-url",
        default="",
        help="the server's Prometheus metrics, e.g. http://127.0.0.1:9464/metrics: the report "
        "shows the server's view (batch fill, queue wait, stage times) beside the client's",
    )
    add("--max-batch-size", type=int, default=8, help="the server's, for the batch fill")
    add("--max-fail-ratio", type=float, default=0.01, help="exit 1 above this failure ratio")
    add("--max-p95-ms", type=float, default=0.0, help="exit 1 above this p95 (0: no limit)")
    add("--endpoint-name", default="", help="SageMaker endpoint (SageMaker users)")
    add("--bucket", default="", help="S3 bucket for async requests (SageMakerAsyncUser)")
    add("--region", default=None, help="AWS region (default: the AWS configuration's)")
    add("--aws-endpoint-url", default=None, help="AWS API endpoint override, e.g. moto")
    add("--async-timeout", type=float, default=900.0, help="seconds to wait for an async image")


def request_body(options) -> dict:
    return {
        "prompt": options.prompt,
        "width": options.image_size,
        "height": options.image_size,
        "num_inference_steps": options.steps,
        "output_format": options.image_format,
    }


def input_image(options) -> str:
    """ImageToImageUser's input, base64: --input-image, else a smooth generated sketch."""
    import base64
    import io
    from pathlib import Path

    if options.input_image:
        return base64.b64encode(Path(options.input_image).read_bytes()).decode("ascii")
    from PIL import Image

    size = options.image_size
    sketch = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    buffer = io.BytesIO()
    sketch.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _error_line(response) -> str:
    try:
        error = response.json()["error"]
        return f"{response.status_code} {error['type']}: {error['message']}"
    except Exception:
        return f"{response.status_code}: {str(response.text)[:200]}"


class PredictUser(FastHttpUser):
    """POST /predict, JSON in and out; a closed loop: the next request when the image arrives."""

    wait_time = constant(0)
    network_timeout = 120.0  # a scale from zero holds the first request for the model's start
    connection_timeout = 120.0
    name = "/predict"

    def body(self) -> dict:
        return request_body(self.environment.parsed_options)

    @task
    def predict(self) -> None:
        with self.rest("POST", "/predict", json=self.body(), name=self.name) as response:
            # Locust copies the context it is given; this one reaches the request event.
            context = response.request_meta["context"]
            if response.status_code != 200:
                response.failure(_error_line(response))
            elif not (response.js or {}).get("image"):
                response.failure("200 without an image")
            else:
                context["timings"] = response.js["timings"]


class ImageToImageUser(PredictUser):
    """POST /predict with an input image and strength (image-to-image)."""

    name = "/predict image"

    def on_start(self) -> None:
        self.image = input_image(self.environment.parsed_options)

    def body(self) -> dict:
        strength = self.environment.parsed_options.strength
        return {**super().body(), "image": self.image, "strength": strength}


class InvocationsUser(FastHttpUser):
    """POST /invocations (the SageMaker contract) for raw PNG bytes."""

    wait_time = constant(0)
    network_timeout = 120.0
    connection_timeout = 120.0

    @task
    def invocations(self) -> None:
        body = request_body(self.environment.parsed_options)
        headers = {"Accept": f"image/{body['output_format']}"}
        with self.client.post(
            "/invocations", json=body, headers=headers, catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(_error_line(response))
            elif not (response.headers.get("content-type") or "").startswith("image/"):
                response.failure(f"not an image: {response.headers.get('content-type')}")


class _AwsUser(User):
    abstract = True
    wait_time = constant(0)

    def on_start(self) -> None:
        o = self.environment.parsed_options
        self.runtime, self.s3 = client.aws_clients(o.region, o.aws_endpoint_url, o.async_timeout)

    def _record(self, kind: str, name: str, call) -> None:
        """Time `call`, fire one Locust request event; boto3 errors count as failures."""
        start, started = time.time(), time.perf_counter()
        context: dict = {}
        length, error = 0, None
        try:
            result = call()
            length = sum(len(image) for image in result["images"])
            context["timings"] = result.get("timings")
        except Exception as exc:  # every failure is a data point, not a crash
            error = exc
        self.environment.events.request.fire(
            request_type=kind,
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            exception=error,
            context=context,
            start_time=start,
            response=None,
            url=None,
        )


class SageMakerUser(_AwsUser):
    """invoke_endpoint on a real-time endpoint."""

    @task
    def invoke(self) -> None:
        o = self.environment.parsed_options
        body = request_body(o)
        self._record(
            "sagemaker",
            "invoke_endpoint",
            lambda: client.invoke_sync(self.runtime, o.endpoint_name, body),
        )


class SageMakerAsyncUser(_AwsUser):
    """The async endpoint end to end: upload, invoke, wait for the output; timed submit->image."""

    @task
    def invoke_async(self) -> None:
        o = self.environment.parsed_options
        body = request_body(o)

        def call() -> dict:
            queued = client.submit_async(self.runtime, self.s3, o.endpoint_name, o.bucket, body)
            output = client.wait_for_result(
                self.s3,
                queued["OutputLocation"],
                queued.get("FailureLocation"),
                o.async_timeout,
                poll_s=1.0,
            )
            return client.decode_result(output)

        self._record("sagemaker-async", "submit->image", call)


HTTP_USERS.extend([PredictUser, InvocationsUser])
AWS_USERS.extend([SageMakerUser, SageMakerAsyncUser])


class Shape(LoadTestShape):
    """The shape picked with --shape; removed at init when none is, so -u/-r/-t work as usual."""

    use_common_options = True

    stage: str = ""

    def tick(self):
        if State.plan is not None:
            return self._scale_from_zero()
        stage = shapes.stage_at(State.stages, self.get_run_time())
        if stage is None:
            return None
        if stage.name != self.stage:
            self.stage = stage.name
            logger.info("stage %s: %d users", stage.name, stage.users)
        return stage.users, stage.spawn_rate

    def _scale_from_zero(self):
        step = State.plan.tick(time.time())
        if step is None:
            return None
        classes = list(self.runner.environment.user_classes)
        if State.plan.phase == "first_request" and PredictUser in classes:
            classes = [PredictUser]  # its JSON carries the server's timings of the cold request
        return (*step, classes)  # named every time: Locust keeps the last list otherwise


def _select_users(environment) -> None:
    options = environment.parsed_options
    named = set(options.user_classes or ())
    if not named:  # nothing named on the command line: the HTTP users only
        environment.user_classes = [u for u in environment.user_classes if u in HTTP_USERS]
    if any(u in AWS_USERS for u in environment.user_classes) and not options.endpoint_name:
        raise SystemExit("SageMaker users need --endpoint-name")
    if SageMakerAsyncUser in environment.user_classes and not options.bucket:
        raise SystemExit("SageMakerAsyncUser needs --bucket")


@events.init.add_listener
def _on_init(environment, **_) -> None:
    options = environment.parsed_options
    if options is None:  # used as a library
        return
    _select_users(environment)
    State.plan, State.stages, State.samples = None, [], []
    users = options.num_users or 8
    if not options.shape:
        environment.shape_class = None
    elif options.shape == "scale-from-zero":
        State.plan = shapes.ScaleFromZero(
            burst_users=users,
            burst_seconds=options.burst_seconds,
            zero_timeout_s=options.zero_timeout,
            first_timeout_s=options.async_timeout,
            zero_settle_s=0.0 if options.endpoint_name else options.zero_settle,
        )
    else:
        State.stages = shapes.SHAPES[options.shape](users, options.run_time or 120)


def _replica_probe(environment):
    options = environment.parsed_options
    if options.endpoint_name:
        import boto3

        sagemaker = boto3.client(
            "sagemaker", region_name=options.region, endpoint_url=options.aws_endpoint_url
        )
        return lambda: shapes.endpoint_instances(sagemaker, options.endpoint_name)
    session = requests.Session()
    return lambda: shapes.http_replicas(session, environment.host or "")


def _sample_replicas(environment, interval_s: float) -> None:
    probe = _replica_probe(environment)
    while True:
        now, count = time.time(), probe()
        runner = environment.runner
        State.samples.append((now, count, runner.user_count if runner else 0))
        if State.plan is not None:
            State.plan.observe_replicas(now, count)
        gevent.sleep(interval_s)


@events.test_start.add_listener
def _on_test_start(environment, **_) -> None:
    options = environment.parsed_options
    if options is None or State.sampler is not None:
        return
    if State.plan is not None:
        State.plan.started = time.time()
    if options.metrics_url:
        State.server_before = _scrape(options.metrics_url)
    if State.plan is not None or options.csv_prefix:
        interval = 0.5 if State.plan is not None else 1.0
        State.sampler = gevent.spawn(_sample_replicas, environment, interval)


@events.request.add_listener
def _on_request(start_time=None, response_time=0.0, exception=None, context=None, **_) -> None:
    if State.plan is None or start_time is None:
        return
    end = start_time + response_time / 1000
    timings = (context or {}).get("timings")
    State.plan.observe_request(start_time, end, exception is None, timings, str(exception or ""))


def _scrape(url: str) -> dict | None:
    try:
        return server_view.scrape(url)
    except (requests.RequestException, ValueError) as exc:
        logger.warning("no server metrics from %s: %s", url, exc)
        return None


def _server_view(environment) -> dict | None:
    """What the server saw during the run, from its metrics, beside the client's latency."""
    options = environment.parsed_options
    if State.server_before is None or (after := _scrape(options.metrics_url)) is None:
        return None
    total = environment.stats.total
    return {
        "server": server_view.summarize(State.server_before, after, options.max_batch_size),
        "client": {
            "requests": total.num_requests,
            "failures": total.num_failures,
            "p50_ms": total.get_response_time_percentile(0.5),
            "p95_ms": total.get_response_time_percentile(0.95),
        },
    }


def _write_results(prefix: str, view: dict | None = None) -> None:
    if view is not None:
        with open(f"{prefix}_server.json", "w") as f:
            json.dump(view, f, indent=2)
    with open(f"{prefix}_replicas.csv", "w") as f:
        f.write("timestamp,replicas,users\n")
        for now, count, users in State.samples:
            f.write(f"{now:.3f},{'' if count is None else count},{users}\n")
    if State.plan is not None:
        with open(f"{prefix}_scale_from_zero.json", "w") as f:
            json.dump(State.plan.summary(), f, indent=2)


def _failed_checks(environment) -> list[str]:
    options, total = environment.parsed_options, environment.stats.total
    failures = []
    if total.num_requests == 0:
        failures.append("no requests were made")
    if total.fail_ratio > options.max_fail_ratio:
        failures.append(f"failure ratio {total.fail_ratio:.3f} > {options.max_fail_ratio:g}")
    p95 = total.get_response_time_percentile(0.95)
    if options.max_p95_ms and p95 > options.max_p95_ms:
        failures.append(f"p95 {p95:.0f} ms > {options.max_p95_ms:g} ms")
    if State.plan is not None:
        summary = State.plan.summary()
        if summary["error"]:
            failures.append(summary["error"])
        elif summary["first_request"] is None:
            failures.append("scale-from-zero: no first image was recorded")
        elif not summary["first_request"]["ok"]:
            failures.append(f"scale-from-zero: first request failed: {summary['first_request']}")
    return failures


@events.quitting.add_listener
def _on_quitting(environment, **_) -> None:
    options = environment.parsed_options
    if options is None:
        return
    if State.sampler is not None:
        State.sampler.kill(block=False)
    view = _server_view(environment)
    if view is not None:
        client = view["client"]
        logger.info(
            "client: p50 %.0f ms, p95 %.0f ms; %s",
            client["p50_ms"],
            client["p95_ms"],
            server_view.describe(view["server"]),
        )
    if options.csv_prefix:
        _write_results(options.csv_prefix, view)
    if State.plan is not None:
        logger.info("scale from zero: %s", json.dumps(State.plan.summary()))
    failures = _failed_checks(environment)
    for failure in failures:
        logger.error("FAIL: %s", failure)
    if failures:
        environment.process_exit_code = 1
