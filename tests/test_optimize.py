"""optimize: the model artifact (layout, manifest, compile cache), its upload, and the fast path."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from loadtest.fresh import run_fresh
from optimize.build import build, sha256
from optimize.pack import upload
from serve_app.config import MANIFEST_NAME, ModelSettings
from serve_app.engine.batch import ImageBatch
from serve_app.pipeline import compile_cache, loading, optimizing, toolchain
from serve_app.pipeline.generate import Generator
from serve_app.pipeline.startup import prepare
from tests.conftest import COMPILED, deploy_app
from tests.test_generate import assert_close_pixels
from tests.test_image_to_image import encoded, sketch

REPO = Path(__file__).resolve().parents[1]


def run_module(*args: str, env: dict | None = None, timeout: int = 600):
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def safetensors_dtypes(folder: Path) -> set[str]:
    from safetensors import safe_open

    dtypes = set()
    for path in folder.rglob("*.safetensors"):
        with safe_open(path, "pt") as handle:
            dtypes |= {handle.get_slice(k).get_dtype() for k in handle.keys()}  # noqa: SIM118
    return dtypes


# --- the artifact without compilation: fast -------------------------------------------------


@pytest.fixture(scope="module")
def plain_tarball(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("plain") / "model.tar.gz"
    build(ModelSettings(model="tiny", device="cpu", compile=False), output)
    return output


def test_tarball_has_the_pipeline_at_its_root_and_a_true_manifest(plain_tarball, tmp_path):
    with tarfile.open(plain_tarball) as tar:
        names = tar.getnames()
        tar.extractall(tmp_path, filter="data")
    # SageMaker extracts model.tar.gz into /opt/ml/model: no leading folder, no "./".
    assert "model_index.json" in names and MANIFEST_NAME in names
    assert not any(name.startswith(("/", "./", "..")) for name in names)
    weights = [n for n in names if n.endswith((".safetensors", ".bin", ".ckpt"))]
    assert weights and all(n.endswith(".safetensors") for n in weights)
    assert not any(n.startswith(("safety_checker", "feature_extractor")) for n in names)

    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    env = manifest["environment"]
    assert env["torch"] == torch.__version__ and env["device_kind"] == "cpu"
    assert {"triton", "diffusers", "sdturbo", "device_name"} <= set(env)
    assert manifest["dtype"] == "float32" and manifest["compile"] == {"enabled": False}
    listed = {entry["path"]: entry for entry in manifest["files"]}
    on_disk = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert set(listed) == on_disk - {MANIFEST_NAME}
    for path, entry in listed.items():
        assert entry["bytes"] == (tmp_path / path).stat().st_size
        assert entry["sha256"] == sha256(tmp_path / path)
    assert safetensors_dtypes(tmp_path) == {"F32"}


def test_extracted_artifact_loads_through_the_servers_loader(plain_tarball, tmp_path):
    with tarfile.open(plain_tarball) as tar:
        tar.extractall(tmp_path, filter="data")
    pipe = loading.load_pipeline(str(tmp_path), torch.device("cpu"), torch.float32)
    images = Generator(pipe)(ImageBatch(["a"], [""], [3], 64, 64, 1, 0.0)).images
    assert images.shape == (1, 64, 64, 3) and images.float().std() > 1


def test_a_gpu_target_gets_fp16_weights_even_when_built_without_a_gpu(tmp_path):
    output = tmp_path / "folder"
    result = build(ModelSettings(model="tiny", device="cuda", compile=False), output)
    assert (output / "model_index.json").is_file()  # a folder, for CompressionType None
    assert result.manifest["dtype"] == "float16"
    assert result.manifest["environment"]["device_kind"] == "cuda"
    assert safetensors_dtypes(output) == {"F16"}


def test_build_refuses_to_overwrite(plain_tarball):
    with pytest.raises(SystemExit, match="exists"):
        build(ModelSettings(model="tiny", device="cpu", compile=False), plain_tarball)


# --- the manifest guard: never a crash, one log line ----------------------------------------


def fake_artifact(folder: Path, **env_changes) -> Path:
    shutil.copytree(loading.resolve_model_path("tiny"), folder)
    env = {**toolchain.environment(torch.device("cpu")), **env_changes}
    manifest = {"environment": env, "compile_cache": {"file": compile_cache.CACHE_NAME}}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    (folder / compile_cache.CACHE_NAME).write_bytes(b"not a cache")
    return folder


@pytest.mark.parametrize(
    ("change", "reason"),
    [({"torch": "2.0.0"}, "torch differs"), ({"device_kind": "cuda"}, "device_kind differs")],
)
def test_a_foreign_manifest_is_not_loaded_and_says_why(tmp_path, monkeypatch, change, reason):
    calls = []
    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", lambda data: calls.append(data))
    loaded, message = compile_cache.load(
        fake_artifact(tmp_path / "m", **change), torch.device("cpu")
    )
    assert not loaded and reason in message and "not usable here" in message
    assert calls == []


def test_a_corrupt_cache_falls_back_instead_of_crashing(tmp_path):
    loaded, message = compile_cache.load(fake_artifact(tmp_path / "m"), torch.device("cpu"))
    assert not loaded and "loading failed" in message


def test_settings_that_differ_from_the_build_are_named():
    manifest = {"serve_settings": {"compile_mode": "default", "batch_buckets": [1, 2]}}
    wanted = ModelSettings(compile_mode="default", batch_buckets=[1, 4]).model_dump()
    assert compile_cache.settings_differences(manifest, wanted) == [
        "batch_buckets=[1, 4] (built with [1, 2])"
    ]


def test_start_up_logs_the_fallback_and_each_phase(tmp_path, caplog):
    folder = fake_artifact(tmp_path / "m", torch="2.0.0")
    # No warm-up sizes: nothing is called, so nothing compiles; the decision is what's tested.
    settings = ModelSettings(model=str(folder), device="cpu", compile=True, warmup_sizes=[])
    with caplog.at_level(logging.INFO, logger="sdturbo"):
        prepared = prepare(settings)
    assert set(prepared.timings) == {"weights_s", "cache_s", "optimize_s", "warmup_s"}
    lines = [r.getMessage() for r in caplog.records]
    assert any("not usable here" in line and "torch differs" in line for line in lines)
    assert any(line.startswith("start-up: weights") for line in lines)
    assert prepared.compile_status.state == "compiled"  # compile_cache_miss=compile
    assert prepared.generator.shapes.sizes == ()


def test_with_compile_cache_miss_eager_a_foreign_cache_serves_uncompiled(tmp_path, caplog):
    folder = fake_artifact(tmp_path / "m", torch="2.0.0")
    settings = ModelSettings(
        model=str(folder), device="cpu", compile=True, compile_cache_miss="eager", warmup_sizes=[]
    )
    with caplog.at_level(logging.INFO, logger="sdturbo"):
        prepared = prepare(settings)
    assert prepared.compile_status.state == "fallback"
    assert "torch differs" in prepared.compile_status.detail
    assert "COMPILE FALLBACK" in caplog.text
    assert not prepared.generator.compiled


@pytest.mark.slow
def test_a_machine_where_torch_compile_fails_serves_uncompiled_at_once(tmp_path):
    """No working C++ compiler (CXX names one that always fails; nothing is patched): the
    start-up's one-kernel smoke test fails in seconds, and the replica serves uncompiled."""
    settings = ModelSettings(model="tiny", device="cpu", compile=True, warmup_sizes=[64])
    result, _ = run_fresh(
        "loadtest.bench_startup:start",
        settings.model_dump(),
        env={"CXX": "false", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "empty-cache")},
        timeout_s=300,
    )
    assert result["compile"] == "fallback"
    assert result["fxgraph_cache"] == {"hits": 0, "misses": 0}  # nothing compiled after it
    assert result["first_image_s"] > 0  # and an image was made, uncompiled


