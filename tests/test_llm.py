"""The OpenAI-compatible LLM backend, with the real openai client against a local fake server:
neutral messages and tool specs go out as Chat Completions requests, and whatever comes back is
read as untrusted input."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from email.utils import formatdate
from typing import Any

import httpx
import openai
import pytest

from services.orchestrator import llm as llm_module
from services.orchestrator.llm import (
    _MAX_MODEL_CHARS,
    _MAX_TOKEN_COUNT,
    LlmError,
    LlmRejected,
    LlmReply,
    LlmRequest,
    LlmTimeout,
    LlmUnavailable,
    MaxTokensParameter,
    OpenAIChat,
    StopStream,
    _retry_after_seconds,
    estimate_prompt_tokens,
    is_request_error,
)
from services.orchestrator.model import (
    AssistantMessage,
    Message,
    SystemMessage,
    ToolCallRequest,
    ToolResultMessage,
    UserMessage,
)
from services.orchestrator.toolspec import ToolSpec, tool_specs
from tests.support.fake_openai import FakeOpenAI, Reply, completion_body, fake_openai
from tests.support.ports import free_port

API_KEY = "sk-test-0123456789"
MODEL = "gpt-test"
MAX_TOKENS = 321
SYSTEM = "あなたは猫です。語尾は「にゃん」。"
QUESTION = "東京の天気は？"
MESSAGES: tuple[Message, ...] = (SystemMessage(SYSTEM), UserMessage(QUESTION))
WIRE_MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": QUESTION},
]
TOOLS: tuple[ToolSpec, ...] = tuple(tool_specs().values())


def request(
    messages: Sequence[Message] = MESSAGES,
    tools: Sequence[ToolSpec] = TOOLS,
    max_tokens: int = MAX_TOKENS,
) -> LlmRequest:
    return LlmRequest(messages=messages, tools=tools, max_tokens=max_tokens)


def body_with(**changes: Any) -> dict[str, Any]:
    """A well-formed completion body, with `changes` applied to the body (top level) or, for
    keys starting with "choice_", to its first choice."""
    body = completion_body(Reply(content="にゃん"), "chatcmpl-edited")
    for key, value in changes.items():
        if key.startswith("choice_"):
            body["choices"][0][key.removeprefix("choice_")] = value
        else:
            body[key] = value
    return body


@pytest.fixture(scope="module")
def _server() -> Iterator[FakeOpenAI]:
    with fake_openai() as fake:
        yield fake


@pytest.fixture
def upstream(_server: FakeOpenAI) -> FakeOpenAI:
    """The module's fake, as new: one server for all (starting and stopping one costs 0.1 s)."""
    _server.script.clear()
    _server.responder = None
    _server.default = FakeOpenAI().default
    _server.requests.clear()
    return _server


@pytest.fixture
async def llm(upstream: FakeOpenAI) -> AsyncIterator[OpenAIChat]:
    # The fake speaks plain HTTP; without certificates to load, a client costs 1 ms, not 100.
    async with openai.DefaultAsyncHttpxClient(verify=False) as http:
        chat = OpenAIChat(
            api_key=API_KEY,
            base_url=upstream.base_url,
            model=MODEL,
            max_retries=2,
            http_client=http,
        )
        yield chat
        await chat.aclose()


