"""Every port a server opens is chosen by design, never by probing (issue 21: a port found
free by a probe was Ray's dashboard agent's a moment later, and the server never started).

Beside its HTTP port, a Serve server in HAProxy mode opens three side listeners with fixed
defaults in Ray (``ray/serve/_private/constants.py``): HAProxy's stats page (8404) and
Prometheus exporter (9101), and Serve's fallback proxy (8500). HAProxy refuses port 0
("invalid port '0'") and Ray reads these from the environment only, so they are derived from
the HTTP port: two servers on different HTTP ports never share one, and none lies in a range
Ray takes ports from:

- 20000-29999 (``SIDE_BASE`` on): above Ray's worker ports (``min_worker_port`` 10002 to
  ``max_worker_port`` 19999), below the replicas' direct-ingress ports (30000-31000,
  ``RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT``) and Linux's ephemeral range (32768-60999), where
  the ports Ray lets the kernel pick, and its dashboard agent's 52365, live.
- HTTP port ``p`` gets ``SIDE_BASE + 3 * (p % 3333)`` and the next two. Ports 3333 apart share
  them: keep HTTP ports outside 20000-29999 and less than 3333 apart.

Tests and benchmarks, which start servers beside each other, take their HTTP port from
``reserved_port``: a lock per port, held while the server lives, so cooperating processes
(pytest-xdist workers, two suite runs on one host) never pick the same one.
"""

from __future__ import annotations

import contextlib
import fcntl
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

SIDE_BASE = 20000
SIDE_SLOTS = 3333
SIDE_PORTS = (
    "RAY_SERVE_HAPROXY_STATS_PORT",
    "RAY_SERVE_HAPROXY_METRICS_PORT",
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
)
# HTTP ports for servers that tests and benchmarks start: none of Ray's defaults (8000, 8265,
# 8404, 8500, 9000, 9101, 9500) and less than SIDE_SLOTS wide, so their side ports never meet.
LOCAL_PORTS = range(8600, 9000)


def side_ports(http_port: int) -> dict[str, int]:
    """The side listeners' ports (by Ray's environment variable) of the server on ``http_port``."""
    base = SIDE_BASE + len(SIDE_PORTS) * (http_port % SIDE_SLOTS)
    return {key: base + offset for offset, key in enumerate(SIDE_PORTS)}


def _bindable(port: int) -> bool:
    """Nobody outside the lock scheme holds it (a foreign server on a fixed port)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def reserved_port(ports=LOCAL_PORTS, wait: bool = False) -> Iterator[int]:
    """An HTTP port from ``ports`` that no other cooperating process holds, until exit.

    The lock (``flock`` on a file per port, released when the process dies) is the design;
    the bind check only skips a port some other program holds. ``wait`` blocks on the first
    port instead (a test that must use the README's 8000)."""
    folder = Path(tempfile.gettempdir()) / "sdturbo-ports"
    folder.mkdir(exist_ok=True)
    for port in ports:
        with open(folder / f"{port}.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            if not wait and not _bindable(port):
                continue
            yield port
            return
    raise RuntimeError(f"every port in {ports} is taken")
