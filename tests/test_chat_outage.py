"""The orchestrator while its Redis is paused and while it is killed, as an SRE would see it:
plain UNAVAILABLE answers within the caller's deadline, readiness going down within seconds and
up again without a restart, and health checks that stay quick (no stalled event loop)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from chatagent.v1 import chat_pb2, chat_pb2_grpc
from tests.support.doubles import emotion_double, tools_double
from tests.support.process import ServiceProcess
from tests.support.redis_server import RedisServer

SERVICE = "chatagent.v1.ChatService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def outage() -> Iterator[tuple[ServiceProcess, RedisServer]]:
    with RedisServer() as redis, tools_double() as tools, emotion_double() as emotion:
        process = ServiceProcess(
            "orchestrator",
            {
                "REDIS_URL": redis.url,
                "REDIS_TIMEOUT_SECONDS": "0.3",
                "TOOLS_ADDR": tools.address,
                "EMOTION_ADDR": emotion.address,
                "SPEECH_ADDR": "127.0.0.1:1",
            },
        )
        process.start(wait_for=SERVICE)
        try:
            yield process, redis
        finally:
            process.stop()


def chat(process: ServiceProcess, timeout: float = 5.0) -> Any:
    assert process.channel is not None
    stub = chat_pb2_grpc.ChatServiceStub(process.channel)
    return stub.Chat(chat_pb2.ChatRequest(user_id="u", message="今何時？"), timeout=timeout)


def wait_for_health(process: ServiceProcess, wanted: int, within: float) -> tuple[float, float]:
    """Poll health until it reports `wanted`: (seconds it took, slowest health check)."""
    started = time.monotonic()
    slowest = 0.0
    while True:
        asked = time.monotonic()
        status = process.health(SERVICE, timeout=2.0)
        slowest = max(slowest, time.monotonic() - asked)
        if status == wanted:
            return time.monotonic() - started, slowest
        assert time.monotonic() - started < within, f"health still {status} after {within}s"
        time.sleep(0.05)


def test_a_paused_redis_means_unavailable_not_serving_and_a_quick_health(
    outage: tuple[ServiceProcess, RedisServer],
) -> None:
    process, redis = outage
    assert chat(process).reply
    redis.pause()
    try:
        asked = time.monotonic()
        with pytest.raises(grpc.RpcError) as refused:
            chat(process, timeout=5.0)
        assert time.monotonic() - asked < 4.0  # Redis's own timeout, not the caller's deadline
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        details = refused.value.details() or ""
        assert "session store is unavailable" in details
        assert "Error" not in details  # no exception class or text
        took, slowest = wait_for_health(process, NOT_SERVING, within=10)
        assert took < 10
        assert slowest < 0.5  # health answered quickly all along: the loop was never stalled
    finally:
        redis.resume()
    wait_for_health(process, SERVING, within=10)
    assert chat(process).reply


def test_a_killed_redis_comes_back_without_a_restart(
    outage: tuple[ServiceProcess, RedisServer],
) -> None:
    process, redis = outage
    assert chat(process).reply
    redis.kill()
    _, slowest = wait_for_health(process, NOT_SERVING, within=10)
    assert slowest < 0.5
    with pytest.raises(grpc.RpcError) as refused:
        chat(process)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    redis.start()  # same port, empty
    wait_for_health(process, SERVING, within=15)
    assert chat(process).reply
    assert process.process is not None
    assert process.process.poll() is None  # never restarted
