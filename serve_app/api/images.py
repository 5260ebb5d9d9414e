"""Image-to-image's input: base64 in, a uint8 height x width x 3 array out, or a clear 422.

The pixel count is read from the image's header and checked before anything is decoded (a
small file can hold a huge image: a decompression bomb). The image is converted to RGB (alpha
and palettes dropped, as diffusers' image processor does) and resized to the request's width x
height with Lanczos (diffusers' default resampling), so image-to-image requests batch by the
size they ask for. Runs in a worker thread, off the event loop.
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from serve_app.api.errors import ApiError
from serve_app.schemas import INPUT_FORMATS, MAX_INPUT_PIXELS, GenerateRequest


def _refuse(message: str) -> ApiError:
    return ApiError(422, "validation_error", f"image: {message}")


def decode_input_image(request: GenerateRequest) -> np.ndarray:
    try:
        data = base64.b64decode(request.image, validate=True)
    except (binascii.Error, ValueError):
        raise _refuse("not valid base64") from None
    try:
        with Image.open(io.BytesIO(data), formats=INPUT_FORMATS) as image:
            width, height = image.size
            if width * height > MAX_INPUT_PIXELS:
                raise _refuse(
                    f"{width}x{height} is {width * height} pixels; at most {MAX_INPUT_PIXELS}"
                )
            rgb = image.convert("RGB")  # decodes: a truncated file fails here
    except ApiError:
        raise
    except Image.DecompressionBombError:  # Pillow's own limit, far above ours
        raise _refuse(f"too many pixels; at most {MAX_INPUT_PIXELS}") from None
    except UnidentifiedImageError:
        raise _refuse("not a PNG, JPEG or WebP image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise _refuse(f"cannot be decoded ({exc})") from None
    if rgb.size != (request.width, request.height):
        rgb = rgb.resize((request.width, request.height), Image.Resampling.LANCZOS)
    return np.asarray(rgb, dtype=np.uint8)
