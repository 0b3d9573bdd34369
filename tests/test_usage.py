"""The usage ledger and budgets: the same behaviour in-process and in a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
import redis.asyncio as redis

from services.common import redisconn
from services.orchestrator.keys import global_key, user_key, user_tag
from services.orchestrator.model import UsageTotals
from services.orchestrator.usage import (
    Budgets,
    MemoryUsageLedger,
    RedisUsageLedger,
    UsageLedger,
    over_budget,
)

NOV_30_LATE = datetime(2026, 11, 30, 23, 59, tzinfo=UTC)
DEC_1_EARLY = datetime(2026, 12, 1, 0, 1, tzinfo=UTC)
DEC_2 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


async def record(
    ledger: UsageLedger,
    user_id: str,
    now: datetime,
    *,
    prompt: int = 0,
    completion: int = 0,
    tts: int = 0,
    cost: float = 0.0,
) -> None:
    await ledger.record(
        user_id,
        prompt_tokens=prompt,
        completion_tokens=completion,
        tts_characters=tts,
        cost_usd=cost,
        now=now,
    )


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.Redis]:
    client = redisconn.connect(redis_url, 2.0)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(params=["memory", "redis"])
def ledger(request: pytest.FixtureRequest) -> UsageLedger:
    if request.param == "memory":
        return MemoryUsageLedger()
    return RedisUsageLedger(request.getfixturevalue("redis_client"))


async def test_records_sum_per_user_and_globally(ledger: UsageLedger) -> None:
    await record(ledger, "a", DEC_2, prompt=100, completion=20, tts=30, cost=0.25)
    await record(ledger, "a", DEC_2, prompt=1, completion=2, tts=0, cost=0.5)
    await record(ledger, "b", DEC_2, prompt=10, completion=10, tts=10, cost=1.0)

    a = await ledger.report("a", DEC_2)
    mine = UsageTotals(
        turns=2, prompt_tokens=101, completion_tokens=22, tts_characters=30, cost_usd=0.75
    )
    everyone = UsageTotals(
        turns=3, prompt_tokens=111, completion_tokens=32, tts_characters=40, cost_usd=1.75
    )
    assert (a.user_today, a.user_month, a.global_today, a.global_month) == (
        mine,
        mine,
        everyone,
        everyone,
    )
    assert (await ledger.report("nobody", DEC_2)).user_month == UsageTotals()


async def test_a_new_utc_day_and_month_start_from_zero(ledger: UsageLedger) -> None:
    await record(ledger, "a", NOV_30_LATE, prompt=5, cost=0.5)
    assert (await ledger.report("a", NOV_30_LATE)).user_today.prompt_tokens == 5

    fresh = await ledger.report("a", DEC_1_EARLY)
    assert fresh.user_today == fresh.user_month == fresh.global_month == UsageTotals()

    await record(ledger, "a", DEC_1_EARLY, prompt=7, cost=0.25)
    await record(ledger, "a", DEC_2, prompt=11, cost=0.125)
    dec_2 = await ledger.report("a", DEC_2)
    assert (dec_2.user_today.prompt_tokens, dec_2.user_month.prompt_tokens) == (11, 18)
    assert (dec_2.global_today.turns, dec_2.global_month.turns) == (1, 2)
    assert dec_2.user_month.cost_usd == 0.375


async def test_periods_are_utc_whatever_the_callers_zone(ledger: UsageLedger) -> None:
    tokyo = timezone(timedelta(hours=9))
    # 08:30 on Dec 1 in Tokyo is still Nov 30 in UTC.
    await record(ledger, "a", datetime(2026, 12, 1, 8, 30, tzinfo=tokyo), prompt=3)
    assert (await ledger.report("a", NOV_30_LATE)).user_today.prompt_tokens == 3
    with pytest.raises(ValueError, match="timezone"):
        await ledger.report("a", datetime(2026, 12, 1))


async def test_cost_sums_exactly(ledger: UsageLedger) -> None:
    for _ in range(10):
        await record(ledger, "a", DEC_2, cost=0.1)
    report = await ledger.report("a", DEC_2)
    assert report.user_today.cost_usd == 1.0  # a float sum of ten 0.1s is 0.9999999999999999
    assert report.global_month.cost_usd == 1.0
    assert await ledger.spent("a", DEC_2) == (1.0, 1.0)


async def test_spent_is_the_users_day_and_everyones_month(ledger: UsageLedger) -> None:
    await record(ledger, "a", DEC_1_EARLY, cost=0.25)
    await record(ledger, "b", DEC_2, cost=0.5)
    await record(ledger, "a", NOV_30_LATE, cost=8.0)  # last month counts for nothing
    assert await ledger.spent("a", DEC_2) == (0.0, 0.75)
    assert await ledger.spent("b", DEC_2) == (0.5, 0.75)
    assert await ledger.spent("a", DEC_1_EARLY) == (0.25, 0.75)


async def test_bad_amounts_are_refused_and_not_counted(ledger: UsageLedger) -> None:
    with pytest.raises(ValueError, match="negative"):
        await record(ledger, "a", DEC_2, prompt=-1)
    with pytest.raises(ValueError, match="cost"):
        await record(ledger, "a", DEC_2, cost=float("nan"))
    assert (await ledger.report("a", DEC_2)).global_month == UsageTotals()


async def test_erase_zeroes_the_user_only_and_keeps_global_totals(ledger: UsageLedger) -> None:
    users = ("*", "a*", "{x}")
    for user_id in users:
        await record(ledger, user_id, NOV_30_LATE, prompt=1, cost=0.5)
        await record(ledger, user_id, DEC_1_EARLY, prompt=2, cost=1.5)
    global_before = (await ledger.report("*", DEC_1_EARLY)).global_month

    assert await ledger.erase("*") > 0
    assert await ledger.erase("*") == 0
    for now in (NOV_30_LATE, DEC_1_EARLY):
        gone = await ledger.report("*", now)
        assert gone.user_today == gone.user_month == UsageTotals()
    assert await ledger.spent("*", DEC_1_EARLY) == (0.0, 4.5)
    for other in users[1:]:
        kept = await ledger.report(other, DEC_1_EARLY)
        assert (kept.user_today.prompt_tokens, kept.user_month.cost_usd) == (2, 1.5)
    after = await ledger.report("a*", DEC_1_EARLY)
    assert (
        after.global_month == global_before == UsageTotals(turns=3, prompt_tokens=6, cost_usd=4.5)
    )


async def test_concurrent_records_are_all_counted(ledger: UsageLedger) -> None:
    # 80: below the client's default pool of 100 connections.
    await asyncio.gather(
        *(record(ledger, f"u{i % 4}", DEC_2, prompt=1, tts=2, cost=0.01) for i in range(80))
    )
    report = await ledger.report("u0", DEC_2)
    assert (report.user_today.turns, report.user_today.prompt_tokens) == (20, 20)
    assert report.global_today == UsageTotals(
        turns=80, prompt_tokens=80, tts_characters=160, cost_usd=0.8
    )


@pytest.mark.parametrize(
    ("spent", "budgets", "verdict"),
    [
        ((0.0, 0.0), Budgets(user_daily_usd=0, global_monthly_usd=0), ""),
        ((1e6, 1e9), Budgets(user_daily_usd=0, global_monthly_usd=0), ""),
        ((0.99, 10.0), Budgets(user_daily_usd=1.0, global_monthly_usd=100.0), ""),
        ((1.0, 10.0), Budgets(user_daily_usd=1.0, global_monthly_usd=100.0), "user_daily"),
        ((0.3, 0.0), Budgets(user_daily_usd=0.1 + 0.2, global_monthly_usd=0), "user_daily"),
        ((0.5, 100.0), Budgets(user_daily_usd=1.0, global_monthly_usd=100.0), "global_monthly"),
        ((5.0, 500.0), Budgets(user_daily_usd=0, global_monthly_usd=100.0), "global_monthly"),
        ((5.0, 500.0), Budgets(user_daily_usd=1.0, global_monthly_usd=100.0), "user_daily"),
    ],
)
def test_over_budget(spent: tuple[float, float], budgets: Budgets, verdict: str) -> None:
    assert over_budget(spent, budgets) == verdict


async def test_memory_ledger_stays_bounded() -> None:
    ledger = MemoryUsageLedger(max_users=100)
    for i in range(1_000):
        await record(ledger, f"u{i}", DEC_2, cost=0.01)
    assert len(ledger) == 100
    assert (await ledger.report("u999", DEC_2)).user_today.turns == 1
    assert (await ledger.report("u0", DEC_2)).user_today.turns == 0
    assert (await ledger.report("u0", DEC_2)).global_today.turns == 1_000


async def test_redis_layout_ttls_and_exact_erase(redis_client: redis.Redis) -> None:
    ledger = RedisUsageLedger(redis_client)
    await record(ledger, "*", DEC_1_EARLY, cost=0.1)
    await record(ledger, "a*", DEC_1_EARLY, cost=0.1)
    day = user_key("*", "usage:day:2026-12-01")
    month = user_key("*", "usage:month:2026-12")
    assert 0 < await redis_client.pttl(day) <= 3 * 86_400_000
    assert 3 * 86_400_000 < await redis_client.pttl(month) <= 40 * 86_400_000
    assert await redis_client.pttl(user_key("*", "usage:keys")) > 3 * 86_400_000
    assert 0 < await redis_client.pttl(global_key("{usage}:day:2026-12-01")) <= 3 * 86_400_000
    assert await redis_client.hget(month, "cost_nanousd") == b"100000000"

    assert await ledger.erase("*") == 2
    tag = user_tag("*")
    assert not [k for k in await redis_client.keys() if tag.encode() in k]
    assert len([k for k in await redis_client.keys() if user_tag("a*").encode() in k]) == 3


async def test_redis_index_forgets_expired_keys_only(redis_client: redis.Redis) -> None:
    ledger = RedisUsageLedger(
        redis_client, day_ttl=timedelta(milliseconds=30), month_ttl=timedelta(seconds=30)
    )
    index = user_key("daily", "usage:keys")
    for days in range(3):
        await record(ledger, "daily", DEC_1_EARLY + timedelta(days=days), cost=0.01)
    assert await redis_client.zcard(index) == 4  # three days, one month
    last_day = user_key("daily", "usage:day:2026-12-03")
    expires_ms = await redis_client.zscore(index, last_day)
    assert expires_ms is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while True:  # until the server's clock is past the last old day's expiry
        seconds, micros = await redis_client.time()
        if seconds * 1000 + micros // 1000 > expires_ms:
            break
        assert loop.time() < deadline, "the server's clock did not advance"
        await asyncio.sleep(0.01)
    assert not await redis_client.exists(last_day)

    await record(ledger, "daily", DEC_1_EARLY + timedelta(days=9), cost=0.01)
    assert sorted(await redis_client.zrange(index, 0, -1)) == [
        user_key("daily", "usage:day:2026-12-10").encode(),
        user_key("daily", "usage:month:2026-12").encode(),
    ]
    assert await ledger.erase("daily") == 2


async def test_redis_records_survive_a_server_that_lost_its_scripts(
    redis_client: redis.Redis,
) -> None:
    ledger = RedisUsageLedger(redis_client)
    await record(ledger, "a", DEC_2, cost=0.5)
    await redis_client.script_flush()  # as after a restart or failover
    await record(ledger, "a", DEC_2, cost=0.25)
    assert await ledger.spent("a", DEC_2) == (0.75, 0.75)
