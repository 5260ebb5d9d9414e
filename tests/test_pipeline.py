"""The diffusers side on the tiny model: the real from_pretrained path, seeds, prompts, encoding."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from serve_app.config import ModelSettings
from serve_app.engine.batch import ImageBatch
from serve_app.engine.errors import InvalidRequest
from serve_app.pipeline import encoding, loading, optimizing
from serve_app.pipeline.backend import DiffusersBackend
from serve_app.pipeline.generate import Generator, StaticShapes
from serve_app.schemas import GenerateRequest


def batch(seeds, prompts=None, size=64, steps=1):
    prompts = prompts or ["a red fox"] * len(seeds)
    return ImageBatch(prompts, [""] * len(seeds), seeds, size, size, steps, 0.0)


def assert_same_pixels(a, b) -> None:
    # Batched float32 convolutions may round differently from single ones: allow an off-by-one
    # in a handful of pixels, nothing more.
    diff = np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int))
    assert diff.max() <= 1, f"pixels differ by up to {diff.max()}"
    assert (diff > 0).mean() < 1e-3


def test_tiny_model_is_a_diffusers_folder_of_sd_turbo_shape(tiny_model_dir, tiny_pipe):
    index = json.loads((tiny_model_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert type(tiny_pipe).__name__ == "StableDiffusionPipeline"
    assert tiny_pipe.vae_scale_factor == 8  # as SD-Turbo's VAE: 512 px -> 64 latent
    assert tiny_pipe.scheduler.config.timestep_spacing == "trailing"


def test_generate_returns_uint8_images_on_the_host(tiny_pipe):
    images = Generator(tiny_pipe)(ImageBatch(["a"], [""], [1], 96, 64, 2, 0.0)).images
    assert images.shape == (1, 64, 96, 3)
    assert images.dtype == torch.uint8 and images.device.type == "cpu"
    assert images.float().std() > 1  # noise, not a blank image


def test_same_seed_same_pixels_alone_or_in_a_batch(tiny_pipe):
    generate = Generator(tiny_pipe)
    alone = generate(batch([7])).images[0]
    batched = generate(batch([3, 7, 11], ["x", "a red fox", "y"])).images
    assert_same_pixels(alone, batched[1])
    assert (batched[0].int() - batched[1].int()).abs().float().mean() > 5  # seeds matter


def test_long_prompts_are_flagged_as_truncated(tiny_pipe):
    generated = Generator(tiny_pipe)(batch([1, 2], ["short", "word " * 100]))
    assert generated.truncated == [False, True]


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_encode_decodes_back_to_the_image_size(fmt):
    image = np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    decoded = Image.open(io.BytesIO(encoding.encode(image, fmt)))
    assert decoded.format == fmt.upper()
    assert decoded.size == (80, 48)
    if fmt == "png":  # lossless
        assert np.array_equal(np.asarray(decoded), image)


@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (64, 64), (77, 129), (512, 512), (768, 512)])
def test_fast_png_is_lossless_and_readable_by_pillow(shape):
    assert encoding.FAST_PNG is not None, "the serve extra installs fpng"
    rng = np.random.default_rng(sum(shape))
    # Noise (incompressible), flat colour and a gradient: each of fpng's code paths.
    images = [
        rng.integers(0, 256, (*shape, 3), dtype=np.uint8),
        np.full((*shape, 3), (12, 200, 99), dtype=np.uint8),
        np.broadcast_to(np.arange(shape[1], dtype=np.uint8)[None, :, None], (*shape, 3)),
    ]
    for image in images:
        decoded = Image.open(io.BytesIO(encoding.encode(image, "png")))
        assert decoded.format == "PNG" and decoded.mode == "RGB"
        assert np.array_equal(np.asarray(decoded), image)


def test_png_falls_back_to_pillow_when_fpng_fails(monkeypatch, caplog):
    def broken(_):
        raise RuntimeError("fpng broke")

    monkeypatch.setattr(encoding, "FAST_PNG", broken)
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    decoded = Image.open(io.BytesIO(encoding.encode(image, "png")))
    assert np.array_equal(np.asarray(decoded), image)
    assert "encoding with Pillow" in caplog.text


def test_a_folder_without_a_pipeline_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model_index\.json"):
        loading.resolve_model_path(str(tmp_path))


def test_serve_config_yaml_builds_the_same_application():
    from pathlib import Path

    import yaml
    from ray.serve.deployment import Application
    from ray.serve.schema import ServeDeploySchema

    from serve_app import build_app
    from serve_app.config import AppArgs

    config = yaml.safe_load((Path(__file__).parents[1] / "serve_config.yaml").read_text())
    schema = ServeDeploySchema.parse_obj(config)
    (app,) = schema.applications
    assert app.import_path == "serve_app:app"
    args = AppArgs.model_validate(app.args)
    assert args.max_batch_size == 8 and args.model == "stabilityai/sd-turbo"
    assert isinstance(build_app(args.model_copy(update={"device": "cpu"})), Application)


def test_an_artifact_supplies_its_serve_settings_unless_the_caller_set_them(tmp_path):
    from serve_app.app import with_artifact_settings as _with_artifact_settings
    from serve_app.config import MANIFEST_NAME, AppArgs

    def manifest(device_kind: str) -> None:
        (tmp_path / MANIFEST_NAME).write_text(
            json.dumps(
                {
                    "environment": {"device_kind": device_kind},
                    "serve_settings": {"compile": True, "warmup_sizes": [64], "fuse_qkv": False},
                }
            )
        )

    manifest("cpu")
    adopted = _with_artifact_settings(AppArgs(model=str(tmp_path), device="cpu"))
    assert (adopted.compile, adopted.warmup_sizes, adopted.fuse_qkv) == (True, [64], False)
    explicit = _with_artifact_settings(AppArgs(model=str(tmp_path), device="cpu", compile=False))
    assert (explicit.compile, explicit.warmup_sizes) == (False, [64])
    manifest("cuda")  # built for another device kind: its settings do not apply here
    assert _with_artifact_settings(AppArgs(model=str(tmp_path), device="cpu")).compile is False


def test_a_tiny_decoder_replaces_sds_vae(tiny_model_dir):
    from diffusers import AutoencoderTiny

    pipe = loading.load_pipeline(
        str(tiny_model_dir), torch.device("cpu"), torch.float32, vae="taesd-random"
    )
    assert isinstance(pipe.vae, AutoencoderTiny)
    pipe = optimizing.optimize(pipe, ModelSettings(model="tiny", device="cpu", fuse_qkv=True))
    images = Generator(pipe)(ImageBatch(["a"], [""], [1], 96, 64, 1, 0.0)).images
    assert images.shape == (1, 64, 96, 3) and images.float().std() > 1


def test_static_shapes_and_the_reject_policy(tiny_model_dir):
    shapes = StaticShapes(batch_sizes=(1, 4), sizes=(512,))
    assert shapes.covers(512, 512, 0.0)
    assert not shapes.covers(512, 512, 2.0)  # guidance doubles the UNet batch
    assert not shapes.covers(256, 256, 0.0) and not shapes.covers(512, 256, 0.0)
    backend = DiffusersBackend(ModelSettings(model=str(tiny_model_dir), device="cpu"))
    small = GenerateRequest(prompt="x", width=256, height=256)
    backend.check(small, "reject")  # not loaded: no shapes
    backend.prepared = type("Loaded", (), {"generator": type("G", (), {"shapes": shapes})})
    backend.check(GenerateRequest(prompt="x", width=512, height=512), "reject")
    with pytest.raises(InvalidRequest, match="512x512 with guidance_scale <= 1"):
        backend.check(small, "reject")
    backend.check(small, "eager")
    assert backend.is_out_of_memory(torch.OutOfMemoryError("x"))
    assert not backend.is_out_of_memory(RuntimeError("x"))