# --- the fast path's switches and batch padding ---------------------------------------------


def test_fused_qkv_changes_the_kernels_not_the_image(tiny_model_dir):
    from diffusers.models.attention_processor import FusedAttnProcessor2_0

    def image(**switches):
        pipe = loading.load_pipeline(str(tiny_model_dir), torch.device("cpu"), torch.float32)
        pipe = optimizing.optimize(pipe, ModelSettings(model="tiny", device="cpu", **switches))
        batch = ImageBatch(["a fox"], [""], [9], 64, 64, 1, 0.0)
        return pipe, Generator(pipe)(batch).images[0]

    fused_pipe, fused = image(fuse_qkv=True)
    _, plain = image(fuse_qkv=False)
    processors = fused_pipe.unet.attn_processors.values()
    assert all(isinstance(p, FusedAttnProcessor2_0) for p in processors)
    assert (fused.int() - plain.int()).abs().max() <= 2


def test_full_architecture_has_sd_turbo_sizes():
    from serve_app.models.random_full import build_components

    parts = build_components(device="meta")  # shapes only, no memory
    millions = {
        name: sum(p.numel() for p in parts[name].parameters()) / 1e6
        for name in ("unet", "vae", "text_encoder")
    }
    # SD 2.x / SD-Turbo: UNet 865.9M, VAE 83.7M, OpenCLIP ViT-H text tower 340.4M.
    assert millions["unet"] == pytest.approx(865.9, abs=0.1)
    assert millions["vae"] == pytest.approx(83.65, abs=0.1)
    assert millions["text_encoder"] == pytest.approx(340.4, abs=0.1)
    assert parts["vae"].config.scaling_factor == 0.18215
    assert parts["scheduler"].config.timestep_spacing == "trailing"


