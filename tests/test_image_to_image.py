"""Image-to-image at the edges: the request's fields and their rules, the input image's checks
(base64, format, truncation, decompression bombs), resizing, and batching apart from
text-to-image; then once through the real server on the tiny model. The pixels themselves are
proved against diffusers in tests/test_generate.py."""

from __future__ import annotations

import asyncio
import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from loadtest.fakes import FixedCostBackend
from serve_app.config import BatchConfig
from serve_app.engine import Engine
from serve_app.schemas import MAX_INPUT_PIXELS, GenerateRequest


def encoded(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def sketch(width: int = 80, height: int = 48) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def error_of(response) -> str:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "validation_error"
    return error["message"]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_an_input_image_is_resized_to_the_requested_size(http, fmt):
    payload = {"prompt": "a cat", "image": encoded(sketch(), fmt), "width": 64, "height": 64}
    response = http.post("/predict", json={**payload, "strength": 0.5, "num_inference_steps": 2})
    assert response.status_code == 200, response.text
    batch = http.engine.backend.last_batch
    (image,) = batch.init_images
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert batch.strength == 0.5
    assert Image.open(io.BytesIO(base64.b64decode(response.json()["image"]))).size == (64, 64)


def test_an_image_without_strength_gets_the_default(http):
    response = http.post(
        "/invocations",
        json={
            "prompt": "a cat",
            "image": encoded(sketch()),
            "width": 64,
            "height": 64,
            "num_inference_steps": 2,
        },
    )
    assert response.status_code == 200, response.text
    assert http.engine.backend.last_batch.strength == 0.5


def truncated_png() -> str:
    data = base64.b64decode(encoded(sketch(64, 64)))
    return base64.b64encode(data[: len(data) // 2]).decode("ascii")


def bomb_png(side: int = 30_000) -> str:
    """A PNG whose header claims side x side pixels, in a few hundred bytes: the check must
    refuse it from the header, before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    rows = zlib.compress(b"\x00" * 1024)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows)
    return base64.b64encode(png + chunk(b"IEND", b"")).decode("ascii")


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"image": "not base64!"}, "not valid base64"),
        ({"image": base64.b64encode(b"plain text, not an image").decode()}, "not a PNG"),
        ({"image": encoded(sketch(), "GIF")}, "not a PNG, JPEG or WebP"),
        ({"image": truncated_png()}, "cannot be decoded"),
        ({"image": bomb_png()}, f"at most {MAX_INPUT_PIXELS}"),
        ({"image": encoded(Image.new("RGB", (2049, 2049)))}, f"at most {MAX_INPUT_PIXELS}"),
        ({"strength": 0.5}, "strength applies only with an input image"),
        ({"image": encoded(sketch()), "strength": 0.2}, "must be at least 1"),
        ({"image": encoded(sketch()), "num_inference_steps": 3, "strength": 0.3}, "at least 1"),
        ({"image": encoded(sketch()), "strength": 0}, "strength"),
        ({"image": encoded(sketch()), "strength": 1.5}, "strength"),
        ({"image": ""}, "image"),
        ({"image": 7}, "image"),
    ],
)
def test_bad_image_to_image_requests_get_a_clear_422(http, fields, says):
    payload = {"prompt": "a cat", "width": 64, "height": 64, **fields}
    assert says in error_of(http.post("/predict", json=payload))
    assert http.engine.backend.calls == []  # nothing reached the model
    assert (
        http.post("/predict", json={"prompt": "ok", "width": 64, "height": 64}).status_code == 200
    )


def test_image_to_image_batches_apart_from_text_to_image_and_by_strength():
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    backend = FixedCostBackend(base_s=0.05)

    def request(**fields) -> GenerateRequest:
        return GenerateRequest(prompt="x", width=64, height=64, num_inference_steps=2, **fields)

    async def main():
        engine = Engine(backend, BatchConfig(max_batch_size=8), 30, "fake")
        await asyncio.wrap_future(engine.start())
        busy = asyncio.create_task(engine.generate(request()))
        await asyncio.sleep(0.01)
        b64 = encoded(sketch())
        queued = [
            engine.generate(request(image=b64, strength=0.5), image),
            engine.generate(request()),
            engine.generate(request(image=b64, strength=0.5), image),
            engine.generate(request(image=b64, strength=1.0), image),
            engine.generate(request()),
        ]
        results = await asyncio.gather(busy, *queued)
        engine.close()
        return results

    results = asyncio.run(main())
    # The busy call, then: image-to-image at 0.5 (2), text-to-image (2), strength 1.0 (1).
    assert backend.calls == [1, 2, 2, 1]
    assert [r.timings.batch_size for r in results[1:]] == [2, 2, 2, 1, 2]


def test_the_engine_refuses_an_image_request_without_its_decoded_image():
    from serve_app.engine.errors import InvalidRequest

    async def main():
        engine = Engine(FixedCostBackend(), BatchConfig(), 30, "fake")
        request = GenerateRequest(prompt="x", image=encoded(sketch()), num_inference_steps=2)
        with pytest.raises(InvalidRequest, match="decoded image"):
            await engine.generate(request)
        engine.close()

    asyncio.run(main())


@pytest.mark.integration
def test_image_to_image_on_the_real_server(server):
    payload = {
        "image": encoded(sketch(64, 64)),
        "strength": 0.5,
        "num_inference_steps": 2,
        "width": 64,
        "height": 64,
        "seed": 9,
    }
    first = server.predict(**payload)
    assert first.status_code == 200, first.text
    image = Image.open(io.BytesIO(base64.b64decode(first.json()["image"])))
    assert image.size == (64, 64)
    again = server.predict(**payload).json()
    assert again["image"] == first.json()["image"]  # same seed, same input: same image
    text_only = server.predict(width=64, height=64, seed=9).json()
    assert text_only["image"] != first.json()["image"]
