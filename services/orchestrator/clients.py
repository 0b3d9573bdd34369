"""The orchestrator's outbound calls: tools, emotion and speech, each through its service's
circuit breaker, each within a budget from the turn's deadline, each with a fallback instead of an
exception. Whatever comes back is checked before the turn uses it.

A cancelled turn cancels the calls themselves (the services see CANCELLED): nothing runs on for
nobody.

Each tool call the LLM asks for is a span, `execute_tool {tool}` (OpenTelemetry's GenAI
conventions), whose child is the gRPC call to ToolService; see `ToolRunner`.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import time
import wave
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import grpc
import grpc.aio
from google.protobuf import json_format
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from chatagent.v1 import emotion_pb2, emotion_pb2_grpc, speech_pb2, speech_pb2_grpc, tools_pb2_grpc
from services.common.breakers import Breaker, CircuitOpen, grpc_codes
from services.common.channels import streaming, unary
from services.common.deadline import Budget, Deadline
from services.orchestrator import metrics
from services.orchestrator.model import Emotion, ToolCallRequest, ToolOutcome, ToolStatus
from services.orchestrator.toolspec import (
    ToolArgumentError,
    ToolContext,
    ToolSpec,
    canonical_arguments,
    tool_specs,
)

logger = logging.getLogger(__name__)

# Answers that say the caller asked for something wrong, not that the service is unwell: they
# reach the LLM as an error result and never count against the breaker.
CALLER_ERRORS: Final = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.FAILED_PRECONDITION,
        # Busy for a moment (its queue full): it answered, and sheds load by itself; opening
        # the circuit for BREAKER_RESET_SECONDS would outlast the burst by far.
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
# What a tool's own error message may bring into the LLM's next prompt, and its answer.
_MAX_TOOL_ERROR_CHARS: Final = 300
MAX_TOOL_RESULT_BYTES: Final = 16_384
# Metric label for tool names the contract does not have (the LLM's inventions).
UNKNOWN_TOOL: Final = "unknown"
# A call id goes on the tool's span only if it looks like one: it comes from the LLM, which may
# have put anything in it (the user's words included).
_SPAN_CALL_ID: Final = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


is_caller_error = grpc_codes(*CALLER_ERRORS)


OnFinish = Callable[[ToolOutcome], Awaitable[None]]


class ToolRunner:
    """Runs the tool calls of one LLM response concurrently, deduplicated within the turn, at
    most `allowed` of them; knows concurrency, caps, the breakers and metrics, and asks each
    call's `ToolSpec` for everything about the tool itself.

    Each tool has a breaker of its own (`breakers` by tool name): the weather's upstream being
    down must not switch the calculator off with it.

    Every call asked for is a span `execute_tool {tool}` (kind INTERNAL) with
    `gen_ai.operation.name`, `gen_ai.tool.name` (a tool of the contract, else "unknown": the
    name comes from the LLM), `gen_ai.tool.type`, `gen_ai.tool.call.id` and
    `chatagent.tool.status` (ToolStatus, lower case); its duration is the call's. The gRPC call
    to ToolService is its child. Calls answered without running (a repeat of an earlier call,
    or one over the cap) get a span too, of no duration and without a child: the trace then
    lists every call of the response, as ChatResponse.tool_calls does, and shows why one did
    not reach the tools. A call whose tool failed (status "fallback" or "circuit_open") is an
    ERROR with `error.type` (the gRPC code, "circuit_open", "no_time_left",
    "answer_too_large"); a call the LLM got wrong ("invalid_argument", "rejected") is not: the
    tools worked. Arguments and results never go on a span: they can hold the user's words.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        breakers: Mapping[str, Breaker],
        *,
        timeout_seconds: float,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self._timeout = timeout_seconds
        self._tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)
        stub = tools_pb2_grpc.ToolServiceStub(channel)
        self._specs = tool_specs()
        missing = set(self._specs) - set(breakers)
        if missing:
            raise ValueError(f"no breaker for the tools {sorted(missing)}")
        self._breakers = dict(breakers)
        self._methods = {spec.name: getattr(stub, spec.method) for spec in self._specs.values()}

    def breaker(self, tool: str) -> Breaker:
        return self._breakers[tool]

    async def run(
        self,
        calls: Sequence[ToolCallRequest],
        context: ToolContext,
        *,
        deadline: Deadline,
        reserve: float = 0.0,
        seen: dict[str, ToolOutcome],
        allowed: int,
        on_finish: OnFinish,
    ) -> list[ToolOutcome]:
        """Outcomes in the order of `calls`. Each call ends `reserve` seconds before the
        deadline at the latest (time kept for what follows it). `seen` carries the turn's
        earlier outcomes by call key: an identical call is answered from the first, not run
        again. Calls beyond `allowed` are not run: their result tells the LLM so."""
        pending: dict[str, asyncio.Task[ToolOutcome]] = {}
        order: list[tuple[ToolCallRequest, str, str]] = []  # (call, key, "run" | "dup" | "cap")
        for call in calls:
            key = f"{call.name}\x00{canonical_arguments(call.arguments)}"
            if key in seen or key in pending:
                order.append((call, key, "dup"))
            elif len(pending) >= allowed:
                order.append((call, key, "cap"))
            else:
                pending[key] = asyncio.create_task(
                    self._run_one(call, context, deadline, reserve, on_finish)
                )
                order.append((call, key, "run"))
        try:
            if pending:
                await asyncio.wait(pending.values())
        finally:
            # Cancelled (the turn was): the calls are cancelled too, and given a moment to say
            # so to their services.
            for task in pending.values():
                task.cancel()
        outcomes: list[ToolOutcome] = []
        for call, key, kind in order:
            if kind == "run":
                outcome = seen[key] = pending[key].result()
            elif kind == "dup":
                first = seen.get(key) or pending[key].result()
                outcome = ToolOutcome(call, ToolStatus.DEDUPLICATED, first.result, 0.0)
                self._span(call).end_with(outcome.status)
                self._count(call, outcome)
                await on_finish(outcome)
            else:
                outcome = ToolOutcome(
                    call,
                    ToolStatus.REJECTED,
                    {"error": f"too many tool calls: at most {allowed} more run in this turn"},
                    0.0,
                )
                self._span(call).end_with(outcome.status, capped=True)
                self._count(call, outcome)
                await on_finish(outcome)
            outcomes.append(outcome)
        return outcomes

    def _count(self, call: ToolCallRequest, outcome: ToolOutcome) -> None:
        label = call.name if call.name in self._specs else UNKNOWN_TOOL
        metrics.TOOL_CALLS.labels(label, outcome.status.name.lower()).inc()
        if outcome.status not in (ToolStatus.DEDUPLICATED, ToolStatus.REJECTED):
            metrics.TOOL_LATENCY.labels(label).observe(outcome.duration_seconds)

    async def _run_one(
        self,
        call: ToolCallRequest,
        context: ToolContext,
        deadline: Deadline,
        reserve: float,
        on_finish: OnFinish,
    ) -> ToolOutcome:
        started = time.perf_counter()
        span = self._span(call)
        try:
            with trace.use_span(
                span.span, end_on_exit=False, record_exception=False, set_status_on_exception=False
            ):
                status, result = await self._call(call, context, deadline, reserve)
        except BaseException as exc:
            span.end_failed(exc)
            raise
        outcome = ToolOutcome(call, status, result, time.perf_counter() - started)
        span.end_with(status)
        self._count(call, outcome)
        await on_finish(outcome)
        return outcome

    def _span(self, call: ToolCallRequest) -> _ToolSpan:
        tool = call.name if call.name in self._specs else UNKNOWN_TOOL
        attributes: dict[str, str] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": tool,
            "gen_ai.tool.type": "function",
        }
        if _SPAN_CALL_ID.fullmatch(call.id):
            attributes["gen_ai.tool.call.id"] = call.id
        span = self._tracer.start_span(
            f"execute_tool {tool}", kind=SpanKind.INTERNAL, attributes=attributes
        )
        return _ToolSpan(span)

    async def _call(
        self, call: ToolCallRequest, context: ToolContext, deadline: Deadline, reserve: float
    ) -> tuple[ToolStatus, dict[str, Any]]:
        spec = self._specs.get(call.name)
        if spec is None:
            known = ", ".join(self._specs)
            name = call.name if len(call.name) <= 40 else call.name[:40] + "…"
            return ToolStatus.REJECTED, {"error": f"unknown tool {name!r}; tools: {known}"}
        try:
            request = spec.parse(call.arguments, context)
        except ToolArgumentError as exc:
            return ToolStatus.REJECTED, {"error": str(exc)}
        budget = deadline.budget(self._timeout, reserve=reserve)
        if not budget.usable:
            return self._fallback(spec, "no_time_left")
        try:
            with self._breakers[spec.name].calling(budget):
                response = await unary(self._methods[spec.name](request, timeout=budget.seconds))
        except CircuitOpen:
            _failed_on_span("circuit_open")
            return ToolStatus.CIRCUIT_OPEN, spec.fallback()
        except grpc.aio.AioRpcError as exc:
            if exc.code() in CALLER_ERRORS:
                detail = (exc.details() or "the tool refused the arguments")[:_MAX_TOOL_ERROR_CHARS]
                return ToolStatus.INVALID_ARGUMENT, {"error": detail}
            return self._fallback(spec, exc.code().name, budget)
        if response.ByteSize() > MAX_TOOL_RESULT_BYTES:
            # Every byte of it would go into the next prompt, at the user's expense.
            return self._fallback(spec, "answer_too_large", budget)
        return ToolStatus.OK, json_format.MessageToDict(
            response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )

    @staticmethod
    def _fallback(
        spec: ToolSpec, why: str, budget: Budget | None = None
    ) -> tuple[ToolStatus, dict[str, Any]]:
        """The tool's fallback result; `why` is a short fixed token (a gRPC code name, or
        "no_time_left", "answer_too_large"), for the log and the span's `error.type`."""
        _failed_on_span(why)
        logger.info(
            "tool fell back",
            extra={
                "tool": spec.name,
                "reason": why,
                "cut_short": budget.cut_short if budget else True,
            },
        )
        return ToolStatus.FALLBACK, spec.fallback()


