"""Editing a tfvars file as a person would: one setting's line replaced, or appended."""

from __future__ import annotations

import re
from pathlib import Path

TFVARS_LINE = re.compile(r"^model_artifact\s*=.*$", re.MULTILINE)


def update_tfvars(path: Path, key: str) -> None:
    """Set model_artifact in a tfvars file (replacing the line, or appending one)."""
    line = f'model_artifact = "{key}"'
    text = path.read_text() if path.exists() else ""
    if TFVARS_LINE.search(text):
        text = TFVARS_LINE.sub(line, text, count=1)
    else:
        text += ("" if text.endswith("\n") or not text else "\n") + line + "\n"
    path.write_text(text)