@pytest.fixture
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries after 10 ms instead of 0.5 s and more, for tests about what is retried."""
    monkeypatch.setattr(llm_module, "INITIAL_BACKOFF_SECONDS", 0.01)


# -- the request -------------------------------------------------------------------------------


async def test_text_reply_carries_messages_tools_and_key(
    upstream: FakeOpenAI, llm: OpenAIChat
) -> None:
    upstream.enqueue(
        Reply(
            content="晴れだにゃん", prompt_tokens=123, completion_tokens=45, model="gpt-test-0613"
        )
    )

    reply = await llm.complete(request(), timeout_seconds=5)

    assert reply == LlmReply(
        content="晴れだにゃん",
        tool_calls=[],
        prompt_tokens=123,
        completion_tokens=45,
        model="gpt-test-0613",
        truncated=False,
    )
    [sent] = upstream.requests
    assert sent.path == "/v1/chat/completions"
    assert sent.body["model"] == MODEL
    assert sent.messages == WIRE_MESSAGES
    assert sent.tool_names == ["get_time", "get_weather", "get_fortune", "calculate"]
    assert sent.body["tool_choice"] == "auto"
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"


async def test_tool_definitions_are_built_from_the_specs(
    upstream: FakeOpenAI, llm: OpenAIChat
) -> None:
    specs = tool_specs()

    await llm.complete(request(tools=[specs["get_weather"], specs["calculate"]]), timeout_seconds=5)

    [sent] = upstream.requests
    weather, calculate = sent.body["tools"]
    assert weather["type"] == "function"
    assert weather["function"]["name"] == "get_weather"
    assert weather["function"]["description"] == specs["get_weather"].description
    assert "weather" in weather["function"]["description"]
    parameters = weather["function"]["parameters"]
    # The turn fills the language; the LLM is offered only the place, which it may leave out.
    assert set(parameters["properties"]) == {"place"}
    assert parameters["properties"]["place"]["type"] == "string"
    assert parameters["required"] == []
    assert parameters["additionalProperties"] is False
    assert calculate["function"]["name"] == "calculate"
    assert calculate["function"]["parameters"]["required"] == ["expression"]


@pytest.mark.parametrize("parameter", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_is_in_every_request_under_the_configured_name(
    upstream: FakeOpenAI, parameter: MaxTokensParameter
) -> None:
    chat = OpenAIChat(
        api_key=API_KEY,
        base_url=upstream.base_url,
        model=MODEL,
        max_tokens_parameter=parameter,
    )
    # The retries after server errors are requests too, and each is billed alike.
    upstream.enqueue(
        Reply.rate_limited(retry_after=0), Reply(content="にゃん"), Reply(content="にゃん")
    )
    try:
        await chat.complete(request(max_tokens=77), timeout_seconds=10)
        await chat.complete(request(tools=[], max_tokens=5), timeout_seconds=10)
    finally:
        await chat.aclose()

    other = {"max_tokens", "max_completion_tokens"} - {parameter}
    assert [sent.body.get(parameter) for sent in upstream.requests] == [77, 77, 5]
    for sent in upstream.requests:
        assert not other & sent.body.keys()


async def test_neutral_messages_go_out_as_chat_completions_messages(
    upstream: FakeOpenAI, llm: OpenAIChat
) -> None:
    weather = ToolCallRequest(id="call_w", name="get_weather", arguments='{"place":"東京"}')
    clock = ToolCallRequest(id="call_t", name="get_time", arguments="{}")
    conversation: list[Message] = [
        *MESSAGES,
        AssistantMessage("", (weather, clock)),
        ToolResultMessage("call_w", {"place": "東京", "temperature_c": 21.5}),
        ToolResultMessage("call_t", {"error": "The clock service is unavailable right now."}),
        AssistantMessage("晴れだにゃん"),
        UserMessage("ありがとう"),
        AssistantMessage("調べるにゃん", (clock,)),
    ]

    await llm.complete(request(conversation), timeout_seconds=5)

    [sent] = upstream.requests
    assert sent.messages[:2] == WIRE_MESSAGES
    assert sent.messages[2] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_w",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"place":"東京"}'},
            },
            {
                "id": "call_t",
                "type": "function",
                "function": {"name": "get_time", "arguments": "{}"},
            },
        ],
    }
    first_result, second_result = sent.messages[3:5]
    assert first_result["role"] == second_result["role"] == "tool"
    assert first_result["tool_call_id"] == "call_w"
    assert json.loads(first_result["content"]) == {"place": "東京", "temperature_c": 21.5}
    assert "東京" in first_result["content"]  # not \u-escaped: fewer tokens
    assert second_result["tool_call_id"] == "call_t"
    assert json.loads(second_result["content"]) == {
        "error": "The clock service is unavailable right now."
    }
    assert sent.messages[5:7] == [
        {"role": "assistant", "content": "晴れだにゃん"},
        {"role": "user", "content": "ありがとう"},
    ]
    # Text said alongside tool calls is kept.
    assert sent.messages[7]["content"] == "調べるにゃん"
    assert [c["id"] for c in sent.messages[7]["tool_calls"]] == ["call_t"]


async def test_no_tools_means_no_tool_choice(upstream: FakeOpenAI) -> None:
    chat = OpenAIChat(api_key=API_KEY, base_url=upstream.base_url, model=MODEL, temperature=0.3)
    try:
        await chat.complete(request(tools=[]), timeout_seconds=5)
    finally:
        await chat.aclose()

    [sent] = upstream.requests
    # OpenAI rejects tool_choice without tools.
    assert "tools" not in sent.body
    assert "tool_choice" not in sent.body
    assert sent.body["temperature"] == 0.3


async def test_no_temperature_unless_configured(upstream: FakeOpenAI, llm: OpenAIChat) -> None:
    await llm.complete(request(), timeout_seconds=5)

    # Some models (o-series, gpt-5) refuse any temperature but the default.
    assert "temperature" not in upstream.requests[0].body


# -- the reply ---------------------------------------------------------------------------------


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

    reply = await llm.complete(request(), timeout_seconds=5)

    assert reply.content == ""
    assert reply.tool_calls == [
        ToolCallRequest(id="call_w1", name="get_weather", arguments=weather_args),
        ToolCallRequest(id="call_t2", name="get_time", arguments='{"timezone":"Asia/Tokyo"}'),
    ]
    assert json.loads(reply.tool_calls[0].arguments) == {"location": "東京", "days": 2}


async def test_arguments_sent_as_an_object_become_json_text(
    upstream: FakeOpenAI, llm: OpenAIChat
) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": {"place": "大阪"}},
    }
    missing = {"id": "call_2", "type": "function", "function": {"name": "get_time"}}
    upstream.enqueue(
        Reply(body=body_with(choice_message={"role": "assistant", "tool_calls": [call, missing]}))
    )

    reply = await llm.complete(request(), timeout_seconds=5)

    assert json.loads(reply.tool_calls[0].arguments) == {"place": "大阪"}
    assert reply.tool_calls[1].arguments == "{}"


@pytest.mark.parametrize(
    "ids",
    [
        ["call_1", "call_1", "call_1"],
        [None, None, None],
        ["", "", "call_0"],
        ["call_1", None, "call_1_1"],
        [None, "call_0", "call_0"],
        ["x" * 5000, "x" * 5000, None],
    ],
    ids=[
        "duplicates",
        "missing",
        "empty-then-taken",
        "missing-collides",
        "taken-later",
        "huge",
    ],
)
async def test_every_tool_call_of_a_reply_gets_its_own_id(
    upstream: FakeOpenAI, llm: OpenAIChat, ids: list[str | None]
) -> None:
    calls = [
        {"type": "function", "function": {"name": "get_time", "arguments": f'{{"place":"{n}"}}'}}
        for n in range(len(ids))
    ]
    for call, call_id in zip(calls, ids, strict=True):
        if call_id is not None:
            call["id"] = call_id
    upstream.enqueue(
        Reply(body=body_with(choice_message={"role": "assistant", "tool_calls": calls})),
        Reply(content="にゃん"),
    )

    reply = await llm.complete(request(), timeout_seconds=5)

    got = [call.id for call in reply.tool_calls]
    assert len(set(got)) == len(ids), got
    assert all(got)
    assert all(len(call_id) <= 64 for call_id in got)
    if ids[0] and len(ids[0]) <= 64:
        assert got[0] == ids[0]  # an id is changed only when an earlier call holds it
    # The next request names each call once, and each result names exactly one call.
    conversation: list[Message] = [
        *MESSAGES,
        AssistantMessage(reply.content, tuple(reply.tool_calls)),
        *(ToolResultMessage(call.id, {"ok": True}) for call in reply.tool_calls),
    ]
    await llm.complete(request(conversation), timeout_seconds=5)
    sent = upstream.requests[1].messages
    offered = [call["id"] for call in sent[2]["tool_calls"]]
    answered = [message["tool_call_id"] for message in sent[3:]]
    assert sorted(offered) == sorted(answered) == sorted(set(offered))


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

    reply = await llm.complete(request(), timeout_seconds=5)

    assert reply.content == "にゃん"
    assert (reply.prompt_tokens, reply.completion_tokens) == (0, 0)
    assert reply.model == MODEL


@pytest.mark.parametrize(
    ("usage", "counted"),
    [
        ({"prompt_tokens": -5, "completion_tokens": -1}, (0, 0)),
        ({"prompt_tokens": True, "completion_tokens": False}, (0, 0)),
        ({"prompt_tokens": 10**12, "completion_tokens": 10**15}, (_MAX_TOKEN_COUNT,) * 2),
        ({"prompt_tokens": "123", "completion_tokens": None}, (0, 0)),
        ({"prompt_tokens": 12.5, "completion_tokens": [3]}, (0, 0)),
        ({"prompt_tokens": 900, "completion_tokens": 40}, (900, 40)),
    ],
    ids=["negative", "bool", "huge", "text-and-null", "float-and-list", "sane"],
)
async def test_absurd_usage_numbers_are_capped_or_zeroed(
    upstream: FakeOpenAI, llm: OpenAIChat, usage: dict[str, Any], counted: tuple[int, int]
) -> None:
    upstream.enqueue(Reply(body=body_with(usage=usage)))

    reply = await llm.complete(request(), timeout_seconds=5)

    assert (reply.prompt_tokens, reply.completion_tokens) == counted
    assert all(type(n) is int for n in (reply.prompt_tokens, reply.completion_tokens))


@pytest.mark.parametrize(
    ("model", "expected"),
    [("m" * 10_000, "m" * _MAX_MODEL_CHARS), ("", MODEL), (42, MODEL), (None, MODEL)],
    ids=["10kB", "empty", "number", "null"],
)
async def test_the_model_name_is_bounded_and_falls_back(
    upstream: FakeOpenAI, llm: OpenAIChat, model: object, expected: str
) -> None:
    upstream.enqueue(Reply(body=body_with(model=model)))

    reply = await llm.complete(request(), timeout_seconds=5)

    assert reply.model == expected


@pytest.mark.parametrize(
    ("finish_reason", "truncated"),
    [("length", True), ("stop", False), ("tool_calls", False), (None, False)],
)
async def test_a_reply_stopped_at_max_tokens_is_marked_truncated(
    upstream: FakeOpenAI, llm: OpenAIChat, finish_reason: str | None, truncated: bool
) -> None:
    upstream.enqueue(Reply(body=body_with(choice_finish_reason=finish_reason)))

    reply = await llm.complete(request(), timeout_seconds=5)

    assert reply.truncated is truncated
    assert reply.content == "にゃん"


@pytest.mark.parametrize(
    "reply",
    [
        Reply(body={"id": "x", "object": "chat.completion", "created": 0, "choices": []}),
        Reply(body={"error": "nothing here"}),
        Reply(body=b"{not json"),
        Reply(body=b"<html>proxy error</html>", content_type="text/html"),
        Reply(body=body_with(choice_message={"role": "assistant", "content": ["a", "b"]})),
        Reply(body=body_with(choice_message={"role": "assistant", "tool_calls": "call"})),
        Reply(
            body=body_with(
                choice_message={
                    "role": "assistant",
                    "tool_calls": [{"id": "c", "type": "function", "function": {"name": ""}}],
                }
            )
        ),
    ],
    ids=[
        "no-choices",
        "no-choices-key",
        "broken-json",
        "html",
        "content-not-text",
        "tool-calls-not-a-list",
        "nameless-tool-call",
    ],
)
async def test_malformed_response_is_unavailable(
    upstream: FakeOpenAI, llm: OpenAIChat, reply: Reply
) -> None:
    upstream.enqueue(reply)

    with pytest.raises(LlmUnavailable):
        await llm.complete(request(), timeout_seconds=5)
    assert len(upstream.requests) == 1


# -- retries, budgets, rejections --------------------------------------------------------------


@pytest.mark.usefixtures("quick_backoff")
async def test_server_errors_are_retried_until_success(
    upstream: FakeOpenAI, llm: OpenAIChat
) -> None:
    upstream.enqueue(Reply.error(500), Reply.error(503), Reply(content="やっと晴れにゃん"))

    reply = await llm.complete(request(), timeout_seconds=10)

    assert reply.content == "やっと晴れにゃん"
    assert len(upstream.requests) == 3
    # A retry sends the same request.
    assert upstream.requests[0].body == upstream.requests[2].body


@pytest.mark.usefixtures("quick_backoff")
async def test_persistent_server_error_gives_up_after_max_retries(
    upstream: FakeOpenAI, llm: OpenAIChat
) -> None:
    upstream.default = Reply.error(500)

    with pytest.raises(LlmUnavailable, match="HTTP 500") as raised:
        await llm.complete(request(), timeout_seconds=10)
    assert len(upstream.requests) == 3
    assert not is_request_error(raised.value)


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

    reply = await llm.complete(request(), timeout_seconds=10)

    assert reply.content == "お待たせにゃん"
    first, second = upstream.requests
    assert second.at - first.at >= wait


async def test_retry_after_beyond_budget_gives_up_at_once(
    upstream: FakeOpenAI, llm: OpenAIChat
) -> None:
    upstream.enqueue(Reply.rate_limited(retry_after=30), Reply(content="too late"))

    started = time.monotonic()
    with pytest.raises(LlmUnavailable, match="429"):
        await llm.complete(request(), timeout_seconds=5)

    assert time.monotonic() - started < 1.0
    assert len(upstream.requests) == 1


async def test_hung_upstream_times_out_within_budget(upstream: FakeOpenAI, llm: OpenAIChat) -> None:
    upstream.default = Reply.hang(30)

    started = time.monotonic()
    with pytest.raises(LlmTimeout):
        await llm.complete(request(), timeout_seconds=1.0)

    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 2.5


async def test_stuck_attempt_leaves_budget_for_a_retry(
    upstream: FakeOpenAI, llm: OpenAIChat
) -> None:
    upstream.enqueue(Reply.hang(30), Reply(content="二度目で通ったにゃん"))

    reply = await llm.complete(request(), timeout_seconds=2.0)

    assert reply.content == "二度目で通ったにゃん"
    assert len(upstream.requests) == 2


@pytest.mark.parametrize(
    ("status", "request_error"),
    [(400, True), (413, True), (422, True), (401, False), (403, False), (404, False)],
)
async def test_client_errors_are_rejections_not_retried(
    upstream: FakeOpenAI, llm: OpenAIChat, status: int, request_error: bool
) -> None:
    upstream.default = Reply.error(status)

    with pytest.raises(LlmRejected, match=str(status)) as raised:
        await llm.complete(request(), timeout_seconds=5)

    assert isinstance(raised.value, LlmError)
    assert not isinstance(raised.value, LlmUnavailable | LlmTimeout)
    assert raised.value.status == status
    # A malformed or oversized request is our fault; a refused key or a missing model is the
    # provider's setup failing, which its breaker should count.
    assert is_request_error(raised.value) is request_error
    assert len(upstream.requests) == 1


def test_only_a_rejected_request_is_a_request_error() -> None:
    assert is_request_error(LlmRejected(400))
    assert not is_request_error(LlmUnavailable("HTTP 400 somewhere in the text"))
    assert not is_request_error(LlmTimeout("gone"))
    assert not is_request_error(ValueError("400"))


@pytest.mark.usefixtures("quick_backoff")
async def test_unreachable_endpoint_is_unavailable() -> None:
    chat = OpenAIChat(
        api_key=API_KEY, base_url=f"http://127.0.0.1:{free_port()}/v1", model=MODEL, max_retries=1
    )
    try:
        with pytest.raises(LlmUnavailable, match="connection"):
            await chat.complete(request(), timeout_seconds=5)
    finally:
        await chat.aclose()


@pytest.mark.parametrize(
    "kwargs", [{"api_key": ""}, {"api_key": API_KEY, "max_retries": -1}], ids=["no-key", "retries"]
)
def test_a_config_that_cannot_work_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"api_key|max_retries"):
        OpenAIChat(base_url="http://127.0.0.1:1/v1", model=MODEL, **kwargs)


async def test_one_client_and_one_connection_serve_many_calls(
    upstream: FakeOpenAI, llm: OpenAIChat
) -> None:
    client = llm.client

    for _ in range(3):
        await llm.complete(request(), timeout_seconds=5)

    assert llm.client is client
    assert len({sent.client_port for sent in upstream.requests}) == 1


async def test_injected_http_client_is_used_and_left_open(upstream: FakeOpenAI) -> None:
    async with httpx.AsyncClient(
        headers={"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"}
    ) as http:
        chat = OpenAIChat(
            api_key=API_KEY, base_url=upstream.base_url, model=MODEL, http_client=http
        )
        await chat.complete(request(), timeout_seconds=5)
        await chat.aclose()

        assert not http.is_closed
        assert upstream.requests[0].headers["traceparent"].startswith("00-abab")


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "0.25"}, 0.25),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": "-3"}, 0.0),
        ({"retry-after": "inf"}, float("inf")),
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


# -- the prompt estimate -----------------------------------------------------------------------

TEXTS = {
    "ja": "東京の今日の天気と、明日の運勢を教えてください。" * 20,
    "en": "What's the weather like in Tokyo today, and what about my fortune? " * 20,
    "ko": "오늘 서울 날씨는 어때요? 그리고 내 운세도 알려 줘요. " * 20,
}


@pytest.mark.parametrize("lang", list(TEXTS))
def test_prompt_estimate_is_at_least_half_the_characters(lang: str) -> None:
    text = TEXTS[lang]

    estimate = estimate_prompt_tokens(request([UserMessage(text)], tools=[]))

    assert estimate >= len(text) / 2


def test_prompt_estimate_grows_with_messages_and_tools() -> None:
    call = ToolCallRequest(id="call_1", name="get_weather", arguments='{"place":"東京"}')
    conversations: list[list[Message]] = [
        [SystemMessage(SYSTEM)],
        [SystemMessage(SYSTEM), UserMessage(QUESTION)],
        [SystemMessage(SYSTEM), UserMessage(QUESTION), AssistantMessage("", (call,))],
        [
            SystemMessage(SYSTEM),
            UserMessage(QUESTION),
            AssistantMessage("", (call,)),
            ToolResultMessage("call_1", {"description": "晴れ" * 100}),
        ],
    ]
    estimates = [estimate_prompt_tokens(request(c, tools=[])) for c in conversations]
    assert estimates == sorted(set(estimates))  # strictly growing
    # A long tool result counts at its length.
    assert estimates[3] - estimates[2] >= 100

    one_tool = estimate_prompt_tokens(request(conversations[1], tools=TOOLS[:1]))
    all_tools = estimate_prompt_tokens(request(conversations[1], tools=TOOLS))
    assert estimates[1] < one_tool < all_tools
    # Each tool's schema (its description alone is a sentence or more) is counted.
    described = sum(len(spec.description) for spec in TOOLS)
    assert all_tools - estimates[1] >= described / 2


def test_prompt_estimate_is_cheap() -> None:
    conversation = [SystemMessage(SYSTEM), *(UserMessage(TEXTS["ja"]) for _ in range(40))]
    started = time.perf_counter()
    for _ in range(100):
        estimate_prompt_tokens(request(conversation))
    assert (time.perf_counter() - started) / 100 < 0.005


# -- the fake itself ---------------------------------------------------------------------------


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


# -- streaming -----------------------------------------------------------------------------------


class Heard:
    """An `on_text` that keeps what it was given, and can stop the stream after `stop_after`."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.pieces: list[str] = []
        self._stop_after = stop_after

    async def __call__(self, piece: str) -> None:
        self.pieces.append(piece)
        if self._stop_after is not None and len(self.pieces) >= self._stop_after:
            raise StopStream


