"""torch.compile caches shipped in the model artifact, and the manifest that guards them.

``optimize build`` compiles every configured shape once and stores two things next to the
weights:

- ``compile_cache.bin``: what ``torch.compiler.save_cache_artifacts()`` returns (Inductor's FX
  graph and AOTAutograd caches, and on CUDA the Triton kernels, autotuning results included);
- ``inductor_cache/``: Inductor's on-disk cache folder from the build. On a CPU the portable
  artifacts still leave every C++ kernel to be rebuilt with gcc (measured: most of the cached
  start-up time); the folder holds the built kernels, keyed by a hash of their source and
  compiler flags, so a different CPU or compiler simply misses and rebuilds.

A server that finds them loads them before it compiles, but only where they can be valid:
Inductor's artifacts load only on the same torch/triton version and the same device kind (torch
docs, "Compile Time Caching"). Anything else is one log line and a normal compile, never a crash.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
from pathlib import Path

import torch

from serve_app.config import MANIFEST_NAME, CompileSettings

logger = logging.getLogger("sdturbo")

CACHE_NAME = "compile_cache.bin"
KERNELS_NAME = "inductor_cache"
MANIFEST_VERSION = 1


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def device_name(device: torch.device) -> str | None:
    if device.type == "cuda":
        # None when an artifact for a GPU is written on a machine without one (no compile).
        return torch.cuda.get_device_name(device) if torch.cuda.is_available() else None
    return _cpu_model() or platform.processor() or platform.machine()


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def environment(device: torch.device) -> dict:
    """What compiled code depends on, as recorded in a manifest and compared at start-up."""
    env = {
        "torch": torch.__version__,
        "triton": _version("triton") or _version("pytorch-triton"),
        "diffusers": _version("diffusers"),
        "sdturbo": _version("sdturbo"),
        "python": platform.python_version(),
        "device_kind": device.type,
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda" and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(device)
        env["cuda_capability"] = f"{major}.{minor}"
        env["cuda"] = torch.version.cuda
    return env


# What Inductor's FX-graph cache key depends on (torch ``_inductor/codecache.py``: the torch and
# triton versions, and on CUDA the device's name, compute capability and CUDA version): any
# mismatch and every graph would miss and compile anew, so say so and do not load. An H100 PCIe
# artifact on an H100 SXM misses.
MUST_MATCH = ("torch", "triton", "device_kind")
MUST_MATCH_CUDA = ("device_name", "cuda_capability", "cuda")


def mismatch(manifest: dict, here: dict) -> str | None:
    """Why a manifest's compile cache cannot be used here, or None if it can."""
    built = manifest.get("environment", {})
    keys = MUST_MATCH + (MUST_MATCH_CUDA if here.get("device_kind") == "cuda" else ())
    for key in keys:
        if built.get(key) != here.get(key):
            return f"{key} differs (artifact: {built.get(key)}, here: {here.get(key)})"
    return None


def read_manifest(folder: str | Path) -> dict | None:
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def read_manifest_quietly(folder: str | Path) -> dict | None:
    try:
        return read_manifest(folder)
    except (OSError, ValueError):
        return None


def inductor_cache_dir() -> Path:
    """Where Inductor keeps its cache in this process ($TORCHINDUCTOR_CACHE_DIR or its default)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir())


def install_kernels(source: Path) -> int:
    """Copy a shipped Inductor cache folder into this process's (the artifact may be read-only)."""
    if not source.is_dir():
        return 0
    shutil.copytree(source, inductor_cache_dir(), dirs_exist_ok=True)
    return sum(1 for path in source.rglob("*.so"))


# Settings that decide which graphs get compiled: where the server's differ from the build's,
# the shapes it adds run uncompiled (no request ever compiles).
COMPILE_SETTINGS = tuple(CompileSettings.model_fields)


def settings_differences(manifest: dict, wanted: dict) -> list[str]:
    built = manifest.get("serve_settings", {})
    return [
        f"{key}={wanted[key]} (built with {built[key]})"
        for key in COMPILE_SETTINGS
        if key in built and key in wanted and built[key] != wanted[key]
    ]


def load(folder: str | Path, device: torch.device, wanted: dict | None = None) -> tuple[bool, str]:
    """Load the folder's compile cache if its manifest matches this machine.

    ``wanted``: the server's settings, to say which differ from the build's. Returns
    (loaded, reason): the reason is the one log line saying what happened and why.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return False, f"no compile cache: {folder} is not a local folder"
    try:
        manifest = read_manifest(folder)
    except (OSError, ValueError) as exc:
        return False, f"no compile cache: unreadable {MANIFEST_NAME} ({exc})"
    if manifest is None:
        return False, f"no compile cache: {folder} holds no {MANIFEST_NAME}"
    cache_file = folder / manifest.get("compile_cache", {}).get("file", CACHE_NAME)
    if not cache_file.is_file():
        return False, f"no compile cache: the manifest lists none, or {cache_file.name} is missing"
    reason = mismatch(manifest, environment(device))
    if reason is not None:
        return False, f"compile cache not used, compiling instead: {reason}"
    try:
        info = torch.compiler.load_cache_artifacts(cache_file.read_bytes())
    except Exception as exc:  # a corrupt or foreign cache must not stop the server
        return False, f"compile cache not used, compiling instead: loading failed ({exc!r})"
    if info is None:  # torch logs why (e.g. a checksum mismatch) and loads nothing
        return False, "compile cache not used, compiling instead: loading failed (see above)"
    count = sum(len(keys) for keys in info.artifacts.values())
    try:
        kernels = install_kernels(folder / KERNELS_NAME)
    except OSError as exc:
        kernels = 0
        logger.warning("compiled kernels not installed (%s): they will be rebuilt", exc)
    message = f"compile cache loaded: {count} artifacts, {kernels} prebuilt kernel libraries"
    differences = settings_differences(manifest, wanted or {})
    if differences:
        message += "; this server differs from the build in " + ", ".join(differences)
    return True, message


def save(folder: str | Path) -> dict | None:
    """Write what this process compiled to the folder; return the manifest's entry for it.

    Call it in a process that started with an empty Inductor cache folder, so the shipped
    kernels are exactly this model's.
    """
    result = torch.compiler.save_cache_artifacts()
    if result is None:
        return None
    data, info = result
    folder = Path(folder)
    (folder / CACHE_NAME).write_bytes(data)
    # Locks and temporary files are local to the machine that compiled.
    ignore = shutil.ignore_patterns("locks", "*.lock", "*.tmp*", "__pycache__")
    shutil.copytree(inductor_cache_dir(), folder / KERNELS_NAME, ignore=ignore)
    return {
        "file": CACHE_NAME,
        "bytes": len(data),
        "artifacts": {kind: len(keys) for kind, keys in info.artifacts.items()},
        "kernels": KERNELS_NAME,
    }
