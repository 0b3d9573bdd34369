"""Each user's conversation state: history, idempotent answers, preferences, and a turn lock.

Two stores with one protocol: `MemorySessionStore`, the embedded default (bounded in users, turns,
bytes, answers and locks), and `RedisSessionStore`, shared by all orchestrator replicas and
surviving their restarts.

The lock serializes one user's turns. Each acquisition gets a fencing token, a per-user number
that grows with every acquisition and every erase; the commit is accepted only while the token
is still the newest. A turn whose lock expired and was taken by a newer turn, or whose user was
erased meanwhile, therefore stores nothing (`LeaseLost` says which). The lock's TTL is given per
acquisition (the orchestrator derives it from the turn's deadline), so a holder that hangs or
crashes never blocks the user for longer than its own turn could have run. Erasing a user never
deletes a running turn's lock: turns of one user stay serialized across an erase.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Final, Protocol

from redis.exceptions import RedisError

from services.common import redisconn
from services.common.deadline import Deadline
from services.orchestrator import keys
from services.orchestrator.codec import decode_turn, encode_turn
from services.orchestrator.model import HistoryTurn, Preferences

logger = logging.getLogger(__name__)

# Idempotent answers kept per user, newest first: enough for any client's retries, and a bound on
# what one user can make either store hold.
MAX_ANSWERS_PER_USER: Final = 64

# Polling for a busy Redis lock: jittered so that waiting replicas do not retry in step.
_FIRST_PAUSE_SECONDS: Final = 0.005
_MAX_PAUSE_SECONDS: Final = 0.05
# The fencing counter outlives any lock by far; it holds two numbers and nothing of the user.
_FENCE_TTL_SECONDS: Final = 86_400.0
# How long a turn that ends waits for its lock's release before leaving it to a task.
_RELEASE_WAIT_SECONDS: Final = 0.1


class LockTimeout(Exception):
    """The user's lock could not be taken within the time the caller allowed."""


class LeaseLost(Exception):
    """The commit was refused: the user was erased, or a newer turn took the lock, while this
    turn ran. Nothing of the turn was stored."""

    def __init__(self, erased: bool) -> None:
        super().__init__(
            "the user's data was erased while the turn ran"
            if erased
            else "a newer turn of the user took over while this one ran"
        )
        self.erased = erased


@dataclass(frozen=True, slots=True)
class Lease:
    """The user's lock, held by one turn: its fencing token, and how many erases it has seen."""

    user_id: str
    token: int
    erasures: int


@dataclass(frozen=True, slots=True)
class Arrival:
    """What a turn finds when it arrives, before it waits for the user's lock."""

    answer: bytes | None  # the answer already committed for its request id
    erasures: int  # how often the user had been erased by then


@dataclass(frozen=True, slots=True)
class Session:
    history: list[HistoryTurn]
    preferences: Preferences


class SessionStore(Protocol):
    async def load(self, user_id: str) -> Session:
        """The user's turns (oldest first) and preferences; refreshes their TTL."""
        ...

    async def cached_answer(self, user_id: str, request_id: str) -> bytes | None:
        """The answer committed for `request_id`, while it is kept."""
        ...

    async def arrive(self, user_id: str, request_id: str) -> Arrival:
        """The answer for `request_id` (if any) and the user's erase count, in one round trip:
        a turn whose user is erased while it waits for the lock can then tell."""
        ...

    async def commit_turn(
        self, lease: Lease, turn: HistoryTurn, *, answer: bytes, preferences: Preferences
    ) -> None:
        """Atomically, if `lease` is still the user's newest: append the turn (bounded by
        max_turns and max_bytes, oldest dropped first), refresh the TTL, remember `answer`
        under turn.request_id (if non-empty) for `answer_ttl_seconds`, and store the non-empty
        preferences. All or nothing; raises LeaseLost when the lease is not the newest."""
        ...

    async def erase(self, user_id: str) -> int:
        """Delete everything of the user and fence off any running turn of theirs; return how
        many records (turns, answers, preferences) were erased."""
        ...

    def lock(
        self, user_id: str, *, wait_seconds: float, ttl_seconds: float
    ) -> AbstractAsyncContextManager[Lease]:
        """Serialize the user's turns; raises LockTimeout after `wait_seconds`. The lock lapses
        `ttl_seconds` after it was taken if its holder never releases it."""
        ...

    async def aclose(self) -> None: ...


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
    place: str = ""
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
            self.place = ""
        while self.answers:
            request_id, (expires_at, _) = next(iter(self.answers.items()))
            if expires_at > now:
                break
            del self.answers[request_id]
        return not self.turns and not self.timezone and not self.place and not self.answers

    def records(self) -> int:
        return len(self.turns) + len(self.answers) + bool(self.timezone) + bool(self.place)