# --- scripts --------------------------------------------------------------------------------


def test_gpu_benchmark_parses_args_and_fails_clearly_without_cuda():
    assert run_module("loadtest.bench_gpu", "--help").returncode == 0
    assert run_module("loadtest.bench_gpu", "--variants", "nope").returncode == 2
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the no-GPU message does not apply")
    proc = run_module("loadtest.bench_gpu", "--variants", "eager")
    assert proc.returncode == 2 and "needs a CUDA GPU" in proc.stderr


@pytest.mark.slow
def test_gpu_benchmark_smoke_runs_its_variants_on_cpu(tmp_path):
    output = tmp_path / "gpu.json"
    proc = run_module(
        "loadtest.bench_gpu",
        "--device",
        "cpu",
        "--model",
        "tiny",
        "--variants",
        "eager,taesd,image_to_image,serving,serving_http",
        "--batch-buckets",
        "1,2",
        "--size",
        "64",
        "--iters",
        "2",
        "--set",
        "compile=false",  # the serving row compiles by default: minutes on this CPU
        "--output",
        str(output),
        env={"RAY_ADDRESS": "local"},  # serving_http: a Ray cluster of its own
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "b1 p50 ms" in proc.stdout and "img/s b2" in proc.stdout
    # One Inductor cache for every variant, kept beside the results for the next run.
    assert f"Inductor cache: {tmp_path / 'gpu-inductor-cache'}" in proc.stdout
    assert (tmp_path / "gpu-inductor-cache").is_dir()
    assert "VAE decode at batch 1, eager vs taesd" in proc.stdout
    rows = json.loads(output.read_text())
    variants = ["eager", "taesd", "image_to_image", "serving", "serving_http"]
    assert [row["variant"] for row in rows] == variants, rows
    http = rows.pop()  # the app through Serve and HAProxy: PNG bytes out, every request a 200
    assert http["lone_http_ms_p50"] > 0 and http["statuses"] == {"200": http["clients"] * 2}
    assert http["mean_batch"] > 1  # 32 clients on max_batch_size 2: batches fill
    serving = rows.pop()
    assert serving["mean_batch"] > 1  # 32 clients on max_batch_size 2: batches fill
    assert 0 < serving["lone_outside_ms_p50"] < serving["lone_inference_ms_p50"]
    assert {r["compile_s_added"] for r in serving["uncompiled"].values()} == {0.0}
    for row in rows:
        stages = row["batches"]["1"]["stages_p50_ms"]
        expected = {"text_encoder", "unet", "vae_decode", "copy"}
        if row["variant"] == "image_to_image":
            expected.add("vae_encode")
        assert set(stages) == expected
        assert all(ms > 0 for ms in stages.values())
        assert row["batches"]["2"]["images_per_s"] > 0


def test_gpu_benchmark_stops_a_running_variant_at_its_deadline(tmp_path):
    """The deadline is the whole run's: a variant still running then is stopped (a fresh
    process importing torch and diffusers takes seconds), the next is not started, and the
    rows written say so."""
    output = tmp_path / "gpu.json"
    proc = run_module(
        "loadtest.bench_gpu", "--device", "cpu", "--model", "tiny", "--variants", "eager,taesd",
        "--batch-buckets", "1", "--size", "64", "--iters", "1", "--deadline-s", "1",
        "--output", str(output),
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    (row,) = json.loads(output.read_text())
    assert row["variant"] == "eager" and row["error"].startswith("stopped at the deadline")
    assert "deadline reached: taesd and after not run" in proc.stdout


def test_cli_help_lists_the_build_options():
    proc = run_module("optimize", "build", "--help")
    assert proc.returncode == 0
    for option in (
        "--model",
        "--output",
        "--device",
        "--compile",
        "--no-compile",
        "--batch-buckets",
        "--warmup-sizes",
        "--cuda-graphs",
        "--prompt-cache-size",
        "--upload",
    ):
        assert option in proc.stdout


# --- upload to S3 (moto server on loopback) --------------------------------------------------


@pytest.fixture
def s3(moto_url, aws_credentials):
    import boto3

    client = boto3.client("s3", endpoint_url=moto_url)
    client.create_bucket(Bucket="models")
    return moto_url, client


@pytest.mark.integration
def test_upload_tarball_and_folder_with_progress(plain_tarball, tmp_path, s3, capsys):
    endpoint, client = s3
    urls = upload(plain_tarball, "s3://models/sd-turbo/", endpoint)
    assert urls == ["s3://models/sd-turbo/model.tar.gz"]
    head = client.head_object(Bucket="models", Key="sd-turbo/model.tar.gz")
    assert head["ContentLength"] == plain_tarball.stat().st_size
    assert "100.0%" in capsys.readouterr().err

    with tarfile.open(plain_tarball) as tar:
        tar.extractall(tmp_path / "folder", filter="data")
    urls = upload(tmp_path / "folder", "s3://models/uncompressed", endpoint)
    keys = {
        o["Key"]
        for o in client.list_objects_v2(Bucket="models", Prefix="uncompressed/")["Contents"]
    }
    assert "uncompressed/model_index.json" in keys
    assert f"uncompressed/{MANIFEST_NAME}" in keys
    assert len(urls) == len(keys)


# --- the compiled artifact, end to end (slow) ------------------------------------------------


@pytest.mark.slow
def test_compiled_artifact_ships_its_cache_and_shapes(compiled_artifact):
    manifest = compile_cache.read_manifest(compiled_artifact)
    compiled = manifest["compile"]
    assert compiled["enabled"] and compiled["mode"] == "default"
    assert compiled["shapes"] == [{"batch_size": 1, "height": 64, "width": 64}]
    cache = manifest["compile_cache"]
    assert (compiled_artifact / cache["file"]).stat().st_size == cache["bytes"] > 0
    # The UNet step, the VAE decode and the text encoder (fullgraph: a graph break fails the
    # build), each compiled for the one shape.
    assert cache["artifacts"].get("inductor", 0) >= 3
    assert any((compiled_artifact / compile_cache.KERNELS_NAME).rglob("*.so"))
    assert manifest["serve_settings"]["batch_buckets"] == [1]


@pytest.mark.slow
def test_a_cache_built_under_another_driver_loads_and_says_so(
    compiled_artifact, tmp_path, monkeypatch, caplog
):
    """Driver, ptxas, diffusers and Inductor flags do not block the cache (torch, triton, the
    device and CUDA do): it loads, and the log names each difference."""
    folder = tmp_path / "artifact"
    shutil.copytree(compiled_artifact, folder)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["environment"].update(driver="535.54.03", diffusers="0.30.0")
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    with caplog.at_level(logging.WARNING, logger="sdturbo"):
        loaded, message = compile_cache.load(folder, torch.device("cpu"))
    assert loaded, message
    (warning,) = [r.getMessage() for r in caplog.records if "built elsewhere" in r.getMessage()]
    assert "driver (artifact: 535.54.03, here: " in warning
    assert "diffusers (artifact: 0.30.0, here: " in warning


@pytest.mark.slow
def test_a_fresh_process_starts_from_the_cache_without_compiling_anew(compiled_artifact, tmp_path):
    settings = ModelSettings(model=str(compiled_artifact), device="cpu", **COMPILED)
    result, _ = run_fresh(
        "loadtest.bench_startup:start",
        settings.model_dump(),
        # One thread, as in a Ray replica with num_cpus=1; the build used every core.
        env={"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "empty-cache"), "OMP_NUM_THREADS": "1"},
        timeout_s=300,
    )
    # Every graph (UNet step, VAE decode, text encoder) came from the artifact; nothing
    # compiled anew.
    assert result["compile"] == "compiled"
    assert result["fxgraph_cache"]["hits"] >= 3
    assert result["fxgraph_cache"]["misses"] == 0
    assert result["cache_mismatches"] == 0  # the metric's source: a loaded cache, no misses
    # The compiled fast path draws what the eager path does (tolerance: tests/test_generate).
    pipe = loading.load_pipeline(str(compiled_artifact), torch.device("cpu"), torch.float32)
    eager = Generator(pipe)(ImageBatch(["a cat"], [""], [1], 64, 64, 1, 0.0)).images[0]
    assert_close_pixels(torch.tensor(result["pixels"], dtype=torch.uint8), eager)


@pytest.fixture(scope="module")
def artifact_server(compiled_artifact, server):
    from ray import serve

    app = deploy_app(
        server, "artifact", version="v1", model=str(compiled_artifact), device="cpu", **COMPILED
    )
    yield app
    serve.delete("artifact")


@pytest.mark.slow
@pytest.mark.integration
def test_server_starts_from_the_extracted_artifact_and_returns_an_image(
    artifact_server, compiled_artifact
):
    assert 503 in artifact_server.ping_statuses and artifact_server.ping_statuses[-1] == 200
    response = artifact_server.predict(width=64, height=64, seed=3)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == str(compiled_artifact)


@pytest.mark.slow
@pytest.mark.integration
def test_no_request_ever_compiles(artifact_server, server):
    """Sizes outside the compiled set run on the uncompiled modules, in about eager time: each
    against the same size on the shared server (the tiny model, never compiled), same run;
    text-to-image and image-to-image."""

    def timed(target, width: int, height: int, **fields) -> float:
        start = time.perf_counter()
        response = target.predict(width=width, height=height, seed=1, **fields)
        assert response.status_code == 200, (width, height, response.text)
        return time.perf_counter() - start

    sizes = [(w, h) for w in (72, 80, 88, 96, 104) for h in (64, 72, 80, 96)]  # 20 shapes
    artifact_s, eager_s = [], []
    for size in sizes:  # interleaved: both servers see the same load from the rest of the run
        artifact_s.append(timed(artifact_server, *size))
        eager_s.append(timed(server, *size))
    guided = artifact_server.predict(width=64, height=64, guidance_scale=2.0)
    assert guided.status_code == 200  # guidance doubles the UNet batch: not compiled either
    # Image-to-image at the compiled size (the VAE encoder warmed with the decoder) and at
    # sizes outside it, each strength a different start in the schedule.
    image = encoded(sketch(64, 64))
    for size in [(64, 64), (72, 64), (80, 96)]:
        for steps, strength in [(2, 0.5), (4, 0.75), (1, 1.0)]:
            fields = {"image": image, "strength": strength, "num_inference_steps": steps}
            artifact_s.append(timed(artifact_server, *size, **fields))
            eager_s.append(timed(server, *size, **fields))
    # Compiling one shape takes tens of seconds here, an order of magnitude more than all 20
    # eager requests: one compile alone would break the ratio, a scheduling hiccup would not.
    assert sum(artifact_s) < 10 * sum(eager_s), (artifact_s, eager_s)


@pytest.mark.slow
@pytest.mark.integration
def test_the_reject_policy_names_the_compiled_sizes_and_applies_live(
    artifact_server, compiled_artifact, server
):
    """``uncompiled`` is a ``user_config`` knob: switched on the running replica (same process,
    model not loaded again), then back."""
    from ray import serve

    model = serve.get_deployment_handle("SDTurboModel", app_name="artifact")
    before = model.info.remote().result()
    args = {"model": str(compiled_artifact), "device": "cpu", **COMPILED}
    strict = deploy_app(server, "artifact", version="v1", uncompiled="reject", **args)
    after = model.info.remote().result()
    assert (after["pid"], after["startup_timings"]) == (before["pid"], before["startup_timings"])
    refused = strict.predict(width=128, height=128)
    assert refused.status_code == 422
    assert "64x64 with guidance_scale <= 1" in refused.json()["error"]["message"]
    assert strict.predict(width=64, height=64).status_code == 200
    deploy_app(server, "artifact", version="v1", **args)
    assert strict.predict(width=128, height=128).status_code == 200
