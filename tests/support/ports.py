"""Free loopback ports for the processes a test starts.

A port is handed out here and bound later by another process, so two allocators must never hand
out the same one meanwhile. The kernel's `bind(port 0)` picks from the ephemeral range, where
outgoing connections take their ports too and where a second pytest-xdist worker's `bind(0)` can
return the port this worker handed out a moment ago. So each worker takes ports from a range of
its own, below the ephemeral range (32768-60999 on Linux), trying them in turn from a random start
and checking each is free. A Redis Cluster node's bus port (port + 10000) stays below it as well.
"""

from __future__ import annotations

import itertools
import os
import random
import socket

_FIRST, _LAST = 12_000, 19_999  # bus ports 22000-29999: clear of these and of the ephemeral range


def _own_range() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker) if worker.isdigit() else 0
    span = (_LAST - _FIRST + 1) // max(workers, 1)
    start = _FIRST + (index % max(workers, 1)) * span
    return range(start, start + span)


# Every fourth port: a service's neighbours (WORKERS serve their metrics on METRICS_PORT + i)
# are never handed out to another.
_STRIDE = 4
_RANGE = _own_range()[::_STRIDE]
_NEXT = itertools.count(random.randrange(len(_RANGE)))


def free_port() -> int:
    for _ in range(len(_RANGE)):
        port = _RANGE[next(_NEXT) % len(_RANGE)]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use (another run, or a process of ours still holding it)
            return port
    raise RuntimeError(f"no free port in {_RANGE.start}-{_RANGE.stop - 1} (every {_STRIDE}th)")
