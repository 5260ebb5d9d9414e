"""The HTTP contract, in-process: the real routes and Engine on a fake backend (no Ray, no
model), so every status, header and body is checked in milliseconds."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from serve_app.api.errors import fault_response
from serve_app.api.parsing import ApiError, negotiate, parse_body
from serve_app.engine import errors as engine_errors
from serve_app.schemas import ErrorResponse, GenerateRequest, GenerateResponse
from tests.conftest import fake_engine, wait_for


def decode(b64: str) -> Image.Image:
    import base64

    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_predict_returns_a_png_of_the_requested_size(http):
    response = http.post("/predict", json={"prompt": "a cat", "width": 96, "height": 64, "seed": 5})
    assert response.status_code == 200, response.text
    body = GenerateResponse.model_validate(response.json())
    image = decode(body.image)
    assert (image.format, image.size) == ("PNG", (96, 64))
    assert body.seeds == [5] and body.images is None and body.model == "fake"
    assert body.timings.batch_size == 1


def test_num_images_returns_each_image_with_consecutive_seeds(http):
    body = http.post(
        "/predict",
        json={"prompt": "a cat", "width": 64, "height": 64, "seed": 100, "num_images": 3},
    ).json()
    assert body["seeds"] == [100, 101, 102]
    assert len(body["images"]) == 3 and body["images"][0] == body["image"]
    assert len(set(body["images"])) == 3


def test_invocations_text_plain_in_raw_png_out_with_custom_attributes_echoed(http):
    response = http.post(
        "/invocations",
        content=b"a lighthouse at dusk",
        headers={
            "Content-Type": "text/plain; charset=utf-8",
            "Accept": "image/png",
            "X-Amzn-SageMaker-Custom-Attributes": "trace=abc",
            "X-Some-Proxy-Header": "ignored",
        },
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["X-Amzn-SageMaker-Custom-Attributes"] == "trace=abc"
    assert Image.open(io.BytesIO(response.content)).size == (512, 512)


@pytest.mark.parametrize(
    ("accept", "media"),
    [
        (None, "application/json"),
        ("image/jpeg", "image/jpeg"),
        ("image/*", "image/webp"),
        ("text/html, image/png;q=0.5", "image/png"),
        ("image/png;q=0.1, application/json", "application/json"),
    ],
)
def test_invocations_negotiates_the_answer_by_accept(http, accept, media):
    headers = {"Accept": accept} if accept else {}
    payload = {"prompt": "x", "width": 64, "height": 64, "output_format": "webp"}
    response = http.post("/invocations", json=payload, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == media
    if media.startswith("image/"):
        image = Image.open(io.BytesIO(response.content))
        assert image.format == media.removeprefix("image/").upper()


def test_negotiate_refuses_what_it_cannot_produce():
    assert negotiate("text/html", "png") is None
    assert negotiate("image/png;q=0", "png") is None
    assert negotiate("image/png;q=bad", "png") == "image/png"


def test_invocations_406_and_415(http):
    wrong_accept = http.post("/invocations", json={"prompt": "x"}, headers={"Accept": "text/html"})
    assert wrong_accept.status_code == 406
    assert wrong_accept.json()["error"]["type"] == "not_acceptable"
    xml = http.post("/invocations", content=b"<x/>", headers={"Content-Type": "application/xml"})
    assert xml.status_code == 415 and "application/json" in xml.json()["error"]["message"]


BAD_FIELDS = [
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   \n\t"}, "prompt"),
    ({}, "prompt"),
    ({"prompt": "x", "num_inference_steps": 5}, "num_inference_steps"),
    ({"prompt": "x", "num_inference_steps": 0}, "num_inference_steps"),
    ({"prompt": "x", "width": 100}, "width"),
    ({"prompt": "x", "height": 4096}, "height"),
    ({"prompt": "x", "num_images": 50}, "num_images"),
    ({"prompt": "x", "seed": -1}, "seed"),
    ({"prompt": "x", "seed": 10**30}, "seed"),
    ({"prompt": "x", "output_format": "gif"}, "output_format"),
    ({"prompt": "x", "steps": 2}, "steps"),
    ({"prompt": "x" * 5000}, "prompt"),
    # Strict: no coercion the schema does not describe.
    ({"prompt": 12}, "prompt"),
    ({"prompt": "x", "width": True}, "width"),
    ({"prompt": "x", "num_images": "2"}, "num_images"),
    ({"prompt": "x", "seed": 1.5}, "seed"),
    ({"prompt": "x", "guidance_scale": "1.5"}, "guidance_scale"),
    ({"prompt": "x", "guidance_scale": False}, "guidance_scale"),
    ({"prompt": "x", "negative_prompt": 3}, "negative_prompt"),
]


@pytest.mark.parametrize("route", ["/predict", "/invocations"])
@pytest.mark.parametrize(("payload", "field"), BAD_FIELDS)
def test_invalid_fields_get_422_naming_the_field(http, route, payload, field):
    response = http.post(route, json=payload)
    assert response.status_code == 422, response.text
    error = ErrorResponse.model_validate(response.json()).error
    assert error.type == "validation_error" and field in error.message


def test_integral_numbers_are_integers_as_json_schema_says(http):
    response = http.post("/predict", json={"prompt": "x", "width": 64.0, "height": 64, "seed": 7.0})
    assert response.status_code == 200, response.text
    assert response.json()["seeds"] == [7]


@pytest.mark.parametrize("route", ["/predict", "/invocations"])
@pytest.mark.parametrize(
    ("body", "status", "type_"),
    [
        (b"{bad", 400, "invalid_json"),
        (b'{"prompt": "x"', 400, "invalid_json"),
        (b"", 400, "invalid_json"),
        (b'{"prompt": NaN}', 422, "validation_error"),  # NaN is a number, not a string
        (b"\xff\xfe\x00", 400, "invalid_encoding"),
        (b'["a list"]', 422, "validation_error"),
        (b'"a string"', 422, "validation_error"),
    ],
)
def test_malformed_bodies_get_4xx_with_a_clear_type(http, route, body, status, type_):
    response = http.post(route, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert response.json()["error"]["type"] == type_


@pytest.mark.parametrize("route", ["/predict", "/invocations"])
def test_oversized_bodies_get_413_declared_or_not(http, route):
    big = b'{"prompt": "' + b"a" * (7 * 1024 * 1024) + b'"}'
    declared = http.post(route, content=big, headers={"Content-Type": "application/json"})
    assert declared.status_code == 413
    assert declared.json()["error"]["type"] == "payload_too_large"
    with pytest.raises(ApiError, match="body exceeds"):  # a chunked body is counted too
        parse_body(big, "application/json")
    assert parse_body(b'{"prompt": "x"}', "application/json; charset=utf-8").prompt == "x"


def test_non_utf8_text_plain_gets_400(http):
    response = http.post(
        "/invocations", content=b"\xff\xfe bad", headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_encoding"


@pytest.mark.parametrize(
    ("error", "status", "type_", "retry"),
    [
        (engine_errors.InvalidRequest("too many"), 422, "validation_error", False),
        (engine_errors.Overloaded("full"), 503, "overloaded", True),
        (engine_errors.ShuttingDown("bye"), 503, "shutting_down", True),
        (engine_errors.ModelUnavailable("broken"), 503, "model_unavailable", True),
        (engine_errors.TimedOut("slow"), 504, "timeout", False),
        (engine_errors.OutOfMemory("oom"), 503, "out_of_memory", True),
        (engine_errors.GenerationFailed("bug"), 500, "internal_error", False),
    ],
)
def test_each_engine_error_has_its_status(error, status, type_, retry):
    response = fault_response(error)
    body = json.loads(response.body)
    assert (response.status_code, body["error"]["type"]) == (status, type_)
    assert body["error"]["message"] == str(error)
    assert (response.headers.get("retry-after") == "1") is retry


def test_overload_is_a_503_with_retry_after_and_the_server_goes_on(http):
    http.engine.backend.base_s = 0.3
    http.engine.reconfigure(http.engine.config.model_copy(update={"max_queued_requests": 1}))
    payload = {"prompt": "x", "width": 64, "height": 64}
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: http.post("/predict", json=payload), range(4)))
    shed = [r for r in responses if r.status_code == 503]
    assert shed and all(r.headers["Retry-After"] == "1" for r in shed)
    assert all(r.json()["error"]["type"] == "overloaded" for r in shed)
    assert any(r.status_code == 200 for r in responses)
    assert http.post("/predict", json=payload).status_code == 200


def test_a_pipeline_failure_is_a_500_without_a_traceback(http):
    def broken(batch):
        raise RuntimeError("secret internals")

    http.engine.backend.generate = broken
    response = http.post("/predict", json={"prompt": "x", "width": 64, "height": 64})
    assert response.status_code == 500
    assert response.json() == {
        "error": {"type": "internal_error", "message": "image generation failed"}
    }
    assert "secret" not in response.text and "Traceback" not in response.text


def test_ping_is_503_while_loading_and_200_once_warm():
    from fastapi.testclient import TestClient

    from serve_app.api import create_api

    api = create_api()
    api.state.engine = engine = fake_engine(load_s=0.5)
    with TestClient(api) as client:
        engine.start()
        loading = client.get("/ping")
        assert loading.status_code == 503 and loading.json() == {
            "status": "loading",
            "model": "fake",
            "replicas": None,  # no deployment around this engine to count them
            "in_flight": 0,
            "compile": {"state": "off"},  # the backend's own report
        }
        wait_for(lambda: client.get("/ping").status_code == 200, timeout_s=5)
        engine.draining = True
        assert client.get("/ping").json()["status"] == "draining"
    engine.close()


def test_unknown_route_and_wrong_method_get_json_errors(http):
    missing = http.get("/nope")
    assert (missing.status_code, missing.json()["error"]["type"]) == (404, "not_found")
    wrong = http.get("/predict")
    assert (wrong.status_code, wrong.json()["error"]["type"]) == (405, "method_not_allowed")


def test_openapi_publishes_the_request_schema_and_every_error(http):
    schema = http.get("/openapi.json").json()
    assert {"/predict", "/invocations", "/ping"} <= set(schema["paths"])
    request = schema["components"]["schemas"]["GenerateRequest"]
    assert request == GenerateRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    assert request["properties"]["seed"]["anyOf"][0]["minimum"] == 0
    assert all("description" in spec for spec in request["properties"].values())
    predict = schema["paths"]["/predict"]["post"]
    assert predict["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "GenerateRequest"
    )
    assert {"400", "413", "415", "422", "500", "503", "504"} <= set(predict["responses"])
    assert "Retry-After" in predict["responses"]["503"]["headers"]
    plain = schema["paths"]["/invocations"]["post"]["requestBody"]["content"]["text/plain"]
    assert plain["schema"]["pattern"] == r"\S"


def test_the_routes_import_no_torch():
    code = "import sys, serve_app.api, serve_app.engine; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]


SCHEMATHESIS = [sys.executable, "-m", "schemathesis.cli", "run", "--checks", "all",
                "--max-examples", "40", "--generation-deterministic", "--no-color"]  # fmt: skip


def schemathesis(url: str, phases: str, timeout_s: float = 900) -> str:
    """schemathesis against ``url``'s published schema: its report, which must find nothing."""
    hooks = str(Path(__file__).with_name("schemathesis_hooks.py"))
    result = subprocess.run(
        [*SCHEMATHESIS, f"{url}/openapi.json", "--phases", phases, "--request-timeout", "60"],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "SCHEMATHESIS_HOOKS": hooks},
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout
    return result.stdout


@pytest.mark.integration
def test_the_published_schema_holds_under_schemathesis_generated_phases():
    """The routes and a real Engine on the fake backend under uvicorn, in this process (port
    0): schemathesis's generated phases, thousands of requests in seconds. The examples phase
    runs against the real server (tests/test_reliability.py)."""
    from serve_app.server import uvicorn_session

    with uvicorn_session(fake_engine()) as url:
        print(schemathesis(url, "coverage,fuzzing,stateful", timeout_s=600)[-600:])
