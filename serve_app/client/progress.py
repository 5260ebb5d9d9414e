"""A progress bar of the seconds an async request has waited: in place on a terminal, a line
at a time in a log."""

from __future__ import annotations

import sys
from collections.abc import Callable


class LogLines:
    """tqdm redraws its line in place with \\r; in a log (not a terminal) each draw is a line."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").rstrip("\n")
        if text.strip():
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_printer(stream=None, total_s: float | None = None) -> Callable[[float], None]:
    """A tqdm bar of the seconds waited (out of ``total_s``, the timeout) on stderr.

    Redrawn in place on a terminal; at most a line every 30 s otherwise (CI logs). Call the
    returned function with the elapsed seconds, and its ``close()`` when done.
    """
    from tqdm import tqdm

    stream = stream or sys.stderr
    tty = hasattr(stream, "isatty") and stream.isatty()
    bar = tqdm(
        total=total_s,
        desc="waiting for the async result",
        unit="s",
        file=stream if tty else LogLines(stream),
        mininterval=0.5 if tty else 30,
        dynamic_ncols=tty,
        bar_format=(
            "{desc}: {n:.0f}/{total:.0f} s |{bar}| {elapsed}"
            if total_s
            else "{desc}: {n:.0f} s [{elapsed}]"
        ),
    )

    def show(elapsed: float) -> None:
        bar.update(max(0.0, elapsed - bar.n))

    show.close = bar.close  # type: ignore[attr-defined]
    return show
