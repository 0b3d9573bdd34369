"""The tools service SIGKILLed under load and started again on its port: no turn fails (the
affected ones say `degraded: ["tools"]`), the calculator's breaker opens so that calls stop
going to the dead service, and it closes again once the service is back."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from chatagent.v1 import chat_pb2
from tests.faults.harness import (
    SERVICE,
    Load,
    assert_clear,
    assert_history_is_the_answered_turns,
    breaker_state,
    calculate_then_answer,
    chat_once,
    orchestrator_env,
    stub_of,
    wait_until,
)
from tests.support.doubles import emotion_double
from tests.support.fake_openai import FakeOpenAI, fake_openai
from tests.support.process import ServiceProcess

FAIL_MAX = 3
RESET_SECONDS = 2
USERS = [f"tk-{n}" for n in range(3)]
OPEN = 2.0
CLOSED = 0.0


@pytest.fixture
def rig() -> Iterator[tuple[ServiceProcess, ServiceProcess, FakeOpenAI]]:
    with (
        fake_openai() as llm,
        emotion_double() as emotion,
        ServiceProcess("tools") as tools,
    ):
        llm.responder = calculate_then_answer
        tools.start(wait_for=None)
        env = orchestrator_env(
            llm=llm,
            tools=tools.address,
            emotion=emotion.address,
            BREAKER_FAIL_MAX=str(FAIL_MAX),
            BREAKER_RESET_SECONDS=str(RESET_SECONDS),
        )
        with ServiceProcess("orchestrator", env) as orchestrator:
            orchestrator.start(wait_for=None)
            tools.wait_serving("chatagent.v1.ToolService")
            orchestrator.wait_serving(SERVICE)
            yield orchestrator, tools, llm


def calculator_calls(orchestrator: ServiceProcess) -> dict[str, float]:
    values = orchestrator.metrics()
    prefix = 'chatagent_tool_calls_total{status="'
    calls = {}
    for series, value in values.items():
        if series.startswith(prefix) and 'tool="calculate"' in series:
            calls[series[len(prefix) :].split('"')[0]] = value
    return calls


def test_tools_killed_and_restarted_under_load(
    rig: tuple[ServiceProcess, ServiceProcess, FakeOpenAI],
) -> None:
    orchestrator, tools, llm = rig
    stub = stub_of(orchestrator)
    assert tools.process is not None

    healthy = Load(stub, USERS, 3, label="before").run()
    assert all(o.answered and not o.reply.degraded for o in healthy), healthy

    # Killed while the second load is in flight.
    outage = Load(stub, USERS, 10, label="outage").start()
    outage.wait_done(3)
    tools.process.kill()
    tools.process.wait()
    outage.wait_done(15, within=60)
    during = outage.join()
    assert all(o.answered for o in during), [o for o in during if not o.answered]
    for o in during:
        assert_clear(o)
    degraded = [o for o in during if list(o.reply.degraded) == ["tools"]]
    assert degraded, "no turn noticed the dead tools service"
    assert all(list(o.reply.degraded) in ([], ["tools"]) for o in during)
    for o in degraded:
        assert o.reply.tool_calls[0].status in (
            chat_pb2.TOOL_CALL_STATUS_FALLBACK,
            chat_pb2.TOOL_CALL_STATUS_CIRCUIT_OPEN,
        )
    assert breaker_state(orchestrator, "tools.calculate") in (OPEN, 1.0)
    calls = calculator_calls(orchestrator)
    # Calls that went to the dead service: the breaker's FAIL_MAX, those in flight beside them,
    # and one trial per reset period; every other affected turn never left the orchestrator.
    tried = calls.get("fallback", 0)
    assert calls.get("circuit_open", 0) >= 1, calls
    assert tried <= FAIL_MAX + len(USERS) + 6, calls
    assert calls.get("circuit_open", 0) > tried, calls

    # Back on the same port: within a reset period or two a turn's calculator answers again.
    tools.channel.close()  # type: ignore[union-attr]
    tools.start(wait_for="chatagent.v1.ToolService")

    def calculator_answers() -> bool:
        outcome = chat_once(stub, "tk-probe", "probe 計算して", timeout=10)
        return bool(
            outcome.answered and outcome.reply.tool_calls[0].status == chat_pb2.TOOL_CALL_STATUS_OK
        )

    wait_until(calculator_answers, 30, "the calculator answers again")
    assert breaker_state(orchestrator, "tools.calculate") == CLOSED
    after = Load(stub, USERS, 3, label="after").run()
    assert all(o.answered and not o.reply.degraded for o in after), after

    assert_history_is_the_answered_turns(llm, stub, healthy + during + after, USERS)
