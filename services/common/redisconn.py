"""The Redis client every service builds the same way: bounded timeouts on every command."""

from __future__ import annotations

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

MAX_CONNECTIONS = 256


def connect(url: str, timeout_seconds: float) -> redis.Redis:
    """A client for `url`. Commands and connects time out; the caller closes it (`aclose`).

    The pool is a blocking one: under a burst, a command waits up to `timeout_seconds` for a free
    connection instead of failing at once when all of them are busy (redis-py's default).
    """
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=timeout_seconds,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        health_check_interval=30,
        # One quick retry for a dropped pooled connection, no more: callers have deadlines.
        retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=1),
    )
    return redis.Redis.from_pool(pool)
