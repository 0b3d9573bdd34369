"""One turn is one trace, as an operator reads it in Jaeger: all four services as real processes
exporting over OTLP to a receiver in this test, a fake LLM that asks for three tools in one
response and then writes the reply, one `Chat` with speech.

The trace must hang together (one trace id, the one the answer names; every span's parent in
it; each callee's server span under the orchestrator's client span for it; each tool's gRPC call
under its `execute_tool` span), carry what the LLM and the tools did (model, tokens, tool names
and statuses), and hold nothing the user wrote or was answered."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest

from chatagent.v1 import chat_pb2
from tests.support.fake_open_meteo import fake_open_meteo
from tests.support.fake_openai import FakeOpenAI, Reply, fake_openai
from tests.support.otlp_receiver import (
    KIND_CLIENT,
    KIND_INTERNAL,
    KIND_SERVER,
    STATUS_ERROR,
    OtlpReceiver,
    ReceivedSpan,
    otlp_receiver,
)
from tests.support.ports import free_port
from tests.support.suite import whole_suite

MODEL = "fake-model"
CHAT = "/chatagent.v1.ChatService/Chat"
ANALYZE = "/chatagent.v1.EmotionService/Analyze"
SYNTHESIZE = "/chatagent.v1.SpeechService/Synthesize"
TOOL_RPCS = {
    "get_time": "/chatagent.v1.ToolService/GetTime",
    "get_weather": "/chatagent.v1.ToolService/GetWeather",
    "get_fortune": "/chatagent.v1.ToolService/GetFortune",
}
# What the user says and what the LLM answers, each with a phrase found nowhere else.
SECRET = "マシュマロ灯台ZQ7731"
MESSAGE = f"今の時間と東京の天気と今日の運勢を教えてにゃ。合言葉は{SECRET}だよ"
REPLY_MARK = "ペンギン色"
REPLY = f"東京の空は{REPLY_MARK}で、今は朝だにゃん。今日の運勢は大吉だにゃん。"
# What the fake reports for each of the two LLM calls: (prompt, completion) tokens.
TOOLS_USAGE = (321, 54)
REPLY_USAGE = (654, 32)


@dataclass(frozen=True)
class Turn:
    response: chat_pb2.ChatResponse
    spans: list[ReceivedSpan]  # all the spans received, whatever their trace

    def named(self, name: str, service: str | None = None) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.name == name and service in (None, s.service)]

    def by_id(self) -> dict[str, ReceivedSpan]:
        return {s.span_id: s for s in self.spans}


def _call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"id": call_id, "name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}


def _complete(spans: list[ReceivedSpan]) -> bool:
    """All the turn's spans are in: the orchestrator's Chat span (it ends after every other
    span of its process), each callee's server span, and a server span for each speech call."""

    def count(name: str, service: str, kind: int) -> int:
        return sum(1 for s in spans if s.name == name and s.service == service and s.kind == kind)

    speech_calls = count(SYNTHESIZE, "orchestrator", KIND_CLIENT)
    return (
        count(CHAT, "orchestrator", KIND_SERVER) == 1
        and all(count(rpc, "tools", KIND_SERVER) == 1 for rpc in TOOL_RPCS.values())
        and count(ANALYZE, "emotion", KIND_SERVER) == 1
        and speech_calls >= 1
        and count(SYNTHESIZE, "tts", KIND_SERVER) == speech_calls
    )


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeOpenAI]:
    with fake_openai() as fake:
        yield fake


@pytest.fixture(scope="module")
def turn(llm: FakeOpenAI) -> Iterator[Turn]:
    """The suite, started once, and the one turn this module reads the trace of."""
    with ExitStack() as stack:
        receiver: OtlpReceiver = stack.enter_context(otlp_receiver(free_port()))
        weather = stack.enter_context(fake_open_meteo())
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        }
        per_service = {
            "orchestrator": {
                "OPENAI_BASE_URL": llm.base_url,
                "OPENAI_API_KEY": "sk-test",
                "LLM_MODEL": MODEL,
                "LLM_PRICES": json.dumps({MODEL: [1.0, 2.0]}),
                "DEFAULT_TIMEZONE": "Asia/Tokyo",
                # A cold emotion or speech process may be slow to answer its first call; the
                # trace must not depend on it (a timed-out call is another test's subject).
                "EMOTION_TIMEOUT_SECONDS": "10",
                "SPEECH_TIMEOUT_SECONDS": "30",
                "TURN_TIMEOUT_SECONDS": "60",
            },
            "tools": {
                "OPEN_METEO_GEOCODING_URL": weather.geocoding_url,
                "OPEN_METEO_FORECAST_URL": weather.forecast_url,
            },
        }
        suite = stack.enter_context(whole_suite(env, per_service))
        llm.enqueue(
            Reply(
                tool_calls=[
                    _call("call_time_1", "get_time", {"place": "東京"}),
                    _call("call_weather_2", "get_weather", {"place": "Tokyo"}),
                    _call("call_fortune_3", "get_fortune", {}),
                ],
                prompt_tokens=TOOLS_USAGE[0],
                completion_tokens=TOOLS_USAGE[1],
            ),
            Reply(
                content=REPLY,
                prompt_tokens=REPLY_USAGE[0],
                completion_tokens=REPLY_USAGE[1],
            ),
        )
        response = suite.chat.Chat(
            chat_pb2.ChatRequest(user_id="trace-user-1", message=MESSAGE, include_audio=True),
            timeout=60,
        )
        spans = receiver.wait_until(_complete, timeout=30)
        yield Turn(response, spans)


