"""One user turn, end to end: limits, the user's lock and history, emotion beside the first LLM
call, LLM rounds with concurrent tools, the persona guard, cost, speech, and the commit.

Plain asyncio; no gRPC. The servicer turns the exceptions below into status codes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import pybreaker

from services.common.language import Language, base_language, detect_language
from services.common.timezones import resolve_zone
from services.common.tracing import current_trace_id
from services.orchestrator import metrics, persona, planner
from services.orchestrator.clients import (
    EmotionClient,
    SpeechClient,
    SpeechUnavailable,
    ToolContext,
    ToolRunner,
    join_wavs,
)
from services.orchestrator.config import OrchestratorSettings
from services.orchestrator.limits import RateLimiter
from services.orchestrator.llm import Llm, LlmError, LlmReply
from services.orchestrator.model import (
    Emotion,
    HistoryTurn,
    TokenUsage,
    ToolCallRequest,
    ToolOutcome,
    ToolStatus,
    UsageReport,
)
from services.orchestrator.sessions import LockTimeout, SessionStore
from services.orchestrator.toolspec import tool_definitions
from services.orchestrator.usage import Budgets, UsageLedger, over_budget
from services.orchestrator.validation import check_turn

logger = logging.getLogger(__name__)

LOCAL_MODEL: Final = "local-planner"
# What is kept back from an LLM call's budget so a failed call still leaves time to answer
# with the local planner: at most this, and at most this share of what is left.
_FALLBACK_RESERVE_SECONDS: Final = 1.5
_FALLBACK_RESERVE_SHARE: Final = 0.4
# Committing the turn (history, answer, usage) needs a moment; without it, give up instead.
_COMMIT_RESERVE_SECONDS: Final = 0.05
_SENTENCE_END: Final = re.compile(r"(?<=[。！？!?\.…])\s*")
_LANGUAGE_NAMES: Final[dict[Language, str]] = {
    "ja": "Japanese",
    "en": "English",
    "ko": "Korean",
}


class RateLimited(Exception):
    def __init__(self, retry_after_seconds: float, scope: str) -> None:
        super().__init__(
            f"{scope} rate limit reached; retry after {retry_after_seconds:.2f} seconds"
        )
        self.retry_after_seconds = retry_after_seconds
        self.scope = scope


class BudgetSpent(LlmError):
    """A cost budget is spent: the local planner answers instead of the LLM."""

    def __init__(self, scope: str) -> None:
        super().__init__(f"the {scope} budget is spent")
        self.scope = scope


class TurnTimeout(Exception):
    """The turn could not finish before the caller's deadline; nothing of it was stored."""


@dataclass(frozen=True, slots=True)
class TurnRequest:
    user_id: str
    message: str
    language: str = ""
    timezone: str = ""
    include_audio: bool = False
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class TurnUsage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tts_characters: int = 0
    cost_usd: float = 0.0
    model: str = LOCAL_MODEL


@dataclass(frozen=True, slots=True)
class TurnResult:
    reply: str
    language: str
    emotion: Emotion
    tool_outcomes: tuple[ToolOutcome, ...]
    usage: TurnUsage
    degraded: tuple[str, ...]
    request_id: str
    trace_id: str = ""
    audio: bytes = b""
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class ToolStarted:
    call: ToolCallRequest


@dataclass(frozen=True, slots=True)
class ToolFinished:
    outcome: ToolOutcome


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class AudioPiece:
    sequence: int
    text: str
    wav: bytes


TurnEvent = ToolStarted | ToolFinished | TextDelta | AudioPiece
Emit = Callable[[TurnEvent], Awaitable[None]]


async def _ignore(_event: TurnEvent) -> None:
    return None


@dataclass
class _Turn:
    """The state of one turn while it runs."""

    request: TurnRequest
    language: Language
    timezone: str
    deadline: float
    emit: Emit
    history: list[HistoryTurn]
    outcomes: list[ToolOutcome] = field(default_factory=list)
    seen: dict[str, ToolOutcome] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    model: str = LOCAL_MODEL
    degraded: list[str] = field(default_factory=list)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def degrade(self, part: str) -> None:
        if part not in self.degraded:
            self.degraded.append(part)
            metrics.FALLBACKS.labels(part).inc()


