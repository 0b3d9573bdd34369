"""Prices, the usage ledger and its budgets: the same behaviour in-process and in a real Redis."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import pytest

from services.common import redisconn
from services.orchestrator.keys import global_key, user_key, user_tag
from services.orchestrator.model import UsageTotals
from services.orchestrator.sessions import MemorySessionStore, RedisSessionStore, SessionStore
from services.orchestrator.usage import (
    Account,
    Bookkeeper,
    Budgets,
    BudgetSpent,
    Ledger,
    MemoryLedger,
    Prices,
    RedisLedger,
    Reservation,
    Usage,
    to_nanos,
)
from tests.support.loop import wait_until
from tests.support.redis_cluster import RedisTarget, every_key, flush_scripts
from tests.support.redis_server import RedisServer

NOV_30_LATE = datetime(2026, 11, 30, 23, 59, tzinfo=UTC)
DEC_1_EARLY = datetime(2026, 12, 1, 0, 1, tzinfo=UTC)
DEC_2 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
ALICE = Account("alice", "backend")
BOB = Account("bob", "other-backend")
HOLD = 60.0  # seconds: no hold lapses during a test unless the test is about that


def usd(amount: float) -> int:
    return to_nanos(amount)


@dataclass
class Books:
    """One ledger kind, with the session store whose erasures are the users' epochs."""

    kind: str
    client: redisconn.Client | None
    sessions: SessionStore

    def ledger(self, budgets: Budgets | None = None) -> Ledger:
        budgets = budgets or Budgets()
        if self.client is None:
            assert isinstance(self.sessions, MemorySessionStore)
            return MemoryLedger(budgets, erasures=self.sessions.erasures)
        return RedisLedger(self.client, budgets)

    async def erase(self, ledger: Ledger, user_id: str) -> int:
        """Erase the user as DeleteUserData does: the session store first (it moves the epoch)."""
        await self.sessions.erase(user_id)
        return await ledger.erase(user_id)

    async def epoch(self, user_id: str) -> int:
        """The user's erasure count, as the lease of a turn starting now carries it."""
        async with self.sessions.lock(user_id, wait_seconds=5, ttl_seconds=30) as lease:
            return lease.erasures


@pytest.fixture
async def redis_client(any_redis: RedisTarget) -> AsyncIterator[redisconn.Client]:
    client = any_redis.connect(2.0)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(params=["memory", "redis", "cluster"])
async def books(request: pytest.FixtureRequest) -> AsyncIterator[Books]:
    if request.param == "memory":
        yield Books("memory", None, MemorySessionStore())
        return
    client = request.getfixturevalue(f"{request.param}_target").connect(2.0)
    try:
        yield Books("redis", client, RedisSessionStore(client))
    finally:
        await client.aclose()


async def spend(
    ledger: Ledger,
    account: Account,
    now: datetime,
    *,
    prompt: int = 0,
    completion: int = 0,
    cost: float = 0.0,
) -> None:
    """One LLM call: its cost reserved, then settled."""
    reservation = await ledger.reserve(account, usd(cost), epoch=0, hold_seconds=HOLD, now=now)
    await ledger.settle(reservation, Usage(prompt, completion, usd(cost)))


async def hold(
    ledger: Ledger,
    account: Account,
    amount: float,
    *,
    now: datetime = DEC_2,
    epoch: int = 0,
    hold_seconds: float = HOLD,
) -> Reservation:
    """One LLM call's worst case, held while the call runs."""
    return await ledger.reserve(
        account, usd(amount), epoch=epoch, hold_seconds=hold_seconds, now=now
    )


async def refused_by(
    ledger: Ledger, account: Account, amount: float, *, now: datetime = DEC_2
) -> str:
    """The budget that refuses the reservation ("" when it is held, and then given back)."""
    try:
        reservation = await hold(ledger, account, amount, now=now)
    except BudgetSpent as spent:
        return spent.scope
    await ledger.release(reservation)
    return ""


# --- prices ------------------------------------------------------------------------------------

