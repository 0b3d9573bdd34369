"""Each user's conversation state: history, idempotent answers, preferences, and a turn lock.

Two stores with one protocol: `MemorySessionStore`, the embedded default (bounded in users, turns,
bytes, answers and locks), and `RedisSessionStore`, shared by all orchestrator replicas and
surviving their restarts. Both give a user's lock a TTL so that a holder that hangs or crashes
never blocks the user for longer than `lock_ttl_seconds`.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

import redis.asyncio as redis

from services.orchestrator import keys
from services.orchestrator.model import HistoryTurn

# Idempotent answers kept per user, newest first: enough for any client's retries, and a bound on
# what one user can make either store hold.
MAX_ANSWERS_PER_USER = 64

# Polling for a busy Redis lock: jittered so that waiting replicas do not retry in step.
_FIRST_PAUSE_SECONDS = 0.005
_MAX_PAUSE_SECONDS = 0.05


class LockTimeout(Exception):
    """The user's lock could not be taken within the time the caller allowed."""


class SessionStore(Protocol):
    async def history(self, user_id: str) -> list[HistoryTurn]:
        """The user's turns, oldest first; refreshes the history's TTL."""
        ...

    async def timezone(self, user_id: str) -> str:
        """The user's stored time zone preference, or ""."""
        ...

    async def cached_answer(self, user_id: str, request_id: str) -> bytes | None:
        """The answer committed for `request_id`, while it is kept."""
        ...

    async def commit_turn(
        self, user_id: str, turn: HistoryTurn, *, answer: bytes, timezone: str = ""
    ) -> None:
        """Atomically: append the turn (bounded by max_turns and max_bytes, oldest dropped first),
        refresh the TTL, remember `answer` under turn.request_id (if non-empty) for
        `answer_ttl_seconds`, and store the timezone preference if given. All or nothing."""
        ...

    async def erase(self, user_id: str) -> int:
        """Delete everything of the user; return how many records (turns, answers, preferences)
        were erased."""
        ...

    def lock(self, user_id: str, *, wait_seconds: float) -> AbstractAsyncContextManager[None]:
        """Serialize the user's turns; raises LockTimeout after `wait_seconds`."""
        ...

    async def aclose(self) -> None: ...


def encode_turn(turn: HistoryTurn) -> bytes:
    """Compact UTF-8 JSON; its length is what `max_bytes` counts. Raises before anything is
    stored if the turn cannot be encoded (a lone surrogate, a NaN time)."""
    return json.dumps(
        {
            "user": turn.user,
            "assistant": turn.assistant,
            "language": turn.language,
            "at": turn.at,
            "request_id": turn.request_id,
        },
        ensure_ascii=False,
        separators=(",", ":"),
        allow_nan=False,
    ).encode("utf-8")


def decode_turn(raw: bytes) -> HistoryTurn:
    data = json.loads(raw)
    return HistoryTurn(
        user=str(data["user"]),
        assistant=str(data["assistant"]),
        language=str(data["language"]),
        at=float(data["at"]),
        request_id=str(data.get("request_id", "")),
    )


def _check_limits(**limits: float) -> None:
    for name, value in limits.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value!r}")


# --- in-process store --------------------------------------------------------------------------


@dataclass(slots=True)
class _UserState:
    turns: deque[tuple[HistoryTurn, int]] = field(default_factory=deque)  # (turn, encoded size)
    size: int = 0
    timezone: str = ""
    expires_at: float = 0.0  # of the history and the preferences
    # request_id -> (expires_at, answer). All answers share one TTL, so insertion order (an
    # overwritten answer moves to the end) is also expiry order.
    answers: OrderedDict[str, tuple[float, bytes]] = field(default_factory=OrderedDict)

    def expire(self, now: float) -> bool:
        """Drop what has expired; True when nothing is left."""
        if self.expires_at <= now:
            self.turns.clear()
            self.size = 0
            self.timezone = ""
        while self.answers:
            request_id, (expires_at, _) = next(iter(self.answers.items()))
            if expires_at > now:
                break
            del self.answers[request_id]
        return not self.turns and not self.timezone and not self.answers

    def records(self) -> int:
        return len(self.turns) + len(self.answers) + (1 if self.timezone else 0)


