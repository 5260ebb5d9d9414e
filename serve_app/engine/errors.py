"""Why the engine did not complete a request: one exception type per fault. The HTTP edge maps
each type once to a status and an error type (``serve_app/api/errors.py``)."""

from __future__ import annotations


class EngineError(Exception):
    """A request the engine did not complete."""


class InvalidRequest(EngineError):
    """Valid alone, but not for this server's configuration."""


class Overloaded(EngineError):
    """The queue is full, or the request would not start before its deadline."""


class ShuttingDown(EngineError):
    """Draining for shutdown: no new work."""


class ModelUnavailable(EngineError):
    """The model failed to load: another instance may serve it."""


class TimedOut(EngineError):
    """Not done within the request timeout."""


class OutOfMemory(EngineError):
    """Even alone, this request did not fit in accelerator memory."""


class GenerationFailed(EngineError):
    """The pipeline call failed for a reason of ours (logged with its traceback)."""
