"""Rate limits per user, per caller and global: GCRA, in-process or in Redis (shared by all
replicas).

GCRA (the generic cell rate algorithm) keeps one number per limit, the theoretical arrival time
(TAT): when the limit would be back to idle if requests had come at exactly the sustained rate.
A request at `now` conforms when `TAT + interval - burst * interval <= now`; it then moves TAT to
`max(TAT, now) + interval`. A refused request does not move TAT, and its retry-after is exactly
the time until it would conform. One number per key means no buckets to refill and no timers.

A request must pass the global limit, its caller's and its user's. Users are counted by their
look-alike spelling (`keys.lookalike`), and every user of a caller also counts against the
caller's own limit, so rotating or look-alike user ids cannot multiply one caller's allowance.
A request refused by one limit takes no slot from the others: otherwise one client hammering
its own limit would drain the global limit for everyone. In Redis the three limits are keys in
three cluster slots (no script may span them): all three are taken in one round trip and the
slots taken are given back at once when one refuses, so for one round trip a refused request's
slots look taken; the in-process limiter decides all three before changing any.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from redis.exceptions import RedisError

from services.common import redisconn
from services.orchestrator.keys import caller_key, global_key, lookalike, user_key

logger = logging.getLogger(__name__)

# Float noise in `now + k * interval` must not refuse a request that arrives exactly on time.
# One microsecond is also the resolution of Redis's TIME, so both limiters agree.
_TOLERANCE_SECONDS = 1e-6


@dataclass(frozen=True, slots=True)
class Rate:
    per_second: float  # sustained rate
    burst: int  # how many may come at once

    def __post_init__(self) -> None:
        if not self.per_second > 0:
            raise ValueError("a rate's per_second must be positive")
        if self.burst < 1:
            raise ValueError("a rate's burst must be at least 1")

    @property
    def interval(self) -> float:
        """Seconds between requests at the sustained rate."""
        return 1.0 / self.per_second


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after_seconds: float  # 0 when allowed
    scope: str  # "user", "caller" or "global" (which limit refused), "" when allowed


ALLOWED = Decision(allowed=True, retry_after_seconds=0.0, scope="")


class RateLimiter(Protocol):
    async def check(self, user_id: str, caller: str = "") -> Decision: ...

    async def erase(self, user_id: str) -> int: ...


def _gcra(tat: float | None, now: float, rate: Rate) -> tuple[float, float]:
    """(TAT after admitting a request at `now`, seconds until it conforms: 0 if it does now)."""
    interval = rate.interval
    new_tat = max(tat if tat is not None else now, now) + interval
    wait = new_tat - rate.burst * interval - now
    return new_tat, (wait if wait > _TOLERANCE_SECONDS else 0.0)


class MemoryRateLimiter:
    """GCRA in this process, for one replica. At most `max_users` users and as many callers are
    tracked (LRU).

    Evicting a user forgets their TAT, which only matters while it is in the future (a user busy
    right now); the least recently seen user almost never is, so size `max_users` above the
    number of users active within one burst window.
    """

    def __init__(
        self,
        *,
        user: Rate,
        global_: Rate,
        caller: Rate | None = None,
        max_users: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_users < 1:
            raise ValueError("max_users must be at least 1")
        self._user = user
        self._caller = caller
        self._global = global_
        self._max_users = max_users
        self._clock = clock
        self._global_tat: float | None = None
        self._user_tats: OrderedDict[str, float] = OrderedDict()
        self._caller_tats: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        """How many users are tracked."""
        return len(self._user_tats)

    def _remember(self, table: OrderedDict[str, float], key: str, tat: float) -> None:
        table[key] = tat
        table.move_to_end(key)
        while len(table) > self._max_users:
            table.popitem(last=False)

    async def check(self, user_id: str, caller: str = "") -> Decision:
        # No await in here: deciding and committing all limits is atomic on the event loop.
        now = self._clock()
        user = lookalike(user_id)
        global_tat, global_wait = _gcra(self._global_tat, now, self._global)
        if global_wait:
            return Decision(allowed=False, retry_after_seconds=global_wait, scope="global")
        caller_tat = 0.0
        if self._caller is not None:
            caller_tat, caller_wait = _gcra(self._caller_tats.get(caller), now, self._caller)
            if caller_wait:
                return Decision(allowed=False, retry_after_seconds=caller_wait, scope="caller")
        user_tat, user_wait = _gcra(self._user_tats.get(user), now, self._user)
        if user_wait:
            self._user_tats.move_to_end(user)  # present: a refusal implies a TAT ahead of now
            return Decision(allowed=False, retry_after_seconds=user_wait, scope="user")
        self._global_tat = global_tat
        if self._caller is not None:
            self._remember(self._caller_tats, caller, caller_tat)
        self._remember(self._user_tats, user, user_tat)
        return ALLOWED

    async def erase(self, user_id: str) -> int:
        return 1 if self._user_tats.pop(lookalike(user_id), None) is not None else 0


# KEYS[1]: the limit's key. ARGV: interval in microseconds, burst, "take" or "give".
# Time comes from the server (replicas' clocks may differ); TAT is stored in microseconds.
# "give" returns a slot taken by "take": TAT moves back by one interval.
_GCRA_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]))
if ARGV[3] == 'give' then
  if tat == nil then return {1, 0} end
  tat = tat - interval
  if tat <= now then
    redis.call('DEL', KEYS[1])
  else
    redis.call('SET', KEYS[1], string.format('%.0f', tat),
      'PX', string.format('%d', math.ceil((tat - now) / 1000)))
  end
  return {1, 0}
end
if tat == nil or tat < now then tat = now end
local new_tat = tat + interval
local wait = new_tat - tonumber(ARGV[2]) * interval - now
if wait > 1 then
  return {0, math.ceil(wait)}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat),
  'PX', string.format('%d', math.ceil((new_tat - now) / 1000)))
return {1, 0}
"""


