"""One user turn, end to end: the loop. Replay, limits, the user's lock and history, emotion
beside the first LLM call, LLM rounds with concurrent tools, the persona guard, cost, speech,
and the commit.

Plain asyncio; no gRPC. The parts it drives live in their own modules (the LLM's wire format in
`llm`, tools in `toolspec` and `clients`, the prompt and the guard in `persona`, money in
`usage`, state in `sessions`); the servicer turns the exceptions below into status codes.

What a turn promises whatever happens to it:
* every LLM call's cost is counted the moment the provider answers (settled by the bookkeeper,
  which outlives a cancelled turn), and no call is made whose worst case does not fit the budgets;
* nothing of the turn is stored unless it finished and still holds the newest lease on the
  user (an erase or a newer turn meanwhile: nothing is stored, TurnAborted);
* a cancel or the deadline stops the LLM, the tools and the speech;
* a store that fails ends the turn with StoreUnavailable, never with the store's own error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Final

from redis.exceptions import RedisError

from services.common.breakers import Breaker, CircuitOpen
from services.common.deadline import Deadline
from services.common.gazetteer import Gazetteer, zone_city
from services.common.language import Language, base_language, detect_language
from services.common.status import Metadata, retry_metadata
from services.common.text import without_controls
from services.common.timezones import resolve_zone
from services.common.tracing import current_trace_id
from services.common.validation import InvalidArgument
from services.orchestrator import insights, metrics, persona, planner
from services.orchestrator.clients import (
    EmotionClient,
    SpeechClient,
    ToolRunner,
)
from services.orchestrator.codec import decode_answer, encode_answer, fingerprint
from services.orchestrator.config import OrchestratorSettings
from services.orchestrator.limits import RateLimiter
from services.orchestrator.llm import (
    Llm,
    LlmError,
    LlmRejected,
    LlmReply,
    LlmRequest,
    LlmTimeout,
    LlmUnavailable,
    estimate_prompt_tokens,
    estimate_text_tokens,
)
from services.orchestrator.model import (
    AssistantMessage,
    Emit,
    Emotion,
    HistoryTurn,
    Message,
    Preferences,
    SystemMessage,
    ToolCallRequest,
    ToolFinished,
    ToolOutcome,
    ToolResultMessage,
    ToolStarted,
    ToolStatus,
    TurnEvent,
    TurnRequest,
    TurnResult,
    TurnUsage,
    UsageReport,
    UserMessage,
)
from services.orchestrator.sessions import Lease, LeaseLost, LockTimeout, SessionStore
from services.orchestrator.toolspec import (
    MAX_ARGUMENT_BYTES,
    ToolContext,
    spec_for_intent,
    tool_specs,
)
from services.orchestrator.usage import (
    Account,
    Bookkeeper,
    BudgetSpent,
    Ledger,
    Prices,
    Reservation,
    Usage,
)
from services.orchestrator.validation import check_turn
from services.orchestrator.voice import Speaker, StreamRefused, Voice

logger = logging.getLogger(__name__)

LOCAL_MODEL: Final = "local-planner"
ANONYMOUS: Final = "anonymous"
# What is kept back from an LLM call's budget so a failed call still leaves time to answer
# with the local planner: at most this, and at most this share of what is left.
_FALLBACK_RESERVE_SECONDS: Final = 1.5
_FALLBACK_RESERVE_SHARE: Final = 0.4
# Committing the turn (history, answer, usage) needs a moment; without it, give up instead.
_COMMIT_RESERVE_SECONDS: Final = 0.05
# How long a commit waits for the turn's spend to be on the books first.
_SETTLE_WAIT_SECONDS: Final = 0.5
# How long a cancelled turn waits for its commit to end before letting go of the user's lock.
_COMMIT_GRACE_SECONDS: Final = 0.2
# The user's lock outlives the turn's deadline by this much, for the commit that may run past
# it; a holder that dies frees the user this long after its turn would have ended anyway.
_LOCK_GRACE_SECONDS: Final = 5.0
# A hold on the budgets outlives its call by this much (the settle is a round trip after it).
_HOLD_GRACE_SECONDS: Final = 60.0
# OpenAI's limit on a function name; longer names are no tool of ours.
_MAX_ECHOED_NAME: Final = 64


# -- how a turn can end other than with an answer -------------------------------------------


class RateLimited(Exception):
    def __init__(self, retry_after_seconds: float, scope: str) -> None:
        super().__init__(
            f"{scope} rate limit reached; retry after {retry_after_seconds:.2f} seconds"
        )
        self.retry_after_seconds = retry_after_seconds
        self.scope = scope

    def trailing_metadata(self) -> Metadata:
        return retry_metadata(self.retry_after_seconds, str(self))


class TurnTimeout(Exception):
    """The turn could not finish before the caller's deadline; nothing of it was stored."""


