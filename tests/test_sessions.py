"""The session stores: the same behaviour from the in-process store and from a real Redis."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as redis
from redis.crc import key_slot
from redis.exceptions import ResponseError

from services.common import redisconn
from services.orchestrator import keys
from services.orchestrator.codec import encode_turn
from services.orchestrator.model import HistoryTurn, Preferences
from services.orchestrator.sessions import (
    MAX_ANSWERS_PER_USER,
    Lease,
    LeaseLost,
    LockTimeout,
    MemorySessionStore,
    RedisSessionStore,
    Session,
    SessionStore,
)
from tests.support.clock import Clock
from tests.support.loop import wait_until
from tests.support.redis_cluster import RedisTarget, every_key, flush_scripts
from tests.support.redis_server import RedisServer

ODD_USER_IDS = ["*", "a*", "{x}", "user:1", "user:10", "a}b{c"]
# A turn's lock in the tests below, unless a test is about the lock itself.
WAIT = 5.0
TTL = 30.0
NO_PREFERENCES = Preferences()


@dataclass
class Harness:
    """One store kind, and how time passes for it: a fake clock, or Redis's own."""

    kind: str
    target: RedisTarget | None = None
    clock: Clock = field(default_factory=Clock)
    clients: list[redisconn.Client] = field(default_factory=list)

    def connect(self, timeout_seconds: float = 2.0) -> redisconn.Client:
        assert self.target is not None
        client = self.target.connect(timeout_seconds)
        self.clients.append(client)
        return client

    def make(self, **limits: Any) -> SessionStore:
        if self.kind == "memory":
            return MemorySessionStore(clock=self.clock, **limits)
        return RedisSessionStore(self.connect(), **limits)

    @property
    def raw(self) -> redisconn.Client:
        assert self.kind != "memory"
        return self.clients[0] if self.clients else self.connect()

    async def elapse(self, seconds: float) -> None:
        if self.kind == "memory":
            self.clock.now += seconds
        else:
            await asyncio.sleep(seconds)

    def outlive_lock(self, ttl: float) -> None:
        """Let a lock taken with `ttl` lapse for whoever waits for it next. In Redis the waiter
        itself waits (on the server's clock); in-process the clock jumps past the TTL."""
        if self.kind == "memory":
            self.clock.now += ttl

    async def let_expire(self, user_id: str, concern: str, ttl: float) -> None:
        """Let the user's `concern` outlive `ttl` without touching it through the store."""
        if self.kind == "memory":
            self.clock.now += ttl
            return
        key = keys.user_key(user_id, concern)
        deadline = time.monotonic() + ttl + 3
        while await self.raw.exists(key):
            assert time.monotonic() < deadline, f"{concern} did not expire"
            await asyncio.sleep(0.02)


@pytest.fixture(params=["memory", "redis", "cluster"])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if request.param == "memory":
        yield Harness("memory")
        return
    async with redis_harness_at(request.getfixturevalue(f"{request.param}_target")) as harness:
        yield harness


@pytest.fixture
async def redis_harness(any_redis: RedisTarget) -> AsyncIterator[Harness]:
    async with redis_harness_at(any_redis) as harness:
        yield harness


@asynccontextmanager
async def redis_harness_at(target: RedisTarget) -> AsyncIterator[Harness]:
    harness = Harness(target.kind, target=target)
    try:
        yield harness
    finally:
        for client in harness.clients:
            await client.aclose()


def turn(text: str, request_id: str = "", assistant: str = "にゃん") -> HistoryTurn:
    return HistoryTurn(
        user=text, assistant=assistant, language="ja", at=1_700_000_000.5, request_id=request_id
    )


async def commit(
    store: SessionStore,
    user_id: str,
    t: HistoryTurn,
    *,
    answer: bytes = b"",
    timezone: str = "",
    place: str = "",
) -> None:
    """One whole turn: take the user's lock, commit, let go."""
    async with store.lock(user_id, wait_seconds=WAIT, ttl_seconds=TTL) as lease:
        await store.commit_turn(lease, t, answer=answer, preferences=Preferences(timezone, place))


async def texts(store: SessionStore, user_id: str) -> list[str]:
    return [t.user for t in (await store.load(user_id)).history]


async def lock_is_busy(store: SessionStore, user_id: str) -> bool:
    try:
        async with store.lock(user_id, wait_seconds=0.05, ttl_seconds=TTL):
            return False
    except LockTimeout:
        return True


