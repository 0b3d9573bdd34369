"""Two orchestrator processes sharing one Redis, as replicas behind a Kubernetes Service: one
user's turns alternating between them are serialized and none is lost, and the rate limits and
budgets are one allowance, not one per replica. Real processes, a real Redis, the real openai
client against a fake LLM that answers slowly enough for turns to overlap."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass

import grpc
import pytest

from chatagent.v1 import chat_pb2, chat_pb2_grpc
from tests.support.doubles import emotion_double, tools_double
from tests.support.fake_openai import FakeOpenAI, Reply, fake_openai
from tests.support.process import ServiceProcess
from tests.support.redis_server import RedisServer
from tests.support.turns import ends_in_nyan

SERVICE = "chatagent.v1.ChatService"
TURNS = 8


@dataclass
class Replicas:
    llm: FakeOpenAI
    stubs: list[chat_pb2_grpc.ChatServiceStub]

    def chat(self, replica: int, user_id: str, message: str) -> chat_pb2.ChatResponse:
        return self.stubs[replica].Chat(
            chat_pb2.ChatRequest(user_id=user_id, message=message), timeout=30
        )


@pytest.fixture(scope="module")
def replicas() -> Iterator[Replicas]:
    with ExitStack() as stack:
        redis = stack.enter_context(RedisServer())
        llm = stack.enter_context(fake_openai())
        tools = stack.enter_context(tools_double())
        emotion = stack.enter_context(emotion_double())
        env = {
            "REDIS_URL": redis.url,
            "TOOLS_ADDR": tools.address,
            "EMOTION_ADDR": emotion.address,
            "SPEECH_ADDR": "127.0.0.1:1",
            "OPENAI_BASE_URL": llm.base_url,
            "OPENAI_API_KEY": "sk-test",
            "LLM_MODEL": "fake-model",
            # 0.001 USD a token, so a turn's cost is plain to see.
            "LLM_PRICES": '{"fake-model": [1000.0, 1000.0]}',
            "LLM_MAX_TOKENS": "256",
            "USER_DAILY_BUDGET_USD": "5.0",
            # TURNS turns at once, then one a minute: for a user, not for each replica.
            "USER_BURST": str(TURNS),
            "USER_RATE_PER_MINUTE": "1",
        }
        processes = [ServiceProcess("orchestrator", env) for _ in range(2)]
        for process in processes:
            stack.enter_context(process)
            process.start(wait_for=None)
        for process in processes:
            process.wait_serving(SERVICE, timeout=60)
        stubs = []
        for process in processes:
            assert process.channel is not None
            stubs.append(chat_pb2_grpc.ChatServiceStub(process.channel))
        yield Replicas(llm, stubs)


def earlier_user_messages(messages: list[dict[str, object]]) -> int:
    return sum(1 for m in messages if m.get("role") == "user") - 1


def test_one_users_turns_on_two_replicas_are_serialized_and_all_kept(replicas: Replicas) -> None:
    replicas.llm.reset()
    # Slow enough that turns sent together would overlap if nothing serialized them.
    replicas.llm.default = Reply(content="はい、にゃん", delay_seconds=0.2)

    def turn(index: int) -> chat_pb2.ChatResponse:
        return replicas.chat(index % 2, "alternating", f"こんにちは、{index}番目")

    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(turn, range(TURNS)))
    assert all(ends_in_nyan(reply.reply) for reply in replies), [r.reply for r in replies]
    assert all(list(reply.degraded) == [] for reply in replies), [r.degraded for r in replies]
    # Each turn's LLM call saw every turn answered before it, and no two saw the same history:
    # one at a time, across both replicas, none lost.
    seen = sorted(earlier_user_messages(r.messages) for r in replicas.llm.requests)
    assert seen == list(range(TURNS))


def test_the_rate_limit_is_one_allowance_across_replicas(replicas: Replicas) -> None:
    # The user above has had their burst of TURNS turns, half on each replica.
    for replica in (0, 1):
        with pytest.raises(grpc.RpcError) as refused:
            replicas.chat(replica, "alternating", "もう一回")
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_the_budget_is_one_allowance_across_replicas(replicas: Replicas) -> None:
    replicas.llm.reset()
    # A 5 USD turn, the user's whole daily budget (its worst case held before was less).
    replicas.llm.default = Reply(content="はい、にゃん", prompt_tokens=4000, completion_tokens=1000)
    first = replicas.chat(0, "spender", "こんにちは")
    assert first.usage.cost_usd == pytest.approx(5.0)
    second = replicas.chat(1, "spender", "こんにちは")
    # The other replica knows what the first spent: no room for another call's worst case.
    assert "budget" in second.degraded
    assert ends_in_nyan(second.reply)
    assert len(replicas.llm.requests) == 1
