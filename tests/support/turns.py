"""The orchestrator's turn in this process: a scripted LLM, memory (or Redis) stores, and async
doubles of ToolService and EmotionService served on loopback by the test's own event loop.

Fast (no subprocess, no HTTP), and a failure shows the messages that caused it: `ScriptedLlm`
records every request it got. The tool and emotion calls are still real gRPC, through the same
channels and breakers as in production, so cancellation reaches the doubles as CANCELLED.
"""

from __future__ import annotations

import asyncio
import io
import json
import wave
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import grpc
import grpc.aio
import redis.asyncio as redis

from chatagent.v1 import (
    emotion_pb2,
    emotion_pb2_grpc,
    speech_pb2,
    speech_pb2_grpc,
    tools_pb2,
    tools_pb2_grpc,
)
from services.common.breakers import BreakerBoard
from services.common.channels import open_channel
from services.common.deadline import Deadline
from services.common.gazetteer import load_gazetteer
from services.orchestrator.agent import Agent, AgentParts
from services.orchestrator.config import OrchestratorSettings
from services.orchestrator.llm import (
    LlmReply,
    LlmRequest,
    LlmTimeout,
    OnText,
    StopStream,
    estimate_prompt_tokens,
)
from services.orchestrator.main import Channels, build_agent
from services.orchestrator.model import (
    AssistantMessage,
    Message,
    SystemMessage,
    ToolCallRequest,
    ToolResultMessage,
    TurnEvent,
    TurnRequest,
    TurnResult,
    UserMessage,
)
from tests.support.doubles import (
    calculate_answer,
    emotion_answer,
    fortune_answer,
    time_answer,
    weather_answer,
)

# -- the LLM ---------------------------------------------------------------------------------

Planned = LlmReply | BaseException | Callable[[LlmRequest], "LlmReply | BaseException"]


def said(text: str, prompt_tokens: int = 100, completion_tokens: int = 20) -> LlmReply:
    return LlmReply(text, [], prompt_tokens, completion_tokens, "fake-model")


def calls(
    *tool_calls: tuple[str, dict[str, Any] | str], tokens: tuple[int, int] = (50, 10)
) -> LlmReply:
    """A reply asking for tools: (name, arguments as a dict or raw JSON text)."""
    requests = [
        ToolCallRequest(
            f"c{index}",
            name,
            arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False),
        )
        for index, (name, arguments) in enumerate(tool_calls, start=1)
    ]
    return LlmReply("", requests, tokens[0], tokens[1], "fake-model")


@dataclass
class ScriptedLlm:
    """Answers with `script` in order, then `default` for ever. A planned exception is raised;
    a callable is given the request. `delay` seconds pass before each answer; `gate`, when set,
    is awaited first (a test releases it)."""

    script: list[Planned] = field(default_factory=list)
    default: Planned | None = None
    delay: float = 0.0
    gate: asyncio.Event | None = None
    requests: list[LlmRequest] = field(default_factory=list)
    timeouts: list[float] = field(default_factory=list)
    cancelled: int = 0
    started: asyncio.Event = field(default_factory=asyncio.Event)
    # Streaming: the text comes in pieces of this many characters, `piece_delay` apart.
    piece_chars: int = 4
    piece_delay: float = 0.0
    streamed: int = 0  # how many requests were streamed
    # The moment each streamed request wrote its last piece (loop time).
    finished_at: list[float] = field(default_factory=list)

    async def stream(
        self, request: LlmRequest, *, timeout_seconds: float, on_text: OnText
    ) -> LlmReply:
        self.streamed += 1
        reply = await self.complete(request, timeout_seconds=timeout_seconds)
        text = reply.content
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_seconds):
                for start in range(0, len(text), self.piece_chars):
                    if self.piece_delay:
                        await asyncio.sleep(self.piece_delay)
                    try:
                        await on_text(text[start : start + self.piece_chars])
                    except StopStream:
                        written = text[: start + self.piece_chars]
                        return replace(
                            reply, content=written, tool_calls=[], stopped=True,
                            usage_reported=False, prompt_tokens=0, completion_tokens=0,
                        )  # fmt: skip
        except TimeoutError:
            raise LlmTimeout(f"no answer within {timeout_seconds:.3g}s") from None
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.finished_at.append(loop.time())
        return reply

    async def complete(self, request: LlmRequest, *, timeout_seconds: float) -> LlmReply:
        self.requests.append(request)
        self.timeouts.append(timeout_seconds)
        self.started.set()
        planned = self.script.pop(0) if self.script else self.default
        try:
            async with asyncio.timeout(timeout_seconds):
                if self.gate is not None:
                    await self.gate.wait()
                if self.delay:
                    await asyncio.sleep(self.delay)
        except TimeoutError:
            raise LlmTimeout(f"no answer within {timeout_seconds:.3g}s") from None
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if callable(planned) and not isinstance(planned, LlmReply | BaseException):
            planned = planned(request)
        if planned is None:
            planned = said("にゃん")
        if isinstance(planned, BaseException):
            raise planned
        return planned

    def wire(self, index: int = -1) -> list[dict[str, Any]]:
        """The messages of a request, as plain dicts (role, text), for assertions."""
        return [_plain(m) for m in self.requests[index].messages]


