"""Why a replica could not start, in one line a user acts on.

Start-up fails in a handful of ways, each raised deep inside huggingface_hub, diffusers,
safetensors or torch with a message about the library's internals (a hub that cannot be
reached surfaces as "does not appear to have a file named model_index.json"). ``explain`` walks
the exception's chain and names the cause and what to do instead; the traceback stays in the
log at DEBUG level.
"""

from __future__ import annotations

import os
from pathlib import Path


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _named(exc: BaseException, *names: str) -> bool:
    return any(type(e).__name__ in names for e in _chain(exc))


def explain(exc: BaseException, model: str) -> str:
    """One line: what failed, for this model, and what to do about it."""
    import torch

    local = Path(model).exists()
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    alternatives = (
        "give a local diffusers folder (model=/path), warm the Hugging Face cache and set "
        "HF_HUB_OFFLINE=1, or try model=tiny"
    )
    if any(isinstance(e, torch.OutOfMemoryError) for e in _chain(exc)):
        return (
            "out of GPU memory while loading or warming up the model: use fewer or smaller "
            "batch_buckets / warmup_sizes, or a GPU with more memory"
        )
    if _named(exc, "RepositoryNotFoundError", "GatedRepoError"):
        return (
            f"{model} is not a model the Hugging Face hub lets this machine download (unknown id, "
            f"private or gated): check the id and HF_TOKEN, or {alternatives}"
        )
    if _named(exc, "OfflineModeIsEnabled") or (offline and _named(exc, "LocalEntryNotFoundError")):
        return (
            f"{model} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids "
            f"downloading it: download it once with network access, or {alternatives}"
        )
    if _named(
        exc, "LocalEntryNotFoundError", "ConnectError", "ConnectionError", "ConnectTimeout",
        "ConnectionRefusedError", "ReadTimeout", "TimeoutException",
    ):  # fmt: skip
        return (
            f"cannot download {model}: the Hugging Face hub ({endpoint}) is unreachable from "
            f"here and the model is not in the local cache; {alternatives}"
        )
    if _named(exc, "SafetensorError", "SafetensorsParsingError", "DeserializationError") or (
        local and _named(exc, "UnpicklingError", "EOFError")
    ):
        return (
            f"the weights of {model} are truncated or corrupt ({_first_line(exc)}): download "
            "them again, or rebuild the artifact (python -m optimize build)"
        )
    if isinstance(exc, FileNotFoundError) or (local and isinstance(exc, OSError)):
        return f"{_first_line(exc)}: give a folder written by save_pretrained or optimize build"
    if _named(exc, "UnsupportedModel"):
        return f"{model} is not an SD-Turbo-family model this server runs: {_first_line(exc)}"
    return f"{type(exc).__name__}: {_first_line(exc)}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
