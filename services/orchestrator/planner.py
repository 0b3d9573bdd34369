"""The local planner: the embedded stand-in for the LLM, and its fallback when the LLM fails.

It finds what a message in Japanese, English or Korean asks for (several things at once:
"今何時で、天気はどうで、ついでに運勢も教えて"), turns that into tool calls with the places and
arithmetic expressions it can pick out, and writes an in-persona reply from the tools' results.

Pure and cheap: no I/O, no randomness (a choice between phrasings is seeded by the message), and
every regex is compiled at import and linear in the text, because this runs on the event loop.
Detection is by keyword tables, so it is deliberately conservative: a word that merely appears
("I had a great time", "I have 2 cats", "2026-11-26") does not make a tool call.
"""

from __future__ import annotations

import enum
import json
import re
import string
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from services.common.language import Language
from services.orchestrator.model import Emotion, ToolCallRequest, ToolOutcome, ToolStatus


class Intent(enum.StrEnum):
    TIME = "time"
    WEATHER = "weather"
    FORTUNE = "fortune"
    CALCULATION = "calculation"
    GREETING = "greeting"
    HELP = "help"
    SMALL_TALK = "small_talk"


# Messages are at most 4,000 characters; anything longer (a caller that skipped validation) is
# only read this far, so the cost of one message stays bounded whatever arrives.
MAX_SCANNED_CHARS: Final = 8000
MAX_REPLY_CHARS: Final = 300
# One message may hold several expressions ("1+1 and 2*3"); more than this is not a question.
MAX_EXPRESSIONS: Final = 3
MAX_PLACE_CHARS: Final = 60
MAX_PIECES: Final = 10


def _words(*alternatives: str) -> str:
    r"""Alternatives that each start a word, as a regex for the case-folded text.

    `\b` at the front of an alternative stops the regex engine from skipping ahead to the
    characters an alternative can start with, which makes a long message scan several times
    slower; a look-behind placed after the first letter means the same and keeps the skip.
    """
    return "|".join(rf"{alt[0]}(?<!\w.){alt[1:]}" for alt in alternatives)


# --- Intent keyword tables ------------------------------------------------------------------------
#
# The tables match the message with ASCII letters folded to lower case (see _fold), so the English
# entries are lower case. English words only count in question-like patterns: "time" alone is
# everywhere in ordinary speech ("I had a great time"), and so are "luck" ("good luck!") and
# "help" ("help me with ...").

