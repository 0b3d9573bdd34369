"""What each user, and everyone together, has used and spent: per UTC day and per UTC month.

Money is counted in integer nano-dollars, so sums of many small costs never drift (ten records of
0.1 USD are exactly 1.0 USD); it becomes float USD only when read.

Erasing a user removes that user's records only. The global totals are sums over all users, hold
nothing that identifies anyone, and keep what the erased user contributed to them.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import redis.asyncio as redis
from redis.exceptions import NoScriptError, WatchError

from services.orchestrator.keys import global_key, user_key
from services.orchestrator.model import UsageReport, UsageTotals

NANOS_PER_USD = 1_000_000_000

DAY_TTL = timedelta(days=3)
MONTH_TTL = timedelta(days=40)

# The counters of every hash, in the order every tuple of counts here uses.
_FIELDS = ("turns", "prompt_tokens", "completion_tokens", "tts_characters", "cost_nanousd")


class UsageLedger(Protocol):
    async def record(
        self,
        user_id: str,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        tts_characters: int,
        cost_usd: float,
        now: datetime,
    ) -> None:
        """Count one turn for the user and globally, in today's and this month's totals."""
        ...

    async def report(self, user_id: str, now: datetime) -> UsageReport: ...

    async def spent(self, user_id: str, now: datetime) -> tuple[float, float]:
        """(the user's cost today, everyone's cost this month) in USD, in one round trip."""
        ...

    async def erase(self, user_id: str) -> int:
        """Remove the user's usage records; how many there were. Global totals are kept."""
        ...


@dataclass(frozen=True, slots=True)
class Budgets:
    user_daily_usd: float  # 0 = unlimited
    global_monthly_usd: float  # 0 = unlimited


def to_nanos(usd: float) -> int:
    return round(usd * NANOS_PER_USD)


def over_budget(spent: tuple[float, float], budgets: Budgets) -> str:
    """Which budget is spent: "user_daily", "global_monthly", or "" while within both.

    A budget is spent once the cost reaches it; the user's is named first when both are.
    Compared in nano-dollars, as stored.
    """
    user_today, global_month = spent
    if budgets.user_daily_usd > 0 and to_nanos(user_today) >= to_nanos(budgets.user_daily_usd):
        return "user_daily"
    if budgets.global_monthly_usd > 0 and to_nanos(global_month) >= to_nanos(
        budgets.global_monthly_usd
    ):
        return "global_monthly"
    return ""