def test_the_turn_answered_with_its_tools_and_speech(turn: Turn, llm: FakeOpenAI) -> None:
    response = turn.response
    assert len(llm.requests) == 2, "the tools' round and the reply's"
    assert [c.name for c in response.tool_calls] == list(TOOL_RPCS)
    assert all(c.status == chat_pb2.TOOL_CALL_STATUS_OK for c in response.tool_calls)
    assert REPLY_MARK in response.reply
    assert response.audio
    assert list(response.degraded) == []
    assert _complete(turn.spans), [(s.service, s.name) for s in turn.spans]


def test_every_span_is_in_the_one_trace_the_answer_names(turn: Turn) -> None:
    assert len(turn.response.trace_id) == 32
    assert {s.trace_id for s in turn.spans} == {turn.response.trace_id}
    assert {s.service for s in turn.spans} == {"orchestrator", "tools", "emotion", "tts"}
    assert not [s for s in turn.spans if "grpc.health" in s.name]


def test_the_trace_has_one_root_and_every_parent_in_it(turn: Turn) -> None:
    by_id = turn.by_id()
    roots = [s for s in turn.spans if not s.parent_span_id]
    assert [(s.service, s.name) for s in roots] == [("orchestrator", CHAT)]
    # A parent that never arrived is a span that never ended: Jaeger shows its children
    # under "invalid parent".
    orphans = [
        (s.service, s.name)
        for s in turn.spans
        if s.parent_span_id and s.parent_span_id not in by_id
    ]
    assert orphans == []
    assert len(by_id) == len(turn.spans), "span ids are unique"


def test_each_callee_is_a_child_of_the_orchestrators_client_span_for_it(turn: Turn) -> None:
    by_id = turn.by_id()
    (chat,) = turn.named(CHAT, "orchestrator")
    for name, service in [
        *((rpc, "tools") for rpc in TOOL_RPCS.values()),
        (ANALYZE, "emotion"),
        (SYNTHESIZE, "tts"),
    ]:
        servers = turn.named(name, service)
        assert servers, name
        for server in servers:
            assert server.kind == KIND_SERVER
            client = by_id[server.parent_span_id]
            assert (client.service, client.name, client.kind) == ("orchestrator", name, KIND_CLIENT)
    # Emotion and speech belong to the turn itself (speech is not inside the LLM's call,
    # though its sentences are sent while the LLM writes).
    for name in (ANALYZE, SYNTHESIZE):
        for client in turn.named(name, "orchestrator"):
            assert client.parent_span_id == chat.span_id, name


def test_each_llm_call_is_a_genai_span_with_the_tokens_the_provider_reported(
    turn: Turn, llm: FakeOpenAI
) -> None:
    (chat,) = turn.named(CHAT, "orchestrator")
    calls = sorted(turn.named(f"chat {MODEL}", "orchestrator"), key=lambda s: s.start_unix_nano)
    assert len(calls) == 2
    for span, usage in zip(calls, (TOOLS_USAGE, REPLY_USAGE), strict=True):
        attributes = span.attributes
        assert span.kind == KIND_CLIENT
        assert span.parent_span_id == chat.span_id
        assert span.status_code != STATUS_ERROR
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.provider.name"] == "openai"
        assert attributes["gen_ai.system"] == "openai"
        assert attributes["gen_ai.request.model"] == MODEL
        assert attributes["gen_ai.response.model"] == MODEL
        assert attributes["gen_ai.request.max_tokens"] == llm.requests[0].body["max_tokens"]
        assert (
            attributes["gen_ai.usage.input_tokens"],
            attributes["gen_ai.usage.output_tokens"],
        ) == usage
        assert attributes["gen_ai.response.id"].startswith("chatcmpl-fake-")
        assert attributes["server.address"] == "127.0.0.1"
        assert attributes["server.port"] == int(llm.base_url.split(":")[2].split("/")[0])
    assert calls[0].attributes["gen_ai.response.finish_reasons"] == ["tool_calls"]
    assert calls[1].attributes["gen_ai.response.finish_reasons"] == ["stop"]
    # The span covers the whole call, the stream to its last chunk.
    assert all(span.end_unix_nano > span.start_unix_nano for span in calls)


def test_each_tool_call_is_a_span_whose_child_is_its_grpc_call(turn: Turn) -> None:
    by_id = turn.by_id()
    (chat,) = turn.named(CHAT, "orchestrator")
    tools = {
        s.attributes.get("gen_ai.tool.name"): s
        for s in turn.spans
        if s.name.startswith("execute_tool ")
    }
    assert set(tools) == set(TOOL_RPCS)
    for name, span in tools.items():
        assert span.name == f"execute_tool {name}"
        assert span.kind == KIND_INTERNAL
        assert span.parent_span_id == chat.span_id
        assert span.attributes["gen_ai.operation.name"] == "execute_tool"
        assert span.attributes["chatagent.tool.status"] == "ok"
        assert span.status_code != STATUS_ERROR
        (client,) = turn.named(TOOL_RPCS[name], "orchestrator")
        assert client.parent_span_id == span.span_id
        assert client.kind == KIND_CLIENT
        (server,) = turn.named(TOOL_RPCS[name], "tools")
        assert by_id[by_id[server.parent_span_id].parent_span_id] is span
    assert {s.attributes["gen_ai.tool.call.id"] for s in tools.values()} == {
        "call_time_1",
        "call_weather_2",
        "call_fortune_3",
    }


def test_no_span_holds_what_the_user_wrote_or_was_answered(turn: Turn) -> None:
    reply = turn.response.reply
    assert REPLY_MARK in reply
    secrets = [MESSAGE, SECRET, "マシュマロ", "ZQ7731", reply, REPLY_MARK, *reply.split("。")[:1]]
    leaks = [
        (span.service, span.name, text, secret)
        for span in turn.spans
        for text in span.texts()
        for secret in secrets
        if secret and secret in text
    ]
    assert leaks == []
