"""Circuit breakers: they blame only the dependency, log transitions (not calls), and share
their open/close transitions between replicas through a real Redis without ever making the
calling path wait for it."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import grpc.aio
import pybreaker
import pytest
from prometheus_client import REGISTRY

from services.common import redisconn
from services.common.breakers import Breaker, BreakerBoard, CircuitOpen, grpc_codes
from services.common.deadline import Budget, Deadline
from tests.support.loop import StallMeter, wait_until
from tests.support.redis_cluster import RedisTarget
from tests.support.redis_server import RedisServer

OPEN, HALF_OPEN, CLOSED = pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN, pybreaker.STATE_CLOSED
FULL = Budget(2.0, cut_short=False)
CUT_SHORT = Budget(0.2, cut_short=True)
LOGGER = "services.common.breakers"


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "scripted")


def breaker(name: str = "dependency", *, fail_max: int = 2, reset_seconds: float = 60) -> Breaker:
    return Breaker(
        name,
        fail_max=fail_max,
        reset_seconds=reset_seconds,
        is_caller_error=grpc_codes(grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND),
    )


async def raising(error: BaseException) -> None:
    await asyncio.sleep(0)
    raise error


async def fail(guarded: Breaker, error: BaseException, budget: Budget = FULL) -> None:
    """One call that raises `error`; the caller must get that very error back."""
    with pytest.raises(type(error)) as raised, guarded.calling(budget):
        await raising(error)
    assert raised.value is error


async def succeed(guarded: Breaker) -> None:
    with guarded.calling(FULL):
        await asyncio.sleep(0)


def transitions(caplog: pytest.LogCaptureFixture, name: str) -> list[tuple[str, str, str]]:
    return [
        (record.levelname, getattr(record, "to", ""), getattr(record, "decided_by", ""))
        for record in caplog.records
        if record.name == LOGGER and getattr(record, "dependency", None) == name
    ]


@pytest.fixture(autouse=True)
def _breaker_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)


async def test_callers_with_short_deadlines_never_open_the_circuit() -> None:
    guarded = breaker()
    for _ in range(5):
        # A caller with 0.1 s left calls a dependency allowed 5 s: its own deadline times out.
        budget = Deadline.after(0.15).budget(5.0)
        assert budget.cut_short
        with pytest.raises(TimeoutError), guarded.calling(budget):
            async with asyncio.timeout(budget.require()):
                await asyncio.sleep(10)
        await fail(guarded, rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED), CUT_SHORT)
    assert guarded.state == CLOSED


async def test_timeouts_at_the_dependencys_own_bound_open_the_circuit() -> None:
    guarded = breaker()
    budget = Deadline.after(30).budget(0.05)
    assert not budget.cut_short
    for _ in range(2):
        with pytest.raises(TimeoutError), guarded.calling(budget):
            async with asyncio.timeout(budget.require()):
                await asyncio.sleep(10)
    assert guarded.state == OPEN


@pytest.mark.parametrize(
    "error",
    [
        rpc_error(grpc.StatusCode.UNAVAILABLE),
        rpc_error(grpc.StatusCode.INTERNAL),
        ConnectionError("refused"),
    ],
    ids=["unavailable", "internal", "connection"],
)
async def test_what_the_dependency_did_opens_the_circuit(error: BaseException) -> None:
    guarded = breaker()
    await fail(guarded, error)
    assert guarded.state == CLOSED
    await fail(guarded, error)  # the failure that trips it still reaches the caller as it was
    assert guarded.state == OPEN
    with pytest.raises(CircuitOpen) as refused, guarded.calling(FULL):
        pytest.fail("an open circuit must not let the call through")
    assert isinstance(refused.value, pybreaker.CircuitBreakerError)
    assert refused.value.dependency == "dependency"


async def test_calls_that_say_nothing_neither_count_nor_forgive() -> None:
    guarded = breaker(fail_max=2)
    await fail(guarded, rpc_error(grpc.StatusCode.UNAVAILABLE))
    # A short-deadline timeout and a cancelled caller between two failures: the second failure
    # still makes two in a row.
    await fail(guarded, TimeoutError(), CUT_SHORT)
    started = asyncio.Event()

    async def caller() -> None:
        with guarded.calling(FULL):
            started.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(caller())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert guarded.state == CLOSED
    await fail(guarded, rpc_error(grpc.StatusCode.UNAVAILABLE))
    assert guarded.state == OPEN


async def test_caller_errors_do_not_count() -> None:
    guarded = breaker(fail_max=1)
    for code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
        await fail(guarded, rpc_error(code))
    assert guarded.state == CLOSED
    await fail(guarded, rpc_error(grpc.StatusCode.UNAVAILABLE))
    assert guarded.state == OPEN


async def test_a_cancelled_trial_call_does_not_close_the_circuit() -> None:
    guarded = breaker(fail_max=1, reset_seconds=0.1)
    await fail(guarded, rpc_error(grpc.StatusCode.UNAVAILABLE))
    await wait_until(lambda: guarded.open_remaining() == 0, within=5, message="reset timeout")
    task = asyncio.create_task(succeed_slowly(guarded))
    await wait_until(lambda: guarded.state == HALF_OPEN, within=5, message="half-open")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert guarded.state == HALF_OPEN
    await succeed(guarded)
    assert guarded.state == CLOSED


async def succeed_slowly(guarded: Breaker) -> None:
    with guarded.calling(FULL):
        await asyncio.sleep(10)


async def test_one_log_line_per_transition_and_none_per_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guarded = breaker("logged", fail_max=2, reset_seconds=0.1)
    for _ in range(2):
        await fail(guarded, rpc_error(grpc.StatusCode.UNAVAILABLE))
    for _ in range(50):
        with pytest.raises(CircuitOpen), guarded.calling(FULL):
            pass
    await wait_until(lambda: guarded.open_remaining() == 0, within=5, message="reset timeout")
    await succeed(guarded)
    await succeed(guarded)
    assert transitions(caplog, "logged") == [
        ("WARNING", OPEN, "this replica"),
        ("INFO", HALF_OPEN, "this replica"),
        ("INFO", CLOSED, "this replica"),
    ]


async def test_the_state_is_exported_as_a_gauge() -> None:
    guarded = breaker("gauged", fail_max=1, reset_seconds=0.1)

    def value() -> float | None:
        return REGISTRY.get_sample_value("chatagent_breaker_state", {"dependency": "gauged"})

    assert value() == 0
    await fail(guarded, rpc_error(grpc.StatusCode.UNAVAILABLE))
    assert value() == 2
    await wait_until(lambda: guarded.open_remaining() == 0, within=5, message="reset timeout")
    task = asyncio.create_task(succeed_slowly(guarded))
    await wait_until(lambda: value() == 1, within=5, message="half-open gauge")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_board_without_redis_is_local() -> None:
    board = BreakerBoard()
    guarded = board.breaker("local", fail_max=1, reset_seconds=60)
    await board.start()
    await fail(guarded, rpc_error(grpc.StatusCode.UNAVAILABLE))
    assert board["local"].state == OPEN
    await board.aclose()


# Shared between replicas, through a real Redis.


@asynccontextmanager
async def replica(
    target: RedisTarget, prefix: str, **resets: float
) -> AsyncIterator[dict[str, Breaker]]:
    """One replica's board: a breaker (fail_max 2) per keyword, with that reset timeout."""
    client = target.connect(1.0)
    board = BreakerBoard(client, prefix=prefix, retry_max_seconds=0.3)
    breakers = {
        name: board.breaker(name, fail_max=2, reset_seconds=reset) for name, reset in resets.items()
    }
    await board.start()
    try:
        yield breakers
    finally:
        await board.aclose()
        await client.aclose()