@dataclass(slots=True, eq=False)
class _MemoryLock:
    waiters: int = 0  # tasks holding or awaiting this lock; the entry lives while > 0
    holder: object | None = None
    expires_at: float = 0.0
    released: asyncio.Event = field(default_factory=asyncio.Event)


class MemorySessionStore:
    """Sessions of at most `max_users` users in this process, least recently used evicted first."""

    def __init__(
        self,
        *,
        max_users: int = 10_000,
        max_turns: int = 20,
        max_bytes: int = 32_768,
        ttl_seconds: float = 86_400,
        answer_ttl_seconds: float = 86_400,
        lock_ttl_seconds: float = 60,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_limits(
            max_users=max_users,
            max_turns=max_turns,
            max_bytes=max_bytes,
            ttl_seconds=ttl_seconds,
            answer_ttl_seconds=answer_ttl_seconds,
            lock_ttl_seconds=lock_ttl_seconds,
        )
        self._max_users = max_users
        self._max_turns = max_turns
        self._max_bytes = max_bytes
        self._ttl = ttl_seconds
        self._answer_ttl = answer_ttl_seconds
        self._lock_ttl = lock_ttl_seconds
        self._clock = clock
        self._users: OrderedDict[str, _UserState] = OrderedDict()
        self._locks: dict[str, _MemoryLock] = {}

    def __len__(self) -> int:
        """Users whose data is held (never more than `max_users`)."""
        return len(self._users)

    @property
    def locks_in_use(self) -> int:
        """Users with a lock held or awaited: bounded by concurrency, not by users seen."""
        return len(self._locks)

    def _live(self, user_id: str) -> _UserState | None:
        state = self._users.get(user_id)
        if state is None:
            return None
        if state.expire(self._clock()):
            del self._users[user_id]
            return None
        self._users.move_to_end(user_id)
        return state

    async def history(self, user_id: str) -> list[HistoryTurn]:
        state = self._live(user_id)
        if state is None:
            return []
        state.expires_at = self._clock() + self._ttl
        return [turn for turn, _ in state.turns]

    async def timezone(self, user_id: str) -> str:
        state = self._live(user_id)
        return "" if state is None else state.timezone

    async def cached_answer(self, user_id: str, request_id: str) -> bytes | None:
        state = self._live(user_id)
        if state is None or not request_id:
            return None
        entry = state.answers.get(request_id)
        return None if entry is None else entry[1]

    async def commit_turn(
        self, user_id: str, turn: HistoryTurn, *, answer: bytes, timezone: str = ""
    ) -> None:
        # Everything that can fail comes before the first change: no await, so nothing interleaves.
        size = len(encode_turn(turn))
        now = self._clock()
        state = self._live(user_id)
        if state is None:
            state = self._users[user_id] = _UserState()
            while len(self._users) > self._max_users:
                self._users.popitem(last=False)
        state.turns.append((turn, size))
        state.size += size
        # A single turn larger than max_bytes is kept alone: the newest turn is never dropped.
        while len(state.turns) > self._max_turns or (
            state.size > self._max_bytes and len(state.turns) > 1
        ):
            state.size -= state.turns.popleft()[1]
        state.expires_at = now + self._ttl
        if timezone:
            state.timezone = timezone
        if turn.request_id:
            state.answers.pop(turn.request_id, None)
            state.answers[turn.request_id] = (now + self._answer_ttl, answer)
            while len(state.answers) > MAX_ANSWERS_PER_USER:
                state.answers.popitem(last=False)

    async def erase(self, user_id: str) -> int:
        # A held lock belongs to a running task of this process; it is released by that task.
        state = self._users.pop(user_id, None)
        if state is None or state.expire(self._clock()):
            return 0
        return state.records()

    @asynccontextmanager
    async def lock(self, user_id: str, *, wait_seconds: float) -> AsyncIterator[None]:
        entry = self._locks.get(user_id)
        if entry is None:
            entry = self._locks[user_id] = _MemoryLock()
        entry.waiters += 1
        try:
            token = await self._acquire(entry, wait_seconds)
            try:
                yield
            finally:
                # After an expiry the lock may be someone else's now: leave theirs alone.
                if entry.holder is token:
                    entry.holder = None
                    entry.released.set()
        finally:
            entry.waiters -= 1
            if entry.waiters == 0:
                del self._locks[user_id]

    async def _acquire(self, entry: _MemoryLock, wait_seconds: float) -> object:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while True:
            now = self._clock()
            if entry.holder is None or entry.expires_at <= now:
                token = object()
                entry.holder = token
                entry.expires_at = now + self._lock_ttl
                entry.released.clear()
                return token
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise LockTimeout(f"the user's lock was busy for {wait_seconds:.3f} s")
            try:
                async with asyncio.timeout(min(remaining, entry.expires_at - now)):
                    await entry.released.wait()
            except TimeoutError:
                pass

    async def aclose(self) -> None:
        return None


# --- Redis store -------------------------------------------------------------------------------

# KEYS: history, answer index, prefs[, answer]. ARGV: turn, max_turns, max_bytes, ttl_ms,
# answer_ttl_ms, timezone, answer, max_answers. Types are checked before the first write because
# a failing script is not rolled back. Answer keys evicted from the index are deleted here; they
# share the user's hash tag, so they are in the script's slot.
_COMMIT_LUA = """
local history, index, prefs, answer = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local max_turns = tonumber(ARGV[2])
local max_bytes = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local answer_ttl = tonumber(ARGV[5])
local timezone = ARGV[6]
local max_answers = tonumber(ARGV[8])

local function expect(key, kind)
  local found = redis.call('TYPE', key)['ok']
  return found == 'none' or found == kind
end
if not (expect(history, 'list') and expect(index, 'zset') and expect(prefs, 'hash')
        and (not answer or expect(answer, 'string'))) then
  return redis.error_reply('WRONGTYPE a session key holds the wrong kind of value')
end

redis.call('RPUSH', history, ARGV[1])
redis.call('LTRIM', history, -max_turns, -1)
local items = redis.call('LRANGE', history, 0, -1)
local total = 0
for i = 1, #items do total = total + #items[i] end
local drop = 0
while total > max_bytes and drop < #items - 1 do
  drop = drop + 1
  total = total - #items[drop]
end
if drop > 0 then redis.call('LTRIM', history, drop, -1) end
redis.call('PEXPIRE', history, ttl)

if timezone ~= '' then redis.call('HSET', prefs, 'timezone', timezone) end
redis.call('PEXPIRE', prefs, ttl)

if answer then
  local time = redis.call('TIME')
  local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  redis.call('ZREMRANGEBYSCORE', index, '-inf', now)
  if not redis.call('ZSCORE', index, answer) then
    local excess = redis.call('ZCARD', index) - max_answers + 1
    if excess > 0 then
      local oldest = redis.call('ZRANGE', index, 0, excess - 1)
      for i = 1, #oldest do redis.call('DEL', oldest[i]) end
      redis.call('ZREMRANGEBYRANK', index, 0, excess - 1)
    end
  end
  -- Scores are expiry times, kept strictly increasing so that they also order the answers
  -- when several are stored within one millisecond.
  local score = now + answer_ttl
  local newest = redis.call('ZRANGE', index, -1, -1, 'WITHSCORES')
  if newest[2] and tonumber(newest[2]) >= score then score = tonumber(newest[2]) + 1 end
  redis.call('SET', answer, ARGV[7], 'PX', answer_ttl)
  redis.call('ZADD', index, score, answer)
  redis.call('PEXPIRE', index, answer_ttl)
end
return 1
"""

# KEYS: history, answer index, prefs, lock. ARGV: the user's key prefix. Returns the records
# erased. Only exact keys: the index lists them, and only the user's own are deleted.
_ERASE_LUA = """
local history, index, prefs, lock = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local prefix = ARGV[1]
local function kind(key) return redis.call('TYPE', key)['ok'] end
local erased = 0
if kind(history) == 'list' then erased = erased + redis.call('LLEN', history) end
if kind(prefs) == 'hash' then erased = erased + redis.call('HLEN', prefs) end
if kind(index) == 'zset' then
  local members = redis.call('ZRANGE', index, 0, -1)
  for i = 1, #members do
    if string.sub(members[i], 1, #prefix) == prefix then
      erased = erased + redis.call('DEL', members[i])
    end
  end
end
redis.call('DEL', history, index, prefs, lock)
return erased
"""

# KEYS: lock. ARGV: token, ttl_ms. Idempotent, so a retried call after a lost reply still sees
# that the lock is ours.
_ACQUIRE_LUA = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
"""

# KEYS: lock. ARGV: token. Compare-and-delete: an expired holder never removes its successor's lock.
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _millis(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisSessionStore:
    """Sessions in Redis, one user's keys under one hash tag (see `keys`). Redis errors propagate.

    The client is injected and closed by whoever created it; it must return bytes
    (`decode_responses=False`, as `services.common.redisconn.connect` builds it).
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        max_turns: int = 20,
        max_bytes: int = 32_768,
        ttl_seconds: float = 86_400,
        answer_ttl_seconds: float = 86_400,
        lock_ttl_seconds: float = 60,
    ) -> None:
        _check_limits(
            max_turns=max_turns,
            max_bytes=max_bytes,
            ttl_seconds=ttl_seconds,
            answer_ttl_seconds=answer_ttl_seconds,
            lock_ttl_seconds=lock_ttl_seconds,
        )
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("RedisSessionStore needs a client with decode_responses=False")
        self._client = client
        self._max_turns = max_turns
        self._max_bytes = max_bytes
        self._ttl_ms = _millis(ttl_seconds)
        self._answer_ttl_ms = _millis(answer_ttl_seconds)
        self._lock_ttl_ms = _millis(lock_ttl_seconds)
        self._commit = client.register_script(_COMMIT_LUA)
        self._erase = client.register_script(_ERASE_LUA)
        self._acquire = client.register_script(_ACQUIRE_LUA)
        self._release = client.register_script(_RELEASE_LUA)

    @staticmethod
    def _answer_key(user_id: str, request_id: str) -> str:
        return keys.user_key(user_id, "answer:" + keys.digest(request_id))

    async def history(self, user_id: str) -> list[HistoryTurn]:
        history = keys.user_key(user_id, "history")
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.lrange(history, 0, -1)
            pipe.pexpire(history, self._ttl_ms)
            pipe.pexpire(keys.user_key(user_id, "prefs"), self._ttl_ms)
            raw, _, _ = await pipe.execute()
        return [decode_turn(item) for item in raw]

    async def timezone(self, user_id: str) -> str:
        value = await self._client.hget(keys.user_key(user_id, "prefs"), "timezone")
        return value.decode("utf-8") if isinstance(value, bytes) else ""

    async def cached_answer(self, user_id: str, request_id: str) -> bytes | None:
        if not request_id:
            return None
        value = await self._client.get(self._answer_key(user_id, request_id))
        return value if isinstance(value, bytes) else None

    async def commit_turn(
        self, user_id: str, turn: HistoryTurn, *, answer: bytes, timezone: str = ""
    ) -> None:
        script_keys = [
            keys.user_key(user_id, "history"),
            keys.user_key(user_id, "answers"),
            keys.user_key(user_id, "prefs"),
        ]
        if turn.request_id:
            script_keys.append(self._answer_key(user_id, turn.request_id))
        await self._commit(
            keys=script_keys,
            args=[
                encode_turn(turn),
                self._max_turns,
                self._max_bytes,
                self._ttl_ms,
                self._answer_ttl_ms,
                timezone,
                answer,
                MAX_ANSWERS_PER_USER,
            ],
        )

    async def erase(self, user_id: str) -> int:
        erased = await self._erase(
            keys=[
                keys.user_key(user_id, "history"),
                keys.user_key(user_id, "answers"),
                keys.user_key(user_id, "prefs"),
                keys.user_key(user_id, "lock"),
            ],
            args=[keys.user_key(user_id, "")],
        )
        return int(erased)

    @asynccontextmanager
    async def lock(self, user_id: str, *, wait_seconds: float) -> AsyncIterator[None]:
        key = keys.user_key(user_id, "lock")
        token = secrets.token_hex(16)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        pause = _FIRST_PAUSE_SECONDS
        while not await self._acquire(keys=[key], args=[token, self._lock_ttl_ms]):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise LockTimeout(f"the user's lock was busy for {wait_seconds:.3f} s")
            jittered = random.uniform(pause / 2, pause)  # noqa: S311 - spreads retries, not a secret
            await asyncio.sleep(min(remaining, jittered))
            pause = min(pause * 2, _MAX_PAUSE_SECONDS)
        try:
            yield
        finally:
            await self._release(keys=[key], args=[token])

    async def aclose(self) -> None:
        return None