@dataclass(frozen=True, slots=True)
class AgentParts:
    sessions: SessionStore
    limiter: RateLimiter
    ledger: UsageLedger
    tools: ToolRunner
    emotion: EmotionClient
    speech: SpeechClient
    llm: Llm | None
    llm_breaker: pybreaker.CircuitBreaker


class Agent:
    def __init__(self, settings: OrchestratorSettings, parts: AgentParts) -> None:
        self._settings = settings
        self._parts = parts
        self._budgets = Budgets(
            user_daily_usd=settings.user_daily_budget_usd,
            global_monthly_usd=settings.global_monthly_budget_usd,
        )
        self._persona = settings.persona()
        self._unpriced: set[str] = set()

    # -- the RPCs -----------------------------------------------------------------------------

    async def turn(
        self, request: TurnRequest, *, deadline: float, emit: Emit | None = None
    ) -> TurnResult:
        """Answer one message by `deadline` (time.monotonic()).

        Raises InvalidArgument, RateLimited or TurnTimeout; every other failure of a part
        degrades the answer instead.
        """
        check_turn(
            user_id=request.user_id,
            message=request.message,
            language=request.language,
            timezone=request.timezone,
            request_id=request.request_id,
            max_message_chars=self._settings.max_message_chars,
        )
        decision = await self._parts.limiter.check(request.user_id)
        if not decision.allowed:
            metrics.RATE_LIMITED.labels(decision.scope).inc()
            raise RateLimited(decision.retry_after_seconds, decision.scope)
        try:
            async with asyncio.timeout_at(deadline):
                async with self._parts.sessions.lock(
                    request.user_id, wait_seconds=max(0.0, deadline - time.monotonic())
                ):
                    return await self._locked_turn(request, deadline, emit or _ignore)
        except (TimeoutError, LockTimeout) as exc:
            metrics.TURNS.labels("deadline_exceeded").inc()
            raise TurnTimeout("the turn could not finish before the deadline") from exc

    async def usage(self, user_id: str) -> UsageReport:
        return await self._parts.ledger.report(user_id, datetime.now(UTC))

    async def erase(self, user_id: str) -> int:
        parts = self._parts
        erased = await asyncio.gather(
            parts.sessions.erase(user_id), parts.limiter.erase(user_id), parts.ledger.erase(user_id)
        )
        return sum(erased)

    # -- inside the user's lock ---------------------------------------------------------------

    async def _locked_turn(self, request: TurnRequest, deadline: float, emit: Emit) -> TurnResult:
        sessions = self._parts.sessions
        if request.request_id:
            cached = await sessions.cached_answer(request.user_id, request.request_id)
            if cached is not None:
                metrics.TURNS.labels("replayed").inc()
                return decode_result(cached)
        history = await sessions.history(request.user_id)
        language = (
            base_language(request.language, self._settings.default_language)
            if request.language
            else detect_language(request.message, default=self._settings.default_language)
        )
        timezone = (
            request.timezone
            or await sessions.timezone(request.user_id)
            or self._settings.default_timezone
        )
        turn = _Turn(request, language, timezone, deadline, emit, history)
        emotion_task = asyncio.create_task(
            self._parts.emotion.analyze(request.message, language, deadline=deadline)
        )
        try:
            reply = await self._answer(turn, emotion_task)
            emotion = await self._emotion(turn, emotion_task)
        finally:
            emotion_task.cancel()
        await self._stream_text(turn, reply)
        audio = await self._speak(turn, reply) if request.include_audio else b""
        tts_characters = len(reply) if audio else 0
        result = TurnResult(
            reply=reply,
            language=language,
            emotion=emotion,
            tool_outcomes=tuple(turn.outcomes),
            usage=TurnUsage(
                prompt_tokens=turn.prompt_tokens,
                completion_tokens=turn.completion_tokens,
                tts_characters=tts_characters,
                cost_usd=turn.cost_usd,
                model=turn.model,
            ),
            degraded=tuple(turn.degraded),
            request_id=request.request_id,
            trace_id=current_trace_id(),
            audio=audio,
        )
        if turn.remaining() < _COMMIT_RESERVE_SECONDS:
            raise TimeoutError
        # Once begun, the commit finishes even if the deadline strikes meanwhile: a retry with
        # the same request id then gets this answer instead of a second, different turn.
        await asyncio.shield(self._commit(turn, result))
        metrics.TURNS.labels("degraded" if turn.degraded else "ok").inc()
        return result

    async def _commit(self, turn: _Turn, result: TurnResult) -> None:
        request = turn.request
        now = datetime.now(UTC)
        await self._parts.sessions.commit_turn(
            request.user_id,
            HistoryTurn(
                user=request.message,
                assistant=result.reply,
                language=result.language,
                at=now.timestamp(),
                request_id=request.request_id,
            ),
            answer=encode_result(result),
            timezone=request.timezone,
        )
        await self._parts.ledger.record(
            request.user_id,
            prompt_tokens=result.usage.prompt_tokens,
            completion_tokens=result.usage.completion_tokens,
            tts_characters=result.usage.tts_characters,
            cost_usd=result.usage.cost_usd,
            now=now,
        )

    # -- composing the reply ------------------------------------------------------------------

    async def _answer(self, turn: _Turn, emotion_task: asyncio.Task[Emotion | None]) -> str:
        llm = self._parts.llm
        if llm is not None:
            try:
                return await self._llm_answer(turn, llm, emotion_task)
            except BudgetSpent as exc:
                metrics.BUDGET_EXHAUSTED.labels(exc.scope).inc()
                turn.degrade("budget")
            except (LlmError, pybreaker.CircuitBreakerError) as exc:
                logger.warning("LLM unavailable; local planner answers", extra={"error": repr(exc)})
                turn.degrade("llm")
        return await self._planner_answer(turn, emotion_task)

    async def _planner_answer(self, turn: _Turn, emotion_task: asyncio.Task[Emotion | None]) -> str:
        # Tool calls the LLM already made this turn are not repeated (turn.seen answers them).
        calls = planner.plan(turn.request.message, default_place=_place_of_zone(turn.timezone))
        outcomes = await self._run_tools(turn, calls) if calls else []
        emotion = await self._emotion(turn, emotion_task)
        reply = planner.compose(
            turn.request.message,
            turn.language,
            outcomes,
            emotion=emotion,
            ending=self._persona.ending(turn.language),
        )
        return self._guard_local(reply, turn)

    def _guard_local(self, reply: str, turn: _Turn) -> str:
        if persona.check(reply, turn.language, self._persona):
            metrics.PERSONA.labels("repaired").inc()
            return persona.repair(reply, turn.language, self._persona, fallback=reply)
        return reply

    async def _llm_answer(
        self, turn: _Turn, llm: Llm, emotion_task: asyncio.Task[Emotion | None]
    ) -> str:
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": self._system_prompt(turn)},
            *_history_messages(turn.history),
            {"role": "user", "content": turn.request.message},
        ]
        tools = tool_definitions()
        reply: LlmReply | None = None
        for round_number in range(self._settings.max_tool_rounds + 1):
            offer = tools if round_number < self._settings.max_tool_rounds else []
            reply = await self._complete(turn, llm, messages, offer)
            if not reply.tool_calls:
                break
            if not offer:
                # The LLM asked for tools it was not offered: the rounds are spent.
                break
            outcomes = await self._run_tools(turn, reply.tool_calls)
            messages.append(_assistant_tool_message(reply))
            messages.extend(_tool_result_message(o) for o in outcomes)
            if emotion_task.done() and round_number == 0:
                emotion = emotion_task.result()
                if emotion is not None and emotion.dominant != "neutral":
                    messages.append(
                        {
                            "role": "system",
                            "content": f"The user's message reads as {emotion.dominant}; "
                            "answer with that in mind.",
                        }
                    )
        assert reply is not None
        text = reply.content.strip()
        if reply.tool_calls and not text:
            # Still asking for tools after the last round: answer from what the tools said.
            return await self._compose_from_outcomes(turn, emotion_task)
        return await self._guard_llm(turn, llm, messages, text, emotion_task)

    async def _guard_llm(
        self,
        turn: _Turn,
        llm: Llm,
        messages: list[dict[str, Any]],
        text: str,
        emotion_task: asyncio.Task[Emotion | None],
    ) -> str:
        problems = persona.check(text, turn.language, self._persona)
        if not problems:
            metrics.PERSONA.labels("ok").inc()
            return text
        retry_messages = [
            *messages,
            {"role": "assistant", "content": text},
            {
                "role": "system",
                "content": persona.corrective_instruction(problems, turn.language, self._persona),
            },
        ]
        try:
            retried = (await self._complete(turn, llm, retry_messages, [])).content.strip()
        except (LlmError, pybreaker.CircuitBreakerError):
            retried = text
        if not persona.check(retried, turn.language, self._persona):
            metrics.PERSONA.labels("retried").inc()
            return retried
        metrics.PERSONA.labels("repaired").inc()
        fallback = await self._compose_from_outcomes(turn, emotion_task)
        return persona.repair(retried, turn.language, self._persona, fallback=fallback)

    async def _compose_from_outcomes(
        self, turn: _Turn, emotion_task: asyncio.Task[Emotion | None]
    ) -> str:
        emotion = await self._emotion(turn, emotion_task)
        reply = planner.compose(
            turn.request.message,
            turn.language,
            turn.outcomes,
            emotion=emotion,
            ending=self._persona.ending(turn.language),
        )
        return self._guard_local(reply, turn)

    async def _complete(
        self, turn: _Turn, llm: Llm, messages: Sequence[dict[str, Any]], tools: Sequence[Any]
    ) -> LlmReply:
        remaining = turn.remaining()
        reserve = min(_FALLBACK_RESERVE_SECONDS, remaining * _FALLBACK_RESERVE_SHARE)
        budget = min(self._settings.llm_timeout_seconds, remaining - reserve)
        if budget <= 0:
            raise LlmError("no time left for the LLM")
        # Before each call, what is spent already plus what this turn has spent so far.
        user_today, global_month = await self._parts.ledger.spent(
            turn.request.user_id, datetime.now(UTC)
        )
        spent = over_budget(
            (user_today + turn.cost_usd, global_month + turn.cost_usd), self._budgets
        )
        if spent:
            raise BudgetSpent(spent)
        with self._parts.llm_breaker.calling():
            reply = await llm.complete(messages, tools, timeout_seconds=budget)
        self._account(turn, reply)
        return reply

    def _account(self, turn: _Turn, reply: LlmReply) -> None:
        usage: TokenUsage = reply.usage
        model = reply.model or self._settings.llm_model
        turn.model = model
        turn.prompt_tokens += usage.prompt_tokens
        turn.completion_tokens += usage.completion_tokens
        prompt_price, completion_price = self._price(model)
        cost = (
            usage.prompt_tokens * prompt_price + usage.completion_tokens * completion_price
        ) / 1e6
        turn.cost_usd += cost
        metrics.TOKENS.labels(model, "prompt").inc(usage.prompt_tokens)
        metrics.TOKENS.labels(model, "completion").inc(usage.completion_tokens)
        metrics.COST.labels(model).inc(cost)

    def _price(self, model: str) -> tuple[float, float]:
        prices = self._settings.llm_prices
        if model in prices:
            return prices[model]
        # Providers answer with dated names ("gpt-4o-mini-2024-07-18"): the longest known prefix.
        for name in sorted(prices, key=len, reverse=True):
            if model.startswith(name):
                return prices[name]
        if model not in self._unpriced:
            self._unpriced.add(model)
            logger.warning("no price for model; its cost is counted as 0", extra={"model": model})
        return (0.0, 0.0)

    async def _run_tools(self, turn: _Turn, calls: Sequence[ToolCallRequest]) -> list[ToolOutcome]:
        for call in calls:
            await turn.emit(ToolStarted(call))
        context = ToolContext(
            user_id=turn.request.user_id, language=turn.language, timezone=turn.timezone
        )
        outcomes = await self._parts.tools.run(
            calls, context, deadline=turn.deadline, seen=turn.seen
        )
        for outcome in outcomes:
            if outcome.status in (ToolStatus.FALLBACK, ToolStatus.CIRCUIT_OPEN):
                turn.degrade("tools")
            turn.outcomes.append(outcome)
            await turn.emit(ToolFinished(outcome))
        return outcomes

    async def _emotion(self, turn: _Turn, emotion_task: asyncio.Task[Emotion | None]) -> Emotion:
        try:
            emotion = await asyncio.wait_for(
                asyncio.shield(emotion_task), max(0.0, turn.remaining())
            )
        except TimeoutError:
            emotion = None
        if emotion is None:
            turn.degrade("emotion")
            return Emotion.neutral()
        return emotion

    def _system_prompt(self, turn: _Turn) -> str:
        ending = self._persona.ending(turn.language)
        now = datetime.now(resolve_zone(turn.timezone)).strftime("%Y-%m-%d %H:%M %Z")
        return (
            "You are Tama, a friendly, curious cat who chats with people. "
            f"Always answer in {_LANGUAGE_NAMES[turn.language]} only, in at most "
            f"{self._persona.max_reply_chars} characters, and end every reply with "
            f"「{ending}」. Use the tools for the time, the weather, today's fortune and any "
            "arithmetic instead of guessing; after they answer, reply from their results and "
            "say so plainly when a tool could not help. "
            f"The user's time zone is {turn.timezone}; it is now {now} there."
        )

    # -- delivering the reply -----------------------------------------------------------------

    async def _stream_text(self, turn: _Turn, reply: str) -> None:
        for sentence in split_sentences(reply):
            await turn.emit(TextDelta(sentence))

    async def _speak(self, turn: _Turn, reply: str) -> bytes:
        """Speech for the reply, streamed per sentence to `emit` as it is synthesized and joined
        for the unary answer; empty, and the turn degraded, when the speech service fails."""
        pieces: list[bytes] = []
        try:
            async for chunk in self._parts.speech.stream(
                reply, turn.language, deadline=turn.deadline
            ):
                await turn.emit(AudioPiece(chunk.sequence, chunk.text, chunk.wav))
                pieces.append(chunk.wav)
        except SpeechUnavailable as exc:
            logger.warning("speech unavailable", extra={"error": str(exc)})
            turn.degrade("tts")
            return b""
        return join_wavs(pieces) if pieces else b""


