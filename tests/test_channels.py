"""The outbound side of the shared runtime, in-process: a real grpc.aio server on port 0 built
by ServiceHost, called through `open_channel` with tracing on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from chatagent.v1 import speech_pb2, speech_pb2_grpc, tools_pb2, tools_pb2_grpc
from services.common.channels import open_channel, streaming, unary
from services.common.config import ServiceSettings
from services.common.server import ServiceHost
from services.common.tracing import client_interceptors, setup_tracing

SERVICE = "chatagent.v1.ToolService"
SPEECH = "chatagent.v1.SpeechService"
Context = grpc.aio.ServicerContext[Any, Any]
HANG = tools_pb2.CalculateRequest(expression="hang")


class Abandonment:
    """What a handler saw of its caller going away."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def hang(self, context: Context) -> None:
        self.started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


class ScriptedTools(tools_pb2_grpc.ToolServiceServicer):
    """Fails `Calculate` with `failure` for the first `failures` attempts, then answers; hangs
    (until cancelled) for the expression "hang"."""

    def __init__(self) -> None:
        self.failure = grpc.StatusCode.UNAVAILABLE
        self.failures = 0
        self.attempts = 0
        self.metadata: dict[str, str] = {}
        self.remaining: list[float] = []
        self.abandoned = Abandonment()

    async def Calculate(
        self, request: tools_pb2.CalculateRequest, context: Context
    ) -> tools_pb2.CalculateResponse:
        if request.expression == "hang":
            await self.abandoned.hang(context)
        self.attempts += 1
        self.metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        if self.attempts <= self.failures:
            await context.abort(self.failure, "scripted failure")
        remaining = context.time_remaining()
        assert remaining is not None
        self.remaining.append(remaining)
        return tools_pb2.CalculateResponse(result="ok")


class EndlessSpeech(speech_pb2_grpc.SpeechServiceServicer):
    """Streams one chunk at a time until its caller goes away."""

    def __init__(self) -> None:
        self.sent = 0
        self.abandoned = Abandonment()
        self.remaining: float | None = None

    async def Synthesize(
        self, request: speech_pb2.SynthesizeRequest, context: Context
    ) -> AsyncIterator[speech_pb2.SynthesizeResponse]:
        self.abandoned.started.set()
        self.remaining = context.time_remaining()
        try:
            while True:
                yield speech_pb2.SynthesizeResponse(sequence=self.sent, text=request.text)
                self.sent += 1
                await asyncio.sleep(0.01)
        except (asyncio.CancelledError, GeneratorExit):
            # Cancelled while it sleeps, or closed by grpc while it waits at `yield` for the
            # write (which of the two depends on timing): either way its caller is gone.
            self.abandoned.cancelled.set()
            raise


class Served:
    def __init__(self, port: int, tools: ScriptedTools, speech: EndlessSpeech) -> None:
        self.port = port
        self.tools = tools
        self.speech = speech
        self.channel = open_channel(
            f"127.0.0.1:{port}", [SERVICE, SPEECH], default_timeout_seconds=3.0
        )
        self.stub = tools_pb2_grpc.ToolServiceStub(self.channel)
        self.speech_stub = speech_pb2_grpc.SpeechServiceStub(self.channel)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    # Tracing on, as in every service: OpenTelemetry's client interceptor is on the channel.
    setup_tracing("test", "")
    settings = ServiceSettings(bind_address="127.0.0.1", port=0, shutdown_grace_seconds=1)
    host = ServiceHost(settings, [SERVICE, SPEECH])
    tools, speech = ScriptedTools(), EndlessSpeech()
    tools_pb2_grpc.add_ToolServiceServicer_to_server(tools, host.server)
    speech_pb2_grpc.add_SpeechServiceServicer_to_server(speech, host.server)
    port = await host.start()
    await host.wait_ready()
    fixture = Served(port, tools, speech)
    try:
        yield fixture
    finally:
        await fixture.channel.close()
        await host.stop()


async def test_unavailable_is_retried_by_the_channel(served: Served) -> None:
    servicer, stub = served.tools, served.stub
    servicer.failures = 2
    reply = await stub.Calculate(tools_pb2.CalculateRequest(expression="1"), timeout=5)
    assert reply.result == "ok"
    assert servicer.attempts == 3