_TIME_RE: Final = re.compile(
    "|".join(
        [
            # Japanese. 何時間 is a duration and 何時に/何時まで ask about a schedule.
            r"何時(?!間|に|から|まで|頃|ごろ)",
            r"なんじ(?!かん)",
            r"時刻",
            r"(?:今|いま|現在)の?時間",
            r"の時間(?:は|を)?(?:[?？]|教え|知り|わか|$)",
            r"時間を?教えて",
            _words(
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

_WEATHER_RE: Final = re.compile(
    "|".join(
        [
            r"天気|天候|気温|予報|気象|雨|雪|晴れ|傘",
            _words(
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

_FORTUNE_RE: Final = re.compile(
    "|".join(
        [
            r"運勢|おみくじ|御神籤|御籤|占[いうえっ]|ラッキーアイテム",
            _words(
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
            "(?P<en_morning>" + _words(r"good\s+morning\b") + ")",
            "(?P<en_evening>" + _words(r"good\s+evening\b") + ")",
            _words(
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
            _words(
                r"help\b(?!\s+(?:me\s+)?(?:with|to|out|find|calculate|compute|check|get|figure)\b)",
                r"what\s+(?:can|do)\s+you\s+do\b",
                r"how\s+do\s+i\s+use\s+you\b",
            ),
            r"도움말|사용법|(?:뭘|뭐|무엇을|무엇)\s*할\s*수\s*있|할\s*수\s*있는\s*(?:게|것|일)",
        ]
    )
)

_CALC_WORD_RE: Final = re.compile(
    "|".join([r"計算|けいさん|계산", _words(r"calculat", r"compute\b")])
)

# --- Expressions ----------------------------------------------------------------------------------

# Longest names first, so that log10 is not read as log followed by 10.
_FUNCTIONS: Final = (
    "factorial|radians|degrees|log10|log2|atan2|hypot|floor|trunc|round|sqrt|cbrt|asin|acos|atan"
    "|sinh|cosh|tanh|ceil|comb|perm|exp|log|sin|cos|tan|abs|gcd|lcm|min|max"
)
# One character (or function name) an expression may contain. The alternatives begin with
# disjoint characters and nothing is nested, so scanning a run is linear in its length.
_ATOM: Final = (
    r"(?:[0-9０-９.,+\-*/×÷^%()（）＋－＊／＾−]"
    rf"|(?:{_words(*_FUNCTIONS.split('|'))})(?=\s*[(（])"
    rf"|(?:{_words('pi', 'tau')})(?![a-z])|π)"
)
_EXPRESSION_RUN_RE: Final = re.compile(rf"{_ATOM}(?:{_ATOM}|[ \t\u3000])*")
_OPERATOR_WORDS: Final[dict[str, str]] = {
    "たす": "+",
    "足す": "+",
    "プラス": "+",
    "plus": "+",
    "더하기": "+",
    "ひく": "-",
    "引く": "-",
    "マイナス": "-",
    "minus": "-",
    "빼기": "-",
    "かける": "*",
    "掛ける": "*",
    "times": "*",
    "multiplied by": "*",
    "곱하기": "*",
    "わる": "/",
    "割る": "/",
    "divided by": "/",
    "나누기": "/",
}
_OPERATOR_WORD_RE: Final = re.compile(
    r"([0-9０-９)）])(\s*(?:"
    + "|".join(sorted((re.escape(w) for w in _OPERATOR_WORDS), key=len, reverse=True))
    + r")\s*)(?=[0-9０-９(（])"
)
_BINARY_RE: Final = re.compile(
    r"[0-9０-９)）πiu.]\s*(?:\*\*|//|[+\-*/×÷^%＋－＊／＾−])\s*[-+−]?\s*[0-9０-９(（πpt.a-z]"
)
_CALL_RE: Final = re.compile(rf"(?<![a-z])(?:{_FUNCTIONS})\s*[(（]")
# Integers joined by - or / without spaces: dates, phone numbers, scores, ranges and fractions
# ("2026-11-26", "090-1234-5678", "3-2", "24/7", "1/2 cup"). Arithmetic only when asked for.
_AMBIGUOUS_RE: Final = re.compile(r"[0-9０-９]+(?:[-/－／−][0-9０-９]+)+")
_THOUSANDS_RE: Final = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_ASKED_BEFORE_RE: Final = re.compile(
    r"(?:\bwhat\s*(?:'s|’s|\s+is)|\bhow\s+much\s+is|計算して|計算|계산해|계산)\s*:?\s*$"
)
# A bare "?" after "11/26" is as likely a date as a sum, so it takes "=" or a word that asks.
_ASKED_AFTER_RE: Final = re.compile(
    r"\s*(?:=|(?:は|って|는|은)\s*[?？]|(?:(?:は|って|는|은|이|가|is)\s*)?(?:いくつ|何|なに|얼마|몇))"
)
_LEADING_JUNK: Final = ",.)）*/×÷^%＊／＾ \t\u3000"
_TRAILING_JUNK: Final = ",.+-*/×÷^%(（＋－＊／＾− \t\u3000"

# --- Places ---------------------------------------------------------------------------------------

_WINDOW_CHARS: Final = 40
_JA_PLACE_BEFORE_RE: Final = re.compile(
    r"([A-Za-zＡ-Ｚａ-ｚ\u3400-\u4DBF\u4E00-\u9FFF々\u30A0-\u30FF\uFF66-\uFF9F]"
    r"[A-Za-zＡ-Ｚａ-ｚ\u3400-\u4DBF\u4E00-\u9FFF々\u30A0-\u30FF\uFF66-\uFF9F ]*?)"
    r"\s*(?:の|は|って|では|で|に|も)?\s*(?:(?:今日|明日|今|いま|現在|今夜)の?)?\s*$"
)
_JA_PARTICLE_RE: Final = re.compile(r"\s*(?:の|は|って|で|に|も)")
_JA_TIME_WORDS: Final = ("明後日", "今日", "明日", "昨日", "現在", "今夜", "今朝", "週末", "今")
_NOT_A_PLACE_RE: Final = re.compile(
    r"何時|時間|時刻|天気|天候|気温|予報|運勢|占い|計算|ヘルプ|날씨|시간|운세|기온|계산"
    r"|\b(?:weather|time|forecast|temperature|fortune)\b",
    re.IGNORECASE,
)
_KO_WORD_RE: Final = re.compile(r"[가-힣A-Za-z]+")
_KO_PARTICLES: Final = ("에서", "이랑", "의", "은", "는", "에", "랑")
# Words a place's slot may hold that are not places (kept as text, split once at import).
_KO_NOT_PLACE_WORDS: Final = (
    "오늘 지금 현재 내일 모레 어제 요즘 이번 주말 그리고 그럼 그런데 근데 또 좀 혹시 여기 거기"
    " 저기 우리 내 너 이제 진짜 정말 그냥 어때 알려줘 오늘의 지금의 현재의 내일의 몇"
)
_KO_NOT_PLACES: Final = frozenset(_KO_NOT_PLACE_WORDS.split())
# The words are read in a lookahead, so "in Paris and time in Tokyo" yields both places.
_EN_PLACE_AFTER_RE: Final = re.compile(
    rf"(?:{_words('in', 'for')})\s+(?=([a-z][a-z.'’-]*(?:[ \t]+[a-z][a-z.'’-]*){{0,4}}))"
)
_EN_PLACE_BEFORE_RE: Final = re.compile(
    r"((?:[A-Z][A-Za-z.'’-]*[ \t]+){0,2}[A-Z][A-Za-z.'-]*?)(?:'s|’s)?[ \t]*$"
)
_EN_PREPOSITION_BEFORE_RE: Final = re.compile(r"\b(?:in|for|at)\s+$", re.IGNORECASE)
_EN_STOP_TEXT: Final = """
    a an the my your our their his her its this that these those here there today tonight
    tomorrow now right currently please and or but with like then too also is are was will
    be it it's what what's whats how tell me show give get check current local time weather
    forecast temperature morning afternoon evening night general celsius fahrenheit detail
    details advance case fact hi hey hello ok okay so i do you can could would should
    area town city place week weekend minute minutes hour hours
"""
_EN_STOP_WORDS: Final = frozenset(_EN_STOP_TEXT.split())

# --- Analysis -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Anchor:
    start: int
    end: int
    intent: Intent


@dataclass(frozen=True, slots=True)
class _Analysis:
    intents: list[Intent]
    places: dict[Intent, str]
    expressions: list[str]


_TOOL_INTENT_RES: Final[tuple[tuple[Intent, re.Pattern[str]], ...]] = (
    (Intent.TIME, _TIME_RE),
    (Intent.WEATHER, _WEATHER_RE),
    (Intent.FORTUNE, _FORTUNE_RE),
)
_ORDER: Final = {intent: index for index, intent in enumerate(Intent)}


def find_intents(message: str) -> list[Intent]:
    """Intents in order of first appearance; SMALL_TALK alone when nothing else matches."""
    folded = _fold(message)
    return _intents(folded, _expressions_with_positions(_with_operator_symbols(folded)))


def plan(message: str, *, default_place: str = "") -> list[ToolCallRequest]:
    """The tool calls for the message's tool intents, in order, ids "local-1", "local-2", ...

    get_time {"place": ...} or {} (the user's own zone); get_weather {"place": ...}, the message's
    place or else `default_place`, and no call at all without either (the reply asks which place);
    get_fortune {}; calculate {"expression": ...} once per expression found (none when the message
    only says "calculate"). Arguments are compact JSON.
    """
    analysis = _analyse(message)
    arguments: list[tuple[str, dict[str, str]]] = []
    for intent in analysis.intents:
        if intent is Intent.TIME:
            place = analysis.places.get(Intent.TIME, "")
            arguments.append(("get_time", {"place": place} if place else {}))
        elif intent is Intent.WEATHER:
            place = analysis.places.get(Intent.WEATHER, "") or default_place.strip()
            if place:
                arguments.append(("get_weather", {"place": place[:MAX_PLACE_CHARS]}))
        elif intent is Intent.FORTUNE:
            arguments.append(("get_fortune", {}))
        elif intent is Intent.CALCULATION:
            arguments.extend(("calculate", {"expression": e}) for e in analysis.expressions)
    return [
        ToolCallRequest(
            id=f"local-{index}",
            name=name,
            arguments=json.dumps(args, ensure_ascii=False, separators=(",", ":")),
        )
        for index, (name, args) in enumerate(arguments, start=1)
    ]


def _fold(message: str) -> str:
    """The scanned part of the message with letters in lower case, every position unchanged."""
    text = message[:MAX_SCANNED_CHARS]
    folded = text.lower()
    # A few letters grow when lowered ("İ" -> "i̇"); positions matter more than those letters.
    return folded if len(folded) == len(text) else text.translate(_ASCII_LOWER)


_ASCII_LOWER: Final = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def _analyse(message: str) -> _Analysis:
    folded = _fold(message)
    found = _expressions_with_positions(_with_operator_symbols(folded))
    intents = _intents(folded, found)
    places: dict[Intent, str] = {}
    if Intent.TIME in intents or Intent.WEATHER in intents:
        places = _places(message[:MAX_SCANNED_CHARS], folded)
    return _Analysis(intents=intents, places=places, expressions=[e for _, e in found])


def _intents(text: str, expressions: list[tuple[int, str]]) -> list[Intent]:
    positions: dict[Intent, int] = {}
    for intent, pattern in (*_TOOL_INTENT_RES, (Intent.GREETING, _GREETING_RE)):
        match = pattern.search(text)
        if match:
            positions[intent] = match.start()
    calc_word = _CALC_WORD_RE.search(text)
    calc_positions = [p for p, _ in expressions[:1]] + ([calc_word.start()] if calc_word else [])
    if calc_positions:
        positions[Intent.CALCULATION] = min(calc_positions)
    help_match = _HELP_RE.search(text)
    if help_match:
        positions[Intent.HELP] = help_match.start()
    if not positions:
        return [Intent.SMALL_TALK]
    return sorted(positions, key=lambda intent: (positions[intent], _ORDER[intent]))


# --- Expression extraction ------------------------------------------------------------------------


def _with_operator_symbols(text: str) -> str:
    """The text with operator words between numbers spelled as symbols ("3たす4" -> "3+ 4").

    Replacements keep the text's length, so positions found in it are positions in the message.
    """

    def symbol(match: re.Match[str]) -> str:
        operand, spelled = match.group(1, 2)
        return operand + _OPERATOR_WORDS[" ".join(spelled.split())].center(len(spelled))

    return _OPERATOR_WORD_RE.sub(symbol, text)


def _expressions_with_positions(text: str) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    calc_asked = _CALC_WORD_RE.search(text) is not None
    for run in _EXPRESSION_RUN_RE.finditer(text):
        raw = run.group(0)
        left = len(raw) - len(raw.lstrip(_LEADING_JUNK))
        candidate = raw.lstrip(_LEADING_JUNK).rstrip(_TRAILING_JUNK)
        start = run.start() + left
        if not candidate:
            continue
        asked = (
            calc_asked
            or _ASKED_BEFORE_RE.search(text, max(0, start - 20), start) is not None
            or _ASKED_AFTER_RE.match(text[start + len(candidate) : start + len(candidate) + 8])
            is not None
        )
        pieces = _split_top_level_commas(_THOUSANDS_RE.sub("", candidate))
        # "1,2,3,..." is a list, not thousands of sums: look at the first few pieces only.
        for piece in pieces[:MAX_PIECES]:
            expression = _balanced(piece).lstrip(_LEADING_JUNK).rstrip(_TRAILING_JUNK)
            expression = " ".join(expression.split())
            if _is_arithmetic(expression, asked=asked):
                # Not cut to the tool's limit: a shortened sum is a different sum, and the tool
                # refuses an over-long one honestly.
                found.append((start, expression))
                if len(found) == MAX_EXPRESSIONS:
                    return found
    return found


def _split_top_level_commas(text: str) -> list[str]:
    if "," not in text:
        return [text]
    pieces: list[str] = []
    depth = 0
    begin = 0
    for index, char in enumerate(text):
        if char in "(（":
            depth += 1
        elif char in ")）":
            depth -= 1
        elif char == "," and depth <= 0:
            pieces.append(text[begin:index])
            begin = index + 1
    pieces.append(text[begin:])
    return pieces


def _balanced(text: str) -> str:
    """The text without the brackets that have no partner ("3+4)" -> "3+4")."""
    if not any(bracket in text for bracket in "()（）"):
        return text
    unmatched: set[int] = set()
    opened: list[int] = []
    for index, char in enumerate(text):
        if char in "(（":
            opened.append(index)
        elif char in ")）":
            if opened:
                opened.pop()
            else:
                unmatched.add(index)
    unmatched.update(opened)
    if not unmatched:
        return text
    return "".join(char for index, char in enumerate(text) if index not in unmatched)


def _is_arithmetic(expression: str, *, asked: bool) -> bool:
    if not _BINARY_RE.search(expression) and not _CALL_RE.search(expression):
        return False
    return asked or not _AMBIGUOUS_RE.fullmatch(expression)


# --- Place extraction -----------------------------------------------------------------------------


def _places(text: str, folded: str) -> dict[Intent, str]:
    """The place each of the time and weather requests is about, where the message names one.

    A place written next to its request ("東京は何時で、大阪の天気は？", "time in Tokyo and the
    weather in Paris") belongs to that request; a single place named once serves both.
    """
    anchors = sorted(
        (
            _Anchor(match.start(), match.end(), intent)
            for intent, pattern in _TOOL_INTENT_RES
            for match in pattern.finditer(folded)
        ),
        key=lambda anchor: anchor.start,
    )
    places: dict[Intent, str] = {}
    previous_end = 0
    for anchor in anchors:
        if anchor.intent is not Intent.FORTUNE and anchor.intent not in places:
            # The words between the previous request and this one are where this one's place is.
            window = text[max(previous_end, anchor.start - _WINDOW_CHARS) : anchor.start]
            place = _place_before(window)
            if place:
                places[anchor.intent] = place
        previous_end = max(previous_end, anchor.end)
    for match in _EN_PLACE_AFTER_RE.finditer(folded):
        place = _english_place(text[match.start(1) : match.end(1)].split())
        if not place:
            continue
        owner = _owner(anchors, match.start())
        if owner is not None and owner not in places:
            places[owner] = place
    distinct = set(places.values())
    if len(distinct) == 1:
        (only,) = distinct
        for intent in (Intent.TIME, Intent.WEATHER):
            places.setdefault(intent, only)
    return places


def _owner(anchors: list[_Anchor], position: int) -> Intent | None:
    """The time or weather request an "in X" after it (or, failing that, before it) belongs to."""
    before = [a for a in anchors if a.start < position and a.intent is not Intent.FORTUNE]
    if before:
        return before[-1].intent
    after = [a for a in anchors if a.intent is not Intent.FORTUNE]
    return after[0].intent if after else None


def _place_before(window: str) -> str:
    return _japanese_place(window) or _korean_place(window) or _english_place_before(window)


def _japanese_place(window: str) -> str:
    match = _JA_PLACE_BEFORE_RE.search(window)
    if not match:
        return ""
    place = match.group(1).strip()
    if place.isascii() and not _JA_PARTICLE_RE.match(window, match.end(1)):
        # Latin letters before an English keyword are the English reader's business.
        return ""
    for word in _JA_TIME_WORDS:
        # 今治 is a city and 今日本 is "now, Japan": strip a time word only if a name remains.
        if place.startswith(word) and len(place) - len(word) >= 2:
            place = place[len(word) :]
            break
    if place in _JA_TIME_WORDS or _NOT_A_PLACE_RE.search(place):
        return ""
    return place[:MAX_PLACE_CHARS]


def _korean_place(window: str) -> str:
    words: list[str] = _KO_WORD_RE.findall(window)
    for word in reversed(words):
        if word.isascii():
            return ""
        stem = word
        for particle in _KO_PARTICLES:
            if stem.endswith(particle) and len(stem) - len(particle) >= 2:
                stem = stem[: -len(particle)]
                break
        if word in _KO_NOT_PLACES or stem in _KO_NOT_PLACES:
            continue
        if len(stem) < 2 or _NOT_A_PLACE_RE.search(stem):
            return ""
        return stem[:MAX_PLACE_CHARS]
    return ""


def _english_place_before(window: str) -> str:
    match = _EN_PLACE_BEFORE_RE.search(window)
    if not match or _EN_PREPOSITION_BEFORE_RE.search(window, 0, match.start(1)):
        # "weather in Paris and time": Paris is the weather's place, found after "in".
        return ""
    words = match.group(1).split()
    kept: list[str] = []
    for word in reversed(words):
        if word.lower() in _EN_STOP_WORDS:
            break
        kept.append(word)
    return " ".join(reversed(kept))[:MAX_PLACE_CHARS]


def _english_place(words: list[str]) -> str:
    kept: list[str] = []
    for index, word in enumerate(words):
        if word.lower().rstrip(".") in _EN_STOP_WORDS:
            if index == 0 and word.lower() == "the":
                continue
            break
        kept.append(word)
    place = " ".join(kept).rstrip(".'’-")
    if not place or _NOT_A_PLACE_RE.search(place):
        return ""
    return place[:MAX_PLACE_CHARS]


# --- Replies --------------------------------------------------------------------------------------

_Kind = Literal["statement", "sorry", "exclaim", "question", "raw"]


@dataclass(frozen=True, slots=True)
class _Sentence:
    """A sentence without its final punctuation; the last one of a reply carries the ending."""

    text: str
    kind: _Kind = "statement"
    essential: bool = True


# The persona guard accepts the ending followed by at most one of 。！!？?, so a sorry sentence
# ends in 。 in Japanese and with no mark at all elsewhere ("." would fail the guard).
_LAST_MARK: Final[dict[Language, dict[_Kind, str]]] = {
    "ja": {"statement": "！", "sorry": "。", "exclaim": "！", "question": "？", "raw": "！"},
    "en": {"statement": "!", "sorry": "", "exclaim": "!", "question": "?", "raw": "!"},
    "ko": {"statement": "!", "sorry": "", "exclaim": "!", "question": "?", "raw": "!"},
}
_SENTENCE_END: Final = "。．.！!？?…"


def _finish(language: Language, sentences: Sequence[_Sentence], ending: str) -> str:
    parts = [_middle(language, sentence) for sentence in sentences[:-1]]
    last = sentences[-1]
    text = last.text.rstrip(_SENTENCE_END + " ") if last.kind == "raw" else last.text
    mark = _LAST_MARK[language][last.kind]
    if language == "en":
        parts.append(f"{text}, {ending}{mark}" if ending else text + mark)
    else:
        parts.append(text + ending + mark)
    return ("" if language == "ja" else " ").join(parts)


def _middle(language: Language, sentence: _Sentence) -> str:
    text = sentence.text
    if sentence.kind == "raw":
        if text.endswith(tuple(_SENTENCE_END)):
            return text
        return text + ("。" if language == "ja" else ".")
    if language == "ja":
        if sentence.kind == "exclaim":
            return text + "！"
        if sentence.kind == "question":
            return text + "？"
        return text + ("よ。" if text.endswith(("だ", "い", "る", "た")) else "。")
    return text + {"exclaim": "!", "question": "?"}.get(sentence.kind, ".")


@dataclass(frozen=True, slots=True)
class _Phrases:
    greeting: str
    greeting_morning: str
    greeting_evening: str
    help: tuple[str, str]
    small_talk: tuple[str, ...]
    offer: str
    ask_place: str
    ask_expression: str
    time_here: str
    time_place: str
    weather: str
    rain_hint: str
    fortune: str
    lucky_item: str
    calculation: str
    big_number: str
    no_place: str
    time_down: str
    weather_down: str
    weather_down_place: str
    fortune_down: str
    calculation_down: str
    bad_expression: str
    division_by_zero: str
    weekdays: dict[str, str]
    openers: dict[str, tuple[str, _Kind]]


_JA: Final = _Phrases(
    greeting="こんにちは",
    greeting_morning="おはよう",
    greeting_evening="こんばんは",
    help=(
        "今の時間、世界の天気、今日の運勢（おみくじ）、計算ができる",
        "「東京の天気は？」みたいに聞いて",
    ),
    small_talk=(
        "お話ししてくれてうれしい",
        "なるほど、もっと聞かせて",
        "ふむふむ、そうなんだ",
    ),
    offer="時間や天気、運勢、計算なら任せて",
    ask_place="どこの天気が知りたい",
    ask_expression="何を計算する",
    time_here="今は{time}{weekday}だ",
    time_place="{place}は今{time}{weekday}だ",
    weather="{place}は{details}だ",
    rain_hint="傘を忘れないで",
    fortune="今日の運勢は{label}だ",
    lucky_item="ラッキーアイテムは{item}だ",
    calculation="{expression}の答えは{result}だ",
    big_number="{head}…（{digits}桁）",
    no_place="「{place}」という場所が見つからない",
    time_down="時間は今わからない",
    weather_down="天気は今わからない",
    weather_down_place="{place}の天気は今わからない",
    fortune_down="おみくじは今ひけない",
    calculation_down="今は計算できない",
    bad_expression="{expression}は計算できない",
    division_by_zero="0で割ることはできない",
    weekdays=dict(
        zip(
            ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
            ("月曜日", "火曜日", "水曜日", "木曜日", "金曜日", "土曜日", "日曜日"),
            strict=True,
        )
    ),
    openers={
        "sadness": ("よしよし、元気出して", "statement"),
        "fear": ("大丈夫、そばにいる", "statement"),
        "anger": ("まあまあ、落ち着いて", "statement"),
        "shame": ("気にしなくて大丈夫", "statement"),
        "dislike": ("それはいやだったね", "statement"),
        "joy": ("うれしそうでぼくもうれしい", "statement"),
        "like": ("いいね", "exclaim"),
        "excitement": ("わくわくするね", "exclaim"),
        "surprise": ("おっ、びっくり", "exclaim"),
        "relief": ("ほっとしたね", "statement"),
    },
)

_EN: Final = _Phrases(
    greeting="Hello",
    greeting_morning="Good morning",
    greeting_evening="Good evening",
    help=(
        "I can tell the time anywhere, check the weather, draw your omikuji and do math",
        'Try "weather in Paris"',
    ),
    small_talk=(
        "Thanks for chatting with me",
        "I see, tell me more",
        "Mm-hm, I'm all ears",
    ),
    offer="Ask me about the time, the weather, your fortune or a calculation",
    ask_place="Which city's weather would you like",
    ask_expression="What should I calculate",
    time_here="It's {time}{weekday} where you are",
    time_place="It's {time}{weekday} in {place}",
    weather="In {place} it's {details}",
    rain_hint="Don't forget an umbrella",
    fortune="Today's omikuji says {label}",
    lucky_item="Your lucky item is {item}",
    calculation="{expression} is {result}",
    big_number="{head}… ({digits} digits)",
    no_place='I couldn\'t find a place called "{place}"',
    time_down="I can't check the time right now",
    weather_down="I can't check the weather right now",
    weather_down_place="I can't check the weather in {place} right now",
    fortune_down="I can't draw your omikuji right now",
    calculation_down="I can't calculate right now",
    bad_expression="I can't calculate {expression}",
    division_by_zero="Dividing by zero is undefined",
    weekdays={},
    openers={
        "sadness": ("Aw, I'm here for you", "statement"),
        "fear": ("It's okay, I'm right here", "statement"),
        "anger": ("Easy now, take a deep breath", "statement"),
        "shame": ("No need to feel shy", "statement"),
        "dislike": ("That sounds unpleasant", "statement"),
        "joy": ("You sound happy, and that makes me happy too", "statement"),
        "like": ("Nice", "exclaim"),
        "excitement": ("How exciting", "exclaim"),
        "surprise": ("Oh, what a surprise", "exclaim"),
        "relief": ("What a relief", "exclaim"),
    },
)

_KO: Final = _Phrases(
    greeting="안녕",
    greeting_morning="좋은 아침",
    greeting_evening="안녕",
    help=(
        "지금 시간, 세계 날씨, 오늘의 운세(오미쿠지), 계산을 할 수 있다",
        '"서울 날씨 어때?"처럼 물어봐',
    ),
    small_talk=(
        "이야기해 줘서 기쁘다",
        "그렇구나, 더 들려줘",
        "음음, 그랬구나",
    ),
    offer="시간, 날씨, 운세, 계산은 나한테 맡겨",
    ask_place="어느 도시의 날씨가 궁금해",
    ask_expression="무엇을 계산할까",
    time_here="지금은 {time}{weekday}이다",
    time_place="{place}의 현재 시각은 {time}{weekday}이다",
    weather="{place}의 날씨는 {details}",
    rain_hint="우산 챙겨",
    fortune="오늘의 운세는 {label}",
    lucky_item="행운의 아이템은 {item}",
    calculation="{expression}의 답은 {result}",
    big_number="{head}…({digits}자리)",
    no_place="'{place}' 장소를 찾지 못했다",
    time_down="지금은 시간을 알 수 없다",
    weather_down="지금은 날씨를 알 수 없다",
    weather_down_place="지금은 {place}의 날씨를 알 수 없다",
    fortune_down="지금은 운세를 볼 수 없다",
    calculation_down="지금은 계산할 수 없다",
    bad_expression="그 식({expression})은 계산할 수 없다",
    division_by_zero="0으로 나눌 수 없다",
    weekdays=dict(
        zip(
            ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
            ("월요일", "화요일", "수요일", "목요일", "금요일", "토요일", "일요일"),
            strict=True,
        )
    ),
    openers={
        "sadness": ("토닥토닥, 힘내", "statement"),
        "fear": ("괜찮아, 옆에 있을게", "statement"),
        "anger": ("진정해, 천천히 하자", "statement"),
        "shame": ("부끄러워하지 마", "statement"),
        "dislike": ("그건 싫었겠다", "statement"),
        "joy": ("기분 좋아 보여서 나도 좋다", "statement"),
        "like": ("좋다", "exclaim"),
        "excitement": ("신난다", "exclaim"),
        "surprise": ("어머, 깜짝이야", "exclaim"),
        "relief": ("다행이다", "statement"),
    },
)

_PHRASES: Final[dict[Language, _Phrases]] = {"ja": _JA, "en": _EN, "ko": _KO}
_FAILED: Final = frozenset(
    {ToolStatus.FALLBACK, ToolStatus.CIRCUIT_OPEN, ToolStatus.INVALID_ARGUMENT, ToolStatus.REJECTED}
)
_CLOCK_RE: Final = re.compile(r"T(\d{2}):(\d{2})")
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")
_TOOL_INTENT: Final = {
    "get_time": Intent.TIME,
    "get_weather": Intent.WEATHER,
    "get_fortune": Intent.FORTUNE,
    "calculate": Intent.CALCULATION,
}


def compose(
    message: str,
    language: Language,
    outcomes: Sequence[ToolOutcome],
    *,
    emotion: Emotion | None = None,
    ending: str,
) -> str:
    """An in-persona reply in `language` from the tools' outcomes (in their order).

    Greetings, help and small talk need no tools. A failed tool is told honestly and briefly,
    never dressed up as a result. The reply ends with `ending` and then one punctuation mark, and
    stays within MAX_REPLY_CHARS (details and then whole sentences are dropped to fit).
    """
    phrases = _PHRASES[language]
    text = _fold(message)
    expressions = _expressions_with_positions(_with_operator_symbols(text))
    intents = _intents(text, expressions)
    sentences: list[_Sentence] = []
    if Intent.GREETING in intents:
        sentences.append(_Sentence(_greeting(text, phrases), "exclaim"))
    if emotion is not None and emotion.dominant in phrases.openers:
        opener, kind = phrases.openers[emotion.dominant]
        sentences.append(_Sentence(opener, kind, essential=False))
    answered: set[Intent] = set()
    for outcome in outcomes:
        intent = _TOOL_INTENT.get(outcome.call.name)
        if intent is None:
            continue
        answered.add(intent)
        sentences.extend(_describe(language, phrases, intent, outcome))
    # Questions back to the user go last, where the reader's turn begins.
    questions: list[_Sentence] = []
    if Intent.WEATHER in intents and Intent.WEATHER not in answered:
        questions.append(_Sentence(phrases.ask_place, "question"))
    if Intent.CALCULATION in intents and Intent.CALCULATION not in answered:
        if expressions:
            sentences.append(_Sentence(phrases.calculation_down, "sorry"))
        else:
            questions.append(_Sentence(phrases.ask_expression, "question"))
    for intent, down in ((Intent.TIME, phrases.time_down), (Intent.FORTUNE, phrases.fortune_down)):
        if intent in intents and intent not in answered:
            sentences.append(_Sentence(down, "sorry"))
    if Intent.HELP in intents:
        sentences.extend(_Sentence(line) for line in phrases.help)
    sentences.extend(questions)
    if not answered and intents == [Intent.SMALL_TALK]:
        choice = zlib.crc32(message.encode("utf-8", "replace")) % len(phrases.small_talk)
        sentences.append(_Sentence(phrases.small_talk[choice], essential=False))
        sentences.append(_Sentence(phrases.offer))
    if not sentences or all(not s.essential for s in sentences):
        sentences.append(_Sentence(phrases.offer))
    return _fit(language, sentences, ending)


def _fit(language: Language, sentences: list[_Sentence], ending: str) -> str:
    reply = _finish(language, sentences, ending)
    if len(reply) <= MAX_REPLY_CHARS:
        return reply
    kept = [s for s in sentences if s.essential] or sentences[:1]
    while True:
        reply = _finish(language, kept, ending)
        if len(reply) <= MAX_REPLY_CHARS or len(kept) == 1:
            return reply
        kept.pop()


def _greeting(text: str, phrases: _Phrases) -> str:
    match = _GREETING_RE.search(text)
    if match and (match["ja_morning"] or match["en_morning"] or match["ko_morning"]):
        return phrases.greeting_morning
    if match and (match["ja_evening"] or match["en_evening"]):
        return phrases.greeting_evening
    return phrases.greeting


def _describe(
    language: Language, phrases: _Phrases, intent: Intent, outcome: ToolOutcome
) -> list[_Sentence]:
    arguments = _arguments(outcome.call.arguments)
    result = outcome.result if isinstance(outcome.result, dict) else {}
    asked_place = _clean(arguments.get("place"), MAX_PLACE_CHARS)
    failed = outcome.status in _FAILED or "error" in result
    if intent is Intent.CALCULATION:
        return _describe_calculation(language, phrases, arguments, result, outcome.status, failed)
    if failed and outcome.status == ToolStatus.INVALID_ARGUMENT and asked_place:
        return [_Sentence(phrases.no_place.format(place=asked_place), "sorry")]
    describe: dict[Intent, Callable[[Language, _Phrases, str, dict[str, Any]], list[_Sentence]]]
    describe = {
        Intent.TIME: _describe_time,
        Intent.WEATHER: _describe_weather,
        Intent.FORTUNE: _describe_fortune,
    }
    sentences = [] if failed else describe[intent](language, phrases, asked_place, result)
    if sentences:
        return sentences
    if intent is Intent.TIME:
        return [_Sentence(phrases.time_down, "sorry")]
    if intent is Intent.WEATHER:
        if asked_place:
            return [_Sentence(phrases.weather_down_place.format(place=asked_place), "sorry")]
        return [_Sentence(phrases.weather_down, "sorry")]
    return [_Sentence(phrases.fortune_down, "sorry")]


def _describe_time(
    language: Language, phrases: _Phrases, asked_place: str, result: dict[str, Any]
) -> list[_Sentence]:
    clock = _CLOCK_RE.search(_clean(_field(result, "local_time"), 64))
    if not clock:
        return []
    weekday_en = _clean(_field(result, "weekday"), 16)
    weekday = phrases.weekdays.get(weekday_en, weekday_en) if weekday_en else ""
    if weekday:
        weekday = {"ja": "（{}）", "en": " ({})", "ko": "({})"}[language].format(weekday)
    place = _place_for(language, asked_place, _clean(_field(result, "place"), MAX_PLACE_CHARS))
    template = phrases.time_place if place else phrases.time_here
    time = f"{clock[1]}:{clock[2]}"
    return [_Sentence(template.format(place=place, time=time, weekday=weekday))]


def _describe_weather(
    language: Language, phrases: _Phrases, asked_place: str, result: dict[str, Any]
) -> list[_Sentence]:
    description = _clean(_field(result, "description"), 40)
    temperature = _number(_field(result, "temperature_c"))
    if not description and temperature is None:
        return []
    high = _number(_field(result, "today_max_c"))
    low = _number(_field(result, "today_min_c"))
    rain = _number(_field(result, "precipitation_probability_percent"))
    place = _place_for(language, asked_place, _clean(_field(result, "place"), MAX_PLACE_CHARS))
    clauses: list[str] = []
    if description:
        if language == "en" and description[:2].istitle():
            description = description[0].lower() + description[1:]  # "it's clear sky"
        clauses.append(description)
    if language == "ja":
        if temperature is not None:
            range_ = f"（最高{_deg(high)}℃・最低{_deg(low)}℃）" if high is not None else ""
            clauses.append(f"気温{_deg(temperature)}℃{range_}")
        if rain is not None:
            clauses.append(f"降水確率{round(rain)}%")
        details = "、".join(clauses)
    elif language == "en":
        if temperature is not None:
            range_ = f" (high {_deg(high)}°C, low {_deg(low)}°C)" if high is not None else ""
            clauses.append(f"{_deg(temperature)}°C{range_}")
        if rain is not None:
            clauses.append(f"with a {round(rain)}% chance of rain")
        details = ", ".join(clauses)
    else:
        if temperature is not None:
            range_ = f"(최고 {_deg(high)}도, 최저 {_deg(low)}도)" if high is not None else ""
            clauses.append(f"기온 {_deg(temperature)}도{range_}")
        if rain is not None:
            clauses.append(f"강수 확률 {round(rain)}%")
        details = ", ".join(clauses)
        # Korean needs the copula; its form depends on the last sound ("맑음이다", "10%다").
        details += _ko_copula(details)
    if not place:
        place = {"ja": "そちら", "en": "your area", "ko": "그쪽"}[language]
    sentences = [_Sentence(phrases.weather.format(place=place, details=details))]
    if rain is not None and rain >= 50:
        sentences.append(_Sentence(phrases.rain_hint, essential=False))
    return sentences


def _describe_fortune(
    language: Language, phrases: _Phrases, asked_place: str, result: dict[str, Any]
) -> list[_Sentence]:
    label = _clean(_field(result, "label"), 24)
    if not label:
        return []
    copula = _ko_copula(label) if language == "ko" else ""
    sentences = [_Sentence(phrases.fortune.format(label=label) + copula)]
    message = _clean(_field(result, "message"), 100)
    if message:
        sentences.append(_Sentence(message, "raw", essential=False))
    item = _clean(_field(result, "lucky_item"), 30)
    if item:
        copula = _ko_copula(item) if language == "ko" else ""
        sentences.append(_Sentence(phrases.lucky_item.format(item=item) + copula, essential=False))
    return sentences


def _describe_calculation(
    language: Language,
    phrases: _Phrases,
    arguments: dict[str, Any],
    result: dict[str, Any],
    status: ToolStatus,
    failed: bool,
) -> list[_Sentence]:
    expression = _clean(arguments.get("expression"), 40) or "?"
    value = _clean(_field(result, "result"), 5000)
    if failed or not value:
        if status == ToolStatus.INVALID_ARGUMENT:
            error = str(result.get("error", "")).lower()
            if "zero" in error:
                return [_Sentence(phrases.division_by_zero, "sorry")]
            return [_Sentence(phrases.bad_expression.format(expression=expression), "sorry")]
        return [_Sentence(phrases.calculation_down, "sorry")]
    digits = sum(char.isdigit() for char in value)
    if len(value) > 40:
        value = phrases.big_number.format(head=value[:20], digits=digits)
    copula = _ko_copula(value) if language == "ko" else ""
    return [_Sentence(phrases.calculation.format(expression=expression, result=value) + copula)]


def _arguments(text: str) -> dict[str, Any]:
    try:
        parsed = json.loads(text)
    except (ValueError, TypeError, RecursionError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _field(result: dict[str, Any], name: str) -> Any:
    """A result field by its proto name, or by its JSON (lowerCamelCase) name."""
    if name in result:
        return result[name]
    head, *rest = name.split("_")
    return result.get(head + "".join(part.title() for part in rest))


def _clean(value: Any, limit: int) -> str:
    if not isinstance(value, str):
        return ""
    text = " ".join(_CONTROL_RE.sub(" ", value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number == number and abs(number) < 1e6 else None


def _deg(value: float | None) -> str:
    if value is None:
        return "?"
    rounded = round(value, 1) + 0.0  # + 0.0 turns -0.0 into 0.0
    return f"{rounded:g}"


def _place_for(language: Language, asked: str, resolved: str) -> str:
    """The place as the user wrote it; in English, the tool's English name reads best."""
    if language == "en":
        return resolved or asked
    return asked or resolved


# Sino-Korean readings of a final digit: those ending in a vowel take the copula 다, the others
# 이다. A trailing zero is read as a power of ten (십, 백, 천, 만), all of which end in a consonant.
_KO_VOWEL_DIGITS: Final = frozenset("2459")


def _ko_copula(text: str) -> str:
    last = text.rstrip(" )）」'\"…")[-1:] or "다"
    if "가" <= last <= "힣":
        return "이다" if (ord(last) - 0xAC00) % 28 else "다"
    if last == "%":
        return "다"  # 퍼센트
    if last.isdigit():
        return "다" if last in _KO_VOWEL_DIGITS else "이다"
    return "이다"
