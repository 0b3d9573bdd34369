"""An LLM slow to its first token on StreamChat (every StreamChat call streams, stream=True): the
provider sends its status and headers at once and the first chunk late. There is no separate
first-token timeout: `LLM_TIMEOUT_SECONDS` bounds the whole streamed call, and a call whose
budget the caller's deadline cut short ends with it.

* Slow, but within bounds: the LLM's reply, not degraded, text before the summary.
* Later than the caller's deadline: the local planner answers (`degraded: ["llm"]`) within the
  deadline, or a documented status; never UNKNOWN; and the breaker counts none of it.
* Later than the LLM's own bound, under a few concurrent clients: each turn waits out the bound
  once, the breaker opens, and the turns after it are answered at once.
* No turn is lost: the stored history is exactly the answered turns.

The same with `LLM_MAX_RETRIES` at its default (2): a first token later than one attempt's share
of the bound is waited for, not cut off and asked again (a new request would start the
provider's thinking over), and a late one is still the planner's answer, never UNKNOWN.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
import pytest

from chatagent.v1 import chat_pb2, chat_pb2_grpc
from tests.faults.harness import (
    AUTH,
    SERVICE,
    Outcome,
    assert_clear,
    assert_stored_history_is_the_answered_turns,
    breaker_state,
    orchestrator_env,
    stub_of,
    wait_until,
)
from tests.support.doubles import emotion_double, tools_double
from tests.support.fake_openai import FakeOpenAI, Reply, fake_openai
from tests.support.process import ServiceProcess
from tests.support.redis_server import RedisServer

LLM_TIMEOUT = 1.5  # LLM_TIMEOUT_SECONDS: the LLM call's own bound, the stream included
FAIL_MAX = 3
RESET_SECONDS = 5  # the breaker, once open, stays open for the rest of its test
SHORT = 1.0  # a caller's deadline that leaves the LLM less than its own bound
LONG = 4.0  # one that leaves it the whole bound (and the planner's reserve after it)
MARGIN = 1.0  # how late after its deadline a stream may end (a busy, shared 2-core machine)
IN_TIME = 0.6  # a first token this late is slow, but well within every bound
NEVER = 8.0  # a first token later than every deadline here
OPEN = 2.0
CLOSED = 0.0

SLOW_TEXT = "最初のことばはゆっくりだにゃん。そのあとは速いにゃん。"
FAST_TEXT = "すぐ答えたにゃん。"


@dataclass
class Streamed:
    """One StreamChat as its caller saw it: the outcome, and each event's kind and arrival."""

    outcome: Outcome
    events: list[tuple[float, str]] = field(default_factory=list)
    text: str = ""

    @property
    def kinds(self) -> list[str]:
        return [kind for _, kind in self.events]


def stream_once(
    stub: chat_pb2_grpc.ChatServiceStub, user: str, message: str, *, timeout: float
) -> Streamed:
    streamed = Streamed(Outcome(user, message, 0.0))
    request = chat_pb2.StreamChatRequest(user_id=user, message=message)
    started = time.monotonic()
    try:
        for event in stub.StreamChat(request, metadata=AUTH, timeout=timeout):
            kind = str(event.WhichOneof("event"))
            streamed.events.append((time.monotonic() - started, kind))
            if kind == "text_delta":
                streamed.text += event.text_delta
            elif kind == "final":
                streamed.outcome.reply = event.final
    except grpc.RpcError as error:
        streamed.outcome.code, streamed.outcome.details = error.code(), error.details() or ""
    streamed.outcome.seconds = time.monotonic() - started
    return streamed


def stream_load(
    stub: chat_pb2_grpc.ChatServiceStub, users: list[str], turns: int, *, timeout: float
) -> list[Streamed]:
    """`turns` streams for each user, one client thread per user, each user's one at a time."""

    def client(user: str) -> list[Streamed]:
        return [
            stream_once(stub, user, f"{user}-{index} こんにちは", timeout=timeout)
            for index in range(turns)
        ]

    with ThreadPoolExecutor(max_workers=len(users)) as pool:
        futures = [pool.submit(client, user) for user in users]
        return [streamed for future in futures for streamed in future.result(timeout=60)]


def assert_ends_well(streamed: Streamed, deadline: float) -> None:
    """Within its deadline, with its summary last (the reply exactly the text streamed before
    it), or with a documented status and a plain message; never UNKNOWN."""
    outcome = streamed.outcome
    assert outcome.seconds <= deadline + MARGIN, outcome
    final = outcome.reply
    if final is None:
        assert_clear(outcome)
        return
    assert streamed.kinds.count("final") == 1, streamed.kinds
    assert streamed.kinds[-1] == "final", streamed.kinds
    assert streamed.text == final.reply, (streamed.text, final.reply)
    assert "にゃん" in final.reply, final.reply