PRICES = Prices(
    {"gpt-4o": (2.5, 10.0), "gpt-4o-mini": (0.15, 0.6), "cheap": (0.1, 0.3)},
    fallback_model="gpt-4o",
)


def test_a_dated_model_name_is_priced_by_its_longest_known_prefix() -> None:
    assert PRICES.of("gpt-4o-mini-2024-07-18") == (0.15, 0.6)
    assert PRICES.of("gpt-4o-2024-08-06") == (2.5, 10.0)
    assert PRICES.of("gpt-4o-mini") == (0.15, 0.6)
    assert PRICES.knows("gpt-4o-mini-2024-07-18")


def test_an_unknown_model_is_priced_as_the_configured_one_never_free(
    caplog: pytest.LogCaptureFixture,
) -> None:
    prices = Prices({"gpt-4o": (2.5, 10.0), "cheap": (0.1, 0.3)}, fallback_model="gpt-4o")
    with caplog.at_level(logging.WARNING, logger="services.orchestrator.usage"):
        for _ in range(3):
            assert prices.of("mystery-model") == (2.5, 10.0)
    assert not prices.knows("mystery-model")
    assert prices.cost_nanos("mystery-model", 1_000, 1_000) == prices.cost_nanos(
        "gpt-4o", 1_000, 1_000
    )
    assert prices.cost_nanos("mystery-model", 1, 0) > 0
    # One warning for a name, not one per call.
    assert len([r for r in caplog.records if "no price" in r.getMessage()]) == 1


def test_costs_are_whole_nano_dollars() -> None:
    # USD per million tokens: one token at $1/M is 1,000 nano-dollars.
    assert PRICES.cost_nanos("gpt-4o-mini", 1_000, 500) == 150_000 + 300_000
    assert PRICES.usage("gpt-4o", 1_000_000, 100_000) == Usage(
        1_000_000, 100_000, usd(2.5) + usd(1.0)
    )
    # Decimal prices are not rounded up by binary float noise (3 * 0.1 is 0.30000000000000004).
    assert PRICES.cost_nanos("cheap", 3, 0) == 300
    assert PRICES.cost_nanos("cheap", 7, 3) == 700 + 900
    assert isinstance(PRICES.cost_nanos("cheap", 7, 3), int)
    # A fraction of a nano-dollar is charged, not dropped.
    assert Prices({"tiny": (0.0001, 0.0)}, fallback_model="tiny").cost_nanos("tiny", 1, 0) == 1
    assert PRICES.usage("cheap", 3, 0).cost_usd == pytest.approx(3e-7)


def test_prices_and_usage_refuse_impossible_values() -> None:
    for bad in (float("nan"), float("inf"), -0.1):
        with pytest.raises(ValueError, match="finite and not negative"):
            Prices({"m": (bad, 1.0)}, fallback_model="m")
    with pytest.raises(ValueError, match="negative"):
        Usage(prompt_tokens=-1)
    assert Usage(1, 2, 3) + Usage(10, 20, 30) == Usage(11, 22, 33)


# --- what is counted ---------------------------------------------------------------------------


async def test_usage_sums_per_user_and_globally(books: Books) -> None:
    ledger = books.ledger()
    a, b = Account("a", "one"), Account("b", "two")
    await spend(ledger, a, DEC_2, prompt=100, completion=20, cost=0.25)
    await spend(ledger, a, DEC_2, prompt=1, completion=2, cost=0.5)
    await spend(ledger, b, DEC_2, prompt=10, completion=10, cost=1.0)
    await ledger.count_turn(a, tts_characters=30, epoch=0, now=DEC_2)
    await ledger.count_turn(a, tts_characters=0, epoch=0, now=DEC_2)
    await ledger.count_turn(b, tts_characters=10, epoch=0, now=DEC_2)

    report = await ledger.report("a", DEC_2)
    mine = UsageTotals(
        turns=2, prompt_tokens=101, completion_tokens=22, tts_characters=30, cost_usd=0.75
    )
    everyone = UsageTotals(
        turns=3, prompt_tokens=111, completion_tokens=32, tts_characters=40, cost_usd=1.75
    )
    assert (report.user_today, report.user_month, report.global_today, report.global_month) == (
        mine,
        mine,
        everyone,
        everyone,
    )
    assert (await ledger.report("nobody", DEC_2)).user_month == UsageTotals()


