"""Fixed-shape calls, replayed as CUDA graphs on a GPU, and stage clocks that never synchronise.

A *replayable* call reads and writes only buffers allocated before it was made, so it can be
captured once as a CUDA graph and replayed with new data copied into its inputs: one launch
for the whole denoising loop instead of a few thousand kernel launches, which at batch 1 are
what limits SD-Turbo's UNet (issue 16: 16.8 ms at batch 1 against 27.9 ms at batch 8).

The rules that keep replays correct in a server (PyTorch docs, "CUDA Graphs"):
- capture after warm-up calls on a side stream (compilation, autotuning, cuBLAS workspaces and
  lazy initialisation all happen there, never inside the capture);
- every graph's inputs and outputs live outside the shared memory pool, so the graphs may share
  it: they run one at a time on one stream (the engine's single pipeline thread), and whatever
  a graph leaves in the pool is dead before the next replay;
- outputs are copied out before the next replay overwrites them (``StaticStep`` does).

On the CPU the same calls run directly over the same buffers, which proves the buffer logic.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

# Replays before capture: the first compiles or autotunes, the second runs what was built.
WARMUP_CALLS = 2


def replayable(call: Callable[[], None], *, graph: bool, pool=None) -> Callable[[], None]:
    """Warm ``call`` up; on CUDA with ``graph``, capture it and return the graph's replay."""
    if not graph:
        call()
        return call
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(WARMUP_CALLS):
            call()
    torch.cuda.current_stream().wait_stream(side)
    cuda_graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(cuda_graph, pool=pool):
        call()
    return cuda_graph.replay


def graph_pool(device: torch.device):
    return torch.cuda.graph_pool_handle() if device.type == "cuda" else None


class StageClock:
    """Marks between stages: CUDA events on a GPU (read after the batch's one synchronisation),
    the host clock elsewhere. ``read()`` gives milliseconds per stage."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._marks: list[tuple[str, object]] = []

    def mark(self, name: str) -> None:
        """Start of stage ``name`` (and the end of the previous one)."""
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._marks.append((name, event))
        else:
            self._marks.append((name, time.perf_counter()))

    def read(self) -> dict[str, float]:
        """Call once the batch's work is done (after its synchronisation)."""
        totals: dict[str, float] = {}
        for (name, start), (_, end) in zip(self._marks, self._marks[1:], strict=False):
            ms = start.elapsed_time(end) if self.cuda else (end - start) * 1000
            totals[name] = totals.get(name, 0.0) + ms
        return totals
