"""HEALTH_PORT: Kubernetes' native gRPC probes cannot speak TLS, so a TLS service also serves its
health, and nothing else, on a plaintext port of its own, with the same statuses as on PORT."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chatagent.v1 import tools_pb2, tools_pb2_grpc
from services.common.config import ConfigError, ServiceSettings, load
from services.common.server import ServiceHost
from tests.support.loop import wait_until
from tests.support.ports import free_port

SERVICE = "chatagent.v1.ToolService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _SlowTools(tools_pb2_grpc.ToolServiceServicer):
    """GetTime answers once the test lets it: a call in flight during a shutdown."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def GetTime(
        self, request: tools_pb2.GetTimeRequest, context: grpc.aio.ServicerContext
    ) -> tools_pb2.GetTimeResponse:
        self.started.set()
        await self.release.wait()
        return tools_pb2.GetTimeResponse(timezone="UTC")


async def status(channel: grpc.aio.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
    return int(reply.status)


def tls_settings(pki: Path, health_port: int) -> ServiceSettings:
    return ServiceSettings(
        bind_address="127.0.0.1",
        port=0,
        health_port=health_port,
        shutdown_grace_seconds=5,
        tls_cert_file=str(pki / "server.pem"),
        tls_key_file=str(pki / "server.key"),
    )


async def test_a_tls_service_answers_probes_in_plaintext_on_its_health_port_only(
    pki: Path,
) -> None:
    health_port = free_port()
    host = ServiceHost(tls_settings(pki, health_port), [SERVICE])
    tools_pb2_grpc.add_ToolServiceServicer_to_server(_SlowTools(), host.server)
    port = await host.start()
    await host.wait_ready()
    credentials = grpc.ssl_channel_credentials((pki / "ca.pem").read_bytes())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{health_port}") as probe:
            assert await status(probe) == SERVING
            assert await status(probe, SERVICE) == SERVING
            # The probe port serves health and nothing else: no service, no reflection.
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await tools_pb2_grpc.ToolServiceStub(probe).GetTime(
                    tools_pb2.GetTimeRequest(), timeout=1
                )
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as secure:
            # The same health, over TLS, on the service's port.
            assert await status(secure, SERVICE) == SERVING
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plain:
            with pytest.raises(grpc.aio.AioRpcError) as no_tls:
                await status(plain)
            assert no_tls.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await host.stop()


async def test_the_health_port_says_not_serving_while_calls_drain_then_closes(
    pki: Path,
) -> None:
    health_port = free_port()
    host = ServiceHost(tls_settings(pki, health_port), [SERVICE])
    tools = _SlowTools()
    tools_pb2_grpc.add_ToolServiceServicer_to_server(tools, host.server)
    port = await host.start()
    await host.wait_ready()
    credentials = grpc.ssl_channel_credentials((pki / "ca.pem").read_bytes())
    async with (
        grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as secure,
        grpc.aio.insecure_channel(f"127.0.0.1:{health_port}") as probe,
    ):
        call = tools_pb2_grpc.ToolServiceStub(secure).GetTime(
            tools_pb2.GetTimeRequest(), timeout=10
        )
        await asyncio.wait_for(tools.started.wait(), 5)
        stopping = asyncio.create_task(host.stop())

        async def not_serving() -> bool:
            return await status(probe, SERVICE) == NOT_SERVING

        await wait_until(not_serving, within=5, message="NOT_SERVING while draining")
        assert not stopping.done()
        tools.release.set()
        assert (await call).timezone == "UTC"
        await asyncio.wait_for(stopping, 10)
        with pytest.raises(grpc.aio.AioRpcError) as closed:
            await status(probe)
        assert closed.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_health_port_cannot_be_the_service_or_metrics_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PORT", "50070")
    monkeypatch.setenv("HEALTH_PORT", "50070")
    with pytest.raises(ConfigError, match="HEALTH_PORT must differ"):
        load(ServiceSettings)
    monkeypatch.setenv("HEALTH_PORT", "50071")
    monkeypatch.setenv("METRICS_PORT", "50071")
    with pytest.raises(ConfigError, match="HEALTH_PORT must differ"):
        load(ServiceSettings)