async def test_a_new_utc_day_and_month_start_from_zero(books: Books) -> None:
    ledger = books.ledger()
    await spend(ledger, ALICE, NOV_30_LATE, prompt=5, cost=0.5)
    assert (await ledger.report("alice", NOV_30_LATE)).user_today.prompt_tokens == 5

    fresh = await ledger.report("alice", DEC_1_EARLY)
    assert fresh.user_today == fresh.user_month == fresh.global_month == UsageTotals()

    await spend(ledger, ALICE, DEC_1_EARLY, prompt=7, cost=0.25)
    await ledger.count_turn(ALICE, tts_characters=0, epoch=0, now=DEC_1_EARLY)
    await spend(ledger, ALICE, DEC_2, prompt=11, cost=0.125)
    await ledger.count_turn(ALICE, tts_characters=0, epoch=0, now=DEC_2)
    dec_2 = await ledger.report("alice", DEC_2)
    assert (dec_2.user_today.prompt_tokens, dec_2.user_month.prompt_tokens) == (11, 18)
    assert (dec_2.global_today.turns, dec_2.global_month.turns) == (1, 2)
    assert dec_2.user_month.cost_usd == 0.375


async def test_periods_are_utc_whatever_the_callers_zone(books: Books) -> None:
    ledger = books.ledger()
    tokyo = timezone(timedelta(hours=9))
    # 08:30 on Dec 1 in Tokyo is still Nov 30 in UTC.
    await spend(ledger, ALICE, datetime(2026, 12, 1, 8, 30, tzinfo=tokyo), prompt=3)
    assert (await ledger.report("alice", NOV_30_LATE)).user_today.prompt_tokens == 3
    with pytest.raises(ValueError, match="timezone"):
        await ledger.report("alice", datetime(2026, 12, 1))
    with pytest.raises(ValueError, match="timezone"):
        await hold(ledger, ALICE, 0.1, now=datetime(2026, 12, 1))


async def test_cost_sums_exactly(books: Books) -> None:
    ledger = books.ledger(Budgets(user_daily_usd=1.0))
    for _ in range(10):
        await spend(ledger, ALICE, DEC_2, cost=0.1)
    report = await ledger.report("alice", DEC_2)
    assert report.user_today.cost_usd == 1.0  # a float sum of ten 0.1s is 0.9999999999999999
    assert report.global_month.cost_usd == 1.0
    # And the budget agrees to the nano-dollar: the day is spent, not almost.
    assert await refused_by(ledger, ALICE, 1e-9) == "user_daily"


async def test_bad_amounts_are_refused_and_not_counted(books: Books) -> None:
    ledger = books.ledger()
    with pytest.raises(ValueError, match="negative"):
        await ledger.reserve(ALICE, -1, epoch=0, hold_seconds=HOLD, now=DEC_2)
    with pytest.raises(ValueError, match="negative"):
        await ledger.count_turn(ALICE, tts_characters=-1, epoch=0, now=DEC_2)
    assert (await ledger.report("alice", DEC_2)).global_month == UsageTotals()


async def test_concurrent_settles_are_all_counted(books: Books) -> None:
    ledger = books.ledger()
    # 80: below the client's pool of connections.
    await asyncio.gather(
        *(spend(ledger, Account(f"u{i % 4}", "one"), DEC_2, prompt=1, cost=0.01) for i in range(80))
    )
    report = await ledger.report("u0", DEC_2)
    assert (report.user_today.prompt_tokens, report.user_today.cost_usd) == (20, 0.2)
    assert report.global_today == UsageTotals(prompt_tokens=80, cost_usd=0.8)


# --- reservations ------------------------------------------------------------------------------