# --- history -----------------------------------------------------------------------------------


async def test_history_keeps_order_and_drops_the_oldest_turns_beyond_max_turns(
    harness: Harness,
) -> None:
    store = harness.make(max_turns=3)
    assert await store.load("alice") == Session([], Preferences())
    for i in range(5):
        await commit(store, "alice", turn(f"m{i}"))
    assert await texts(store, "alice") == ["m2", "m3", "m4"]
    assert (await store.load("alice")).history[-1] == turn("m4")


async def test_history_is_bounded_by_encoded_bytes_not_characters(harness: Harness) -> None:
    store = harness.make(max_bytes=400)
    committed = [turn(f"{i}" + "猫" * 30) for i in range(10)]  # 3 bytes a character in UTF-8
    for t in committed:
        await commit(store, "alice", t)
    kept = (await store.load("alice")).history
    assert kept == committed[-len(kept) :]
    sizes = [len(encode_turn(t)) for t in committed]
    assert sum(sizes[-len(kept) :]) <= 400
    # The oldest were dropped only as far as needed: one more turn would not have fit.
    assert sum(sizes[-len(kept) - 1 :]) > 400


async def test_a_turn_larger_than_max_bytes_is_kept_alone(harness: Harness) -> None:
    store = harness.make(max_bytes=200)
    await commit(store, "alice", turn("small"))
    await commit(store, "alice", turn("x" * 500))
    assert await texts(store, "alice") == ["x" * 500]
    await commit(store, "alice", turn("after"))
    assert await texts(store, "alice") == ["after"]


async def test_load_returns_the_history_and_both_preferences(harness: Harness) -> None:
    store = harness.make()
    await commit(store, "alice", turn("hi"), timezone="Asia/Tokyo", place="大阪")
    assert await store.load("alice") == Session([turn("hi")], Preferences("Asia/Tokyo", "大阪"))
    # A turn that learnt nothing new keeps what is known; each preference changes on its own.
    await commit(store, "alice", turn("again"))
    await commit(store, "alice", turn("moved"), timezone="Europe/Paris")
    session = await store.load("alice")
    assert [t.user for t in session.history] == ["hi", "again", "moved"]
    assert session.preferences == Preferences("Europe/Paris", "大阪")
    await commit(store, "alice", turn("where"), place="札幌")
    assert (await store.load("alice")).preferences == Preferences("Europe/Paris", "札幌")
    assert await store.load("bob") == Session([], Preferences())


async def test_history_and_preferences_expire_after_the_ttl(harness: Harness) -> None:
    store = harness.make(ttl_seconds=0.3)
    await commit(store, "alice", turn("hi"), timezone="Asia/Tokyo", place="大阪")
    assert await texts(store, "alice") == ["hi"]
    await harness.let_expire("alice", "history", 0.3)
    await harness.let_expire("alice", "prefs", 0.3)
    assert await store.load("alice") == Session([], Preferences())


async def test_loading_refreshes_the_ttl_of_history_and_preferences(harness: Harness) -> None:
    store = harness.make(ttl_seconds=1.0)
    await commit(store, "alice", turn("hi"), timezone="Asia/Tokyo", place="大阪")
    await harness.elapse(0.6)
    assert await texts(store, "alice") == ["hi"]  # read: the TTL starts again
    await harness.elapse(0.6)  # past the first expiry
    assert await store.load("alice") == Session([turn("hi")], Preferences("Asia/Tokyo", "大阪"))
    await harness.let_expire("alice", "history", 1.0)
    await harness.let_expire("alice", "prefs", 1.0)
    assert await store.load("alice") == Session([], Preferences())


# --- commits and idempotent answers -------------------------------------------------------------


async def test_a_commit_stores_the_turn_and_its_answer_together(harness: Harness) -> None:
    store = harness.make()
    assert await store.cached_answer("alice", "r1") is None
    await commit(store, "alice", turn("hi", request_id="r1"), answer=b"\x00answer-1")
    assert await store.cached_answer("alice", "r1") == b"\x00answer-1"
    assert (await store.load("alice")).history == [turn("hi", request_id="r1")]
    # Answers belong to their user and their request id only.
    assert await store.cached_answer("bob", "r1") is None
    assert await store.cached_answer("alice", "r2") is None
    # No request id, nothing to answer idempotently.
    await commit(store, "alice", turn("again"), answer=b"unkeyed")
    assert await store.cached_answer("alice", "") is None
    assert await texts(store, "alice") == ["hi", "again"]


