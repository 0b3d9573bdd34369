"""The LLM provider failing under load, seen by two orchestrator replicas that share one Redis:
500s, then a hang, then slow answers. Every turn is answered within the caller's deadline (by
the local planner while the provider fails), and the LLM breaker opens once for both replicas:
the replica that did not count the failures stops calling too."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.harness import (
    SERVICE,
    Load,
    Outcome,
    answer,
    assert_stored_history_is_the_answered_turns,
    breaker_state,
    chat_once,
    orchestrator_env,
    stub_of,
    wait_until,
)
from tests.support.doubles import emotion_double, tools_double
from tests.support.fake_openai import FakeOpenAI, Reply, fake_openai
from tests.support.process import ServiceProcess
from tests.support.redis_server import RedisServer

FAIL_MAX = 3
RESET_SECONDS = 4
LLM_TIMEOUT = 1.0
MARGIN = 0.75  # seconds a reply may come after the caller's deadline (a busy 2-core machine)
OPEN = 2.0
CLOSED = 0.0


class Replicas:
    def __init__(self, redis: RedisServer, llm: FakeOpenAI, a: ServiceProcess, b: ServiceProcess):
        self.redis, self.llm, self.a, self.b = redis, llm, a, b
        self.outcomes: list[Outcome] = []

    def record(self, outcomes: list[Outcome]) -> list[Outcome]:
        self.outcomes += outcomes
        return outcomes

    def wait_closed(self) -> None:
        """Provider healthy again: each replica's breaker closes after its trial call."""
        self.llm.default = answer()
        for n, replica in enumerate((self.a, self.b)):

            def closed(replica: ServiceProcess = replica, n: int = n) -> bool:
                self.record([chat_once(stub_of(replica), f"llm-probe-{n}", "probe", timeout=5)])
                return breaker_state(replica, "llm") == CLOSED

            wait_until(closed, RESET_SECONDS * 3 + 10, f"replica {n}'s LLM breaker closed")


@pytest.fixture(scope="module")
def replicas() -> Iterator[Replicas]:
    with (
        RedisServer() as redis,
        fake_openai() as llm,
        tools_double() as tools,
        emotion_double() as emotion,
    ):
        env = orchestrator_env(
            llm=llm,
            tools=tools.address,
            emotion=emotion.address,
            REDIS_URL=redis.url,
            BREAKER_FAIL_MAX=str(FAIL_MAX),
            BREAKER_RESET_SECONDS=str(RESET_SECONDS),
            LLM_TIMEOUT_SECONDS=str(LLM_TIMEOUT),
        )
        with ServiceProcess("orchestrator", env) as a, ServiceProcess("orchestrator", env) as b:
            a.start(wait_for=None)
            b.start(wait_for=None)
            a.wait_serving(SERVICE)
            b.wait_serving(SERVICE)
            yield Replicas(redis, llm, a, b)


def assert_in_time(outcomes: list[Outcome], deadline: float) -> None:
    for o in outcomes:
        assert o.answered, o
        assert o.seconds <= deadline + MARGIN, o


def test_500s_open_the_breaker_once_for_both_replicas(replicas: Replicas) -> None:
    llm, a, b = replicas.llm, replicas.a, replicas.b
    llm.reset()
    llm.default = Reply.error(500)
    # One client on replica A only, until A's breaker opens: A counted FAIL_MAX failures.
    for index in range(FAIL_MAX):
        o = replicas.record([chat_once(stub_of(a), "llm-a", f"500-a-{index}", timeout=5)])[0]
        assert o.answered, o
        assert "llm" in o.reply.degraded, o
    assert breaker_state(a, "llm") == OPEN
    assert len(llm.requests) == FAIL_MAX
    # B counted nothing, yet its circuit opens through Redis: B does not call the provider.
    wait_until(lambda: breaker_state(b, "llm") == OPEN, 5, "replica B's LLM breaker open")
    load = Load(stub_of(b), ["llm-b0", "llm-b1"], 5, timeout=5, label="500-b").run()
    load += Load(stub_of(a), ["llm-a0", "llm-a1"], 5, timeout=5, label="500-a").run()
    assert_in_time(replicas.record(load), 5)
    assert all(list(o.reply.degraded) == ["llm"] for o in load), load
    # About FAIL_MAX failing calls in all, not FAIL_MAX per replica (a half-open trial per
    # replica at most, should the load outlast the reset period).
    assert len(llm.requests) <= FAIL_MAX + 2, [r.at for r in llm.requests]


