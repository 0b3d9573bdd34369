"""What LLM calls cost, and the ledger that holds every user, caller and everyone to a budget.

Money is counted in integer nano-dollars, so sums of many small costs never drift; it becomes
float USD only when read.

Budgets by reservation. Before each LLM call its worst case (the prompt estimate plus
`max_tokens`, at the model's prices) is *held* against the user's daily, the caller's daily and
the global monthly budget; the call is made only if the worst case fits in all three next to
what is spent and what other calls hold. When the provider answers, the hold is replaced by the
real cost (`settle`); a call that got no answer gives its hold back (`release`). Concurrent turns
therefore overshoot a budget by at most one call's estimate error, never by a multiple. A hold
expires by itself (`hold_seconds`) so that a replica that dies mid-call frees it.

Erasing a user removes that user's records only. Each reservation carries the user's epoch, the
number of times the user had been erased when their turn took its lock (the session store
keeps that count and bumps it first when erasing): a call settled after an erase is counted for
the caller and globally, never for the erased user again. The caller's and the global totals
hold nothing that identifies a user.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from services.common import redisconn
from services.common.deadline import Deadline
from services.orchestrator import metrics
from services.orchestrator.keys import caller_key, global_key, user_key
from services.orchestrator.model import UsageReport, UsageTotals

logger = logging.getLogger(__name__)

NANOS_PER_USD: Final = 1_000_000_000
# Prices are USD per million tokens: one token costs price * 1e9 / 1e6 nano-dollars.
_NANOS_PER_TOKEN_PER_USD_PER_M: Final = 1_000

DAY_TTL: Final = timedelta(days=3)
MONTH_TTL: Final = timedelta(days=40)

# The counters of every usage hash, in the order every tuple of counts here uses.
_FIELDS: Final = ("turns", "prompt_tokens", "completion_tokens", "tts_characters", "cost_nanousd")
_HELD: Final = "held_nanousd"


def to_nanos(usd: float) -> int:
    return round(usd * NANOS_PER_USD)


# -- prices and usage ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens and money spent by one LLM call, or by all the calls of a turn."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_nanos: int = 0

    def __post_init__(self) -> None:
        if min(self.prompt_tokens, self.completion_tokens, self.cost_nanos) < 0:
            raise ValueError("usage must not be negative")

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cost_nanos + other.cost_nanos,
        )

    @property
    def cost_usd(self) -> float:
        return self.cost_nanos / NANOS_PER_USD


class Prices:
    """USD per million tokens (prompt, completion) by model name.

    Providers answer with dated names ("gpt-4o-mini-2024-07-18"): the longest known prefix
    prices them. A name no entry covers is priced as `fallback_model` (the configured model),
    so a provider that answers with an unexpected name is never free.
    """

    def __init__(
        self,
        table: Mapping[str, tuple[float, float]],
        *,
        fallback_model: str,
        speech_usd_per_million_chars: float = 0.0,
    ) -> None:
        for model, (prompt, completion) in table.items():
            if (
                not (math.isfinite(prompt) and math.isfinite(completion))
                or min(prompt, completion) < 0
            ):
                raise ValueError(f"the price of {model!r} must be finite and not negative")
        self._table = dict(table)
        self._by_length = sorted(self._table, key=len, reverse=True)
        self._fallback = fallback_model
        self._speech = speech_usd_per_million_chars
        self._warned: set[str] = set()

    def knows(self, model: str) -> bool:
        return self._lookup(model) is not None

    def _lookup(self, model: str) -> tuple[float, float] | None:
        found = self._table.get(model)
        if found is not None:
            return found
        for name in self._by_length:
            if model.startswith(name):
                return self._table[name]
        return None

    def of(self, model: str) -> tuple[float, float]:
        found = self._lookup(model)
        if found is not None:
            return found
        if model not in self._warned and len(self._warned) < 100:
            self._warned.add(model)
            logger.warning(
                "no price for the model the LLM named; priced as the configured model",
                extra={"model": model[:100], "priced_as": self._fallback},
            )
        return self._lookup(self._fallback) or (0.0, 0.0)

    def cost_nanos(self, model: str, prompt_tokens: int, completion_tokens: int) -> int:
        prompt, completion = self.of(model)
        # Rounded before the ceiling: float noise (3 * 0.1 = 0.30000000000000004) is no nano-dollar.
        return math.ceil(
            round(
                (prompt_tokens * prompt + completion_tokens * completion)
                * _NANOS_PER_TOKEN_PER_USD_PER_M,
                3,
            )
        )

    def speech_cost_nanos(self, characters: int) -> int:
        """What synthesizing `characters` costs (nothing for the embedded voices)."""
        return math.ceil(round(characters * self._speech * _NANOS_PER_TOKEN_PER_USD_PER_M, 6))

    def usage(self, model: str, prompt_tokens: int, completion_tokens: int) -> Usage:
        return Usage(
            prompt_tokens,
            completion_tokens,
            self.cost_nanos(model, prompt_tokens, completion_tokens),
        )


# -- the ledger ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Account:
    """Who pays for a call: the user and the caller acting for them."""

    user_id: str
    caller: str


@dataclass(frozen=True, slots=True)
class Budgets:
    """Limits in USD; 0 means none."""

    user_daily_usd: float = 0.0
    caller_daily_usd: float = 0.0
    global_monthly_usd: float = 0.0

    def nanos(self) -> tuple[int, int, int]:
        """(user, caller, global) in the order `SCOPES` names them."""
        return (
            to_nanos(self.user_daily_usd),
            to_nanos(self.caller_daily_usd),
            to_nanos(self.global_monthly_usd),
        )


SCOPES: Final = ("user_daily", "caller_daily", "global_monthly")


class BudgetSpent(Exception):
    """A budget has no room for the call's worst case; the local planner answers instead."""

    def __init__(self, scope: str) -> None:
        super().__init__(f"the {scope.replace('_', ' ')} budget is spent")
        self.scope = scope


