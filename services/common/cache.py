"""A small TTL cache with two backends: in-process (bounded LRU) and Redis (shared by replicas).

A cache is an optimisation, never a dependency: a Redis error is logged and treated as a miss, so
the call it was meant to speed up still succeeds.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from redis.exceptions import RedisError

from services.common import redisconn

logger = logging.getLogger(__name__)


class Cache(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> None: ...


class MemoryCache:
    """An LRU of at most `max_entries`, each entry expiring after its TTL."""

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._max_entries = max_entries
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, value = entry
        if expires_at <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> None:
        self._entries[key] = (self._clock() + ttl_seconds, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)


class RedisCache:
    """Entries under `prefix` in Redis, expiring by Redis's own TTL."""

    def __init__(self, client: redisconn.Client, prefix: str) -> None:
        self._client = client
        self._prefix = prefix

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self._client.get(self._prefix + key)
        except (RedisError, OSError) as exc:
            logger.warning("cache read failed; treated as a miss", extra={"error": repr(exc)})
            return None
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> None:
        try:
            await self._client.set(self._prefix + key, value, px=max(1, int(ttl_seconds * 1000)))
        except (RedisError, OSError) as exc:
            logger.warning("cache write failed; not cached", extra={"error": repr(exc)})
