"""The orchestrator's outbound calls: tools, emotion and speech, each through its service's
circuit breaker, each with a deadline, each with a fallback instead of an exception."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
import wave
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import grpc
import grpc.aio
import pybreaker
from google.protobuf import json_format

from chatagent.v1 import emotion_pb2, emotion_pb2_grpc, speech_pb2, speech_pb2_grpc, tools_pb2_grpc
from services.common.channels import DEADLINE_MARGIN_SECONDS
from services.orchestrator import metrics
from services.orchestrator.model import Emotion, ToolCallRequest, ToolOutcome, ToolStatus
from services.orchestrator.toolspec import ToolSpec, tool_specs

logger = logging.getLogger(__name__)

# Answers that say the caller asked for something wrong, not that the service is unwell: they
# reach the LLM as an error result and never count against the breaker.
CALLER_ERRORS: Final = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)

_FALLBACK_MESSAGES: Final = {
    "get_time": "The clock service is unavailable right now.",
    "get_weather": "The weather service is unavailable right now.",
    "get_fortune": "The fortune service is unavailable right now.",
    "calculate": "The calculator is unavailable right now.",
}


def is_caller_error(error: BaseException) -> bool:
    return isinstance(error, grpc.aio.AioRpcError) and error.code() in CALLER_ERRORS


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What the orchestrator fills in for the LLM: who is asking, in which language and zone."""

    user_id: str
    language: str
    timezone: str


class _GuardedClient:
    """A client of one dependency: its breaker, and a timeout bounded by the turn's deadline."""

    def __init__(self, breaker: pybreaker.CircuitBreaker, *, timeout_seconds: float) -> None:
        self._breaker = breaker
        self._timeout = timeout_seconds

    def _timeout_for(self, deadline: float) -> float:
        """This call's timeout: at most the configured one, and ends before the deadline.
        Zero or less means there is no time left to call at all."""
        return min(self._timeout, deadline - time.monotonic() - DEADLINE_MARGIN_SECONDS)


