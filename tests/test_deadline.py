"""A deadline as a value: one clock, the caller's deadline less a margin, and each call's budget
— which says whether the deadline, not the call's own bound, cut it short."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from services.common.deadline import (
    DEADLINE_MARGIN_SECONDS,
    Budget,
    Deadline,
    DeadlineExhausted,
)
from tests.support.clock import Clock


class Context:
    """What `from_context` reads of a grpc.aio.ServicerContext."""

    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_remaining_follows_the_clock(clock: Clock) -> None:
    deadline = Deadline.after(5, clock=clock)

    assert deadline.remaining() == 5
    assert not deadline.expired()
    clock.now += 4.5
    assert deadline.remaining() == pytest.approx(0.5)
    clock.now += 0.5
    assert deadline.remaining() == 0
    assert deadline.expired()
    clock.now += 3
    assert deadline.remaining() == pytest.approx(-3)
    assert deadline.expired()


def test_an_infinite_deadline_never_expires(clock: Clock) -> None:
    deadline = Deadline(math.inf, clock=clock)
    clock.now += 1e9

    assert deadline.remaining() == math.inf
    assert not deadline.expired()
    assert deadline.budget(2.0) == Budget(2.0, cut_short=False)
    assert deadline.budget() == Budget(math.inf, cut_short=False)


def test_from_context_takes_the_callers_deadline_less_the_margin(clock: Clock) -> None:
    deadline = Deadline.from_context(Context(3.0), default_seconds=30, clock=clock)

    assert deadline.remaining() == pytest.approx(3.0 - DEADLINE_MARGIN_SECONDS)
    assert DEADLINE_MARGIN_SECONDS > 0  # our answer must still reach the caller in time


def test_from_context_with_a_custom_margin(clock: Clock) -> None:
    deadline = Deadline.from_context(
        Context(3.0), default_seconds=30, margin_seconds=0.5, clock=clock
    )

    assert deadline.remaining() == pytest.approx(2.5)


@pytest.mark.parametrize("context", [Context(None), None], ids=["no-deadline", "no-context"])
def test_a_caller_without_a_deadline_gets_the_default(
    clock: Clock, context: Context | None
) -> None:
    deadline = Deadline.from_context(context, default_seconds=12, clock=clock)

    assert deadline.remaining() == 12  # no margin: nobody is waiting for a deadline


def test_a_caller_deadline_beyond_the_default_is_capped(clock: Clock) -> None:
    deadline = Deadline.from_context(Context(3600.0), default_seconds=20, clock=clock)

    assert deadline.remaining() == 20


def test_a_caller_deadline_shorter_than_the_margin_has_already_expired(clock: Clock) -> None:
    deadline = Deadline.from_context(Context(0.01), default_seconds=20, clock=clock)

    assert deadline.expired()
    assert not deadline.budget(1.0).usable


def test_from_context_reads_the_callers_time_once(clock: Clock) -> None:
    context = Context(3.0)
    deadline = Deadline.from_context(context, default_seconds=30, clock=clock)
    context.remaining = 100.0  # the deadline is a value now: a later reading changes nothing
    clock.now += 1

    assert deadline.remaining() == pytest.approx(2.0 - DEADLINE_MARGIN_SECONDS)


def test_a_budget_within_the_calls_own_bound_is_not_cut_short(clock: Clock) -> None:
    deadline = Deadline.after(10, clock=clock)

    budget = deadline.budget(2.0)

    assert budget == Budget(2.0, cut_short=False)
    assert budget.usable
    assert budget.require() == 2.0


def test_a_budget_the_deadline_shortens_is_cut_short(clock: Clock) -> None:
    deadline = Deadline.after(1.0, clock=clock)

    budget = deadline.budget(5.0)

    # A timeout within this budget is the caller's doing, not the dependency's: no breaker
    # may count it.
    assert budget.cut_short
    assert budget.seconds == pytest.approx(1.0 - DEADLINE_MARGIN_SECONDS)


def test_the_margin_and_reserve_come_off_the_deadline(clock: Clock) -> None:
    deadline = Deadline.after(10, clock=clock)

    assert deadline.budget(9.0, margin=0.5).seconds == 9.0
    reserved = deadline.budget(9.0, margin=0.5, reserve=2.0)
    assert reserved.seconds == pytest.approx(7.5)
    assert reserved.cut_short
    # With room for both, the reserve does not shorten the call.
    assert deadline.budget(3.0, margin=0.5, reserve=2.0) == Budget(3.0, cut_short=False)


def test_a_budget_shrinks_as_time_passes(clock: Clock) -> None:
    deadline = Deadline.after(4, clock=clock)

    first = deadline.budget(3.0, margin=0)
    clock.now += 2
    second = deadline.budget(3.0, margin=0)

    assert first == Budget(3.0, cut_short=False)
    assert second.seconds == pytest.approx(2.0)
    assert second.cut_short


@pytest.mark.parametrize("left", [0.0, -1.0], ids=["none-left", "past"])
def test_no_time_left_means_no_call(clock: Clock, left: float) -> None:
    deadline = Deadline.after(left, clock=clock)

    budget = deadline.budget(1.0, margin=0)

    assert budget.cut_short
    assert not budget.usable
    with pytest.raises(DeadlineExhausted):
        budget.require()


def test_the_reserve_can_use_up_the_budget(clock: Clock) -> None:
    deadline = Deadline.after(1.0, clock=clock)

    with pytest.raises(DeadlineExhausted):
        deadline.budget(5.0, margin=0.1, reserve=0.9).require()


async def test_timeout_cancels_an_awaiting_block() -> None:
    deadline = Deadline.after(0.1)
    blocked = asyncio.Event()  # never set

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with deadline.timeout():
            await blocked.wait()

    assert 0.05 <= time.monotonic() - started < 2.0


async def test_timeout_of_a_passed_deadline_cancels_at_once() -> None:
    deadline = Deadline.after(-5)

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with deadline.timeout():
            await asyncio.sleep(10)

    assert time.monotonic() - started < 1.0


async def test_timeout_lets_work_that_fits_finish() -> None:
    async with Deadline.after(5).timeout():
        await asyncio.sleep(0)
        value = 42
    async with Deadline(math.inf).timeout():
        await asyncio.sleep(0)

    assert value == 42


def test_repr_shows_what_remains(clock: Clock) -> None:
    assert repr(Deadline.after(1.5, clock=clock)) == "Deadline(remaining=1.500s)"