@dataclass(slots=True, eq=False)
class _MemoryLock:
    waiters: int = 0  # tasks holding or awaiting this lock; the entry lives while > 0
    holder: int = 0  # the holder's fencing token; 0 = free
    expires_at: float = 0.0
    released: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(slots=True)
class _Fence:
    """A user's fencing token (bumped by every acquisition and every erase) and erase count.
    Kept apart from the lock, which comes and goes: a lease may outlive its lock."""

    token: int = 0
    erasures: int = 0


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_limits(
            max_users=max_users,
            max_turns=max_turns,
            max_bytes=max_bytes,
            ttl_seconds=ttl_seconds,
            answer_ttl_seconds=answer_ttl_seconds,
        )
        self._max_users = max_users
        self._max_turns = max_turns
        self._max_bytes = max_bytes
        self._ttl = ttl_seconds
        self._answer_ttl = answer_ttl_seconds
        self._clock = clock
        self._users: OrderedDict[str, _UserState] = OrderedDict()
        self._locks: dict[str, _MemoryLock] = {}
        # The fences of the `max_users` users who most recently locked or were erased.
        self._fences: OrderedDict[str, _Fence] = OrderedDict()

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

    async def load(self, user_id: str) -> Session:
        state = self._live(user_id)
        if state is None:
            return Session([], Preferences())
        state.expires_at = self._clock() + self._ttl
        return Session([turn for turn, _ in state.turns], Preferences(state.timezone, state.place))

    async def cached_answer(self, user_id: str, request_id: str) -> bytes | None:
        state = self._live(user_id)
        if state is None or not request_id:
            return None
        entry = state.answers.get(request_id)
        return None if entry is None else entry[1]

    async def arrive(self, user_id: str, request_id: str) -> Arrival:
        return Arrival(await self.cached_answer(user_id, request_id), self.erasures(user_id))

    async def commit_turn(
        self, lease: Lease, turn: HistoryTurn, *, answer: bytes, preferences: Preferences
    ) -> None:
        # Everything that can fail comes before the first change: no await, so nothing interleaves.
        user_id = lease.user_id
        fence = self._fence(user_id)
        if fence.token != lease.token:
            raise LeaseLost(erased=fence.erasures != lease.erasures)
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
        if preferences.timezone:
            state.timezone = preferences.timezone
        if preferences.place:
            state.place = preferences.place
        if turn.request_id:
            state.answers.pop(turn.request_id, None)
            state.answers[turn.request_id] = (now + self._answer_ttl, answer)
            while len(state.answers) > MAX_ANSWERS_PER_USER:
                state.answers.popitem(last=False)

    async def erase(self, user_id: str) -> int:
        # A held lock belongs to a running turn, which releases it; fencing keeps that turn
        # from committing anything now.
        fence = self._fence(user_id)
        fence.token += 1
        fence.erasures += 1
        state = self._users.pop(user_id, None)
        if state is None or state.expire(self._clock()):
            return 0
        return state.records()

    @asynccontextmanager
    async def lock(
        self, user_id: str, *, wait_seconds: float, ttl_seconds: float
    ) -> AsyncIterator[Lease]:
        entry = self._locks.get(user_id)
        if entry is None:
            entry = self._locks[user_id] = _MemoryLock()
        entry.waiters += 1
        try:
            token = await self._acquire(user_id, entry, wait_seconds, ttl_seconds)
            try:
                yield Lease(user_id, token, self.erasures(user_id))
            finally:
                # After an expiry the lock may be someone else's now: leave theirs alone.
                if entry.holder == token:
                    entry.holder = 0
                    entry.released.set()
        finally:
            entry.waiters -= 1
            if entry.waiters == 0:
                del self._locks[user_id]

    async def _acquire(
        self, user_id: str, entry: _MemoryLock, wait_seconds: float, ttl_seconds: float
    ) -> int:
        deadline = Deadline.after(wait_seconds)
        while True:
            now = self._clock()
            if not entry.holder or entry.expires_at <= now:
                fence = self._fence(user_id)
                fence.token += 1
                entry.holder = fence.token
                entry.expires_at = now + ttl_seconds
                entry.released.clear()
                return entry.holder
            remaining = deadline.remaining()
            if remaining <= 0:
                raise LockTimeout(f"the user's lock was busy for {wait_seconds:.3f} s")
            try:
                async with asyncio.timeout(min(remaining, entry.expires_at - now)):
                    await entry.released.wait()
            except TimeoutError:
                pass

    def _fence(self, user_id: str) -> _Fence:
        fence = self._fences.get(user_id)
        if fence is None:
            fence = self._fences[user_id] = _Fence()
            for _ in range(len(self._fences)):
                if len(self._fences) <= self._max_users:
                    break
                # The least recent; never one whose lock is held or awaited right now.
                oldest = next(iter(self._fences))
                if oldest in self._locks:
                    self._fences.move_to_end(oldest)
                else:
                    del self._fences[oldest]
        self._fences.move_to_end(user_id)
        return fence

    def erasures(self, user_id: str) -> int:
        """How often the user was erased: the usage ledger's epoch for them."""
        fence = self._fences.get(user_id)
        return 0 if fence is None else fence.erasures

    async def aclose(self) -> None:
        return None


