"""The spans of the orchestrator's own work, in this process with the SDK's in-memory exporter:
an LLM call (`chat {model}`, against the real openai client and the fake server), a tool call
(`execute_tool {tool}`, over real gRPC to a double), and the client span of a cancelled call.

What an operator must be able to read off them (model, tokens, finish, error class, tool
status), that they end however the call ends, and that nothing the user wrote, the provider
answered, or the LLM made up gets onto them unbounded."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import grpc.aio
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from chatagent.v1 import speech_pb2, speech_pb2_grpc, tools_pb2_grpc
from services.common.breakers import BreakerBoard
from services.common.channels import cancel_on_wire, streaming, unary
from services.common.deadline import Deadline
from services.common.tracing import client_interceptors
from services.orchestrator import llm as llm_module
from services.orchestrator.clients import ToolRunner, is_caller_error
from services.orchestrator.llm import (
    LlmRejected,
    LlmRequest,
    LlmTimeout,
    LlmUnavailable,
    OpenAIChat,
    StopStream,
)
from services.orchestrator.model import SystemMessage, ToolCallRequest, ToolOutcome, UserMessage
from services.orchestrator.toolspec import ToolContext, tool_specs
from tests.support.fake_openai import FakeOpenAI, Reply, completion_body, fake_openai
from tests.support.turns import Recorder, _serve, _Tools

MODEL = "gpt-test"
SYSTEM = "あなたは猫です。語尾は「にゃん」。"
# What the user wrote: it must never be on a span, nor what the provider answered.
SECRET = "マシュマロ灯台ZQ7731"
QUESTION = f"東京の天気は？合言葉は{SECRET}"
ANSWER = "晴れだにゃん、ペンギン色の空"
REQUEST = LlmRequest(
    messages=(SystemMessage(SYSTEM), UserMessage(QUESTION)),
    tools=tuple(tool_specs().values()),
    max_tokens=321,
)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def texts(span: ReadableSpan) -> list[str]:
    """Every piece of text on the span but its ids."""
    found = [span.name, span.status.description or ""]
    pairs = list((span.attributes or {}).items())
    for event in span.events:
        found.append(event.name)
        pairs += list((event.attributes or {}).items())
    for key, value in pairs:
        values = value if isinstance(value, tuple | list) else (value,)
        found += [key, *map(str, values)]
    return found


def assert_nothing_said(span: ReadableSpan, *said: str) -> None:
    for text in texts(span):
        for secret in (SECRET, QUESTION, SYSTEM, ANSWER, *said):
            assert secret not in text, (span.name, text)


def only(exporter: InMemorySpanExporter, prefix: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith(prefix)]


# -- the LLM call ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def _server() -> Iterator[FakeOpenAI]:
    with fake_openai() as fake:
        yield fake


@pytest.fixture
def upstream(_server: FakeOpenAI) -> FakeOpenAI:
    _server.reset()
    return _server


@pytest.fixture
async def chat(upstream: FakeOpenAI, provider: TracerProvider) -> AsyncIterator[OpenAIChat]:
    async with openai.DefaultAsyncHttpxClient(verify=False) as http:
        llm = OpenAIChat(
            api_key="sk-test",
            base_url=upstream.base_url,
            model=MODEL,
            max_retries=2,
            http_client=http,
            tracer_provider=provider,
        )
        yield llm
        await llm.aclose()


@pytest.fixture
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llm_module, "INITIAL_BACKOFF_SECONDS", 0.01)


def llm_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    (span,) = only(exporter, "chat ")
    return span


async def ignore(_piece: str) -> None:
    return None


async def test_a_completion_is_one_client_span_with_what_the_provider_said(
    upstream: FakeOpenAI, chat: OpenAIChat, exporter: InMemorySpanExporter, provider: TracerProvider
) -> None:
    upstream.enqueue(
        Reply(
            content=ANSWER,
            prompt_tokens=123,
            completion_tokens=45,
            model="gpt-test-2026-01-01",
        )
    )
    with provider.get_tracer("test").start_as_current_span("turn") as turn:
        reply = await chat.complete(REQUEST, timeout_seconds=5)
    assert reply.content == ANSWER
    span = llm_span(exporter)
    assert span.name == f"chat {MODEL}"
    assert span.kind == SpanKind.CLIENT
    assert span.parent is not None
    assert span.parent.span_id == turn.get_span_context().span_id
    assert span.status.status_code == StatusCode.UNSET
    port = int(upstream.base_url.split(":")[2].split("/")[0])
    assert dict(span.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.system": "openai",
        "gen_ai.request.model": MODEL,
        "gen_ai.request.max_tokens": 321,
        "gen_ai.response.model": "gpt-test-2026-01-01",
        "gen_ai.response.id": "chatcmpl-fake-1",
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": 123,
        "gen_ai.usage.output_tokens": 45,
        "server.address": "127.0.0.1",
        "server.port": port,
    }
    assert span.events == ()
    assert_nothing_said(span)


async def test_a_provider_that_says_nothing_of_usage_gets_no_token_counts(
    upstream: FakeOpenAI, chat: OpenAIChat, exporter: InMemorySpanExporter
) -> None:
    upstream.enqueue(Reply(content=ANSWER, include_usage=False))
    reply = await chat.complete(REQUEST, timeout_seconds=5)
    # The turn estimates what such a reply cost instead of taking it as free.
    assert not reply.usage_reported
    attributes = llm_span(exporter).attributes or {}
    assert "gen_ai.usage.input_tokens" not in attributes
    assert "gen_ai.usage.output_tokens" not in attributes


async def test_a_refused_request_is_an_error_with_its_class_and_none_of_its_text(
    upstream: FakeOpenAI, chat: OpenAIChat, exporter: InMemorySpanExporter
) -> None:
    # Providers quote the offending input back in their error message.
    upstream.enqueue(Reply.error(400, message=f"content rejected: {QUESTION}"))
    with pytest.raises(LlmRejected):
        await chat.complete(REQUEST, timeout_seconds=5)
    span = llm_span(exporter)
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description is None
    attributes = span.attributes or {}
    assert attributes["error.type"] == "LlmRejected"
    assert attributes["http.response.status_code"] == 400
    assert span.events == ()  # no exception event: its message could quote the request
    assert_nothing_said(span, "content rejected")


async def test_retries_are_events_of_the_one_span_of_the_call(
    upstream: FakeOpenAI, chat: OpenAIChat, exporter: InMemorySpanExporter, quick_backoff: None
) -> None:
    upstream.enqueue(Reply.error(503, message=QUESTION), Reply(content=ANSWER))
    await chat.complete(REQUEST, timeout_seconds=5)
    span = llm_span(exporter)
    assert span.status.status_code == StatusCode.UNSET
    assert [(e.name, (e.attributes or {})["reason"]) for e in span.events] == [
        ("chatagent.llm.retry", "HTTP 503")
    ]
    assert (span.attributes or {})["gen_ai.response.id"]
    assert_nothing_said(span)


async def test_a_provider_down_after_the_retries_is_an_error(
    upstream: FakeOpenAI, chat: OpenAIChat, exporter: InMemorySpanExporter, quick_backoff: None
) -> None:
    upstream.enqueue(*(Reply.error(503, message=QUESTION) for _ in range(3)))
    with pytest.raises(LlmUnavailable):
        await chat.complete(REQUEST, timeout_seconds=5)
    span = llm_span(exporter)
    assert span.status.status_code == StatusCode.ERROR
    assert (span.attributes or {})["error.type"] == "LlmUnavailable"
    assert (span.attributes or {})["http.response.status_code"] == 503
    assert len(span.events) == 2
    assert_nothing_said(span)


async def test_a_call_out_of_time_is_an_error_of_its_own_class(
    upstream: FakeOpenAI, chat: OpenAIChat, exporter: InMemorySpanExporter
) -> None:
    upstream.enqueue(*(Reply.hang(5) for _ in range(3)))
    with pytest.raises(LlmTimeout):
        await chat.complete(REQUEST, timeout_seconds=0.3)
    span = llm_span(exporter)
    assert span.status.status_code == StatusCode.ERROR
    assert (span.attributes or {})["error.type"] == "LlmTimeout"


async def test_a_stream_is_one_span_to_its_last_chunk_and_its_text_runs_in_the_callers_span(
    upstream: FakeOpenAI, chat: OpenAIChat, exporter: InMemorySpanExporter, provider: TracerProvider
) -> None:
    upstream.enqueue(Reply(content=ANSWER, prompt_tokens=77, completion_tokens=8))
    current: list[trace.Span] = []

    async def on_text(piece: str) -> None:
        current.append(trace.get_current_span())

    with provider.get_tracer("test").start_as_current_span("turn") as turn:
        reply = await chat.stream(REQUEST, timeout_seconds=5, on_text=on_text)
    assert reply.content == ANSWER
    span = llm_span(exporter)
    attributes = span.attributes or {}
    assert attributes["gen_ai.usage.input_tokens"] == 77
    assert attributes["gen_ai.usage.output_tokens"] == 8
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert attributes["gen_ai.response.id"].startswith("chatcmpl-fake-")
    # What the text sets off (speech) is the turn's work, not the LLM call's.
    assert current
    assert all(s is turn for s in current)
    assert_nothing_said(span)


async def test_a_stream_cancelled_halfway_ends_its_span_as_cancelled(
    upstream: FakeOpenAI, chat: OpenAIChat, exporter: InMemorySpanExporter
) -> None:
    upstream.enqueue(
        Reply(content=ANSWER * 20, stream_piece_chars=2, stream_piece_delay_seconds=0.05)
    )
    heard = asyncio.Event()

    async def on_text(piece: str) -> None:
        heard.set()

    task = asyncio.create_task(chat.stream(REQUEST, timeout_seconds=10, on_text=on_text))
    await asyncio.wait_for(heard.wait(), 5)
    assert only(exporter, "chat ") == []  # still open while the stream runs
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    span = llm_span(exporter)
    assert span.end_time is not None
    assert span.status.status_code == StatusCode.ERROR
    attributes = span.attributes or {}
    assert attributes["error.type"] == "cancelled"
    # What the provider had said by then is kept; it never said how many tokens.
    assert attributes["gen_ai.response.id"].startswith("chatcmpl-fake-")
    assert "gen_ai.usage.input_tokens" not in attributes
    assert "gen_ai.response.finish_reasons" not in attributes
    assert_nothing_said(span)


async def test_a_stream_the_turn_stops_is_no_error(
    upstream: FakeOpenAI, chat: OpenAIChat, exporter: InMemorySpanExporter
) -> None:
    upstream.enqueue(Reply(content=ANSWER * 5))

    async def on_text(piece: str) -> None:
        raise StopStream

    reply = await chat.stream(REQUEST, timeout_seconds=5, on_text=on_text)
    assert reply.stopped
    span = llm_span(exporter)
    assert span.status.status_code == StatusCode.UNSET
    assert (span.attributes or {})["chatagent.llm.stopped"] is True
    assert "error.type" not in (span.attributes or {})


@pytest.mark.parametrize("streamed", [False, True])
async def test_what_the_provider_says_is_bounded_on_the_span(
    upstream: FakeOpenAI, chat: OpenAIChat, exporter: InMemorySpanExporter, streamed: bool
) -> None:
    huge_model = "m" * 10_000 + SECRET
    if streamed:
        upstream.enqueue(Reply(content=ANSWER, model=huge_model))
        await chat.stream(REQUEST, timeout_seconds=5, on_text=ignore)
    else:
        body = completion_body(Reply(content=ANSWER, model=huge_model), "x" * 10_000 + SECRET)
        body["choices"][0]["finish_reason"] = "f" * 5_000 + SECRET
        upstream.enqueue(Reply(body=body))
        await chat.complete(REQUEST, timeout_seconds=5)
    span = llm_span(exporter)
    attributes = span.attributes or {}
    assert attributes["gen_ai.response.model"] == "m" * 128
    assert len(attributes["gen_ai.response.id"]) <= 128
    assert all(len(reason) <= 32 for reason in attributes["gen_ai.response.finish_reasons"])
    assert all(len(text) <= 128 for text in texts(span))
    assert_nothing_said(span)


async def test_a_long_configured_model_name_is_bounded_too(
    upstream: FakeOpenAI, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    llm = OpenAIChat(
        api_key="sk-test", base_url=upstream.base_url, model="z" * 1000, tracer_provider=provider
    )
    try:
        await llm.complete(REQUEST, timeout_seconds=5)
    finally:
        await llm.aclose()
    span = llm_span(exporter)
    assert span.name == "chat " + "z" * 128
    assert (span.attributes or {})["gen_ai.request.model"] == "z" * 128


# -- tool calls --------------------------------------------------------------------------------

CONTEXT = ToolContext(user_id="u-1", language="ja", timezone="Asia/Tokyo", place="東京")


@pytest.fixture
async def tools(
    provider: TracerProvider,
) -> AsyncIterator[tuple[ToolRunner, Recorder, grpc.aio.Channel]]:
    recorder = Recorder()
    server, address = await _serve(
        tools_pb2_grpc.add_ToolServiceServicer_to_server, _Tools(recorder)
    )
    # As open_channel builds it, with the spans going to this test's provider.
    channel = grpc.aio.insecure_channel(
        address, interceptors=[*client_interceptors(provider), *cancel_on_wire()]
    )
    board = BreakerBoard()
    breakers = {
        name: board.breaker(
            f"tools.{name}", fail_max=5, reset_seconds=30, is_caller_error=is_caller_error
        )
        for name in tool_specs()
    }
    runner = ToolRunner(channel, breakers, timeout_seconds=5, tracer_provider=provider)
    try:
        yield runner, recorder, channel
    finally:
        await channel.close()
        await server.stop(None)


async def run(runner: ToolRunner, *calls: ToolCallRequest, allowed: int = 8) -> list[ToolOutcome]:
    async def finished(_outcome: ToolOutcome) -> None:
        return None

    return await runner.run(
        calls,
        CONTEXT,
        deadline=Deadline.after(10),
        seen={},
        allowed=allowed,
        on_finish=finished,
    )


def call(name: str, arguments: dict[str, Any], call_id: str) -> ToolCallRequest:
    return ToolCallRequest(id=call_id, name=name, arguments=json.dumps(arguments))


def tool_spans(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {
        str((s.attributes or {}).get("gen_ai.tool.call.id", s.name)): s
        for s in only(exporter, "execute_tool ")
    }


async def test_each_tool_call_is_a_span_whose_child_is_its_grpc_call(
    tools: tuple[ToolRunner, Recorder, grpc.aio.Channel], exporter: InMemorySpanExporter
) -> None:
    runner, _, _ = tools
    outcomes = await run(
        runner,
        call("get_time", {"place": "東京"}, "call-1"),
        call("get_time", {"place": "東京"}, "call-2"),  # the same again: answered from the first
        call("calculate", {"expression": "6*7"}, "call-3"),
        call("get_fortune", {}, "call-4"),  # over the cap
        allowed=2,
    )
    assert [o.status.name for o in outcomes] == ["OK", "DEDUPLICATED", "OK", "REJECTED"]
    spans = tool_spans(exporter)
    assert {
        key: (s.name, (s.attributes or {})["chatagent.tool.status"]) for key, s in spans.items()
    } == {
        "call-1": ("execute_tool get_time", "ok"),
        "call-2": ("execute_tool get_time", "deduplicated"),
        "call-3": ("execute_tool calculate", "ok"),
        "call-4": ("execute_tool get_fortune", "rejected"),
    }
    for span in spans.values():
        assert span.kind == SpanKind.INTERNAL
        attributes = span.attributes or {}
        assert attributes["gen_ai.operation.name"] == "execute_tool"
        assert attributes["gen_ai.tool.name"] == span.name.removeprefix("execute_tool ")
        assert span.status.status_code == StatusCode.UNSET
    assert (spans["call-4"].attributes or {})["chatagent.tool.capped"] is True
    grpc_spans = [s for s in exporter.get_finished_spans() if s.name.startswith("/chatagent.v1")]
    assert sorted(s.name for s in grpc_spans) == [
        "/chatagent.v1.ToolService/Calculate",
        "/chatagent.v1.ToolService/GetTime",
    ]
    parents = {s.name: s.parent.span_id if s.parent else None for s in grpc_spans}
    assert parents["/chatagent.v1.ToolService/GetTime"] == spans["call-1"].context.span_id
    assert parents["/chatagent.v1.ToolService/Calculate"] == spans["call-3"].context.span_id


async def test_a_tool_that_fails_is_an_error_and_a_call_the_llm_got_wrong_is_not(
    tools: tuple[ToolRunner, Recorder, grpc.aio.Channel], exporter: InMemorySpanExporter
) -> None:
    runner, recorder, _ = tools
    recorder.failures["GetWeather"] = grpc.StatusCode.UNAVAILABLE
    recorder.failures["Calculate"] = grpc.StatusCode.INVALID_ARGUMENT
    await run(
        runner,
        call("get_weather", {"place": "大阪"}, "call-w"),
        call("calculate", {"expression": "1/0"}, "call-c"),
    )
    spans = tool_spans(exporter)
    weather, calc = spans["call-w"], spans["call-c"]
    assert (weather.attributes or {})["chatagent.tool.status"] == "fallback"
    assert (weather.attributes or {})["error.type"] == "UNAVAILABLE"
    assert weather.status.status_code == StatusCode.ERROR
    assert (calc.attributes or {})["chatagent.tool.status"] == "invalid_argument"
    assert "error.type" not in (calc.attributes or {})
    assert calc.status.status_code == StatusCode.UNSET
    for span in spans.values():
        assert span.events == ()


async def test_what_the_llm_made_up_stays_off_the_tool_span(
    tools: tuple[ToolRunner, Recorder, grpc.aio.Channel], exporter: InMemorySpanExporter
) -> None:
    runner, _, _ = tools
    # A name and an id the LLM made up from the user's words, and arguments holding them.
    await run(
        runner,
        call(f"tell_{SECRET}", {"text": SECRET}, f"id-{SECRET}"),
        call("calculate", {"expression": f"'{SECRET}'"}, "x" * 65),
    )
    spans = only(exporter, "execute_tool ")
    assert sorted(s.name for s in spans) == ["execute_tool calculate", "execute_tool unknown"]
    for span in spans:
        assert "gen_ai.tool.call.id" not in (span.attributes or {})
        assert_nothing_said(span, "x" * 65)
    for span in exporter.get_finished_spans():
        assert_nothing_said(span)


async def test_a_cancelled_tool_call_ends_its_span_and_its_grpc_calls_span(
    tools: tuple[ToolRunner, Recorder, grpc.aio.Channel], exporter: InMemorySpanExporter
) -> None:
    runner, recorder, _ = tools
    recorder.delays["GetTime"] = 5.0
    task = asyncio.create_task(run(runner, call("get_time", {"place": "東京"}, "call-slow")))
    for _ in range(500):
        if recorder.called("GetTime"):
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(500):  # the server hears of the cancel
        if recorder.cancelled:
            break
        await asyncio.sleep(0.01)
    (tool,) = only(exporter, "execute_tool ")
    assert (tool.attributes or {})["error.type"] == "cancelled"
    assert tool.status.status_code == StatusCode.ERROR
    # OpenTelemetry's own interceptor would leave this span open forever (EndAbandonedUnarySpans).
    (rpc,) = only(exporter, "/chatagent.v1.ToolService/GetTime")
    assert rpc.parent is not None
    assert rpc.parent.span_id == tool.context.span_id
    assert (rpc.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    assert rpc.status.status_code == StatusCode.ERROR


async def test_an_untraced_call_cancelled_leaves_its_callers_span_alone(
    tools: tuple[ToolRunner, Recorder, grpc.aio.Channel], provider: TracerProvider
) -> None:
    _, _, channel = tools
    stub = health_pb2_grpc.HealthStub(channel)
    with provider.get_tracer("test").start_as_current_span("caller") as caller:
        task = asyncio.create_task(unary(stub.Check(health_pb2.HealthCheckRequest(), timeout=5)))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises((asyncio.CancelledError, grpc.aio.AioRpcError)):
            await task
        await asyncio.sleep(0.05)
        assert caller.is_recording()


# -- the client span of a speech stream ----------------------------------------------------------


class Endless(speech_pb2_grpc.SpeechServiceServicer):
    """Streams `count` chunks (forever if None), `pause` seconds apart."""

    def __init__(self) -> None:
        self.count: int | None = None
        self.pause = 0.01
        self.started = asyncio.Event()

    async def Synthesize(self, request: Any, context: Any) -> AsyncIterator[Any]:
        self.started.set()
        sent = 0
        while self.count is None or sent < self.count:
            yield speech_pb2.SynthesizeResponse(sequence=sent, text=request.text)
            sent += 1
            await asyncio.sleep(self.pause)


@pytest.fixture
async def speech(
    provider: TracerProvider,
) -> AsyncIterator[tuple[speech_pb2_grpc.SpeechServiceStub, Endless]]:
    servicer = Endless()
    server, address = await _serve(speech_pb2_grpc.add_SpeechServiceServicer_to_server, servicer)
    channel = grpc.aio.insecure_channel(
        address, interceptors=[*client_interceptors(provider), *cancel_on_wire()]
    )
    try:
        yield speech_pb2_grpc.SpeechServiceStub(channel), servicer
    finally:
        await channel.close()
        await server.stop(None)


def synthesize_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    (span,) = only(exporter, "/chatagent.v1.SpeechService/Synthesize")
    return span


async def finished(exporter: InMemorySpanExporter, prefix: str) -> None:
    for _ in range(500):
        if only(exporter, prefix):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no span {prefix} ended")


async def test_a_stream_read_to_its_end_is_ok(
    speech: tuple[speech_pb2_grpc.SpeechServiceStub, Endless], exporter: InMemorySpanExporter
) -> None:
    stub, servicer = speech
    servicer.count = 3
    async with streaming(stub.Synthesize(speech_pb2.SynthesizeRequest(text="a"), timeout=5)) as r:
        assert len([chunk async for chunk in r]) == 3
    await finished(exporter, "/chatagent.v1.SpeechService/")
    span = synthesize_span(exporter)
    assert span.status.status_code == StatusCode.UNSET
    assert (span.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]


async def test_a_stream_whose_reader_is_cancelled_ends_cancelled(
    speech: tuple[speech_pb2_grpc.SpeechServiceStub, Endless], exporter: InMemorySpanExporter
) -> None:
    stub, servicer = speech
    servicer.pause = 10.0

    async def read() -> None:
        call = stub.Synthesize(speech_pb2.SynthesizeRequest(text="a"), timeout=30)
        async with streaming(call) as responses:
            async for _ in responses:
                pass

    task = asyncio.create_task(read())
    await asyncio.wait_for(servicer.started.wait(), 5)
    await asyncio.sleep(0.05)  # the first chunk is in; the reader waits for the second
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await finished(exporter, "/chatagent.v1.SpeechService/")
    span = synthesize_span(exporter)
    assert span.status.status_code == StatusCode.ERROR
    assert (span.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]


async def test_a_stream_left_early_ends_cancelled(
    speech: tuple[speech_pb2_grpc.SpeechServiceStub, Endless], exporter: InMemorySpanExporter
) -> None:
    stub, _ = speech
    call = stub.Synthesize(speech_pb2.SynthesizeRequest(text="a"), timeout=30)
    async with streaming(call) as responses:
        async for _ in responses:
            break
    del call, responses
    await finished(exporter, "/chatagent.v1.SpeechService/")
    span = synthesize_span(exporter)
    assert span.status.status_code == StatusCode.ERROR
    assert (span.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
