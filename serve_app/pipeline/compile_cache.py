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

import atexit
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from serve_app.config import MANIFEST_NAME, CompileSettings
from serve_app.pipeline import toolchain

logger = logging.getLogger("sdturbo")

CACHE_NAME = "compile_cache.bin"
KERNELS_NAME = "inductor_cache"
MANIFEST_VERSION = 1


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


OWNER = "_SDTURBO_INDUCTOR_CACHE_OWNER"


def use_private_inductor_cache() -> Path:
    """Give this process an Inductor cache folder of its own, unless the user chose one.

    Processes sharing one (Inductor's default, per user in /tmp: every replica on a host, a
    build, a test run) rewrite each other's kernel libraries while the others have them loaded,
    and a shared object whose file changes under a process crashes it. The artifact brings the
    kernels a replica needs, so nothing worth sharing is lost. A folder inherited from the
    process that started this one (Ray workers inherit its environment) is not the user's."""
    owner = os.environ.get(OWNER)
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen and (owner is None or owner == str(os.getpid())):
        return Path(chosen)
    folder = tempfile.mkdtemp(prefix=f"torchinductor-{os.getpid()}-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    os.environ[OWNER] = str(os.getpid())
    return Path(folder)


def inductor_cache_dir() -> Path:
    """Where Inductor keeps its cache in this process ($TORCHINDUCTOR_CACHE_DIR or its default)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir())


def install_kernels(source: Path) -> int:
    """Copy a shipped Inductor cache folder into this process's (the artifact may be read-only).

    Files already there are kept: a kernel library this process has loaded (the compile smoke
    test's, which every build ships too) must never be overwritten in place; a loaded shared
    object whose file changes under it crashes the process. Names are content hashes, so an
    existing file is the same kernel."""
    if not source.is_dir():
        return 0
    target = inductor_cache_dir()
    for path in source.rglob("*"):
        destination = target / path.relative_to(source)
        if path.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
        elif not destination.exists():
            destination.parent.mkdir(parents=True, exist_ok=True)
            partial = destination.with_name(f".{destination.name}.partial")
            shutil.copy2(path, partial)
            partial.replace(destination)  # atomic: no reader ever sees half a library
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


def _find(folder: Path) -> tuple[dict, Path] | str:
    """The folder's manifest and cache file, or why there is none."""
    if not folder.is_dir():
        return f"no compile cache: {folder} is not a local folder"
    try:
        manifest = read_manifest(folder)
    except (OSError, ValueError) as exc:
        return f"no compile cache: unreadable {MANIFEST_NAME} ({exc})"
    if manifest is None:
        return f"no compile cache: {folder} holds no {MANIFEST_NAME}"
    cache_file = folder / manifest.get("compile_cache", {}).get("file", CACHE_NAME)
    if not cache_file.is_file():
        return f"no compile cache: the manifest lists none, or {cache_file.name} is missing"
    return manifest, cache_file


def load(
    folder: str | Path, device: torch.device, wanted: dict | None = None, inductor=None
) -> tuple[bool, str]:
    """Load the folder's compile cache if its manifest matches this machine.

    ``wanted``: the server's settings, to say which differ from the build's; ``inductor``: its
    Inductor configuration. Returns (loaded, reason): the reason is the one log line saying
    what happened and why.
    """
    folder = Path(folder)
    found = _find(folder)
    if isinstance(found, str):
        return False, found
    manifest, cache_file = found
    built, here = manifest.get("environment", {}), toolchain.environment(device, inductor)
    reason = toolchain.blocking_difference(built, here)
    if reason is not None:
        return False, f"compile cache not usable here: {reason}"
    try:
        info = torch.compiler.load_cache_artifacts(cache_file.read_bytes())
    except Exception as exc:  # a corrupt or foreign cache must not stop the server
        return False, f"compile cache not usable: loading failed ({exc!r})"
    if info is None:  # torch logs why (e.g. a checksum mismatch) and loads nothing
        return False, "compile cache not usable: loading failed (see above)"
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
    reported = toolchain.reported_differences(built, here)
    if reported:
        logger.warning("compile cache built elsewhere: %s differ", "; ".join(reported))
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
