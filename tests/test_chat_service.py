"""ChatService as a real process, for what only processes show: the wiring of the servicer, the
real `openai` client against a fake LLM, tools and emotion over real gRPC between processes,
status codes and metadata on the wire, a real Redis where state must be shared or survive,
metrics, the CLI. The turn's logic is tested in this process by tests/test_turn.py."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from chatagent.v1 import chat_pb2, chat_pb2_grpc
from tests.support.doubles import Double, emotion_double, tools_double
from tests.support.fake_openai import FakeOpenAI, Reply, fake_openai
from tests.support.process import ROOT, ServiceProcess

SERVICE = "chatagent.v1.ChatService"
TOKEN = "test-token-1"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


def tool_call(name: str, arguments: dict[str, Any], call_id: str) -> dict[str, Any]:
    return {"id": call_id, "name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}


def text(content: str, prompt_tokens: int = 100, completion_tokens: int = 20) -> Reply:
    return Reply(content=content, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)


def tools(*calls: dict[str, Any]) -> Reply:
    return Reply(tool_calls=list(calls), prompt_tokens=50, completion_tokens=10)


class Suite:
    """An orchestrator process wired to a fake LLM and doubles of the other services."""

    def __init__(
        self, llm: FakeOpenAI | None, tools: Double, emotion: Double, env: dict[str, str]
    ) -> None:
        self.llm, self.tools, self.emotion = llm, tools, emotion
        base = {
            "TOOLS_ADDR": tools.address,
            "EMOTION_ADDR": emotion.address,
            "SPEECH_ADDR": "127.0.0.1:1",
            "CHAT_API_TOKENS": f"backend:{TOKEN}",
            "USER_RATE_PER_MINUTE": "6000",
            "USER_BURST": "100",
            "BREAKER_FAIL_MAX": "3",
            "BREAKER_RESET_SECONDS": "1",
            "DEFAULT_TIMEZONE": "Asia/Tokyo",
            "LLM_PRICES": '{"fake-model": [1.0, 2.0]}',
            "LLM_MODEL": "fake-model",
        }
        if llm is not None:
            base |= {"OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "sk-test"}
        self.process = ServiceProcess("orchestrator", base | env)

    def start(self) -> Suite:
        self.process.start(wait_for=SERVICE)
        return self

    @property
    def stub(self) -> chat_pb2_grpc.ChatServiceStub:
        assert self.process.channel is not None
        return chat_pb2_grpc.ChatServiceStub(self.process.channel)

    def chat(self, user_id: str, message: str, timeout: float = 10, **fields: Any) -> Any:
        request = chat_pb2.ChatRequest(user_id=user_id, message=message, **fields)
        return self.stub.Chat(request, metadata=AUTH, timeout=timeout)

    def usage(self, user_id: str) -> chat_pb2.GetUsageResponse:
        return self.stub.GetUsage(
            chat_pb2.GetUsageRequest(user_id=user_id), metadata=AUTH, timeout=5
        )


@contextmanager
def running(*, llm: bool, env: dict[str, str]) -> Iterator[Suite]:
    """An orchestrator process and its doubles (and a fake LLM), stopped afterwards."""
    with ExitStack() as stack:
        fake = stack.enter_context(fake_openai()) if llm else None
        tools, emotion = stack.enter_context(tools_double()), stack.enter_context(emotion_double())
        suite = Suite(fake, tools, emotion, env)
        stack.callback(suite.process.__exit__, None, None, None)
        yield suite.start()


@pytest.fixture
def suite_factory() -> Iterator[Any]:
    """Suites of a test's own, for tests that need settings or a process of their own."""
    with ExitStack() as stack:

        def make(*, llm: bool = True, env: dict[str, str] | None = None) -> Suite:
            return stack.enter_context(running(llm=llm, env=env or {}))

        yield make


# Processes shared by the tests of this module that need no settings of their own (starting one
# costs seconds); each test gets the doubles and the fake LLM as new, and its own user ids.


@pytest.fixture(scope="module")
def _planner_process() -> Iterator[Suite]:
    env = {"USER_RATE_PER_MINUTE": "6", "USER_BURST": "2", "DEFAULT_TIMEZONE": "UTC"}
    with running(llm=False, env=env) as suite:
        yield suite


