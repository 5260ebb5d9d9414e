"""Per-stage times of a pipeline call: text encoder, UNet, VAE decoder, post-processing.

Forward hooks put a CUDA event (on a GPU, else a host clock reading) before and after each
module, so timing adds no synchronisation inside the call; ``collect()`` reads them once the
call is done. Used by ``loadtest.bench_gpu`` on the server's own code path.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict

import torch


class _HostEvent:
    def __init__(self):
        self.at = 0.0

    def record(self) -> None:
        self.at = time.perf_counter()

    def elapsed_time(self, end: _HostEvent) -> float:
        return (end.at - self.at) * 1000


class StageTimer:
    """Attach to a pipeline; ``collect()`` returns milliseconds per stage since the last one."""

    def __init__(self, pipe):
        self.cuda = pipe.device.type == "cuda"
        self._events: list[tuple[str, object, object]] = []
        self._handles = []
        modules = {
            "text_encoder": pipe.text_encoder,
            "unet": pipe.unet,
            "vae_decode": pipe.vae.decoder,
        }
        for name, module in modules.items():
            self._handles.append(module.register_forward_pre_hook(self._start(name)))
            self._handles.append(module.register_forward_hook(self._end(name)))
        self._open: dict[str, object] = {}

    def _event(self):
        return torch.cuda.Event(enable_timing=True) if self.cuda else _HostEvent()

    def _start(self, name: str):
        def hook(*_):
            event = self._event()
            event.record()
            self._open[name] = event

        return hook

    def _end(self, name: str):
        def hook(*_):
            event = self._event()
            event.record()
            self._events.append((name, self._open.pop(name), event))

        return hook

    @contextlib.contextmanager
    def stage(self, name: str):
        self._start(name)()
        yield
        self._end(name)()

    def collect(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
        totals: dict[str, float] = defaultdict(float)
        for name, start, end in self._events:
            totals[name] += start.elapsed_time(end)
        self._events.clear()
        return dict(totals)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
