"""Rate limits (GCRA) per user, per caller and global: the same behaviour in-process and in a
real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from services.common import redisconn
from services.orchestrator.keys import caller_key, global_key, lookalike, user_key
from services.orchestrator.limits import (
    MemoryRateLimiter,
    Rate,
    RateLimiter,
    RedisRateLimiter,
)
from tests.support.clock import Clock
from tests.support.loop import wait_until
from tests.support.redis_cluster import RedisTarget, every_key, flush_scripts, key_count

# Limits that never refuse within a test.
UNLIMITED = Rate(per_second=1e6, burst=1_000_000)


def burst(n: int) -> Rate:
    """A limit that does not come back within a test: its burst is all there is."""
    return Rate(per_second=0.01, burst=n)


@dataclass
class Backend:
    name: str
    make: Callable[..., RateLimiter]  # (user=, global_=, caller=) -> a limiter
    # Let `seconds` pass for the limiter: a fake clock in-process, real time for Redis (whose
    # script reads the server's clock, so no other wait is observable).
    wait: Callable[[float], Awaitable[None]]
    client: redisconn.Client | None = None


@pytest.fixture(params=["memory", "redis", "cluster"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        clock = Clock()

        async def advance(seconds: float) -> None:
            clock.now += seconds

        def memory(*, user: Rate, global_: Rate, caller: Rate | None = None) -> RateLimiter:
            return MemoryRateLimiter(user=user, global_=global_, caller=caller, clock=clock)

        yield Backend("memory", memory, advance)
        return
    client = request.getfixturevalue(f"{request.param}_target").connect(2.0)
    await redisconn.ready(client)  # a timing test must not time the cluster's discovery

    def shared(*, user: Rate, global_: Rate, caller: Rate | None = None) -> RateLimiter:
        return RedisRateLimiter(client, user=user, global_=global_, caller=caller)

    try:
        yield Backend("redis", shared, asyncio.sleep, client)
    finally:
        await client.aclose()


async def allowed(limiter: RateLimiter, user_id: str, caller: str = "") -> bool:
    return (await limiter.check(user_id, caller)).allowed


async def refused_by(limiter: RateLimiter, user_id: str, caller: str = "") -> str:
    """The scope that refuses the request, "" when it is allowed (and then takes its slots)."""
    decision = await limiter.check(user_id, caller)
    assert decision.allowed == (decision.scope == "")
    assert (decision.retry_after_seconds > 0) == (not decision.allowed)
    return decision.scope


# --- one limit ---------------------------------------------------------------------------------


async def test_a_burst_passes_then_the_next_waits_exactly_one_interval(backend: Backend) -> None:
    limiter = backend.make(user=Rate(per_second=20, burst=3), global_=UNLIMITED)
    for _ in range(3):
        assert await allowed(limiter, "u")
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
    assert await allowed(limiter, "u")
    assert not await allowed(limiter, "u"), "one interval buys one request"


async def test_the_global_limit_refuses_across_users(backend: Backend) -> None:
    limiter = backend.make(user=UNLIMITED, global_=Rate(per_second=1, burst=3))
    assert [await allowed(limiter, f"user-{i}") for i in range(3)] == [True] * 3
    refused = await limiter.check("user-3")
    assert (refused.allowed, refused.scope) == (False, "global")
    assert refused.retry_after_seconds == pytest.approx(1.0, abs=0.05)


async def test_a_callers_burst_is_shared_by_all_the_user_ids_it_sends(backend: Backend) -> None:
    limiter = backend.make(user=burst(1), caller=burst(3), global_=UNLIMITED)
    # A caller that rotates user ids: each id is fresh, the caller's own allowance is not.
    assert [await refused_by(limiter, f"rotated-{i}", "backend") for i in range(5)] == [
        "",
        "",
        "",
        "caller",
        "caller",
    ]
    refused = await limiter.check("rotated-9", "backend")
    assert refused.retry_after_seconds == pytest.approx(100.0, abs=0.1)
    # Another caller has its own allowance, for the same ids as for others.
    assert await refused_by(limiter, "rotated-3", "other") == ""
    assert await refused_by(limiter, "rotated-0", "other") == "user"


async def test_without_a_caller_limit_only_users_and_everyone_are_limited(
    backend: Backend,
) -> None:
    limiter = backend.make(user=burst(1), global_=UNLIMITED)
    assert all([await allowed(limiter, f"rotated-{i}", "backend") for i in range(20)])


async def test_look_alike_user_ids_share_one_user_limit(backend: Backend) -> None:
    limiter = backend.make(user=burst(2), global_=UNLIMITED)
    spellings = ["alice", "ａｌｉｃｅ", "Alice ", " ALICE", "alice\u3000"]
    assert [await refused_by(limiter, s, "backend") for s in spellings] == [
        "",
        "",
        "user",
        "user",
        "user",
    ]
    assert [await refused_by(limiter, s) for s in ("ﾕｷ", "ユキ", "ユキ ")] == ["", "", "user"]
    # Ids that only resemble one another are still different users.
    assert await refused_by(limiter, "alice2", "backend") == ""
    assert await refused_by(limiter, "a lice", "backend") == ""
    assert await refused_by(limiter, "ゆき") == ""  # hiragana: another word than katakana ユキ


def test_look_alike_spellings_are_one_and_different_names_stay_apart() -> None:
    assert {lookalike(s) for s in ("alice", "ａｌｉｃｅ", "Alice ", "ALICE", "a l i c e")} == {
        "alice",
        "a l i c e",
    }
    assert lookalike("ﾕｷ") == lookalike("ユキ") != lookalike("ゆき")
    assert lookalike("  a \t b\n") == "a b"


# --- a refusal takes nothing from the other limits ---------------------------------------------


async def test_a_user_over_their_limit_costs_no_one_else_anything(backend: Backend) -> None:
    limiter = backend.make(
        user=Rate(per_second=1, burst=2),
        caller=Rate(per_second=1, burst=3),
        global_=Rate(per_second=1, burst=4),
    )
    outcomes = [await refused_by(limiter, "noisy", "A") for _ in range(6)]
    assert outcomes == ["", "", "user", "user", "user", "user"]
    # The four refusals took no caller slot: one is left for caller A...
    assert await refused_by(limiter, "quiet", "A") == ""
    assert await refused_by(limiter, "quiet", "A") == "caller"
    # ...and no global slot: one is left for everyone.
    assert await refused_by(limiter, "third", "B") == ""
    assert await refused_by(limiter, "fourth", "C") == "global"


async def test_a_caller_over_its_limit_takes_nothing_from_its_users_or_everyone(
    backend: Backend,
) -> None:
    limiter = backend.make(user=burst(2), caller=burst(2), global_=burst(4))
    assert await refused_by(limiter, "alice", "A") == ""
    assert await refused_by(limiter, "bob", "A") == ""
    for _ in range(5):
        assert await refused_by(limiter, "alice", "A") == "caller"
    # alice has one request left, through another caller, and everyone two.
    assert await refused_by(limiter, "alice", "B") == ""
    assert await refused_by(limiter, "alice", "B") == "user"
    assert await refused_by(limiter, "carol", "C") == ""
    assert await refused_by(limiter, "dave", "D") == "global"


async def test_a_global_refusal_takes_nothing_from_the_user_or_caller(backend: Backend) -> None:
    limiter = backend.make(user=burst(1), caller=burst(1), global_=Rate(per_second=20, burst=1))
    assert await refused_by(limiter, "first", "A") == ""
    refused = await limiter.check("second", "B")
    assert refused.scope == "global"
    await backend.wait(refused.retry_after_seconds)
    # Had the refusal taken the one slot of "second" or of B, this would be refused by it.
    assert await refused_by(limiter, "second", "B") == ""


# --- concurrency, erasure, bounds --------------------------------------------------------------


async def test_concurrent_checks_admit_exactly_the_burst(backend: Backend) -> None:
    limiter = backend.make(user=burst(10), global_=UNLIMITED)
    decisions = await asyncio.gather(*(limiter.check("u") for _ in range(50)))
    assert sum(d.allowed for d in decisions) == 10


async def test_concurrent_checks_of_many_users_respect_the_global_burst(backend: Backend) -> None:
    limiter = backend.make(user=UNLIMITED, global_=burst(10))
    decisions = await asyncio.gather(*(limiter.check(f"u{i}") for i in range(50)))
    assert sum(d.allowed for d in decisions) == 10
    assert {d.scope for d in decisions if not d.allowed} == {"global"}


async def test_concurrent_checks_through_one_caller_respect_its_burst(backend: Backend) -> None:
    limiter = backend.make(user=UNLIMITED, caller=burst(10), global_=UNLIMITED)
    decisions = await asyncio.gather(*(limiter.check(f"u{i}", "backend") for i in range(50)))
    assert sum(d.allowed for d in decisions) == 10
    assert {d.scope for d in decisions if not d.allowed} == {"caller"}


async def test_erase_gives_a_user_a_fresh_limit_and_only_them(backend: Backend) -> None:
    limiter = backend.make(user=burst(1), global_=UNLIMITED)
    for user in ("*", "a*", "alice"):
        assert await allowed(limiter, user)
        assert not await allowed(limiter, user)
    assert await limiter.erase("*") == 1
    assert await limiter.erase("*") == 0
    assert await allowed(limiter, "*")
    assert not await allowed(limiter, "a*")
    # Erasing a spelling erases the user it stands for.
    assert await limiter.erase("ＡＬＩＣＥ") == 1
    assert await allowed(limiter, "alice")


def test_rates_must_be_positive() -> None:
    with pytest.raises(ValueError, match="per_second"):
        Rate(per_second=0, burst=1)
    with pytest.raises(ValueError, match="burst"):
        Rate(per_second=1, burst=0)


async def test_memory_limiter_stays_bounded_and_keeps_the_recent_users() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(
        user=burst(1), caller=UNLIMITED, global_=UNLIMITED, max_users=1_000, clock=clock
    )
    for i in range(20_000):
        assert await allowed(limiter, f"u{i}", f"c{i}")
    assert len(limiter) == 1_000
    assert not await allowed(limiter, "u19999"), "a recent user is still limited"


async def test_redis_keys_expire_when_the_limits_are_idle_again(any_redis: RedisTarget) -> None:
    client = any_redis.connect(2.0)
    try:
        limiter = RedisRateLimiter(
            client,
            user=Rate(per_second=2, burst=3),
            caller=Rate(per_second=4, burst=3),
            global_=Rate(per_second=10, burst=5),
        )
        assert await allowed(limiter, "*", "backend")
        # TAT is one interval ahead, and that is when each key goes.
        assert 300 < await client.pttl(user_key(lookalike("*"), "ratelimit")) <= 500
        assert 100 < await client.pttl(caller_key("backend", "ratelimit")) <= 250
        assert 0 < await client.pttl(global_key("ratelimit")) <= 100
        assert await every_key(client, "*[*]*") == [], "no key carries the raw user id"
        assert await every_key(client, "*backend*") == [], "no key carries the raw caller name"

        async def no_keys_left() -> bool:
            return await key_count(client) == 0

        await wait_until(no_keys_left, within=5, message="idle limits gone")
    finally:
        await client.aclose()


async def test_redis_limits_survive_a_server_that_lost_its_scripts(
    any_redis: RedisTarget,
) -> None:
    client = any_redis.connect(2.0)
    try:
        limiter = RedisRateLimiter(client, user=burst(2), caller=burst(5), global_=burst(10))
        assert await refused_by(limiter, "alice", "A") == ""
        await flush_scripts(client)  # as after a restart or failover
        assert await refused_by(limiter, "alice", "A") == ""
        await flush_scripts(client)
        assert await refused_by(limiter, "alice", "A") == "user"
        # The refusal gave the caller's and the global slots back: three are left.
        assert [await refused_by(limiter, u, "A") for u in ("bob", "carol", "dave", "erin")] == [
            "",
            "",
            "",
            "caller",
        ]
    finally:
        await client.aclose()
