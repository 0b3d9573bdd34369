"""The orchestrator and ToolService as real processes against a real three-master Redis Cluster
(REDIS_CLUSTER=true): a turn with a tool, history kept across turns, usage counted, the weather
cache shared, and not one cross-slot command refused by any master (checked by `cluster_target`
after the test, from the masters' own error statistics)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
import redis.asyncio
import redis.asyncio.cluster

from chatagent.v1 import chat_pb2, chat_pb2_grpc
from services.common import redisconn
from tests.support.doubles import emotion_double
from tests.support.fake_open_meteo import fake_open_meteo
from tests.support.fake_openai import Reply, fake_openai
from tests.support.process import ServiceProcess
from tests.support.redis_cluster import RedisCluster, RedisTarget

SERVICE = "chatagent.v1.ChatService"
TOKEN = "cluster-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


def _weather_then_reply(body: dict[str, Any]) -> Reply:
    if any(message["role"] == "tool" for message in body["messages"]):
        return Reply(content="晴れだにゃん", prompt_tokens=80, completion_tokens=10)
    call = {"id": "c1", "name": "get_weather", "arguments": json.dumps({"place": "東京"})}
    return Reply(tool_calls=[call], prompt_tokens=50, completion_tokens=10)


@pytest.fixture
def on_cluster(cluster_target: RedisTarget) -> Iterator[dict[str, Any]]:
    with ExitStack() as stack:
        llm = stack.enter_context(fake_openai())
        weather = stack.enter_context(fake_open_meteo())
        emotion = stack.enter_context(emotion_double())
        tools = ServiceProcess(
            "tools",
            {
                **cluster_target.env(),
                "OPEN_METEO_GEOCODING_URL": weather.geocoding_url,
                "OPEN_METEO_FORECAST_URL": weather.forecast_url,
            },
        )
        stack.callback(tools.__exit__, None, None, None)
        tools.start(wait_for="chatagent.v1.ToolService")
        orchestrator = ServiceProcess(
            "orchestrator",
            {
                **cluster_target.env(),
                "TOOLS_ADDR": tools.address,
                "EMOTION_ADDR": emotion.address,
                "SPEECH_ADDR": "127.0.0.1:1",
                "CHAT_API_TOKENS": f"backend:{TOKEN}",
                "OPENAI_BASE_URL": llm.base_url,
                "OPENAI_API_KEY": "sk-test",
                "LLM_MODEL": "fake-model",
                "LLM_PRICES": '{"fake-model": [1.0, 2.0]}',
            },
        )
        stack.callback(orchestrator.__exit__, None, None, None)
        orchestrator.start(wait_for=SERVICE)
        yield {"llm": llm, "weather": weather, "orchestrator": orchestrator, "tools": tools}


def test_orchestrator_and_tools_run_on_a_redis_cluster(
    on_cluster: dict[str, Any],
) -> None:
    orchestrator: ServiceProcess = on_cluster["orchestrator"]
    assert orchestrator.channel is not None
    stub = chat_pb2_grpc.ChatServiceStub(orchestrator.channel)
    on_cluster["llm"].responder = _weather_then_reply

    first = stub.Chat(
        chat_pb2.ChatRequest(user_id="mike", message="東京の天気は？", request_id="r1"),
        metadata=AUTH,
        timeout=15,
    )
    assert [c.name for c in first.tool_calls] == ["get_weather"]
    assert first.tool_calls[0].status == chat_pb2.TOOL_CALL_STATUS_OK
    assert list(first.degraded) == []
    second = stub.Chat(
        chat_pb2.ChatRequest(user_id="mike", message="明日も？", request_id="r2"),
        metadata=AUTH,
        timeout=15,
    )
    assert list(second.degraded) == []
    # History: the second turn's LLM call saw the first turn.
    contents = [m.get("content") for m in on_cluster["llm"].requests[-2].messages]
    assert "東京の天気は？" in contents
    assert "晴れだにゃん" in contents
    # The weather was asked upstream once: the second turn's lookup came from the shared cache.
    assert len(on_cluster["weather"].calls("/v1/forecast")) == 1
    # A replayed request id is answered from its stored answer, not run again.
    llm_calls = len(on_cluster["llm"].requests)
    again = stub.Chat(
        chat_pb2.ChatRequest(user_id="mike", message="東京の天気は？", request_id="r1"),
        metadata=AUTH,
        timeout=15,
    )
    assert again.reply == first.reply
    assert len(on_cluster["llm"].requests) == llm_calls

    usage = stub.GetUsage(chat_pb2.GetUsageRequest(user_id="mike"), metadata=AUTH, timeout=5)
    assert usage.user_today.turns == 2
    assert usage.user_today.prompt_tokens == 2 * (50 + 80)
    assert usage.global_month.turns == 2

    erased = stub.DeleteUserData(
        chat_pb2.DeleteUserDataRequest(user_id="mike"), metadata=AUTH, timeout=5
    )
    assert erased.erased_records > 0
    after = stub.GetUsage(chat_pb2.GetUsageRequest(user_id="mike"), metadata=AUTH, timeout=5)
    assert after.user_today.turns == 0


# redis-py's cluster client closes a node's connections under commands still using them while
# the node dies or comes back; the command then fails with an AttributeError from redis-py's
# connection module. Seen in tests/faults/test_cluster_faults.py as turns ending UNKNOWN.


async def _closed_connection_error() -> AttributeError:
    """The very error: a redis-py connection used after another task closed it."""
    connection = redis.asyncio.Connection()
    connection._writer = None  # what disconnect() leaves behind
    try:
        await connection._send_packed_command([b"PING\r\n"])
    except AttributeError as error:
        return error
    raise AssertionError("redis-py no longer fails this way: revisit redisconn._Cluster")


async def test_a_connection_closed_under_a_command_is_a_connection_error(
    redis_cluster: RedisCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = redisconn.connect(redis_cluster.url, 2.0, cluster=True)
    try:
        await client.set("{closed}:probe", "1")
        error = await _closed_connection_error()

        async def closed_meanwhile(self: Any, *args: Any, **kwargs: Any) -> Any:
            raise error

        monkeypatch.setattr(redis.asyncio.RedisCluster, "execute_command", closed_meanwhile)
        monkeypatch.setattr(redis.asyncio.cluster.ClusterPipeline, "execute", closed_meanwhile)
        with pytest.raises(redis.ConnectionError):  # a RedisError: the stores say UNAVAILABLE
            await client.get("{closed}:probe")
        async with client.pipeline(transaction=False) as pipe:
            pipe.get("{closed}:probe")
            with pytest.raises(redis.ConnectionError):
                await pipe.execute()

        # An AttributeError of anything else is a bug of ours and stays one.
        async def our_bug(self: Any, *args: Any, **kwargs: Any) -> Any:
            return None.missing  # type: ignore[attr-defined]

        monkeypatch.setattr(redis.asyncio.RedisCluster, "execute_command", our_bug)
        with pytest.raises(AttributeError):
            await client.get("{closed}:probe")
    finally:
        monkeypatch.undo()
        await client.aclose()
