"""The serving engine: admission, the batch queue and loop, the out-of-memory policy, results.

- ``core``: ``Engine``, which composes the rest around a Backend
- ``admission``: cost model and refusals (queue full, work beyond the timeout)
- ``queue``: ``BatchQueue``, batches formed when the model is free
- ``batch``: the types that cross to a backend (``Job``, ``ImageBatch``, ``Generated``)
- ``oom``: halving a call that ran out of memory
- ``results``: what a request gets back (``GenerateResult``, warnings, timings)
- ``errors``: one exception type per fault

No torch: the engine is tested with a fake backend of fixed cost (``loadtest/fakes.py``).
"""

from serve_app.engine.core import Backend, Engine
from serve_app.engine.results import GenerateResult

__all__ = ["Backend", "Engine", "GenerateResult"]
