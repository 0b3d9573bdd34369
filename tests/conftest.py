from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio

from services.common import redisconn
from tests.support.pki import make_pki
from tests.support.redis_cluster import RedisCluster, RedisTarget
from tests.support.redis_server import RedisNotAvailable, redis_server


@pytest.fixture(params=["memory", "redis", "cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[redisconn.Client | None]:
    """The stores a turn test runs on: in this process (None), a real Redis, or a real Redis
    Cluster (a client for the harness's `redis_client`)."""
    if request.param == "memory":
        yield None
        return
    target = request.getfixturevalue(f"{request.param}_target")
    client = target.connect(2.0)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """One three-master Redis Cluster for the whole session (tests flush it: `cluster_target`)."""
    try:
        cluster = RedisCluster().start()
    except RedisNotAvailable as exc:
        pytest.fail(str(exc))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster_target(redis_cluster: RedisCluster) -> Iterator[RedisTarget]:
    """The session's Redis Cluster, emptied for this test. Afterwards no master may have
    answered CROSSSLOT: every multi-key command, script and transaction stayed in one slot."""
    redis_cluster.flush()
    yield RedisTarget(redis_cluster.url, cluster=True)
    errors = redis_cluster.error_counts()
    assert "CROSSSLOT" not in errors, f"the cluster refused cross-slot commands: {errors}"


@pytest.fixture
def redis_target(redis_url: str) -> RedisTarget:
    """A fresh single Redis server, as a target."""
    return RedisTarget(redis_url)


@pytest.fixture(params=["redis", "cluster"])
def any_redis(request: pytest.FixtureRequest) -> RedisTarget:
    """Each Redis-store test runs on one server and on the cluster."""
    target: RedisTarget = request.getfixturevalue(f"{request.param}_target")
    return target


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