async def test_a_commit_that_fails_stores_nothing(harness: Harness) -> None:
    store = harness.make()
    await commit(store, "alice", turn("hi"))
    with pytest.raises(UnicodeEncodeError):
        await commit(
            store,
            "alice",
            turn("\ud800", request_id="bad"),
            answer=b"A",
            timezone="Asia/Tokyo",
            place="大阪",
        )
    assert await store.load("alice") == Session([turn("hi")], Preferences())
    assert await store.cached_answer("alice", "bad") is None


async def test_redis_commit_is_all_or_nothing_when_a_write_would_fail(
    redis_harness: Harness,
) -> None:
    store = redis_harness.make()
    await redis_harness.raw.set(keys.user_key("alice", "prefs"), b"not a hash")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await commit(store, "alice", turn("hi", request_id="r1"), answer=b"A", place="大阪")
    assert await redis_harness.raw.exists(keys.user_key("alice", "history")) == 0
    assert await store.cached_answer("alice", "r1") is None


async def test_a_commit_sent_again_after_its_reply_was_lost_stores_the_turn_once(
    redis_harness: Harness,
) -> None:
    """redis-py sends a command again when the connection dropped before its reply came (the
    client's Retry; seen with a cluster node failing under load): the commit had run."""
    store = redis_harness.make()
    assert isinstance(store, RedisSessionStore)
    script = store._commit

    async def sent_twice(*, keys: list[str], args: list[Any]) -> Any:
        await script(keys=keys, args=args)  # ran; its reply lost with the connection
        return await script(keys=keys, args=args)  # the client's retry, word for word

    store._commit = sent_twice  # type: ignore[assignment]
    await commit(store, "alice", turn("hi", request_id="r1"), answer=b"A")
    await commit(store, "alice", turn("again"))
    async with store.lock("alice", wait_seconds=WAIT, ttl_seconds=TTL) as lease:
        for text in ("one", "two"):  # two commits under one lease are two turns
            await store.commit_turn(lease, turn(text), answer=b"", preferences=Preferences())
    assert await texts(store, "alice") == ["hi", "again", "one", "two"]
    assert await store.cached_answer("alice", "r1") == b"A"


async def test_answers_expire_after_their_own_ttl(harness: Harness) -> None:
    store = harness.make(ttl_seconds=60, answer_ttl_seconds=0.3)
    await commit(store, "alice", turn("hi", request_id="r1"), answer=b"A")
    assert await store.cached_answer("alice", "r1") == b"A"
    await harness.let_expire("alice", "answer:" + keys.digest("r1"), 0.3)
    assert await store.cached_answer("alice", "r1") is None
    assert await texts(store, "alice") == ["hi"]


async def test_answers_per_user_are_bounded_newest_kept(harness: Harness) -> None:
    store = harness.make(max_turns=5)
    total = MAX_ANSWERS_PER_USER + 6
    async with store.lock("alice", wait_seconds=WAIT, ttl_seconds=TTL) as lease:
        for i in range(total):
            await store.commit_turn(
                lease,
                turn(f"m{i}", request_id=f"r{i}"),
                answer=b"A%d" % i,
                preferences=Preferences(),
            )
    for i in range(6):
        assert await store.cached_answer("alice", f"r{i}") is None
    for i in range(6, total):
        assert await store.cached_answer("alice", f"r{i}") == b"A%d" % i
    if harness.kind != "memory":  # the evicted answers are gone from Redis, not only from the index
        tag = keys.user_tag("alice")
        answer_keys = [k async for k in harness.raw.scan_iter(f"*{tag}*:answer:*")]
        assert len(answer_keys) == MAX_ANSWERS_PER_USER
        assert await harness.raw.zcard(keys.user_key("alice", "answers")) == MAX_ANSWERS_PER_USER


# --- erasure -----------------------------------------------------------------------------------

FILLED = Session(
    [turn("one", request_id="r1"), turn("two", request_id="r2")],
    Preferences(timezone="UTC", place="大阪"),
)


