"""The generate step as the project's own code (serve_app/pipeline/generate.py), proved against
diffusers' own pipeline on the tiny model: same seeds, same images; no host sync between stages;
prompts tokenized once and their embeddings cached; the fixed-buffer fast path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from serve_app.engine.batch import ImageBatch
from serve_app.pipeline import sd_turbo, toolchain
from serve_app.pipeline.generate import Generator, batch_plan
from serve_app.pipeline.prompts import PromptCache, tokenize

PROMPTS = ["a red fox in the snow", "a lighthouse at dusk, oil painting", "a bowl of ramen"]


def batch(seeds, prompts=None, size=64, steps=1, guidance=0.0, negative=None):
    prompts = prompts or [PROMPTS[i % len(PROMPTS)] for i in range(len(seeds))]
    negative = negative or [""] * len(seeds)
    return ImageBatch(list(prompts), list(negative), list(seeds), size, size, steps, guidance)


def diffusers_images(pipe, request: ImageBatch) -> np.ndarray:
    """What diffusers' StableDiffusionPipeline gives for the same batch, as uint8."""
    guided = request.guidance_scale > 1.0
    floats = pipe(
        prompt=request.prompts,
        negative_prompt=request.negative_prompts if guided else None,
        num_inference_steps=request.num_inference_steps,
        guidance_scale=request.guidance_scale,
        width=request.width,
        height=request.height,
        generator=[torch.Generator("cpu").manual_seed(seed) for seed in request.seeds],
        output_type="np",
    ).images
    return (floats * 255).round().clip(0, 255).astype(np.uint8)


def assert_close_pixels(ours, theirs) -> None:
    # Tolerance: the same float32 arithmetic in the same order gives identical pixels here;
    # we allow one level of rounding (0..255) on at most 0.1 % of pixels, for a BLAS that
    # picks a different kernel for a differently laid-out tensor. Nothing looser.
    ours, theirs = np.asarray(ours).astype(int), np.asarray(theirs).astype(int)
    assert ours.shape == theirs.shape
    diff = np.abs(ours - theirs)
    assert diff.max() <= 1, f"pixels differ by up to {diff.max()}"
    assert (diff > 0).mean() <= 1e-3


@pytest.mark.parametrize("steps", [1, 2, 3, 4])
@pytest.mark.parametrize("seeds", [[11], [3, 7, 11]], ids=["batch1", "batch3"])
def test_same_seeds_same_images_as_diffusers_pipeline(tiny_pipe, steps, seeds):
    request = batch(seeds, steps=steps)
    ours = Generator(tiny_pipe)(request).images
    assert ours.dtype == torch.uint8 and ours.shape == (len(seeds), 64, 64, 3)
    assert_close_pixels(ours.numpy(), diffusers_images(tiny_pipe, request))


def test_classifier_free_guidance_matches_diffusers(tiny_pipe):
    request = batch([5, 6], steps=2, guidance=3.0, negative=["blurry", ""])
    assert_close_pixels(Generator(tiny_pipe)(request).images, diffusers_images(tiny_pipe, request))


def test_non_square_images_have_the_requested_size(tiny_pipe):
    request = ImageBatch(["a"], [""], [1], 96, 64, 2, 0.0)
    images = Generator(tiny_pipe)(request).images
    assert images.shape == (1, 64, 96, 3)
    assert_close_pixels(images, diffusers_images(tiny_pipe, request))


class HostSyncs(TorchFunctionMode):
    """Raises on every call that makes the host wait for the device. (A ``.to("cpu")`` of a
    device tensor cannot be told from a CPU-to-CPU move here, where everything is on the CPU;
    on a GPU, ``torch.cuda.set_sync_debug_mode`` catches it: the gpu-marked test below.)"""

    SYNCS = {
        torch.Tensor.item,
        torch.Tensor.cpu,
        torch.Tensor.tolist,
        torch.Tensor.numpy,
        torch.Tensor.nonzero,
        torch.nonzero,
        torch.Tensor.__bool__,
        torch.Tensor.__int__,
        torch.Tensor.__float__,
        torch.Tensor.__index__,
        torch.Tensor.any,
        torch.Tensor.all,
        torch.is_nonzero,
    }

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if func in self.SYNCS:
            raise AssertionError(f"host sync inside the generate step: {name}")
        return func(*args, **kwargs)