@pytest.fixture
def planner(_planner_process: Suite) -> Suite:
    """The local planner (no LLM); users may have two turns at once, then one each 10 s."""
    _planner_process.tools.reset()
    _planner_process.emotion.reset()
    return _planner_process


@pytest.fixture(scope="module")
def _llm_process() -> Iterator[Suite]:
    with running(llm=True, env={}) as suite:
        yield suite


@pytest.fixture
def with_llm(_llm_process: Suite) -> Suite:
    """The real openai client against the fake LLM."""
    assert _llm_process.llm is not None
    _llm_process.llm.reset()
    _llm_process.tools.reset()
    _llm_process.emotion.reset()
    return _llm_process


def code_of(call: Any) -> tuple[grpc.StatusCode, str, Any]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details() or "", info.value


# -- the local planner (embedded default) ------------------------------------------------------


def test_local_planner_answers_three_intents_with_three_concurrent_tool_calls(
    planner: Suite,
) -> None:
    suite = planner
    reply = suite.chat("u-planner", "今何時で、天気はどうで、ついでに運勢も教えて")
    assert [c.name for c in reply.tool_calls] == ["get_time", "get_weather", "get_fortune"]
    assert all(c.status == chat_pb2.TOOL_CALL_STATUS_OK for c in reply.tool_calls)
    assert reply.language == "ja"
    assert reply.reply.rstrip("。！!？?").endswith("にゃん")
    assert reply.usage.model == "local-planner"
    assert list(reply.degraded) == []
    assert reply.emotion.dominant == "joy"
    assert len(reply.trace_id) == 32
    weather = suite.tools.called("GetWeather")[0]
    assert weather.place == "東京"  # DEFAULT_PLACE: the message names none, UTC names no city
    assert weather.language == "ja"


# -- the real openai client against a fake LLM -------------------------------------------------


def test_tools_of_one_llm_response_run_concurrently_and_every_call_is_bounded(
    with_llm: Suite,
) -> None:
    suite = with_llm
    suite.tools.delays = {"GetTime": 0.4, "GetWeather": 1.2, "Calculate": 0.3}
    suite.llm.enqueue(
        tools(
            tool_call("get_time", {"place": "東京"}, "c1"),
            tool_call("get_weather", {"place": "大阪"}, "c2"),
            tool_call("calculate", {"expression": "6*7"}, "c3"),
        ),
        text("東京は9時半、大阪は晴れ、答えは42だにゃん"),
    )
    started = time.monotonic()
    reply = suite.chat("u-concurrent", "時間と天気と計算", timeout=15)
    elapsed = time.monotonic() - started
    assert elapsed < 1.85  # one after another the tools alone would take 1.9 s
    assert reply.reply == "東京は9時半、大阪は晴れ、答えは42だにゃん"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (150, 30)
    assert reply.usage.cost_usd == pytest.approx((150 * 1.0 + 30 * 2.0) / 1e6)
    bodies = [request.body for request in suite.llm.requests]
    assert [body["max_tokens"] for body in bodies] == [800, 800]  # 2 × MAX_REPLY_CHARS
    assert len(bodies[0]["tools"]) == 4
    assert "tools" in bodies[1]


def test_a_cancelled_turn_cancels_its_tool_calls_and_its_cost_is_counted(
    with_llm: Suite,
) -> None:
    suite = with_llm
    suite.tools.delays = {"Calculate": 30}
    expensive = tools(tool_call("calculate", {"expression": "6*7"}, "c1"))
    expensive.prompt_tokens, expensive.completion_tokens = 200_000, 400_000
    suite.llm.enqueue(expensive)
    request = chat_pb2.ChatRequest(user_id="u-cancel", message="6*7は？")
    future = suite.stub.Chat.future(request, metadata=AUTH, timeout=20)
    deadline = time.monotonic() + 10
    while not suite.tools.called("Calculate") and time.monotonic() < deadline:
        time.sleep(0.01)
    future.cancel()
    while not suite.tools.cancelled and time.monotonic() < deadline:
        time.sleep(0.01)
    assert suite.tools.cancelled == ["Calculate"]  # the tools service saw the call end
    while suite.usage("u-cancel").user_today.cost_usd == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    usage = suite.usage("u-cancel")
    assert usage.user_today.cost_usd == pytest.approx(1.0)  # $0.2 prompt + $0.8 completion
    assert usage.user_today.turns == 0