async def fill(store: SessionStore, user_id: str) -> None:
    await commit(store, user_id, turn("one", request_id="r1"), answer=b"A1", place="大阪")
    await commit(store, user_id, turn("two", request_id="r2"), answer=b"A2", timezone="UTC")


async def is_intact(store: SessionStore, user_id: str) -> bool:
    return (
        await store.load(user_id) == FILLED
        and await store.cached_answer(user_id, "r1") == b"A1"
        and await store.cached_answer(user_id, "r2") == b"A2"
    )


async def is_empty(store: SessionStore, user_id: str) -> bool:
    return (
        await store.load(user_id) == Session([], Preferences())
        and await store.cached_answer(user_id, "r1") is None
        and await store.cached_answer(user_id, "r2") is None
    )


async def test_erase_removes_everything_of_one_user_and_nothing_of_others(
    harness: Harness,
) -> None:
    store = harness.make()
    for user_id in [*ODD_USER_IDS, "alice"]:
        await fill(store, user_id)
    erased: list[str] = []
    for user_id in ["*", "{x}", "user:1", "a*"]:
        # Two turns, two answers, two preferences (the time zone and the place).
        assert await store.erase(user_id) == 6
        erased.append(user_id)
        for other in [*ODD_USER_IDS, "alice"]:
            if other in erased:
                assert await is_empty(store, other), other
            else:
                assert await is_intact(store, other), other
    assert await store.erase("*") == 0
    assert await store.erase("nobody") == 0
    if isinstance(store, MemorySessionStore):
        assert len(store) == len(ODD_USER_IDS) + 1 - len(erased)
    else:
        remaining = [k.decode() async for k in harness.raw.scan_iter()]
        for user_id in erased:
            # What is left of an erased user is the fence that outlasts them (two numbers).
            left = [k for k in remaining if keys.user_tag(user_id) in k]
            assert left == [keys.user_key(user_id, "fence")], user_id
        assert any(keys.user_key("user:10", "history") == k for k in remaining)


async def test_an_erase_during_a_turn_fences_it_off_and_keeps_its_lock(harness: Harness) -> None:
    store = harness.make()
    await fill(store, "alice")
    async with store.lock("alice", wait_seconds=WAIT, ttl_seconds=TTL) as lease:
        assert await store.erase("alice") == 6
        with pytest.raises(LeaseLost) as lost:
            await store.commit_turn(
                lease,
                turn("during", request_id="r3"),
                answer=b"A3",
                preferences=Preferences("Asia/Tokyo", "大阪"),
            )
        assert lost.value.erased
        assert "erased" in str(lost.value)
        # The turn's lock is still its own: a second turn of the user waits for it.
        assert await lock_is_busy(store, "alice")
    assert await is_empty(store, "alice")
    assert await store.cached_answer("alice", "r3") is None
    # The next turn of the user starts afresh and commits.
    await commit(store, "alice", turn("after"), timezone="UTC")
    assert await store.load("alice") == Session([turn("after")], Preferences(timezone="UTC"))
    if isinstance(store, MemorySessionStore):
        assert store.locks_in_use == 0


async def test_a_turn_waiting_for_the_lock_during_an_erase_commits_after_it(
    harness: Harness,
) -> None:
    store = harness.make()
    held = store.lock("alice", wait_seconds=WAIT, ttl_seconds=TTL)
    first = await held.__aenter__()
    waiting = asyncio.ensure_future(commit(store, "alice", turn("second"), place="大阪"))
    for _ in range(5):  # the second turn starts and waits for the lock
        await asyncio.sleep(0)
    assert not waiting.done(), "the second turn ran while the first held the lock"
    await store.erase("alice")
    with pytest.raises(LeaseLost):
        await store.commit_turn(first, turn("first"), answer=b"", preferences=NO_PREFERENCES)
    await held.__aexit__(None, None, None)
    await asyncio.wait_for(waiting, WAIT)
    # The turn that took the lock after the erase is not fenced off by it.
    assert await store.load("alice") == Session([turn("second")], Preferences(place="大阪"))


async def test_each_erase_is_counted_in_the_next_lease(harness: Harness) -> None:
    store = harness.make()
    for erased in range(3):
        async with store.lock("alice", wait_seconds=WAIT, ttl_seconds=TTL) as lease:
            assert lease.erasures == erased
            assert lease.user_id == "alice"
        assert await store.erase("alice") == 0
    async with store.lock("bob", wait_seconds=WAIT, ttl_seconds=TTL) as lease:
        assert lease.erasures == 0
    if isinstance(store, MemorySessionStore):
        assert (store.erasures("alice"), store.erasures("bob")) == (3, 0)