@pytest.mark.parametrize("fast_path", [False, True], ids=["eager", "buckets"])
def test_the_generate_step_never_waits_for_the_device(tiny_pipe, fast_path):
    generator = Generator(tiny_pipe, prompt_cache_size=8, fast_path=fast_path)
    generator.warm_up([64], [1, 2])
    for steps in (1, 4):
        with HostSyncs():
            generated = generator(batch([1, 2, 3], steps=steps))
        assert generated.images.shape == (3, 64, 64, 3)


def test_the_sync_detector_catches_what_diffusers_does(tiny_pipe):
    # diffusers' own __call__ moves sigmas to the host and its scheduler calls nonzero()/item().
    with pytest.raises(AssertionError, match="host sync"), HostSyncs():
        tiny_pipe(prompt="x", num_inference_steps=2, guidance_scale=0.0, width=64, height=64)


def test_schedules_are_the_schedulers_own_per_step_count(tiny_pipe):
    from copy import deepcopy

    scheduler = deepcopy(tiny_pipe.scheduler)
    schedules = sd_turbo.schedules(tiny_pipe.scheduler, torch.device("cpu"))
    # Text-to-image from 0; image-to-image from each later index (4 + 3 + 2 + 1).
    assert len(schedules) == 10 and {start for _, start in schedules} == {0, 1, 2, 3}
    for (steps, start), schedule in schedules.items():
        scheduler.set_timesteps(steps)
        assert len(schedule) == steps - start
        assert torch.equal(torch.stack(schedule.timesteps), scheduler.timesteps[start:])
        assert torch.equal(torch.stack(schedule.sigmas), scheduler.sigmas[start:])
        assert schedule.init_noise_sigma == float(scheduler.init_noise_sigma)


@pytest.mark.parametrize(
    ("steps", "strength", "start"),
    [(1, 1.0, 0), (2, 0.5, 1), (4, 0.5, 2), (4, 0.3, 3), (3, 0.9, 1)],
)
def test_image_to_image_starts_where_diffusers_does(tiny_pipe, steps, strength, start):
    from copy import deepcopy

    from diffusers import StableDiffusionImg2ImgPipeline

    components = {**tiny_pipe.components, "scheduler": deepcopy(tiny_pipe.scheduler)}
    pipe = StableDiffusionImg2ImgPipeline(**components)
    pipe.scheduler.set_timesteps(steps)
    _, runs = pipe.get_timesteps(steps, strength, "cpu")
    assert sd_turbo.image_start(steps, strength) == start == steps - runs


@pytest.mark.parametrize(
    "prompt",
    ["", "a cat", "word " * 100, "emoji 🦊 and accents: crème brûlée", "  spaced   out  "],
)
def test_tokenize_once_equals_the_pipelines_tokenizer_call(tiny_pipe, prompt):
    tokenizer = tiny_pipe.tokenizer
    window = tokenizer.model_max_length
    expected = tokenizer(
        [prompt], padding="max_length", max_length=window, truncation=True
    ).input_ids[0]
    tokens = tokenize(tokenizer, [prompt])
    assert list(tokens.ids[0]) == expected
    untruncated = tokenizer([prompt], padding="longest").input_ids[0]
    assert tokens.truncated == [len(untruncated) > window]


def test_prompt_cache_hits_give_the_same_images_without_the_text_encoder(tiny_pipe):
    calls = []
    hook = tiny_pipe.text_encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        generator = Generator(tiny_pipe, prompt_cache_size=4)
        first = generator(batch([1, 2], prompts=["a fox", "a fox"])).images
        assert len(calls) == 1 and generator.cache.describe()["misses"] == 1
        again = generator(batch([1, 2], prompts=["a fox", "a fox"])).images
        assert len(calls) == 1  # no text-encoder call: both rows came from the cache
        assert generator.cache.stats.hits == 1
        assert torch.equal(first, again)
    finally:
        hook.remove()


