"""The OpenAI-compatible LLM backend, with the real openai client against a local fake server."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from email.utils import formatdate
from typing import Any

import httpx
import openai
import pytest

from services.orchestrator.llm import (
    LlmError,
    LlmTimeout,
    LlmUnavailable,
    OpenAIChat,
    _retry_after_seconds,
)
from services.orchestrator.model import TokenUsage, ToolCallRequest
from tests.support.fake_openai import FakeOpenAI, Reply, fake_openai
from tests.support.ports import free_port

API_KEY = "sk-test-0123456789"
MODEL = "gpt-test"
MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "あなたは猫です。語尾は「にゃん」。"},
    {"role": "user", "content": "東京の天気は？"},
]
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather of a place.",
            "parameters": {
                "type": "object",
                "properties": {"location": {"type": "string"}},
                "required": ["location"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The current time in a time zone.",
            "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}},
        },
    },
]


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    with fake_openai() as fake:
        yield fake


@pytest.fixture
async def llm(upstream: FakeOpenAI) -> AsyncIterator[OpenAIChat]:
    chat = OpenAIChat(api_key=API_KEY, base_url=upstream.base_url, model=MODEL, max_retries=2)
    yield chat
    await chat.aclose()


async def test_text_reply_carries_messages_tools_and_key(
    upstream: FakeOpenAI, llm: OpenAIChat
) -> None:
    upstream.enqueue(
        Reply(
            content="晴れだにゃん", prompt_tokens=123, completion_tokens=45, model="gpt-test-0613"
        )
    )

    reply = await llm.complete(MESSAGES, TOOLS, timeout_seconds=5)

    assert reply.content == "晴れだにゃん"
    assert reply.tool_calls == []
    assert reply.usage == TokenUsage(prompt_tokens=123, completion_tokens=45)
    assert reply.model == "gpt-test-0613"
    [request] = upstream.requests
    assert request.path == "/v1/chat/completions"
    assert request.body["model"] == MODEL
    assert request.messages == MESSAGES
    assert request.body["tools"] == TOOLS
    assert request.body["tool_choice"] == "auto"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"


async def test_tool_calls_keep_ids_names_and_arguments(
    upstream: FakeOpenAI, llm: OpenAIChat
) -> None:
    weather_args = '{"location": "東京", "days": 2}'
    upstream.enqueue(
        Reply(
            content=None,
            tool_calls=[
                {"id": "call_w1", "name": "get_weather", "arguments": weather_args},
                {"id": "call_t2", "name": "get_time", "arguments": '{"timezone":"Asia/Tokyo"}'},
            ],
        )
    )

    reply = await llm.complete(MESSAGES, TOOLS, timeout_seconds=5)

    assert reply.content == ""
    assert reply.tool_calls == [
        ToolCallRequest(id="call_w1", name="get_weather", arguments=weather_args),
        ToolCallRequest(id="call_t2", name="get_time", arguments='{"timezone":"Asia/Tokyo"}'),
    ]
    assert json.loads(reply.tool_calls[0].arguments) == {"location": "東京", "days": 2}


async def test_no_tools_means_no_tool_choice(upstream: FakeOpenAI) -> None:
    chat = OpenAIChat(api_key=API_KEY, base_url=upstream.base_url, model=MODEL, temperature=0.3)
    try:
        await chat.complete(MESSAGES, [], timeout_seconds=5)
    finally:
        await chat.aclose()

    [request] = upstream.requests
    # OpenAI rejects tool_choice without tools.
    assert "tools" not in request.body
    assert "tool_choice" not in request.body
    assert request.body["temperature"] == 0.3


async def test_missing_usage_and_model_fall_back(upstream: FakeOpenAI, llm: OpenAIChat) -> None:
    upstream.enqueue(
        Reply(
            body={
                "id": "chatcmpl-x",
                "object": "chat.completion",
                "created": 0,
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": "にゃん"},
                    }
                ],
            }
        )
    )

    reply = await llm.complete(MESSAGES, TOOLS, timeout_seconds=5)

    assert reply.content == "にゃん"
    assert reply.usage == TokenUsage(0, 0)
    assert reply.model == MODEL


@pytest.mark.parametrize(
    "reply",
    [
        Reply(body={"id": "x", "object": "chat.completion", "created": 0, "choices": []}),
        Reply(body={"error": "nothing here"}),
        Reply(body=b"{not json"),
        Reply(body=b"<html>proxy error</html>", content_type="text/html"),
    ],
    ids=["no-choices", "no-choices-key", "broken-json", "html"],
)
async def test_malformed_response_is_unavailable(
    upstream: FakeOpenAI, llm: OpenAIChat, reply: Reply
) -> None:
    upstream.enqueue(reply)

    with pytest.raises(LlmUnavailable):
        await llm.complete(MESSAGES, TOOLS, timeout_seconds=5)
    assert len(upstream.requests) == 1


async def test_server_errors_are_retried_until_success(
    upstream: FakeOpenAI, llm: OpenAIChat
) -> None:
    upstream.enqueue(Reply.error(500), Reply.error(503), Reply(content="やっと晴れにゃん"))

    reply = await llm.complete(MESSAGES, TOOLS, timeout_seconds=10)

    assert reply.content == "やっと晴れにゃん"
    assert len(upstream.requests) == 3


async def test_persistent_server_error_gives_up_after_max_retries(
    upstream: FakeOpenAI, llm: OpenAIChat
) -> None:
    upstream.default = Reply.error(500)

    with pytest.raises(LlmUnavailable, match="HTTP 500"):
        await llm.complete(MESSAGES, TOOLS, timeout_seconds=10)
    assert len(upstream.requests) == 3


@pytest.mark.parametrize(
    ("rate_limited", "wait"),
    [
        (Reply.rate_limited(retry_after=0.2), 0.2),
        # Longer than the client's own backoff (at most 0.5 s here): only the header explains it.
        (Reply.rate_limited(retry_after_ms=900), 0.9),
    ],
    ids=["retry-after", "retry-after-ms"],
)
async def test_rate_limit_waits_as_told(
    upstream: FakeOpenAI, llm: OpenAIChat, rate_limited: Reply, wait: float
) -> None:
    upstream.enqueue(rate_limited, Reply(content="お待たせにゃん"))

    reply = await llm.complete(MESSAGES, TOOLS, timeout_seconds=10)

    assert reply.content == "お待たせにゃん"
    first, second = upstream.requests
    assert second.at - first.at >= wait


async def test_retry_after_beyond_budget_gives_up_at_once(
    upstream: FakeOpenAI, llm: OpenAIChat
) -> None:
    upstream.enqueue(Reply.rate_limited(retry_after=30), Reply(content="too late"))

    started = time.monotonic()
    with pytest.raises(LlmUnavailable, match="429"):
        await llm.complete(MESSAGES, TOOLS, timeout_seconds=5)

    assert time.monotonic() - started < 1.0
    assert len(upstream.requests) == 1


async def test_hung_upstream_times_out_within_budget(upstream: FakeOpenAI, llm: OpenAIChat) -> None:
    upstream.default = Reply.hang(30)

    started = time.monotonic()
    with pytest.raises(LlmTimeout):
        await llm.complete(MESSAGES, TOOLS, timeout_seconds=1.0)

    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 2.5


async def test_stuck_attempt_leaves_budget_for_a_retry(
    upstream: FakeOpenAI, llm: OpenAIChat
) -> None:
    upstream.enqueue(Reply.hang(30), Reply(content="二度目で通ったにゃん"))

    reply = await llm.complete(MESSAGES, TOOLS, timeout_seconds=2.0)

    assert reply.content == "二度目で通ったにゃん"
    assert len(upstream.requests) == 2


@pytest.mark.parametrize("status", [400, 401, 404])
async def test_client_errors_are_not_retried(
    upstream: FakeOpenAI, llm: OpenAIChat, status: int
) -> None:
    upstream.default = Reply.error(status)

    with pytest.raises(LlmError, match=str(status)) as raised:
        await llm.complete(MESSAGES, TOOLS, timeout_seconds=5)

    assert not isinstance(raised.value, LlmUnavailable | LlmTimeout)
    assert len(upstream.requests) == 1


async def test_unreachable_endpoint_is_unavailable() -> None:
    chat = OpenAIChat(
        api_key=API_KEY, base_url=f"http://127.0.0.1:{free_port()}/v1", model=MODEL, max_retries=1
    )
    try:
        with pytest.raises(LlmUnavailable, match="connection"):
            await chat.complete(MESSAGES, TOOLS, timeout_seconds=5)
    finally:
        await chat.aclose()


async def test_one_client_and_one_connection_serve_many_calls(
    upstream: FakeOpenAI, llm: OpenAIChat
) -> None:
    client = llm.client

    for _ in range(3):
        await llm.complete(MESSAGES, TOOLS, timeout_seconds=5)

    assert llm.client is client
    assert len({request.client_port for request in upstream.requests}) == 1


async def test_injected_http_client_is_used_and_left_open(upstream: FakeOpenAI) -> None:
    async with httpx.AsyncClient(
        headers={"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"}
    ) as http:
        chat = OpenAIChat(
            api_key=API_KEY, base_url=upstream.base_url, model=MODEL, http_client=http
        )
        await chat.complete(MESSAGES, TOOLS, timeout_seconds=5)
        await chat.aclose()

        assert not http.is_closed
        assert upstream.requests[0].headers["traceparent"].startswith("00-abab")


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "0.25"}, 0.25),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_header_parsing(headers: dict[str, str], seconds: float | None) -> None:
    assert _retry_after_seconds(headers) == seconds


def test_retry_after_http_date() -> None:
    seconds = _retry_after_seconds({"retry-after": formatdate(time.time() + 60, usegmt=True)})
    assert seconds is not None
    assert 58 <= seconds <= 61


async def test_fake_streams_text_tool_calls_and_usage(upstream: FakeOpenAI) -> None:
    """The fake's streaming, read by the real client (for StreamChat)."""
    upstream.enqueue(
        Reply(
            content="晴れのち曇りだにゃん",
            tool_calls=[{"id": "call_1", "name": "get_weather", "arguments": {"location": "東京"}}],
            prompt_tokens=30,
            completion_tokens=12,
        )
    )
    client = openai.AsyncOpenAI(api_key=API_KEY, base_url=upstream.base_url, max_retries=0)
    try:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "天気"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        text, arguments, names, usage = [], [], [], None
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                text.append(choice.delta.content or "")
                for call in choice.delta.tool_calls or []:
                    if call.function and call.function.name:
                        names.append(call.function.name)
                    if call.function and call.function.arguments:
                        arguments.append(call.function.arguments)
    finally:
        await client.close()

    assert "".join(text) == "晴れのち曇りだにゃん"
    assert len(text) > 2  # delivered in pieces
    assert names == ["get_weather"]
    assert json.loads("".join(arguments)) == {"location": "東京"}
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (30, 12)
