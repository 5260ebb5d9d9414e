"""Reading an applied stack's ``terraform output -json`` (the build job and the release steps)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path


class TerraformError(Exception):
    """terraform output failed; the message says where and why."""


def terraform_outputs(folder: Path) -> dict:
    """`terraform output -json` of an applied stack, as plain values."""
    try:
        result = subprocess.run(
            ["terraform", f"-chdir={folder}", "output", "-json"],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise TerraformError(
            f"terraform output in {folder} failed: {' '.join(detail.split())}"
        ) from None
    return {name: value["value"] for name, value in json.loads(result.stdout).items()}
