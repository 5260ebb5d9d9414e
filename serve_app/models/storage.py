"""Where built models are kept, and saving one exactly once even with concurrent builders."""

from __future__ import annotations

import json
import os
from pathlib import Path

# Bump when an architecture here changes, so cached copies are rebuilt.
BUILD_VERSION = "1"


def cache_root() -> Path:
    return Path(os.environ.get("SDTURBO_CACHE") or Path.home() / ".cache" / "sdturbo")


def save_once(folder: Path, build, marker: str = "config.json") -> Path:
    """Build and ``save_pretrained`` into folder once; concurrent callers never see half of it."""
    if (folder / marker).is_file():
        return folder
    staging = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    build().save_pretrained(staging)
    (staging / "SDTURBO_BUILT.json").write_text(json.dumps({"version": BUILD_VERSION}))
    try:
        staging.rename(folder)  # atomic
    except OSError:
        if not (folder / marker).is_file():
            raise
    return folder