async def test_a_stream_hands_out_its_text_as_it_comes_and_reports_usage(
    upstream: FakeOpenAI, llm: OpenAIChat
) -> None:
    upstream.enqueue(Reply(content="こんにちは。元気だにゃん。", stream_piece_chars=3))
    heard = Heard()
    reply = await llm.stream(request(), timeout_seconds=5, on_text=heard)
    assert reply.content == "こんにちは。元気だにゃん。"
    assert heard.pieces == ["こんに", "ちは。", "元気だ", "にゃん", "。"]
    assert (reply.prompt_tokens, reply.completion_tokens) == (11, 7)
    assert reply.usage_reported
    assert not reply.stopped
    body = upstream.requests[0].body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == MAX_TOKENS


async def test_a_streamed_tool_call_is_put_together_from_its_pieces(
    upstream: FakeOpenAI, llm: OpenAIChat
) -> None:
    upstream.enqueue(
        Reply(
            tool_calls=[
                {"id": "c1", "name": "get_weather", "arguments": {"place": "大阪"}},
                {"id": "c1", "name": "calculate", "arguments": {"expression": "6*7"}},
            ],
            stream_piece_chars=2,
        )
    )
    reply = await llm.stream(request(), timeout_seconds=5, on_text=Heard())
    assert [c.name for c in reply.tool_calls] == ["get_weather", "calculate"]
    assert json.loads(reply.tool_calls[0].arguments) == {"place": "大阪"}
    assert json.loads(reply.tool_calls[1].arguments) == {"expression": "6*7"}
    assert len({c.id for c in reply.tool_calls}) == 2  # a repeated id is made unique
    assert reply.content == ""


