"""The plain values of a turn, passed between its parts. No gRPC, no I/O.

Messages here are neutral: the LLM adapter (`llm.py`) alone turns them into a provider's wire
format and back.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from services.common.emotions import EMOTION_LABELS

_EMOTION_LABELS: Final = frozenset(EMOTION_LABELS)


class ToolStatus(enum.IntEnum):
    """How one tool call ended; numbers match the proto enum chatagent.v1.ToolCallStatus."""

    OK = 1
    INVALID_ARGUMENT = 2
    FALLBACK = 3
    CIRCUIT_OPEN = 4
    DEDUPLICATED = 5
    REJECTED = 6


@dataclass(frozen=True, slots=True)
class ToolCallRequest:
    """A tool call asked for by the LLM (or the local planner)."""

    id: str
    name: str  # as the LLM wrote it: one of the ToolSpec names, or anything at all
    arguments: str  # a JSON object, as the LLM wrote it (it may be malformed)


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """What a tool call gave: the result the LLM sees next, and how it went."""

    call: ToolCallRequest
    status: ToolStatus
    result: dict[str, Any]  # the tool's answer, or {"error": "..."} / a fallback
    duration_seconds: float


# -- neutral LLM messages ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SystemMessage:
    text: str


@dataclass(frozen=True, slots=True)
class UserMessage:
    text: str


@dataclass(frozen=True, slots=True)
class AssistantMessage:
    text: str
    tool_calls: tuple[ToolCallRequest, ...] = ()


@dataclass(frozen=True, slots=True)
class ToolResultMessage:
    call_id: str
    result: Mapping[str, Any]


Message = SystemMessage | UserMessage | AssistantMessage | ToolResultMessage


# -- history, emotion, usage ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HistoryTurn:
    """One finished exchange kept in the user's history."""

    user: str
    assistant: str
    language: str
    at: float  # Unix time the turn finished
    request_id: str = ""
    position: int = 0  # in its conversation, from 1 (0: stored before positions were kept)
    tool_results: int = 0  # tool results the reply used


@dataclass(frozen=True, slots=True)
class Preferences:
    """What the orchestrator remembers of a user between turns, besides the history."""

    timezone: str = ""  # the last zone the caller sent
    place: str = ""  # the last place a weather or time lookup found for the user


@dataclass(frozen=True, slots=True)
class Emotion:
    scores: dict[str, float]
    dominant: str

    @staticmethod
    def neutral() -> Emotion:
        return Emotion(scores={"neutral": 1.0}, dominant="neutral")

    @staticmethod
    def from_scores(raw: Mapping[str, float]) -> Emotion | None:
        """An emotion from scores a dependency sent, or None when nothing usable remains.

        Only known labels with finite scores in [0, 1] are kept; they are scaled to sum to 1
        and the dominant label is the highest score (never the dependency's say-so).
        """
        kept = {
            label: float(score)
            for label, score in raw.items()
            if label in _EMOTION_LABELS
            and isinstance(score, int | float)
            and math.isfinite(score)
            and 0.0 <= score <= 1.0
        }
        total = sum(kept.values())
        if not kept or total <= 0:
            return None
        scores = {label: score / total for label, score in kept.items() if score > 0}
        dominant = max(scores, key=lambda label: (scores[label], -EMOTION_LABELS.index(label)))
        return Emotion(scores=scores, dominant=dominant)


@dataclass(frozen=True, slots=True)
class UsageTotals:
    turns: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tts_characters: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class UsageReport:
    user_today: UsageTotals = field(default_factory=UsageTotals)
    user_month: UsageTotals = field(default_factory=UsageTotals)
    global_today: UsageTotals = field(default_factory=UsageTotals)
    global_month: UsageTotals = field(default_factory=UsageTotals)


# -- a turn, as the servicer sees it -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TurnRequest:
    user_id: str
    message: str
    language: str = ""
    timezone: str = ""
    include_audio: bool = False
    request_id: str = ""
    caller: str = ""  # who is calling (a named token or a certificate subject); "" = anonymous


@dataclass(frozen=True, slots=True)
class TurnUsage:
    """What a turn used, as its answer reports it."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    tts_characters: int = 0
    cost_usd: float = 0.0
    model: str = ""


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
