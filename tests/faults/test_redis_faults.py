"""Redis paused (SIGSTOP) and killed under load, as the README's outage table says: turns fail
fast with a plain UNAVAILABLE (history, lock, limits and budgets need Redis), health goes
NOT_SERVING and back to SERVING without a restart, every stored history entry decodes, no turn is
stored twice, a turn refused with "nothing was stored" is not in the history, and every provider
call is billed exactly once when Redis is back."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2

from chatagent.v1 import chat_pb2
from tests.faults.harness import (
    AUTH,
    SERVICE,
    Load,
    Outcome,
    answer,
    assert_clear,
    assert_stored_history_is_the_answered_turns,
    orchestrator_env,
    stored_history,
    stub_of,
    wait_until,
)
from tests.support.doubles import emotion_double, tools_double
from tests.support.fake_openai import FakeOpenAI, fake_openai
from tests.support.process import ServiceProcess
from tests.support.redis_server import RedisServer

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# What one LLM call of `answer()` costs at the harness's prices: 100 and 20 tokens.
CALL_USD = 100 * 1.0e-6 + 20 * 2.0e-6
TIMEOUT = 5.0


@pytest.fixture(scope="module")
def rig() -> Iterator[tuple[ServiceProcess, RedisServer, FakeOpenAI]]:
    with (
        RedisServer() as redis,
        fake_openai() as llm,
        tools_double() as tools,
        emotion_double() as emotion,
    ):
        llm.default = answer()
        env = orchestrator_env(
            llm=llm,
            tools=tools.address,
            emotion=emotion.address,
            REDIS_URL=redis.url,
            REDIS_TIMEOUT_SECONDS="0.3",
        )
        with ServiceProcess("orchestrator", env) as orchestrator:
            orchestrator.start(wait_for=SERVICE)
            yield orchestrator, redis, llm


def health(process: ServiceProcess) -> int:
    try:
        return process.health(SERVICE, timeout=2.0)
    except grpc.RpcError:
        return -1


def provider_calls(llm: FakeOpenAI, user: str) -> int:
    """LLM calls the provider answered for `user`'s turns (their messages carry the user id)."""
    return sum(1 for r in llm.requests if r.messages[-1]["content"].split("-")[1] == user)


def assert_outage_outcomes(outcomes: list[Outcome]) -> list[Outcome]:
    """Answered, or refused fast with a plain status; returns the refused ones."""
    refused = [o for o in outcomes if not o.answered]
    for o in refused:
        assert_clear(o)
        assert o.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), o
        # Redis commands time out after 0.3 s: a refusal does not wait out the caller's deadline.
        assert o.seconds < TIMEOUT, o
    return refused


UNCONFIRMED = "did not confirm that the turn was stored"


def lost_answer(outcome: Outcome) -> bool:
    """A turn may be stored although its caller got no answer: one that ran out of time (its
    commit can have happened), and one whose commit Redis did not confirm (a paused Redis runs
    the commit it had in its socket when it wakes up), which says so. An UNAVAILABLE that says
    "nothing was stored" must mean it."""
    if outcome.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return True
    return outcome.code == grpc.StatusCode.UNAVAILABLE and UNCONFIRMED in outcome.details


def test_redis_paused_under_load(rig: tuple[ServiceProcess, RedisServer, FakeOpenAI]) -> None:
    orchestrator, redis, llm = rig
    stub = stub_of(orchestrator)
    users = ["rp0", "rp1", "rp2"]
    load = Load(stub, users, 12, timeout=TIMEOUT, label="p").start()
    load.wait_done(4)
    redis.pause()
    try:
        wait_until(lambda: health(orchestrator) == NOT_SERVING, 15, "NOT_SERVING while paused")
        wait_until(
            lambda: sum(not o.answered for o in load.outcomes) >= 3, 20, "turns refused meanwhile"
        )
    finally:
        redis.resume()
    wait_until(lambda: health(orchestrator) == SERVING, 15, "SERVING again, without a restart")
    outcomes = load.join()
    refused = assert_outage_outcomes(outcomes)
    assert refused, "no turn met the paused Redis"
    assert any("session store" in o.details for o in refused), refused
    after = Load(stub, users, 3, timeout=TIMEOUT, label="q").run()
    assert all(o.answered for o in after), after
    assert orchestrator.process is not None
    assert orchestrator.process.poll() is None

    everything = outcomes + after
    assert_stored_history_is_the_answered_turns(redis.url, everything, users, maybe=lost_answer)

    # No spend lost, none counted twice: once Redis is back, each user's cost is what the
    # provider answered for them, and covers every answered turn's reported cost.
    for user in users:
        expected = provider_calls(llm, user) * CALL_USD
        answered = sum(o.reply.usage.cost_usd for o in everything if o.user == user and o.answered)
        assert answered <= expected + 1e-9

        def recorded(user: str = user, expected: float = expected) -> bool:
            usage = stub.GetUsage(chat_pb2.GetUsageRequest(user_id=user), metadata=AUTH, timeout=5)
            return abs(usage.user_today.cost_usd - expected) < 1e-9

        wait_until(recorded, 15, f"{user}'s spend recorded once")
        usage = stub.GetUsage(chat_pb2.GetUsageRequest(user_id=user), metadata=AUTH, timeout=5)
        stored = len(stored_history(redis.url, user))
        # A commit Redis ran after the orchestrator stopped waiting for it is stored uncounted.
        unconfirmed = sum(1 for o in everything if o.user == user and lost_answer(o))
        assert stored - unconfirmed <= usage.user_today.turns <= stored, (usage, stored)


def test_redis_killed_and_restarted_under_load(
    rig: tuple[ServiceProcess, RedisServer, FakeOpenAI],
) -> None:
    orchestrator, redis, _llm = rig
    stub = stub_of(orchestrator)
    users = ["rk0", "rk1", "rk2"]
    load = Load(stub, users, 12, timeout=TIMEOUT, label="k").start()
    load.wait_done(4)
    redis.kill()  # and everything in it: a Redis without persistence
    wait_until(lambda: health(orchestrator) == NOT_SERVING, 15, "NOT_SERVING while Redis is away")
    wait_until(lambda: sum(not o.answered for o in load.outcomes) >= 3, 20, "turns refused")
    redis.start()  # the same port, empty
    wait_until(lambda: health(orchestrator) == SERVING, 15, "SERVING again, without a restart")
    outcomes = load.join()
    refused = assert_outage_outcomes(outcomes)
    assert refused, "no turn met the dead Redis"
    after = Load(stub, users, 3, timeout=TIMEOUT, label="l").run()
    assert all(o.answered for o in after), after
    assert orchestrator.process is not None
    assert orchestrator.process.poll() is None

    # What the old Redis held died with it; what the new one holds is every turn answered
    # since, in order, once each, and no refused turn.
    for user in users:
        stored = stored_history(redis.url, user)
        assert len(stored) == len(set(stored)), stored
        mine = [o for o in outcomes + after if o.user == user]
        answered = [o.message for o in mine if o.answered]
        allowed = {o.message for o in mine if lost_answer(o)}
        kept = [m for m in stored if m not in allowed]
        assert kept == answered[len(answered) - len(kept) :], (user, stored, answered)
        assert [o.message for o in after if o.user == user] == kept[-3:], (user, stored)
