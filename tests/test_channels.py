"""The outbound side of the shared runtime, in-process: a real grpc.aio server on port 0 built
by ServiceHost, called through `open_channel`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from chatagent.v1 import tools_pb2, tools_pb2_grpc
from services.common.channels import DeadlineExhausted, call_timeout, open_channel
from services.common.config import ServiceSettings
from services.common.server import ServiceHost
from services.common.tracing import setup_tracing

SERVICE = "chatagent.v1.ToolService"
Context = grpc.aio.ServicerContext[Any, Any]


class ScriptedTools(tools_pb2_grpc.ToolServiceServicer):
    """Fails `Calculate` with `failure` for the first `failures` attempts, then answers."""

    def __init__(self) -> None:
        self.failure = grpc.StatusCode.UNAVAILABLE
        self.failures = 0
        self.attempts = 0
        self.metadata: dict[str, str] = {}
        self.timeouts: list[float] = []

    async def Calculate(
        self, request: tools_pb2.CalculateRequest, context: Context
    ) -> tools_pb2.CalculateResponse:
        self.attempts += 1
        self.metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        if self.attempts <= self.failures:
            await context.abort(self.failure, "scripted failure")
        try:
            self.timeouts.append(call_timeout(context, 30.0))
        except DeadlineExhausted as exc:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
        return tools_pb2.CalculateResponse(result="ok")


@pytest.fixture
async def served() -> AsyncIterator[tuple[ScriptedTools, tools_pb2_grpc.ToolServiceStub]]:
    setup_tracing("test", "")
    settings = ServiceSettings(bind_address="127.0.0.1", port=0, shutdown_grace_seconds=1)
    host = ServiceHost(settings, [SERVICE])
    servicer = ScriptedTools()
    tools_pb2_grpc.add_ToolServiceServicer_to_server(servicer, host.server)
    port = await host.start()
    await host.wait_ready()
    channel = open_channel(f"127.0.0.1:{port}", [SERVICE], default_timeout_seconds=3.0)
    try:
        yield servicer, tools_pb2_grpc.ToolServiceStub(channel)
    finally:
        await channel.close()
        await host.stop()


async def test_unavailable_is_retried_by_the_channel(
    served: tuple[ScriptedTools, tools_pb2_grpc.ToolServiceStub],
) -> None:
    servicer, stub = served
    servicer.failures = 2
    reply = await stub.Calculate(tools_pb2.CalculateRequest(expression="1"), timeout=5)
    assert reply.result == "ok"
    assert servicer.attempts == 3


@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNKNOWN],
)
async def test_other_failures_are_not_retried(
    served: tuple[ScriptedTools, tools_pb2_grpc.ToolServiceStub], code: grpc.StatusCode
) -> None:
    servicer, stub = served
    servicer.failure, servicer.failures = code, 1
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Calculate(tools_pb2.CalculateRequest(expression="1"), timeout=5)
    assert info.value.code() == code
    assert servicer.attempts == 1


async def test_retries_stop_after_the_configured_attempts(
    served: tuple[ScriptedTools, tools_pb2_grpc.ToolServiceStub],
) -> None:
    servicer, stub = served
    servicer.failures = 10
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Calculate(tools_pb2.CalculateRequest(expression="1"), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.attempts == 3


async def test_downstream_timeout_is_derived_from_the_callers_deadline(
    served: tuple[ScriptedTools, tools_pb2_grpc.ToolServiceStub],
) -> None:
    servicer, stub = served
    await stub.Calculate(tools_pb2.CalculateRequest(expression="1"), timeout=2.0)
    await stub.Calculate(tools_pb2.CalculateRequest(expression="1"))
    with_deadline, without_deadline = servicer.timeouts
    # The margin comes off what the server sees remaining (gRPC rounds the timeout header up).
    assert 1.0 < with_deadline < 2.0
    # A call made without a timeout still carries the channel's default deadline.
    assert 2.0 < without_deadline < 3.0


def test_call_timeout_without_time_left_raises() -> None:
    class Expiring:
        def time_remaining(self) -> float:
            return 0.01

    with pytest.raises(DeadlineExhausted):
        call_timeout(Expiring(), 5.0)  # type: ignore[arg-type]
    assert call_timeout(None, 5.0) == 5.0  # work not started by a caller: the default bound


async def test_trace_context_travels_with_outbound_calls(
    served: tuple[ScriptedTools, tools_pb2_grpc.ToolServiceStub],
) -> None:
    servicer, stub = served
    provider = trace.get_tracer_provider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))  # type: ignore[attr-defined]
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("caller") as span:
        await stub.Calculate(tools_pb2.CalculateRequest(expression="1"), timeout=5)
        trace_id = format(span.get_span_context().trace_id, "032x")
    assert servicer.metadata["traceparent"].split("-")[1] == trace_id
    names = {
        s.name for s in exporter.get_finished_spans() if s.context.trace_id == int(trace_id, 16)
    }
    assert f"/{SERVICE}/Calculate" in names  # the client span, and the server span, same trace
