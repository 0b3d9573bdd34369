"""The place each time and weather request of a message is about.

A place written next to its request ("東京は何時で、大阪の天気は？", "time in Tokyo and the weather
in Paris") belongs to that request; a single place named once serves both.

Given a `PlaceLookup` (the gazetteer), a place is only ever a word the gazetteer knows: of the
words before a request, the longest tail that names a place ("明日の東京" -> 東京, "もう一度" ->
nothing), and of the words after "in"/"for", the longest head ("tokyo japan" -> tokyo). That
also finds names written in hiragana (「おおさかの天気」), which without a lookup cannot be told
from the particles around them. Every candidate is bounded in length and the lookups of one
message are counted, so the work stays linear in the message.

The lookup is strict where geonames is loose, as measured on everyday words: its alternate names
turn 上, 北 and 新 into towns, its katakana names (which the gazetteer folds into hiragana) turn
から, そう and みんな into towns in Togo, Indonesia and Nigeria, and some Chinese names are
everyday Japanese words (温泉, 自由, 東方). So a name is at least two characters, a name written in
hiragana only is at least three and must be in Japan, and a short list of measured everyday words
is never a place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Protocol

from services.common.gazetteer import Place
from services.orchestrator.planner.intents import Intent
from services.orchestrator.planner.text import words

MAX_PLACE_CHARS: Final = 60
# The longest tail of Japanese text tried as a name (サンフランシスコ市 has 9 characters), and the
# most gazetteer lookups one message may cost.
MAX_NAME_CHARS: Final = 16
MAX_PLACE_LOOKUPS: Final = 64
# The most words read back from a Korean request for its place.
_KO_WORDS_BACK: Final = 3


class PlaceLookup(Protocol):
    """Anything that knows places by name: the gazetteer."""

    def find(self, name: str, /) -> Place | None: ...


@dataclass(frozen=True, slots=True)
class Anchor:
    """Where a time, weather or fortune request is written in the message."""

    start: int
    end: int
    intent: Intent


_WINDOW_CHARS: Final = 40
_JA_PLACE_BEFORE_RE: Final = re.compile(
    r"([A-Za-zＡ-Ｚａ-ｚ\u3400-\u4DBF\u4E00-\u9FFF々\u30A0-\u30FF\uFF66-\uFF9F]"
    r"[A-Za-zＡ-Ｚａ-ｚ\u3400-\u4DBF\u4E00-\u9FFF々\u30A0-\u30FF\uFF66-\uFF9F ]*?)"
    r"\s*(?:の|は|って|では|で|に|も)?\s*(?:(?:今日|明日|今|いま|現在|今夜)の?)?\s*$"
)
# With a lookup: the words between a name and its request, and the run of characters a name
# (now hiragana too) may be written in, read back from the request.
_JA_TRAILER_RE: Final = re.compile(
    r"\s*(?:の|は|って|では|で|に|も)?\s*(?:(?:今日|明日|今|いま|現在|今夜)の?)?\s*$"
)
_JA_NAME_RUN_RE: Final = re.compile(
    r"[A-Za-zＡ-Ｚａ-ｚ\u3041-\u309F\u3400-\u4DBF\u4E00-\u9FFF々\u30A0-\u30FF\uFF66-\uFF9F]"
    r"[A-Za-zＡ-Ｚａ-ｚ\u3041-\u309F\u3400-\u4DBF\u4E00-\u9FFF々\u30A0-\u30FF\uFF66-\uFF9F ]*$"
)
_JA_PARTICLE_RE: Final = re.compile(r"\s*(?:の|は|って|で|に|も)")
_JA_TIME_WORDS: Final = ("明後日", "今日", "明日", "昨日", "現在", "今夜", "今朝", "週末", "今")
_NOT_A_PLACE_RE: Final = re.compile(
    r"何時|時間|時刻|天気|天候|気温|予報|運勢|占い|計算|ヘルプ|날씨|시간|운세|기온|계산"
    r"|\b(?:weather|time|forecast|temperature|fortune)\b",
    re.IGNORECASE,
)
# A name does not begin with these: small kana, the long-vowel mark, the iteration mark.
_NOT_A_NAME_START: Final = frozenset("ぁぃぅぇぉっゃゅょゎァィゥェォッャュョヮヵヶーｰ々ゝゞヽヾ")
_HIRAGANA_RE: Final = re.compile(r"[\u3041-\u309F]+")
_KATAKANA_RE: Final = re.compile(r"[\u30A0-\u30FF\uFF66-\uFF9F]")
# Particles that end the word before a name written in hiragana.
_PARTICLES: Final = frozenset("のはがをにでともへや")
# Everyday words (and surnames) that geonames knows as places abroad, measured (see the module
# docstring); the English ones are among the stop words below.
_NOT_PLACE_WORDS: Final = (
    "中心 温泉 東方 新市 山頂 河口 平原 新城 中村 田中 自由 太平 光明 民主 プール カレー"
)
_NOT_PLACES: Final = frozenset(_NOT_PLACE_WORDS.split())
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
    rf"(?:{words('in', 'for')})\s+(?=([a-z][a-z.'’-]*(?:[ \t]+[a-z][a-z.'’-]*){{0,4}}))"
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
    downtown center centre park sea airport home work office dad luck
"""
_EN_STOP_WORDS: Final = frozenset(_EN_STOP_TEXT.split())


