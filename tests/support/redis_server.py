"""A real redis-server for the tests: REDIS_URL when set, else one started on a free port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.ports import free_port


class RedisNotAvailable(RuntimeError):
    pass


@contextmanager
def redis_server() -> Iterator[str]:
    """Yield the URL of a fresh redis-server that is stopped afterwards."""
    program = shutil.which("redis-server")
    if program is None:
        raise RedisNotAvailable(
            "the tests need `redis-server` on PATH (Debian/Ubuntu: apt-get install redis-server), "
            "or REDIS_URL pointing at a Redis they may flush"
        )
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="chatagent-redis-") as workdir:
        process = subprocess.Popen(
            [
                program,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                workdir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                        conn.sendall(b"PING\r\n")
                        if conn.recv(16).startswith(b"+PONG"):
                            break
                except OSError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RedisNotAvailable(f"redis-server did not start on port {port}")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(timeout=10)
