"""The local planner: the embedded stand-in for the LLM, and its fallback when the LLM fails.

It finds what a message in Japanese, English or Korean asks for (several things at once:
"今何時で、天気はどうで、ついでに運勢も教えて"), turns that into tool calls with the places and
arithmetic expressions it can pick out, and writes an in-persona reply from the tools' results.
A message is read once, by `analyse`; `plan` and `compose` work from that `Analysis`:

    analysis = analyse(message, gazetteer)
    calls = plan(analysis, default_place="東京")
    reply = compose(analysis, "ja", [(call.intent, outcome), ...], ending="にゃん")

Pure and cheap: no I/O, no randomness (a choice between phrasings is seeded by the message), and
every regex is compiled at import and linear in the text, because this runs on the event loop.
Detection is by keyword tables, so it is deliberately conservative: a word that merely appears
("I had a great time", "I have 2 cats", "2026-11-26") does not make a tool call.

Modules: `intents` (keyword tables), `expressions` and `places` (what the requests are about),
`analysis` (one reading of a message), `planning` (tool calls), `phrases` (what the cat says in
each language) and `composition` (the reply).
"""

from services.orchestrator.planner.analysis import Analysis, analyse
from services.orchestrator.planner.composition import MAX_REPLY_CHARS, compose
from services.orchestrator.planner.intents import TOOL_INTENTS, Greeting, Intent
from services.orchestrator.planner.places import MAX_PLACE_CHARS, PlaceLookup
from services.orchestrator.planner.planning import PlannedCall, plan
from services.orchestrator.planner.text import MAX_SCANNED_CHARS

__all__ = [
    "MAX_PLACE_CHARS",
    "MAX_REPLY_CHARS",
    "MAX_SCANNED_CHARS",
    "TOOL_INTENTS",
    "Analysis",
    "Greeting",
    "Intent",
    "PlaceLookup",
    "PlannedCall",
    "analyse",
    "compose",
    "plan",
]
