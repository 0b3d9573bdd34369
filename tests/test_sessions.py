"""The session stores: the same behaviour from the in-process store and from a real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as redis
from redis.crc import key_slot
from redis.exceptions import ResponseError

from services.common import redisconn
from services.orchestrator import keys
from services.orchestrator.model import HistoryTurn
from services.orchestrator.sessions import (
    MAX_ANSWERS_PER_USER,
    LockTimeout,
    MemorySessionStore,
    RedisSessionStore,
    SessionStore,
    encode_turn,
)
from tests.support.clock import Clock

ODD_USER_IDS = ["*", "a*", "{x}", "user:1", "user:10", "a}b{c"]


@dataclass
class Harness:
    """One store kind, and how time passes for it: a fake clock, or Redis's own."""

    kind: str
    url: str = ""
    clock: Clock = field(default_factory=Clock)
    clients: list[redis.Redis] = field(default_factory=list)

    def connect(self) -> redis.Redis:
        client = redisconn.connect(self.url, 2.0)
        self.clients.append(client)
        return client

    def make(self, **limits: Any) -> SessionStore:
        if self.kind == "memory":
            return MemorySessionStore(clock=self.clock, **limits)
        return RedisSessionStore(self.connect(), **limits)

    @property
    def raw(self) -> redis.Redis:
        assert self.kind == "redis"
        return self.clients[0] if self.clients else self.connect()

    async def elapse(self, seconds: float) -> None:
        if self.kind == "memory":
            self.clock.now += seconds
        else:
            await asyncio.sleep(seconds)

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


@pytest.fixture(params=["memory", "redis"])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if request.param == "memory":
        yield Harness("memory")
        return
    async with redis_harness_at(request.getfixturevalue("redis_url")) as harness:
        yield harness


@pytest.fixture
async def redis_harness(redis_url: str) -> AsyncIterator[Harness]:
    async with redis_harness_at(redis_url) as harness:
        yield harness


@asynccontextmanager
async def redis_harness_at(url: str) -> AsyncIterator[Harness]:
    harness = Harness("redis", url=url)
    try:
        yield harness
    finally:
        for client in harness.clients:
            await client.aclose()


def turn(text: str, request_id: str = "", assistant: str = "にゃん") -> HistoryTurn:
    return HistoryTurn(
        user=text, assistant=assistant, language="ja", at=1_700_000_000.5, request_id=request_id
    )


async def texts(store: SessionStore, user_id: str) -> list[str]:
    return [t.user for t in await store.history(user_id)]


# --- history -----------------------------------------------------------------------------------


async def test_history_keeps_order_and_drops_the_oldest_turns_beyond_max_turns(
    harness: Harness,
) -> None:
    store = harness.make(max_turns=3)
    assert await store.history("alice") == []
    for i in range(5):
        await store.commit_turn("alice", turn(f"m{i}"), answer=b"")
    assert await texts(store, "alice") == ["m2", "m3", "m4"]
    assert (await store.history("alice"))[-1] == turn("m4")


async def test_history_is_bounded_by_encoded_bytes_not_characters(harness: Harness) -> None:
    store = harness.make(max_bytes=400)
    committed = [turn(f"{i}" + "猫" * 30) for i in range(10)]  # 3 bytes a character in UTF-8
    for t in committed:
        await store.commit_turn("alice", t, answer=b"")
    kept = await store.history("alice")
    assert kept == committed[-len(kept) :]
    sizes = [len(encode_turn(t)) for t in committed]
    assert sum(sizes[-len(kept) :]) <= 400
    # The oldest were dropped only as far as needed: one more turn would not have fit.
    assert sum(sizes[-len(kept) - 1 :]) > 400


async def test_a_turn_larger_than_max_bytes_is_kept_alone(harness: Harness) -> None:
    store = harness.make(max_bytes=200)
    await store.commit_turn("alice", turn("small"), answer=b"")
    await store.commit_turn("alice", turn("x" * 500), answer=b"")
    assert await texts(store, "alice") == ["x" * 500]
    await store.commit_turn("alice", turn("after"), answer=b"")
    assert await texts(store, "alice") == ["after"]