async def test_a_stream_stopped_by_its_listener_ends_at_once_without_usage(
    upstream: FakeOpenAI, llm: OpenAIChat
) -> None:
    upstream.enqueue(Reply(content="long " * 200, stream_piece_chars=5))
    heard = Heard(stop_after=2)
    reply = await llm.stream(request(), timeout_seconds=5, on_text=heard)
    assert reply.stopped
    assert reply.content == "long long "
    assert not reply.usage_reported
    assert reply.tool_calls == []


async def test_a_stream_is_retried_only_before_its_first_chunk(
    upstream: FakeOpenAI, llm: OpenAIChat, quick_backoff: None
) -> None:
    upstream.enqueue(Reply.error(503), Reply(content="二回目だにゃん"))
    heard = Heard()
    reply = await llm.stream(request(), timeout_seconds=5, on_text=heard)
    assert reply.content == "二回目だにゃん"
    assert "".join(heard.pieces) == "二回目だにゃん"
    assert len(upstream.requests) == 2


async def test_a_stream_that_breaks_off_before_any_text_is_asked_again(
    upstream: FakeOpenAI, llm: OpenAIChat
) -> None:
    upstream.enqueue(
        Reply(content="消えたにゃん", stream_break_after_chunks=0), Reply(content="二回目だにゃん")
    )
    heard = Heard()
    reply = await llm.stream(request(), timeout_seconds=5, on_text=heard)
    assert reply.content == "二回目だにゃん"
    assert "".join(heard.pieces) == "二回目だにゃん"  # nothing of the broken one was said
    assert len(upstream.requests) == 2


