"""Run a function in a fresh Python process and get its JSON result back.

The start-up and GPU benchmarks, and the compile-cache tests, each need a process that has
compiled nothing yet. ``run_fresh("loadtest.bench_startup:start", {...})`` runs
``python -m loadtest.fresh loadtest.bench_startup:start '<json>'``; the child calls the function
with the decoded argument and prints its (JSON) result as its last line of output.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time


class FreshProcessFailed(RuntimeError):
    """The child exited non-zero; the message ends with its stderr."""


def run_fresh(target: str, argument=None, env: dict | None = None, timeout_s: float = 1800):
    """Call ``module:function(argument)`` in a new process; return (result, seconds to exit)."""
    command = [sys.executable, "-m", "loadtest.fresh", target, json.dumps(argument)]
    start = time.time()
    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if proc.returncode != 0:
        raise FreshProcessFailed(f"{target} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result, time.time() - start


def main(argv: list[str]) -> int:
    target, argument = argv[0], json.loads(argv[1])
    module, function = target.split(":")
    result = getattr(importlib.import_module(module), function)(argument)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