# --- Redis store -------------------------------------------------------------------------------

# KEYS: fence, history, answer index, prefs[, answer]. ARGV: token, turn, max_turns, max_bytes,
# ttl_ms, answer_ttl_ms, timezone, place, answer, max_answers, commit id. Returns 1, or 0 when
# the token is no longer the newest (nothing written). Types are checked before the first
# write because a failing script is not rolled back. Answer keys evicted from the index are
# deleted here; they share the user's hash tag, so they are in the script's slot. Each commit
# has an id of its own: the client sends a command again when its connection dropped before
# the reply (redis-py's retry), and a commit that had run then must not append the turn twice.
_COMMIT_LUA = """
local fence, history, index, prefs, answer = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
if tonumber(redis.call('HGET', fence, 'token') or '0') ~= tonumber(ARGV[1]) then return 0 end
if redis.call('HGET', fence, 'committed') == ARGV[11] then return 1 end
local max_turns = tonumber(ARGV[3])
local max_bytes = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local answer_ttl = tonumber(ARGV[6])
local timezone, place = ARGV[7], ARGV[8]
local max_answers = tonumber(ARGV[10])

local function expect(key, kind)
  local found = redis.call('TYPE', key)['ok']
  return found == 'none' or found == kind
end
if not (expect(history, 'list') and expect(index, 'zset') and expect(prefs, 'hash')
        and (not answer or expect(answer, 'string'))) then
  return redis.error_reply('WRONGTYPE a session key holds the wrong kind of value')
end

redis.call('RPUSH', history, ARGV[2])
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
if place ~= '' then redis.call('HSET', prefs, 'place', place) end
if redis.call('EXISTS', prefs) == 1 then redis.call('PEXPIRE', prefs, ttl) end

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
  redis.call('SET', answer, ARGV[9], 'PX', answer_ttl)
  redis.call('ZADD', index, score, answer)
  redis.call('PEXPIRE', index, answer_ttl)
end
redis.call('HSET', fence, 'committed', ARGV[11])
return 1
"""