async def test_a_worst_case_that_does_not_fit_is_refused_and_holds_nothing(books: Books) -> None:
    ledger = books.ledger(Budgets(user_daily_usd=1.0, caller_daily_usd=1.5, global_monthly_usd=3.0))
    await spend(ledger, Account("alice", "A"), DEC_2, cost=0.5)
    alices = await hold(ledger, Account("alice", "A"), 0.5)  # spent + held: her day is full
    # Refused by the user's budget, whichever caller asks for her...
    assert await refused_by(ledger, Account("alice", "B"), 0.01) == "user_daily"
    # ...and the refused call held nothing on caller B: its whole budget is still there.
    await spend(ledger, Account("bob", "B"), DEC_2, cost=1.0)
    erins = await hold(ledger, Account("erin", "B"), 0.5)
    assert await refused_by(ledger, Account("frank", "B"), 0.01) == "caller_daily"
    # Nothing of the two refusals was held globally either: exactly 0.5 of 3.0 is left.
    await spend(ledger, Account("carol", "C"), DEC_2, cost=0.5)
    assert await refused_by(ledger, Account("dave", "D"), 0.01) == "global_monthly"

    # The user's and the caller's budgets are a day's, the global one is the month's.
    await ledger.release(alices)
    await ledger.release(erins)
    next_day = DEC_2 + timedelta(days=1)
    assert await refused_by(ledger, Account("alice", "A"), 1.0, now=next_day) == ""
    await hold(ledger, Account("gina", "B"), 1.0, now=next_day)
    assert await refused_by(ledger, Account("hank", "B"), 0.51, now=next_day) == "caller_daily"
    assert await refused_by(ledger, Account("ivy", "C"), 0.01, now=next_day) == "global_monthly"
    next_month = datetime(2027, 1, 1, tzinfo=UTC)
    assert await refused_by(ledger, Account("ivy", "C"), 1.0, now=next_month) == ""


async def test_a_refusal_by_the_global_budget_holds_nothing_for_the_user_or_caller(
    books: Books,
) -> None:
    ledger = books.ledger(Budgets(user_daily_usd=1.0, caller_daily_usd=1.0, global_monthly_usd=1.0))
    everyone = await hold(ledger, Account("bob", "B"), 1.0)
    assert await refused_by(ledger, Account("dave", "D"), 0.5) == "global_monthly"
    await ledger.release(everyone)
    # Had the refused call held its 0.5 on dave or on D, a whole budget would not fit now.
    await hold(ledger, Account("dave", "D"), 1.0)


async def test_concurrent_reservations_never_hold_more_than_the_budget(books: Books) -> None:
    ledger = books.ledger(Budgets(global_monthly_usd=1.0))
    outcomes = await asyncio.gather(
        *(hold(ledger, Account(f"u{i}", f"c{i % 3}"), 0.1) for i in range(50)),
        return_exceptions=True,
    )
    held = [o for o in outcomes if isinstance(o, Reservation)]
    refused = [o for o in outcomes if isinstance(o, BudgetSpent)]
    assert (len(held), len(refused)) == (10, 40)
    assert {spent.scope for spent in refused} == {"global_monthly"}


async def test_concurrent_reservations_of_the_same_users_stay_within_their_budgets(
    books: Books,
) -> None:
    ledger = books.ledger(Budgets(user_daily_usd=0.3, global_monthly_usd=2.0))
    outcomes = await asyncio.gather(
        *(hold(ledger, Account(f"u{i % 5}", "one"), 0.1) for i in range(50)),
        return_exceptions=True,
    )
    held = [o for o in outcomes if isinstance(o, Reservation)]
    assert all(isinstance(o, Reservation | BudgetSpent) for o in outcomes), outcomes
    per_user = {f"u{i}": sum(r.account.user_id == f"u{i}" for r in held) for i in range(5)}
    assert max(per_user.values()) <= 3, per_user
    if books.kind == "memory":  # decided at once; in Redis a refusal's holds last a round trip
        assert per_user == {f"u{i}": 3 for i in range(5)}


