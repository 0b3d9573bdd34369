"""Circuit breakers: shared by replicas through Redis, blind to callers' own mistakes."""

from __future__ import annotations

import asyncio

import pybreaker
import pytest

from services.common.breakers import make_breaker
from tests.support.ports import free_port


class Unwell(Exception):
    pass


class CallerMistake(Exception):
    pass


async def failing(error: Exception) -> None:
    await asyncio.sleep(0)
    raise error


async def fail(breaker: pybreaker.CircuitBreaker, error: Exception) -> None:
    with pytest.raises((type(error), pybreaker.CircuitBreakerError)), breaker.calling():
        await failing(error)


async def test_an_open_circuit_is_seen_by_every_replica(redis_url: str) -> None:
    first = make_breaker("shared", fail_max=2, reset_seconds=60, redis_url=redis_url)
    second = make_breaker("shared", fail_max=2, reset_seconds=60, redis_url=redis_url)
    for _ in range(2):
        await fail(first, Unwell())
    assert second.current_state == pybreaker.STATE_OPEN
    with pytest.raises(pybreaker.CircuitBreakerError), second.calling():
        pytest.fail("an open circuit must not let the call through")


async def test_excluded_errors_and_cancellation_do_not_count() -> None:
    breaker = make_breaker(
        "picky",
        fail_max=1,
        reset_seconds=60,
        exclude=[lambda error: isinstance(error, CallerMistake)],
    )
    await fail(breaker, CallerMistake())
    with pytest.raises(asyncio.CancelledError), breaker.calling():
        raise asyncio.CancelledError
    assert breaker.current_state == pybreaker.STATE_CLOSED
    await fail(breaker, Unwell())
    assert breaker.current_state == pybreaker.STATE_OPEN


async def test_unreachable_redis_keeps_the_breaker_in_process() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    breaker = make_breaker("lonely", fail_max=1, reset_seconds=60, redis_url=dead)
    await fail(breaker, Unwell())
    assert breaker.current_state == pybreaker.STATE_OPEN