def test_history_survives_an_orchestrator_restart_with_redis(
    suite_factory: Any, redis_url: str
) -> None:
    suite = suite_factory(env={"REDIS_URL": redis_url})
    suite.llm.responder = lambda request: text("覚えたにゃん")
    suite.chat("u-restart", "私の猫の名前はミケです")
    assert suite.process.stop() == 0
    suite.process.start(wait_for=SERVICE)
    suite.chat("u-restart", "猫の名前は？")
    messages = suite.llm.requests[-1].messages
    assert messages[1] == {"role": "user", "content": "私の猫の名前はミケです"}
    assert messages[2]["content"] == "覚えたにゃん"


def test_an_erase_during_a_slow_turn_aborts_it_and_leaves_nothing_with_redis(
    suite_factory: Any, redis_url: str
) -> None:
    suite = suite_factory(env={"REDIS_URL": redis_url})
    suite.tools.delays = {"Calculate": 1.0}
    suite.llm.enqueue(
        tools(tool_call("calculate", {"expression": "6*7"}, "c1")), text("42だにゃん", 1000, 100)
    )
    with ThreadPoolExecutor(max_workers=1) as pool:
        turn = pool.submit(
            code_of, lambda: suite.chat("u-gdpr", "6*7は？", request_id="r1", timezone="UTC")
        )
        deadline = time.monotonic() + 10
        while not suite.tools.called("Calculate") and time.monotonic() < deadline:
            time.sleep(0.01)
        erased = suite.stub.DeleteUserData(
            chat_pb2.DeleteUserDataRequest(user_id="u-gdpr"), metadata=AUTH, timeout=5
        )
        code, details, _ = turn.result()
    assert code == grpc.StatusCode.ABORTED
    assert "erased" in details
    assert erased.erased_records >= 0
    assert suite.usage("u-gdpr").user_today.cost_usd == 0
    suite.llm.responder = lambda request: text("はじめましてにゃん")
    again = suite.chat("u-gdpr", "6*7は？", request_id="r1")  # not a replay: nothing was kept
    assert again.reply == "はじめましてにゃん"
    assert suite.llm.requests[-1].messages[1:] == [{"role": "user", "content": "6*7は？"}]


# -- statuses and metadata on the wire ---------------------------------------------------------


def test_rate_limit_refuses_with_the_retry_delay(planner: Suite) -> None:
    suite = planner
    suite.chat("u-rate", "hello")
    suite.chat("u-rate", "hello", request_id="once")
    code, details, error = code_of(lambda: suite.chat("u-rate", "hello"))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "retry after" in details
    trailing = dict(error.trailing_metadata())
    assert 5000 <= int(trailing["retry-after-ms"]) <= 10_000
    status = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert 5 <= info.retry_delay.ToNanoseconds() / 1e9 <= 10
    assert suite.chat("u-rate", "hello", request_id="once").reply  # a replay is not limited
    assert suite.chat("u-rate-other", "hello").reply  # other users are not limited
    assert suite.usage("u-rate").user_today.turns == 2


def test_authentication_with_named_tokens(planner: Suite) -> None:
    suite = planner
    request = chat_pb2.ChatRequest(user_id="u-auth", message="hello")
    for metadata in [(), (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)]:
        code, _, _ = code_of(lambda m=metadata: suite.stub.Chat(request, metadata=m, timeout=5))
        assert code == grpc.StatusCode.UNAUTHENTICATED
    assert suite.stub.Chat(request, metadata=AUTH, timeout=5).reply
    assert suite.process.health(SERVICE) == 1  # probes need no token


