"""Real service processes for the tests: started with `python -m services.<name>`, awaited until
their health service says SERVING, stopped with SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def metrics_at(port: int) -> dict[str, float]:
    """The Prometheus metrics served on `port`: `name{labels}` -> value ({} when nothing answers
    there)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            page = response.read().decode()
    except OSError:
        return {}
    values: dict[str, float] = {}
    for line in page.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            values[series] = float(value)
    return values


class ServiceProcess:
    def __init__(
        self,
        name: str,
        env: dict[str, str] | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.name = name
        self.credentials = credentials
        self.port = free_port()
        self.metrics_port = free_port()
        self.env = {
            **os.environ,
            "BIND_ADDRESS": "127.0.0.1",
            "PORT": str(self.port),
            "METRICS_PORT": str(self.metrics_port),
            "LOG_LEVEL": "INFO",
            "SHUTDOWN_GRACE_SECONDS": "10",
            **(env or {}),
        }
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the process
            prefix=f"chatagent-{name}-", suffix=".log", delete=False
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.channel: grpc.Channel | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, wait_for: str | None = "", timeout: float = 30.0) -> ServiceProcess:
        """Start and wait until health reports SERVING for `wait_for` (None: don't wait)."""
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.name}"],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.channel = (
            grpc.insecure_channel(self.address)
            if self.credentials is None
            else grpc.secure_channel(self.address, self.credentials)
        )
        if wait_for is not None:
            self.wait_serving(wait_for, timeout)
        return self

    def health(self, service: str = "", timeout: float = 1.0) -> int:
        assert self.channel is not None
        stub = health_pb2_grpc.HealthStub(self.channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return int(reply.status)

    def wait_serving(self, service: str = "", timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.logs()}"
                )
            try:
                if self.health(service, timeout=0.5) == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not SERVING after {timeout}s:\n{self.logs()}")
            time.sleep(0.05)

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> int | None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def metrics(self) -> dict[str, float]:
        return metrics_at(self.metrics_port)

    def logs(self) -> str:
        return Path(self._log.name).read_text(encoding="utf-8", errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far; a line the process is still writing (no newline
        yet: a caller may get its answer before the server has logged the call) is not one."""
        records = []
        lines = self.logs().split("\n")
        for line in lines[:-1]:
            if line.startswith("{"):
                records.append(json.loads(line))
        return records

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        Path(self._log.name).unlink(missing_ok=True)
