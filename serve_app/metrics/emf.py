"""CloudWatch Embedded Metric Format: a replica's figures as JSON lines that CloudWatch Logs turns
into metrics (namespace ``metrics_namespace``, dimensions EndpointName and VariantName), with no
agent and no permission beyond writing the container's logs.

Aggregated, not one line per request: a line every ``interval_s`` (60 s on SageMaker), sooner
only when a distribution already holds 100 values, EMF's limit per metric in one event
(CloudWatch_Embedded_Metric_Format_Specification: "arrays ... up to 100 values"). Distributions
(QueueWait, BatchSize, BatchFill, the stage times) are the raw values, so CloudWatch's
percentiles (the dashboard's p50/p90/p99, the QueueWait alarm's p90) are exact; EMF has no
statistic sets. Counts (Requests, RequestsShed, PromptCacheHits/Misses, CompileFallbacks,
CompileCacheMismatches) are one sum per line, 0 included, so an idle interval reads as zero
rather than missing data.
Gauges (QueueLength, GpuMemoryUsed) are the interval's samples, one a second.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable

from serve_app.engine.metrics import Recorder, Sample

logger = logging.getLogger("sdturbo")
MAX_VALUES = 100  # per metric per event: the EMF specification's limit
# Every replica appends to the same pipe (the container's stdout), as does Ray's log forwarding:
# a write of at most PIPE_BUF (4096 bytes on Linux) is never interleaved with another (pipe(7)).
MAX_LINE_BYTES = 4000
GENERATE_ROUTES = ("/predict", "/invocations")

# name -> CloudWatch unit; the names are a contract with infra/dashboard.tf and its alarm.
UNITS = {
    "QueueWait": "Milliseconds",
    "BatchSize": "Count",
    "BatchFill": "None",
    "TextEncoderTime": "Milliseconds",
    "UNetTime": "Milliseconds",
    "VaeDecodeTime": "Milliseconds",
    "EncodeTime": "Milliseconds",
    "QueueLength": "Count",
    "GpuMemoryUsed": "Bytes",
    "Requests": "Count",
    "RequestsShed": "Count",
    "PromptCacheHits": "Count",
    "PromptCacheMisses": "Count",
    "CompileFallbacks": "Count",
    "CompileCacheMismatches": "Count",
}
COUNTS = (
    "Requests",
    "RequestsShed",
    "PromptCacheHits",
    "PromptCacheMisses",
    "CompileFallbacks",
    "CompileCacheMismatches",
)
STAGE_METRICS = {
    "text_encoder": "TextEncoderTime",
    "unet": "UNetTime",
    "vae_decode": "VaeDecodeTime",
}


def emf_document(
    namespace: str, dimensions: dict[str, str], values: dict, timestamp_ms: int
) -> dict:
    """One EMF event: the dimensions and metric values at its root, ``_aws`` naming them."""
    present = {name: value for name, value in values.items() if value != []}
    return {
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [
                {
                    "Namespace": namespace,
                    "Dimensions": [list(dimensions)],
                    "Metrics": [{"Name": name, "Unit": UNITS[name]} for name in present],
                }
            ],
        },
        **dimensions,
        **present,
    }


class EmfRecorder(Recorder):
    """Aggregates under a lock (the event loop, the pipeline thread and the sampler all record)
    and writes a line from its own thread every ``interval_s``, and from ``close``."""

    def __init__(
        self,
        namespace: str,
        dimensions: dict[str, str],
        write: Callable[[str], None],
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ):
        self.namespace, self.dimensions, self.write = namespace, dimensions, write
        self.interval_s, self.clock = interval_s, clock
        self._lock = threading.Lock()
        self._values = self._empty()
        self._stopped = threading.Event()
        self._full = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _empty() -> dict:
        return {name: 0 if name in COUNTS else [] for name in UNITS}

    # --- recording (cheap: an append or an add under the lock) -----------------------------

    def _add(self, name: str, value: float) -> None:
        with self._lock:
            values = self._values[name]
            values.append(value)
            full = len(values) == MAX_VALUES
        if full:  # the writer thread writes it: no I/O on the event loop or the pipeline thread
            self._full.set()

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def request(self, route, status, total_ms):
        if route in GENERATE_ROUTES:
            self._count("Requests")

    def shed(self, reason):
        self._count("RequestsShed")

    def queue_wait(self, ms):
        self._add("QueueWait", ms)

    def pipeline_call(self, images, max_images, stages_ms):
        self._add("BatchSize", images)
        self._add("BatchFill", min(1.0, images / max_images))
        for stage, name in STAGE_METRICS.items():
            if stage in stages_ms:
                self._add(name, stages_ms[stage])

    def encoded(self, ms):
        self._add("EncodeTime", ms)

    def sampled(self, sample: Sample):
        self._add("QueueLength", sample.queue_length)
        if sample.gpu_memory_bytes is not None:
            self._add("GpuMemoryUsed", sample.gpu_memory_bytes)
        with self._lock:
            self._values["PromptCacheHits"] += sample.prompt_cache_hits
            self._values["PromptCacheMisses"] += sample.prompt_cache_misses
            self._values["CompileFallbacks"] += sample.compile_fallbacks
            self._values["CompileCacheMismatches"] += sample.compile_cache_mismatches

    # --- writing ---------------------------------------------------------------------------

    def flush(self) -> None:
        """Write what was recorded since the last write: one line, or more when a distribution
        holds over 100 values (recorded while the writer was waking up) or a line would not
        fit in one atomic pipe write."""
        with self._lock:
            values, self._values = self._values, self._empty()
        timestamp_ms = int(self.clock() * 1000)
        try:
            for line in self.lines(values, timestamp_ms):
                self.write(line)
        except Exception:  # a closed or full output must never fail the replica
            logger.warning("EMF line not written", exc_info=True)

    def lines(self, values: dict, timestamp_ms: int) -> list[str]:
        chunks = max(1, *(-(-len(v) // MAX_VALUES) for v in values.values() if isinstance(v, list)))
        lines = []
        for i in range(chunks):
            part = {
                name: [round(x, 3) for x in value[i * MAX_VALUES : (i + 1) * MAX_VALUES]]
                if isinstance(value, list)
                else (value if i == 0 else 0)
                for name, value in values.items()
            }
            lines += self._packed(part, timestamp_ms)
        return lines

    def _packed(self, part: dict, timestamp_ms: int) -> list[str]:
        """``part`` as few lines as fit MAX_LINE_BYTES each: the counts first, on one line, then
        the distributions, as many per line as fit (one alone always does: 100 values)."""
        lines, names = [], [n for n in part if not isinstance(part[n], list)]
        for name in [n for n in part if isinstance(part[n], list) and part[n]]:
            line = self._line({k: part[k] for k in [*names, name]}, timestamp_ms)
            if len(line.encode()) > MAX_LINE_BYTES and names:
                lines.append(self._line({k: part[k] for k in names}, timestamp_ms))
                names = []
            names.append(name)
        if names:
            lines.append(self._line({k: part[k] for k in names}, timestamp_ms))
        return lines

    def _line(self, values: dict, timestamp_ms: int) -> str:
        document = emf_document(self.namespace, self.dimensions, values, timestamp_ms)
        return json.dumps(document, separators=(",", ":"))

    def start(self) -> EmfRecorder:
        self._thread = threading.Thread(target=self._run, name="sdturbo-emf", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        deadline = time.monotonic() + self.interval_s
        while not self._stopped.is_set():
            self._full.wait(max(0.0, deadline - time.monotonic()))
            if self._stopped.is_set():
                return
            self._full.clear()
            self.flush()
            if time.monotonic() >= deadline:
                deadline = time.monotonic() + self.interval_s

    def close(self) -> None:
        if not self._stopped.is_set():
            self._stopped.set()
            self._full.set()  # wakes the writer, which returns
            self.flush()


def line_writer(path: str) -> Callable[[str], None]:
    """A function that appends one line to ``path`` ('-': this process's standard output) in
    one unbuffered write, so a line of at most PIPE_BUF bytes reaches a pipe whole."""
    if path == "-":
        stream = sys.stdout.buffer
    else:
        try:
            # Kept open for the replica's life, not a with-block.
            stream = open(path, "ab", buffering=0)  # noqa: SIM115
        except OSError as exc:  # e.g. the starting process's stdout is a socket
            logger.warning(
                "EMF lines go to this replica's stdout: %s cannot be opened (%s)", path, exc
            )
            stream = sys.stdout.buffer
    lock = threading.Lock()

    def write(line: str) -> None:
        with lock:
            stream.write((line + "\n").encode())
            stream.flush()

    return write