@pytest.mark.parametrize("method", ["Chat", "StreamChat"])
def test_undecodable_and_invalid_requests_are_invalid_argument(planner: Suite, method: str) -> None:
    suite = planner
    assert suite.process.channel is not None
    make = (
        suite.process.channel.unary_unary
        if method == "Chat"
        else suite.process.channel.unary_stream
    )
    raw = make(
        f"/{SERVICE}/{method}", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )

    def call(data: bytes) -> Any:
        answer = raw(data, metadata=AUTH, timeout=5)
        return answer if method == "Chat" else list(answer)

    code, details, _ = code_of(lambda: call(b"\x0a\x01u\x12\x02\xc3\x28"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "UTF-8" in details
    user = f"u-invisible-{method}"
    invisible = chat_pb2.ChatRequest(user_id=user, message="\u200b" * 5).SerializeToString()
    code, details, _ = code_of(lambda: call(invisible))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == "message: has no visible text"
    assert suite.usage(user).user_today.turns == 0


# -- streaming, metrics, the CLI ---------------------------------------------------------------


def test_stream_chat_emits_tool_events_text_and_a_final_summary(planner: Suite) -> None:
    suite = planner
    request = chat_pb2.StreamChatRequest(user_id="u-stream", message="今何時？それと運勢！")
    events = list(suite.stub.StreamChat(request, metadata=AUTH, timeout=10))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[:2] == ["tool_call_started", "tool_call_started"]
    assert sorted(kinds[2:4]) == ["tool_call_finished", "tool_call_finished"]
    assert "text_delta" in kinds
    assert kinds[-1] == "final"
    text_joined = "".join(e.text_delta for e in events if e.WhichOneof("event") == "text_delta")
    assert text_joined.replace(" ", "") == events[-1].final.reply.replace(" ", "")
    assert "tts" not in events[-1].final.degraded


def test_metrics_show_turns_tools_tokens_breakers_and_the_persona_guard(
    with_llm: Suite,
) -> None:
    suite = with_llm
    assert suite.llm is not None
    suite.llm.enqueue(
        tools(
            tool_call("calculate", {"expression": "6*7"}, "c1"),
            tool_call("made_up_tool", {}, "c2"),
        ),
        text("答えは42だにゃん"),
    )
    before = suite.process.metrics()
    suite.chat("u-metrics", "6*7は？")
    after = suite.process.metrics()
    for series, grown in (
        ('chatagent_turns_total{outcome="ok"}', 1),
        ('chatagent_tool_calls_total{status="ok",tool="calculate"}', 1),
        ('chatagent_tool_calls_total{status="rejected",tool="unknown"}', 1),
        ('chatagent_llm_tokens_total{kind="prompt",model="fake-model"}', 150),
        ('chatagent_persona_guard_total{outcome="ok"}', 1),
        ('chatagent_tool_call_seconds_count{tool="calculate"}', 1),
    ):
        assert after[series] - before.get(series, 0.0) == grown, series
    assert after['chatagent_breaker_state{dependency="tools.calculate"}'] == 0
    assert not any("made_up_tool" in series for series in after)


def test_cli_chats_and_shows_tools_emotion_usage_and_errors(planner: Suite) -> None:
    suite = planner
    session = subprocess.run(
        [sys.executable, "-m", "services.orchestrator.cli", "--addr", suite.process.address,
         "--user", "u-cli", "--token", TOKEN],
        input="12*3は？\n/usage\n" + "x" * 5000 + "\n/forget\n/usage\n/quit\n",
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert session.returncode == 0, session.stderr
    out = session.stdout
    assert "cat> " in out
    assert "にゃん" in out
    assert 'tool calculate({"expression":"12*3"}) ok' in out
    assert "emotion: joy" in out
    assert "today: 1 turns" in out
    assert "error: INVALID_ARGUMENT: message" in out
    assert "today: 0 turns" in out


def test_stream_chat_streams_the_llms_text_as_it_is_written(with_llm: Suite) -> None:
    suite = with_llm
    assert suite.llm is not None
    five = "こんにちは。今日は晴れだね。散歩にいい日だよ。お水を忘れないで。またねにゃん。"
    suite.llm.enqueue(Reply(content=five, stream_piece_chars=2, stream_piece_delay_seconds=0.05))
    request = chat_pb2.StreamChatRequest(
        user_id="u-live", message="今日はどう？", include_audio=True
    )
    arrivals: list[tuple[str, float]] = []
    for event in suite.stub.StreamChat(request, metadata=AUTH, timeout=20):
        arrivals.append((event.WhichOneof("event") or "", time.monotonic()))
        if event.WhichOneof("event") == "final":
            final = event.final
    sent = [when for kind, when in arrivals if kind == "text_delta"]
    assert len(sent) == 5
    # The text came sentence by sentence over the LLM's ~2 s of writing, not all at its end.
    assert sent[-1] - sent[0] > 0.8
    assert final.reply == five
    assert suite.llm.requests[0].body["stream"] is True
    # No SpeechService runs here: the text is answered, the speech said to have fallen back.
    assert "speech" in final.degraded
