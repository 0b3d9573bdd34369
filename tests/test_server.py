"""ServiceHost's health follows a critical dependency for the life of the process: in-process
servers, a scripted check for the rules, and a real redis-server paused, killed and brought back
for what a Kubernetes probe would see."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import redisconn
from services.common.config import ServiceSettings
from services.common.server import ServiceHost
from tests.support.loop import wait_until
from tests.support.redis_server import RedisServer

SERVICE = "chatagent.v1.ToolService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LOGGER = "services.common.server"
BOTH_SERVING = (SERVING, SERVING)
# A watched dependency down takes the service out of traffic; the process is still alive, so a
# liveness probe (which asks for "") does not restart it.
DEPENDENCY_DOWN = (SERVING, NOT_SERVING)


def settings() -> ServiceSettings:
    return ServiceSettings(bind_address="127.0.0.1", port=0, shutdown_grace_seconds=1)


class Probe:
    """A Kubernetes-style gRPC health probe (1 s timeout) that records how long each took."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self._stub = health_pb2_grpc.HealthStub(self.channel)
        self.slowest = 0.0

    async def status(self, service: str = "") -> int:
        start = time.monotonic()
        reply = await self._stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
        self.slowest = max(self.slowest, time.monotonic() - start)
        return int(reply.status)

    async def statuses(self) -> tuple[int, int]:
        """(the process's status, the service's)."""
        return await self.status(""), await self.status(SERVICE)

    async def becomes(self, status: int, within: float) -> float:
        """Wait until the service's status is `status`."""

        async def service_is() -> bool:
            return await self.status(SERVICE) == status

        return await wait_until(service_is, within=within, message=f"health {status}")


def down_and_back(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage().split(":")[0]
        for record in caplog.records
        if record.name == LOGGER and record.getMessage().startswith("dependency")
    ]


@pytest.fixture(autouse=True)
def _server_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)


class ScriptedCheck:
    """A dependency check whose every outcome the test hands in: True passes, False fails, and
    no outcome at all is a check that hangs."""

    def __init__(self) -> None:
        self.calls = 0
        self._outcomes: asyncio.Queue[bool] = asyncio.Queue()

    async def __call__(self) -> None:
        self.calls += 1
        if not await self._outcomes.get():
            raise ConnectionError("scripted failure")

    def offer(self, passes: bool) -> None:
        self._outcomes.put_nowait(passes)

    async def answer(self, passes: bool) -> None:
        """Hand in one outcome and wait until the host has acted on it."""
        calls = self.calls
        self.offer(passes)
        await wait_until(lambda: self.calls > calls, within=5, message="next check")


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[ServiceHost, ScriptedCheck, Probe]]:
    host = ServiceHost(settings(), [SERVICE])
    check = ScriptedCheck()
    host.add_dependency_monitor(
        "scripted", check, interval_seconds=0.01, failures_to_trip=2, timeout_seconds=0.2
    )
    port = await host.start()
    await host.wait_ready()
    probe = Probe(port)
    await wait_until(lambda: check.calls == 1, within=5, message="first check")
    try:
        yield host, check, probe
    finally:
        await probe.channel.close()
        await host.stop()


async def test_consecutive_failures_take_the_service_out_and_a_pass_brings_it_back(
    scripted: tuple[ServiceHost, ScriptedCheck, Probe], caplog: pytest.LogCaptureFixture
) -> None:
    _, check, probe = scripted
    assert await probe.statuses() == BOTH_SERVING
    for passes in (False, True, False):  # never two failures in a row
        await check.answer(passes)
        assert await probe.statuses() == BOTH_SERVING
    await check.answer(False)
    assert await probe.statuses() == DEPENDENCY_DOWN
    await check.answer(False)
    await check.answer(False)
    assert await probe.statuses() == DEPENDENCY_DOWN
    await check.answer(True)
    assert await probe.statuses() == BOTH_SERVING
    assert down_and_back(caplog) == ["dependency down", "dependency back"]


