"""The Redis client every service builds the same way: bounded timeouts on every command.

One Redis server, or a Redis Cluster (`cluster=True`, REDIS_CLUSTER): the URL then names any
one node, the others are discovered from it. The stores use only what both clients offer in the
same way: single-key commands, Lua scripts and transactions whose keys share one hash tag (one
slot), pipelines (the cluster client splits them per node), PUBLISH/SUBSCRIBE.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any, TypeAlias, TypeVar

import redis.asyncio as redis
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

MAX_CONNECTIONS = 256
T = TypeVar("T")

# What the stores are typed with: either client. Both offer the same commands (the cluster
# client routes each by its key's slot), pipelines and scripts.
Client: TypeAlias = redis.Redis | RedisCluster


def _closed_under_it(error: AttributeError) -> bool:
    """Whether `error` is redis-py using a connection another task closed meanwhile: raised
    inside its connection module, on the reader or writer it has just set to None."""
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and frame.tb_frame.f_code.co_filename.endswith(
        (
            "redis/asyncio/connection.py",
            "redis/_parsers/base.py",
            "redis/_parsers/resp2.py",
            "redis/_parsers/resp3.py",
            "redis/_parsers/hiredis.py",
        )
    )


async def _keeping_cancels(command: Awaitable[T]) -> T:
    """`command`, and then the cancellation redis-py may have swallowed while it ran.

    redis-py's asyncio client can catch the CancelledError meant for the caller's task mid
    command and carry on (a known class of its bugs; seen here about once in three cancels of a
    tight command loop with 8.1): a cancelled turn went on waiting for a user's lock, and then
    answered. The task still counts the cancel request (`Task.cancelling()`), so it is raised
    here if it was not."""
    task = asyncio.current_task()
    before = task.cancelling() if task is not None else 0
    result = await command
    if task is not None and task.cancelling() > before:
        raise asyncio.CancelledError
    return result


class _Redis(redis.Redis):
    async def execute_command(self, *args: Any, **options: Any) -> Any:
        command = super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        return await _keeping_cancels(command)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        return _SinglePipeline(
            self.connection_pool, self.response_callbacks, transaction, shard_hint
        )


class _SinglePipeline(redis.client.Pipeline):
    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        return await _keeping_cancels(super().execute(raise_on_error))


async def _on_cluster(command: Awaitable[T]) -> T:
    """A cluster command or pipeline: its swallowed cancel raised, and a connection closed
    under it raised as the connection error it is (see `_Cluster`)."""
    try:
        return await _keeping_cancels(command)
    except AttributeError as exc:
        if _closed_under_it(exc):
            raise redis.ConnectionError(
                "a Redis connection was closed while a command was using it"
            ) from exc
        raise


class _Pipeline(ClusterPipeline):
    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        return await _on_cluster(super().execute(*args, **kwargs))


class _Cluster(RedisCluster):
    """redis-py's cluster client, made safe for concurrent first use and for node failures.

    redis-py (8.1) picks a command's target before it learns the slot map: commands issued
    while the map is still unknown (the first ones, and those after a node failure made the
    client start over) go to a random master, collect MOVED, and after a few of those the
    client rebuilds its map and closes the connections other commands are using. Learning the
    map first (one lock, one CLUSTER SLOTS for everyone) keeps every command on its slot's node.

    While a node dies or comes back, the client also closes a node's connections under commands
    still writing or reading on them, and those fail with an AttributeError (a writer that is
    now None). That is a connection error: it is raised as one, so the stores answer it as
    "the store is unavailable" instead of an unknown failure.
    """

    __slots__ = ()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if self._initialize:
            await self.initialize()
        return await _on_cluster(super().execute_command(*args, **kwargs))

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> Any:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # refused by redis-py, as it says
        return _Pipeline(self, transaction)  # type: ignore[abstract]


def _retry() -> Retry:
    # One quick retry for a dropped pooled connection, no more: callers have deadlines.
    return Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=1)


def connect(url: str, timeout_seconds: float, *, cluster: bool = False) -> Client:
    """A client for `url`. Commands and connects time out; the caller closes it (`aclose`).

    The single-node pool is a blocking one: under a burst, a command waits up to
    `timeout_seconds` for a free connection instead of failing at once when all of them are busy
    (redis-py's default). The cluster client has no blocking pool; it keeps up to
    MAX_CONNECTIONS per node and fails a command at once beyond that (MaxConnectionsError, a
    ConnectionError).
    """
    if cluster:
        return connect_cluster(url, timeout_seconds)
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=timeout_seconds,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        health_check_interval=30,
        retry=_retry(),
    )
    return _Redis.from_pool(pool)


def connect_cluster(url: str, timeout_seconds: float) -> RedisCluster:
    """A Redis Cluster client, from the URL of any one node (`redis://` or `rediss://`).

    MOVED and ASK redirections are followed by the client; a connection error or CLUSTERDOWN is
    retried once after refreshing the slot map, so a command to a node that is down fails
    within a few timeouts instead of hanging.
    """
    if not url.startswith(("redis://", "rediss://")):
        raise ValueError("a Redis Cluster URL must start with redis:// or rediss://")
    return _Cluster.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        health_check_interval=30,
        retry=_retry(),
    )


def is_cluster(client: Client) -> bool:
    """Whether `client` talks to a Redis Cluster."""
    return isinstance(client, RedisCluster)


# One script call: the script, its keys (all in one slot), its other arguments.
ScriptCall: TypeAlias = tuple[AsyncScript, Sequence[str], Sequence[str | int]]


async def run_scripts(client: Client, calls: Sequence[ScriptCall]) -> list[Any]:
    """Each script once, all at the same time; their replies in order. The first error (after
    the others have run) is raised.

    On one server: one pipeline, one round trip; a server that restarted or failed over may not
    have the scripts yet, those calls ran nothing and are simply run again (the script object's
    call loads it). On a cluster, whose pipelines refuse EVALSHA (redis-py), each call goes to
    its slot's node concurrently, loading its script where missing: still one round trip's time.
    """
    if isinstance(client, RedisCluster):
        replies: list[Any] = await asyncio.gather(
            *(script(keys=keys, args=args) for script, keys, args in calls),
            return_exceptions=True,
        )
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return replies
    async with client.pipeline(transaction=False) as pipe:
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        results: list[Any] = await pipe.execute(raise_on_error=False)
    for index, ((script, keys, args), result) in enumerate(zip(calls, results, strict=True)):
        if isinstance(result, NoScriptError):
            results[index] = await script(keys=keys, args=args)
        elif isinstance(result, Exception):
            raise result
    return results


async def ping(client: Client) -> bool:
    """Whether Redis answers: on a cluster, every master (a master that is down leaves its slots,
    and by Redis's default the whole cluster, unable to serve)."""
    if isinstance(client, RedisCluster):
        return bool(await client.ping(target_nodes=RedisCluster.PRIMARIES))
    return bool(await client.ping())


async def ready(client: Client) -> None:
    """Learn a cluster's slot map now (a no-op on one server). Commands do it themselves when
    needed; a cluster pub/sub does not, and fails on a client that has not learnt it yet."""
    if isinstance(client, RedisCluster):
        await client.initialize()


def decodes_responses(client: Client) -> bool:
    """Whether `client` returns str instead of bytes."""
    if isinstance(client, RedisCluster):
        return bool(client.get_encoder().decode_responses)
    return bool(client.connection_pool.connection_kwargs.get("decode_responses"))
