"""The real Ray Serve application on the tiny model, called over HTTP."""

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from tests.conftest import TEST_APP_ARGS
from tests.test_pipeline import assert_same_pixels

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_ping_was_503_while_loading_then_200(server):
    statuses = server.ping_statuses
    assert statuses[-1] == 200
    assert 503 in statuses, f"never saw 503 before the model was ready: {statuses}"
    assert statuses.index(503) < statuses.index(200)
    body = requests.get(server.url + "/ping", timeout=5).json()
    assert body == {"status": "healthy", "model": "tiny", "replicas": 1}


def test_predict_returns_a_png_of_the_requested_size(server):
    response = server.predict(width=96, height=64, seed=5, num_inference_steps=2)
    assert response.status_code == 200, response.text
    body = response.json()
    image = decode(body["image"])
    assert (image.format, image.size) == ("PNG", (96, 64))
    assert body["seed"] == 5 and body["seeds"] == [5]
    assert body["model"] == "tiny" and body["num_inference_steps"] == 2
    assert "images" not in body
    assert set(body["timings"]) == {
        "queue_ms",
        "inference_ms",
        "encode_ms",
        "total_ms",
        "batch_size",
    }


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_output_formats(server, fmt):
    body = server.predict(width=64, height=64, output_format=fmt).json()
    assert decode(body["image"]).format == fmt.upper()


def test_num_images_returns_each_image_with_consecutive_seeds(server):
    body = server.predict(width=64, height=64, seed=100, num_images=3).json()
    assert body["seeds"] == [100, 101, 102]
    assert len(body["images"]) == 3 and body["images"][0] == body["image"]
    arrays = [np.asarray(decode(b)) for b in body["images"]]
    assert np.abs(arrays[0].astype(int) - arrays[1].astype(int)).mean() > 5


def concurrently(server, payloads: list[dict]) -> list[requests.Response]:
    with ThreadPoolExecutor(len(payloads)) as pool:
        return list(pool.map(lambda p: server.post("/predict", json=p), payloads))


def test_concurrent_requests_run_as_one_batch_and_keep_their_seeds(server):
    alone = server.predict(width=64, height=64, seed=42).json()
    assert alone["timings"]["batch_size"] == 1
    payloads = [
        {"prompt": "a cat astronaut on the moon", "width": 64, "height": 64, "seed": s}
        for s in (42, 1, 2, 3, 4, 5, 6, 7)
    ]
    responses = concurrently(server, payloads)
    assert all(r.status_code == 200 for r in responses)
    bodies = [r.json() for r in responses]
    batch_sizes = [b["timings"]["batch_size"] for b in bodies]
    assert max(batch_sizes) >= 4, f"requests were not batched: {batch_sizes}"
    assert bodies[0]["timings"]["batch_size"] > 1 or max(batch_sizes) >= 4
    assert_same_pixels(np.asarray(decode(alone["image"])), np.asarray(decode(bodies[0]["image"])))
    assert len({b["image"] for b in bodies}) == len(bodies)  # other seeds, other images


def test_requests_of_different_sizes_are_grouped_not_mixed(server):
    payloads = [{"prompt": "p", "width": w, "height": w, "seed": 1} for w in (64, 128, 64, 128)]
    bodies = [r.json() for r in concurrently(server, payloads)]
    for payload, body in zip(payloads, bodies, strict=False):
        assert decode(body["image"]).size == (payload["width"], payload["height"])


def test_max_batch_size_changes_at_run_time_through_user_config(server):
    from ray import serve

    model = serve.get_deployment_handle("SDTurboModel", app_name="default")
    replica_before = model.info.remote().result()
    assert replica_before["max_batch_size"] == 8
    _redeploy_batch_size(1)
    try:
        payloads = [{"prompt": "p", "width": 64, "height": 64, "seed": s} for s in range(6)]
        sizes = [r.json()["timings"]["batch_size"] for r in concurrently(server, payloads)]
        assert sizes == [1] * 6
        assert model.info.remote().result()["max_batch_size"] == 1
        too_many = server.predict(width=64, height=64, num_images=2)
        assert too_many.status_code == 422
        assert "max_batch_size" in too_many.json()["error"]["message"]
    finally:
        _redeploy_batch_size(TEST_APP_ARGS["max_batch_size"])


def _redeploy_batch_size(size: int) -> None:
    from ray import serve

    from serve_app import build_app
    from serve_app.config import AppArgs

    serve.run(build_app(AppArgs(**{**TEST_APP_ARGS, "max_batch_size": size})))