def test_prompt_cache_is_least_recently_used_and_can_be_off():
    cache = PromptCache(2)
    a, b, c = (1,), (2,), (3,)
    for key in (a, b):
        cache.store(key, torch.zeros(1))
    cache.lookup([a])  # a is now the most recent: b goes first
    cache.store(c, torch.zeros(1))
    found, missing = cache.lookup([a, b, c])
    assert set(found) == {a, c} and missing == [b]
    off = PromptCache(0)
    off.store(a, torch.zeros(1))
    assert len(off) == 0 and off.lookup([a, a])[1] == [a]


@pytest.mark.parametrize(
    ("n", "buckets", "plan"),
    [
        (1, (1, 2, 4, 8), [(1, 1)]),
        (3, (1, 2, 4, 8), [(3, 4)]),
        (8, (1, 2, 4, 8), [(8, 8)]),
        (19, (1, 2, 4, 8), [(8, 8), (8, 8), (3, 4)]),
        (5, (4,), [(4, 4), (1, 4)]),
        (5, (), [(5, 5)]),
    ],
)
def test_batch_plan_pads_to_the_next_bucket_and_splits_above_the_largest(n, buckets, plan):
    assert batch_plan(n, buckets) == plan
    assert sum(images for images, _ in plan) == n


def test_fixed_buffers_give_the_eager_paths_images(tiny_pipe):
    # The fast path's buffer logic (padding, splitting, text buckets, per-steps denoisers),
    # run on the CPU without compile: the same images as the eager path.
    fast = Generator(tiny_pipe, prompt_cache_size=16, fast_path=True)
    fast.warm_up([64], [1, 2])
    assert fast.shapes.covers(64, 64, 0.0) and not fast.shapes.covers(64, 64, 2.0)
    eager = Generator(tiny_pipe)
    for seeds, steps in (([4], 1), ([4, 5, 6], 3), ([9, 8, 7, 6, 5], 4)):
        request = batch(seeds, steps=steps)
        assert_close_pixels(fast(request).images, eager(request).images)
    # A shape it did not warm up runs eagerly, never compiles.
    assert fast(ImageBatch(["x"], [""], [1], 96, 64, 1, 0.0)).images.shape == (1, 64, 96, 3)


def test_an_unsupported_scheduler_is_refused_at_start_up(tiny_pipe):
    from copy import copy

    from diffusers import DDIMScheduler

    pipe = copy(tiny_pipe)
    pipe.scheduler = DDIMScheduler.from_config(tiny_pipe.scheduler.config)
    with pytest.raises(sd_turbo.UnsupportedModel, match="DDIMScheduler"):
        Generator(pipe)


@pytest.mark.parametrize(
    ("text", "version"),
    [
        (
            "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.127.05  Tue Oct  8 2024\n"
            "GCC version:  gcc version 12.2.0",
            "550.127.05",
        ),
        (
            "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build",
            "570.86.15",
        ),
    ],
)
def test_driver_version_is_read_from_the_drivers_proc_file(tmp_path, text, version):
    proc = tmp_path / "version"
    proc.write_text(text)
    assert toolchain.driver_version(proc) == version


# --- image-to-image ---------------------------------------------------------------------------


def input_images(n: int, size: int = 64) -> list[np.ndarray]:
    """Smooth, distinct inputs (gradients and a disc), as a sketch would be."""
    y, x = np.mgrid[0:size, 0:size] / size
    images = []
    for i in range(n):
        disc = ((x - 0.3 - 0.1 * i) ** 2 + (y - 0.5) ** 2 < 0.05).astype(float)
        rgb = np.stack([x, y * (i + 1) / n, disc], axis=-1)
        images.append((rgb * 255).round().astype(np.uint8))
    return images


def image_batch(seeds, steps=2, strength=0.5, size=64, images=None, prompts=None):
    request = batch(seeds, prompts, size=size, steps=steps)
    images = images or input_images(len(seeds), size)
    return ImageBatch(
        request.prompts,
        request.negative_prompts,
        request.seeds,
        size,
        size,
        steps,
        0.0,
        init_images=images,
        strength=strength,
    )


