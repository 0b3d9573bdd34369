"""ChatService over gRPC: requests to plain turns, results to protobuf, errors to status codes.
The turn itself lives in services.orchestrator.agent."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Final

import grpc
import grpc.aio
from google.protobuf.duration_pb2 import Duration

from chatagent.v1 import chat_pb2, chat_pb2_grpc, types_pb2
from services.common.auth import caller_of
from services.common.deadline import Deadline
from services.common.status import StatusTable
from services.common.validation import InvalidArgument, check_user_id
from services.orchestrator.agent import (
    Agent,
    RateLimited,
    StoreUnavailable,
    TurnAborted,
    TurnTimeout,
)
from services.orchestrator.config import OrchestratorSettings
from services.orchestrator.model import (
    AudioPiece,
    TextDelta,
    ToolFinished,
    ToolOutcome,
    ToolStarted,
    TurnEvent,
    TurnRequest,
    TurnResult,
    UsageTotals,
)

Context = grpc.aio.ServicerContext[Any, Any]

# Events of a streamed turn held for a client that has not read them yet.
_STREAM_BACKLOG: Final = 32

# How a turn's domain errors end the call.
STATUSES: Final = StatusTable(
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (RateLimited, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (TurnTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
    (TurnAborted, grpc.StatusCode.ABORTED),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
)


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    def __init__(self, agent: Agent, settings: OrchestratorSettings) -> None:
        self._agent = agent
        self._settings = settings

    def _deadline(self, context: Context) -> Deadline:
        return Deadline.from_context(context, default_seconds=self._settings.turn_timeout_seconds)

    async def Chat(self, request: chat_pb2.ChatRequest, context: Context) -> chat_pb2.ChatResponse:
        turn = self._agent.turn(_turn_request(request, context), deadline=self._deadline(context))
        return _response(await self._outcome(turn, context))

    async def StreamChat(
        self, request: chat_pb2.StreamChatRequest, context: Context
    ) -> AsyncIterator[chat_pb2.StreamChatResponse]:
        # Bounded: a client that reads slowly holds the turn back (within its deadline) instead
        # of making this process hold every event, audio included.
        events: asyncio.Queue[TurnEvent] = asyncio.Queue(maxsize=_STREAM_BACKLOG)
        ended = asyncio.Event()

        async def emit(event: TurnEvent) -> None:
            await events.put(event)

        turn = asyncio.create_task(
            self._agent.turn(
                _turn_request(request, context), deadline=self._deadline(context), emit=emit
            )
        )
        turn.add_done_callback(lambda _: ended.set())
        try:
            while (event := await _next_event(events, ended)) is not None:
                yield _event(event)
            result = await self._outcome(turn, context)
        finally:
            # The client went away (or the stream ended): the turn stops too.
            turn.cancel()
        final = _response(result)
        final.audio = b""  # streamed already
        yield chat_pb2.StreamChatResponse(final=final)

    async def DeleteUserData(
        self, request: chat_pb2.DeleteUserDataRequest, context: Context
    ) -> chat_pb2.DeleteUserDataResponse:
        async with STATUSES.translating(context):
            check_user_id(request.user_id)
            erased = await self._agent.erase(request.user_id)
        return chat_pb2.DeleteUserDataResponse(erased_records=erased)

    async def GetUsage(
        self, request: chat_pb2.GetUsageRequest, context: Context
    ) -> chat_pb2.GetUsageResponse:
        async with STATUSES.translating(context):
            check_user_id(request.user_id)
            report = await self._agent.usage(request.user_id)
        return chat_pb2.GetUsageResponse(
            user_today=_totals(report.user_today),
            user_month=_totals(report.user_month),
            global_today=_totals(report.global_today),
            global_month=_totals(report.global_month),
        )

    async def _outcome(self, turn: Awaitable[TurnResult], context: Context) -> TurnResult:
        async with STATUSES.translating(context):
            return await turn
        raise AssertionError("unreachable")  # pragma: no cover - translating() aborts or returns


async def _next_event(events: asyncio.Queue[TurnEvent], ended: asyncio.Event) -> TurnEvent | None:
    """The turn's next event, or None once it has ended and every event has been taken."""
    while events.empty():
        if ended.is_set():
            return None
        getter = asyncio.ensure_future(events.get())
        waiter = asyncio.ensure_future(ended.wait())
        try:
            await asyncio.wait((getter, waiter), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            return getter.result()
    return events.get_nowait()


def _turn_request(
    request: chat_pb2.ChatRequest | chat_pb2.StreamChatRequest, context: Context
) -> TurnRequest:
    return TurnRequest(
        user_id=request.user_id,
        message=request.message,
        language=request.language,
        timezone=request.timezone,
        include_audio=request.include_audio,
        request_id=request.request_id,
        caller=caller_of(context),
    )


def _tool_call(outcome: ToolOutcome) -> chat_pb2.ToolCall:
    duration = Duration()
    duration.FromNanoseconds(int(outcome.duration_seconds * 1e9))
    return chat_pb2.ToolCall(
        id=outcome.call.id,
        name=outcome.call.name,
        arguments_json=outcome.call.arguments,
        result_json=_json(outcome.result),
        status=chat_pb2.ToolCallStatus.ValueType(int(outcome.status)),
        duration=duration,
    )


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _response(result: TurnResult) -> chat_pb2.ChatResponse:
    return chat_pb2.ChatResponse(
        reply=result.reply,
        language=result.language,
        emotion=types_pb2.EmotionResult(
            scores=result.emotion.scores, dominant=result.emotion.dominant
        ),
        tool_calls=[_tool_call(o) for o in result.tool_outcomes],
        audio=result.audio,
        usage=chat_pb2.Usage(
            prompt_tokens=result.usage.prompt_tokens,
            completion_tokens=result.usage.completion_tokens,
            tts_characters=result.usage.tts_characters,
            cost_usd=result.usage.cost_usd,
            model=result.usage.model,
        ),
        degraded=result.degraded,
        trace_id=result.trace_id,
        request_id=result.request_id,
    )


def _event(event: TurnEvent) -> chat_pb2.StreamChatResponse:
    if isinstance(event, ToolStarted):
        return chat_pb2.StreamChatResponse(
            tool_call_started=chat_pb2.ToolCallStarted(
                id=event.call.id, name=event.call.name, arguments_json=event.call.arguments
            )
        )
    if isinstance(event, ToolFinished):
        return chat_pb2.StreamChatResponse(tool_call_finished=_tool_call(event.outcome))
    if isinstance(event, TextDelta):
        return chat_pb2.StreamChatResponse(text_delta=event.text)
    assert isinstance(event, AudioPiece)
    return chat_pb2.StreamChatResponse(
        audio_chunk=chat_pb2.AudioChunk(
            sequence=event.sequence, text=event.text, audio_wav=event.wav
        )
    )


def _totals(totals: UsageTotals) -> chat_pb2.UsageTotals:
    return chat_pb2.UsageTotals(
        turns=totals.turns,
        prompt_tokens=totals.prompt_tokens,
        completion_tokens=totals.completion_tokens,
        tts_characters=totals.tts_characters,
        cost_usd=totals.cost_usd,
    )