# KEYS: history, answer index, prefs, fence. ARGV: the user's key prefix, fence TTL ms. Returns
# the records erased. Only exact keys: the index lists them, and only the user's own are
# deleted. The lock is left to its holder; the fence moves on so that the holder's commit fails.
_ERASE_LUA = """
local history, index, prefs, fence = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
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
redis.call('DEL', history, index, prefs)
redis.call('HINCRBY', fence, 'token', 1)
redis.call('HINCRBY', fence, 'erasures', 1)
redis.call('HDEL', fence, 'committed')  -- the last commit's id: the new token fences it anyway
redis.call('PEXPIRE', fence, ARGV[2])
return erased
"""

# KEYS: lock, fence. ARGV: owner, ttl_ms, fence TTL ms. Returns {token, erasures}, or {0, 0}
# while another owner holds the lock. Idempotent, so a retried call after a lost reply still
# finds the lock is ours (and keeps its token).
_ACQUIRE_LUA = """
local held = redis.call('GET', KEYS[1])
if held then
  local owner, token = string.match(held, '^(%x+):(%d+)$')
  if owner == ARGV[1] then
    return {tonumber(token), tonumber(redis.call('HGET', KEYS[2], 'erasures') or '0')}
  end
  return {0, 0}
end
local token = redis.call('HINCRBY', KEYS[2], 'token', 1)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. token, 'PX', ARGV[2])
return {token, tonumber(redis.call('HGET', KEYS[2], 'erasures') or '0')}
"""