# --- the per-user lock -------------------------------------------------------------------------


async def test_the_lock_serializes_the_turns_of_one_user(harness: Harness) -> None:
    store = harness.make(max_turns=20)

    async def one_turn(i: int) -> None:
        async with store.lock("alice", wait_seconds=10, ttl_seconds=TTL) as lease:
            seen = (await store.load("alice")).history
            await asyncio.sleep(0)
            await store.commit_turn(
                lease,
                turn(f"m{i}", assistant=str(len(seen))),
                answer=b"",
                preferences=Preferences(),
            )

    await asyncio.gather(*(one_turn(i) for i in range(20)))
    history = (await store.load("alice")).history
    assert sorted(t.user for t in history) == sorted(f"m{i}" for i in range(20))
    # Each turn saw exactly the turns committed before it: none read while another was running.
    assert [t.assistant for t in history] == [str(i) for i in range(20)]
    if isinstance(store, MemorySessionStore):
        assert store.locks_in_use == 0


async def test_locks_of_different_users_do_not_block_each_other(harness: Harness) -> None:
    store = harness.make()
    async with store.lock("user:1", wait_seconds=1, ttl_seconds=TTL):
        async with (
            store.lock("user:10", wait_seconds=0.05, ttl_seconds=TTL),
            store.lock("*", wait_seconds=0.05, ttl_seconds=TTL),
        ):
            pass
        assert await lock_is_busy(store, "user:1")


async def test_a_held_lock_times_out_after_wait_seconds(harness: Harness) -> None:
    store = harness.make()
    async with store.lock("alice", wait_seconds=1, ttl_seconds=TTL):
        started = time.monotonic()
        with pytest.raises(LockTimeout):
            async with store.lock("alice", wait_seconds=0.2, ttl_seconds=TTL):
                pytest.fail("took a held lock")
        assert 0.19 <= time.monotonic() - started < 1.5
    assert not await lock_is_busy(store, "alice")
    if isinstance(store, MemorySessionStore):
        assert store.locks_in_use == 0


async def test_the_lock_of_a_crashed_holder_lapses_after_its_ttl(harness: Harness) -> None:
    store = harness.make()
    crashed = store.lock("alice", wait_seconds=1, ttl_seconds=0.3)
    await crashed.__aenter__()  # and never leaves
    assert await lock_is_busy(store, "alice")
    harness.outlive_lock(0.3)
    async with store.lock("alice", wait_seconds=3, ttl_seconds=TTL):
        await crashed.__aexit__(None, None, None)  # a late release leaves the new holder's lock
        assert await lock_is_busy(store, "alice")
    assert not await lock_is_busy(store, "alice")
    if isinstance(store, MemorySessionStore):
        assert store.locks_in_use == 0


async def test_the_lock_ttl_is_the_acquisitions_own(harness: Harness) -> None:
    store = harness.make()
    short = store.lock("alice", wait_seconds=1, ttl_seconds=0.3)
    await short.__aenter__()  # a holder that hangs
    harness.outlive_lock(0.3)
    long = store.lock("alice", wait_seconds=3, ttl_seconds=TTL)
    await long.__aenter__()  # the next turn, with a long deadline, hangs too
    harness.outlive_lock(0.6)  # twice the first holder's TTL
    wait = 0.6 if harness.kind != "memory" else 0.05  # in Redis: twice the first TTL, for real
    with pytest.raises(LockTimeout):
        async with store.lock("alice", wait_seconds=wait, ttl_seconds=TTL):
            pytest.fail("the second holder's lock lapsed at the first one's TTL")
    if harness.kind != "memory":
        assert await harness.raw.pttl(keys.user_key("alice", "lock")) > (TTL - 5) * 1000
    await long.__aexit__(None, None, None)
    await short.__aexit__(None, None, None)
    assert not await lock_is_busy(store, "alice")


