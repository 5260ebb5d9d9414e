"""The generate step: a batch of prompts and seeds in, uint8 images on the host out.

This is SD-Turbo's text-to-image as the server's own code over diffusers' models (diffusers'
``__call__`` is general-purpose: it tokenizes three times, syncs with the device between
stages and decodes outside anything compiled). Per batch:

1. prompts are tokenized once; embeddings come from the prompt cache, and only the misses go
   through the text encoder;
2. each image's noise is drawn from a CPU generator seeded by its seed alone (the same seed gives
   the same image, alone or batched, on any device), into pinned memory, copied without
   blocking;
3. the denoising loop and the decode to uint8 run on the device;
4. the images are copied to the host: the batch's one synchronisation.

Shapes in ``StaticShapes`` (batch buckets x square sizes, steps 1-4, guidance <= 1) take the
fast path: a batch is padded up to the next bucket (split above the largest), the functions are
the compiled ones when compile is on, and on a GPU each stage is a CUDA graph captured at
warm-up. Anything else runs the same code on the eager modules: no request ever compiles.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from serve_app.engine.batch import Generated, ImageBatch
from serve_app.pipeline import sd_turbo
from serve_app.pipeline.graphs import StageClock, graph_pool, replayable
from serve_app.pipeline.prompts import PromptCache, TokenIds, tokenize

logger = logging.getLogger("sdturbo")


@dataclass(frozen=True)
class StaticShapes:
    """The shapes on the fast path; empty: every batch runs as it comes (eager)."""

    batch_sizes: tuple[int, ...] = ()
    sizes: tuple[int, ...] = ()

    def covers(self, width: int, height: int, guidance_scale: float) -> bool:
        # Guidance above 1 doubles the UNet's batch: a shape of its own, not prepared.
        return width == height and width in self.sizes and guidance_scale <= 1.0

    def describe(self) -> str:
        if not self.sizes:
            return "none"
        return ", ".join(f"{s}x{s}" for s in self.sizes) + " with guidance_scale <= 1"


def batch_plan(n: int, sizes: tuple[int, ...] | list[int]) -> list[tuple[int, int]]:
    """Split n images into (images, padded size) calls that use the given sizes only."""
    if not sizes:
        return [(n, n)]
    plan, largest = [], max(sizes)
    while n > largest:
        plan.append((largest, largest))
        n -= largest
    if n:
        plan.append((n, min(size for size in sizes if size >= n)))
    return plan


class _TextBucket:
    """Token ids in, embeddings out, for a fixed number of prompts."""

    def __init__(self, gen: Generator, batch: int, encode, graph: bool):
        window = gen.window
        self.ids = torch.zeros((batch, window), dtype=torch.int64, device=gen.device)
        self.embeds = torch.zeros((batch, window, gen.hidden), dtype=gen.dtype, device=gen.device)
        self.run = replayable(
            lambda: self.embeds.copy_(encode(self.ids)), graph=graph, pool=gen.pool
        )


class _ImageBucket:
    """Noise and embeddings in, uint8 images out, for a fixed batch and square size: one
    denoising call per schedule (steps, and for image-to-image where it starts), one decode.
    ``add_image_to_image`` adds the input side: pixels and the VAE's noise in, image latents
    out, and the denoising calls that start from them."""

    def __init__(self, gen: Generator, batch: int, size: int, step, decode, graph: bool):
        self.gen, self.step, self.graph = gen, step, graph
        self.latent = (batch, gen.latent_channels, size // gen.scale, size // gen.scale)
        self.batch, self.size = batch, size
        device = gen.device
        self.noise = torch.zeros(self.latent, dtype=torch.float32, device=device)
        self.embeds = torch.zeros((batch, gen.window, gen.hidden), dtype=gen.dtype, device=device)
        self.latents = torch.zeros(self.latent, dtype=torch.float32, device=device)
        self.images = torch.zeros((batch, size, size, 3), dtype=torch.uint8, device=device)
        self.decode = replayable(
            lambda: self.images.copy_(decode(self.latents)), graph=graph, pool=gen.pool
        )
        self.denoise = {
            key: self._replayable(lambda s=schedule: self.noise * s.init_noise_sigma, schedule)
            for key, schedule in gen.schedules.items()
            if key[1] == 0
        }
        self.from_image: dict[tuple[int, int], object] = {}

    def add_image_to_image(self, encode) -> None:
        gen, device = self.gen, self.gen.device
        self.pixels = torch.zeros(
            (self.batch, self.size, self.size, 3), dtype=torch.uint8, device=device
        )
        self.eps = torch.zeros(self.latent, dtype=gen.vae_dtype, device=device)
        self.image_latents = torch.zeros(self.latent, dtype=torch.float32, device=device)
        self.encode = replayable(
            lambda: self.image_latents.copy_(encode(self.pixels, self.eps)),
            graph=self.graph,
            pool=gen.pool,
        )
        self.from_image = {
            key: self._replayable(
                lambda s=schedule: self.image_latents + self.noise * s.sigmas[0], schedule
            )
            for key, schedule in gen.schedules.items()
        }

    def _replayable(self, start, schedule: sd_turbo.Schedule):
        def call():
            self.latents.copy_(self.gen.denoise(self.step, start(), self.embeds, schedule))

        return replayable(call, graph=self.graph, pool=self.gen.pool)


class Generator:
    """Holds a pipeline's modules, their schedules, the prompt cache and the fast-path buckets;
    ``__call__`` runs one batch. Used from one thread (the engine's pipeline thread)."""

    def __init__(
        self,
        pipe,
        *,
        prompt_cache_size: int = 0,
        compile_options: dict | None = None,
        graphs: bool = False,
        fast_path: bool | None = None,
    ):
        sd_turbo.check_supported(pipe)
        self.pipe = pipe
        self.device = pipe.unet.device
        self.dtype = pipe.unet.dtype
        self.vae_dtype = pipe.vae.dtype
        self.window = pipe.tokenizer.model_max_length
        self.hidden = pipe.text_encoder.config.hidden_size
        self.latent_channels = pipe.unet.config.in_channels
        self.scale = pipe.vae_scale_factor
        self.prediction_type = pipe.scheduler.config.prediction_type
        self.samples_latents = sd_turbo.samples_latents(pipe.vae)
        self.schedules = sd_turbo.schedules(pipe.scheduler, self.device)
        self.cache = PromptCache(prompt_cache_size)
        self.compiled = compile_options is not None
        self.graphs = graphs and self.device.type == "cuda"
        # Fixed buffers pay off with compiled functions or CUDA graphs; on their own (tests,
        # on the CPU) they run the same arithmetic as the eager path.
        self.fast_path = self.compiled or self.graphs if fast_path is None else fast_path
        self.pool = graph_pool(self.device)
        self.shapes = StaticShapes()
        self.image_to_image = False  # whether the buckets cover image-to-image too
        self._fast = self._fast_functions(compile_options)
        self._text: dict[int, _TextBucket] = {}
        self._images: dict[tuple[int, int], _ImageBucket] = {}

    # --- the functions each stage runs -----------------------------------------------------

    def step_function(self, guidance: float = 0.0):
        unet, prediction_type = self.pipe.unet, self.prediction_type

        def step(latents, embeds, timestep, sigma, sigma_next):
            return sd_turbo.euler_step(
                unet, latents, embeds, timestep, sigma, sigma_next, prediction_type, guidance
            )

        return step

    def decode_function(self):
        vae = self.pipe.vae
        return lambda latents: sd_turbo.decode_to_uint8(vae, latents)

    def encode_function(self):
        vae = self.pipe.vae
        return lambda pixels, eps: sd_turbo.encode_to_latents(vae, pixels, eps)

    def text_function(self):
        text_encoder = self.pipe.text_encoder
        return lambda ids: sd_turbo.encode_text(text_encoder, ids)

    def denoise(self, step, latents, embeds, schedule: sd_turbo.Schedule):
        for i in range(len(schedule)):
            t, sigma, sigma_next = schedule.timesteps[i], schedule.sigmas[i], schedule.sigmas[i + 1]
            latents = step(latents, embeds, t, sigma, sigma_next)
        return latents

    def schedule_for(self, batch: ImageBatch) -> tuple[tuple[int, int], sd_turbo.Schedule]:
        steps = batch.num_inference_steps
        start = 0 if batch.strength is None else sd_turbo.image_start(steps, batch.strength)
        return (steps, start), self.schedules[(steps, start)]

    # --- warm-up ---------------------------------------------------------------------------

    def _fast_functions(self, options: dict | None):
        """The fast path's step, decode, text and encode functions: compiled ones when asked,
        made once (each torch.compile wrapper has its own graphs)."""
        step, decode = self.step_function(), self.decode_function()
        text, encode = self.text_function(), self.encode_function()
        if options is None:
            return step, decode, text, encode
        step = torch.compile(step, **options["unet"])
        decode = torch.compile(decode, **options["decoder"]) if options["decoder"] else decode
        text = torch.compile(text, **options["text"]) if options["text"] else text
        encode = torch.compile(encode, **options["encoder"]) if options["encoder"] else encode
        return step, decode, text, encode

    @torch.inference_mode()
    def warm_up(self, sizes: list[int], batch_sizes: list[int], image_to_image: bool = False):
        """Add these shapes to the fast path: compile (if on), capture (on a GPU), run each;
        with ``image_to_image``, its VAE encode and denoising calls too. Without compile or
        CUDA graphs there is no fast path: one eager call per size warms the kernels, and every
        batch runs as it comes."""
        sizes, batch_sizes = sorted(set(sizes)), sorted(set(batch_sizes))
        if not self.fast_path:
            for size in sizes:
                self(ImageBatch(["warm-up"], [""], [0], size, size, 1, 0.0))
            return
        all_sizes = sorted({*self.shapes.sizes, *sizes})
        all_batches = sorted({*self.shapes.batch_sizes, *batch_sizes})
        # Dynamo compiles each function once per shape; its default limit (8) would silently
        # send the rest to eager.
        limit = len(all_sizes) * len(all_batches) + len(all_batches)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
        self._add_buckets(sizes, batch_sizes, image_to_image)
        # Only shapes whose every bucket exists are covered.
        covered = [s for s in all_sizes if all((s, n) in self._images for n in all_batches)]
        self.shapes = StaticShapes(tuple(all_batches), tuple(covered))

    def _add_buckets(self, sizes: list[int], batch_sizes: list[int], image_to_image: bool):
        step, decode, text, encode = self._fast
        for n in batch_sizes:
            if n not in self._text:
                self._text[n] = _TextBucket(self, n, text, self.graphs)
        for size in sizes:
            for n in batch_sizes:
                if (size, n) not in self._images:
                    bucket = _ImageBucket(self, n, size, step, decode, self.graphs)
                    self._images[(size, n)] = bucket
        self.image_to_image = self.image_to_image or image_to_image
        if self.image_to_image:
            for bucket in self._images.values():
                if not bucket.from_image:
                    bucket.add_image_to_image(encode)

    # --- a batch ---------------------------------------------------------------------------

    @torch.inference_mode()
    def __call__(self, batch: ImageBatch) -> Generated:
        clock = StageClock(self.device)
        fast = self.shapes.covers(batch.width, batch.height, batch.guidance_scale) and (
            batch.init_images is None or self.image_to_image
        )
        with torch.compiler.set_stance("eager_on_recompile"):
            if fast:
                images, truncated = self._static(batch, clock)
            else:
                images, truncated = self._eager(batch, clock)
            clock.mark("end")
        return Generated(images, truncated, clock.read())

    def _static(self, batch: ImageBatch, clock: StageClock):
        n = len(batch.seeds)
        out = self._host((n, batch.height, batch.width, 3))
        key, _ = self.schedule_for(batch)
        truncated, offset = [], 0
        for count, size in batch_plan(n, self.shapes.batch_sizes):
            bucket = self._images[(batch.width, size)]
            part = slice(offset, offset + count)
            if batch.init_images is None:
                self._noise(batch.seeds[part], bucket.noise)
            else:
                self._noise(batch.seeds[part], bucket.noise, bucket.eps)
                clock.mark("vae_encode")
                self._pixels(batch.init_images[part], bucket.pixels)
                bucket.encode()
            clock.mark("text_encoder")
            rows, cut = self.embeddings(batch.prompts[part])
            torch.stack(rows + rows[:1] * (size - count), out=bucket.embeds)
            clock.mark("unet")
            (bucket.denoise if batch.init_images is None else bucket.from_image)[key]()
            clock.mark("vae_decode")
            bucket.decode()
            clock.mark("copy")
            out[part].copy_(bucket.images[:count], non_blocking=True)
            truncated += cut
            offset += count
        return self._finish(out), truncated

    def _eager(self, batch: ImageBatch, clock: StageClock):
        n, scale = len(batch.seeds), self.scale
        latent = (n, self.latent_channels, batch.height // scale, batch.width // scale)
        noise = torch.empty(latent, dtype=torch.float32, device=self.device)
        _, schedule = self.schedule_for(batch)
        if batch.init_images is None:
            self._noise(batch.seeds, noise)
            latents = noise * schedule.init_noise_sigma
        else:
            eps = torch.empty(latent, dtype=self.vae_dtype, device=self.device)
            self._noise(batch.seeds, noise, eps)
            clock.mark("vae_encode")
            pixels = torch.empty(
                (n, batch.height, batch.width, 3), dtype=torch.uint8, device=self.device
            )
            self._pixels(batch.init_images, pixels)
            latents = self.encode_function()(pixels, eps) + noise * schedule.sigmas[0]
        clock.mark("text_encoder")
        rows, truncated = self.embeddings(batch.prompts)
        if batch.guidance_scale > 1.0:
            uncond, _ = self.embeddings(batch.negative_prompts)
            rows = uncond + rows
        embeds = torch.stack(rows)
        clock.mark("unet")
        step = self.step_function(batch.guidance_scale)
        latents = self.denoise(step, latents, embeds, schedule)
        clock.mark("vae_decode")
        images = self.decode_function()(latents)
        clock.mark("copy")
        out = self._host(images.shape)
        out.copy_(images, non_blocking=True)
        return self._finish(out), truncated

    # --- helpers ---------------------------------------------------------------------------

    def embeddings(self, prompts: list[str]) -> tuple[list[torch.Tensor], list[bool]]:
        """One embedding row per prompt (device tensors), and which prompts were truncated."""
        tokens = tokenize(self.pipe.tokenizer, prompts)
        found, missing = self.cache.lookup(tokens.ids)
        if missing:
            for key, row in zip(missing, self._encode(missing), strict=True):
                self.cache.store(key, row)
                found[key] = row
        return [found[key] for key in tokens.ids], tokens.truncated

    def _encode(self, keys: list[TokenIds]) -> list[torch.Tensor]:
        """Embeddings of token sequences: on the text buckets when there are any."""
        rows: list[torch.Tensor] = []
        offset = 0
        for count, size in batch_plan(len(keys), tuple(self._text)):
            part = list(keys[offset : offset + count])
            ids = self._to_device(torch.tensor(part + part[:1] * (size - count)))
            if self._text:
                bucket = self._text[size]
                bucket.ids.copy_(ids, non_blocking=True)
                bucket.run()
                embeds = bucket.embeds
            else:
                embeds = self.text_function()(ids)
            # Rows of their own: the bucket's buffer is overwritten by the next call.
            rows += [embeds[i].clone() for i in range(count)]
            offset += count
        return rows

    def _noise(self, seeds: list[int], out: torch.Tensor, eps: torch.Tensor | None = None):
        """Each image's noise from a CPU generator seeded by its seed alone, as diffusers draws
        it with a list of CPU generators; rows past ``len(seeds)`` (padding) are left as is.
        Image-to-image (``eps``): the same generator first draws the sample of the VAE's latent
        distribution (in the VAE's dtype), then the noise, in diffusers' order."""
        shape = (1, *out.shape[1:])
        host = self._host((len(seeds), *out.shape[1:]), torch.float32)
        draw_eps = eps is not None and self.samples_latents
        host_eps = self._host((len(seeds), *out.shape[1:]), eps.dtype) if draw_eps else None
        for i, seed in enumerate(seeds):
            generator = torch.Generator("cpu").manual_seed(seed)
            if draw_eps:
                torch.randn(shape, generator=generator, dtype=eps.dtype, out=host_eps[i : i + 1])
            torch.randn(shape, generator=generator, dtype=torch.float32, out=host[i : i + 1])
        out[: len(seeds)].copy_(host, non_blocking=True)
        if draw_eps:
            eps[: len(seeds)].copy_(host_eps, non_blocking=True)
        elif eps is not None:
            eps.zero_()  # unused by a VAE without a distribution; never uninitialised memory

    def _pixels(self, images: list, out: torch.Tensor) -> None:
        """Input images (uint8 HxWx3 arrays) into a device buffer, without blocking."""
        host = self._host((len(images), *out.shape[1:]))
        for i, image in enumerate(images):
            host[i].copy_(torch.from_numpy(image))
        out[: len(images)].copy_(host, non_blocking=True)

    def _host(self, shape, dtype=torch.uint8) -> torch.Tensor:
        # Pinned on a GPU host, so copies do not block; torch's caching host allocator keeps a
        # block from reuse until the copies that use it are done.
        return torch.empty(shape, dtype=dtype, pin_memory=self.device.type == "cuda")

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            return tensor
        return tensor.pin_memory().to(self.device, non_blocking=True)

    def _finish(self, host: torch.Tensor) -> torch.Tensor:
        """The batch's one synchronisation: wait for the copies to the host."""
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        return host

    def describe(self) -> dict:
        return {"prompt_cache": self.cache.describe(), "static_shapes": self.shapes.describe()}