async def test_settle_replaces_the_hold_by_the_real_cost_of_its_day(books: Books) -> None:
    ledger = books.ledger(Budgets(user_daily_usd=1.0))
    worst = await hold(ledger, ALICE, 1.0, now=NOV_30_LATE)
    assert await refused_by(ledger, ALICE, 0.01, now=NOV_30_LATE) == "user_daily"
    await ledger.settle(worst, Usage(100, 20, usd(0.25)))
    nov_30 = await ledger.report("alice", NOV_30_LATE)
    assert nov_30.user_today == UsageTotals(prompt_tokens=100, completion_tokens=20, cost_usd=0.25)
    assert nov_30.global_month.cost_usd == 0.25
    # What the worst case held beyond the real cost is free again, to the nano-dollar.
    assert await refused_by(ledger, ALICE, 0.75, now=NOV_30_LATE) == ""
    assert await refused_by(ledger, ALICE, 0.75 + 1e-9, now=NOV_30_LATE) == "user_daily"
    dec_1 = await ledger.report("alice", DEC_1_EARLY)
    assert dec_1.user_today == dec_1.user_month == dec_1.global_month == UsageTotals()


async def test_release_gives_the_hold_back_and_counts_nothing(books: Books) -> None:
    ledger = books.ledger(Budgets(user_daily_usd=1.0, caller_daily_usd=1.0, global_monthly_usd=1.0))
    unanswered = await hold(ledger, ALICE, 1.0)
    assert await refused_by(ledger, ALICE, 0.01) == "user_daily"
    await ledger.release(unanswered)
    assert await refused_by(ledger, ALICE, 1.0) == ""
    assert (await ledger.report("alice", DEC_2)).global_month == UsageTotals()
    await ledger.release(unanswered)  # twice gives nothing more back
    await hold(ledger, ALICE, 1.0)
    assert await refused_by(ledger, ALICE, 0.01) == "user_daily"


async def test_memory_holds_lapse_after_hold_seconds() -> None:
    ledger = MemoryLedger(Budgets(user_daily_usd=1.0, global_monthly_usd=1.0))
    await hold(ledger, ALICE, 1.0, hold_seconds=60, now=DEC_2)  # a replica died mid-call
    assert await refused_by(ledger, ALICE, 0.5, now=DEC_2 + timedelta(seconds=59)) == "user_daily"
    assert await refused_by(ledger, ALICE, 1.0, now=DEC_2 + timedelta(seconds=60)) == ""


async def test_a_memory_settle_after_its_hold_lapsed_counts_once_and_frees_it() -> None:
    ledger = MemoryLedger(Budgets(user_daily_usd=1.0, global_monthly_usd=1.0))
    slow = await hold(ledger, ALICE, 1.0, hold_seconds=60, now=DEC_2)
    assert await refused_by(ledger, ALICE, 0.5, now=DEC_2 + timedelta(seconds=61)) == ""
    await ledger.settle(slow, Usage(1, 1, usd(0.4)))  # the record came late (a store outage)
    assert (await ledger.report("alice", DEC_2)).user_today.cost_usd == 0.4
    assert await refused_by(ledger, ALICE, 0.6, now=DEC_2 + timedelta(seconds=62)) == ""
    assert await refused_by(ledger, ALICE, 0.61, now=DEC_2 + timedelta(seconds=62)) == (
        "user_daily"
    )


async def fits(ledger: Ledger, account: Account, amount: float) -> bool:
    return await refused_by(ledger, account, amount) == ""


async def server_clock_passes(client: redisconn.Client, seconds: float) -> None:
    """Wait until `seconds` have passed by the Redis server's clock (which expires holds)."""

    async def server_ms() -> int:
        whole, micros = await client.time()
        return int(whole) * 1000 + int(micros) // 1000

    until = await server_ms() + seconds * 1000

    async def passed() -> bool:
        return await server_ms() > until

    await wait_until(passed, within=seconds + 5, message="the server's clock advancing")


async def test_redis_holds_lapse_after_hold_seconds(redis_client: redisconn.Client) -> None:
    ledger = RedisLedger(redis_client, Budgets(user_daily_usd=1.0, global_monthly_usd=1.0))
    await hold(ledger, ALICE, 1.0, hold_seconds=0.3)  # a replica died mid-call
    assert await refused_by(ledger, ALICE, 0.5) == "user_daily"
    await wait_until(lambda: fits(ledger, Account("bob", "other"), 1.0), within=2)
    assert await fits(ledger, ALICE, 1.0)