async def test_a_turn_that_lost_its_lock_cannot_overwrite_the_newer_turn(
    harness: Harness,
) -> None:
    store = harness.make()
    await commit(store, "alice", turn("before"), timezone="UTC")
    old = store.lock("alice", wait_seconds=1, ttl_seconds=0.3)
    stale = await old.__aenter__()  # runs past its lock's TTL
    harness.outlive_lock(0.3)
    async with store.lock("alice", wait_seconds=3, ttl_seconds=TTL) as newer:
        assert newer.token > stale.token
        with pytest.raises(LeaseLost) as lost:
            await store.commit_turn(
                stale,
                turn("stale", request_id="old"),
                answer=b"OLD",
                preferences=Preferences("Asia/Tokyo", "大阪"),
            )
        assert not lost.value.erased
        assert "newer turn" in str(lost.value)
        await store.commit_turn(
            newer, turn("newer", request_id="new"), answer=b"NEW", preferences=NO_PREFERENCES
        )
        await old.__aexit__(None, None, None)  # late: the lock is the newer turn's now
        assert await lock_is_busy(store, "alice")
    assert await store.load("alice") == Session(
        [turn("before"), turn("newer", request_id="new")], Preferences(timezone="UTC")
    )
    assert await store.cached_answer("alice", "old") is None
    assert await store.cached_answer("alice", "new") == b"NEW"
    assert not await lock_is_busy(store, "alice")
    if isinstance(store, MemorySessionStore):
        assert store.locks_in_use == 0


# --- memory store bounds -----------------------------------------------------------------------


async def test_memory_store_never_holds_more_than_max_users() -> None:
    store = MemorySessionStore(max_users=1_000)
    for i in range(10_000):
        await commit(store, f"u{i}", turn("hi"))
        if i % 500 == 0:
            assert await texts(store, "u0") == ["hi"]  # used: the most recent again
    assert len(store) == 1_000
    assert await texts(store, "u9999") == ["hi"]
    assert await texts(store, "u0") == ["hi"]
    assert await texts(store, "u1") == []


async def test_memory_lock_map_is_bounded_by_concurrency_not_by_users_seen() -> None:
    store = MemorySessionStore()
    for i in range(1_000):
        async with store.lock(f"u{i}", wait_seconds=1, ttl_seconds=TTL):
            assert store.locks_in_use == 1
    assert store.locks_in_use == 0
    async with store.lock("alice", wait_seconds=1, ttl_seconds=TTL):
        waiter = asyncio.ensure_future(
            store.lock("alice", wait_seconds=0.1, ttl_seconds=TTL).__aenter__()
        )
        await asyncio.sleep(0)
        assert store.locks_in_use == 1  # one entry for the holder and its waiter
        with pytest.raises(LockTimeout):
            await waiter
    assert store.locks_in_use == 0


# --- Redis specifics ---------------------------------------------------------------------------


async def test_redis_sessions_survive_a_restart(redis_harness: Harness) -> None:
    client = redis_harness.connect()
    before = RedisSessionStore(client)
    await fill(before, "alice")
    await before.aclose()
    await client.aclose()  # the replica goes away
    redis_harness.clients.remove(client)
    after = redis_harness.make()
    assert await is_intact(after, "alice")
    assert await after.erase("alice") == 6


async def test_redis_store_survives_a_server_that_lost_its_scripts(
    redis_harness: Harness,
) -> None:
    store = redis_harness.make()
    await fill(store, "alice")
    await flush_scripts(redis_harness.raw)  # as after a restart or failover
    await commit(store, "alice", turn("three"))
    assert await texts(store, "alice") == ["one", "two", "three"]
    await flush_scripts(redis_harness.raw)
    assert await store.erase("alice") == 7


def test_a_users_keys_share_one_slot_and_contain_no_user_text() -> None:
    tags = set()
    for user_id in [*ODD_USER_IDS, "alice", "ゆき"]:
        tag = keys.user_tag(user_id)
        assert len(tag) == 32
        assert set(tag) <= set("0123456789abcdef")
        tags.add(tag)
        concerns = ["history", "prefs", "answers", "lock", "fence", "answer:" + keys.digest("r1")]
        user_keys = [keys.user_key(user_id, c) for c in concerns]
        assert all(k.startswith(f"chatagent:user:{{{tag}}}:") for k in user_keys)
        assert len({key_slot(k.encode()) for k in user_keys}) == 1
    assert len(tags) == len(ODD_USER_IDS) + 2
    assert keys.global_key("usage") == "chatagent:global:usage"


