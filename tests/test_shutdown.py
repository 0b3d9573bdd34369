"""A terminating pod must be gone before Kubernetes' terminationGracePeriodSeconds: after the
grace for in-flight calls, cleaning up (closers, then the span flush) is bounded by
SHUTDOWN_CLEANUP_SECONDS, however Redis, a channel or the trace collector hang."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from chatagent.v1 import tools_pb2, tools_pb2_grpc
from services.common import server
from services.common.config import ServiceSettings
from services.common.server import SHUTDOWN_CLEANUP_SECONDS, ServiceHost
from tests.support.process import ServiceProcess

SERVICE = "chatagent.v1.ToolService"


async def hang() -> None:
    await asyncio.Event().wait()


async def test_closers_that_hang_share_one_bounded_budget(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(server, "_CLOSE_SECONDS", 0.3)
    closed: list[str] = []

    async def close_channel() -> None:
        closed.append("channel")

    host = ServiceHost(
        ServiceSettings(bind_address="127.0.0.1", port=0, shutdown_grace_seconds=1), [SERVICE]
    )
    host.add_closer("channel", close_channel)
    host.add_closer("redis", hang)
    host.add_closer("http", hang)
    await host.start()
    await host.wait_ready()
    caplog.set_level(logging.WARNING, logger="services.common.server")
    started = time.monotonic()
    await host.stop()
    # Two closers that never finish: 5 s each before; now 0.3 s for all three together.
    assert time.monotonic() - started < 2.0
    unfinished = [r.dependency for r in caplog.records if "left unfinished" in r.getMessage()]
    assert unfinished == ["http", "redis"]
    # Closers run in reverse order of adding: the one after the hung ones still had its share.
    assert closed == ["channel"]


def test_a_span_flush_that_hangs_is_given_up_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()
    monkeypatch.setattr(server, "shutdown_tracing", release.wait)
    caplog.set_level(logging.WARNING, logger="services.common.server")
    started = time.monotonic()
    server._flush_spans(0.2)
    assert time.monotonic() - started < 2.0
    assert any("spans not exported in time" in r.getMessage() for r in caplog.records)
    release.set()


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A trace collector that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def test_a_service_exits_within_grace_and_cleanup_with_a_collector_that_hangs(
    black_hole: str,
) -> None:
    grace = 1.0
    env = {
        "SHUTDOWN_GRACE_SECONDS": str(grace),
        "OTEL_EXPORTER_OTLP_ENDPOINT": black_hole,
        # Spans stay buffered until the shutdown has to flush them.
        "OTEL_BSP_SCHEDULE_DELAY": "60000",
    }
    with ServiceProcess("tools", env) as tools:
        tools.start(wait_for=SERVICE)
        assert tools.channel is not None
        stub = tools_pb2_grpc.ToolServiceStub(tools.channel)
        for _ in range(3):
            stub.GetTime(tools_pb2.GetTimeRequest(timezone="UTC"), timeout=5)
        started = time.monotonic()
        tools.terminate()
        assert tools.wait(timeout=60) == 0
        took = time.monotonic() - started
        # Unbounded, the SDK retried the collector for 10 s (and could wait up to 30 s more).
        assert took < grace + SHUTDOWN_CLEANUP_SECONDS, tools.logs()
        assert "spans not exported in time" in tools.logs()