async def test_a_stream_that_breaks_off_after_its_first_words_is_unavailable(
    upstream: FakeOpenAI, llm: OpenAIChat
) -> None:
    # Said words cannot be taken back, so no second request: the turn goes on from the error.
    upstream.enqueue(
        Reply(content="途中までだにゃん", stream_piece_chars=2, stream_break_after_chunks=3),
        Reply(content="二回目だにゃん"),
    )
    heard = Heard()
    with pytest.raises(LlmUnavailable, match="broke off after its first words"):
        await llm.stream(request(), timeout_seconds=5, on_text=heard)
    assert heard.pieces
    assert "途中までだにゃん".startswith("".join(heard.pieces))
    assert len(upstream.requests) == 1


async def test_a_stream_that_stalls_times_out_within_its_budget(
    upstream: FakeOpenAI, llm: OpenAIChat
) -> None:
    upstream.enqueue(
        Reply(content="ゆっくり" * 50, stream_piece_chars=1, stream_piece_delay_seconds=0.2)
    )
    heard = Heard()
    started = time.monotonic()
    with pytest.raises(LlmTimeout):
        await llm.stream(request(), timeout_seconds=0.5, on_text=heard)
    assert time.monotonic() - started < 2.0
    assert 0 < len(heard.pieces) < 10