@pytest.fixture
def prefix() -> str:
    return f"test:{uuid.uuid4().hex[:8]}"


@pytest.fixture
def redis_process() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


async def trip(guarded: Breaker) -> None:
    for _ in range(2):
        await fail(guarded, rpc_error(grpc.StatusCode.UNAVAILABLE))
    assert guarded.state == OPEN


async def close_by_trial(guarded: Breaker) -> None:
    await wait_until(lambda: guarded.open_remaining() == 0, within=5, message="reset timeout")
    await succeed(guarded)
    assert guarded.state == CLOSED


async def test_an_open_circuit_opens_and_closes_on_every_replica(
    any_redis: RedisTarget, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        board_messages(any_redis, prefix) as messages,
        replica(any_redis, prefix, llm=0.5) as first,
        replica(any_redis, prefix, llm=60) as second,
    ):
        await trip(first["llm"])
        await wait_until(lambda: second["llm"].state == OPEN, within=1.0, message="shared open")
        with pytest.raises(CircuitOpen), second["llm"].calling(FULL):
            pytest.fail("the other replica's open circuit must refuse the call here too")

        await close_by_trial(first["llm"])
        # No call goes through `second`: only the shared transition can close it.
        await wait_until(lambda: second["llm"].state == CLOSED, within=1.0, message="shared close")

    # The first failure's count, then each transition once: nobody echoed them.
    assert [m.get("state", m.get("failures")) for m in messages] == [1, OPEN, CLOSED]
    assert transitions(caplog, "llm") == [
        ("WARNING", OPEN, "this replica"),
        ("WARNING", OPEN, "another replica"),
        ("INFO", HALF_OPEN, "this replica"),
        ("INFO", CLOSED, "this replica"),
        ("INFO", CLOSED, "another replica"),
    ]