@dataclass(frozen=True, slots=True)
class Reservation:
    """A hold of `amount_nanos` on each budget of `account`, for one LLM call."""

    account: Account
    hold_id: str
    amount_nanos: int
    day: str
    month: str
    user_epoch: int

    @property
    def member(self) -> str:
        return f"{self.hold_id}:{self.amount_nanos}"


class Ledger(Protocol):
    async def reserve(
        self,
        account: Account,
        amount_nanos: int,
        *,
        epoch: int,
        hold_seconds: float,
        now: datetime,
    ) -> Reservation:
        """Hold `amount_nanos` on the user's, the caller's and the global budget at once, or
        raise BudgetSpent naming the first budget it does not fit in (nothing is held then).
        `epoch` is the user's erasure count when their turn began."""
        ...

    async def settle(self, reservation: Reservation, usage: Usage) -> None:
        """Replace the hold by what the call really used (counted in the reservation's day and
        month), for the caller and globally always, and for the user unless erased since."""
        ...

    async def release(self, reservation: Reservation) -> None:
        """Give the hold back: the call was not made or got no answer."""
        ...

    async def count_turn(
        self, account: Account, *, tts_characters: int, epoch: int, now: datetime
    ) -> None:
        """Count one committed turn (and the speech it synthesized); for the user only while
        they have not been erased since `epoch`."""
        ...

    async def report(self, user_id: str, now: datetime) -> UsageReport: ...

    async def global_month(self, now: datetime) -> UsageTotals:
        """What every user together used in the month of `now`."""
        ...

    async def erase(self, user_id: str) -> int:
        """Remove the user's usage records; how many there were. Other totals are kept."""
        ...