class _ToolSpan:
    """The span of one tool call (see ToolRunner), ended once with the call's status."""

    __slots__ = ("span",)

    def __init__(self, span: Span) -> None:
        self.span = span

    def end_with(self, status: ToolStatus, *, capped: bool = False) -> None:
        self.span.set_attribute("chatagent.tool.status", status.name.lower())
        if capped:
            self.span.set_attribute("chatagent.tool.capped", True)
        self.span.end()

    def end_failed(self, error: BaseException) -> None:
        """The call did not finish: cancelled with its turn, or a bug."""
        kind = "cancelled" if isinstance(error, asyncio.CancelledError) else type(error).__name__
        self.span.set_attribute("error.type", kind)
        self.span.set_status(Status(StatusCode.ERROR))
        self.span.end()


def _failed_on_span(error_type: str) -> None:
    """Marks the current span (the tool call's) as failed, `error_type` a short fixed token."""
    span = trace.get_current_span()
    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR))


class EmotionClient:
    """The user's emotion from EmotionService; None when it is unavailable (the turn degrades).
    Its answer is checked: only known labels and sane scores are used."""

    def __init__(
        self, channel: grpc.aio.Channel, breaker: Breaker, *, timeout_seconds: float
    ) -> None:
        self._breaker = breaker
        self._timeout = timeout_seconds
        self._stub = emotion_pb2_grpc.EmotionServiceStub(channel)

    async def analyze(self, text: str, language: str, *, deadline: Deadline) -> Emotion | None:
        budget = deadline.budget(self._timeout)
        if not budget.usable:
            return None
        try:
            with self._breaker.calling(budget):
                reply = await unary(
                    self._stub.Analyze(
                        emotion_pb2.AnalyzeRequest(text=text, language=language),
                        timeout=budget.seconds,
                    )
                )
        except CircuitOpen:
            return None
        except grpc.aio.AioRpcError as exc:
            logger.info("emotion unavailable", extra={"code": exc.code().name})
            return None
        emotion = Emotion.from_scores(dict(reply.emotion.scores))
        if emotion is None:
            logger.info("emotion service answered no usable scores")
        return emotion