def test_failures_alternating_between_replicas_open_the_breaker_after_fail_max(
    replicas: Replicas,
) -> None:
    llm, a, b = replicas.llm, replicas.a, replicas.b
    replicas.wait_closed()
    llm.reset()
    llm.default = Reply.error(500)
    for index in range(2 * FAIL_MAX):
        replica = (a, b)[index % 2]
        o = chat_once(stub_of(replica), f"llm-alt{index % 2}", f"alt-{index}", timeout=5)
        assert replicas.record([o])[0].answered, o
    # Both circuits open, and the provider saw about FAIL_MAX failing calls, not one count of
    # them per replica.
    wait_until(lambda: breaker_state(a, "llm") == OPEN, 5, "replica A's LLM breaker open")
    wait_until(lambda: breaker_state(b, "llm") == OPEN, 5, "replica B's LLM breaker open")
    assert len(llm.requests) <= FAIL_MAX + 1, len(llm.requests)


def test_a_hanging_provider_answers_every_turn_within_its_deadline(replicas: Replicas) -> None:
    llm, a, b = replicas.llm, replicas.a, replicas.b
    replicas.wait_closed()
    llm.reset()
    llm.default = Reply.hang(30)
    # Deadlines shorter than the LLM's own bound: answered in time, and not the provider's
    # fault (the call was cut short by the caller), so the breaker does not count them.
    short = Load(stub_of(a), ["llm-short"], FAIL_MAX + 1, timeout=0.8, label="short").run()
    replicas.record(short)
    for o in short:
        assert o.seconds <= 0.8 + MARGIN, o
        assert o.answered or (o.code is not None and o.code.name == "DEADLINE_EXCEEDED"), o
    assert breaker_state(a, "llm") == CLOSED
    # Full-bound timeouts from both replicas at once: each waits out the bound until the
    # circuit opens, then the planner answers at once.
    started = len(llm.requests)
    load = Load(stub_of(a), ["llm-h0", "llm-h1"], 4, timeout=3, label="hang-a").start()
    load_b = Load(stub_of(b), ["llm-h2", "llm-h3"], 4, timeout=3, label="hang-b").start()
    outcomes = replicas.record(load.join() + load_b.join())
    assert_in_time(outcomes, 3)
    assert all("llm" in o.reply.degraded for o in outcomes), outcomes
    assert breaker_state(a, "llm") == OPEN
    wait_until(lambda: breaker_state(b, "llm") == OPEN, 5, "replica B's LLM breaker open")
    # Sixteen turns; without the breaker each would have hung at the provider. The replicas
    # share one count: FAIL_MAX failures, and at most the calls the other three clients had in
    # flight when the last of them timed out.
    assert len(llm.requests) - started <= FAIL_MAX + 3, len(llm.requests) - started


def test_a_slow_provider_still_answers_within_the_deadline(replicas: Replicas) -> None:
    llm, a, b = replicas.llm, replicas.a, replicas.b
    replicas.wait_closed()
    llm.reset()
    llm.default = Reply(
        content="ゆっくりだにゃん", prompt_tokens=100, completion_tokens=20,
        delay_seconds=LLM_TIMEOUT * 0.6,
    )  # fmt: skip
    load = Load(stub_of(a), ["llm-s0", "llm-s1"], 3, timeout=4, label="slow-a").start()
    load_b = Load(stub_of(b), ["llm-s2", "llm-s3"], 3, timeout=4, label="slow-b").start()
    outcomes = replicas.record(load.join() + load_b.join())
    assert_in_time(outcomes, 4)
    # Slow is not failed: the LLM wrote every reply, and the circuits stayed closed.
    assert all(list(o.reply.degraded) == [] for o in outcomes), outcomes
    assert all(o.reply.reply == "ゆっくりだにゃん" for o in outcomes), outcomes
    assert breaker_state(a, "llm") == CLOSED
    assert breaker_state(b, "llm") == CLOSED


def test_every_answered_turn_is_in_history_once(replicas: Replicas) -> None:
    users = sorted({o.user for o in replicas.outcomes if not o.user.startswith("llm-probe")})
    assert users
    assert_stored_history_is_the_answered_turns(replicas.redis.url, replicas.outcomes, users)