def _periods(now: datetime) -> tuple[str, str]:
    """The UTC day ("2026-12-01") and month ("2026-12") that `now` falls in."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("usage times must be timezone-aware")
    utc = now.astimezone(UTC)
    return f"{utc:%Y-%m-%d}", f"{utc:%Y-%m}"


Counts = tuple[int, int, int, int, int]
_ZERO: Final[Counts] = (0, 0, 0, 0, 0)


def _increments(usage: Usage, *, turns: int = 0, tts_characters: int = 0) -> Counts:
    if tts_characters < 0:
        raise ValueError("usage counts must not be negative")
    return turns, usage.prompt_tokens, usage.completion_tokens, tts_characters, usage.cost_nanos


def _totals(values: Counts) -> UsageTotals:
    turns, prompt, completion, tts, nanos = values
    return UsageTotals(
        turns=turns,
        prompt_tokens=prompt,
        completion_tokens=completion,
        tts_characters=tts,
        cost_usd=nanos / NANOS_PER_USD,
    )


def _hold_id() -> str:
    return secrets.token_hex(8)


# -- in-process ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Period:
    """The counters of one period; a newer period replaces them, an older one is ignored."""

    period: str = ""
    counts: Counts = _ZERO
    held: int = 0
    holds: dict[str, tuple[int, float]] = field(default_factory=dict)  # id -> (amount, expiry)

    def at(self, period: str) -> _Period:
        if period > self.period:  # ISO dates and months sort as strings
            self.period, self.counts, self.held, self.holds = period, _ZERO, 0, {}
        return self

    def add(self, period: str, increments: Counts) -> None:
        if period >= self.period:
            self.at(period)
            a, b = self.counts, increments
            self.counts = (a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3], a[4] + b[4])

    def get(self, period: str) -> Counts:
        return self.counts if period == self.period else _ZERO

    def expire(self, now: float) -> None:
        for hold_id, (amount, expires_at) in list(self.holds.items()):
            if expires_at <= now:
                del self.holds[hold_id]
                self.held -= amount

    def unhold(self, period: str, hold_id: str) -> None:
        if period == self.period and hold_id in self.holds:
            self.held -= self.holds.pop(hold_id)[0]


@dataclass(slots=True)
class _Books:
    day: _Period = field(default_factory=_Period)
    month: _Period = field(default_factory=_Period)

    def budget_period(self, daily: bool) -> _Period:
        return self.day if daily else self.month


class MemoryLedger:
    """The ledger in this process, for one replica: today's and this month's totals only, for
    at most `max_accounts` users and as many callers (LRU). An evicted user starts the day
    again at zero, so size it above the number of users active in a day when budgets matter.
    """

    def __init__(
        self,
        budgets: Budgets = Budgets(),
        *,
        erasures: Callable[[str], int] = lambda _user_id: 0,
        max_accounts: int = 100_000,
    ) -> None:
        """`erasures` tells how often a user was erased (the session store's count)."""
        if max_accounts < 1:
            raise ValueError("max_accounts must be at least 1")
        self._erasures = erasures
        self._limits = budgets.nanos()
        self._max = max_accounts
        self._users: OrderedDict[str, _Books] = OrderedDict()
        self._callers: OrderedDict[str, _Books] = OrderedDict()
        self._global = _Books()

    def __len__(self) -> int:
        """How many users are tracked."""
        return len(self._users)

    def _books(self, table: OrderedDict[str, _Books], key: str) -> _Books:
        books = table.get(key)
        if books is None:
            books = table[key] = _Books()
            while len(table) > self._max:
                table.popitem(last=False)
        table.move_to_end(key)
        return books

    def _scopes(self, account: Account) -> tuple[tuple[_Books, bool], ...]:
        """(books, budget is daily) for the user, the caller and everyone."""
        return (
            (self._books(self._users, account.user_id), True),
            (self._books(self._callers, account.caller), True),
            (self._global, False),
        )

    async def reserve(
        self,
        account: Account,
        amount_nanos: int,
        *,
        epoch: int,
        hold_seconds: float,
        now: datetime,
    ) -> Reservation:
        if amount_nanos < 0:
            raise ValueError("a reservation must not be negative")
        day, month = _periods(now)
        clock = now.timestamp()
        scopes = self._scopes(account)
        # No await in here: checking all three budgets and holding on them is atomic.
        for (books, daily), scope, limit in zip(scopes, SCOPES, self._limits, strict=True):
            period = books.budget_period(daily).at(day if daily else month)
            period.expire(clock)
            if limit and period.counts[4] + period.held + amount_nanos > limit:
                raise BudgetSpent(scope)
        reservation = Reservation(account, _hold_id(), amount_nanos, day, month, epoch)
        if amount_nanos:
            for books, daily in scopes:
                period = books.budget_period(daily)
                period.holds[reservation.hold_id] = (amount_nanos, clock + hold_seconds)
                period.held += amount_nanos
        return reservation

    def _unhold(self, reservation: Reservation) -> None:
        for books, daily in self._scopes(reservation.account):
            books.budget_period(daily).unhold(
                reservation.day if daily else reservation.month, reservation.hold_id
            )

    async def settle(self, reservation: Reservation, usage: Usage) -> None:
        self._unhold(reservation)
        increments = _increments(usage)
        erased_since = self._erasures(reservation.account.user_id) != reservation.user_epoch
        for index, (books, _) in enumerate(self._scopes(reservation.account)):
            if index == 0 and erased_since:
                continue  # the user was erased since: their books start again without it
            books.day.add(reservation.day, increments)
            books.month.add(reservation.month, increments)

    async def release(self, reservation: Reservation) -> None:
        self._unhold(reservation)

    async def count_turn(
        self, account: Account, *, tts_characters: int, epoch: int, now: datetime
    ) -> None:
        day, month = _periods(now)
        increments = _increments(Usage(), turns=1, tts_characters=tts_characters)
        erased_since = self._erasures(account.user_id) != epoch
        for index, (books, _) in enumerate(self._scopes(account)):
            if index == 0 and erased_since:
                continue
            books.day.add(day, increments)
            books.month.add(month, increments)

    async def report(self, user_id: str, now: datetime) -> UsageReport:
        day, month = _periods(now)
        user = self._users.get(user_id) or _Books()
        return UsageReport(
            user_today=_totals(user.day.get(day)),
            user_month=_totals(user.month.get(month)),
            global_today=_totals(self._global.day.get(day)),
            global_month=_totals(self._global.month.get(month)),
        )

    async def global_month(self, now: datetime) -> UsageTotals:
        _, month = _periods(now)
        return _totals(self._global.month.get(month))

    async def erase(self, user_id: str) -> int:
        books = self._users.get(user_id)
        if books is None:
            return 0
        erased = sum(1 for period in (books.day, books.month) if period.counts != _ZERO)
        del self._users[user_id]
        return erased


# -- Redis -----------------------------------------------------------------------------------

# KEYS: the budget hash, its holds (a sorted set of "id:amount" scored by expiry, ms)[, the
# user's key index]. ARGV: limit (nanos, 0 = none), amount, hold id, hold TTL ms, hash TTL ms.
# Returns 1 held, 0 refused. Expired holds are dropped first.
_RESERVE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #expired > 0 then
  local freed = 0
  for i = 1, #expired do freed = freed + tonumber(string.match(expired[i], ':(%d+)$')) end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  redis.call('HINCRBY', KEYS[1], 'held_nanousd', string.format('%d', -freed))
end
local limit = tonumber(ARGV[1])
local amount = tonumber(ARGV[2])
if limit > 0 then
  local cost = tonumber(redis.call('HGET', KEYS[1], 'cost_nanousd') or '0')
  local held = tonumber(redis.call('HGET', KEYS[1], 'held_nanousd') or '0')
  if cost + held + amount > limit then return 0 end
end
if amount > 0 then
  local hold_ttl = tonumber(ARGV[4])
  redis.call('HINCRBY', KEYS[1], 'held_nanousd', ARGV[2])
  redis.call('ZADD', KEYS[2], string.format('%d', now + hold_ttl), ARGV[3] .. ':' .. ARGV[2])
  -- The holds live as long as the hash that counts them: a hold that lapses is still in the
  -- set, so the next reservation finds it expired and gives its amount back.
  for k = 1, 2 do
    if redis.call('PTTL', KEYS[k]) < tonumber(ARGV[5]) then
      redis.call('PEXPIRE', KEYS[k], ARGV[5])
    end
  end
  if #KEYS == 3 then
    redis.call('ZADD', KEYS[3], string.format('%d', now + tonumber(ARGV[5]) + 1), KEYS[1],
      string.format('%d', now + tonumber(ARGV[5]) + 1), KEYS[2])
    if redis.call('PTTL', KEYS[3]) < tonumber(ARGV[5]) then
      redis.call('PEXPIRE', KEYS[3], ARGV[5])
    end
  end
end
return 1
"""

# KEYS: day hash, month hash, holds, the call's settled-marker[, the user's fence (its
# "erasures" field is the user's epoch), the user's key index]. ARGV: day TTL ms, month TTL ms,
# hold member ("" = none), which hash the hold is on (1 day, 2 month), expected epoch ("" = do
# not check), marker TTL ms ("0" = no marker), then the increments in `_FIELDS` order. The hold
# goes first; then, unless the user was erased since (the epoch moved), the increments are
# counted, once: a settle sent again (its first reply timed out, but Redis ran it) finds its
# marker and counts nothing. The index scores each key by when it expires, by the server's
# clock after the PEXPIREs, and drops entries whose key has expired by that same clock.
_RECORD_LUA = """
local fields = {'turns', 'prompt_tokens', 'completion_tokens', 'tts_characters', 'cost_nanousd'}
if ARGV[3] ~= '' and redis.call('ZREM', KEYS[3], ARGV[3]) == 1 then
  local amount = string.match(ARGV[3], ':(%d+)$')
  redis.call('HINCRBY', KEYS[tonumber(ARGV[4])], 'held_nanousd', '-' .. amount)
end
if #KEYS >= 5 and ARGV[5] ~= '' and
    (redis.call('HGET', KEYS[5], 'erasures') or '0') ~= ARGV[5] then
  return 0
end
local any = false
for i = 1, 5 do if ARGV[6 + i] ~= '0' then any = true end end
if not any then return 1 end
if ARGV[6] ~= '0' and not redis.call('SET', KEYS[4], '1', 'NX', 'PX', ARGV[6]) then
  return 1
end
local ttls = {tonumber(ARGV[1]), tonumber(ARGV[2])}
for k = 1, 2 do
  for i = 1, 5 do
    if ARGV[6 + i] ~= '0' then redis.call('HINCRBY', KEYS[k], fields[i], ARGV[6 + i]) end
  end
  redis.call('PEXPIRE', KEYS[k], ARGV[k])
end
if #KEYS == 6 then
  local t = redis.call('TIME')
  local floor_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[6],
    string.format('%d', floor_ms + 1 + ttls[1]), KEYS[1],
    string.format('%d', floor_ms + 1 + ttls[2]), KEYS[2])
  if ARGV[6] ~= '0' then
    redis.call('ZADD', KEYS[6], string.format('%d', floor_ms + 1 + tonumber(ARGV[6])), KEYS[4])
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', '(' .. string.format('%d', floor_ms))
  redis.call('PEXPIRE', KEYS[6], string.format('%d', math.max(ttls[1], ttls[2])))
end
return 1
"""

# KEYS: the user's key index. ARGV: the prefix of the user's usage keys. Deletes the keys the
# index lists (only those under the prefix, even if the index were ever to hold anything else:
# they share the user's hash tag, so they are in the script's slot) and the index, at once, so a
# record cannot land in between. Returns how many counters (holds and settled-markers are
# bookkeeping) existed.
_ERASE_LUA = """
local prefix = ARGV[1]
if redis.call('TYPE', KEYS[1])['ok'] ~= 'zset' then
  redis.call('DEL', KEYS[1])
  return 0
end
local counters = 0
for _, key in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if string.sub(key, 1, #prefix) == prefix then
    local bookkeeping = string.find(key, ':holds:', 1, true)
      or string.find(key, ':settled:', 1, true)
    if redis.call('DEL', key) == 1 and not bookkeeping then counters = counters + 1 end
  end
end
redis.call('DEL', KEYS[1])
return counters
"""

_ScriptCall = tuple[AsyncScript, list[str], list[str | int]]
# A settled call's marker outlives every retry of its settle (the bookkeeper gives up after an
# hour); it holds "1" and nothing of the user.
_SETTLED_TTL_MS: Final = 2 * 3600 * 1000


def _global_key(concern: str) -> str:
    # One hash tag for all global usage keys: a day, its month and their holds share a slot.
    return global_key(f"{{usage}}:{concern}")


@dataclass(frozen=True, slots=True)
class _ScopeKeys:
    day: str
    month: str
    holds: str
    settled_prefix: str
    daily: bool  # the budget is the day's (else the month's)
    epoch: str = ""  # the user's only
    index: str = ""  # the user's only

    def budget_hash(self) -> str:
        return self.day if self.daily else self.month

    def settled(self, hold_id: str) -> str:
        """The marker of one settled call, in this scope's slot."""
        return self.settled_prefix + hold_id


class RedisLedger:
    """The ledger in Redis, shared by all replicas. The client is the caller's.

    Keys, each a hash of the `_FIELDS` counters plus `held_nanousd` (cost in nano-dollars):
      user_key(id, "usage:day:YYYY-MM-DD"), user_key(id, "usage:month:YYYY-MM"),
      caller_key(name, "usage:day:..."), caller_key(name, "usage:month:..."),
      global_key("{usage}:day:..."), global_key("{usage}:month:...");
    beside each budget's hash a sorted set of its holds ("usage:holds:<period>"); and
    user_key(id, "usage:keys"), an index of the user's usage keys scored by when each expires,
    so erasing addresses exact keys. The user's epoch is the "erasures" field of the session
    store's user_key(id, "fence"), read by the settle script in the same slot.
    Day keys expire `day_ttl`, month keys `month_ttl` after their last record.

    The user's, the caller's and the global keys live in three cluster slots, so each change is
    three scripts sent in one round trip: each all-or-nothing, not atomic with each other. A
    reservation refused by one budget gives back what the others held at once.
    """

    def __init__(
        self,
        client: redisconn.Client,
        budgets: Budgets = Budgets(),
        *,
        day_ttl: timedelta = DAY_TTL,
        month_ttl: timedelta = MONTH_TTL,
    ) -> None:
        self._client = client
        self._limits = budgets.nanos()
        self._reserve = client.register_script(_RESERVE_LUA)
        self._cleanups: set[asyncio.Task[None]] = set()
        self._record = client.register_script(_RECORD_LUA)
        self._erase = client.register_script(_ERASE_LUA)
        self._ttls_ms = (_ms(day_ttl), _ms(month_ttl))

    def _keys(self, account: Account, day: str, month: str) -> tuple[_ScopeKeys, ...]:
        user, caller = account.user_id, account.caller
        return (
            _ScopeKeys(
                user_key(user, f"usage:day:{day}"),
                user_key(user, f"usage:month:{month}"),
                user_key(user, f"usage:holds:{day}"),
                user_key(user, "usage:settled:"),
                daily=True,
                epoch=user_key(user, "fence"),
                index=user_key(user, "usage:keys"),
            ),
            _ScopeKeys(
                caller_key(caller, f"usage:day:{day}"),
                caller_key(caller, f"usage:month:{month}"),
                caller_key(caller, f"usage:holds:{day}"),
                caller_key(caller, "usage:settled:"),
                daily=True,
            ),
            _ScopeKeys(
                _global_key(f"day:{day}"),
                _global_key(f"month:{month}"),
                _global_key(f"holds:{month}"),
                _global_key("settled:"),
                daily=False,
            ),
        )

    async def _scripts(self, calls: list[_ScriptCall]) -> list[Any]:
        """Each script once, all in one round trip (`redisconn.run_scripts`)."""
        return await redisconn.run_scripts(self._client, calls)

    async def reserve(
        self,
        account: Account,
        amount_nanos: int,
        *,
        epoch: int,
        hold_seconds: float,
        now: datetime,
    ) -> Reservation:
        if amount_nanos < 0:
            raise ValueError("a reservation must not be negative")
        day, month = _periods(now)
        hold_id = _hold_id()
        hold_ms = max(1, round(hold_seconds * 1000))
        calls: list[_ScriptCall] = []
        for keys, limit in zip(self._keys(account, day, month), self._limits, strict=True):
            script_keys = [keys.budget_hash(), keys.holds]
            if keys.index:
                script_keys.append(keys.index)
            ttl = self._ttls_ms[0] if keys.daily else self._ttls_ms[1]
            calls.append((self._reserve, script_keys, [limit, amount_nanos, hold_id, hold_ms, ttl]))
        reservation = Reservation(account, hold_id, amount_nanos, day, month, epoch)
        try:
            results = await self._scripts(calls)
        except BaseException:
            # Cancelled or failed with the holds in flight: Redis may have taken them. Give
            # them back in a task of its own (a release of holds never taken changes nothing).
            if amount_nanos:
                task = asyncio.get_running_loop().create_task(self._release_quietly(reservation))
                self._cleanups.add(task)
                task.add_done_callback(self._cleanups.discard)
            raise
        held = [int(result) for result in results]
        if all(held):
            return reservation
        refused = SCOPES[held.index(0)]
        if amount_nanos and any(held):
            await self.release(reservation)  # removes the holds that were taken, only those
        raise BudgetSpent(refused)

    async def _release_quietly(self, reservation: Reservation) -> None:
        try:
            await self.release(reservation)
        except (RedisError, OSError) as exc:
            # The holds lapse by themselves after hold_seconds.
            logger.warning("giving back a budget hold failed", extra={"error": type(exc).__name__})

    async def _record_all(
        self,
        reservation: Reservation | None,
        account: Account,
        day: str,
        month: str,
        incr: Counts,
        *,
        epoch: int | None = None,
    ) -> None:
        calls: list[_ScriptCall] = []
        # Only a settle of a reservation needs the marker that makes it count once.
        marked = reservation is not None and incr != _ZERO
        hold_id = reservation.hold_id if reservation is not None else ""
        for keys in self._keys(account, day, month):
            marker = keys.settled(hold_id) if marked else keys.day
            script_keys = [keys.day, keys.month, keys.holds, marker]
            expected = ""
            if keys.epoch:
                script_keys += [keys.epoch, keys.index]
                if reservation is not None:
                    expected = str(reservation.user_epoch)
                elif epoch is not None:
                    expected = str(epoch)
            member = reservation.member if reservation is not None else ""
            args: list[str | int] = [
                *self._ttls_ms,
                member,
                1 if keys.daily else 2,
                expected,
                _SETTLED_TTL_MS if marked else 0,
                *incr,
            ]
            calls.append((self._record, script_keys, args))
        await self._scripts(calls)

    async def settle(self, reservation: Reservation, usage: Usage) -> None:
        await self._record_all(
            reservation, reservation.account, reservation.day, reservation.month, _increments(usage)
        )

    async def release(self, reservation: Reservation) -> None:
        await self._record_all(
            reservation, reservation.account, reservation.day, reservation.month, _ZERO
        )

    async def count_turn(
        self, account: Account, *, tts_characters: int, epoch: int, now: datetime
    ) -> None:
        day, month = _periods(now)
        increments = _increments(Usage(), turns=1, tts_characters=tts_characters)
        await self._record_all(None, account, day, month, increments, epoch=epoch)

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

    async def global_month(self, now: datetime) -> UsageTotals:
        _, month = _periods(now)
        row = await self._client.hmget(_global_key(f"month:{month}"), list(_FIELDS))
        return _totals(_counts(row))

    async def erase(self, user_id: str) -> int:
        erased = await self._erase(
            keys=[user_key(user_id, "usage:keys")], args=[user_key(user_id, "usage:")]
        )
        return int(erased)


def _counts(row: list[bytes | str | None]) -> Counts:
    turns, prompt, completion, tts, nanos = (int(value or 0) for value in row)
    return turns, prompt, completion, tts, nanos


def _ms(ttl: timedelta) -> int:
    if ttl <= timedelta(0):
        raise ValueError("a TTL must be positive")
    return max(1, round(ttl.total_seconds() * 1000))


# -- settling whatever becomes of the turn ---------------------------------------------------

# A store that is away is asked again with backoff for this long before the record is given up
# (and logged as an error with the amount): long enough to ride out a Redis failover or restart.
_SETTLE_GIVE_UP_SECONDS: Final = 3600.0
_SETTLE_FIRST_PAUSE: Final = 0.05
_SETTLE_MAX_PAUSE: Final = 5.0


class Bookkeeper:
    """Settles and releases reservations in tasks of its own, so that a turn cancelled the
    moment the provider answered still has its cost counted, and a store that fails for a
    moment gets the record later (retried with backoff; the hold meanwhile keeps the money
    counted against the budgets until it expires)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def settle(self, reservation: Reservation, usage: Usage) -> asyncio.Task[None]:
        return self._start(lambda: self.ledger.settle(reservation, usage), "settle")

    def release(self, reservation: Reservation) -> asyncio.Task[None]:
        return self._start(lambda: self.ledger.release(reservation), "release")

    def _start(self, attempt: Callable[[], Awaitable[None]], what: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self._run(attempt, what))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(self, attempt: Callable[[], Awaitable[None]], what: str) -> None:
        give_up = Deadline.after(_SETTLE_GIVE_UP_SECONDS)
        pause = _SETTLE_FIRST_PAUSE
        failures = 0
        while True:
            try:
                await attempt()
            except (RedisError, OSError) as exc:
                failures += 1
                if give_up.remaining() < pause:
                    metrics.UNSETTLED.labels(what).inc()
                    logger.error(
                        "usage could not be recorded; its hold expires on its own",
                        extra={"what": what, "error": type(exc).__name__, "attempts": failures},
                    )
                    return
                if failures == 1:
                    logger.warning(
                        "recording usage failed; retrying until the store is back",
                        extra={"what": what, "error": type(exc).__name__},
                    )
                await asyncio.sleep(pause)
                pause = min(pause * 2, _SETTLE_MAX_PAUSE)
            except Exception:
                # A bug, not an outage: retrying would not help. Said loudly, never raised into
                # the turn that is waiting for it.
                metrics.UNSETTLED.labels(what).inc()
                logger.exception("usage could not be recorded", extra={"what": what})
                return
            else:
                if failures:
                    logger.info("usage recorded after a retry", extra={"what": what})
                return

    async def aclose(self, timeout_seconds: float = 5.0) -> None:
        """Wait a moment for what is still being recorded, then give up on it."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_seconds)
            for task in pending:
                task.cancel()