BAD_JSON = [
    ({"prompt": ""}, 422, "prompt"),
    ({"prompt": "   "}, 422, "prompt"),
    ({}, 422, "prompt"),
    ({"prompt": "x", "num_inference_steps": 5}, 422, "num_inference_steps"),
    ({"prompt": "x", "num_inference_steps": 0}, 422, "num_inference_steps"),
    ({"prompt": "x", "width": 100}, 422, "width"),
    ({"prompt": "x", "height": 4096}, 422, "height"),
    ({"prompt": "x", "num_images": 50}, 422, "num_images"),
    ({"prompt": "x", "seed": -1}, 422, "seed"),
    ({"prompt": "x", "seed": 10**30}, 422, "seed"),
    ({"prompt": "x", "output_format": "gif"}, 422, "output_format"),
    ({"prompt": "x", "steps": 2}, 422, "steps"),
    ({"prompt": 12}, 422, "prompt"),
    ({"prompt": "x" * 5000}, 422, "prompt"),
]


@pytest.mark.parametrize("route", ["/predict", "/invocations"])
@pytest.mark.parametrize(("payload", "status", "field"), BAD_JSON)
def test_invalid_fields_get_422_naming_the_field(server, route, payload, status, field):
    response = server.post(route, json=payload)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == "validation_error" and field in error["message"]


@pytest.mark.parametrize("route", ["/predict", "/invocations"])
@pytest.mark.parametrize("body", [b"{bad", b'{"prompt": "x"', b"", b"\xff\xfe\x00"])
def test_malformed_json_gets_400(server, route, body):
    response = server.post(route, data=body, headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 422), response.text
    error = response.json()["error"]
    assert error["type"] in ("invalid_json", "validation_error", "invalid_encoding", "bad_request")
    if body:
        assert response.status_code == 400


@pytest.mark.parametrize("route", ["/predict", "/invocations"])
def test_oversized_body_gets_413(server, route):
    body = b'{"prompt": "' + b"a" * (7 * 1024 * 1024) + b'"}'
    response = server.post(route, data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "payload_too_large"


def test_invocations_unsupported_content_type_gets_415(server):
    response = server.post(
        "/invocations", data=b"<x/>", headers={"Content-Type": "application/xml"}
    )
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]["message"]


def test_invocations_unsupported_accept_gets_406(server):
    response = server.post("/invocations", json={"prompt": "x"}, headers={"Accept": "text/html"})
    assert response.status_code == 406
    assert response.json()["error"]["type"] == "not_acceptable"


def test_invocations_text_plain_prompt_with_raw_png_by_accept(server):
    response = server.post(
        "/invocations",
        data=b"a lighthouse at dusk",
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


def test_invocations_json_in_jpeg_bytes_out(server):
    response = server.post(
        "/invocations",
        json={"prompt": "x", "width": 64, "height": 64},
        headers={"Accept": "image/jpeg"},
    )
    assert response.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(response.content)).format == "JPEG"


def test_invocations_json_answer_by_default(server):
    response = server.post(
        "/invocations", json={"prompt": "x", "width": 64, "height": 64, "seed": 3}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert decode(response.json()["image"]).size == (64, 64)


def test_non_utf8_text_plain_gets_400(server):
    response = server.post(
        "/invocations", data=b"\xff\xfe bad", headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_encoding"


def test_long_prompt_is_truncated_and_says_so(server):
    body = server.predict(prompt="a very long prompt " * 40, width=64, height=64).json()
    assert any("truncated" in warning for warning in body["warnings"])


def test_openapi_documents_the_api(server):
    schema = requests.get(server.url + "/openapi.json", timeout=10).json()
    assert {"/predict", "/invocations", "/ping"} <= set(schema["paths"])
    fields = schema["components"]["schemas"]["GenerateRequest"]["properties"]
    assert fields["num_inference_steps"]["maximum"] == 4
    assert all("description" in spec for spec in fields.values())
    assert "422" in schema["paths"]["/predict"]["post"]["responses"]


def test_unknown_route_and_wrong_method_get_json_errors(server):
    missing = requests.get(server.url + "/nope", timeout=10)
    assert (missing.status_code, missing.json()["error"]["type"]) == (404, "not_found")
    wrong = requests.get(server.url + "/predict", timeout=10)
    assert (wrong.status_code, wrong.json()["error"]["type"]) == (405, "method_not_allowed")


def test_server_keeps_serving_after_bad_requests(server):
    for _ in range(3):
        server.post("/invocations", data=b"{bad", headers={"Content-Type": "application/json"})
    assert server.predict(width=64, height=64).status_code == 200
