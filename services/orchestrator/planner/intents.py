"""What a message asks for: the intent keyword tables (Japanese, English, Korean).

The tables match the message with ASCII letters folded to lower case, so the English entries are
lower case. English words only count in question-like patterns: "time" alone is everywhere in
ordinary speech ("I had a great time"), and so are "luck" ("good luck!") and "help" ("help me
with ..."). Every pattern is linear in the text.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final

from services.orchestrator.planner.text import words


class Intent(enum.StrEnum):
    TIME = "time"
    WEATHER = "weather"
    FORTUNE = "fortune"
    CALCULATION = "calculation"
    GREETING = "greeting"
    HELP = "help"
    SMALL_TALK = "small_talk"


# The intents a tool answers; the others are answered by the reply alone.
TOOL_INTENTS: Final = frozenset({Intent.TIME, Intent.WEATHER, Intent.FORTUNE, Intent.CALCULATION})


class Greeting(enum.StrEnum):
    PLAIN = "plain"
    MORNING = "morning"
    EVENING = "evening"


TIME_RE: Final = re.compile(
    "|".join(
        [
            # Japanese. 何時間 is a duration and 何時に/何時まで ask about a schedule.
            r"何時(?!間|に|から|まで|頃|ごろ)",
            r"なんじ(?!かん)",
            r"時刻",
            r"(?:今|いま|現在)の?時間",
            r"の時間(?:は|を)?(?:[?？]|教え|知り|わか|$)",
            r"時間を?教えて",
            words(
                r"what(?:'s|’s|\s+is)?\s+(?:the\s+)?time\b",
                r"current\s+time\b",
                r"local\s+time\b",
                r"time\s+is\s+it\b",
                r"tell\s+(?:me\s+)?the\s+time\b",
                r"give\s+(?:me\s+)?the\s+time\b",
                r"know\s+the\s+time\b",
                r"the\s+time\s+(?:in|now)\b",
                r"and\s+time\s+(?:in|now)\b",
            ),
            r"\Atime\s+(?:in|now)\b",
            r"[,.;!?]\s*time\s+(?:in|now)\b",
            # Korean. 몇 시간 is a duration; 시간 alone is everywhere ("시간이 없어").
            r"몇\s*시(?!\s*간)",
            r"(?:지금|현재)\s*(?:몇\s*시|시간|시각)",
            r"시각\s*(?:은|이|을)?\s*(?:[?？]|알려|말해)",
            r"시간\s*(?:은|이|좀)?\s*(?:[?？]|알려|말해|어떻게\s*돼)",
        ]
    )
)

WEATHER_RE: Final = re.compile(
    "|".join(
        [
            r"天気|天候|気温|予報|気象|雨|雪|晴れ|傘",
            words(
                r"weather\b",
                r"temperature\b",
                r"forecast\b",
                r"rain(?:y|ing)?\b",
                r"snow(?:y|ing)?\b",
                r"umbrella\b",
                r"humidity\b",
            ),
            r"날씨|기온|일기\s*예보|우산|강수",
            # 비 is "rain" as a word of its own, not inside 비행기, 준비 or 비밀.
            r"비(?<![가-힣].)(?:가|는|도|\s*(?:와|올|오|내))",
        ]
    )
)

FORTUNE_RE: Final = re.compile(
    "|".join(
        [
            r"運勢|おみくじ|御神籤|御籤|占[いうえっ]|ラッキーアイテム",
            words(
                r"fortunes?\b",
                r"omikuji\b",
                r"horoscope\b",
                r"lucky\s+item\b",
                r"my\s+luck\b",
                r"luck\s+(?:for\s+)?today\b",
            ),
            r"운세|오미쿠지|운수|점\s*(?:쳐|봐)|행운의?\s*아이템|럭키\s*아이템",
        ]
    )
)

_GREETING_RE: Final = re.compile(
    "|".join(
        [
            r"(?P<ja_morning>おはよう)|(?P<ja_evening>こんばん[はわ])",
            r"こんにち[はわ]|はじめまして|ハロー",
            "(?P<en_morning>" + words(r"good\s+morning\b") + ")",
            "(?P<en_evening>" + words(r"good\s+evening\b") + ")",
            words(
                r"hello\b",
                r"hi\b",
                r"hiya\b",
                r"hey\b",
                r"howdy\b",
                r"greetings\b",
                r"good\s+afternoon\b",
            ),
            r"(?P<ko_morning>좋은\s*아침)|안녕|반가워|반갑습니다",
        ]
    )
)

_HELP_RE: Final = re.compile(
    "|".join(
        [
            r"(?:何|なに)が(?:でき|出来)る|できること|ヘルプ|使い方",
            words(
                r"help\b(?!\s+(?:me\s+)?(?:with|to|out|find|calculate|compute|check|get|figure)\b)",
                r"what\s+(?:can|do)\s+you\s+do\b",
                r"how\s+do\s+i\s+use\s+you\b",
            ),
            r"도움말|사용법|(?:뭘|뭐|무엇을|무엇)\s*할\s*수\s*있|할\s*수\s*있는\s*(?:게|것|일)",
        ]
    )
)

CALC_WORD_RE: Final = re.compile(
    "|".join([r"計算|けいさん|계산", words(r"calculat", r"compute\b")])
)

# The requests a place can belong to, and the fortune requests that end a place's window.
ANCHOR_RES: Final[tuple[tuple[Intent, re.Pattern[str]], ...]] = (
    (Intent.TIME, TIME_RE),
    (Intent.WEATHER, WEATHER_RE),
    (Intent.FORTUNE, FORTUNE_RE),
)
_ORDER: Final = {intent: index for index, intent in enumerate(Intent)}


@dataclass(frozen=True, slots=True)
class Found:
    intents: tuple[Intent, ...]
    greeting: Greeting | None


def find_intents(folded: str, first_expression: int | None) -> Found:
    """The intents of the folded text in order of first appearance (SMALL_TALK alone when none
    matches), and the kind of greeting. `first_expression` is where the first arithmetic
    expression starts, if there is one."""
    positions: dict[Intent, int] = {}
    for intent, pattern in ANCHOR_RES:
        match = pattern.search(folded)
        if match:
            positions[intent] = match.start()
    greeting = _GREETING_RE.search(folded)
    if greeting:
        positions[Intent.GREETING] = greeting.start()
    calc_word = CALC_WORD_RE.search(folded)
    calc_positions = [] if first_expression is None else [first_expression]
    if calc_word:
        calc_positions.append(calc_word.start())
    if calc_positions:
        positions[Intent.CALCULATION] = min(calc_positions)
    help_match = _HELP_RE.search(folded)
    if help_match:
        positions[Intent.HELP] = help_match.start()
    if not positions:
        return Found((Intent.SMALL_TALK,), None)
    ordered = sorted(positions, key=lambda intent: (positions[intent], _ORDER[intent]))
    return Found(tuple(ordered), _greeting_kind(greeting) if greeting else None)


def _greeting_kind(match: re.Match[str]) -> Greeting:
    if match["ja_morning"] or match["en_morning"] or match["ko_morning"]:
        return Greeting.MORNING
    if match["ja_evening"] or match["en_evening"]:
        return Greeting.EVENING
    return Greeting.PLAIN
