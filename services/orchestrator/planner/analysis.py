"""One reading of a message, done once and passed on to planning and composing."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from services.orchestrator.planner.expressions import find_expressions
from services.orchestrator.planner.intents import ANCHOR_RES, Greeting, Intent, find_intents
from services.orchestrator.planner.places import Anchor, PlaceLookup, find_places
from services.orchestrator.planner.text import MAX_SCANNED_CHARS, fold

_NO_PLACES: Final[Mapping[Intent, str]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Analysis:
    """What a message asks for, and everything a reply to it needs from the message."""

    # In order of first appearance; (SMALL_TALK,) when the message asks for nothing known.
    intents: tuple[Intent, ...]
    # The place named for TIME and for WEATHER, where the message names one.
    places: Mapping[Intent, str]
    # Arithmetic expressions as the calculator accepts them, in order.
    expressions: tuple[str, ...]
    greeting: Greeting | None
    # Picks between equivalent phrasings: the same message always reads the same.
    variant: int

    def place(self, intent: Intent) -> str:
        return self.places.get(intent, "")


def analyse(message: str, places: PlaceLookup | None = None) -> Analysis:
    """Read `message` once: its intents, places, expressions and greeting.

    With `places` (the gazetteer), a place is only taken from words it knows; without, from
    the words where a place is written. Pure and bounded: no I/O, at most MAX_SCANNED_CHARS read,
    every regex linear in the text.
    """
    text = message[:MAX_SCANNED_CHARS]
    folded = fold(text)
    expressions = find_expressions(folded)
    found = find_intents(folded, expressions[0][0] if expressions else None)
    named = _NO_PLACES
    if Intent.TIME in found.intents or Intent.WEATHER in found.intents:
        anchors = sorted(
            (
                Anchor(match.start(), match.end(), intent)
                for intent, pattern in ANCHOR_RES
                for match in pattern.finditer(folded)
            ),
            key=lambda anchor: anchor.start,
        )
        named = MappingProxyType(find_places(text, folded, anchors, places))
    return Analysis(
        intents=found.intents,
        places=named,
        expressions=tuple(expression for _, expression in expressions),
        greeting=found.greeting,
        variant=zlib.crc32(text.encode("utf-8", "replace")),
    )