def _plain(message: Message) -> dict[str, Any]:
    if isinstance(message, SystemMessage):
        return {"role": "system", "content": message.text}
    if isinstance(message, UserMessage):
        return {"role": "user", "content": message.text}
    if isinstance(message, AssistantMessage):
        return {"role": "assistant", "content": message.text, "calls": len(message.tool_calls)}
    assert isinstance(message, ToolResultMessage)
    return {"role": "tool", "id": message.call_id, "result": dict(message.result)}


# -- the doubles of ToolService and EmotionService --------------------------------------------


@dataclass
class Recorder:
    """What a double was asked, how long it takes, what fails, and what got cancelled."""

    delays: dict[str, float] = field(default_factory=dict)
    failures: dict[str, grpc.StatusCode] = field(default_factory=dict)
    calls: list[tuple[str, Any]] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0

    def called(self, method: str) -> list[Any]:
        return [request for name, request in self.calls if name == method]

    async def enter(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> None:
        self.calls.append((method, request))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            delay = self.delays.get(method, 0.0)
            if delay:
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            self.cancelled.append(method)
            raise
        finally:
            self.in_flight -= 1
        failure = self.failures.get(method)
        if failure is not None:
            await context.abort(failure, f"{method} failed on purpose")
        self.finished.append(method)


class _Tools(tools_pb2_grpc.ToolServiceServicer):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def GetTime(self, request: Any, context: Any) -> tools_pb2.GetTimeResponse:
        await self.recorder.enter("GetTime", request, context)
        return time_answer(request)

    async def GetWeather(self, request: Any, context: Any) -> tools_pb2.GetWeatherResponse:
        await self.recorder.enter("GetWeather", request, context)
        return weather_answer(request)

    async def GetFortune(self, request: Any, context: Any) -> tools_pb2.GetFortuneResponse:
        await self.recorder.enter("GetFortune", request, context)
        return fortune_answer(request)

    async def Calculate(self, request: Any, context: Any) -> tools_pb2.CalculateResponse:
        await self.recorder.enter("Calculate", request, context)
        return calculate_answer(request)


@dataclass
class EmotionAnswer:
    scores: dict[str, float] = field(default_factory=lambda: {"joy": 0.8, "neutral": 0.2})
    dominant: str = "joy"


class _Emotion(emotion_pb2_grpc.EmotionServiceServicer):
    def __init__(self, recorder: Recorder, answer: EmotionAnswer) -> None:
        self.recorder = recorder
        self.answer = answer

    async def Analyze(self, request: Any, context: Any) -> emotion_pb2.AnalyzeResponse:
        await self.recorder.enter("Analyze", request, context)
        return emotion_answer(self.answer.scores, self.answer.dominant)


def tone(seconds: float, rate: int = 16_000) -> bytes:
    """A WAV of `seconds` of silence, 16-bit mono: what the speech double answers."""
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(b"\x00\x00" * int(seconds * rate))
    return out.getvalue()


class _Speech(speech_pb2_grpc.SpeechServiceServicer):
    """One chunk per request: 10 ms of audio per character."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def Synthesize(self, request: Any, context: Any) -> AsyncIterator[Any]:
        await self.recorder.enter("Synthesize", request, context)
        yield speech_pb2.SynthesizeResponse(
            sequence=0,
            text=request.text,
            audio_wav=tone(0.01 * len(request.text)),
            sample_rate_hz=16_000,
            characters=len(request.text),
        )


# -- the harness -----------------------------------------------------------------------------

# Limits that do not get in a test's way unless it sets its own.
_QUIET = {
    "user_rate_per_minute": 60_000.0,
    "user_burst": 1000,
    "caller_rate_per_minute": 60_000.0,
    "caller_burst": 1000,
    "breaker_fail_max": 3,
    "breaker_reset_seconds": 1.0,
    "default_timezone": "Asia/Tokyo",
    "llm_model": "fake-model",
    "llm_prices": {"fake-model": (1.0, 2.0)},
    "openai_base_url": "http://127.0.0.1:1/v1",
}


@dataclass
class Harness:
    agent: Agent
    settings: OrchestratorSettings
    llm: ScriptedLlm | None
    tools: Recorder
    emotion: Recorder
    emotion_answer: EmotionAnswer
    parts: AgentParts
    speech: Recorder
    events: list[TurnEvent] = field(default_factory=list)
    event_times: list[float] = field(default_factory=list)

    async def chat(
        self,
        message: str,
        user_id: str = "u",
        *,
        within: float = 10.0,
        caller: str = "backend",
        streaming: bool = False,
        **fields: Any,
    ) -> TurnResult:
        """A turn as `Chat` makes it, or as `StreamChat` does (`streaming`: its events are
        collected in `events`, each with the loop time it came at in `event_times`)."""
        loop = asyncio.get_running_loop()

        async def emit(event: TurnEvent) -> None:
            self.events.append(event)
            self.event_times.append(loop.time())

        request = TurnRequest(user_id=user_id, message=message, caller=caller, **fields)
        return await self.agent.turn(
            request, deadline=Deadline.after(within), emit=emit if streaming else None
        )

    async def settled(self) -> None:
        """Wait until every settle and release the bookkeeper started has been recorded."""
        await until(lambda: not self.agent.bookkeeper.pending)

    def usage_now(self) -> datetime:
        return datetime.now(UTC)


async def _serve(
    add: Callable[[Any, grpc.aio.Server], None], servicer: Any
) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    add(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@asynccontextmanager
async def harness(
    *,
    llm: ScriptedLlm | bool | None = True,
    redis_client: redis.Redis | None = None,
    tools_address: str | None = None,
    **settings: Any,
) -> AsyncIterator[Harness]:
    """An agent over the doubles; `llm=False` (or None) for the local planner only."""
    config = OrchestratorSettings(**(_QUIET | settings))  # type: ignore[arg-type]
    scripted = ScriptedLlm() if llm is True else (llm or None)
    tools_recorder, emotion_recorder, answer = Recorder(), Recorder(), EmotionAnswer()
    tools_server, address = await _serve(
        tools_pb2_grpc.add_ToolServiceServicer_to_server, _Tools(tools_recorder)
    )
    emotion_server, emotion_address = await _serve(
        emotion_pb2_grpc.add_EmotionServiceServicer_to_server, _Emotion(emotion_recorder, answer)
    )
    speech_recorder = Recorder()
    speech_server, speech_address = await _serve(
        speech_pb2_grpc.add_SpeechServiceServicer_to_server, _Speech(speech_recorder)
    )
    channels = Channels(
        tools=open_channel(tools_address or address, ["chatagent.v1.ToolService"]),
        emotion=open_channel(emotion_address, ["chatagent.v1.EmotionService"]),
        speech=open_channel(speech_address, ["chatagent.v1.SpeechService"]),
    )
    board = BreakerBoard(redis_client)
    agent = build_agent(
        config,
        client=redis_client,
        board=board,
        channels=channels,
        llm=scripted,
        places=load_gazetteer(config.gazetteer_min_population),
    )
    parts = agent.parts
    await board.start()
    try:
        yield Harness(
            agent,
            config,
            scripted,
            tools_recorder,
            emotion_recorder,
            answer,
            parts,
            speech_recorder,
        )
    finally:
        await agent.aclose()
        await board.aclose()
        for channel in (channels.tools, channels.emotion, channels.speech):
            await channel.close()
        await tools_server.stop(None)
        await emotion_server.stop(None)
        await speech_server.stop(None)


def ends_in_nyan(reply: str) -> bool:
    return reply.rstrip("。！!？?…").endswith("にゃん")


async def worst_case_usd(message: str = "こんにちは", **settings: Any) -> float:
    """What the agent holds against the budgets for the first LLM call of a turn: the prompt's
    estimate and max_tokens at the fake model's prices ($1 and $2 per million)."""
    llm = ScriptedLlm(default=said("にゃん"))
    async with harness(llm=llm, **settings) as h:
        await h.chat(message, user_id="calibration")
    request = llm.requests[0]
    return (estimate_prompt_tokens(request) * 1.0 + request.max_tokens * 2.0) / 1e6


async def until(condition: Callable[[], object], seconds: float = 10.0) -> None:
    """Wait for `condition` to hold (polled), failing the test after `seconds`."""
    for _ in range(int(seconds / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the condition did not come true in time")


def tool_results(request: LlmRequest) -> list[dict[str, Any]]:
    return [dict(m.result) for m in request.messages if isinstance(m, ToolResultMessage)]


def names(outcomes: Sequence[Any]) -> list[str]:
    return [o.call.name for o in outcomes]