def find_places(
    text: str, folded: str, anchors: list[Anchor], lookup: PlaceLookup | None
) -> dict[Intent, str]:
    """The place of each time and weather request that names one (see the module docstring).

    `text` is the scanned message, `folded` the same with letters in lower case, `anchors` the
    requests in the order they are written."""
    names = _Names(lookup)
    places: dict[Intent, str] = {}
    previous_end = 0
    for anchor in anchors:
        if anchor.intent is not Intent.FORTUNE and anchor.intent not in places:
            # The words between the previous request and this one are where this one's place is.
            window = text[max(previous_end, anchor.start - _WINDOW_CHARS) : anchor.start]
            place = _place_before(window, names)
            if place:
                places[anchor.intent] = place
        previous_end = max(previous_end, anchor.end)
    for match in _EN_PLACE_AFTER_RE.finditer(folded):
        owner = _owner(anchors, match.start())
        if owner is None or owner in places:
            continue
        place = _english_place(text[match.start(1) : match.end(1)].split(), names)
        if place:
            places[owner] = place
    distinct = set(places.values())
    if len(distinct) == 1:
        (only,) = distinct
        for intent in (Intent.TIME, Intent.WEATHER):
            places.setdefault(intent, only)
    return places


class _Names:
    """Which candidates name a place: without a lookup every candidate does (the words around it
    already say it is one); with a lookup, those it knows, within MAX_PLACE_LOOKUPS."""

    __slots__ = ("_left", "_lookup")

    def __init__(self, lookup: PlaceLookup | None) -> None:
        self._lookup = lookup
        self._left = MAX_PLACE_LOOKUPS

    @property
    def checked(self) -> bool:
        return self._lookup is not None

    def known(self, name: str) -> bool:
        if self._lookup is None:
            return True
        if self._left <= 0 or len(name) < 2 or name in _NOT_PLACES:
            return False
        hiragana_only = _HIRAGANA_RE.fullmatch(name) is not None
        if hiragana_only and len(name) < 3:
            return False
        self._left -= 1
        place = self._lookup.find(name)
        if place is None:
            return False
        # Hiragana spells a Japanese reading: a match abroad is a katakana name folded alike.
        return not hiragana_only or place.country_code == "JP"


def _owner(anchors: list[Anchor], position: int) -> Intent | None:
    """The time or weather request an "in X" after it (or, failing that, before it) belongs to."""
    before = [a for a in anchors if a.start < position and a.intent is not Intent.FORTUNE]
    if before:
        return before[-1].intent
    after = [a for a in anchors if a.intent is not Intent.FORTUNE]
    return after[0].intent if after else None


def _place_before(window: str, names: _Names) -> str:
    japanese = _japanese_known(window, names) if names.checked else _japanese_place(window)
    return japanese or _korean_place(window, names) or _english_place_before(window, names)


def _japanese_place(window: str) -> str:
    """Without a lookup: the run of kanji, katakana or Latin letters before the request."""
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