def diffusers_image_to_image(pipe, request: ImageBatch) -> np.ndarray:
    from copy import deepcopy

    from diffusers import StableDiffusionImg2ImgPipeline
    from PIL import Image

    components = {**pipe.components, "scheduler": deepcopy(pipe.scheduler)}
    img2img = StableDiffusionImg2ImgPipeline(**components)
    guided = request.guidance_scale > 1.0
    floats = img2img(
        prompt=request.prompts,
        negative_prompt=request.negative_prompts if guided else None,
        image=[Image.fromarray(image) for image in request.init_images],
        strength=request.strength,
        num_inference_steps=request.num_inference_steps,
        guidance_scale=request.guidance_scale,
        generator=[torch.Generator("cpu").manual_seed(seed) for seed in request.seeds],
        output_type="np",
    ).images
    return (floats * 255).round().clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize(("steps", "strength"), [(1, 1.0), (2, 0.5), (4, 0.5), (4, 0.75)])
@pytest.mark.parametrize("seeds", [[11], [3, 7, 11]], ids=["batch1", "batch3"])
def test_image_to_image_matches_diffusers_pipeline(tiny_pipe, steps, strength, seeds):
    request = image_batch(seeds, steps, strength)
    ours = Generator(tiny_pipe)(request).images
    assert ours.shape == (len(seeds), 64, 64, 3)
    assert_close_pixels(ours, diffusers_image_to_image(tiny_pipe, request))


def test_image_to_image_with_guidance_matches_diffusers(tiny_pipe):
    import dataclasses

    request = image_batch([1, 2], steps=4, strength=0.5)
    request = dataclasses.replace(request, guidance_scale=2.5, negative_prompts=["blurry", ""])
    ours = Generator(tiny_pipe)(request).images
    assert_close_pixels(ours, diffusers_image_to_image(tiny_pipe, request))


def test_image_to_image_keeps_the_input_at_low_strength(tiny_pipe):
    # Fewer steps redraw less: the output stays nearer the input than pure noise would.
    images = input_images(1)
    near = Generator(tiny_pipe)(image_batch([1], 4, 0.25, images=images)).images[0]
    far = Generator(tiny_pipe)(batch([1], steps=4)).images[0]
    source = torch.from_numpy(images[0]).int()
    assert (near.int() - source).abs().float().mean() < (far.int() - source).abs().float().mean()


def test_image_to_image_same_seed_same_pixels_alone_or_batched(tiny_pipe):
    generate = Generator(tiny_pipe)
    images = input_images(3)
    alone = generate(image_batch([7], images=[images[1]], prompts=["a fox"])).images[0]
    batched = generate(image_batch([3, 7, 11], images=images, prompts=["x", "a fox", "y"]))
    batched = batched.images
    assert_close_pixels(alone, batched[1])


def test_image_to_image_on_fixed_buffers_and_a_tiny_decoder(tiny_pipe, tiny_model_dir):
    fast = Generator(tiny_pipe, fast_path=True)
    fast.warm_up([64], [1, 2], image_to_image=True)
    eager = Generator(tiny_pipe)
    for seeds, steps, strength in (([4], 2, 0.5), ([4, 5, 6], 4, 0.75), ([1, 2], 1, 1.0)):
        request = image_batch(seeds, steps, strength)
        assert_close_pixels(fast(request).images, eager(request).images)
        # Text-to-image on the same buckets is unchanged.
        plain = batch(seeds, steps=steps)
        assert_close_pixels(fast(plain).images, eager(plain).images)

    from serve_app.pipeline.loading import load_pipeline

    tiny_vae = load_pipeline(
        str(tiny_model_dir), torch.device("cpu"), torch.float32, vae="taesd-random"
    )
    request = image_batch([1, 2], 2, 0.5)
    assert_close_pixels(
        Generator(tiny_vae)(request).images, diffusers_image_to_image(tiny_vae, request)
    )


@pytest.mark.gpu
def test_on_a_gpu_a_batch_syncs_once_and_graphs_replay(tiny_model_dir):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from serve_app.pipeline.loading import load_pipeline

    pipe = load_pipeline(str(tiny_model_dir), torch.device("cuda"), torch.float16)
    generator = Generator(pipe, prompt_cache_size=8, graphs=True)
    generator.warm_up([64], [1, 2])
    request = batch([1, 2, 3], steps=4)
    first = generator(request).images
    torch.cuda.set_sync_debug_mode("error")
    try:
        # The final copy's synchronize is explicit; anything else raises here.
        second = generator(request).images
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(first, second)  # replays are deterministic