class RedisRateLimiter:
    """GCRA in Redis, shared by all replicas: one atomic script per limit.

    Keys: `user_key(lookalike(user_id), "ratelimit")`, `caller_key(caller, "ratelimit")` and
    `global_key("ratelimit")`, each holding a TAT and expiring when it is reached (an idle limit
    has no key). The client is the caller's.
    """

    def __init__(
        self, client: redisconn.Client, *, user: Rate, global_: Rate, caller: Rate | None = None
    ) -> None:
        self._client = client
        self._user = user
        self._caller = caller
        self._global = global_
        self._script = client.register_script(_GCRA_SCRIPT)
        self._global_key = global_key("ratelimit")

    @staticmethod
    def _args(rate: Rate, action: str) -> list[str | int]:
        return [repr(rate.interval * 1_000_000), rate.burst, action]

    async def check(self, user_id: str, caller: str = "") -> Decision:
        limits: list[tuple[str, str, Rate]] = [("global", self._global_key, self._global)]
        if self._caller is not None:
            limits.append(("caller", caller_key(caller, "ratelimit"), self._caller))
        limits.append(("user", user_key(lookalike(user_id), "ratelimit"), self._user))
        # All three in one round trip; a server that lost its scripts gets them again.
        results = await redisconn.run_scripts(
            self._client,
            [(self._script, [key], self._args(rate, "take")) for _, key, rate in limits],
        )
        waits = [0.0 if int(allowed) else int(wait_us) / 1_000_000 for allowed, wait_us in results]
        refused = next((index for index, wait in enumerate(waits) if wait), None)
        if refused is None:
            return ALLOWED
        taken = [limits[index] for index, wait in enumerate(waits) if not wait]
        try:
            for _, key, rate in taken:
                await self._script(keys=[key], args=self._args(rate, "give"))
        except (RedisError, OSError) as exc:
            # A slot comes back by itself within one interval; the refusal stands.
            logger.warning("returning a rate slot failed", extra={"error": type(exc).__name__})
        scope = limits[refused][0]
        return Decision(allowed=False, retry_after_seconds=waits[refused], scope=scope)

    async def erase(self, user_id: str) -> int:
        return int(await self._client.delete(user_key(lookalike(user_id), "ratelimit")))