class TurnAborted(Exception):
    """The turn finished but was not stored: its user was erased or a newer turn took over."""


class StoreUnavailable(Exception):
    """The shared store (Redis) did not answer; the message says whether the turn was stored
    (nothing was, unless the store failed while the turn was being committed: then it cannot
    be known, and the same request id asks again)."""


class RequestIdReused(InvalidArgument):
    """A request id already answered was sent with a different message."""

    def __init__(self) -> None:
        super().__init__(
            "request_id",
            "was already used for a different message; use a new request id for a new message",
        )


@contextlib.contextmanager
def _store_errors(what: str) -> Any:
    try:
        yield
    except RedisError as exc:
        logger.warning("store unavailable", extra={"during": what, "error": type(exc).__name__})
        raise StoreUnavailable(
            f"the session store is unavailable, so the {what} could not be done; nothing was "
            "stored; try again shortly"
        ) from None


async def _ignore(_event: TurnEvent) -> None:
    return None


# -- the state of one turn ------------------------------------------------------------------


@dataclass
class _Turn:
    request: TurnRequest
    account: Account
    lease: Lease
    language: Language
    timezone: str
    place: str  # the weather's place when the user names none
    deadline: Deadline
    emit: Emit
    history: list[HistoryTurn]
    places: Gazetteer | None
    outcomes: list[ToolOutcome] = field(default_factory=list)
    seen: dict[str, ToolOutcome] = field(default_factory=dict)
    tool_calls_run: int = 0
    usage: Usage = field(default_factory=Usage)
    model: str = LOCAL_MODEL
    degraded: list[str] = field(default_factory=list)
    settlements: list[asyncio.Task[None]] = field(default_factory=list)
    voice: Voice | None = None  # what the caller hears while the reply is written
    tts_characters: int = 0
    progress: insights.Progress = insights.FIRST_TURN

    @property
    def tool_results(self) -> int:
        """Tool results the reply could use (not failures, fallbacks or refusals)."""
        return sum(1 for outcome in self.outcomes if outcome.status == ToolStatus.OK)

    def degrade(self, part: str) -> None:
        if part not in self.degraded:
            self.degraded.append(part)
            metrics.FALLBACKS.labels(part).inc()

    @cached_property
    def analysis(self) -> planner.Analysis:
        """The planner's reading of the message, made once and only when needed."""
        return planner.analyse(self.request.message, self.places)

    @property
    def context(self) -> ToolContext:
        return ToolContext(
            user_id=self.request.user_id,
            language=self.language,
            timezone=self.timezone,
            place=self.place,
        )


@dataclass(frozen=True, slots=True)
class AgentParts:
    sessions: SessionStore
    limiter: RateLimiter
    ledger: Ledger
    tools: ToolRunner
    emotion: EmotionClient
    speech: SpeechClient
    llm: Llm | None
    llm_breaker: Breaker
    places: Gazetteer | None = None
    wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC)