def _periods(now: datetime) -> tuple[str, str]:
    """The UTC day ("2026-12-01") and month ("2026-12") that `now` falls in."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("usage times must be timezone-aware")
    utc = now.astimezone(UTC)
    return f"{utc:%Y-%m-%d}", f"{utc:%Y-%m}"


def _increments(
    prompt_tokens: int, completion_tokens: int, tts_characters: int, cost_usd: float
) -> tuple[int, int, int, int, int]:
    if min(prompt_tokens, completion_tokens, tts_characters) < 0:
        raise ValueError("usage counts must not be negative")
    if not math.isfinite(cost_usd) or cost_usd < 0:
        raise ValueError("a cost must be a finite, non-negative amount")
    return 1, prompt_tokens, completion_tokens, tts_characters, to_nanos(cost_usd)


def _totals(values: tuple[int, int, int, int, int]) -> UsageTotals:
    turns, prompt, completion, tts, nanos = values
    return UsageTotals(
        turns=turns,
        prompt_tokens=prompt,
        completion_tokens=completion,
        tts_characters=tts,
        cost_usd=nanos / NANOS_PER_USD,
    )


_ZERO = (0, 0, 0, 0, 0)


class _Bucket:
    """The counters of one period; a newer period replaces them, an older one is ignored."""

    __slots__ = ("counts", "period")

    def __init__(self) -> None:
        self.period = ""
        self.counts = _ZERO

    def add(self, period: str, increments: tuple[int, int, int, int, int]) -> None:
        if period > self.period:  # ISO dates and months sort as strings
            self.period, self.counts = period, _ZERO
        if period == self.period:
            a, b = self.counts, increments
            self.counts = (a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3], a[4] + b[4])

    def get(self, period: str) -> tuple[int, int, int, int, int]:
        return self.counts if period == self.period else _ZERO


class _UserBuckets:
    __slots__ = ("day", "month")

    def __init__(self) -> None:
        self.day = _Bucket()
        self.month = _Bucket()


class MemoryUsageLedger:
    """The ledger in this process, for one replica: today's and this month's totals only, for at
    most `max_users` users (LRU). An evicted user starts the day again at zero, so size
    `max_users` above the number of users active in a day when budgets matter.
    """

    def __init__(self, *, max_users: int = 100_000) -> None:
        if max_users < 1:
            raise ValueError("max_users must be at least 1")
        self._max_users = max_users
        self._users: OrderedDict[str, _UserBuckets] = OrderedDict()
        self._global = _UserBuckets()

    def __len__(self) -> int:
        """How many users are tracked."""
        return len(self._users)

    async def record(
        self,
        user_id: str,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        tts_characters: int,
        cost_usd: float,
        now: datetime,
    ) -> None:
        increments = _increments(prompt_tokens, completion_tokens, tts_characters, cost_usd)
        day, month = _periods(now)
        user = self._users.get(user_id)
        if user is None:
            user = self._users[user_id] = _UserBuckets()
        self._users.move_to_end(user_id)
        for buckets in (user, self._global):
            buckets.day.add(day, increments)
            buckets.month.add(month, increments)
        while len(self._users) > self._max_users:
            self._users.popitem(last=False)

    async def report(self, user_id: str, now: datetime) -> UsageReport:
        day, month = _periods(now)
        user = self._users.get(user_id) or _UserBuckets()
        return UsageReport(
            user_today=_totals(user.day.get(day)),
            user_month=_totals(user.month.get(month)),
            global_today=_totals(self._global.day.get(day)),
            global_month=_totals(self._global.month.get(month)),
        )

    async def spent(self, user_id: str, now: datetime) -> tuple[float, float]:
        day, month = _periods(now)
        user = self._users.get(user_id)
        user_nanos = user.day.get(day)[4] if user is not None else 0
        return user_nanos / NANOS_PER_USD, self._global.month.get(month)[4] / NANOS_PER_USD

    async def erase(self, user_id: str) -> int:
        user = self._users.pop(user_id, None)
        if user is None:
            return 0
        return sum(1 for bucket in (user.day, user.month) if bucket.counts != _ZERO)


_ERASE_ATTEMPTS = 10

# KEYS: a day hash, a month hash, and (for a user) the index of the user's usage keys.
# ARGV: day TTL ms, month TTL ms, then the increments in `_FIELDS` order.
# The index scores each key by when it expires, read from the server's clock after the PEXPIREs
# (so never earlier than the real expiry), and drops entries whose key has expired by that same
# clock: the index stays a handful of entries and never forgets a key that still exists.
_RECORD_SCRIPT = """
local fields = {'turns', 'prompt_tokens', 'completion_tokens', 'tts_characters', 'cost_nanousd'}
local ttls = {tonumber(ARGV[1]), tonumber(ARGV[2])}
for k = 1, 2 do
  for i = 1, 5 do
    if ARGV[2 + i] ~= '0' then redis.call('HINCRBY', KEYS[k], fields[i], ARGV[2 + i]) end
  end
  redis.call('PEXPIRE', KEYS[k], ARGV[k])
end
if #KEYS == 3 then
  local t = redis.call('TIME')
  local floor_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[3],
    string.format('%d', floor_ms + 1 + ttls[1]), KEYS[1],
    string.format('%d', floor_ms + 1 + ttls[2]), KEYS[2])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. string.format('%d', floor_ms))
  redis.call('PEXPIRE', KEYS[3], string.format('%d', math.max(ttls[1], ttls[2])))
