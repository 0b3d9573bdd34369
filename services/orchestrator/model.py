"""Plain data passed between the parts of a turn. No gRPC, no I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


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
    name: str  # "get_time", "get_weather", "get_fortune" or "calculate"
    arguments: str  # a JSON object, as the LLM wrote it (it may be malformed)


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """What a tool call gave: the result the LLM sees next, and how it went."""

    call: ToolCallRequest
    status: ToolStatus
    result: dict[str, Any]  # the tool's answer, or {"error": "..."} / a fallback
    duration_seconds: float


@dataclass(frozen=True, slots=True)
class HistoryTurn:
    """One finished exchange kept in the user's history."""

    user: str
    assistant: str
    language: str
    at: float  # Unix time the turn finished
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class Emotion:
    scores: dict[str, float]
    dominant: str

    @staticmethod
    def neutral() -> Emotion:
        return Emotion(scores={"neutral": 1.0}, dominant="neutral")


@dataclass(frozen=True, slots=True)
class TokenUsage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


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
