"""The real application: Ray Serve behind its HAProxy ingress, the tiny model, over HTTP."""

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from tests.conftest import TEST_APP_ARGS, deploy_app, listeners, wait_for
from tests.test_pipeline import assert_same_pixels

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def concurrently(server, payloads: list[dict]) -> list[requests.Response]:
    with ThreadPoolExecutor(len(payloads)) as pool:
        return list(pool.map(lambda p: server.post("/predict", json=p), payloads))


def test_ping_was_503_while_loading_then_200(server):
    statuses = server.ping_statuses
    assert statuses[-1] == 200
    assert 503 in statuses, f"never saw 503 before the model was ready: {statuses}"
    # The replica count is read from Serve's controller in the background (every 2 s).
    body = wait_for(
        lambda: (b := requests.get(server.url + "/ping", timeout=5).json())["replicas"] and b
    )
    expected = {"status": "healthy", "model": "tiny", "replicas": 1, "in_flight": 0}
    assert {key: body[key] for key in expected} == expected


def test_predict_returns_a_png_of_the_requested_size(server):
    response = server.predict(width=96, height=64, seed=5, num_inference_steps=2)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (decode(body["image"]).format, decode(body["image"]).size) == ("PNG", (96, 64))
    assert body["seeds"] == [5] and body["model"] == "tiny" and body["num_inference_steps"] == 2


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_output_formats(server, fmt):
    body = server.predict(width=64, height=64, output_format=fmt).json()
    assert decode(body["image"]).format == fmt.upper()


def test_concurrent_requests_share_a_batch_and_keep_their_seeds(server):
    alone = server.predict(width=64, height=64, seed=42).json()
    assert alone["timings"]["batch_size"] == 1
    # The model is free when the first arrives, so it runs alone; the rest queue behind it
    # and go as one batch the moment it returns.
    payloads = [
        {"prompt": "a cat astronaut on the moon", "width": 64, "height": 64, "seed": s}
        for s in (42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)
    ]
    bodies = [r.json() for r in concurrently(server, payloads)]
    batch_sizes = [b["timings"]["batch_size"] for b in bodies]
    assert max(batch_sizes) >= 4, f"requests were not batched: {batch_sizes}"
    same_seed = bodies[0]
    assert_same_pixels(np.asarray(decode(alone["image"])), np.asarray(decode(same_seed["image"])))
    assert len({b["image"] for b in bodies}) == len(bodies)  # other seeds, other images


def test_requests_of_different_sizes_are_grouped_not_mixed(server):
    payloads = [{"prompt": "p", "width": w, "height": w, "seed": 1} for w in (64, 128, 64, 128)]
    for payload, response in zip(payloads, concurrently(server, payloads), strict=True):
        assert decode(response.json()["image"]).size == (payload["width"], payload["height"])


def test_invocations_text_plain_raw_png_and_custom_attributes_through_haproxy(server):
    response = server.post(
        "/invocations",
        data=b"a lighthouse at dusk",
        headers={
            "Content-Type": "text/plain; charset=utf-8",
            "Accept": "image/png",
            "X-Amzn-SageMaker-Custom-Attributes": "trace=abc",
        },
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["X-Amzn-SageMaker-Custom-Attributes"] == "trace=abc"
    assert Image.open(io.BytesIO(response.content)).size == (512, 512)


def test_long_prompt_is_truncated_by_the_real_tokenizer_and_says_so(server):
    body = server.predict(prompt="a very long prompt " * 40, width=64, height=64).json()
    assert any("truncated to the text encoder's 77 tokens" in w for w in body["warnings"])


def test_bad_requests_get_json_4xx_and_the_server_keeps_serving(server):
    for payload in ({"prompt": ""}, {"prompt": "x", "width": True}, {"prompt": "x", "k": 1}):
        response = server.post("/predict", json=payload)
        assert response.status_code == 422 and response.json()["error"]["type"]
    malformed = server.post(
        "/invocations", data=b"{bad", headers={"Content-Type": "application/json"}
    )
    assert malformed.status_code == 400
    assert requests.get(server.url + "/nope", timeout=5).status_code == 404
    assert server.predict(width=64, height=64).status_code == 200


def test_batch_knobs_are_user_config_applied_live_by_reconfigure(server):
    """A changed user_config under the same code version: Serve calls reconfigure() on the
    running replica (same process, model not reloaded), and the new batch size holds."""
    from ray import serve

    args = {**TEST_APP_ARGS, "max_batch_size": 8}
    tuned = deploy_app(server, "tuned", version="v1", **args)
    model = serve.get_deployment_handle("SDTurboModel", app_name="tuned")
    before = model.info.remote().result()
    assert before["max_batch_size"] == 8
    deploy_app(server, "tuned", version="v1", **{**args, "max_batch_size": 1})
    after = model.info.remote().result()
    assert (after["pid"], after["max_batch_size"]) == (before["pid"], 1)
    assert after["startup_timings"] == before["startup_timings"]  # not loaded again
    payloads = [{"prompt": "p", "width": 64, "height": 64, "seed": s} for s in range(6)]
    sizes = [r.json()["timings"]["batch_size"] for r in concurrently(tuned, payloads)]
    assert sizes == [1] * 6
    too_many = tuned.predict(width=64, height=64, num_images=2)
    assert too_many.status_code == 422 and "max_batch_size" in too_many.json()["error"]["message"]
    serve.delete("tuned")


def test_every_listener_is_where_it_belongs(server):
    """The server asked for 127.0.0.1: its API, the replica's own port and Serve's fallback
    proxy are on loopback; what is not names a reason in the README ("Listeners")."""
    import os
    from urllib.parse import urlparse

    from serve_app.ports import side_ports

    port = urlparse(server.url).port
    side = side_ports(port)
    sockets = listeners(os.getpid())
    haproxy = {(ip, p) for ip, p, name in sockets if name == "haproxy"}
    # Ray's HAProxy template binds its stats page and metrics on every interface (`bind *:`).
    stats, metrics = side["RAY_SERVE_HAPROXY_STATS_PORT"], side["RAY_SERVE_HAPROXY_METRICS_PORT"]
    assert haproxy == {("127.0.0.1", port), ("0.0.0.0", stats), ("0.0.0.0", metrics)}
    fallback = [ip for ip, p, _ in sockets if p == side["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"]]
    assert fallback == ["127.0.0.1"], sockets
    replicas = [(ip, p) for ip, p, name in sockets if name.startswith("ray::ServeReplica")]
    direct = [ip for ip, p in replicas if 30000 <= p < 31000]  # Serve's direct-ingress range
    assert direct and set(direct) == {"127.0.0.1"}, sockets
    # The rest is Ray's own: gRPC between its processes, which Ray binds to the node's address
    # whatever it is given (ray/_private/services.py resolve_ip_for_localhost).
    ray_core = ("gcs_server", "raylet", "ray::", "python")
    ours = {port, *side.values(), *(p for _, p in replicas if 30000 <= p < 31000)}
    others = [(ip, p, name) for ip, p, name in sockets if p not in ours]
    assert all(name.startswith(ray_core) for _, _, name in others), others
    assert all(p >= 32768 or p == 52365 for _, p, _ in others), others  # kernel-picked, agent


def test_openapi_is_served_by_the_real_app(server):
    schema = requests.get(server.url + "/openapi.json", timeout=10).json()
    assert {"/predict", "/invocations", "/ping"} <= set(schema["paths"])
    assert "GenerateRequest" in schema["components"]["schemas"]