async def test_the_redis_fence_holds_two_numbers_and_nothing_of_the_user(
    redis_harness: Harness,
) -> None:
    store = redis_harness.make()
    for user_id in ["alice", "ゆき", "{x}"]:
        await fill(store, user_id)
        async with store.lock(user_id, wait_seconds=WAIT, ttl_seconds=TTL) as lease:
            await store.erase(user_id)
        fence = await redis_harness.raw.hgetall(keys.user_key(user_id, "fence"))
        assert set(fence) == {b"token", b"erasures"}
        assert int(fence[b"erasures"]) == 1
        assert int(fence[b"token"]) > lease.token  # the erase moved it past the running turn
        # It outlasts any turn by far, and goes by itself.
        assert await redis_harness.raw.pttl(keys.user_key(user_id, "fence")) > 3_600_000
    assert await every_key(redis_harness.raw, "*alice*") == []
    assert await every_key(redis_harness.raw, "*[{]x[}]*") == []
    assert await every_key(redis_harness.raw, "*ゆき*") == []


async def test_a_redis_acquire_retried_after_a_lost_reply_keeps_the_lock(
    redis_harness: Harness,
) -> None:
    store = redis_harness.make()
    assert isinstance(store, RedisSessionStore)
    script_keys = [keys.user_key("alice", "lock"), keys.user_key("alice", "fence")]
    owner = "ab" * 16
    # The same call twice, as a client does when the first reply was lost on the way.
    first = await store._acquire(keys=script_keys, args=[owner, 30_000, 86_400_000])
    again = await store._acquire(keys=script_keys, args=[owner, 30_000, 86_400_000])
    assert int(first[0]) > 0
    assert again == first, "a retry must not take a second token (and fence off the first)"
    assert await store._acquire(keys=script_keys, args=["cd" * 16, 30_000, 86_400_000]) == [0, 0]
    assert await lock_is_busy(store, "alice")
    # The lease the retry got is the one a commit accepts.
    lease = Lease("alice", int(again[0]), int(again[1]))
    await store.commit_turn(lease, turn("hi"), answer=b"", preferences=NO_PREFERENCES)
    assert await texts(store, "alice") == ["hi"]


async def test_redis_store_refuses_a_decoding_client() -> None:
    client = redis.Redis(decode_responses=True)
    try:
        with pytest.raises(ValueError, match="decode_responses"):
            RedisSessionStore(client)
    finally:
        await client.aclose()


@pytest.fixture
def redis_process() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


class TurnFailed(Exception):
    pass


@pytest.mark.parametrize("turn_fails", [False, True], ids=["turn-ends", "turn-fails"])
@pytest.mark.parametrize("outage", ["paused", "killed"])
async def test_releasing_the_lock_on_a_lost_redis_does_not_mask_the_turn(
    redis_process: RedisServer, outage: str, turn_fails: bool, caplog: pytest.LogCaptureFixture
) -> None:
    client = redisconn.connect(redis_process.url, 0.3)
    try:
        store = RedisSessionStore(client)
        take_away = redis_process.pause if outage == "paused" else redis_process.kill
        started = time.monotonic()
        with (
            caplog.at_level(logging.WARNING, logger="services.orchestrator.sessions"),
            pytest.raises(TurnFailed) if turn_fails else nullcontext(),
        ):
            async with store.lock("alice", wait_seconds=WAIT, ttl_seconds=1.0):
                take_away()
                if turn_fails:
                    raise TurnFailed  # the turn's own error comes out, not the release's
        assert time.monotonic() - started < 2, "the turn waited on the lost Redis"
        # The release is left to a task of its own; its failure is said when it comes.
        await wait_until(
            lambda: [r for r in caplog.records if "releasing a user's lock failed" in r.message],
            within=10,
            message="the failed release to be logged",
        )
        if outage == "paused":
            redis_process.resume()
            # The lock that could not be released lapses by its own TTL.
            async with store.lock("alice", wait_seconds=WAIT, ttl_seconds=TTL):
                pass
    finally:
        await client.aclose()


async def test_a_damaged_history_item_is_left_out_not_fatal(redis_harness: Harness) -> None:
    store = redis_harness.make()
    await commit(store, "alice", turn("before"))
    await redis_harness.raw.rpush(keys.user_key("alice", "history"), b"{not json", b'{"user": 1}')
    await commit(store, "alice", turn("after"))
    assert [t.user for t in (await store.load("alice")).history] == ["before", "after"]