@asynccontextmanager
async def board_messages(target: RedisTarget, prefix: str) -> AsyncIterator[list[dict[str, Any]]]:
    """What the boards publish on their channel while the block runs, in order (the list is
    filled when the block ends)."""
    listener = target.connect(1.0)
    await redisconn.ready(listener)
    published = listener.pubsub()
    await published.subscribe(f"{prefix}:transitions")
    messages: list[dict[str, Any]] = []
    try:
        yield messages
        while (message := await published.get_message(timeout=0.2)) is not None:
            if message["type"] == "message":
                messages.append(json.loads(message["data"]))
    finally:
        await published.aclose()
        await listener.aclose()


async def test_failures_spread_over_replicas_open_the_circuit_once_at_fail_max(
    any_redis: RedisTarget, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        replica(any_redis, prefix, llm=60) as first,
        replica(any_redis, prefix, llm=60) as second,
    ):
        await fail(first["llm"], rpc_error(grpc.StatusCode.UNAVAILABLE))
        await wait_until(lambda: second["llm"].failures == 1, within=2, message="shared count")
        assert second["llm"].state == CLOSED
        await fail(second["llm"], rpc_error(grpc.StatusCode.UNAVAILABLE))
        assert second["llm"].state == OPEN  # two failures in all: fail_max, not two per replica
        await wait_until(lambda: first["llm"].state == OPEN, within=2, message="shared open")
    assert transitions(caplog, "llm") == [
        ("WARNING", OPEN, "this replica"),
        ("WARNING", OPEN, "another replica"),
    ]


async def test_a_success_anywhere_ends_the_run_and_steady_success_publishes_nothing(
    any_redis: RedisTarget, prefix: str
) -> None:
    async with (
        board_messages(any_redis, prefix) as messages,
        replica(any_redis, prefix, llm=60) as first,
        replica(any_redis, prefix, llm=60) as second,
    ):
        for _ in range(50):
            await succeed(first["llm"])
        await fail(first["llm"], rpc_error(grpc.StatusCode.UNAVAILABLE))
        await wait_until(lambda: second["llm"].failures == 1, within=2, message="shared count")
        await succeed(second["llm"])
        await wait_until(lambda: first["llm"].failures == 0, within=2, message="shared reset")
        for _ in range(50):
            await succeed(first["llm"])
            await succeed(second["llm"])
        # Not in a row: one failure on each side of a success elsewhere never opens.
        await fail(first["llm"], rpc_error(grpc.StatusCode.UNAVAILABLE))
        assert first["llm"].state == CLOSED
    assert [(m["reset"], m["failures"]) for m in messages] == [(False, 1), (True, 0), (False, 1)]


async def test_failures_ending_together_on_both_replicas_open_both_at_once(
    any_redis: RedisTarget, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        replica(any_redis, prefix, llm=60) as first,
        replica(any_redis, prefix, llm=60) as second,
    ):
        # A hang timing out everywhere at once: one failure each before either hears of the
        # other's (the boards publish only once the loop runs their tasks).
        await asyncio.gather(
            fail(first["llm"], rpc_error(grpc.StatusCode.UNAVAILABLE)),
            fail(second["llm"], rpc_error(grpc.StatusCode.UNAVAILABLE)),
        )
        await wait_until(
            lambda: first["llm"].state == second["llm"].state == OPEN,
            within=2,
            message="both open on the shared count, without a third failing call",
        )


