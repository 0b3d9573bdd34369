"""The reply: sentences from the analysis and the tools' outcomes, fitted to the persona.

Tool results are untrusted input: every field is checked for type, cleaned of control
characters and cut to a bound before it is written into a sentence, and a field that is missing
is never invented.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from services.common.language import Language
from services.orchestrator.model import Emotion, ToolOutcome, ToolStatus
from services.orchestrator.planner.analysis import Analysis
from services.orchestrator.planner.intents import TOOL_INTENTS, Greeting, Intent
from services.orchestrator.planner.phrases import PHRASES, Kind, Phrases
from services.orchestrator.planner.places import MAX_PLACE_CHARS

MAX_REPLY_CHARS: Final = 300


@dataclass(frozen=True, slots=True)
class _Sentence:
    """A sentence without its final punctuation; the last one of a reply carries the ending."""

    text: str
    kind: Kind = "statement"
    essential: bool = True


# The persona guard accepts the ending followed by at most one of 。！!？?, so a sorry sentence
# ends in 。 in Japanese and with no mark at all elsewhere ("." would fail the guard).
_LAST_MARK: Final[dict[Language, dict[Kind, str]]] = {
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


_FAILED: Final = frozenset(
    {ToolStatus.FALLBACK, ToolStatus.CIRCUIT_OPEN, ToolStatus.INVALID_ARGUMENT, ToolStatus.REJECTED}
)
_CLOCK_RE: Final = re.compile(r"T(\d{2}):(\d{2})")
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")


def compose(
    analysis: Analysis,
    language: Language,
    results: Sequence[tuple[Intent, ToolOutcome]],
    *,
    emotion: Emotion | None = None,
    ending: str,
) -> str:
    """An in-persona reply in `language` to the analysed message, from the tools' outcomes (in
    their order), each with the intent its tool answers.

    Greetings, help and small talk need no tools. A failed tool is told honestly and briefly,
    never dressed up as a result. The reply ends with `ending` and then one punctuation mark, and
    stays within MAX_REPLY_CHARS (details and then whole sentences are dropped to fit).
    """
    phrases = PHRASES[language]
    intents = analysis.intents
    sentences: list[_Sentence] = []
    if analysis.greeting is not None:
        sentences.append(_Sentence(_greeting(analysis.greeting, phrases), "exclaim"))
    if emotion is not None and emotion.dominant in phrases.openers:
        opener, kind = phrases.openers[emotion.dominant]
        sentences.append(_Sentence(opener, kind, essential=False))
    answered: set[Intent] = set()
    for intent, outcome in results:
        if intent not in TOOL_INTENTS:
            continue
        answered.add(intent)
        sentences.extend(_describe(language, phrases, intent, outcome))
    # Questions back to the user go last, where the reader's turn begins.
    questions: list[_Sentence] = []
    if Intent.WEATHER in intents and Intent.WEATHER not in answered:
        questions.append(_Sentence(phrases.ask_place, "question"))
    if Intent.CALCULATION in intents and Intent.CALCULATION not in answered:
        if analysis.expressions:
            sentences.append(_Sentence(phrases.calculation_down, "sorry"))
        else:
            questions.append(_Sentence(phrases.ask_expression, "question"))
    for intent, down in ((Intent.TIME, phrases.time_down), (Intent.FORTUNE, phrases.fortune_down)):
        if intent in intents and intent not in answered:
            sentences.append(_Sentence(down, "sorry"))
    if Intent.HELP in intents:
        sentences.extend(_Sentence(line) for line in phrases.help)
    sentences.extend(questions)
    if not answered and intents == (Intent.SMALL_TALK,):
        choice = analysis.variant % len(phrases.small_talk)
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


def _greeting(greeting: Greeting, phrases: Phrases) -> str:
    if greeting is Greeting.MORNING:
        return phrases.greeting_morning
    if greeting is Greeting.EVENING:
        return phrases.greeting_evening
    return phrases.greeting


def _describe(
    language: Language, phrases: Phrases, intent: Intent, outcome: ToolOutcome
) -> list[_Sentence]:
    arguments = _arguments(outcome.call.arguments)
    result = outcome.result if isinstance(outcome.result, dict) else {}
    asked_place = _clean(arguments.get("place"), MAX_PLACE_CHARS)
    failed = outcome.status in _FAILED or "error" in result
    if intent is Intent.CALCULATION:
        return _describe_calculation(language, phrases, arguments, result, outcome.status, failed)
    if failed and outcome.status == ToolStatus.INVALID_ARGUMENT and asked_place:
        return [_Sentence(phrases.no_place.format(place=asked_place), "sorry")]
    describe: dict[Intent, Callable[[Language, Phrases, str, dict[str, Any]], list[_Sentence]]]
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
    language: Language, phrases: Phrases, asked_place: str, result: dict[str, Any]
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
    language: Language, phrases: Phrases, asked_place: str, result: dict[str, Any]
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
    language: Language, phrases: Phrases, asked_place: str, result: dict[str, Any]
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
    phrases: Phrases,
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