end
return 1
"""


def _global_key(period: str) -> str:
    # One hash tag for all global usage keys: a day and its month share a cluster slot, so one
    # script may update both.
    return global_key(f"{{usage}}:{period}")


class RedisUsageLedger:
    """The ledger in Redis, shared by all replicas. The client is the caller's.

    Keys (hashes of the `_FIELDS` counters; cost in nano-dollars):
      user_key(id, "usage:day:YYYY-MM-DD"), user_key(id, "usage:month:YYYY-MM"),
      global_key("{usage}:day:YYYY-MM-DD"), global_key("{usage}:month:YYYY-MM");
    day keys expire `day_ttl`, month keys `month_ttl` after their last record.
    user_key(id, "usage:keys") is a sorted set of the user's usage keys, scored by when each
    expires, so that erasing addresses exact keys.

    A user's keys share one cluster slot and the global ones another, so a record is two atomic
    scripts sent together: each is all-or-nothing, but they are not atomic with each other (no
    script may span slots), so a failure between them can count a turn for the user only or
    for the totals only.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        day_ttl: timedelta = DAY_TTL,
        month_ttl: timedelta = MONTH_TTL,
    ) -> None:
        self._client = client
        self._script = client.register_script(_RECORD_SCRIPT)
        self._ttls_ms = (_ms(day_ttl), _ms(month_ttl))

    async def record(
        self,
        user_id: str,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        tts_characters: int,
        cost_usd: float,
        now: datetime,
    ) -> None:
        increments = _increments(prompt_tokens, completion_tokens, tts_characters, cost_usd)
        day, month = _periods(now)
        args = [*self._ttls_ms, *increments]
        user_keys = [
            user_key(user_id, f"usage:day:{day}"),
            user_key(user_id, f"usage:month:{month}"),
            user_key(user_id, "usage:keys"),
        ]
        global_keys = [_global_key(f"day:{day}"), _global_key(f"month:{month}")]
        await self._run_script([(user_keys, args), (global_keys, args)])

    async def _run_script(self, calls: list[tuple[list[str], list[int]]]) -> None:
        """The record script once per call, all in one round trip on one connection."""
        async with self._client.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.evalsha(self._script.sha, len(keys), *keys, *args)
            results = await pipe.execute(raise_on_error=False)
        # A server that restarted or failed over may not have the script yet; those calls ran
        # nothing, so they are simply run again (the script's own call loads it).
        for (keys, args), result in zip(calls, results, strict=True):
            if isinstance(result, NoScriptError):
                await self._script(keys=keys, args=args)
            elif isinstance(result, Exception):
                raise result

    async def report(self, user_id: str, now: datetime) -> UsageReport:
        day, month = _periods(now)
        keys = (
            user_key(user_id, f"usage:day:{day}"),
            user_key(user_id, f"usage:month:{month}"),
            _global_key(f"day:{day}"),
            _global_key(f"month:{month}"),
        )
        async with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key, list(_FIELDS))
            rows = await pipe.execute()
        t = [_totals(_counts(row)) for row in rows]
        return UsageReport(user_today=t[0], user_month=t[1], global_today=t[2], global_month=t[3])

    async def spent(self, user_id: str, now: datetime) -> tuple[float, float]:
        day, month = _periods(now)
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.hget(user_key(user_id, f"usage:day:{day}"), "cost_nanousd")
            pipe.hget(_global_key(f"month:{month}"), "cost_nanousd")
            user_nanos, global_nanos = await pipe.execute()
        return int(user_nanos or 0) / NANOS_PER_USD, int(global_nanos or 0) / NANOS_PER_USD

    async def erase(self, user_id: str) -> int:
        index = user_key(user_id, "usage:keys")
        # Only keys of this user's usage, even if the index were ever to hold anything else.
        own_prefix = user_key(user_id, "usage:").encode()
        async with self._client.pipeline(transaction=True) as pipe:
            for _ in range(_ERASE_ATTEMPTS):
                try:
                    # WATCH: a record that lands between reading the index and deleting would
                    # leave a key behind; the transaction then fails and is tried again.
                    await pipe.watch(index)
                    members = await pipe.zrange(index, 0, -1)
                    keys = [
                        key
                        for key in (m if isinstance(m, bytes) else str(m).encode() for m in members)
                        if key.startswith(own_prefix)
                    ]
                    pipe.multi()  # type: ignore[no-untyped-call]
                    if keys:
                        pipe.delete(*keys)
                    pipe.delete(index)
                    results = await pipe.execute()
                except WatchError:
                    continue
                return int(results[0]) if keys else 0
        raise RuntimeError("erasing usage kept racing with new records; try again")


def _counts(row: list[bytes | str | None]) -> tuple[int, int, int, int, int]:
    turns, prompt, completion, tts, nanos = (int(value or 0) for value in row)
    return turns, prompt, completion, tts, nanos


def _ms(ttl: timedelta) -> int:
    if ttl <= timedelta(0):
        raise ValueError("a TTL must be positive")
    return max(1, round(ttl.total_seconds() * 1000))
