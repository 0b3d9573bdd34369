"""Product metrics: how the agent is used, read off each answered turn.

Labels come only from small fixed sets (a language, a feature name); the user id, the message and
the reply never reach a metric. A conversation is a user's run of turns with no more than
`CONVERSATION_GAP_SECONDS` between one and the next (the usual analytics session); a tool answer
is a turn whose reply used at least one tool result, and it is followed up when the user's next
turn comes within that gap.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import emoji

from services.orchestrator import metrics
from services.orchestrator.model import HistoryTurn
from services.orchestrator.usage import Ledger

logger = logging.getLogger(__name__)

CONVERSATION_GAP_SECONDS: Final = 30 * 60.0

# Scripts by the first word of a letter's Unicode name (HALFWIDTH / FULLWIDTH dropped); Japanese
# mixes kana and kanji by nature, so they count as one script.
_SCRIPT_OF_NAME: Final = {
    "LATIN": "latin",
    "HIRAGANA": "japanese",
    "KATAKANA": "japanese",
    "KATAKANA-HIRAGANA": "japanese",
    "CJK": "japanese",
    "IDEOGRAPHIC": "japanese",
    "HANGUL": "hangul",
    "CYRILLIC": "cyrillic",
    "GREEK": "greek",
    "ARABIC": "arabic",
    "HEBREW": "hebrew",
    "THAI": "thai",
    "DEVANAGARI": "devanagari",
    "ARMENIAN": "armenian",
    "GEORGIAN": "georgian",
}
# Scripts whose letters pass for Latin ones: mixed into one Latin word, they are a look-alike.
_LATIN_LOOKALIKES: Final = frozenset({"cyrillic", "greek", "armenian"})
_STACKED_MARKS: Final = 3
_UNUSUAL_CATEGORIES: Final = frozenset({"Co", "Cn", "Cs"})
_INVISIBLE: Final = frozenset({"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800"})


# Every emoji begins with one of these: a message with none of them is not scanned for emoji
# (the emoji package's scan is most of the cost of reading a message).
_EMOJI_STARTS: Final = frozenset(sequence[0] for sequence in emoji.EMOJI_DATA)


@functools.lru_cache(maxsize=4096)
def _script(ch: str) -> str:
    words = unicodedata.name(ch, "").split()
    if words and words[0] in {"HALFWIDTH", "FULLWIDTH"}:
        words = words[1:]
    return _SCRIPT_OF_NAME.get(words[0], "other") if words else "other"


def message_features(message: str) -> frozenset[str]:
    """Which of emoji, invisible, unusual and mixed_script the message (as the caller sent it)
    shows. Zero-width joiners and variation selectors inside emoji are part of the emoji."""
    features: set[str] = set()
    rest = message
    if not _EMOJI_STARTS.isdisjoint(message):
        rest = emoji.replace_emoji(message, "")
        if rest != message:
            features.add("emoji")
    marks = 0
    scripts: set[str] = set()
    for word in rest.split():
        word_scripts: set[str] = set()
        for ch in word:
            category = unicodedata.category(ch)
            marks = marks + 1 if category in {"Mn", "Me"} else 0
            if marks >= _STACKED_MARKS or category in _UNUSUAL_CATEGORIES:
                features.add("unusual")
            # Formatting characters: zero-width spaces and joiners, tags, bidi controls.
            if category == "Cf" or ch in _INVISIBLE:
                features.add("invisible")
            elif category.startswith("L"):
                word_scripts.add(_script(ch))
        if "latin" in word_scripts and word_scripts & _LATIN_LOOKALIKES:
            features.add("mixed_script")
        scripts |= word_scripts
    if len(scripts - {"latin", "other"}) >= 2:
        features.add("mixed_script")
    return frozenset(features)


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a turn stands in its conversation."""

    position: int  # 1 for the first turn of a conversation
    follows_tool_answer: bool


FIRST_TURN: Final = Progress(1, follows_tool_answer=False)


def progress_of(history: Sequence[HistoryTurn], now: float) -> Progress:
    """The turn about to be answered, after `history` (oldest first), at Unix time `now`."""
    if not history:
        return FIRST_TURN
    last = history[-1]
    if now - last.at > CONVERSATION_GAP_SECONDS:
        return FIRST_TURN
    # Turns stored before positions were kept count from the history's length.
    before = max(0, last.position) or len(history)
    return Progress(before + 1, follows_tool_answer=last.tool_results > 0)


def record_answered(
    progress: Progress,
    *,
    language: str,
    features: frozenset[str],
    cost_usd: float,
    tool_results: int,
) -> None:
    """Count an answered turn (not a replay, a refusal or an aborted turn)."""
    metrics.CONVERSATION_TURN.observe(progress.position)
    metrics.MESSAGES.labels(language).inc()
    for feature in sorted(features):
        metrics.MESSAGE_FEATURES.labels(feature).inc()
    metrics.TURN_COST.observe(cost_usd)
    if tool_results:
        metrics.TOOL_ANSWERS.inc()
    if progress.follows_tool_answer:
        metrics.TOOL_FOLLOWUPS.inc()


async def watch_budget(
    ledger: Ledger,
    monthly_budget_usd: float,
    wall_clock: Callable[[], datetime],
    *,
    interval_seconds: float = 15.0,
) -> None:
    """Keep `chatagent_budget_used_ratio{scope="global_monthly"}` current: the share of the
    global monthly budget every replica together has spent, read from the ledger (no budget: 0).
    A store that does not answer leaves the last reading; its own alert says it is away."""
    gauge = metrics.BUDGET_USED.labels("global_monthly")
    gauge.set(0)
    while monthly_budget_usd > 0:
        try:
            async with asyncio.timeout(interval_seconds):
                spent = await ledger.global_month(wall_clock())
            gauge.set(spent.cost_usd / monthly_budget_usd)
        except Exception as exc:
            logger.debug("budget reading failed", extra={"error": repr(exc)})
        await asyncio.sleep(interval_seconds)
