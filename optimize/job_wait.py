"""Waiting for a SageMaker Processing job, with its status and elapsed time on stderr."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

TERMINAL = ("Completed", "Failed", "Stopped")


def wait_for_job(
    sm,
    name: str,
    poll_s: float = 30.0,
    stream=None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict:
    """Poll DescribeProcessingJob until it ends, with the status and elapsed time on stderr."""
    from tqdm import tqdm

    from serve_app.client import LogLines

    stream = stream or sys.stderr
    tty = hasattr(stream, "isatty") and stream.isatty()
    bar = tqdm(
        desc=name,
        bar_format="{desc}: {postfix} [{elapsed}]",
        file=stream if tty else LogLines(stream),
        mininterval=0 if tty else 60,  # a line a minute in CI logs
        dynamic_ncols=tty,
    )
    try:
        while True:
            described = sm.describe_processing_job(ProcessingJobName=name)
            status = described["ProcessingJobStatus"]
            bar.set_postfix_str(status)
            if status in TERMINAL:
                return described
            sleep(poll_s)
    finally:
        bar.close()
