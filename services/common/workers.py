"""Several worker processes of one service on one port, for when one core is the limit.

Each worker is the service itself (`python -m services.<name>`), started with `REUSE_PORT=1` so
that all of them bind PORT (and HEALTH_PORT) with SO_REUSEPORT: the kernel spreads incoming
connections over them. Worker i serves its metrics on METRICS_PORT + i. They share no memory,
so whatever they must agree on (sessions, limits, budgets, breaker state) has to live in Redis.

The supervisor is the container's main process: SIGTERM or SIGINT goes to every worker (each
then drains as a single process does) and it exits once all have, with status 0 if all did; a
worker that dies on its own is started again after a pause, so one crash does not take the
others' calls down with it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from typing import Final

logger = logging.getLogger(__name__)

_RESTART_PAUSE_SECONDS: Final = 1.0
_POLL_SECONDS: Final = 0.2


def worker_env(base: Mapping[str, str], index: int, metrics_port: int) -> dict[str, str]:
    """The environment of worker `index`: the supervisor's, sharing the port, one worker."""
    env = dict(base)
    env["REUSE_PORT"] = "1"
    env["WORKERS"] = "1"
    if metrics_port:
        env["METRICS_PORT"] = str(metrics_port + index)
    return env


def supervise(module: str, count: int, metrics_port: int, stop_timeout_seconds: float) -> int:
    """Run `count` workers of `python -m module` until SIGTERM or SIGINT; the exit status."""
    stopping = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    def start(index: int) -> subprocess.Popen[bytes]:
        worker = subprocess.Popen(
            [sys.executable, "-m", module], env=worker_env(os.environ, index, metrics_port)
        )
        logger.info("worker started", extra={"worker": index, "pid": worker.pid})
        return worker

    workers = [start(index) for index in range(count)]
    while not stopping.wait(_POLL_SECONDS):
        for index, worker in enumerate(workers):
            code = worker.poll()
            if code is None:
                continue
            logger.error(
                "worker exited on its own; starting it again",
                extra={"worker": index, "status": code, "restart_in_s": _RESTART_PAUSE_SECONDS},
            )
            if stopping.wait(_RESTART_PAUSE_SECONDS):
                break
            workers[index] = start(index)
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + stop_timeout_seconds
    status = 0
    for index, worker in enumerate(workers):
        try:
            code = worker.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.error("worker did not stop in time: killed", extra={"worker": index})
            worker.kill()
            code = worker.wait()
        if code == -signal.SIGTERM:
            code = 0  # still starting when asked to stop: it stopped, as asked
        elif code < 0:
            code = 128 - code  # killed by a signal, as a shell reports it
        status = status or code
    logger.info("workers stopped", extra={"status": status})
    return status
