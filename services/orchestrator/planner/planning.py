"""The tool calls an analysed message asks for."""

from __future__ import annotations

from dataclasses import dataclass

from services.orchestrator.planner.analysis import Analysis
from services.orchestrator.planner.intents import Intent
from services.orchestrator.planner.places import MAX_PLACE_CHARS


@dataclass(frozen=True, slots=True)
class PlannedCall:
    """One tool call, by the intent it answers; which tool that is, the caller knows."""

    intent: Intent
    arguments: dict[str, str]


def plan(analysis: Analysis, *, default_place: str = "") -> list[PlannedCall]:
    """The calls for the analysis's tool intents, in the order the message asks.

    TIME {"place": ...} or {} (the user's own zone); WEATHER {"place": ...}, the message's place
    or else `default_place`, and no call at all without either (the reply asks which place);
    FORTUNE {}; CALCULATION {"expression": ...} once per expression found (none when the message
    only says "calculate").
    """
    calls: list[PlannedCall] = []
    for intent in analysis.intents:
        if intent is Intent.TIME:
            place = analysis.place(Intent.TIME)
            calls.append(PlannedCall(intent, {"place": place} if place else {}))
        elif intent is Intent.WEATHER:
            place = analysis.place(Intent.WEATHER) or default_place.strip()
            if place:
                calls.append(PlannedCall(intent, {"place": place[:MAX_PLACE_CHARS]}))
        elif intent is Intent.FORTUNE:
            calls.append(PlannedCall(intent, {}))
        elif intent is Intent.CALCULATION:
            calls.extend(PlannedCall(intent, {"expression": e}) for e in analysis.expressions)
    return calls
