"""Encoding a uint8 HxWx3 image as PNG, JPEG or WebP, off the event loop.

PNG is the default (the predecessor's clients decode PNG) and lossless. Pillow's zlib PNG costs
16-30 ms for a 512x512 image on one core even at level 1, which at 100 images/s is more CPU
than a g5.xlarge has; fpng (richgel999/fpng, through the ``fpng`` package) writes a valid,
lossless PNG in about 1 ms with files ~20 % larger (measured: ``python -m loadtest.bench_encode``).
It is used when installed (the ``serve`` extra installs it); Pillow is the fallback if it is
missing or fails. JPEG and WebP are Pillow's (libjpeg-turbo: under 1 ms at q90).
"""

from __future__ import annotations

import io
import logging

import numpy as np

logger = logging.getLogger("sdturbo")

PILLOW_OPTIONS = {"png": {"compress_level": 1}, "jpeg": {"quality": 90}, "webp": {"quality": 90}}


def _fast_png():
    try:
        import fpng
    except ImportError:
        return None
    return fpng.from_ndarray


FAST_PNG = _fast_png()


def pillow_encode(array: np.ndarray, output_format: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    options = PILLOW_OPTIONS[output_format]
    Image.fromarray(array).save(buffer, format=output_format.upper(), **options)
    return buffer.getvalue()


def encode(image, output_format: str) -> bytes:
    """Encode one uint8 HxWx3 image (a numpy array or a CPU tensor)."""
    array = np.ascontiguousarray(image.numpy() if hasattr(image, "numpy") else image)
    if output_format == "png" and FAST_PNG is not None:
        try:
            return FAST_PNG(array)
        except Exception:  # never fail a request over the fast path: Pillow is always there
            logger.warning("fpng failed on a %s image; encoding with Pillow", array.shape)
    return pillow_encode(array, output_format)