# -- helpers ----------------------------------------------------------------------------------


def split_sentences(text: str) -> list[str]:
    return [part for part in _SENTENCE_END.split(text) if part]


def _place_of_zone(zone: str) -> str:
    """A place to ask the weather for when the user named none: their zone's city."""
    if "/" not in zone:
        return ""
    return zone.rsplit("/", 1)[1].replace("_", " ")


def _history_messages(history: Sequence[HistoryTurn]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for past in history:
        messages.append({"role": "user", "content": past.user})
        messages.append({"role": "assistant", "content": past.assistant})
    return messages


def _assistant_tool_message(reply: LlmReply) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": reply.content or None,
        "tool_calls": [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in reply.tool_calls
        ],
    }


def _tool_result_message(outcome: ToolOutcome) -> dict[str, Any]:
    return {
        "role": "tool",
        "tool_call_id": outcome.call.id,
        "content": json.dumps(outcome.result, ensure_ascii=False),
    }


def encode_result(result: TurnResult) -> bytes:
    """The answer kept for a retried request id (without audio, which is not worth keeping)."""
    body = asdict(result)
    body["audio"] = ""
    body["tool_outcomes"] = [
        {
            "call": asdict(o.call),
            "status": int(o.status),
            "result": o.result,
            "duration_seconds": o.duration_seconds,
        }
        for o in result.tool_outcomes
    ]
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def decode_result(data: bytes) -> TurnResult:
    body = json.loads(data)
    return TurnResult(
        reply=body["reply"],
        language=body["language"],
        emotion=Emotion(**body["emotion"]),
        tool_outcomes=tuple(
            ToolOutcome(
                ToolCallRequest(**o["call"]),
                ToolStatus(o["status"]),
                o["result"],
                o["duration_seconds"],
            )
            for o in body["tool_outcomes"]
        ),
        usage=TurnUsage(**body["usage"]),
        degraded=tuple(body["degraded"]),
        request_id=body["request_id"],
        trace_id=body["trace_id"],
        replayed=True,
    )
