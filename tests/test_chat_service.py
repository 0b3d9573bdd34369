"""ChatService as a real process: the turn through the real `openai` client against a fake LLM,
tools and emotion over real gRPC, a real Redis where state must be shared or survive."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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
            "CHAT_API_TOKENS": TOKEN,
            "USER_RATE_PER_MINUTE": "6000",
            "USER_BURST": "100",
            "BREAKER_FAIL_MAX": "3",
            "BREAKER_RESET_SECONDS": "1",
            "DEFAULT_TIMEZONE": "Asia/Tokyo",
            "LLM_PRICES": '{"fake-model": [1.0, 2.0]}',
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


@pytest.fixture
def suite_factory() -> Iterator[Any]:
    started: list[Suite] = []
    contexts: list[Any] = []

    def make(*, llm: bool = True, env: dict[str, str] | None = None) -> Suite:
        fake = None
        if llm:
            llm_context = fake_openai()
            fake = llm_context.__enter__()
            contexts.append(llm_context)
        tools_context, emotion_context = tools_double(), emotion_double()
        contexts.extend([tools_context, emotion_context])
        suite = Suite(fake, tools_context.__enter__(), emotion_context.__enter__(), env or {})
        started.append(suite)
        return suite.start()

    yield make
    for suite in started:
        suite.process.__exit__(None, None, None)
    for context in reversed(contexts):
        context.__exit__(None, None, None)


def code_of(call: Any) -> tuple[grpc.StatusCode, str, Any]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details() or "", info.value


# -- the local planner (embedded default) ------------------------------------------------------


def test_local_planner_answers_three_intents_with_three_concurrent_tool_calls(
    suite_factory: Any,
) -> None:
    suite = suite_factory(llm=False)
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
    assert weather.place == "Tokyo"
    assert weather.language == "ja"


# -- concurrency of tools ----------------------------------------------------------------------


def test_tools_of_one_llm_response_run_concurrently(suite_factory: Any) -> None:
    suite = suite_factory()
    suite.tools.delays = {"GetTime": 1.2, "GetWeather": 3.5, "Calculate": 0.8}
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
    durations = [c.duration.ToNanoseconds() / 1e9 for c in reply.tool_calls]
    assert max(durations) >= 3.4
    # One after another the tools alone would take 5.5 s.
    assert elapsed < 5.0
    assert reply.reply == "東京は9時半、大阪は晴れ、答えは42だにゃん"
    assert reply.usage.prompt_tokens == 150
    assert reply.usage.completion_tokens == 30
    assert reply.usage.cost_usd > 0


# -- the LLM failing ---------------------------------------------------------------------------


def test_llm_errors_fall_back_to_the_local_planner(suite_factory: Any) -> None:
    suite = suite_factory(env={"LLM_MAX_RETRIES": "1"})
    suite.llm.default = Reply.error(500)
    reply = suite.chat("u-500", "こんにちは！今何時？", timeout=10)
    assert "llm" in reply.degraded
    assert reply.usage.model == "local-planner"
    assert [c.name for c in reply.tool_calls] == ["get_time"]
    assert reply.reply.rstrip("。！!？?").endswith("にゃん")


def test_hanging_llm_is_answered_by_the_planner_within_the_deadline(suite_factory: Any) -> None:
    suite = suite_factory()
    suite.llm.default = Reply.hang(60)
    started = time.monotonic()
    reply = suite.chat("u-hang", "what time is it?", timeout=4.0)
    assert time.monotonic() - started < 4.0
    assert "llm" in reply.degraded
    assert reply.language == "en"
    assert reply.reply.rstrip("!.?").endswith("nyan")


def test_an_llm_calling_the_same_tool_forever_is_capped_and_answered(suite_factory: Any) -> None:
    suite = suite_factory(env={"MAX_TOOL_ROUNDS": "3"})
    suite.llm.responder = lambda request: tools(
        tool_call("calculate", {"expression": "1+1"}, f"c{len(request['messages'])}")
    )
    reply = suite.chat("u-loop", "1+1は？", timeout=10)
    assert len(suite.tools.called("Calculate")) == 1  # repeats answered from the first result
    statuses = [c.status for c in reply.tool_calls]
    assert statuses[0] == chat_pb2.TOOL_CALL_STATUS_OK
    assert set(statuses[1:]) == {chat_pb2.TOOL_CALL_STATUS_DEDUPLICATED}
    assert len(suite.llm.requests) <= 4 + 1  # three tool rounds, a last call, a persona retry
    assert reply.reply.rstrip("。！!？?").endswith("にゃん")


# -- the persona guard -------------------------------------------------------------------------


def test_persona_violations_get_one_corrective_retry(suite_factory: Any) -> None:
    suite = suite_factory()
    suite.llm.enqueue(text("It is sunny today."), text("今日は晴れだにゃん"))
    reply = suite.chat("u-persona-retry", "今日はどんな日？")
    assert reply.reply == "今日は晴れだにゃん"
    retry_request = suite.llm.requests[1].messages
    assert "Japanese" in retry_request[-1]["content"]


@pytest.mark.parametrize(
    "bad_reply",
    ["It is sunny today, nyan.", "今日は晴れです", "長い" * 400 + "にゃん"],
    ids=["english-to-japanese", "missing-ending", "too-long"],
)
def test_persona_violations_are_repaired_when_the_retry_fails_too(
    suite_factory: Any, bad_reply: str
) -> None:
    suite = suite_factory(env={"MAX_REPLY_CHARS": "400"})
    suite.llm.responder = lambda request: text(bad_reply)
    reply = suite.chat("u-persona-repair", "今日はどんな日？")
    assert reply.reply.rstrip("。！!？?…").endswith("にゃん")
    assert len(reply.reply) <= 400
    assert any("\u3040" <= ch <= "\u30ff" for ch in reply.reply)


# -- tools failing -----------------------------------------------------------------------------


def test_tools_down_fall_back_open_the_breaker_and_recover(suite_factory: Any) -> None:
    suite = suite_factory(llm=False, env={"BREAKER_FAIL_MAX": "2", "BREAKER_RESET_SECONDS": "2"})
    suite.tools.stop()
    first = [suite.chat("u-breaker", "12*3は？").tool_calls[0].status for _ in range(2)]
    assert first == [chat_pb2.TOOL_CALL_STATUS_FALLBACK] * 2
    suite.tools.restart()
    # The circuit is open: calls do not reach the service even though it is back.
    third = suite.chat("u-breaker", "12*3は？")
    assert third.tool_calls[0].status == chat_pb2.TOOL_CALL_STATUS_CIRCUIT_OPEN
    assert "tools" in third.degraded
    assert "できない" in third.reply  # the failure is told, not hidden
    assert suite.tools.called("Calculate") == []
    deadline = time.monotonic() + 10
    status = third.tool_calls[0].status
    while status != chat_pb2.TOOL_CALL_STATUS_OK and time.monotonic() < deadline:
        time.sleep(0.2)
        status = suite.chat("u-breaker", "12*3は？").tool_calls[0].status
    assert status == chat_pb2.TOOL_CALL_STATUS_OK
    assert not suite.chat("u-breaker", "12*3は？").degraded


def test_emotion_failure_gives_neutral_and_degraded(suite_factory: Any) -> None:
    suite = suite_factory(llm=False)
    suite.emotion.failures = {"Analyze": grpc.StatusCode.INTERNAL}
    reply = suite.chat("u-emotion", "hello!")
    assert reply.emotion.dominant == "neutral"
    assert "emotion" in reply.degraded


# -- one user's turns, sessions ----------------------------------------------------------------


def test_twenty_concurrent_turns_of_one_user_are_serialized_and_all_kept(
    suite_factory: Any,
) -> None:
    suite = suite_factory(env={"HISTORY_MAX_TURNS": "50"})
    suite.llm.responder = lambda request: text(
        f"{request['messages'][-1]['content']}を受け取ったにゃん"
    )

    def chat(i: int) -> Any:
        return suite.chat("u-many", f"msg-{i}", timeout=30, language="ja")

    with ThreadPoolExecutor(max_workers=20) as pool:
        replies = list(pool.map(chat, range(20)))
    assert sorted(r.reply for r in replies) == sorted(
        f"msg-{i}を受け取ったにゃん" for i in range(20)
    )
    suite.chat("u-many", "last", timeout=10, language="ja")
    history = suite.llm.requests[-1].messages[1:-1]
    assert len(history) == 40
    seen = set()
    for user, assistant in zip(history[::2], history[1::2], strict=True):
        assert user["role"] == "user"
        assert assistant["role"] == "assistant"
        assert assistant["content"] == f"{user['content']}を受け取ったにゃん"  # no interleaving
        seen.add(user["content"])
    assert seen == {f"msg-{i}" for i in range(20)}
    # Each turn saw the history of all the turns before it: the lock serialized them.
    lengths = sorted(len(r.messages) for r in suite.llm.requests[:20])
    assert lengths == [2 + 2 * i for i in range(20)]


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


def test_a_retried_request_id_gets_the_first_answer(suite_factory: Any) -> None:
    suite = suite_factory()
    suite.llm.enqueue(text("一回目だにゃん"), text("二回目だにゃん"))
    first = suite.chat("u-idem", "hi", request_id="req-1")
    again = suite.chat("u-idem", "hi", request_id="req-1")
    assert first.reply == again.reply == "一回目だにゃん"
    assert len(suite.llm.requests) == 1
    assert suite.usage("u-idem").user_today.turns == 1


# -- limits, budgets, auth, validation ---------------------------------------------------------


def test_rate_limit_refuses_with_the_retry_delay(suite_factory: Any) -> None:
    suite = suite_factory(llm=False, env={"USER_RATE_PER_MINUTE": "6", "USER_BURST": "2"})
    suite.chat("u-rate", "hello")
    suite.chat("u-rate", "hello")
    code, details, error = code_of(lambda: suite.chat("u-rate", "hello"))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "retry after" in details
    trailing = dict(error.trailing_metadata())
    assert 5000 <= int(trailing["retry-after-ms"]) <= 10_000
    status = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert 5 <= info.retry_delay.ToNanoseconds() / 1e9 <= 10
    assert suite.chat("u-rate-other", "hello").reply  # other users are not limited
    assert suite.usage("u-rate").user_today.turns == 2


def test_spent_budget_is_answered_by_the_planner_not_refused(suite_factory: Any) -> None:
    suite = suite_factory(
        env={"USER_DAILY_BUDGET_USD": "0.0001", "LLM_PRICES": '{"fake-model": [1.0, 1.0]}'}
    )
    suite.llm.responder = lambda request: text("はいにゃん", 100, 20)  # 120 tokens: $0.00012
    assert suite.chat("u-budget", "こんにちは").usage.model == "fake-model"
    second = suite.chat("u-budget", "こんにちは")
    assert "budget" in second.degraded
    assert second.usage.model == "local-planner"
    assert len(suite.llm.requests) == 1
    usage = suite.usage("u-budget")
    assert usage.user_today.turns == 2
    assert usage.user_today.cost_usd == pytest.approx(0.00012)


def test_authentication(suite_factory: Any) -> None:
    suite = suite_factory(llm=False)
    request = chat_pb2.ChatRequest(user_id="u-auth", message="hello")
    for metadata in [(), (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)]:
        code, _, _ = code_of(lambda m=metadata: suite.stub.Chat(request, metadata=m, timeout=5))
        assert code == grpc.StatusCode.UNAUTHENTICATED
    assert suite.stub.Chat(request, metadata=AUTH, timeout=5).reply
    assert suite.process.health(SERVICE) == 1  # probes need no token


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"user_id": "", "message": "hi"}, "user_id"),
        ({"user_id": "x" * 129, "message": "hi"}, "user_id"),
        ({"user_id": "bad\x07id", "message": "hi"}, "user_id"),
        ({"user_id": "evil\u202eid", "message": "hi"}, "user_id"),
        ({"user_id": "u", "message": "   "}, "message"),
        ({"user_id": "u", "message": "a" * 4001}, "message"),
        ({"user_id": "u", "message": "nul\x00byte"}, "message"),
        ({"user_id": "u", "message": "flip \u202e this"}, "message"),
        ({"user_id": "u", "message": "hi", "language": "not a tag!"}, "language"),
        ({"user_id": "u", "message": "hi", "timezone": "Mars/Olympus"}, "timezone"),
        ({"user_id": "u", "message": "hi", "request_id": "r" * 200}, "request_id"),
    ],
)
def test_every_bad_field_is_named_and_nothing_is_stored(
    suite_factory: Any, fields: dict[str, str], named: str
) -> None:
    suite = suite_factory(llm=False)
    request = chat_pb2.ChatRequest(**fields)
    code, details, _ = code_of(lambda: suite.stub.Chat(request, metadata=AUTH, timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(named)
    assert suite.usage("u").global_today.turns == 0


def test_invalid_utf8_is_invalid_argument(suite_factory: Any) -> None:
    suite = suite_factory(llm=False)
    assert suite.process.channel is not None
    raw = suite.process.channel.unary_unary(
        f"/{SERVICE}/Chat", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    code, details, _ = code_of(lambda: raw(b"\x0a\x01u\x12\x02\xc3\x28", metadata=AUTH, timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "UTF-8" in details


def test_delete_user_data_and_usage(suite_factory: Any) -> None:
    suite = suite_factory()
    suite.llm.responder = lambda request: text("はいにゃん", 1000, 100)
    suite.chat("u-del", "はじめまして")
    suite.chat("u-keep", "はじめまして")
    usage = suite.usage("u-del")
    assert usage.user_today.turns == 1
    assert usage.user_month.prompt_tokens == 1000
    assert usage.global_today.turns == 2
    erased = suite.stub.DeleteUserData(
        chat_pb2.DeleteUserDataRequest(user_id="u-del"), metadata=AUTH, timeout=5
    )
    assert erased.erased_records > 0
    assert suite.usage("u-del").user_today.turns == 0
    assert suite.usage("u-del").user_month.cost_usd == 0
    assert suite.usage("u-keep").user_today.turns == 1
    suite.chat("u-del", "もう一度")
    assert suite.llm.requests[-1].messages[1:] == [{"role": "user", "content": "もう一度"}]


# -- streaming ---------------------------------------------------------------------------------


def test_stream_chat_emits_tool_events_text_and_a_final_summary(suite_factory: Any) -> None:
    suite = suite_factory(llm=False)
    request = chat_pb2.StreamChatRequest(user_id="u-stream", message="今何時？それと運勢！")
    events = list(suite.stub.StreamChat(request, metadata=AUTH, timeout=10))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[:4] == [
        "tool_call_started",
        "tool_call_started",
        "tool_call_finished",
        "tool_call_finished",
    ]
    assert "text_delta" in kinds
    assert kinds[-1] == "final"
    text_joined = "".join(e.text_delta for e in events if e.WhichOneof("event") == "text_delta")
    assert text_joined.replace(" ", "") == events[-1].final.reply.replace(" ", "")
    assert "tts" not in events[-1].final.degraded


def test_timezone_from_request_then_stored_preference_then_default(suite_factory: Any) -> None:
    suite = suite_factory(llm=False)
    suite.chat("u-tz", "今何時？")
    suite.chat("u-tz", "今何時？", timezone="America/New_York")
    suite.chat("u-tz", "今何時？")
    zones = [request.timezone for request in suite.tools.called("GetTime")]
    assert zones == ["Asia/Tokyo", "America/New_York", "America/New_York"]


def test_metrics_show_turns_tools_tokens_breakers_and_the_persona_guard(
    suite_factory: Any,
) -> None:
    suite = suite_factory()
    suite.llm.enqueue(
        tools(tool_call("calculate", {"expression": "6*7"}, "c1")), text("答えは42だにゃん")
    )
    suite.chat("u-metrics", "6*7は？")
    url = f"http://127.0.0.1:{suite.process.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        page = response.read().decode()
    for line in (
        'chatagent_turns_total{outcome="ok"} 1.0',
        'chatagent_tool_calls_total{status="ok",tool="calculate"} 1.0',
        'chatagent_llm_tokens_total{kind="prompt",model="fake-model"} 150.0',
        'chatagent_breaker_state{dependency="tools"} 0.0',
        'chatagent_persona_guard_total{outcome="ok"} 1.0',
        'chatagent_tool_call_seconds_count{tool="calculate"} 1.0',
    ):
        assert line in page


def test_cli_chats_and_shows_tools_emotion_usage_and_errors(suite_factory: Any) -> None:
    suite = suite_factory(llm=False)
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


def test_budget_is_checked_before_each_llm_call_within_a_turn(suite_factory: Any) -> None:
    suite = suite_factory(
        env={"USER_DAILY_BUDGET_USD": "0.0001", "LLM_PRICES": '{"fake-model": [1.0, 1.0]}'}
    )
    first = tools(tool_call("calculate", {"expression": "6*7"}, "c1"))
    first.prompt_tokens, first.completion_tokens = 150, 10  # $0.00016: over the budget
    suite.llm.enqueue(first, text("答えは42だにゃん"))
    reply = suite.chat("u-midturn", "6*7は？")
    assert len(suite.llm.requests) == 1
    assert "budget" in reply.degraded
    assert reply.usage.cost_usd == pytest.approx(0.00016)
    assert "42" in reply.reply


def test_unknown_tools_and_malformed_arguments_become_error_results(suite_factory: Any) -> None:
    suite = suite_factory()
    suite.llm.enqueue(
        tools(
            {"id": "c1", "name": "get_horoscope", "arguments": "{}"},
            {"id": "c2", "name": "calculate", "arguments": "{not json"},
            {"id": "c3", "name": "calculate", "arguments": '{"expression": 42}'},
            {"id": "c4", "name": "get_weather", "arguments": "{}"},
        ),
        text("ごめん、うまくいかなかったにゃん"),
    )
    reply = suite.chat("u-rejected", "占って")
    assert [c.status for c in reply.tool_calls] == [chat_pb2.TOOL_CALL_STATUS_REJECTED] * 4
    results = [
        json.loads(m["content"]) for m in suite.llm.requests[1].messages if m["role"] == "tool"
    ]
    assert "unknown tool 'get_horoscope'" in results[0]["error"]
    assert "not valid JSON" in results[1]["error"]
    assert "calculate" in results[2]["error"]
    assert "place" in results[3]["error"]
    assert suite.tools.calls == []
    assert reply.reply == "ごめん、うまくいかなかったにゃん"


def test_a_turn_that_cannot_finish_in_time_stores_nothing(suite_factory: Any) -> None:
    suite = suite_factory(llm=False)
    suite.tools.delays = {"Calculate": 3.0}
    with ThreadPoolExecutor(max_workers=1) as pool:
        slow = pool.submit(suite.chat, "u-late", "12*3は？", 10)
        while not suite.tools.called("Calculate"):
            time.sleep(0.02)
        # The user's first turn holds their lock past this one's deadline.
        code, _, _ = code_of(lambda: suite.chat("u-late", "こんにちは", timeout=1.0))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert slow.result().tool_calls[0].status == chat_pb2.TOOL_CALL_STATUS_OK
    assert suite.usage("u-late").user_today.turns == 1
