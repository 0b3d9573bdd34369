"""Rate limits (GCRA): the same behaviour in-process and in a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from services.common import redisconn
from services.orchestrator.keys import global_key, user_key
from services.orchestrator.limits import (
    MemoryRateLimiter,
    Rate,
    RateLimiter,
    RedisRateLimiter,
)
from tests.support.clock import Clock

# Limits that never refuse within a test.
UNLIMITED = Rate(per_second=1e6, burst=1_000_000)


@dataclass
class Backend:
    name: str
    make: Callable[[Rate, Rate], RateLimiter]
    # Let `seconds` pass for the limiter: a fake clock in-process, real time for Redis (whose
    # script reads the server's clock, so no other wait is observable).
    wait: Callable[[float], Awaitable[None]]


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        clock = Clock()

        async def advance(seconds: float) -> None:
            clock.now += seconds

        yield Backend(
            "memory",
            lambda user, global_: MemoryRateLimiter(user=user, global_=global_, clock=clock),
            advance,
        )
        return
    client = redisconn.connect(request.getfixturevalue("redis_url"), 2.0)
    try:
        yield Backend(
            "redis",
            lambda user, global_: RedisRateLimiter(client, user=user, global_=global_),
            asyncio.sleep,
        )
    finally:
        await client.aclose()


async def test_a_burst_passes_then_the_next_waits_exactly_one_interval(backend: Backend) -> None:
    limiter = backend.make(Rate(per_second=20, burst=3), UNLIMITED)
    for _ in range(3):
        assert (await limiter.check("u")).allowed
    refused = await limiter.check("u")
    assert not refused.allowed
    assert refused.scope == "user"
    # 1/20 s, less the little real time the burst itself took in Redis.
    assert 0.04 < refused.retry_after_seconds <= 0.05 + 1e-6

    await backend.wait(refused.retry_after_seconds * 0.4)
    early = await limiter.check("u")
    assert not early.allowed, "refused requests must not have moved the limit"
    assert 0 < early.retry_after_seconds <= refused.retry_after_seconds * 0.6 + 1e-6

    await backend.wait(early.retry_after_seconds)
    assert (await limiter.check("u")).allowed
    assert not (await limiter.check("u")).allowed, "one interval buys one request"


async def test_the_global_limit_refuses_across_users(backend: Backend) -> None:
    limiter = backend.make(UNLIMITED, Rate(per_second=1, burst=3))
    assert [(await limiter.check(f"user-{i}")).allowed for i in range(3)] == [True] * 3
    refused = await limiter.check("user-3")
    assert (refused.allowed, refused.scope) == (False, "global")
    assert refused.retry_after_seconds == pytest.approx(1.0, abs=0.05)


async def test_a_user_over_their_limit_costs_no_one_else_anything(backend: Backend) -> None:
    limiter = backend.make(Rate(per_second=1, burst=2), Rate(per_second=1, burst=4))
    outcomes = [await limiter.check("noisy") for _ in range(6)]
    assert [d.allowed for d in outcomes] == [True, True, False, False, False, False]
    assert {d.scope for d in outcomes[2:]} == {"user"}
    # The four refusals took no global slot: two are left, and they go to someone else.
    assert (await limiter.check("quiet")).allowed
    assert (await limiter.check("quiet")).allowed
    assert (await limiter.check("third")).scope == "global"


async def test_concurrent_checks_admit_exactly_the_burst(backend: Backend) -> None:
    limiter = backend.make(Rate(per_second=0.01, burst=10), UNLIMITED)
    decisions = await asyncio.gather(*(limiter.check("u") for _ in range(50)))
    assert sum(d.allowed for d in decisions) == 10


async def test_concurrent_checks_of_many_users_respect_the_global_burst(backend: Backend) -> None:
    limiter = backend.make(UNLIMITED, Rate(per_second=0.01, burst=10))
    decisions = await asyncio.gather(*(limiter.check(f"u{i}") for i in range(50)))
    assert sum(d.allowed for d in decisions) == 10
    assert {d.scope for d in decisions if not d.allowed} == {"global"}


async def test_erase_gives_a_user_a_fresh_limit_and_only_them(backend: Backend) -> None:
    limiter = backend.make(Rate(per_second=0.01, burst=1), UNLIMITED)
    for user in ("*", "a*"):
        assert (await limiter.check(user)).allowed
        assert not (await limiter.check(user)).allowed
    assert await limiter.erase("*") == 1
    assert await limiter.erase("*") == 0
    assert (await limiter.check("*")).allowed
    assert not (await limiter.check("a*")).allowed


def test_rates_must_be_positive() -> None:
    with pytest.raises(ValueError, match="per_second"):
        Rate(per_second=0, burst=1)
    with pytest.raises(ValueError, match="burst"):
        Rate(per_second=1, burst=0)


async def test_memory_limiter_stays_bounded_and_keeps_the_recent_users() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(
        user=Rate(per_second=0.01, burst=1), global_=UNLIMITED, max_users=1_000, clock=clock
    )
    for i in range(100_000):
        assert (await limiter.check(f"u{i}")).allowed
    assert len(limiter) == 1_000
    assert not (await limiter.check("u99999")).allowed, "a recent user is still limited"


async def test_redis_keys_expire_when_the_limit_is_idle_again(redis_url: str) -> None:
    client = redisconn.connect(redis_url, 2.0)
    try:
        limiter = RedisRateLimiter(
            client, user=Rate(per_second=0.5, burst=3), global_=Rate(per_second=10, burst=5)
        )
        assert (await limiter.check("*")).allowed
        # TAT is one interval ahead, and that is when the key goes.
        assert 1_900 < await client.pttl(user_key("*", "ratelimit")) <= 2_000
        assert 90 < await client.pttl(global_key("ratelimit")) <= 100
        assert await client.keys("*[*]*") == [], "no key carries the raw user id"
    finally:
        await client.aclose()
