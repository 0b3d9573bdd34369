"""SIGTERM to the orchestrator under load: the turns in flight finish and are answered (and
stored), the turns that arrive after it are refused with UNAVAILABLE, and the process exits 0."""

from __future__ import annotations

import time

import grpc

from tests.faults.harness import (
    SERVICE,
    Load,
    assert_clear,
    assert_stored_history_is_the_answered_turns,
    orchestrator_env,
    stub_of,
    wait_until,
)
from tests.support.doubles import emotion_double, tools_double
from tests.support.fake_openai import Reply, fake_openai
from tests.support.process import ServiceProcess
from tests.support.redis_server import RedisServer

USERS = [f"st-{n}" for n in range(4)]
LLM_SECONDS = 1.5  # how long each turn is in flight at the provider


def test_sigterm_under_load_finishes_in_flight_turns_and_refuses_new_ones() -> None:
    with (
        RedisServer() as redis,
        fake_openai() as llm,
        tools_double() as tools,
        emotion_double() as emotion,
    ):
        llm.default = Reply(
            content="わかったにゃん", prompt_tokens=100, completion_tokens=20,
            delay_seconds=LLM_SECONDS,
        )  # fmt: skip
        env = orchestrator_env(
            llm=llm,
            tools=tools.address,
            emotion=emotion.address,
            REDIS_URL=redis.url,
            SHUTDOWN_GRACE_SECONDS="10",
        )
        with ServiceProcess("orchestrator", env) as orchestrator:
            orchestrator.start(wait_for=SERVICE)
            load = Load(stub_of(orchestrator), USERS, 4, timeout=15).start()
            # Every client's first turn is at the provider: all four are in flight.
            wait_until(lambda: len(llm.requests) >= len(USERS), 15, "four turns in flight")
            in_flight = {request.messages[-1]["content"] for request in llm.requests}
            orchestrator.terminate()
            stopped_at = time.monotonic()
            outcomes = load.join()
            assert orchestrator.wait(timeout=30) == 0, orchestrator.logs()
            exited_after = time.monotonic() - stopped_at

        by_message = {o.message: o for o in outcomes}
        for message in in_flight:
            assert by_message[message].answered, by_message[message]
        refused = [o for o in outcomes if not o.answered]
        assert refused, "no turn arrived after SIGTERM"
        for o in refused:
            assert_clear(o)
            assert o.code == grpc.StatusCode.UNAVAILABLE, o
            assert o.seconds < 5, o  # refused at once, not after waiting out the grace
        # The drain took about one LLM call, not the whole grace.
        assert exited_after < 10, exited_after
        assert_stored_history_is_the_answered_turns(redis.url, outcomes, USERS)
