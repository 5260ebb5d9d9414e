"""The model side of a replica: load, optimise, the generate step, encoding, and the Backend the
engine drives. Imports torch and diffusers: only model replicas, the build and benchmarks load it.

- ``loading``: device, dtype, weights (``from_pretrained`` for every model source)
- ``optimizing``: module-level speed-ups, torch.compile options and smoke test
- ``sd_turbo``: SD-Turbo's sampling arithmetic (schedules, the Euler step, decode to uint8)
- ``prompts``: tokenizing and the prompt-embedding cache
- ``graphs``: fixed-shape calls replayed as CUDA graphs, stage clocks
- ``generate``: the generate step (a batch in, uint8 images out)
- ``startup``: start-up phase by phase, with the compile fallback
- ``compile_cache`` and ``toolchain``: the artifact's compile cache and what it depends on
- ``encoding``: PNG (fpng), JPEG and WebP
- ``backend``: ``DiffusersBackend``, the engine's interface to all of it
"""
