"""The shared TTL caches: bounded in-process LRU, and Redis where an outage is only a miss."""

from __future__ import annotations

import pytest

from services.common import redisconn
from services.common.cache import MemoryCache, RedisCache
from tests.support.clock import Clock
from tests.support.ports import free_port
from tests.support.redis_cluster import RedisTarget
from tests.support.redis_server import RedisNotAvailable, redis_server


async def test_memory_cache_expires_entries_after_their_ttl() -> None:
    clock = Clock()
    cache = MemoryCache(10, clock=clock)
    await cache.set("k", b"v", ttl_seconds=600)
    clock.now += 599
    assert await cache.get("k") == b"v"
    clock.now += 2
    assert await cache.get("k") is None
    assert len(cache) == 0


async def test_memory_cache_never_grows_past_its_cap_and_drops_the_least_recent() -> None:
    cache = MemoryCache(100)
    for i in range(10_000):
        await cache.set(f"k{i}", b"x", ttl_seconds=60)
        if i == 50:
            assert await cache.get("k0") == b"x"  # touched: now the most recent
    assert len(cache) == 100
    assert await cache.get("k9999") == b"x"
    assert await cache.get("k1") is None


async def test_redis_cache_round_trips_and_expires(any_redis: RedisTarget) -> None:
    client = any_redis.connect(0.5)
    try:
        cache = RedisCache(client, prefix="test:")
        await cache.set("k", b"v", ttl_seconds=60)
        assert await cache.get("k") == b"v"
        assert 0 < await client.pttl("test:k") <= 60_000
    finally:
        await client.aclose()


async def test_redis_outage_is_a_miss_not_an_error() -> None:
    client = redisconn.connect(f"redis://127.0.0.1:{free_port()}/0", 0.2)
    try:
        cache = RedisCache(client, prefix="test:")
        await cache.set("k", b"v", ttl_seconds=60)
        assert await cache.get("k") is None
    finally:
        await client.aclose()


def test_missing_redis_server_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RedisNotAvailable, match="redis-server"), redis_server():
        pass