class Rig:
    def __init__(
        self,
        redis: RedisServer,
        llm: FakeOpenAI,
        orchestrator: ServiceProcess,
        retrying_llm: FakeOpenAI,
        retrying: ServiceProcess,
    ) -> None:
        self.redis, self.llm, self.orchestrator = redis, llm, orchestrator
        self.retrying_llm, self.retrying = retrying_llm, retrying
        self.streams: list[Streamed] = []

    @property
    def stub(self) -> chat_pb2_grpc.ChatServiceStub:
        return stub_of(self.orchestrator)

    def record(self, streams: list[Streamed]) -> list[Streamed]:
        self.streams += streams
        return streams


def until_closed(process: ServiceProcess, llm: FakeOpenAI) -> None:
    """A provider that answers at once, until the LLM breaker is closed and its count of
    failures in a row reset (a success resets it)."""
    llm.default = Reply(content=FAST_TEXT, prompt_tokens=10, completion_tokens=5)

    def closed() -> bool:
        probe = stream_once(stub_of(process), "st-probe", "probe", timeout=5)
        return breaker_state(process, "llm") == CLOSED and probe.outcome.answered

    wait_until(closed, RESET_SECONDS * 2 + 10, "the LLM breaker closed")


def slow_first_token(seconds: float) -> Reply:
    return Reply(
        content=SLOW_TEXT,
        prompt_tokens=100,
        completion_tokens=20,
        stream_first_chunk_delay_seconds=seconds,
    )


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    with (
        RedisServer() as redis,
        fake_openai() as llm,
        fake_openai() as retrying_llm,
        tools_double() as tools,
        emotion_double() as emotion,
    ):
        settings = {
            "BREAKER_FAIL_MAX": str(FAIL_MAX),
            "BREAKER_RESET_SECONDS": str(RESET_SECONDS),
            "LLM_TIMEOUT_SECONDS": str(LLM_TIMEOUT),
        }
        env = orchestrator_env(
            llm=llm, tools=tools.address, emotion=emotion.address, REDIS_URL=redis.url, **settings
        )
        # The README's default retries, on a process of its own (in-process state, its own
        # breaker): what a deployment that sets nothing gets.
        retrying_env = orchestrator_env(
            llm=retrying_llm,
            tools=tools.address,
            emotion=emotion.address,
            LLM_MAX_RETRIES="2",
            **settings,
        )
        with (
            ServiceProcess("orchestrator", env) as orchestrator,
            ServiceProcess("orchestrator", retrying_env) as retrying,
        ):
            orchestrator.start(wait_for=None)
            retrying.start(wait_for=None)
            orchestrator.wait_serving(SERVICE, timeout=60)
            retrying.wait_serving(SERVICE, timeout=60)
            yield Rig(redis, llm, orchestrator, retrying_llm, retrying)


def test_a_slow_first_token_within_bounds_is_the_llms_answer(rig: Rig) -> None:
    until_closed(rig.orchestrator, rig.llm)
    rig.llm.reset()
    rig.llm.default = slow_first_token(IN_TIME)
    streams = rig.record(stream_load(rig.stub, ["st-in0", "st-in1", "st-in2"], 2, timeout=LONG))
    for streamed in streams:
        assert_ends_well(streamed, LONG)
        final = streamed.outcome.reply
        assert final is not None, streamed.outcome
        # The LLM's words, all of them, not the planner's; nothing fell back.
        assert final.reply == SLOW_TEXT, final.reply
        assert list(final.degraded) == [], final.degraded
        # Sentence by sentence, then the summary; the first words came no sooner than the
        # provider sent them.
        kinds = streamed.kinds
        assert kinds == ["text_delta"] * (len(kinds) - 1) + ["final"], kinds
        assert len(kinds) >= 3, kinds
        assert streamed.events[0][0] >= IN_TIME * 0.9, streamed.events
    assert len(rig.llm.requests) == len(streams)
    assert breaker_state(rig.orchestrator, "llm") == CLOSED


def test_a_first_token_later_than_the_callers_deadline(rig: Rig) -> None:
    until_closed(rig.orchestrator, rig.llm)
    rig.llm.reset()
    rig.llm.default = slow_first_token(NEVER)
    users = ["st-short0", "st-short1", "st-short2", "st-short3"]
    streams = rig.record(stream_load(rig.stub, users, 2, timeout=SHORT))
    for streamed in streams:
        assert_ends_well(streamed, SHORT)
        final = streamed.outcome.reply
        if final is not None:
            # The planner's words instead of the LLM's, said as a stream like any reply.
            assert "llm" in final.degraded, final.degraded
            assert final.reply != SLOW_TEXT
            assert "text_delta" in streamed.kinds, streamed.kinds
    answered = [s for s in streams if s.outcome.answered]
    assert answered, [s.outcome for s in streams]
    # Each stream asked the provider once, and gave up on it when the caller's deadline said so.
    assert len(rig.llm.requests) == len(streams)
    # None of it was the provider's fault: twice FAIL_MAX cut-short timeouts, the circuit stays
    # closed, and the next turn is the LLM's again.
    assert breaker_state(rig.orchestrator, "llm") == CLOSED
    rig.llm.default = Reply(content=FAST_TEXT, prompt_tokens=10, completion_tokens=5)
    after = rig.record([stream_once(rig.stub, "st-short0", "after こんにちは", timeout=LONG)])[0]
    assert after.outcome.reply is not None, after.outcome
    assert after.outcome.reply.reply == FAST_TEXT
    assert list(after.outcome.reply.degraded) == []


