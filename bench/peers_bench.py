"""This suite against its peers, side by side in one run, on the same fake LLM and the same tools.

Every contender runs the same turn: an LLM call that asks for three tools in one response
(get_time for 東京, get_fortune, calculate 6*7), the three tools, and an LLM call that writes the
reply. The fake LLM (bench.fake_llm, an OpenAI-compatible HTTP server) runs in a process of its
own; every contender's client points at it through OPENAI_BASE_URL.

* suite: ChatService.Chat over gRPC to a real orchestrator process, with the real ToolService
  and EmotionService processes (the full turn: emotion, budgets, persona guard, history).
* first version: the design this project replaces, reimplemented small: the openai client in
  process, tools called one after another.
* OpenAI Agents SDK (`openai-agents`) and LangGraph (`langgraph` + `langchain-openai`, the
  prebuilt ReAct agent): in process, with the tools as async functions.

The in-process tools run the ToolService's own logic (services.tools: the gazetteer's local
time, the fortune, the calculator), so the peers do the same tool work without the gRPC hop.
Tracing and telemetry are off for all: the Agents SDK's with set_tracing_disabled(True),
LangSmith's by environment, the suite exports no traces (no OTLP endpoint).

Two measurements:
* latency and throughput: closed-loop clients at concurrency 1, 16 and 64, tools without
  added delay; turn p50/p99 and turns/s per contender, and the suite's ratios to the Agents SDK.
  Targets: at 16 and 64, >= 3x the SDK's turns/s; at 1, p50 <= 0.7x the SDK's.
* tool phase: the same turn with the tools held for 120, 350 and 80 ms (sum 550, max 350), one
  turn at a time; from the first tool's start to the last tool's end. Target: <= max + 20 ms.
  The suite's tools are then a ToolService double that holds each call (tests.support.doubles),
  measured from StreamChat's tool events.

Everything shares the machine's cores: the load generator, the fake LLM and the contender.
A peer whose packages are missing is skipped with a message (pip install -e '.[bench]').
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc.aio

from bench.common import (
    METADATA,
    FakeLlmProcess,
    Section,
    machine,
    machine_line,
    orchestrator_env,
    p50,
    percentile,
)
from chatagent.v1 import chat_pb2, chat_pb2_grpc
from tests.support.doubles import emotion_double, tools_double
from tests.support.process import ServiceProcess
from tests.support.redis_server import RedisServer

MESSAGE = "東京の今の時間と今日の運勢、それと6*7を教えて"
SYSTEM = "あなたは猫のアシスタントです。返事は「にゃん」で終えてください。"
MODEL = "fake-model"
# Held for the tool-phase run only: the first version's three tools, scaled down.
PHASE_DELAYS = {"get_time": 0.120, "get_fortune": 0.350, "calculate": 0.080}
RPC_OF = {"get_time": "GetTime", "get_fortune": "GetFortune", "calculate": "Calculate"}
LEVELS = (1, 16, 64)
TOOL_SCHEMAS = [
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The local time at a place.",
            "parameters": {
                "type": "object",
                "properties": {"place": {"type": "string", "description": "A place name."}},
                "required": ["place"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_fortune",
            "description": "Today's fortune for the user.",
            "parameters": {"type": "object", "properties": {}},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "calculate",
            "description": "Evaluate an arithmetic expression.",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string"}},
                "required": ["expression"],
            },
        },
    },
]


class Tools:
    """The three tools in process, running the ToolService's logic; every call is counted and
    timed, so a run can show the tools really ran and how long their phase took."""

    def __init__(self) -> None:
        from services.common.gazetteer import load_gazetteer

        self.gazetteer = load_gazetteer()
        self.delays: dict[str, float] = {}
        self.calls: Counter[str] = Counter()
        self.spans: list[tuple[float, float]] = []

    async def _held(self, name: str) -> float:
        self.calls[name] += 1
        started = time.perf_counter()
        delay = self.delays.get(name, 0.0)
        if delay:
            await asyncio.sleep(delay)
        return started

    def _done(self, started: float) -> None:
        self.spans.append((started, time.perf_counter()))

    async def get_time(self, place: str) -> str:
        from services.tools.timeinfo import get_time

        started = await self._held("get_time")
        found = get_time(
            self.gazetteer, place=place, timezone="", default_timezone="Asia/Tokyo",
            now=datetime.now(UTC),
        )  # fmt: skip
        self._done(started)
        return json.dumps(asdict(found), ensure_ascii=False)

    async def get_fortune(self) -> str:
        from zoneinfo import ZoneInfo

        from services.tools.fortune import draw_fortune

        started = await self._held("get_fortune")
        fortune = draw_fortune(
            user_id="bench-user",
            local_date=datetime.now(ZoneInfo("Asia/Tokyo")).date(),
            language="ja",
        )
        self._done(started)
        return json.dumps(asdict(fortune), ensure_ascii=False, default=int)

    async def calculate(self, expression: str) -> str:
        from services.tools.calculator import CalculationError, calculate

        started = await self._held("calculate")
        try:
            result: dict[str, Any] = asdict(calculate(expression))
        except CalculationError as error:
            result = {"error": str(error)}
        self._done(started)
        return json.dumps(result, ensure_ascii=False)

    async def run(self, name: str, arguments: dict[str, Any]) -> str:
        function: Callable[..., Awaitable[str]] = getattr(self, name)
        return await function(**arguments)

    def phase(self) -> float:
        """From the first tool's start to the last one's end, since the last call of phase()."""
        spans, self.spans = self.spans, []
        return max(end for _, end in spans) - min(start for start, _ in spans)


@dataclass
class Contender:
    name: str
    turn: Callable[[int], Awaitable[None]]  # one whole turn, for the user with this number
    tools_called: Callable[[], int]  # tool calls that really ran so far
    phase: Callable[[int], Awaitable[float]] | None = None  # one turn with held tools
    close: Callable[[], Awaitable[None]] | None = None
    note: str = ""


@dataclass
class Level:
    concurrency: int
    turns: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.turns / self.seconds if self.seconds else 0.0


@dataclass
class Result:
    name: str
    levels: dict[int, Level] = field(default_factory=dict)
    phase_p50_ms: float = float("nan")
    phase_max_ms: float = float("nan")
    skipped: str = ""
    note: str = ""


# --- the contenders ---------------------------------------------------------------------------


def first_version(base_url: str, tools: Tools) -> Contender:
    """The first version's design: one LLM call, the tools one after another, one more call."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key="sk-bench", max_retries=0)

    async def turn(_user: int) -> None:
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": MESSAGE},
        ]
        for _ in range(4):
            answer = await client.chat.completions.create(
                model=MODEL,
                messages=messages,
                tools=TOOL_SCHEMAS,  # type: ignore[arg-type]
            )
            message = answer.choices[0].message
            if not message.tool_calls:
                assert message.content
                return
            messages.append(message.model_dump(exclude_none=True))
            for call in message.tool_calls:  # one after another: the design being replaced
                result = await tools.run(call.function.name, json.loads(call.function.arguments))
                messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
        raise AssertionError("no reply after four LLM calls")

    async def phase(user: int) -> float:
        tools.spans.clear()
        await turn(user)
        return tools.phase()

    return Contender(
        "first version (tools in sequence)", turn, lambda: sum(tools.calls.values()), phase,
        client.close,
    )  # fmt: skip