# KEYS: lock. ARGV: owner. Compare-and-delete: an expired holder never removes its successor's
# lock. By owner, not token, so that an acquire whose reply never arrived (its caller was
# cancelled) can still be undone.
_RELEASE_LUA = """
local held = redis.call('GET', KEYS[1])
if held and string.match(held, '^(%x+):') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
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
        client: redisconn.Client,
        *,
        max_turns: int = 20,
        max_bytes: int = 32_768,
        ttl_seconds: float = 86_400,
        answer_ttl_seconds: float = 86_400,
    ) -> None:
        _check_limits(
            max_turns=max_turns,
            max_bytes=max_bytes,
            ttl_seconds=ttl_seconds,
            answer_ttl_seconds=answer_ttl_seconds,
        )
        if redisconn.decodes_responses(client):
            raise ValueError("RedisSessionStore needs a client with decode_responses=False")
        self._client = client
        self._max_turns = max_turns
        self._max_bytes = max_bytes
        self._ttl_ms = _millis(ttl_seconds)
        self._answer_ttl_ms = _millis(answer_ttl_seconds)
        self._fence_ttl_ms = _millis(_FENCE_TTL_SECONDS)
        self._commit = client.register_script(_COMMIT_LUA)
        self._erase = client.register_script(_ERASE_LUA)
        self._acquire = client.register_script(_ACQUIRE_LUA)
        self._release = client.register_script(_RELEASE_LUA)
        self._releases: set[asyncio.Task[None]] = set()

    @staticmethod
    def _answer_key(user_id: str, request_id: str) -> str:
        return keys.user_key(user_id, "answer:" + keys.digest(request_id))

    async def load(self, user_id: str) -> Session:
        history = keys.user_key(user_id, "history")
        prefs = keys.user_key(user_id, "prefs")
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.lrange(history, 0, -1)
            pipe.hmget(prefs, ["timezone", "place"])
            pipe.pexpire(history, self._ttl_ms)
            pipe.pexpire(prefs, self._ttl_ms)
            raw, (timezone, place), _, _ = await pipe.execute()
        return Session(_decoded(raw), Preferences(timezone=_text(timezone), place=_text(place)))

    async def cached_answer(self, user_id: str, request_id: str) -> bytes | None:
        if not request_id:
            return None
        value = await self._client.get(self._answer_key(user_id, request_id))
        return value if isinstance(value, bytes) else None

    async def arrive(self, user_id: str, request_id: str) -> Arrival:
        fence = keys.user_key(user_id, "fence")
        if not request_id:
            return Arrival(None, int(await self._client.hget(fence, "erasures") or 0))
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.get(self._answer_key(user_id, request_id))
            pipe.hget(fence, "erasures")
            answer, erasures = await pipe.execute()
        return Arrival(answer if isinstance(answer, bytes) else None, int(erasures or 0))

    async def commit_turn(
        self, lease: Lease, turn: HistoryTurn, *, answer: bytes, preferences: Preferences
    ) -> None:
        user_id = lease.user_id
        fence = keys.user_key(user_id, "fence")
        script_keys = [
            fence,
            keys.user_key(user_id, "history"),
            keys.user_key(user_id, "answers"),
            keys.user_key(user_id, "prefs"),
        ]
        if turn.request_id:
            script_keys.append(self._answer_key(user_id, turn.request_id))
        committed = await self._commit(
            keys=script_keys,
            args=[
                lease.token,
                encode_turn(turn),
                self._max_turns,
                self._max_bytes,
                self._ttl_ms,
                self._answer_ttl_ms,
                preferences.timezone,
                preferences.place,
                answer,
                MAX_ANSWERS_PER_USER,
                secrets.token_hex(8),
            ],
        )
        if not int(committed):
            erasures = await self._client.hget(fence, "erasures")
            raise LeaseLost(erased=int(erasures or 0) != lease.erasures)

    async def erase(self, user_id: str) -> int:
        erased = await self._erase(
            keys=[
                keys.user_key(user_id, "history"),
                keys.user_key(user_id, "answers"),
                keys.user_key(user_id, "prefs"),
                keys.user_key(user_id, "fence"),
            ],
            args=[keys.user_key(user_id, ""), self._fence_ttl_ms],
        )
        return int(erased)

    @asynccontextmanager
    async def lock(
        self, user_id: str, *, wait_seconds: float, ttl_seconds: float
    ) -> AsyncIterator[Lease]:
        key = keys.user_key(user_id, "lock")
        fence = keys.user_key(user_id, "fence")
        owner = secrets.token_hex(16)
        args: list[str | int] = [owner, _millis(ttl_seconds), self._fence_ttl_ms]
        deadline = Deadline.after(wait_seconds)
        pause = _FIRST_PAUSE_SECONDS
        try:
            while True:
                token, erasures = await self._acquire(keys=[key, fence], args=args)
                if int(token):
                    break
                remaining = deadline.remaining()
                if remaining <= 0:
                    raise LockTimeout(f"the user's lock was busy for {wait_seconds:.3f} s")
                jittered = random.uniform(pause / 2, pause)  # noqa: S311 - spreads retries
                await asyncio.sleep(min(remaining, jittered))
                pause = min(pause * 2, _MAX_PAUSE_SECONDS)
        except BaseException:
            # Cancelled or failed with an acquire in flight: Redis may have run it. Undo it,
            # in a task of its own, so the user is not locked out until the TTL.
            await self._release_soon(key, owner)
            raise
        try:
            yield Lease(user_id, int(token), int(erasures))
        finally:
            await self._release_soon(key, owner)

    async def _release_soon(self, key: str, owner: str) -> None:
        """Release the lock; wait a moment for it, no more (the caller may be past its
        deadline, or Redis away: the lock then lapses by its TTL, or is released later)."""
        task = asyncio.get_running_loop().create_task(self._release_owned(key, owner))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_RELEASE_WAIT_SECONDS):
                await asyncio.shield(task)

    async def _release_owned(self, key: str, owner: str) -> None:
        try:
            await self._release(keys=[key], args=[owner])
        except (RedisError, OSError) as exc:
            # The lock lapses by its TTL; the turn's own outcome must not be masked.
            logger.warning("releasing a user's lock failed", extra={"error": type(exc).__name__})

    async def aclose(self) -> None:
        if self._releases:
            await asyncio.wait(set(self._releases), timeout=_RELEASE_WAIT_SECONDS * 4)


def _decoded(items: list[bytes]) -> list[HistoryTurn]:
    """The history's turns; one that cannot be read (written by a bug, or by hand) is left out
    rather than making every turn of the user fail until the history expires."""
    turns: list[HistoryTurn] = []
    for item in items:
        try:
            turns.append(decode_turn(item))
        except ValueError:
            logger.warning("a stored turn could not be read; it is left out")
    return turns


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else ""
