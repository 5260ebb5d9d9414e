"""One command that measures the GPU path: the full SD-Turbo architecture, variant by variant.

Each variant runs in a fresh process, through the server's own code
(``pipeline.startup.prepare``: load, optimise, compile, capture CUDA graphs and warm up every
batch bucket; then the ``Generator``, uint8 images on the host, as a replica runs it). It
reports per-stage times from CUDA events (text encoder, UNet loop, VAE decode, copy to the
host), p50 and p90 per call at each batch size, images per second, the warm-up (compile and
capture) time and the FX-graph cache's hit rate. Each row is written to ``--output`` as it
finishes. ``--deadline-s`` is global: no variant starts after it, and one still running then is
stopped, so a run cut short keeps what it measured, in the order given. Every variant shares
one Inductor cache, ``--cache-dir`` (default: beside ``--output``), kept after the run: a later
run given the same folder (on a device, carried back from the last run's results) continues
instead of compiling again. Default model: random weights of the full architecture
(``serve_app.models.random_full``), whose timing is the real model's.

    python -m loadtest.bench_gpu --output gpu.json
    python -m loadtest.bench_gpu --variants compile,eager,graphs --batch-buckets 1,4
    # VAE decode, full decoder vs AutoencoderTiny, on any machine (slow on a CPU):
    python -m loadtest.bench_gpu --device cpu --variants eager,taesd --batch-buckets 1 --iters 1
    # The serving engine on the GPU (compiled, as a replica runs it): batch fill, the time a
    # lone request spends outside the pipeline call, and requests at uncompiled shapes.
    python -m loadtest.bench_gpu --variants serving --batch-buckets 1,4,8
    # The app over HTTP as the container runs it (Ray Serve, HAProxy): a lone request end to
    # end, JSON in and PNG bytes out, and 32 clients.
    python -m loadtest.bench_gpu --variants serving_http --batch-buckets 1,4,8

Anchors (A100, SD-Turbo 512x512, 1 step): torch.compile ~47 ms/image at batch 1, ~26 images/s at
batch 4; ORT-TensorRT 36 ms, 33.5 images/s (HF blog on SD-Turbo with ONNX Runtime).
Targets on an H100/H200: batch 1 <= 15 ms with the full decoder, >= 100 images/s at the best
batch (>= 250 with AutoencoderTiny), a lone request over HTTP <= 25 ms p50.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtest.fresh import FreshProcessFailed, run_fresh
from serve_app.config import parse_int_list, parse_key_value

COMPILED = {"channels_last": True, "fuse_qkv": True, "compile": True, "cuda_graphs": True}
EAGER = {"channels_last": False, "fuse_qkv": False, "cuda_graphs": False}
# Each variant is the server's settings for it; "eager" is the baseline every other row changes.
# "compile" is the server's GPU path: own step, compiled UNet step, decode and text encoder,
# each bucket a CUDA graph per step count.
VARIANTS: dict[str, dict] = {
    "compile": COMPILED,
    "eager": EAGER,
    "graphs": {**EAGER, "cuda_graphs": True},  # CUDA graphs of the uncompiled modules
    "compile_no_graphs": {**COMPILED, "cuda_graphs": False},
    # Inductor's default mode against the server's default (max-autotune-no-cudagraphs): the
    # row that picks the server's default mode.
    "compile_default": {**COMPILED, "compile_mode": "default"},
    "compile_taesd": {**COMPILED, "vae": "taesd-random"},
    # Image-to-image on the server's GPU path: strength 0.5 at 2 steps (one denoising step).
    "image_to_image": COMPILED,
    "taesd": {**EAGER, "vae": "taesd-random"},
    "channels_last": {**EAGER, "channels_last": True},
    "fuse_qkv": {**EAGER, "channels_last": True, "fuse_qkv": True},
    "xformers": {**EAGER, "channels_last": True, "attention": "xformers"},
    "cudnn_benchmark": {**EAGER, "channels_last": True, "fuse_qkv": True, "cudnn_benchmark": True},
    "compile_inductor_flags": {**COMPILED, "inductor_flags": True},
    # Inductor's own CUDA graphs (cudagraph trees) instead of the generate step's.
    "compile_inductor_cudagraphs": {
        **COMPILED,
        "cuda_graphs": False,
        "compile_mode": "max-autotune",
    },
}
STAGES = ("text_encoder", "unet", "vae_decode", "copy")
SERVING = "serving"  # not a setting: the compiled engine under load (``serve``)
HTTP = "serving_http"  # the app through Ray Serve and HAProxy, as the container runs it


def measure(job: dict) -> dict:
    """In a fresh process: prepare one variant as a replica would, then time every batch size."""
    import dataclasses

    import numpy as np
    import torch

    from serve_app.config import ModelSettings
    from serve_app.engine.batch import ImageBatch
    from serve_app.pipeline.startup import prepare

    settings = ModelSettings.model_validate(
        {
            "model": job["model"],
            "device": job["device"],
            "warmup_sizes": [job["size"]],
            "batch_buckets": job["batch_sizes"],
            "prompt_cache_size": 0,  # every call runs the text encoder: its time is measured
            **VARIANTS[job["variant"]],
            **job["overrides"],
        }
    )
    if settings.attention == "xformers":
        import xformers  # noqa: F401  (the gpu extra): fail the row rather than time SDPA
    prepared = prepare(settings)
    generate = prepared.generator
    cuda = job["device"] == "cuda"
    rows = {}
    image_to_image = job["variant"] == "image_to_image"
    for n in job["batch_sizes"]:
        size = job["size"]
        steps = 2 if image_to_image else job["steps"]
        batch = ImageBatch(
            ["a photo of a cat"] * n, [""] * n, list(range(n)), size, size, steps, 0.0
        )
        if image_to_image:
            sketch = np.linspace(0, 255, size * size * 3).astype(np.uint8).reshape(size, size, 3)
            batch = dataclasses.replace(batch, init_images=[sketch] * n, strength=0.5)
        generate(batch)
        calls, stages = [], {stage: [] for stage in STAGES}
        for _ in range(job["iters"]):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            # Returns uint8 on the host: the device's work for the call is done.
            stages_ms = generate(batch).stages_ms
            calls.append((time.perf_counter() - start) * 1000)
            for stage, ms in stages_ms.items():
                stages.setdefault(stage, []).append(ms)
        p50 = statistics.median(calls)
        rows[n] = {
            "p50_ms": p50,
            "p90_ms": sorted(calls)[min(len(calls) - 1, int(0.9 * len(calls)))],
            "ms_per_image": p50 / n,
            "images_per_s": 1000 * n / p50,
            "stages_p50_ms": {s: statistics.median(v) for s, v in stages.items() if v},
        }
    cache = prepared.cache
    return {
        "variant": job["variant"],
        "settings": VARIANTS[job["variant"]],
        "warmup_s": prepared.timings["warmup_s"],
        "compile": prepared.compile_status.state,
        "fxgraph_cache": cache,
        "batches": rows,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "max_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }


def serve(job: dict) -> dict:
    """In a fresh process: the replica's engine on the compiled pipeline, without Ray.

    Reports what only the real model shows: batch fill under 32 closed-loop clients, the time a
    lone request spends outside the pipeline call (queue, hand-off, PNG encode), and that a
    request at an uncompiled shape runs without compiling (Dynamo's compile time unchanged).
    """
    import asyncio

    from torch._dynamo.utils import calculate_time_spent

    from serve_app.config import BatchConfig, ModelSettings
    from serve_app.engine import Engine
    from serve_app.pipeline.backend import DiffusersBackend
    from serve_app.schemas import GenerateRequest

    size = job["size"]
    settings = ModelSettings.model_validate(
        {
            "model": job["model"],
            "device": job["device"],
            "warmup_sizes": [size],
            "batch_buckets": job["batch_sizes"],
            **COMPILED,
            **job["overrides"],
        }
    )
    max_batch = max(job["batch_sizes"])
    engine = Engine(
        DiffusersBackend(settings), BatchConfig(max_batch_size=max_batch), 600.0, job["model"]
    )

    def compile_s() -> float:
        return sum(calculate_time_spent().values())

    async def one(**fields):
        fields = {"prompt": "a photo of a cat", "width": size, "height": size, **fields}
        return await engine.generate(GenerateRequest.model_validate(fields))

    async def run() -> dict:
        started = time.perf_counter()
        await asyncio.wrap_future(engine.start())
        ready_s = time.perf_counter() - started
        lone = []
        for seed in range(job["iters"] + 1):
            result = await one(seed=seed)
            t = result.timings
            lone.append((t.total_ms - t.inference_ms - t.encode_ms, t.encode_ms, t.inference_ms))
        lone = lone[1:]  # the first call pays one-off costs (encoder threads)
        clients, per_client = 32, max(2, job["iters"] // 2)
        batches = []

        async def client(index: int):
            for i in range(per_client):
                result = await one(seed=index * 1000 + i)
                batches.append(result.timings.batch_size)

        start = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        loaded_s = time.perf_counter() - start
        uncompiled = {}
        for name, fields in (
            ("256x256", {"width": 256, "height": 256}),
            ("guidance 2.0", {"guidance_scale": 2.0, "num_inference_steps": 2}),
        ):
            before = compile_s()
            start = time.perf_counter()
            await one(seed=1, **fields)
            uncompiled[name] = {
                "ms": (time.perf_counter() - start) * 1000,
                "compile_s_added": compile_s() - before,
            }
        return {
            "variant": SERVING,
            "ready_s": ready_s,
            "fxgraph_cache": engine.backend.prepared.cache,
            "lone_outside_ms_p50": statistics.median(x[0] for x in lone),
            "lone_encode_ms_p50": statistics.median(x[1] for x in lone),
            "lone_inference_ms_p50": statistics.median(x[2] for x in lone),
            "clients": clients,
            "max_batch_size": max_batch,
            "mean_batch": statistics.mean(batches),
            "images_per_s": len(batches) / loaded_s,
            "uncompiled": uncompiled,
        }

    try:
        return asyncio.run(run())
    finally:
        engine.close()


def serve_http(job: dict) -> dict:
    """In a fresh process: the app as ``sdturbo serve`` and the container run it (Ray Serve,
    HAProxy, the compiled replica). A lone request end to end, JSON body in and PNG bytes out
    (``/invocations``, ``Accept: image/png``), then 32 closed-loop clients on ``/predict``."""
    import requests

    from loadtest import loadgen
    from serve_app.config import AppArgs
    from serve_app.ports import reserved_port
    from serve_app.server import serve_session, wait_until_ready

    size = job["size"]
    args = AppArgs.model_validate(
        {
            "model": job["model"],
            "device": job["device"],
            "warmup_sizes": [size],
            "batch_buckets": job["batch_sizes"],
            "max_batch_size": max(job["batch_sizes"]),
            "request_timeout_s": 600,
            **COMPILED,
            **job["overrides"],
        }
    )
    body = {"prompt": "a photo of a cat", "width": size, "height": size}
    with reserved_port() as port, serve_session(args, port=port) as url:
        started = time.perf_counter()
        wait_until_ready(url, timeout_s=1800)
        ready_s = time.perf_counter() - started
        lone = []
        with requests.Session() as session:
            for seed in range(job["iters"] + 1):
                start = time.perf_counter()
                response = session.post(
                    url + "/invocations",
                    json={**body, "seed": seed},
                    headers={"Accept": "image/png"},
                    timeout=600,
                )
                lone.append((time.perf_counter() - start) * 1000)
                assert response.status_code == 200, response.text
                assert response.content.startswith(b"\x89PNG"), response.headers
        clients, per_client = 32, max(2, job["iters"] // 2)
        samples = loadgen.run(
            loadgen.closed_loop(
                url + "/predict",
                lambda c, i: loadgen.payload(size, seed=c * 1000 + i),
                clients,
                requests_per_client=per_client,
                timeout_s=600,
            )
        )
    summary = loadgen.summarize(samples)
    return {
        "variant": HTTP,
        "ready_s": ready_s,
        "lone_http_ms_p50": statistics.median(lone[1:]),  # the first warms the connection
        "clients": clients,
        "statuses": summary["statuses"],
        "p50_ms": summary["p50_ms"],
        "mean_batch": summary.get("mean_batch_size"),
        "max_batch_size": args.max_batch_size,
        "images_per_s": summary["per_s"],
    }


def run_variant(variant: str, args: argparse.Namespace, cache: Path, timeout_s: float) -> dict:
    job = {
        "variant": variant,
        "model": args.model,
        "device": args.device,
        "batch_sizes": args.batch_sizes,
        "size": args.size,
        "steps": args.steps,
        "iters": args.iters,
        "overrides": dict(args.set),
    }
    target = {SERVING: "serve", HTTP: "serve_http"}.get(variant, "measure")
    try:
        result, _ = run_fresh(
            f"loadtest.bench_gpu:{target}",
            job,
            env={"TORCHINDUCTOR_CACHE_DIR": str(cache)},
            timeout_s=timeout_s,
        )
    except FreshProcessFailed as exc:
        return {"variant": variant, "error": " | ".join(str(exc).splitlines()[-3:])}
    except subprocess.TimeoutExpired:
        return {"variant": variant, "error": f"stopped at the deadline, after {timeout_s:.0f} s"}
    return result


def cache_folder(args: argparse.Namespace) -> Path:
    """--cache-dir, else beside --output (``gpu.json`` -> ``gpu-inductor-cache``), else a
    temporary folder that goes with the run."""
    if args.cache_dir:
        return Path(args.cache_dir)
    if args.output:
        output = Path(args.output)
        return output.with_name(f"{output.stem}-inductor-cache")
    return Path(tempfile.mkdtemp(prefix="inductor-gpu-"))


def folder_mib(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def table(rows: list[dict], batch_sizes: list[int]) -> str:
    header = f"{'variant':<24}{'b1 p50 ms':>10}{'b1 p90':>8}" + "".join(
        f"{f'img/s b{n}':>11}" for n in batch_sizes
    )
    header += "  b1 stages ms (te/unet/vae/copy)   warm-up s  FX hit/miss"
    lines = [header]
    for row in rows:
        if "error" in row:
            lines.append(f"{row['variant']:<24}failed: {row['error'][:120]}")
            continue
        if row["variant"] == SERVING:
            lines.append(serving_line(row))
            continue
        if row["variant"] == HTTP:
            lines.append(
                f"{HTTP:<24}ready in {row['ready_s']:.1f} s; lone request over HTTP (JSON in, "
                f"PNG out) p50 {row['lone_http_ms_p50']:.1f} ms; {row['clients']} clients: "
                f"{row['images_per_s']:.1f} img/s, p50 {row['p50_ms']:.0f} ms, mean batch "
                f"{row['mean_batch'] or 0:.2f} of {row['max_batch_size']}, {row['statuses']}"
            )
            continue
        batches = {int(n): r for n, r in row["batches"].items()}
        first = batches[min(batches)]
        stages = "/".join(f"{first['stages_p50_ms'].get(s, 0):.1f}" for s in STAGES)
        cache = row["fxgraph_cache"]
        line = f"{row['variant']:<24}{first['p50_ms']:>10.1f}{first['p90_ms']:>8.1f}"
        line += "".join(f"{batches[n]['images_per_s']:>11.1f}" for n in batch_sizes)
        line += f"  {stages:<33}{row['warmup_s']:>10.1f}  {cache['hits']}/{cache['misses']}"
        lines.append(line)
    by_name = {row["variant"]: row for row in rows if "error" not in row and "batches" in row}
    for full, tiny in (("eager", "taesd"), ("compile", "compile_taesd")):
        if full in by_name and tiny in by_name:
            a = by_name[full]["batches"][min(by_name[full]["batches"])]["stages_p50_ms"]
            b = by_name[tiny]["batches"][min(by_name[tiny]["batches"])]["stages_p50_ms"]
            lines.append(
                f"VAE decode at batch 1, {full} vs {tiny}: {a['vae_decode']:.1f} ms vs "
                f"{b['vae_decode']:.1f} ms ({a['vae_decode'] / b['vae_decode']:.1f}x)"
            )
    lines.append(
        "target (H100/H200): batch 1 <= 15 ms (full decoder); >= 100 images/s at the best batch,"
        " >= 250 with AutoencoderTiny; lone request over HTTP <= 25 ms p50"
    )
    return "\n".join(lines)


def serving_line(row: dict) -> str:
    shapes = ", ".join(
        f"{name} {r['ms']:.0f} ms (+{r['compile_s_added']:.1f} s compile)"
        for name, r in row["uncompiled"].items()
    )
    return (
        f"{SERVING:<24}ready in {row['ready_s']:.1f} s (FX hit/miss "
        f"{row['fxgraph_cache']['hits']}/{row['fxgraph_cache']['misses']}); lone request: "
        f"{row['lone_outside_ms_p50']:.2f} ms outside the pipeline "
        f"call (encode {row['lone_encode_ms_p50']:.1f} ms, inference "
        f"{row['lone_inference_ms_p50']:.1f} ms); {row['clients']} clients: mean batch "
        f"{row['mean_batch']:.2f} of {row['max_batch_size']}, {row['images_per_s']:.1f} img/s; "
        f"uncompiled shapes: {shapes}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        default="sd-turbo-random",
        help="sd-turbo-random (default), a local diffusers folder, or a hub id",
    )
    parser.add_argument(
        "--variants",
        default="compile,eager,graphs,compile_taesd,serving_http,serving,image_to_image,"
        "compile_default",
        help=f"comma-separated, from: {', '.join([*VARIANTS, SERVING, HTTP])}",
    )
    parser.add_argument(
        "--batch-buckets",
        dest="batch_sizes",
        type=parse_int_list,
        default=[1, 4, 8, 16],
        help="the batch buckets prepared, each measured (default: %(default)s)",
    )
    parser.add_argument("--size", type=int, default=512, help="square image size")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--iters", type=int, default=10, help="timed calls per batch size")
    parser.add_argument(
        "--device",
        choices=["cuda", "cpu"],
        default="cuda",
        help="cpu: slow, but per-stage figures still compare",
    )
    parser.add_argument(
        "--set",
        type=parse_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a model setting for every variant, e.g. --set compile_mode=default (quicker "
        "to compile than the server's max-autotune-no-cudagraphs)",
    )
    parser.add_argument("--output", help="write results as JSON here, row by row")
    parser.add_argument(
        "--deadline-s",
        type=float,
        default=540.0,
        help="the whole run's limit: no variant starts after it and one running then is stopped "
        "(default: %(default)s, under a 10-minute device command); the rows done are kept",
    )
    parser.add_argument(
        "--cache-dir",
        help="the Inductor cache every variant shares, kept after the run so that the next "
        "continues from it (default: beside --output)",
    )
    args = parser.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = set(args.variants) - {*VARIANTS, SERVING, HTTP}
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "bench_gpu needs a CUDA GPU: torch.cuda.is_available() is False on this machine "
            f"(torch {torch.__version__}); --device cpu runs it slowly",
            file=sys.stderr,
        )
        return 2
    rows = []
    deadline = time.monotonic() + args.deadline_s
    # One cache for every variant: what one compiled ("serving" has "compile"'s settings, as a
    # replica on an artifact) the next finds, and so does the next run given this folder.
    cache = cache_folder(args)
    cache.mkdir(parents=True, exist_ok=True)
    for variant in args.variants:
        left_s = deadline - time.monotonic()
        if left_s <= 0:
            print(f"deadline reached: {variant} and after not run", flush=True)
            break
        print(f"{variant}...", flush=True)
        rows.append(run_variant(variant, args, cache, timeout_s=left_s))
        if args.output:  # after each variant: a run cut short keeps what it measured
            with open(args.output, "w") as handle:
                json.dump(rows, handle, indent=2)
    print(table(rows, args.batch_sizes))
    print(f"Inductor cache: {cache} ({folder_mib(cache):.1f} MiB)")
    return 0 if all("error" not in row for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