class ToolRunner(_GuardedClient):
    """Runs the tool calls of one LLM response concurrently, deduplicated within the turn."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        breaker: pybreaker.CircuitBreaker,
        *,
        timeout_seconds: float,
    ) -> None:
        super().__init__(breaker, timeout_seconds=timeout_seconds)
        stub = tools_pb2_grpc.ToolServiceStub(channel)
        self._specs = tool_specs()
        self._methods = {spec.name: getattr(stub, spec.method) for spec in self._specs.values()}

    async def run(
        self,
        calls: Sequence[ToolCallRequest],
        context: ToolContext,
        *,
        deadline: float,
        seen: dict[str, ToolOutcome],
    ) -> list[ToolOutcome]:
        """Outcomes in the order of `calls`. `seen` carries the turn's earlier outcomes by call
        key: an identical call is answered from the first, not run again."""
        pending: dict[str, asyncio.Task[ToolOutcome]] = {}
        order: list[tuple[ToolCallRequest, str, bool]] = []
        for call in calls:
            key = _call_key(call)
            repeated = key in seen or key in pending
            if not repeated:
                pending[key] = asyncio.create_task(self._run_one(call, context, deadline))
            order.append((call, key, repeated))
        if pending:
            await asyncio.wait(pending.values())
        outcomes: list[ToolOutcome] = []
        for call, key, repeated in order:
            first = seen.get(key) or pending[key].result()
            if repeated:
                outcome = ToolOutcome(call, ToolStatus.DEDUPLICATED, first.result, 0.0)
                metrics.TOOL_CALLS.labels(call.name, "deduplicated").inc()
            else:
                outcome = first
                seen[key] = first
            outcomes.append(outcome)
        return outcomes

    async def _run_one(
        self, call: ToolCallRequest, context: ToolContext, deadline: float
    ) -> ToolOutcome:
        started = time.perf_counter()
        spec = self._specs.get(call.name)
        if spec is None:
            known = ", ".join(self._specs)
            return self._finish(
                call,
                ToolStatus.REJECTED,
                {"error": f"unknown tool {call.name!r}; tools: {known}"},
                started,
            )
        try:
            request = _request(spec, call.arguments, context)
        except ValueError as exc:
            return self._finish(call, ToolStatus.REJECTED, {"error": str(exc)}, started)

        timeout = self._timeout_for(deadline)
        if timeout <= 0:
            return self._fallback(call, "no time left in the turn", started)
        attempted = False
        try:
            with self._breaker.calling():
                attempted = True
                response = await self._methods[call.name](request, timeout=timeout)
        except pybreaker.CircuitBreakerError:
            if attempted:  # this very call failed and opened the circuit
                return self._fallback(call, "circuit opened", started)
            return self._finish(
                call, ToolStatus.CIRCUIT_OPEN, {"error": _FALLBACK_MESSAGES[call.name]}, started
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in CALLER_ERRORS:
                return self._finish(
                    call, ToolStatus.INVALID_ARGUMENT, {"error": exc.details() or ""}, started
                )
            return self._fallback(call, exc.code().name, started)
        result = json_format.MessageToDict(
            response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        return self._finish(call, ToolStatus.OK, result, started)

    def _fallback(self, call: ToolCallRequest, why: str, started: float) -> ToolOutcome:
        logger.warning("tool fell back", extra={"tool": call.name, "reason": why})
        result = {"error": _FALLBACK_MESSAGES[call.name], "fallback": True}
        return self._finish(call, ToolStatus.FALLBACK, result, started)

    @staticmethod
    def _finish(
        call: ToolCallRequest, status: ToolStatus, result: dict[str, Any], started: float
    ) -> ToolOutcome:
        elapsed = time.perf_counter() - started
        metrics.TOOL_CALLS.labels(call.name, status.name.lower()).inc()
        metrics.TOOL_LATENCY.labels(call.name).observe(elapsed)
        return ToolOutcome(call, status, result, elapsed)


def _call_key(call: ToolCallRequest) -> str:
    try:
        arguments = json.dumps(json.loads(call.arguments or "{}"), sort_keys=True)
    except ValueError:
        arguments = call.arguments
    return f"{call.name}\x00{arguments}"


def _request(spec: ToolSpec, arguments: str, context: ToolContext) -> Any:
    """The request message for the LLM's JSON arguments; ValueError says what is wrong."""
    try:
        parsed = json.loads(arguments or "{}")
    except ValueError as exc:
        raise ValueError(f"arguments are not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise ValueError("arguments must be a JSON object")
    # The orchestrator, not the LLM, says who the user is.
    for name in spec.context_fields:
        parsed.pop(name, None)
    try:
        request = json_format.ParseDict(parsed, spec.request_class())
    except json_format.ParseError as exc:
        raise ValueError(f"invalid arguments for {spec.name}: {exc}") from None
    required = spec.definition["function"]["parameters"]["required"]
    missing = [name for name in required if not getattr(request, name)]
    if missing:
        raise ValueError(f"{spec.name} needs the argument(s): {', '.join(missing)}")
    fields = request.DESCRIPTOR.fields_by_name
    for name, value in (
        ("user_id", context.user_id),
        ("language", context.language),
        ("timezone", context.timezone),
    ):
        # Context fields always come from the turn; a zone the LLM left empty is the user's.
        if name in fields and (name in spec.context_fields or not getattr(request, name)):
            setattr(request, name, value)
    return request


class EmotionClient(_GuardedClient):
    """The user's emotion from EmotionService; None when it is unavailable (the turn degrades)."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        breaker: pybreaker.CircuitBreaker,
        *,
        timeout_seconds: float,
    ) -> None:
        super().__init__(breaker, timeout_seconds=timeout_seconds)
        self._stub = emotion_pb2_grpc.EmotionServiceStub(channel)

    async def analyze(self, text: str, language: str, *, deadline: float) -> Emotion | None:
        timeout = self._timeout_for(deadline)
        if timeout <= 0:
            return None
        try:
            with self._breaker.calling():
                reply = await self._stub.Analyze(
                    emotion_pb2.AnalyzeRequest(text=text, language=language), timeout=timeout
                )
        except (pybreaker.CircuitBreakerError, grpc.aio.AioRpcError) as exc:
            logger.warning("emotion unavailable", extra={"error": type(exc).__name__})
            return None
        scores = dict(reply.emotion.scores)
        if not scores:
            return None
        return Emotion(
            scores=scores, dominant=reply.emotion.dominant or max(scores, key=scores.__getitem__)
        )


@dataclass(frozen=True, slots=True)
class SpeechChunk:
    sequence: int
    text: str
    wav: bytes


class SpeechClient(_GuardedClient):
    """Speech from SpeechService, sentence by sentence."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        breaker: pybreaker.CircuitBreaker,
        *,
        timeout_seconds: float,
    ) -> None:
        super().__init__(breaker, timeout_seconds=timeout_seconds)
        self._stub = speech_pb2_grpc.SpeechServiceStub(channel)

    async def stream(
        self, text: str, language: str, *, deadline: float
    ) -> AsyncIterator[SpeechChunk]:
        """Chunks as they are synthesized; raises SpeechUnavailable when the service fails."""
        timeout = self._timeout_for(deadline)
        if timeout <= 0:
            raise SpeechUnavailable("no time left for speech")
        try:
            with self._breaker.calling():
                call = self._stub.Synthesize(
                    speech_pb2.SynthesizeRequest(text=text, language=language), timeout=timeout
                )
                async for chunk in call:
                    yield SpeechChunk(chunk.sequence, chunk.text, chunk.audio_wav)
        except (pybreaker.CircuitBreakerError, grpc.aio.AioRpcError) as exc:
            raise SpeechUnavailable(type(exc).__name__) from exc


class SpeechUnavailable(Exception):
    pass


def join_wavs(parts: Sequence[bytes]) -> bytes:
    """One WAV file holding the PCM frames of `parts` in order (all of one format)."""
    out = io.BytesIO()
    with wave.open(out, "wb") as joined:
        for index, part in enumerate(parts):
            with wave.open(io.BytesIO(part), "rb") as piece:
                if index == 0:
                    joined.setparams(piece.getparams())
                joined.writeframes(piece.readframes(piece.getnframes()))
    return out.getvalue()