async def test_history_and_preferences_expire_after_the_ttl(harness: Harness) -> None:
    store = harness.make(ttl_seconds=0.3)
    await store.commit_turn("alice", turn("hi"), answer=b"", timezone="Asia/Tokyo")
    assert await texts(store, "alice") == ["hi"]
    assert await store.timezone("alice") == "Asia/Tokyo"
    await harness.let_expire("alice", "history", 0.3)
    await harness.let_expire("alice", "prefs", 0.3)
    assert await store.history("alice") == []
    assert await store.timezone("alice") == ""


async def test_reading_the_history_refreshes_its_ttl(harness: Harness) -> None:
    store = harness.make(ttl_seconds=1.0)
    await store.commit_turn("alice", turn("hi"), answer=b"", timezone="Asia/Tokyo")
    await harness.elapse(0.6)
    assert await texts(store, "alice") == ["hi"]  # read: the TTL starts again
    await harness.elapse(0.6)  # past the first expiry
    assert await store.timezone("alice") == "Asia/Tokyo"
    assert await texts(store, "alice") == ["hi"]
    await harness.let_expire("alice", "history", 1.0)
    assert await store.history("alice") == []


# --- commits and idempotent answers -------------------------------------------------------------


async def test_a_commit_stores_the_turn_and_its_answer_together(harness: Harness) -> None:
    store = harness.make()
    assert await store.cached_answer("alice", "r1") is None
    await store.commit_turn("alice", turn("hi", request_id="r1"), answer=b"\x00answer-1")
    assert await store.cached_answer("alice", "r1") == b"\x00answer-1"
    assert await store.history("alice") == [turn("hi", request_id="r1")]
    # Answers belong to their user and their request id only.
    assert await store.cached_answer("bob", "r1") is None
    assert await store.cached_answer("alice", "r2") is None
    # No request id, nothing to answer idempotently.
    await store.commit_turn("alice", turn("again"), answer=b"unkeyed")
    assert await store.cached_answer("alice", "") is None
    assert await texts(store, "alice") == ["hi", "again"]


async def test_a_commit_that_fails_stores_nothing(harness: Harness) -> None:
    store = harness.make()
    await store.commit_turn("alice", turn("hi"), answer=b"")
    with pytest.raises(UnicodeEncodeError):
        await store.commit_turn(
            "alice", turn("\ud800", request_id="bad"), answer=b"A", timezone="Asia/Tokyo"
        )
    assert await texts(store, "alice") == ["hi"]
    assert await store.cached_answer("alice", "bad") is None
    assert await store.timezone("alice") == ""


async def test_redis_commit_is_all_or_nothing_when_a_write_would_fail(
    redis_harness: Harness,
) -> None:
    store = redis_harness.make()
    await redis_harness.raw.set(keys.user_key("alice", "prefs"), b"not a hash")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await store.commit_turn("alice", turn("hi", request_id="r1"), answer=b"A")
    assert await redis_harness.raw.exists(keys.user_key("alice", "history")) == 0
    assert await store.cached_answer("alice", "r1") is None


async def test_answers_expire_after_their_own_ttl(harness: Harness) -> None:
    store = harness.make(ttl_seconds=60, answer_ttl_seconds=0.3)
    await store.commit_turn("alice", turn("hi", request_id="r1"), answer=b"A")
    assert await store.cached_answer("alice", "r1") == b"A"
    await harness.let_expire("alice", "answer:" + keys.digest("r1"), 0.3)
    assert await store.cached_answer("alice", "r1") is None
    assert await texts(store, "alice") == ["hi"]


