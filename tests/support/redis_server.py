"""A real redis-server for the tests: REDIS_URL when set, else one started on a free port.

`RedisServer` is the process itself, for tests that take Redis away: pause it (SIGSTOP: the port
stays open and nothing answers, as with a hung server), resume it, kill it, and start it again on
the same port.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

from tests.support.ports import free_port


class RedisNotAvailable(RuntimeError):
    pass


class RedisServer:
    """One redis-server on a free loopback port, without persistence."""

    def __init__(self) -> None:
        program = shutil.which("redis-server")
        if program is None:
            raise RedisNotAvailable(
                "the tests need `redis-server` on PATH (Debian/Ubuntu: apt-get install "
                "redis-server), or REDIS_URL pointing at a Redis they may flush"
            )
        self._program = program
        self.port = free_port()
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._paused = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start it (again, on the same port) and wait until it answers PING."""
        if self._workdir is None:
            self._workdir = tempfile.TemporaryDirectory(prefix="chatagent-redis-")
        self._process = subprocess.Popen(
            [
                self._program,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._workdir.name,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        self._paused = False
        deadline = time.monotonic() + 10
        while not self._answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RedisNotAvailable(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)
        return self

    def _answers(self) -> bool:
        """Whether our redis-server answers on the port: another test run's Redis that took the
        port first (ours then fails to bind) must not pass for it."""
        assert self._process is not None
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                conn.sendall(b"INFO server\r\n")
                reply = b""
                while b"process_id:" not in reply or not reply.endswith(b"\r\n\r\n"):
                    piece = conn.recv(65536)
                    if not piece:
                        return False
                    reply += piece
        except OSError:
            return False
        return f"process_id:{self._process.pid}\r\n".encode() in reply

    def pause(self) -> None:
        """Freeze the process: connections stay open, nothing is answered."""
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGCONT)
        self._paused = False

    def kill(self) -> None:
        """Kill it at once (its data is gone; the port refuses connections)."""
        if self._process is None:
            return
        self._process.kill()
        self._process.wait(timeout=10)
        self._process = None
        self._paused = False

    def stop(self) -> None:
        if self._process is not None:
            if self._paused:
                self.resume()
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


@contextmanager
def redis_server() -> Iterator[str]:
    """Yield the URL of a fresh redis-server that is stopped afterwards."""
    with RedisServer() as server:
        yield server.url