@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNKNOWN],
)
async def test_other_failures_are_not_retried(served: Served, code: grpc.StatusCode) -> None:
    servicer, stub = served.tools, served.stub
    servicer.failure, servicer.failures = code, 1
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Calculate(tools_pb2.CalculateRequest(expression="1"), timeout=5)
    assert info.value.code() == code
    assert servicer.attempts == 1


async def test_retries_stop_after_the_configured_attempts(served: Served) -> None:
    servicer, stub = served.tools, served.stub
    servicer.failures = 10
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Calculate(tools_pb2.CalculateRequest(expression="1"), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.attempts == 3


async def test_every_call_carries_a_deadline(served: Served) -> None:
    servicer, stub = served.tools, served.stub
    await stub.Calculate(tools_pb2.CalculateRequest(expression="1"), timeout=2.0)
    await stub.Calculate(tools_pb2.CalculateRequest(expression="1"))
    with_deadline, without_deadline = servicer.remaining
    # gRPC rounds the timeout it sends up by a few milliseconds.
    assert 1.5 < with_deadline < 2.5
    # A call made without a timeout still carries the channel's default deadline (3 s).
    assert 2.5 < without_deadline < 3.5


async def test_every_stream_carries_a_deadline_too(served: Served) -> None:
    call = served.speech_stub.Synthesize(speech_pb2.SynthesizeRequest(text="a"))
    async with streaming(call) as responses:
        async for _ in responses:
            break
    remaining = served.speech.remaining
    assert remaining is not None
    assert 2.5 < remaining < 3.5


async def test_trace_context_travels_with_outbound_calls(served: Served) -> None:
    servicer, stub = served.tools, served.stub
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


# Cancellation reaches the server.


async def cancel_when_started(awaiting: Awaitable[Any], abandoned: Abandonment) -> None:
    """Run `awaiting` in a task, cancel the task once the handler is running, and expect the
    handler to see its call cancelled."""
    task = asyncio.ensure_future(awaiting)
    await asyncio.wait_for(abandoned.started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(abandoned.cancelled.wait(), 5)


async def test_a_cancelled_unary_call_is_cancelled_on_the_server(served: Served) -> None:
    await cancel_when_started(
        unary(served.stub.Calculate(HANG, timeout=30)), served.tools.abandoned
    )


async def test_awaiting_a_call_directly_cancels_it_on_the_server_too(served: Served) -> None:
    async def caller() -> None:
        await served.stub.Calculate(HANG, timeout=30)

    await cancel_when_started(caller(), served.tools.abandoned)


async def test_cancelling_the_call_object_cancels_it_on_the_server(served: Served) -> None:
    call = served.stub.Calculate(HANG, timeout=30)
    await asyncio.wait_for(served.tools.abandoned.started.wait(), 5)
    call.cancel()
    await asyncio.wait_for(served.tools.abandoned.cancelled.wait(), 5)
    with pytest.raises(asyncio.CancelledError):
        await call


async def test_without_the_wire_tie_the_tracing_interceptor_loses_the_cancel(
    served: Served,
) -> None:
    """Why the channel needs cancel_on_wire(): through OpenTelemetry's interceptor alone, the
    server never hears of the cancel (if this starts failing, OpenTelemetry fixed it)."""
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{served.port}", interceptors=list(client_interceptors())
    )
    stub = tools_pb2_grpc.ToolServiceStub(channel)
    task = asyncio.ensure_future(unary(stub.Calculate(HANG, timeout=30)))
    await asyncio.wait_for(served.tools.abandoned.started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(served.tools.abandoned.cancelled.wait(), 0.5)
    await channel.close(grace=None)


async def read(served: Served, stop: Callable[[speech_pb2.SynthesizeResponse], bool]) -> list[int]:
    received = []
    call = served.speech_stub.Synthesize(speech_pb2.SynthesizeRequest(text="a"), timeout=30)
    async with streaming(call) as responses:
        async for response in responses:
            received.append(response.sequence)
            if stop(response):
                break
    return received


async def test_leaving_a_stream_early_cancels_it_on_the_server(served: Served) -> None:
    assert await read(served, lambda response: response.sequence == 2) == [0, 1, 2]
    await asyncio.wait_for(served.speech.abandoned.cancelled.wait(), 5)


async def test_a_cancelled_stream_reader_cancels_the_stream_on_the_server(served: Served) -> None:
    await cancel_when_started(read(served, lambda response: False), served.speech.abandoned)
    sent = served.speech.sent
    await asyncio.sleep(0.1)
    assert served.speech.sent == sent  # nothing more is produced for nobody
