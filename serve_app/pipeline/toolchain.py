"""What compiled code depends on: library versions, the device, its driver, the assembler.

Recorded in an artifact's manifest by ``optimize build`` and compared at start-up
(``compile_cache.load``): some differences make every cached graph miss, so the cache is not
loaded; the others are reported, since they can make a cached kernel slower or unloadable.
"""

from __future__ import annotations

import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path

import torch

NVIDIA_PROC_VERSION = Path("/proc/driver/nvidia/version")

# What Inductor's FX-graph cache key depends on (torch ``_inductor/codecache.py``: the torch and
# triton versions, and on CUDA the device's name, compute capability and CUDA version): any
# mismatch and every graph would miss and compile anew, so say so and do not load. An H100 PCIe
# artifact on an H100 SXM misses.
MUST_MATCH = ("torch", "triton", "device_kind")
MUST_MATCH_CUDA = ("device_name", "cuda_capability", "cuda")
# Reported when they differ, the cache still loads: a newer driver runs older cubins; ptxas and
# diffusers change what a fresh compile would produce; the Inductor flags are the build's.
REPORTED = ("driver", "ptxas", "diffusers", "inductor")


def version(package: str) -> str | None:
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


def driver_version(proc_file: Path = NVIDIA_PROC_VERSION) -> str | None:
    """The NVIDIA kernel driver's version (e.g. "550.127.05"), from the file the driver writes
    (visible in containers too), else nvidia-smi; None without an NVIDIA driver."""
    try:
        text = proc_file.read_text()
    except OSError:
        text = ""
    match = re.search(r"Kernel Module(?: for \w+)?\s+(\d+\.\d+(?:\.\d+)?)", text)
    if match:
        return match.group(1)
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip().splitlines()[0] if result.stdout.strip() else None


def ptxas_version() -> str | None:
    """The version of the ptxas Triton compiles with (it ships its own), e.g. "12.8"."""
    try:
        import triton
    except ImportError:
        return None
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.is_file():
        return None
    try:
        result = subprocess.run(
            [str(ptxas), "--version"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"release (\d+\.\d+)", result.stdout)
    return match.group(1) if match else None


def environment(device: torch.device, inductor: dict | None = None) -> dict:
    """What compiled code depends on, as recorded in a manifest and compared at start-up."""
    env = {
        "torch": torch.__version__,
        "triton": version("triton") or version("pytorch-triton"),
        "diffusers": version("diffusers"),
        "sdturbo": version("sdturbo"),
        "python": platform.python_version(),
        "device_kind": device.type,
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "driver": None,
        "ptxas": None,
        "inductor": inductor or {},
    }
    if device.type == "cuda" and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(device)
        env["cuda_capability"] = f"{major}.{minor}"
        env["cuda"] = torch.version.cuda
        env["driver"] = driver_version()
        env["ptxas"] = ptxas_version()
    return env


def blocking_difference(built: dict, here: dict) -> str | None:
    """Why a cache built in ``built`` cannot be used ``here``, or None if it can."""
    keys = MUST_MATCH + (MUST_MATCH_CUDA if here.get("device_kind") == "cuda" else ())
    for key in keys:
        if built.get(key) != here.get(key):
            return f"{key} differs (artifact: {built.get(key)}, here: {here.get(key)})"
    return None


def reported_differences(built: dict, here: dict) -> list[str]:
    """The differences worth a warning that do not stop the cache from loading."""
    return [
        f"{key} (artifact: {built.get(key)}, here: {here.get(key)})"
        for key in REPORTED
        if key in built and built.get(key) != here.get(key)
    ]