async def test_a_redis_settle_after_its_hold_lapsed_counts_once_and_frees_it(
    redis_client: redisconn.Client,
) -> None:
    ledger = RedisLedger(redis_client, Budgets(user_daily_usd=1.0, global_monthly_usd=1.0))
    slow = await hold(ledger, ALICE, 1.0, hold_seconds=0.2)
    await server_clock_passes(redis_client, 0.25)
    await ledger.settle(slow, Usage(1, 1, usd(0.4)))  # the record came late (a store outage)
    assert (await ledger.report("alice", DEC_2)).user_today.cost_usd == 0.4
    assert await refused_by(ledger, ALICE, 0.6) == ""
    assert await refused_by(ledger, ALICE, 0.61) == "user_daily"


# --- erasure -----------------------------------------------------------------------------------


async def test_a_call_settled_after_its_user_was_erased_counts_for_everyone_but_them(
    books: Books,
) -> None:
    ledger = books.ledger(Budgets(user_daily_usd=1.0, caller_daily_usd=1.0))
    epoch = await books.epoch("alice")  # the turn takes its lock: the user's epoch
    running = await hold(ledger, ALICE, 1.0, epoch=epoch)
    await books.erase(ledger, "alice")  # DeleteUserData while the LLM call runs
    await ledger.settle(running, Usage(100, 50, usd(0.6)))
    report = await ledger.report("alice", DEC_2)
    assert report.user_today == report.user_month == UsageTotals()
    assert report.global_today == UsageTotals(prompt_tokens=100, completion_tokens=50, cost_usd=0.6)
    # The caller paid: 0.4 of its day is left. The user's books started again, and empty.
    assert await refused_by(ledger, Account("bob", "backend"), 0.41) == "caller_daily"
    assert await refused_by(ledger, Account("alice", "elsewhere"), 1.0) == ""
    # A turn that starts after the erase is counted for the user again.
    assert await books.epoch("alice") == epoch + 1
    later = await hold(ledger, Account("alice", "elsewhere"), 0.1, epoch=epoch + 1)
    await ledger.settle(later, Usage(1, 1, usd(0.1)))
    assert (await ledger.report("alice", DEC_2)).user_today.cost_usd == 0.1


async def test_erase_removes_the_users_counters_and_holds_and_nothing_else(books: Books) -> None:
    budgets = Budgets(user_daily_usd=1.0, global_monthly_usd=4.0)
    ledger = books.ledger(budgets)
    users = ("*", "a*", "{x}")
    for user_id in users:
        await spend(ledger, Account(user_id, "one"), NOV_30_LATE, prompt=1, cost=0.5)
        await spend(ledger, Account(user_id, "one"), DEC_1_EARLY, prompt=2, cost=0.5)
        await hold(ledger, Account(user_id, "one"), 0.25, now=DEC_1_EARLY)
    global_before = (await ledger.report("*", DEC_1_EARLY)).global_month

    assert await ledger.erase("*") > 0
    assert await ledger.erase("*") == 0
    for now in (NOV_30_LATE, DEC_1_EARLY):
        gone = await ledger.report("*", now)
        assert gone.user_today == gone.user_month == UsageTotals()
    if books.client is not None:  # exact keys: "*" matched no one else's
        left = await every_key(books.client)
        assert not [k for k in left if user_tag("*").encode() in k]
        for other in users[1:]:
            assert user_key(other, "usage:day:2026-12-01").encode() in left
            assert user_key(other, "usage:holds:2026-12-01").encode() in left
    # Its hold went with it: the whole day is free for "*"; the others still hold theirs.
    assert await refused_by(ledger, Account("*", "one"), 1.0, now=DEC_1_EARLY) == ""
    for other in users[1:]:
        kept = await ledger.report(other, DEC_1_EARLY)
        assert (kept.user_today.prompt_tokens, kept.user_month.cost_usd) == (2, 0.5)
        assert await refused_by(ledger, Account(other, "one"), 0.26, now=DEC_1_EARLY) == (
            "user_daily"
        )
    after = await ledger.report("a*", DEC_1_EARLY)
    assert after.global_month == global_before == UsageTotals(prompt_tokens=6, cost_usd=1.5)
    # Everyone's holds are kept, "*"'s too: left of 4.0 are 4.0 - 1.5 spent - 0.75 held.
    await hold(ledger, Account("new", "two"), 1.0, now=DEC_1_EARLY)
    assert await refused_by(ledger, Account("newer", "two"), 0.76, now=DEC_1_EARLY) == (
        "global_monthly"
    )
    assert await refused_by(ledger, Account("newer", "two"), 0.75, now=DEC_1_EARLY) == ""


