"""The Redis client every service builds the same way: bounded timeouts on every command."""

from __future__ import annotations

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff


def connect(url: str, timeout_seconds: float) -> redis.Redis:
    """A client for `url`. Commands and connects time out; the caller closes it (`aclose`)."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        health_check_interval=30,
        # One quick retry for a dropped pooled connection, no more: callers have deadlines.
        retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=1),
    )