def agents_sdk(base_url: str, tools: Tools) -> Contender:
    from agents import (
        Agent,
        OpenAIChatCompletionsModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    client = AsyncOpenAI(base_url=base_url, api_key="sk-bench", max_retries=0)

    @function_tool
    async def get_time(place: str) -> str:
        """The local time at a place."""
        return await tools.get_time(place)

    @function_tool
    async def get_fortune() -> str:
        """Today's fortune for the user."""
        return await tools.get_fortune()

    @function_tool
    async def calculate(expression: str) -> str:
        """Evaluate an arithmetic expression."""
        return await tools.calculate(expression)

    agent = Agent(
        name="cat",
        instructions=SYSTEM,
        model=OpenAIChatCompletionsModel(model=MODEL, openai_client=client),
        tools=[get_time, get_fortune, calculate],
    )

    async def turn(_user: int) -> None:
        result = await Runner.run(agent, MESSAGE)
        assert result.final_output

    async def phase(user: int) -> float:
        tools.spans.clear()
        await turn(user)
        return tools.phase()

    import agents

    return Contender(
        "OpenAI Agents SDK", turn, lambda: sum(tools.calls.values()), phase, client.close,
        note=f"openai-agents {agents.__version__}, Chat Completions model, tracing disabled",
    )  # fmt: skip


def langgraph_agent(base_url: str, tools: Tools) -> Contender:
    os.environ["LANGSMITH_TRACING"] = "false"
    os.environ["LANGCHAIN_TRACING_V2"] = "false"
    from importlib.metadata import version

    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from langgraph.prebuilt import create_react_agent

    @tool
    async def get_time(place: str) -> str:
        """The local time at a place."""
        return await tools.get_time(place)

    @tool
    async def get_fortune() -> str:
        """Today's fortune for the user."""
        return await tools.get_fortune()

    @tool
    async def calculate(expression: str) -> str:
        """Evaluate an arithmetic expression."""
        return await tools.calculate(expression)

    model = ChatOpenAI(model=MODEL, base_url=base_url, api_key="sk-bench", max_retries=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = create_react_agent(model, [get_time, get_fortune, calculate], prompt=SYSTEM)

    async def turn(_user: int) -> None:
        state = await graph.ainvoke({"messages": [("user", MESSAGE)]})
        assert state["messages"][-1].content

    async def phase(user: int) -> float:
        tools.spans.clear()
        await turn(user)
        return tools.phase()

    return Contender(
        "LangGraph (prebuilt ReAct agent)", turn, lambda: sum(tools.calls.values()), phase,
        note=f"langgraph {version('langgraph')}, langchain-openai {version('langchain-openai')}",
    )  # fmt: skip


class Suite:
    """The orchestrator over gRPC with the real ToolService and EmotionService processes, and a
    second orchestrator on a held ToolService double for the tool phase."""

    def __init__(self, base_url: str, workers: int) -> None:
        self.base_url = base_url
        self.workers = workers
        self.stack = contextlib.ExitStack()
        self.channel: grpc.aio.Channel | None = None
        self.phase_channel: grpc.aio.Channel | None = None
        self.tool_calls = 0

    def start(self) -> None:
        tools = self.stack.enter_context(ServiceProcess("tools", {"LOG_LEVEL": "WARNING"}))
        emotion = self.stack.enter_context(ServiceProcess("emotion", {"LOG_LEVEL": "WARNING"}))
        tools.start(wait_for=None)
        emotion.start(wait_for=None)
        tools.wait_serving("chatagent.v1.ToolService", timeout=60)
        emotion.wait_serving("chatagent.v1.EmotionService", timeout=60)
        wiring = {"OPENAI_BASE_URL": self.base_url, "SPEECH_ADDR": "127.0.0.1:1"}
        extra: dict[str, str] = {}
        if self.workers > 1:  # several workers on one port need the state in Redis
            redis = self.stack.enter_context(RedisServer())
            extra = {"WORKERS": str(self.workers), "REDIS_URL": redis.url}
        self.chat = self.stack.enter_context(
            ServiceProcess(
                "orchestrator",
                orchestrator_env(
                    TOOLS_ADDR=tools.address, EMOTION_ADDR=emotion.address, **wiring, **extra
                ),
            )
        )
        self.chat.start(wait_for="chatagent.v1.ChatService", timeout=60)
        double = self.stack.enter_context(tools_double())
        double.delays = {RPC_OF[name]: delay for name, delay in PHASE_DELAYS.items()}
        emotion_stub = self.stack.enter_context(emotion_double())
        self.held = self.stack.enter_context(
            ServiceProcess(
                "orchestrator",
                orchestrator_env(
                    TOOLS_ADDR=double.address, EMOTION_ADDR=emotion_stub.address, **wiring
                ),
            )
        )
        self.held.start(wait_for="chatagent.v1.ChatService", timeout=60)

    def contender(self) -> Contender:
        async def turn(user: int) -> None:
            if self.channel is None:
                self.channel = grpc.aio.insecure_channel(self.chat.address)
            stub = chat_pb2_grpc.ChatServiceStub(self.channel)
            answer = await stub.Chat(
                chat_pb2.ChatRequest(user_id=f"peer-{user}", message=MESSAGE, language="ja"),
                metadata=METADATA,
                timeout=30,
            )
            self.tool_calls += sum(
                call.status == chat_pb2.TOOL_CALL_STATUS_OK for call in answer.tool_calls
            )
            assert answer.reply

        async def phase(user: int) -> float:
            if self.phase_channel is None:
                self.phase_channel = grpc.aio.insecure_channel(self.held.address)
            stub = chat_pb2_grpc.ChatServiceStub(self.phase_channel)
            request = chat_pb2.StreamChatRequest(
                user_id=f"phase-{user}", message=MESSAGE, language="ja"
            )
            first = last = 0.0
            async for event in stub.StreamChat(request, metadata=METADATA, timeout=30):
                kind = event.WhichOneof("event")
                if kind == "tool_call_started" and not first:
                    first = time.perf_counter()
                elif kind == "tool_call_finished":
                    last = time.perf_counter()
            return last - first

        async def close() -> None:
            for channel in (self.channel, self.phase_channel):
                if channel is not None:
                    await channel.close()
            self.channel = self.phase_channel = None

        workers = f", {self.workers} orchestrator workers" if self.workers > 1 else ""
        return Contender(
            "this suite over gRPC", turn, lambda: self.tool_calls, phase, close,
            note=f"real ToolService and EmotionService processes{workers}",
        )  # fmt: skip

    def stop(self) -> None:
        self.stack.close()


# --- the runs ---------------------------------------------------------------------------------


async def closed_loop(contender: Contender, concurrency: int, seconds: float) -> Level:
    latencies: list[float] = []
    errors = 0
    for user in range(min(10, concurrency * 2)):  # warm up connections and caches
        await contender.turn(user)
    stop_at = time.perf_counter() + seconds

    async def worker(worker_id: int) -> None:
        nonlocal errors
        n = 0
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                await contender.turn(worker_id * 1000 + n % 50)
            except Exception:  # counted and reported, the run goes on
                errors += 1
            else:
                latencies.append(time.perf_counter() - started)
            n += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    return Level(
        concurrency, len(latencies), errors, elapsed,
        p50(latencies) * 1e3, percentile(latencies, 0.99) * 1e3,
    )  # fmt: skip


async def measure(
    contender: Contender, levels: tuple[int, ...], seconds: float, phase_samples: int,
    tools: Tools | None,
) -> Result:  # fmt: skip
    result = Result(contender.name, note=contender.note)
    for concurrency in levels:
        before = contender.tools_called()
        level = await closed_loop(contender, concurrency, seconds)
        ran = contender.tools_called() - before
        warm = min(10, concurrency * 2)
        # Every turn (the warm-up ones too) ran its three tools: the peers are not skipping
        # the work.
        assert ran >= 3 * (level.turns + warm), (contender.name, ran, level.turns)
        result.levels[concurrency] = level
        print(
            f"  {contender.name}, concurrency {concurrency}: {level.rate:.0f} turns/s, "
            f"p50 {level.p50_ms:.1f} ms, p99 {level.p99_ms:.1f} ms, {level.errors} errors, "
            f"{ran} tool calls",
            flush=True,
        )
    if contender.phase is not None and phase_samples:
        if tools is not None:
            tools.delays = dict(PHASE_DELAYS)
        try:
            phases = [await contender.phase(i) for i in range(phase_samples)]
        finally:
            if tools is not None:
                tools.delays = {}
        result.phase_p50_ms = p50(phases) * 1e3
        result.phase_max_ms = max(phases) * 1e3
    return result


PEERS: dict[str, Callable[[str, Tools], Contender]] = {
    "first version": first_version,
    "agents sdk": agents_sdk,
    "langgraph": langgraph_agent,
}
MISSING = {
    "agents sdk": "openai-agents",
    "langgraph": "langgraph and langchain-openai",
}


async def run_all(
    base_url: str, levels: tuple[int, ...], seconds: float, phase_samples: int, workers: int
) -> list[Result]:
    results: list[Result] = []
    suite = Suite(base_url, workers)
    suite.start()
    try:
        contender = suite.contender()
        try:
            results.append(await measure(contender, levels, seconds, phase_samples, None))
        finally:
            assert contender.close is not None
            await contender.close()
    finally:
        suite.stop()
    tools = Tools()
    for key, make in PEERS.items():
        try:
            contender = make(base_url, tools)
        except ImportError as error:
            message = f"skipped: {MISSING.get(key, key)} not installed ({error.name}); " \
                "pip install -e '.[bench]'"  # fmt: skip
            print(f"  {key}: {message}", flush=True)
            results.append(Result(key, skipped=message))
            continue
        try:
            results.append(await measure(contender, levels, seconds, phase_samples, tools))
        finally:
            if contender.close is not None:
                await contender.close()
    return results


def _f(value: float, digits: int = 1) -> str:
    return "–" if value != value else f"{value:,.{digits}f}"  # NaN: not measured


def render(results: list[Result], levels: tuple[int, ...], seconds: float, info: dict[str, Any]
           ) -> Section:  # fmt: skip
    lines = [
        f"Measured {machine_line(info)}. {seconds:g} s per point, closed-loop clients; the "
        "load generator, the fake LLM (its own process) and the contender share the cores.",
        "",
        "| contender | concurrency | turns/s | p50 (ms) | p99 (ms) | errors |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        if result.skipped:
            lines.append(f"| {result.name} | – | {result.skipped} | | | |")
            continue
        for level in result.levels.values():
            lines.append(
                f"| {result.name} | {level.concurrency} | {_f(level.rate, 0)} "
                f"| {_f(level.p50_ms)} | {_f(level.p99_ms)} | {level.errors} |"
            )
    suite = results[0]
    sdk = next((r for r in results if r.name == "OpenAI Agents SDK"), None)
    verdicts: dict[str, Any] = {}
    lines += ["", "The suite's ratios to each peer, measured in this run:", ""]
    lines += ["| against | " + " | ".join(f"turns/s ×, c={c}" for c in levels)
              + " | p50 ×, c=1 |", "|---|" + "---|" * (len(levels) + 1)]  # fmt: skip
    for peer in results[1:]:
        if peer.skipped:
            continue
        cells = [
            _f(suite.levels[c].rate / peer.levels[c].rate, 2) if peer.levels[c].rate else "–"
            for c in levels
        ]
        ratio = _f(suite.levels[1].p50_ms / peer.levels[1].p50_ms, 2) if 1 in levels else "–"
        lines.append(f"| {peer.name} | " + " | ".join(cells) + f" | {ratio} |")
    longest = max(PHASE_DELAYS.values()) * 1e3
    total = sum(PHASE_DELAYS.values()) * 1e3
    lines += [
        "",
        f"Tool phase, tools held {', '.join(f'{d * 1e3:.0f}' for d in PHASE_DELAYS.values())} "
        f"ms (sum {total:.0f}, max {longest:.0f}), one turn at a time:",
        "",
        "| contender | tool phase p50 (ms) | max (ms) |",
        "|---|---|---|",
    ]
    for result in results:
        if not result.skipped:
            lines.append(
                f"| {result.name} | {_f(result.phase_p50_ms)} | {_f(result.phase_max_ms)} |"
            )
    lines += ["", "Targets:", ""]
    if sdk is not None and not sdk.skipped:
        for c in (c for c in levels if c in (16, 64)):
            ratio = suite.levels[c].rate / sdk.levels[c].rate
            verdicts[f"throughput_c{c}"] = ratio >= 3
            lines.append(
                f"- concurrency {c}: {ratio:.2f}× the Agents SDK's turns/s (target ≥ 3×): "
                f"{'pass' if ratio >= 3 else 'FAIL'}"
            )
        if 1 in levels:
            ratio = suite.levels[1].p50_ms / sdk.levels[1].p50_ms
            verdicts["p50_c1"] = ratio <= 0.7
            lines.append(
                f"- concurrency 1: p50 {ratio:.2f}× the Agents SDK's (target ≤ 0.7×): "
                f"{'pass' if ratio <= 0.7 else 'FAIL'}"
            )
    else:
        lines.append("- throughput and p50 against the Agents SDK: not measured (SDK skipped)")
    ok = suite.phase_max_ms <= longest + 20
    verdicts["tool_phase"] = ok
    lines.append(
        f"- tool phase: the suite's max {_f(suite.phase_max_ms)} ms against max(tool) + 20 = "
        f"{longest + 20:.0f} ms: {'pass' if ok else 'FAIL'}"
    )
    notes = [f"- {r.name}: {r.note}" for r in results if r.note]
    if notes:
        lines += ["", "Contenders:", "", *notes]
    data = {
        "machine": info,
        "seconds_per_point": seconds,
        "results": [
            {
                "name": r.name, "skipped": r.skipped, "note": r.note,
                "phase_p50_ms": r.phase_p50_ms, "phase_max_ms": r.phase_max_ms,
                "levels": [asdict(level) | {"rate": level.rate} for level in r.levels.values()],
            }
            for r in results
        ],
        "targets": verdicts,
    }  # fmt: skip
    return Section("Against peers: the same turn, side by side", "\n".join(lines), data)


def main(argv: list[str] | None = None) -> Section:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="per contender and level")
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)))
    parser.add_argument("--phase-samples", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1, help="orchestrator worker processes")
    args = parser.parse_args(argv)
    levels = tuple(int(x) for x in args.levels.split(","))
    info = machine()
    with FakeLlmProcess() as llm:
        os.environ["OPENAI_BASE_URL"] = llm.base_url
        os.environ.setdefault("OPENAI_API_KEY", "sk-bench")
        results = asyncio.run(
            run_all(llm.base_url, levels, args.seconds, args.phase_samples, args.workers)
        )
    section = render(results, levels, args.seconds, info)
    print(section.markdown)
    return section


if __name__ == "__main__":
    main()