async def test_a_check_that_hangs_counts_as_a_failure(
    scripted: tuple[ServiceHost, ScriptedCheck, Probe],
) -> None:
    _, check, probe = scripted
    # No outcome is handed in: the checks time out after 0.2 s each.
    await probe.becomes(NOT_SERVING, within=5)
    await check.answer(True)
    assert await probe.statuses() == BOTH_SERVING


async def test_graceful_shutdown_stays_not_serving_and_stops_the_monitor(
    scripted: tuple[ServiceHost, ScriptedCheck, Probe],
) -> None:
    host, check, _ = scripted
    await host.stop()
    for service in ("", SERVICE):
        reply = await host.health.Check(health_pb2.HealthCheckRequest(service=service), None)
        assert reply.status == NOT_SERVING
    calls = check.calls
    check.offer(True)  # a check that would pass, were anyone still checking
    await asyncio.sleep(0.1)
    assert check.calls == calls
    reply = await host.health.Check(health_pb2.HealthCheckRequest(service=""), None)
    assert reply.status == NOT_SERVING


async def test_readiness_checks_still_come_first() -> None:
    host = ServiceHost(settings(), [SERVICE])
    ready = asyncio.Event()
    host.add_readiness_check("warm-up", ready.wait)
    healthy = ScriptedCheck()
    host.add_dependency_monitor("healthy", healthy, interval_seconds=0.01)
    port = await host.start()
    probe = Probe(port)
    try:
        for _ in range(3):
            await healthy.answer(True)
        assert await probe.statuses() == (NOT_SERVING, NOT_SERVING)
        ready.set()
        await probe.becomes(SERVING, within=5)
    finally:
        await probe.channel.close()
        await host.stop()


# A real Redis taken away.


@pytest.fixture
def redis_process() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
async def watching_redis(
    redis_process: RedisServer,
) -> AsyncIterator[Probe]:
    client = redisconn.connect(redis_process.url, timeout_seconds=0.5)
    host = ServiceHost(settings(), [SERVICE])
    host.add_readiness_check("redis", client.ping)
    host.add_dependency_monitor("redis", client.ping, interval_seconds=0.25, failures_to_trip=2)
    host.add_closer("redis", client.aclose)
    port = await host.start()
    await host.wait_ready()
    probe = Probe(port)
    try:
        yield probe
    finally:
        await probe.channel.close()
        await host.stop()


async def probe_through_outage(probe: Probe, outage_seconds: float = 1.0) -> None:
    """Keep probing for a while once NOT_SERVING, as Kubernetes would."""
    await probe.becomes(NOT_SERVING, within=5)
    until = time.monotonic() + outage_seconds
    while time.monotonic() < until:
        assert await probe.statuses() == DEPENDENCY_DOWN
        await asyncio.sleep(0.05)


async def test_a_paused_redis_takes_the_service_out_and_back_without_stalling_it(
    redis_process: RedisServer, watching_redis: Probe, caplog: pytest.LogCaptureFixture
) -> None:
    probe = watching_redis
    assert await probe.statuses() == BOTH_SERVING
    redis_process.pause()
    await probe_through_outage(probe)
    redis_process.resume()
    await probe.becomes(SERVING, within=5)
    # A blocking Redis call on the loop would hold a probe for the client's 0.5 s timeout.
    assert probe.slowest < 0.3
    assert down_and_back(caplog) == ["dependency down", "dependency back"]


async def test_a_killed_redis_takes_the_service_out_until_it_is_back(
    redis_process: RedisServer, watching_redis: Probe, caplog: pytest.LogCaptureFixture
) -> None:
    probe = watching_redis
    redis_process.kill()
    await probe_through_outage(probe)
    redis_process.start()
    await probe.becomes(SERVING, within=5)
    assert probe.slowest < 0.3
    assert down_and_back(caplog) == ["dependency down", "dependency back"]
