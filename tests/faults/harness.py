"""What the fault tests share: an orchestrator's environment, bounded load from a few concurrent
clients with every turn's outcome recorded, the checks that no turn was lost, metrics scrapes,
and the history read back from what the orchestrator sends the LLM."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import redis

from chatagent.v1 import chat_pb2, chat_pb2_grpc
from services.orchestrator import codec, keys
from tests.support.fake_openai import FakeOpenAI, Reply
from tests.support.process import ServiceProcess

SERVICE = "chatagent.v1.ChatService"
TOKEN = "fault-token-1"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
MODEL = "fake-model"
# USD per million prompt / completion tokens: what each answered turn's usage.cost_usd comes from.
PRICES = {MODEL: [1.0, 2.0]}

# The codes the README documents for a turn that is not answered; UNKNOWN is never one of them.
DOCUMENTED = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def orchestrator_env(
    *,
    llm: FakeOpenAI | None,
    tools: str,
    emotion: str,
    speech: str = "127.0.0.1:1",
    **extra: str,
) -> dict[str, str]:
    """An orchestrator wired to the given addresses, with limits out of the way of a load test."""
    env = {
        "TOOLS_ADDR": tools,
        "EMOTION_ADDR": emotion,
        "SPEECH_ADDR": speech,
        "CHAT_API_TOKENS": f"backend:{TOKEN}",
        "USER_RATE_PER_MINUTE": "60000",
        "USER_BURST": "1000",
        "CALLER_RATE_PER_MINUTE": "600000",
        "CALLER_BURST": "10000",
        "BREAKER_FAIL_MAX": "3",
        "BREAKER_RESET_SECONDS": "1",
        "HISTORY_MAX_TURNS": "100",
        "DEFAULT_TIMEZONE": "Asia/Tokyo",
        "LLM_PRICES": json.dumps(PRICES),
        "LLM_MODEL": MODEL,
        "LLM_MAX_RETRIES": "0",
    }
    if llm is not None:
        env |= {"OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "sk-test"}
    return env | extra


def stub_of(process: ServiceProcess) -> chat_pb2_grpc.ChatServiceStub:
    assert process.channel is not None
    return chat_pb2_grpc.ChatServiceStub(process.channel)


@dataclass
class Outcome:
    """How one turn ended, as its caller saw it."""

    user: str
    message: str
    seconds: float
    reply: chat_pb2.ChatResponse | None = None
    code: grpc.StatusCode | None = None
    details: str = ""

    @property
    def answered(self) -> bool:
        return self.reply is not None


def chat_once(
    stub: chat_pb2_grpc.ChatServiceStub,
    user: str,
    message: str,
    *,
    timeout: float,
    **fields: Any,
) -> Outcome:
    request = chat_pb2.ChatRequest(user_id=user, message=message, **fields)
    started = time.monotonic()
    try:
        reply = stub.Chat(request, metadata=AUTH, timeout=timeout)
    except grpc.RpcError as error:
        return Outcome(
            user, message, time.monotonic() - started, code=error.code(), details=error.details()
        )
    return Outcome(user, message, time.monotonic() - started, reply=reply)


class Load:
    """`turns` turns for each of `users`, one user per client thread, each user's turns one after
    another (so each user's history order is the order of its answers). `after_each` runs in the
    client thread after every turn (a test uses it to pull a trigger mid-load)."""

    def __init__(
        self,
        stub: chat_pb2_grpc.ChatServiceStub,
        users: Iterable[str],
        turns: int,
        *,
        timeout: float = 10.0,
        label: str = "turn",
        fields: dict[str, Any] | None = None,
    ) -> None:
        self.stub = stub
        self.users = list(users)
        self.turns = turns
        self.timeout = timeout
        self.label = label
        self.fields = fields or {}
        self.outcomes: list[Outcome] = []
        self.done = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=len(self.users))
        self._futures: list[Future[None]] = []

    def _client(self, user: str) -> None:
        for index in range(self.turns):
            outcome = chat_once(
                self.stub,
                user,
                f"{self.label}-{user}-{index} 計算して",
                timeout=self.timeout,
                **self.fields,
            )
            with self._lock:
                self.outcomes.append(outcome)
                self.done += 1

    def start(self) -> Load:
        self._futures = [self._pool.submit(self._client, user) for user in self.users]
        return self

    def wait_done(self, count: int, within: float = 30.0) -> None:
        """Wait until at least `count` turns (over all clients) have ended."""
        wait_until(lambda: self.done >= count, within, f"{count} turns of {self.label} ended")

    def join(self, within: float = 60.0) -> list[Outcome]:
        for future in self._futures:
            future.result(timeout=within)
        self._pool.shutdown()
        return self.outcomes

    def run(self) -> list[Outcome]:
        return self.start().join()


def wait_until(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"not so after {within}s: {what}"
        time.sleep(0.05)


def assert_clear(outcome: Outcome) -> None:
    """A turn not answered got a documented code and a plain message (no exception text)."""
    if outcome.answered:
        return
    assert outcome.code in DOCUMENTED, (outcome.code, outcome.details)
    assert outcome.details, outcome
    for leak in ("Traceback", "Exception", "Error(", "redis.", "grpc."):
        assert leak not in outcome.details, outcome.details


def breaker_state(process: ServiceProcess, dependency: str) -> float:
    """0 closed, 1 half-open, 2 open (-1: no such breaker yet)."""
    return process.metrics().get(f'chatagent_breaker_state{{dependency="{dependency}"}}', -1.0)


# -- the fake LLM's side ------------------------------------------------------------------------


def answer(content: str = "わかったにゃん") -> Reply:
    return Reply(content=content, prompt_tokens=100, completion_tokens=20)


def calculate_then_answer(body: dict[str, Any]) -> Reply:
    """Asks for the calculator on a turn's first call, answers once it has the tool's result."""
    messages = body.get("messages", [])
    if messages and messages[-1].get("role") == "tool":
        return answer("計算したにゃん")
    return Reply(
        tool_calls=[{"id": "call-1", "name": "calculate", "arguments": {"expression": "6*7"}}],
        prompt_tokens=50,
        completion_tokens=10,
    )


def history_seen(llm: FakeOpenAI, message: str) -> list[str]:
    """The user messages of the history the orchestrator sent with the (first) LLM request of
    the turn whose message is `message`: what it had stored for that user before the turn."""
    for request in list(llm.requests):
        messages = request.messages
        if messages and messages[-1].get("role") == "user" and messages[-1]["content"] == message:
            return [m["content"] for m in messages[1:-1] if m.get("role") == "user"]
    raise AssertionError(f"no LLM request carried {message!r}")


def assert_history_is_the_answered_turns(
    llm: FakeOpenAI,
    stub: chat_pb2_grpc.ChatServiceStub,
    outcomes: list[Outcome],
    users: Iterable[str],
    *,
    maybe: Callable[[Outcome], bool] = lambda _outcome: False,
) -> None:
    """One more turn per user shows its history: every answered turn, in order, once each, and
    no turn that was refused, except those `maybe` allows (a commit whose answer was lost)."""
    for user in users:
        mine = [o for o in outcomes if o.user == user]
        final = chat_once(stub, user, f"final-{user} 計算して", timeout=10)
        assert final.answered, final
        seen = history_seen(llm, final.message)
        assert len(seen) == len(set(seen)), f"a turn stored twice for {user}: {seen}"
        answered = [o.message for o in mine if o.answered]
        allowed = {o.message for o in mine if not o.answered and maybe(o)}
        assert [m for m in seen if m not in allowed] == answered, (user, seen, answered)


# -- what Redis holds ---------------------------------------------------------------------------


def stored_history(redis_url: str, user: str) -> list[str]:
    """The user messages of `user`'s history as stored in Redis, every entry decoded (one that
    does not decode fails the test: a half-written or corrupted turn)."""
    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.lrange(keys.user_key(user, "history"), 0, -1)
    finally:
        client.close()
    return [codec.decode_turn(entry).user for entry in raw]  # type: ignore[union-attr]


def assert_stored_history_is_the_answered_turns(
    redis_url: str,
    outcomes: list[Outcome],
    users: Iterable[str],
    *,
    maybe: Callable[[Outcome], bool] = lambda _outcome: False,
) -> None:
    """Each user's stored history is its answered turns, in order, once each; a turn that was not
    answered is not in it, unless `maybe` allows it (its commit happened, its answer was lost)."""
    for user in users:
        mine = [o for o in outcomes if o.user == user]
        stored = stored_history(redis_url, user)
        assert len(stored) == len(set(stored)), f"a turn stored twice for {user}: {stored}"
        answered = [o.message for o in mine if o.answered]
        allowed = {o.message for o in mine if not o.answered and maybe(o)}
        refused = [
            (o.message, o.code, o.details, round(o.seconds, 2)) for o in mine if not o.answered
        ]
        assert [m for m in stored if m not in allowed] == answered, (user, stored, refused)