@dataclass(frozen=True, slots=True)
class SpeechChunk:
    text: str
    wav: bytes
    characters: int  # of the text, synthesized (what speech costs are counted by)


class SpeechUnavailable(Exception):
    pass


class SpeechClient:
    """Speech from SpeechService, one sentence at a time (the turn sends each sentence as soon
    as it is complete, so the first audio comes while the LLM still writes)."""

    def __init__(
        self, channel: grpc.aio.Channel, breaker: Breaker, *, timeout_seconds: float
    ) -> None:
        self._breaker = breaker
        self._timeout = timeout_seconds
        self._stub = speech_pb2_grpc.SpeechServiceStub(channel)

    async def synthesize(
        self, text: str, language: str, *, deadline: Deadline, reserve: float = 0.0
    ) -> list[SpeechChunk]:
        """The sentence's audio, each piece a WAV file in the format of the first; raises
        SpeechUnavailable when the service fails or sends audio that cannot be played."""
        budget = deadline.budget(self._timeout, reserve=reserve)
        if not budget.usable:
            raise SpeechUnavailable("no time left for speech")
        pieces: list[SpeechChunk] = []
        try:
            with self._breaker.calling(budget):
                call = self._stub.Synthesize(
                    speech_pb2.SynthesizeRequest(text=text, language=language),
                    timeout=budget.seconds,
                )
                async with streaming(call) as chunks:
                    first: Any = None
                    async for chunk in chunks:
                        params = _wav_params(chunk.audio_wav)
                        first = first or params
                        if params != first:
                            raise SpeechUnavailable("speech came back in changing audio formats")
                        pieces.append(
                            SpeechChunk(
                                chunk.text[:2000],
                                chunk.audio_wav,
                                max(0, min(int(chunk.characters) or len(chunk.text), len(text))),
                            )
                        )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                # Nothing in this sentence to speak (an emoji, a lone "！"): no audio for it.
                return []
            raise SpeechUnavailable(exc.code().name) from exc
        except CircuitOpen as exc:
            raise SpeechUnavailable("circuit open") from exc
        return pieces


def _wav_params(data: bytes) -> tuple[int, int, int]:
    """(channels, sample width, frame rate) of a WAV file; SpeechUnavailable if it is none."""
    try:
        with wave.open(io.BytesIO(data), "rb") as piece:
            params = piece.getnchannels(), piece.getsampwidth(), piece.getframerate()
    except (wave.Error, EOFError, ValueError) as exc:
        raise SpeechUnavailable("speech came back as audio that is not a WAV file") from exc
    if params[0] < 1 or params[1] < 1 or params[2] < 1:
        raise SpeechUnavailable("speech came back as audio that is not a WAV file")
    return params


def join_wavs(parts: Sequence[bytes]) -> bytes:
    """One WAV file holding the PCM frames of `parts` in order (all of one format)."""
    out = io.BytesIO()
    try:
        with wave.open(out, "wb") as joined:
            for index, part in enumerate(parts):
                with wave.open(io.BytesIO(part), "rb") as piece:
                    if index == 0:
                        joined.setparams(piece.getparams())
                    joined.writeframes(piece.readframes(piece.getnframes()))
    except (wave.Error, EOFError, ValueError) as exc:
        raise SpeechUnavailable("speech came back as audio that cannot be joined") from exc
    return out.getvalue()