# --- bounds and Redis specifics ----------------------------------------------------------------


async def test_memory_ledger_stays_bounded() -> None:
    ledger = MemoryLedger(max_accounts=100)
    for i in range(1_000):
        await spend(ledger, Account(f"u{i}", f"c{i}"), DEC_2, cost=0.01)
    assert len(ledger) == 100
    assert (await ledger.report("u999", DEC_2)).user_today.cost_usd == 0.01
    assert (await ledger.report("u0", DEC_2)).user_today == UsageTotals()
    assert (await ledger.report("u0", DEC_2)).global_today.cost_usd == 10.0


async def test_redis_layout_ttls_and_exact_erase(redis_client: redisconn.Client) -> None:
    ledger = RedisLedger(redis_client)
    await spend(ledger, Account("*", "one"), DEC_1_EARLY, cost=0.1)
    await spend(ledger, Account("a*", "one"), DEC_1_EARLY, cost=0.1)
    day = user_key("*", "usage:day:2026-12-01")
    month = user_key("*", "usage:month:2026-12")
    assert 0 < await redis_client.pttl(day) <= 3 * 86_400_000
    assert 3 * 86_400_000 < await redis_client.pttl(month) <= 40 * 86_400_000
    assert await redis_client.pttl(user_key("*", "usage:keys")) > 3 * 86_400_000
    assert 0 < await redis_client.pttl(global_key("{usage}:day:2026-12-01")) <= 3 * 86_400_000
    assert await redis_client.hget(month, "cost_nanousd") == b"100000000"
    assert await redis_client.hget(day, "held_nanousd") == b"0"

    assert await ledger.erase("*") == 2
    tag = user_tag("*")
    assert not [k for k in await every_key(redis_client) if tag.encode() in k]
    kept = sorted(k for k in await every_key(redis_client) if user_tag("a*").encode() in k)
    # Day, month, the index and the settled call's marker (the holds set is empty, so gone).
    assert sorted(k.split(b":")[-2] for k in kept) == [b"day", b"month", b"settled", b"usage"]


async def test_redis_index_forgets_expired_keys_only(redis_client: redisconn.Client) -> None:
    ledger = RedisLedger(
        redis_client, day_ttl=timedelta(milliseconds=30), month_ttl=timedelta(seconds=30)
    )
    index = user_key("daily", "usage:keys")
    daily = Account("daily", "one")
    for days in range(3):
        await ledger.count_turn(
            daily, tts_characters=1, epoch=0, now=DEC_1_EARLY + timedelta(days=days)
        )
    assert await redis_client.zcard(index) == 4  # three days, one month
    last_day = user_key("daily", "usage:day:2026-12-03")
    expires_ms = await redis_client.zscore(index, last_day)
    assert expires_ms is not None

    async def server_clock_passed() -> bool:
        seconds, micros = await redis_client.time()
        return seconds * 1000 + micros // 1000 > expires_ms

    await wait_until(server_clock_passed, within=5, message="the server's clock advancing")
    assert not await redis_client.exists(last_day)

    await ledger.count_turn(daily, tts_characters=1, epoch=0, now=DEC_1_EARLY + timedelta(days=9))
    assert sorted(await redis_client.zrange(index, 0, -1)) == [
        user_key("daily", "usage:day:2026-12-10").encode(),
        user_key("daily", "usage:month:2026-12").encode(),
    ]
    assert await ledger.erase("daily") == 2