def _japanese_known(window: str, names: _Names) -> str:
    """With a lookup: the longest tail of the words before the request that names a place."""
    trailer = _JA_TRAILER_RE.search(window)
    head = window[: trailer.start()] if trailer else window
    run = _JA_NAME_RUN_RE.search(head, max(0, len(head) - MAX_NAME_CHARS))
    if not run:
        return ""
    if run.group().isascii() and not _JA_PARTICLE_RE.match(window, run.end()):
        return ""  # as above: the English reader's
    name_run = run.group()
    inside_time_word = _inside_time_words(name_run)
    for start in range(len(name_run) - 1):
        if start in inside_time_word or not _may_start_name(name_run, start):
            continue
        tail = name_run[start:].strip()
        if tail in _JA_TIME_WORDS or _NOT_A_PLACE_RE.search(tail):
            continue
        if names.known(tail):
            return tail[:MAX_PLACE_CHARS]
    return ""


def _may_start_name(run: str, start: int) -> bool:
    """Whether a name may begin at `start` of a run of Japanese text: not inside a word of
    Latin letters or katakana (アメリカ is not リカ), and after hiragana only where a particle
    ends the word before (今日のおおさか, but not あさって -> さって)."""
    char = run[start]
    if char == " " or char in _NOT_A_NAME_START:
        return False
    if start == 0:
        return True
    before = run[start - 1]
    if char.isascii() and before.isascii() and before != " ":
        return False
    if _KATAKANA_RE.match(char) and _KATAKANA_RE.match(before):
        return False
    return not (_HIRAGANA_RE.match(char) and _HIRAGANA_RE.match(before)) or before in _PARTICLES


def _inside_time_words(run: str) -> set[int]:
    """The positions strictly inside a time word of the run: 明日南 is not 日南, 今日本 not 日本."""
    inside: set[int] = set()
    for word in _JA_TIME_WORDS:
        start = run.find(word)
        while start >= 0:
            inside.update(range(start + 1, start + len(word)))
            start = run.find(word, start + 1)
    return inside


def _korean_place(window: str, names: _Names) -> str:
    words_before: list[str] = _KO_WORD_RE.findall(window)
    tried = 0
    for word in reversed(words_before):
        if word.isascii():
            return ""
        stem = word
        for particle in _KO_PARTICLES:
            if stem.endswith(particle) and len(stem) - len(particle) >= 2:
                stem = stem[: -len(particle)]
                break
        if word in _KO_NOT_PLACES or stem in _KO_NOT_PLACES:
            continue
        if not names.checked:
            if len(stem) < 2 or _NOT_A_PLACE_RE.search(stem):
                return ""
            return stem[:MAX_PLACE_CHARS]
        if not _NOT_A_PLACE_RE.search(word):
            for name in dict.fromkeys((stem, word)):
                if names.known(name):
                    return name[:MAX_PLACE_CHARS]
        tried += 1
        if tried == _KO_WORDS_BACK:
            return ""
    return ""


def _english_place_before(window: str, names: _Names) -> str:
    match = _EN_PLACE_BEFORE_RE.search(window)
    if not match or _EN_PREPOSITION_BEFORE_RE.search(window, 0, match.start(1)):
        # "weather in Paris and time": Paris is the weather's place, found after "in".
        return ""
    kept: list[str] = []
    for word in reversed(match.group(1).split()):
        if word.lower() in _EN_STOP_WORDS:
            break
        kept.append(word)
    kept.reverse()
    # The longest run of the last words that names a place: "Visiting Tokyo" -> "Tokyo".
    for start in range(len(kept)):
        place = " ".join(kept[start:])[:MAX_PLACE_CHARS]
        if names.known(place):
            return place
    return ""


def _english_place(after: list[str], names: _Names) -> str:
    kept: list[str] = []
    for index, word in enumerate(after):
        if word.lower().rstrip(".") in _EN_STOP_WORDS:
            if index == 0 and word.lower() == "the":
                continue
            break
        kept.append(word)
    # The longest run of the first words that names a place: "tokyo japan" -> "tokyo".
    for end in range(len(kept), 0, -1):
        place = " ".join(kept[:end]).rstrip(".'’-")
        if place and not _NOT_A_PLACE_RE.search(place) and names.known(place[:MAX_PLACE_CHARS]):
            return place[:MAX_PLACE_CHARS]
        if not names.checked:
            return ""
    return ""