async def test_answers_per_user_are_bounded_newest_kept(harness: Harness) -> None:
    store = harness.make(max_turns=5)
    total = MAX_ANSWERS_PER_USER + 6
    for i in range(total):
        await store.commit_turn("alice", turn(f"m{i}", request_id=f"r{i}"), answer=b"A%d" % i)
    for i in range(6):
        assert await store.cached_answer("alice", f"r{i}") is None
    for i in range(6, total):
        assert await store.cached_answer("alice", f"r{i}") == b"A%d" % i
    if harness.kind == "redis":  # the evicted answers are gone from Redis, not only from the index
        tag = keys.user_tag("alice")
        answer_keys = [k async for k in harness.raw.scan_iter(f"*{tag}*:answer:*")]
        assert len(answer_keys) == MAX_ANSWERS_PER_USER
        assert await harness.raw.zcard(keys.user_key("alice", "answers")) == MAX_ANSWERS_PER_USER


# --- erasure -----------------------------------------------------------------------------------


async def fill(store: SessionStore, user_id: str) -> None:
    await store.commit_turn(user_id, turn("one", request_id="r1"), answer=b"A1")
    await store.commit_turn(user_id, turn("two", request_id="r2"), answer=b"A2", timezone="UTC")


async def is_intact(store: SessionStore, user_id: str) -> bool:
    return (
        await texts(store, user_id) == ["one", "two"]
        and await store.timezone(user_id) == "UTC"
        and await store.cached_answer(user_id, "r1") == b"A1"
        and await store.cached_answer(user_id, "r2") == b"A2"
    )


