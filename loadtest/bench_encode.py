"""Encoding one 512x512 image, library by library, on one core: what each response costs the CPU.

Two images: a natural photograph (matplotlib's sample "grace_hopper.jpg", resized to 512x512),
what a trained model returns; and uniform noise, what random weights return and PNG's worst
case. Each row is the median of ``--repeats`` encodes in this process (one thread), with the
encoded size. The server's PNG is fpng (``serve_app.pipeline.encoding``); the ratio printed
last is Pillow's fastest PNG over it, measured side by side here.

    python -m loadtest.bench_encode
    python -m loadtest.bench_encode --repeats 50 --output encode.json
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time

import numpy as np
from PIL import Image

from loadtest import loadgen
from serve_app.pipeline import encoding


def natural_image(size: int = 512) -> np.ndarray:
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        photo = Image.open(handle).convert("RGB")
    return np.asarray(photo.resize((size, size), Image.Resampling.LANCZOS))


def pillow(fmt: str, **options):
    def encode(array: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format=fmt, **options)
        return buffer.getvalue()

    return encode


def encoders() -> dict:
    rows = {}
    if encoding.FAST_PNG is not None:
        rows["png fpng (server)"] = encoding.FAST_PNG
    rows |= {
        "png Pillow level 1": pillow("PNG", compress_level=1),
        "png Pillow level 6 (default)": pillow("PNG", compress_level=6),
        "jpeg Pillow q90 (server)": pillow("JPEG", quality=90),
        "webp Pillow q90 (server)": pillow("WEBP", quality=90),
    }
    return rows


def measure(encode, image: np.ndarray, repeats: int) -> dict:
    data = encode(image)  # warm: the first call loads codecs
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        encode(image)
        times.append((time.perf_counter() - start) * 1000)
    return {"ms": statistics.median(times), "kib": len(data) / 1024}


def run(repeats: int) -> dict:
    images = {
        "natural": natural_image(),
        "noise": np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8),
    }
    results = {
        name: {kind: measure(encode, image, repeats) for kind, image in images.items()}
        for name, encode in encoders().items()
    }
    fast = results.get("png fpng (server)")
    slow = results["png Pillow level 1"]
    ratio = slow["natural"]["ms"] / fast["natural"]["ms"] if fast else None
    return {"repeats": repeats, "rows": results, "png_speedup_natural": ratio}


def report(result: dict) -> str:
    lines = [f"{'512x512, one thread, median':<30}{'natural ms':>11}{'KiB':>7}{'noise ms':>10}"]
    lines[0] += f"{'KiB':>7}"
    for name, row in result["rows"].items():
        n, z = row["natural"], row["noise"]
        lines.append(f"{name:<30}{n['ms']:>11.2f}{n['kib']:>7.0f}{z['ms']:>10.2f}{z['kib']:>7.0f}")
    if result["png_speedup_natural"] is not None:
        lines.append(
            f"PNG, natural image: Pillow level 1 / fpng = {result['png_speedup_natural']:.1f}x"
        )
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--output", help="write the results as JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    return loadgen.benchmark_main(parser, lambda o: run(o.repeats), report, argv)


if __name__ == "__main__":
    sys.exit(main())