def test_first_token_timeouts_at_the_llms_own_bound_open_the_breaker(rig: Rig) -> None:
    until_closed(rig.orchestrator, rig.llm)
    rig.llm.reset()
    rig.llm.default = slow_first_token(NEVER)
    users = ["st-bound0", "st-bound1", "st-bound2", "st-bound3"]
    streams = rig.record(stream_load(rig.stub, users, 3, timeout=LONG))
    for streamed in streams:
        assert_ends_well(streamed, LONG)
        final = streamed.outcome.reply
        assert final is not None, streamed.outcome  # LONG leaves the planner time to answer
        assert list(final.degraded) == ["llm"], final.degraded
        assert final.reply != SLOW_TEXT
    # The first turns waited out the LLM's bound, all at once; that was the provider's fault,
    # FAIL_MAX times over, and the circuit opened.
    assert breaker_state(rig.orchestrator, "llm") == OPEN
    first = [s for s in streams if s.outcome.message.split(" ")[0].endswith("-0")]
    assert all(s.outcome.seconds >= LLM_TIMEOUT * 0.9 for s in first), [s.outcome for s in first]
    # The last turns did not wait for the provider at all. Without the breaker each of the
    # twelve turns would have asked it (and waited); with it, about one per client did.
    last = [s for s in streams if s.outcome.message.split(" ")[0].endswith("-2")]
    assert all(s.outcome.seconds < LLM_TIMEOUT for s in last), [s.outcome for s in last]
    assert len(rig.llm.requests) <= 2 * len(users), len(rig.llm.requests)


def test_every_answered_stream_is_in_history_once(rig: Rig) -> None:
    users = sorted({s.outcome.user for s in rig.streams if s.outcome.user != "st-probe"})
    assert users
    assert_stored_history_is_the_answered_turns(
        rig.redis.url,
        [s.outcome for s in rig.streams],
        users,
        # A turn out of time may have committed before its answer was lost.
        maybe=lambda o: o.code == grpc.StatusCode.DEADLINE_EXCEEDED,
    )


def test_with_default_retries_a_first_token_past_an_attempts_share_is_still_the_llms(
    rig: Rig,
) -> None:
    until_closed(rig.retrying, rig.retrying_llm)
    rig.retrying_llm.reset()
    # Past half of LLM_TIMEOUT (the first of three attempts' share), within all of it.
    rig.retrying_llm.default = slow_first_token(LLM_TIMEOUT * 0.7)
    stub = stub_of(rig.retrying)
    streamed = stream_once(stub, "st-retry-slow", "こんにちは", timeout=LONG)
    assert_ends_well(streamed, LONG)
    assert streamed.outcome.reply is not None, streamed.outcome
    assert streamed.outcome.reply.reply == SLOW_TEXT
    assert list(streamed.outcome.reply.degraded) == []
    assert len(rig.retrying_llm.requests) == 1  # one request, waited for


def test_with_default_retries_a_late_first_token_is_the_planners_answer(rig: Rig) -> None:
    until_closed(rig.retrying, rig.retrying_llm)
    rig.retrying_llm.default = slow_first_token(NEVER)
    stub = stub_of(rig.retrying)
    streams = [
        stream_once(stub, "st-retry-long", "long こんにちは", timeout=LONG),
        stream_once(stub, "st-retry-short", "short こんにちは", timeout=SHORT),
    ]
    for streamed, deadline in zip(streams, (LONG, SHORT), strict=True):
        assert_ends_well(streamed, deadline)
        assert streamed.outcome.reply is not None, streamed.outcome
        assert "llm" in streamed.outcome.reply.degraded


def test_with_default_retries_cut_short_first_tokens_do_not_open_the_breaker(rig: Rig) -> None:
    until_closed(rig.retrying, rig.retrying_llm)
    rig.retrying_llm.default = slow_first_token(NEVER)
    stub = stub_of(rig.retrying)
    for index in range(FAIL_MAX + 1):
        stream_once(stub, "st-retry-cut", f"cut-{index} こんにちは", timeout=SHORT)
    # What the user notices: the provider is fast again, and the LLM answers, not the planner.
    rig.retrying_llm.default = Reply(content=FAST_TEXT, prompt_tokens=10, completion_tokens=5)
    after = stream_once(stub, "st-retry-cut", "after こんにちは", timeout=LONG)
    assert after.outcome.reply is not None, after.outcome
    assert list(after.outcome.reply.degraded) == [], after.outcome.reply.degraded
    assert after.outcome.reply.reply == FAST_TEXT
