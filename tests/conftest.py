from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio

from services.common import redisconn
from tests.support.pki import make_pki
from tests.support.redis_server import RedisNotAvailable, redis_server


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[redis.asyncio.Redis | None]:
    """The stores a turn test runs on: in this process (None), or a real Redis (a client for
    the harness's `redis_client`)."""
    if request.param == "memory":
        yield None
        return
    client = redisconn.connect(request.getfixturevalue("redis_url"), 2.0)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (CN=client)."""
    return make_pki(tmp_path_factory)


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis with nothing in it: a fresh server per test, or REDIS_URL's database flushed."""
    url = os.environ.get("REDIS_URL")
    if url:
        client = redis.Redis.from_url(url)
        client.flushdb()
        client.close()
        yield url
        return
    try:
        server = redis_server()
        started = server.__enter__()
    except RedisNotAvailable as exc:
        pytest.fail(str(exc))
    try:
        yield started
    finally:
        server.__exit__(None, None, None)