class Agent:
    def __init__(self, settings: OrchestratorSettings, parts: AgentParts) -> None:
        self._settings = settings
        self._parts = parts
        self._persona = settings.persona()
        self._prices = Prices(
            settings.llm_prices,
            fallback_model=settings.llm_model,
            speech_usd_per_million_chars=settings.tts_usd_per_million_chars,
        )
        self._bookkeeper = Bookkeeper(parts.ledger)
        self._specs = tool_specs()
        self._by_intent = spec_for_intent()
        self._background: set[asyncio.Task[Any]] = set()

    @property
    def bookkeeper(self) -> Bookkeeper:
        return self._bookkeeper

    @property
    def parts(self) -> AgentParts:
        return self._parts

    async def aclose(self) -> None:
        """Let what is still being recorded or committed finish (briefly)."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=5.0)
        await self._bookkeeper.aclose()

    # -- the RPCs ---------------------------------------------------------------------------

    async def turn(
        self, request: TurnRequest, *, deadline: Deadline, emit: Emit | None = None
    ) -> TurnResult:
        """Answer one message by `deadline`.

        Raises InvalidArgument, RateLimited, TurnTimeout, TurnAborted or StoreUnavailable; every
        other failure of a part degrades the answer instead.
        """
        message = check_turn(
            user_id=request.user_id,
            message=request.message,
            language=request.language,
            timezone=request.timezone,
            request_id=request.request_id,
            max_message_chars=self._settings.max_message_chars,
        )
        features = insights.message_features(request.message)
        request = replace(request, message=message, caller=request.caller or ANONYMOUS)
        mark = fingerprint(request)
        sessions = self._parts.sessions
        with _store_errors("turn"):
            try:
                async with deadline.timeout():
                    arrival = await sessions.arrive(request.user_id, request.request_id)
                    # A retry of an answered request is answered before any limit: it is free.
                    replayed = self._replay(arrival.answer, mark)
                    if replayed is not None:
                        return replayed
                    decision = await self._parts.limiter.check(request.user_id, request.caller)
                    if not decision.allowed:
                        metrics.RATE_LIMITED.labels(decision.scope).inc()
                        raise RateLimited(decision.retry_after_seconds, decision.scope)
                    async with sessions.lock(
                        request.user_id,
                        wait_seconds=max(0.0, deadline.remaining()),
                        ttl_seconds=max(0.0, deadline.remaining()) + _LOCK_GRACE_SECONDS,
                    ) as lease:
                        if lease.erasures != arrival.erasures:
                            # Erased while this turn waited for the lock: it began before the
                            # erase, so nothing of it may be stored after it.
                            metrics.TURNS.labels("aborted").inc()
                            raise TurnAborted(
                                "the user's data was erased while the turn waited; nothing of "
                                "this turn was stored"
                            )
                        if request.request_id:
                            # The same request may have finished while this one waited.
                            stored = await sessions.cached_answer(
                                request.user_id, request.request_id
                            )
                            replayed = self._replay(stored, mark)
                            if replayed is not None:
                                return replayed
                        return await self._locked_turn(
                            request, mark, lease, deadline, emit, features
                        )
            except (TimeoutError, LockTimeout) as exc:
                metrics.TURNS.labels("deadline_exceeded").inc()
                raise TurnTimeout("the turn could not finish before the deadline") from exc

    async def usage(self, user_id: str) -> UsageReport:
        with _store_errors("usage report"):
            return await self._parts.ledger.report(user_id, self._parts.wall_clock())

    async def erase(self, user_id: str) -> int:
        parts = self._parts
        with _store_errors("erase"):
            # The session store first: it fences off the user's running turn and moves the
            # user's epoch, so nothing that turn still settles or commits lands after this.
            erased = await parts.sessions.erase(user_id)
            others = await asyncio.gather(parts.limiter.erase(user_id), parts.ledger.erase(user_id))
        return erased + sum(others)

    def _replay(self, stored: bytes | None, mark: str) -> TurnResult | None:
        if stored is None:
            return None
        try:
            stored_mark, result = decode_answer(stored)
        except ValueError:
            logger.warning("a stored answer could not be read; the turn runs again")
            return None
        if stored_mark != mark:
            raise RequestIdReused()
        metrics.TURNS.labels("replayed").inc()
        return result

    # -- inside the user's lock -------------------------------------------------------------

    async def _locked_turn(
        self,
        request: TurnRequest,
        mark: str,
        lease: Lease,
        deadline: Deadline,
        emit: Emit | None,
        features: frozenset[str] = frozenset(),
    ) -> TurnResult:
        settings = self._settings
        session = await self._parts.sessions.load(request.user_id)
        language = (
            base_language(request.language, settings.default_language)
            if request.language
            else detect_language(request.message, default=settings.default_language)
        )
        timezone = request.timezone or session.preferences.timezone or settings.default_timezone
        turn = _Turn(
            request=request,
            account=Account(request.user_id, request.caller),
            lease=lease,
            language=language,
            timezone=timezone,
            place=self._home_place(session.preferences, timezone),
            deadline=deadline,
            emit=emit or _ignore,
            history=session.history,
            places=self._parts.places,
            progress=insights.progress_of(session.history, self._parts.wall_clock().timestamp()),
        )
        speech_hold = await self._hold_speech(turn) if request.include_audio else None
        if emit is not None or request.include_audio:
            # Someone listens as the reply is written: it is said while the LLM writes it.
            turn.voice = self._voice(turn, speak=request.include_audio and speech_hold is not False)
        emotion_task = asyncio.create_task(
            self._parts.emotion.analyze(request.message, language, deadline=deadline)
        )
        spoken = 0
        try:
            reply = await self._answer(turn, emotion_task)
            emotion = await self._emotion(turn, emotion_task)
            audio = b""
            if turn.voice is not None and turn.voice.speaker is not None:
                audio = await turn.voice.speaker.finish()
                spoken = turn.voice.speaker.characters
                turn.tts_characters = spoken if audio else 0
        finally:
            emotion_task.cancel()
            if turn.voice is not None and turn.voice.speaker is not None:
                turn.voice.speaker.cancel()
                spoken = spoken or turn.voice.speaker.characters
            if isinstance(speech_hold, Reservation):
                # What was synthesized is paid for, whatever becomes of the turn.
                cost = self._prices.speech_cost_nanos(spoken)
                self._settle(turn, speech_hold, Usage(cost_nanos=cost), what="tts")
        result = TurnResult(
            reply=reply,
            language=language,
            emotion=emotion,
            tool_outcomes=tuple(turn.outcomes),
            usage=TurnUsage(
                prompt_tokens=turn.usage.prompt_tokens,
                completion_tokens=turn.usage.completion_tokens,
                tts_characters=turn.tts_characters,
                cost_usd=turn.usage.cost_usd,
                model=turn.model,
            ),
            degraded=tuple(turn.degraded),
            request_id=request.request_id,
            trace_id=current_trace_id(),
            audio=audio,
        )
        if deadline.remaining() < _COMMIT_RESERVE_SECONDS:
            raise TimeoutError
        # Once begun, the commit finishes even if the deadline strikes meanwhile: a retry with
        # the same request id then gets this answer instead of a second, different turn.
        await self._finish_anyway(self._commit(turn, lease, result, mark))
        metrics.TURNS.labels("degraded" if turn.degraded else "ok").inc()
        insights.record_answered(
            turn.progress,
            language=language,
            features=features,
            cost_usd=result.usage.cost_usd,
            tool_results=turn.tool_results,
        )
        return result

    def _home_place(self, preferences: Preferences, timezone: str) -> str:
        """Where the weather is for a user who names no place: the place they last asked
        about, else their time zone's city, else the configured default."""
        if preferences.place:
            return preferences.place
        places = self._parts.places
        city = zone_city(timezone, places) if places is not None else ""
        return city or self._settings.default_place

    async def _finish_anyway(self, work: Awaitable[None]) -> None:
        """Run `work` to its end even if the turn is cancelled meanwhile (the cancel then goes
        on once it is done): a commit begun is finished while its turn still holds the user's
        lock, so a retry waits for it and finds its answer instead of running again."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._done)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            # A commit takes a few milliseconds; one stuck on a store that does not answer is
            # left to finish (or fail) on its own, so the cancel is not held up for long.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                async with asyncio.timeout(_COMMIT_GRACE_SECONDS):
                    await asyncio.shield(task)
            raise

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            # Retrieved here for a turn that stopped waiting (cancelled): its outcome is moot.
            task.exception()

    async def _commit(self, turn: _Turn, lease: Lease, result: TurnResult, mark: str) -> None:
        request = turn.request
        if turn.settlements:
            # What the turn spent is on the books before the turn is, so GetUsage agrees; but a
            # store that is away must fail the commit quickly, not hold it while the bookkeeper
            # retries (the spend is recorded when the store is back either way).
            await asyncio.wait(turn.settlements, timeout=_SETTLE_WAIT_SECONDS)
        try:
            await self._parts.sessions.commit_turn(
                lease,
                HistoryTurn(
                    user=request.message,
                    assistant=result.reply,
                    language=result.language,
                    at=self._parts.wall_clock().timestamp(),
                    request_id=request.request_id,
                    position=turn.progress.position,
                    tool_results=turn.tool_results,
                ),
                answer=encode_answer(result, mark),
                preferences=Preferences(timezone=request.timezone, place=self._asked_place(turn)),
            )
        except LeaseLost as exc:
            metrics.TURNS.labels("aborted").inc()
            raise TurnAborted(f"{exc}; nothing of this turn was stored") from None
        except RedisError as exc:
            # Sent, and no answer: Redis may still run the commit (a paused server runs what
            # is in its socket when it wakes), so "nothing was stored" could be false.
            logger.warning("commit unconfirmed", extra={"error": type(exc).__name__})
            raise StoreUnavailable(
                "the session store did not confirm that the turn was stored; send it again "
                "with the same request_id to get its answer if it was"
            ) from None
        try:
            await self._parts.ledger.count_turn(
                turn.account,
                tts_characters=result.usage.tts_characters,
                epoch=lease.erasures,
                now=self._parts.wall_clock(),
            )
        except RedisError as exc:
            # The turn is stored and answered; only its count in the usage report is missing.
            metrics.UNSETTLED.labels("turn_count").inc()
            logger.warning("turn not counted", extra={"error": type(exc).__name__})

    def _asked_place(self, turn: _Turn) -> str:
        """The place the user's weather question was answered for, to default to next time."""
        weather = self._by_intent.get(planner.Intent.WEATHER)
        for outcome in reversed(turn.outcomes):
            if weather and outcome.call.name == weather.name and outcome.status == ToolStatus.OK:
                place = outcome.result.get("place")
                if isinstance(place, str) and 0 < len(place) <= 100:
                    return place
        return ""

    # -- composing the reply ----------------------------------------------------------------

    async def _answer(self, turn: _Turn, emotion_task: asyncio.Task[Emotion | None]) -> str:
        llm = self._parts.llm
        voice = turn.voice
        if llm is not None:
            try:
                return await self._llm_answer(turn, llm, emotion_task)
            except BudgetSpent as exc:
                metrics.BUDGET_EXHAUSTED.labels(exc.scope).inc()
                turn.degrade("budget")
            except CircuitOpen:
                turn.degrade("llm")  # the breaker logged its opening once; nothing per turn
            except LlmError as exc:
                logger.info("LLM failed; the local planner answers", extra={"error": str(exc)})
                turn.degrade("llm")
            if voice is not None and voice.started:
                # Part of the reply was said already: it is finished, not contradicted.
                await voice.close()
                return voice.text
        return await self._said(turn, await self._planner_answer(turn, emotion_task))

    async def _said(self, turn: _Turn, reply: str) -> str:
        """A reply written whole (the planner's, a repair, a refusal), said to whoever listens;
        what was said is the reply."""
        voice = turn.voice
        if voice is None:
            return reply
        await voice.say_all(reply)
        await voice.close()
        return voice.text

    async def _planner_answer(self, turn: _Turn, emotion_task: asyncio.Task[Emotion | None]) -> str:
        calls = [
            ToolCallRequest(
                id=f"local-{index}",
                name=self._by_intent[planned.intent].name,
                arguments=_json(planned.arguments),
            )
            for index, planned in enumerate(
                planner.plan(turn.analysis, default_place=turn.place), start=1
            )
            if planned.intent in self._by_intent
        ]
        # Tool calls the LLM already made this turn are not repeated (turn.seen answers them).
        if calls:
            await self._run_tools(turn, calls)
        return await self._compose(turn, emotion_task)

    async def _compose(self, turn: _Turn, emotion_task: asyncio.Task[Emotion | None]) -> str:
        emotion = await self._emotion(turn, emotion_task)
        results = [
            (self._specs[o.call.name].intent, o)
            for o in turn.outcomes
            if o.call.name in self._specs
        ]
        reply = planner.compose(
            turn.analysis,
            turn.language,
            results,
            emotion=emotion,
            ending=self._persona.ending(turn.language),
        )
        if persona.check(reply, turn.language, self._persona):
            metrics.PERSONA.labels("repaired").inc()
            return persona.repair(reply, turn.language, self._persona, fallback=reply)
        return reply

    async def _llm_answer(
        self, turn: _Turn, llm: Llm, emotion_task: asyncio.Task[Emotion | None]
    ) -> str:
        prompt = self._system_prompt(turn)
        messages: list[Message] = [SystemMessage(prompt)]
        for past in turn.history:
            messages += [UserMessage(past.user), AssistantMessage(past.assistant)]
        messages.append(UserMessage(turn.request.message))
        specs = tuple(self._specs.values())
        rounds = self._settings.max_tool_rounds
        voice = turn.voice
        reply: LlmReply | None = None
        for round_number in range(rounds + 1):
            offer = specs if round_number < rounds else ()
            if voice is not None:
                voice.listen(prompt)
            reply = await self._complete(turn, llm, messages, offer)
            if reply.stopped or not reply.tool_calls or not offer:
                # Done, stopped by the persona, or asking for tools it was not offered.
                break
            if voice is not None and await _ended(voice, reply):
                break  # what it said before its tool calls broke the persona
            outcomes = await self._run_tools(turn, reply.tool_calls)
            messages.append(AssistantMessage(reply.content, tuple(map(_echo, reply.tool_calls))))
            messages.extend(ToolResultMessage(o.call.id, o.result) for o in outcomes)
            if round_number == 0 and emotion_task.done() and not emotion_task.cancelled():
                emotion = emotion_task.result()
                if emotion is not None and emotion.dominant != "neutral":
                    messages.append(SystemMessage(persona.emotion_hint(emotion.dominant)))
        assert reply is not None
        if voice is not None:
            return await self._spoken(turn, llm, messages, prompt, reply, emotion_task)
        text = reply.content.strip()
        if reply.tool_calls and not text:
            # Still asking for tools after the last round: answer from what the tools said.
            return await self._compose(turn, emotion_task)
        return await self._guard(turn, llm, messages, prompt, text, emotion_task)

    async def _spoken(
        self,
        turn: _Turn,
        llm: Llm,
        messages: list[Message],
        prompt: str,
        reply: LlmReply,
        emotion_task: asyncio.Task[Emotion | None],
    ) -> str:
        """The end of a reply said as it was written (see voice.py): the persona was held
        sentence by sentence; a first sentence in the wrong language gets one corrective retry,
        streamed too, before anything is said; what cannot be said is answered by the planner."""
        voice = turn.voice
        assert voice is not None
        problem = await _ended(voice, reply)
        if problem == "wrong_language":
            config = self._persona
            retry = [
                *messages,
                AssistantMessage(reply.content),
                SystemMessage(
                    persona.corrective_instruction(
                        [persona.Problem.WRONG_LANGUAGE], turn.language, config
                    )
                ),
            ]
            voice.listen(prompt)
            try:
                problem = await _ended(voice, await self._complete(turn, llm, retry, ()))
            except (LlmError, CircuitOpen, BudgetSpent):
                problem = "failed"
            if voice.started:
                metrics.PERSONA.labels("retried").inc()
        if not voice.started:
            if problem == "echo":
                metrics.PERSONA.labels("refused").inc()
                return await self._said(turn, persona.refusal(turn.language, self._persona))
            # Nothing could be said (a wrong language twice, no text, only tool calls).
            metrics.PERSONA.labels("repaired").inc()
            return await self._said(turn, await self._compose(turn, emotion_task))
        metrics.PERSONA.labels("refused" if problem == "echo" else "ok").inc()
        await voice.close()
        return voice.text

    async def _guard(
        self,
        turn: _Turn,
        llm: Llm,
        messages: list[Message],
        prompt: str,
        text: str,
        emotion_task: asyncio.Task[Emotion | None],
    ) -> str:
        config = self._persona
        if persona.reproduces_prompt(text, prompt):
            metrics.PERSONA.labels("refused").inc()
            return persona.refusal(turn.language, config)
        problems = persona.check(text, turn.language, config)
        if not problems:
            metrics.PERSONA.labels("ok").inc()
            return text
        retry = [
            *messages,
            AssistantMessage(text),
            SystemMessage(persona.corrective_instruction(problems, turn.language, config)),
        ]
        try:
            retried = (await self._complete(turn, llm, retry, ())).content.strip()
        except (LlmError, CircuitOpen, BudgetSpent):
            retried = text
        if persona.reproduces_prompt(retried, prompt):
            metrics.PERSONA.labels("refused").inc()
            return persona.refusal(turn.language, config)
        if not persona.check(retried, turn.language, config):
            metrics.PERSONA.labels("retried").inc()
            return retried
        metrics.PERSONA.labels("repaired").inc()
        fallback = await self._compose(turn, emotion_task)
        return persona.repair(retried, turn.language, config, fallback=fallback)

    async def _complete(
        self,
        turn: _Turn,
        llm: Llm,
        messages: Sequence[Message],
        tools: Sequence[Any],
    ) -> LlmReply:
        """One LLM call: its worst case held against the budgets first, its cost counted the
        moment it answers."""
        budget = turn.deadline.budget(
            self._settings.llm_timeout_seconds, reserve=self._reserve(turn)
        )
        if not budget.usable:
            raise LlmTimeout("no time left for the LLM")
        request = LlmRequest(tuple(messages), tuple(tools), self._settings.max_tokens)
        model = self._settings.llm_model
        estimate = estimate_prompt_tokens(request)
        worst = self._prices.cost_nanos(model, estimate, request.max_tokens)
        reservation = await self._parts.ledger.reserve(
            turn.account,
            worst,
            epoch=turn.lease.erasures,
            hold_seconds=budget.seconds + _HOLD_GRACE_SECONDS,
            now=self._parts.wall_clock(),
        )
        voice = turn.voice
        try:
            with self._parts.llm_breaker.calling(budget):
                if voice is None:
                    reply = await llm.complete(request, timeout_seconds=budget.seconds)
                else:
                    reply = await llm.stream(
                        request, timeout_seconds=budget.seconds, on_text=voice.hear
                    )
        except (asyncio.CancelledError, LlmTimeout) as exc:
            metrics.LLM_CALLS.labels(_llm_outcome(exc)).inc()
            # Sent and abandoned: the provider may well bill the prompt; so do we.
            abandoned = Usage(cost_nanos=self._prices.cost_nanos(model, estimate, 0))
            self._settle(turn, reservation, abandoned)
            raise
        except BaseException as exc:
            metrics.LLM_CALLS.labels(_llm_outcome(exc)).inc()
            self._bookkeeper.release(reservation)
            raise
        # Before anything else can be awaited (and cancelled): the money is counted now.
        usage = self._usage_of(reply, estimate)
        turn.model = reply.model
        self._settle(turn, reservation, usage)
        metrics.LLM_CALLS.labels(
            "truncated" if reply.truncated else "stopped" if reply.stopped else "ok"
        ).inc()
        if reply.truncated:
            metrics.TRUNCATED.inc()
        # Labelled by the configured model, never by the name the provider sends back: that
        # would let the provider grow the series without bound.
        metrics.TOKENS.labels(model, "prompt").inc(reply.prompt_tokens)
        metrics.TOKENS.labels(model, "completion").inc(reply.completion_tokens)
        # Untrusted text: no terminal escapes or display tricks reach the caller (a stream's
        # pieces are cleaned as they are heard).
        return replace(reply, content=without_controls(reply.content))

    def _usage_of(self, reply: LlmReply, prompt_estimate: int) -> Usage:
        if reply.usage_reported:
            return self._prices.usage(reply.model, reply.prompt_tokens, reply.completion_tokens)
        # A stream stopped early (or a provider that says nothing of tokens): what it must have
        # cost at most, the prompt's estimate and the text it wrote.
        completion = estimate_text_tokens(reply.content) + sum(
            estimate_text_tokens(call.arguments) for call in reply.tool_calls
        )
        return self._prices.usage(self._settings.llm_model, prompt_estimate, completion)

    async def _hold_speech(self, turn: _Turn) -> Reservation | bool:
        """The budgets' hold for the speech of the longest reply, when speech costs anything:
        the reservation, True when speech is free, False when a budget has no room for it."""
        worst = self._prices.speech_cost_nanos(self._persona.max_reply_chars)
        if not worst:
            return True
        try:
            return await self._parts.ledger.reserve(
                turn.account,
                worst,
                epoch=turn.lease.erasures,
                hold_seconds=max(0.0, turn.deadline.remaining()) + _HOLD_GRACE_SECONDS,
                now=self._parts.wall_clock(),
            )
        except BudgetSpent as exc:
            metrics.BUDGET_EXHAUSTED.labels(exc.scope).inc()
            turn.degrade("budget")
            return False

    def _voice(self, turn: _Turn, *, speak: bool) -> Voice:
        speaker = None
        if speak:
            speaker = Speaker(
                self._parts.speech,
                turn.language,
                deadline=turn.deadline,
                reserve=_COMMIT_RESERVE_SECONDS,
                emit=turn.emit,
                on_failure=lambda: turn.degrade("speech"),
            )
        return Voice(turn.language, self._persona, emit=turn.emit, speaker=speaker)

    def _settle(
        self, turn: _Turn, reservation: Reservation, usage: Usage, *, what: str = ""
    ) -> None:
        turn.settlements.append(self._bookkeeper.settle(reservation, usage))
        turn.usage = turn.usage + usage
        metrics.COST.labels(what or self._settings.llm_model).inc(usage.cost_usd)

    @staticmethod
    def _reserve(turn: _Turn) -> float:
        """Time kept back from an LLM or tool call for what must follow it: the local planner's
        answer and the commit, when the call fails or hangs."""
        remaining = turn.deadline.remaining()
        return min(_FALLBACK_RESERVE_SECONDS, max(0.0, remaining) * _FALLBACK_RESERVE_SHARE)

    async def _run_tools(self, turn: _Turn, calls: Sequence[ToolCallRequest]) -> list[ToolOutcome]:
        for call in calls:
            await turn.emit(ToolStarted(call))

        async def finished(outcome: ToolOutcome) -> None:
            await turn.emit(ToolFinished(outcome))

        allowed = min(
            self._settings.max_tool_calls_per_round,
            self._settings.max_tool_calls_per_turn - turn.tool_calls_run,
        )
        outcomes = await self._parts.tools.run(
            calls,
            turn.context,
            deadline=turn.deadline,
            reserve=self._reserve(turn),
            seen=turn.seen,
            allowed=max(0, allowed),
            on_finish=finished,
        )
        for outcome in outcomes:
            if outcome.status in (ToolStatus.FALLBACK, ToolStatus.CIRCUIT_OPEN):
                turn.degrade("tools")
            if outcome.status not in (ToolStatus.DEDUPLICATED, ToolStatus.REJECTED):
                turn.tool_calls_run += 1
            turn.outcomes.append(outcome)
        return outcomes

    async def _emotion(self, turn: _Turn, emotion_task: asyncio.Task[Emotion | None]) -> Emotion:
        # Waited for at most until the commit's reserve: a hung emotion service costs the turn
        # its emotion, never its answer.
        wait = turn.deadline.budget(reserve=_COMMIT_RESERVE_SECONDS).seconds
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for returns the result of a
            # task that is already done even when the turn is being cancelled, and the cancel
            # is lost.
            async with asyncio.timeout(max(0.0, wait)):
                emotion = await asyncio.shield(emotion_task)
        except TimeoutError:
            emotion = None
        if emotion is None:
            turn.degrade("emotion")
            return Emotion.neutral()
        return emotion

    def _system_prompt(self, turn: _Turn) -> str:
        now = datetime.now(resolve_zone(turn.timezone)).strftime("%Y-%m-%d %H:%M %Z")
        return persona.system_prompt(
            turn.language, self._persona, timezone=turn.timezone, local_time=now
        )


# -- helpers ---------------------------------------------------------------------------------


async def _ended(voice: Voice, reply: LlmReply) -> str:
    """The end of a streamed reply said: the problem that stopped it, or ""."""
    if reply.stopped:
        return voice.refusal
    try:
        await voice.end()
    except StreamRefused as refused:
        return refused.problem
    return ""


def _llm_outcome(error: BaseException) -> str:
    """The `chatagent_llm_calls_total` outcome of an LLM call that raised `error`."""
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    for kind, outcome in (
        (LlmTimeout, "timeout"),
        (CircuitOpen, "circuit_open"),
        (LlmRejected, "rejected"),
        (LlmUnavailable, "unavailable"),
    ):
        if isinstance(error, kind):
            return outcome
    return "error"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _echo(call: ToolCallRequest) -> ToolCallRequest:
    """The call as the next prompt repeats it: what no tool could take is not paid for twice."""
    if len(call.arguments) <= MAX_ARGUMENT_BYTES and len(call.name) <= _MAX_ECHOED_NAME:
        return call
    return ToolCallRequest(call.id, call.name[:_MAX_ECHOED_NAME], "{}")
