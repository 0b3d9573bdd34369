"""The services the corpus is run against, once for the module: a real ToolService process, a
real orchestrator process (the local planner, bearer auth, the real tools behind it), and the
in-process turn harness. The check that a category left the service healthy runs right after the
category's last entry."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import grpc.aio
import pytest
import pytest_asyncio

from tests.support.doubles import emotion_double
from tests.support.process import ServiceProcess
from tests.support.turns import Harness, ScriptedLlm, harness

TOKEN = "hostile-token-1"
OTHER_TOKEN = "hostile-token-2"


@dataclass
class Processes:
    tools: ServiceProcess
    orchestrator: ServiceProcess
    tools_channel: grpc.aio.Channel
    chat_channel: grpc.aio.Channel


@pytest.fixture(scope="module")
def _started() -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    with ExitStack() as stack:
        emotion = stack.enter_context(emotion_double())
        tools = ServiceProcess(
            "tools",
            {
                # Nothing leaves the machine: the weather upstream is a closed port.
                "OPEN_METEO_GEOCODING_URL": "http://127.0.0.1:1/v1/search",
                "OPEN_METEO_FORECAST_URL": "http://127.0.0.1:1/v1/forecast",
                "WEATHER_TIMEOUT_SECONDS": "0.5",
            },
        )
        stack.callback(tools.__exit__, None, None, None)
        tools.start(wait_for=None)
        orchestrator = ServiceProcess(
            "orchestrator",
            {
                "TOOLS_ADDR": tools.address,
                "EMOTION_ADDR": emotion.address,
                "SPEECH_ADDR": "127.0.0.1:1",
                "CHAT_API_TOKENS": f"backend:{TOKEN},other:{OTHER_TOKEN}",
                "USER_RATE_PER_MINUTE": "60000",
                "USER_BURST": "1000",
                "CALLER_RATE_PER_MINUTE": "60000",
                "CALLER_BURST": "1000",
                "DEFAULT_TIMEZONE": "Asia/Tokyo",
                "OPENAI_API_KEY": "",
                "OPENAI_BASE_URL": "",
            },
        )
        stack.callback(orchestrator.__exit__, None, None, None)
        orchestrator.start(wait_for=None)
        tools.wait_serving("chatagent.v1.ToolService")
        orchestrator.wait_serving("chatagent.v1.ChatService")
        yield tools, orchestrator


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def processes(_started: tuple[ServiceProcess, ServiceProcess]) -> AsyncIterator[Processes]:
    tools, orchestrator = _started
    tools_channel = grpc.aio.insecure_channel(tools.address)
    chat_channel = grpc.aio.insecure_channel(orchestrator.address)
    try:
        yield Processes(tools, orchestrator, tools_channel, chat_channel)
    finally:
        await tools_channel.close()
        await chat_channel.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_harness() -> AsyncIterator[Harness]:
    """One agent for every turn entry without settings of its own: what one entry does to it,
    the next (and the health check) lives with."""
    async with harness(llm=ScriptedLlm()) as h:
        yield h


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each `test_healthy_after[<category>]` right after that category's last entry."""
    checks = {
        item.callspec.params["category"]: item
        for item in items
        if getattr(item, "originalname", "") == "test_healthy_after" and hasattr(item, "callspec")
    }
    if not checks:
        return
    ordered: list[pytest.Item] = []
    for item in items:
        if item in checks.values():
            continue
        ordered.append(item)
    result: list[pytest.Item] = []
    for index, item in enumerate(ordered):
        result.append(item)
        category = getattr(item, "callspec", None) and item.callspec.params.get("entry", {})
        if not isinstance(category, dict):
            continue
        name = category.get("category")
        following = ordered[index + 1] if index + 1 < len(ordered) else None
        next_entry = getattr(following, "callspec", None) and following.callspec.params.get("entry")
        if name in checks and (not isinstance(next_entry, dict) or next_entry["category"] != name):
            result.append(checks.pop(name))
    result.extend(checks.values())
    items[:] = result