async def is_empty(store: SessionStore, user_id: str) -> bool:
    return (
        await store.history(user_id) == []
        and await store.timezone(user_id) == ""
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
        assert await store.erase(user_id) == 5  # two turns, two answers, one preference
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
            assert not [k for k in remaining if keys.user_tag(user_id) in k], user_id
        assert any(keys.user_tag("user:10") in k for k in remaining)


async def test_erase_releases_a_redis_users_lock(redis_harness: Harness) -> None:
    store = redis_harness.make()
    await fill(store, "alice")
    async with store.lock("alice", wait_seconds=1):
        assert await store.erase("alice") == 5
        async with store.lock("alice", wait_seconds=0.05):
            pass
    assert await redis_harness.raw.dbsize() == 0


# --- the per-user lock -------------------------------------------------------------------------


async def test_the_lock_serializes_the_turns_of_one_user(harness: Harness) -> None:
    store = harness.make(max_turns=20)

    async def one_turn(i: int) -> None:
        async with store.lock("alice", wait_seconds=10):
            seen = await store.history("alice")
            await asyncio.sleep(0)
            await store.commit_turn("alice", turn(f"m{i}", assistant=str(len(seen))), answer=b"")

    await asyncio.gather(*(one_turn(i) for i in range(20)))
    history = await store.history("alice")
    assert sorted(t.user for t in history) == sorted(f"m{i}" for i in range(20))
    # Each turn saw exactly the turns committed before it: none read while another was running.
    assert [t.assistant for t in history] == [str(i) for i in range(20)]
    if isinstance(store, MemorySessionStore):
        assert store.locks_in_use == 0


async def test_locks_of_different_users_do_not_block_each_other(harness: Harness) -> None:
    store = harness.make()
    async with store.lock("user:1", wait_seconds=1):
        async with store.lock("user:10", wait_seconds=0.05), store.lock("*", wait_seconds=0.05):
            pass
        with pytest.raises(LockTimeout):
            async with store.lock("user:1", wait_seconds=0.05):
                pass


async def test_a_held_lock_times_out_after_wait_seconds(harness: Harness) -> None:
    store = harness.make()
    async with store.lock("alice", wait_seconds=1):
        started = time.monotonic()
        with pytest.raises(LockTimeout):
            async with store.lock("alice", wait_seconds=0.2):
                pytest.fail("took a held lock")
        assert 0.19 <= time.monotonic() - started < 1.5
    async with store.lock("alice", wait_seconds=0.05):
        pass
    if isinstance(store, MemorySessionStore):
        assert store.locks_in_use == 0


async def test_the_lock_of_a_crashed_holder_expires_after_lock_ttl(harness: Harness) -> None:
    store = harness.make(lock_ttl_seconds=0.3)
    crashed = store.lock("alice", wait_seconds=1)
    await crashed.__aenter__()  # and never leaves
    with pytest.raises(LockTimeout):
        async with store.lock("alice", wait_seconds=0.05):
            pass
    await harness.elapse(0.3)
    async with store.lock("alice", wait_seconds=3):
        await crashed.__aexit__(None, None, None)  # a late release leaves the new holder's lock
        with pytest.raises(LockTimeout):
            async with store.lock("alice", wait_seconds=0.05):
                pass


async def test_an_expired_holder_never_releases_its_successors_lock(harness: Harness) -> None:
    store = harness.make(lock_ttl_seconds=0.5)
    first = store.lock("alice", wait_seconds=1)
    await first.__aenter__()
    await harness.elapse(0.5)
    second = store.lock("alice", wait_seconds=3)
    await second.__aenter__()
    await first.__aexit__(None, None, None)  # late: its lock expired and is the second's now
    with pytest.raises(LockTimeout):
        async with store.lock("alice", wait_seconds=0.05):
            pass
    await second.__aexit__(None, None, None)
    async with store.lock("alice", wait_seconds=0.05):
        pass
    if isinstance(store, MemorySessionStore):
        assert store.locks_in_use == 0


# --- memory store bounds -----------------------------------------------------------------------


async def test_memory_store_never_holds_more_than_max_users() -> None:
    store = MemorySessionStore(max_users=10_000)
    for i in range(100_000):
        await store.commit_turn(f"u{i}", turn("hi"), answer=b"")
        if i % 5_000 == 0:
            assert await texts(store, "u0") == ["hi"]  # used: the most recent again
    assert len(store) == 10_000
    assert await texts(store, "u99999") == ["hi"]
    assert await texts(store, "u0") == ["hi"]
    assert await store.history("u1") == []


async def test_memory_lock_map_is_bounded_by_concurrency_not_by_users_seen() -> None:
    store = MemorySessionStore()
    for i in range(1_000):
        async with store.lock(f"u{i}", wait_seconds=1):
            assert store.locks_in_use == 1
    assert store.locks_in_use == 0
    async with store.lock("alice", wait_seconds=1):
        waiter = asyncio.ensure_future(store.lock("alice", wait_seconds=0.1).__aenter__())
        await asyncio.sleep(0)
        assert store.locks_in_use == 1  # one entry for the holder and its waiter
        with pytest.raises(LockTimeout):
            await waiter
    assert store.locks_in_use == 0


# --- Redis specifics ---------------------------------------------------------------------------


async def test_redis_sessions_survive_a_restart(redis_harness: Harness) -> None:
    client = redisconn.connect(redis_harness.url, 2.0)
    before = RedisSessionStore(client)
    await fill(before, "alice")
    await before.aclose()
    await client.aclose()  # the replica goes away
    after = redis_harness.make()
    assert await is_intact(after, "alice")
    assert await after.erase("alice") == 5


def test_a_users_keys_share_one_slot_and_contain_no_user_text() -> None:
    tags = set()
    for user_id in [*ODD_USER_IDS, "alice", "ゆき"]:
        tag = keys.user_tag(user_id)
        assert len(tag) == 32
        assert set(tag) <= set("0123456789abcdef")
        tags.add(tag)
        concerns = ["history", "prefs", "answers", "lock", "answer:" + keys.digest("r1")]
        user_keys = [keys.user_key(user_id, c) for c in concerns]
        assert all(k.startswith(f"chatagent:user:{{{tag}}}:") for k in user_keys)
        assert len({key_slot(k.encode()) for k in user_keys}) == 1
    assert len(tags) == len(ODD_USER_IDS) + 2
    assert keys.global_key("usage") == "chatagent:global:usage"


async def test_redis_store_refuses_a_decoding_client() -> None:
    client = redis.Redis(decode_responses=True)
    try:
        with pytest.raises(ValueError, match="decode_responses"):
            RedisSessionStore(client)
    finally:
        await client.aclose()