async def test_redis_ledger_survives_a_server_that_lost_its_scripts(
    redis_client: redisconn.Client,
) -> None:
    ledger = RedisLedger(redis_client, Budgets(user_daily_usd=1.0))
    await spend(ledger, ALICE, DEC_2, cost=0.5)
    await flush_scripts(redis_client)  # as after a restart or failover
    reservation = await hold(ledger, ALICE, 0.5)
    await flush_scripts(redis_client)
    await ledger.settle(reservation, Usage(1, 1, usd(0.25)))
    assert (await ledger.report("alice", DEC_2)).user_today.cost_usd == 0.75
    await flush_scripts(redis_client)
    assert await refused_by(ledger, ALICE, 0.26) == "user_daily"
    assert await refused_by(ledger, ALICE, 0.25) == ""


# --- the bookkeeper ----------------------------------------------------------------------------


@pytest.fixture
def redis_process() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


async def test_a_settle_during_a_redis_outage_lands_when_redis_is_back(
    redis_process: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = redisconn.connect(redis_process.url, 0.5)
    try:
        bookkeeper = Bookkeeper(RedisLedger(client))
        reservation = await bookkeeper.ledger.reserve(
            ALICE, usd(1.0), epoch=0, hold_seconds=HOLD, now=DEC_2
        )
        redis_process.kill()  # the provider answers; the store is away
        with caplog.at_level(logging.INFO, logger="services.orchestrator.usage"):
            landed = bookkeeper.settle(reservation, Usage(100, 20, usd(0.25)))
            await wait_until(
                lambda: any("retrying" in r.getMessage() for r in caplog.records),
                within=10,
                message="a failed settle",
            )
            assert bookkeeper.pending == 1
            redis_process.start()  # the same port, an empty server
            await asyncio.wait_for(landed, 15)
        assert bookkeeper.pending == 0
        report = await bookkeeper.ledger.report("alice", DEC_2)
        assert report.user_today == UsageTotals(
            prompt_tokens=100, completion_tokens=20, cost_usd=0.25
        )
        assert any("after a retry" in r.getMessage() for r in caplog.records)
    finally:
        await client.aclose()


async def test_a_settle_sent_twice_is_counted_once(redis_client: redisconn.Client) -> None:
    # As when a settle's reply timed out on a paused Redis that then ran it, and the
    # bookkeeper sent it again.
    ledger = RedisLedger(redis_client, Budgets(global_monthly_usd=10.0))
    reservation = await hold(ledger, ALICE, 1.0)
    for _ in range(3):
        await ledger.settle(reservation, Usage(100, 20, usd(0.25)))
    report = await ledger.report("alice", DEC_2)
    assert report.user_today == UsageTotals(prompt_tokens=100, completion_tokens=20, cost_usd=0.25)
    assert report.global_month.cost_usd == 0.25
    assert await refused_by(ledger, BOB, 9.75) == ""  # the caller's and everyone's counted once
    assert await ledger.erase("alice") > 0
    own = [key async for key in redis_client.scan_iter() if user_tag("alice").encode() in key]
    assert [key for key in own if b":settled:" in key] == []  # the marker goes with the user


async def test_a_settle_outlives_the_turn_that_asked_for_it() -> None:
    class SlowLedger(MemoryLedger):
        async def settle(self, reservation: Reservation, usage: Usage) -> None:
            await asyncio.sleep(0.05)  # a store that takes its time
            await super().settle(reservation, usage)

    bookkeeper = Bookkeeper(SlowLedger())

    async def turn() -> None:
        reservation = await bookkeeper.ledger.reserve(
            ALICE, usd(1.0), epoch=0, hold_seconds=HOLD, now=DEC_2
        )
        bookkeeper.settle(reservation, Usage(1, 1, usd(0.5)))
        await asyncio.Event().wait()  # the client goes away here

    task = asyncio.create_task(turn())
    await wait_until(lambda: bookkeeper.pending == 1, within=5)
    task.cancel()
    await wait_until(lambda: bookkeeper.pending == 0, within=5, message="the settle landing")
    assert (await bookkeeper.ledger.report("alice", DEC_2)).user_today.cost_usd == 0.5