async def test_a_runaway_count_stalls_nothing_and_a_forged_one_breaks_nothing(
    any_redis: RedisTarget, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    sender = any_redis.connect(1.0)
    await redisconn.ready(sender)
    async with replica(any_redis, prefix, llm=60, speech=60) as only:
        channel = f"{prefix}:transitions"
        base = {"origin": "elsewhere", "dependency": "speech"}
        async with StallMeter() as meter:
            await sender.publish(channel, json.dumps({**base, "reset": False, "failures": 10**9}))
            await wait_until(lambda: only["speech"].state == OPEN, within=2, message="counted")
        assert meter.max_gap < 0.5  # counted as fail_max failures, not looped a billion times
        base["dependency"] = "llm"
        for bad in (
            {**base, "reset": "yes", "failures": 1},
            {**base, "reset": False, "failures": True},
            {**base, "reset": False, "failures": 1.5},
            {**base, "dependency": ["llm"], "reset": False, "failures": 1},
        ):
            await sender.publish(channel, json.dumps(bad))
        await wait_until(
            lambda: sum("unreadable" in r.getMessage() for r in caplog.records) == 4,
            within=2,
            message="forged counts refused",
        )
        await sender.publish(channel, json.dumps({**base, "reset": False, "failures": 1}))
        await wait_until(lambda: only["llm"].failures == 1, within=2, message="a good count")
        assert only["llm"].state == CLOSED
        await succeed(only["llm"])
        assert only["llm"].failures == 0
    await sender.aclose()


async def test_a_replica_that_starts_later_sees_the_open_circuit(
    any_redis: RedisTarget, prefix: str
) -> None:
    probe = any_redis.connect(1.0)
    async with replica(any_redis, prefix, llm=60) as first:
        await trip(first["llm"])
        await wait_until(
            lambda: probe.exists(f"{prefix}:llm:open"), within=2, message="shared state key"
        )
        assert 0 < await probe.pttl(f"{prefix}:llm:open") <= 60_000
        async with replica(any_redis, prefix, llm=60) as late:
            assert late["llm"].state == OPEN
            assert 50 < late["llm"].open_remaining() <= 60
    await probe.aclose()


async def calls_while_away(shared: Breaker, local: Breaker) -> float:
    """Trip `shared`; trip and close `local`; fail fast on both. Returns the slowest call."""
    slowest = 0.0

    async def timed(action: Awaitable[None]) -> None:
        nonlocal slowest
        start = time.monotonic()
        await action
        slowest = max(slowest, time.monotonic() - start)

    async def refused(guarded: Breaker) -> None:
        with pytest.raises(CircuitOpen), guarded.calling(FULL):
            pass

    await timed(trip(shared))
    for _ in range(20):
        await timed(refused(shared))
    await timed(trip(local))
    await timed(refused(local))
    await close_by_trial(local)
    return slowest


async def test_a_paused_redis_stalls_nothing_and_sharing_resumes(
    redis_process: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = RedisTarget(redis_process.url)
    async with (
        replica(url, prefix, llm=60, speech=0.2) as first,
        replica(url, prefix, llm=60, speech=0.2) as second,
    ):
        redis_process.pause()
        async with StallMeter() as meter:
            slowest = await calls_while_away(first["llm"], first["speech"])
            # The publisher meets the paused server's socket timeout (1 s) in the background.
            await wait_until(
                lambda: any("not shared" in r.getMessage() for r in caplog.records),
                within=5,
                message="outage noticed",
            )
        assert slowest < 0.1  # each call is in-memory: no Redis round trip on the calling path
        assert meter.max_gap < 0.5  # a blocking Redis call would stall the loop >= 1 s
        assert second["llm"].state == CLOSED

        redis_process.resume()
        await wait_until(
            lambda: second["llm"].state == OPEN, within=5, message="open shared after pause"
        )
    assert transitions(caplog, "llm") == [
        ("WARNING", OPEN, "this replica"),
        ("WARNING", OPEN, "another replica"),
    ]


async def test_a_killed_redis_stalls_nothing_and_sharing_resumes_after_restart(
    redis_process: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = RedisTarget(redis_process.url)
    async with (
        replica(url, prefix, llm=60, speech=0.2) as first,
        replica(url, prefix, llm=60, speech=0.2) as second,
    ):
        redis_process.kill()
        async with StallMeter() as meter:
            slowest = await calls_while_away(first["llm"], first["speech"])
            # Another open and close while Redis is still away: still one warning for it all.
            await trip(first["speech"])
            await close_by_trial(first["speech"])
            await wait_until(
                lambda: sum("not received" in r.getMessage() for r in caplog.records) == 2,
                within=5,
                message="both subscribers notice",
            )
        assert slowest < 0.1
        assert meter.max_gap < 0.5
        assert second["llm"].state == CLOSED

        redis_process.start()
        await wait_until(
            lambda: second["llm"].state == OPEN, within=5, message="open shared after restart"
        )
        await wait_until(
            lambda: any("shared again" in r.getMessage() for r in caplog.records),
            within=5,
            message="publisher recovered",
        )
    not_shared = [r for r in caplog.records if "not shared" in r.getMessage()]
    not_received = [r for r in caplog.records if "not received" in r.getMessage()]
    assert len(not_shared) == 1  # first's publisher, once for the whole outage
    assert len(not_received) == 2  # each board's subscriber, once for the whole outage
    assert [t for t in transitions(caplog, "llm") if t[1] == OPEN] == [
        ("WARNING", OPEN, "this replica"),
        ("WARNING", OPEN, "another replica"),
    ]
