"""Places the planner takes from a message when it has the gazetteer: only words it knows."""

from __future__ import annotations

import time

import pytest

from services.common.gazetteer import Gazetteer, Place, load_gazetteer
from services.orchestrator.planner import Intent, PlannedCall, analyse, plan
from services.orchestrator.planner.places import MAX_PLACE_LOOKUPS

T, W, F = Intent.TIME, Intent.WEATHER, Intent.FORTUNE


@pytest.fixture(scope="module")
def gazetteer() -> Gazetteer:
    return load_gazetteer()


def planned(message: str, places: Gazetteer | None, default_place: str = "") -> list[PlannedCall]:
    return plan(analyse(message, places), default_place=default_place)


def test_a_request_repeated_is_not_about_a_place_called_ichido(gazetteer: Gazetteer) -> None:
    assert planned("もう一度時刻を取得", gazetteer) == [PlannedCall(T, {})]
    # Without the gazetteer the words before the request are taken for the place, as before.
    assert planned("もう一度時刻を取得", None) == [PlannedCall(T, {"place": "一度"})]


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("東京の天気は？", [PlannedCall(W, {"place": "東京"})]),
        ("ニューヨークは何時？", [PlannedCall(T, {"place": "ニューヨーク"})]),
        ("weather in New York", [PlannedCall(W, {"place": "New York"})]),
        ("서울 날씨 어때?", [PlannedCall(W, {"place": "서울"})]),
        # Names written in hiragana, which without the gazetteer cannot be told from particles.
        ("おおさかの天気", [PlannedCall(W, {"place": "おおさか"})]),
        ("今日のおおさかの天気は？", [PlannedCall(W, {"place": "おおさか"})]),
        ("きょうとは何時？", [PlannedCall(T, {"place": "きょうと"})]),
        # The longest tail the gazetteer knows; the longest head after "in".
        ("明日東京の天気", [PlannedCall(W, {"place": "東京"})]),
        ("今日は東京の天気どう？", [PlannedCall(W, {"place": "東京"})]),
        ("サンフランシスコの天気", [PlannedCall(W, {"place": "サンフランシスコ"})]),
        ("time in tokyo japan", [PlannedCall(T, {"place": "tokyo"})]),
        ("What's the weather in Sao Paulo this week?", [PlannedCall(W, {"place": "Sao Paulo"})]),
        # A Korean place a few words before its request.
        ("서울에 사는 친구 날씨 어때", [PlannedCall(W, {"place": "서울"})]),
        # 今治 (Imabari) begins with 今, "now"; it is still a city.
        ("今治の天気", [PlannedCall(W, {"place": "今治"})]),
    ],
)
def test_places_the_gazetteer_knows_are_kept(
    gazetteer: Gazetteer, message: str, expected: list[PlannedCall]
) -> None:
    assert planned(message, gazetteer) == expected


def test_the_seed_message_calls_all_three_tools(gazetteer: Gazetteer) -> None:
    message = "今何時で、天気はどうで、ついでに運勢も教えて"
    expected = [PlannedCall(T, {}), PlannedCall(W, {"place": "東京"}), PlannedCall(F, {})]
    assert planned(message, gazetteer, default_place="東京") == expected
    assert planned(message, None, default_place="東京") == expected


# Everyday words before a request, measured against geonames: each of these is a town somewhere
# in its alternate names (or a tail of it is), and none is a place to the user.
EVERYDAY = [
    # Hiragana that matches katakana names of towns abroad (the index folds them alike).
    "みんな",
    "そう",
    "から",
    "まる",
    "なら",
    "あさって",
    # Single characters and everyday kanji that geonames has as Chinese or other names.
    "上",
    "北",
    "新",
    "温泉",
    "中心",
    "自由",
    "東方",
    "明日南",
    # Tails inside a katakana word: アメリカ is no リカ, フランス no ランス, レストラン no トラン.
    "アメリカ",
    "フランス",
    "レストラン",
    "カレー",
    "プール",
    "ゲーム",
    "日本",
]


@pytest.mark.parametrize("word", EVERYDAY)
@pytest.mark.parametrize("template", ["{}の天気は？", "{}は何時？", "明日{}の天気"])
def test_everyday_japanese_words_are_not_places(
    gazetteer: Gazetteer, word: str, template: str
) -> None:
    analysis = analyse(template.format(word), gazetteer)
    assert dict(analysis.places) == {}, analysis.places


@pytest.mark.parametrize(
    "word", ["area", "downtown", "center", "park", "sea", "airport", "dad", "home", "work"]
)
@pytest.mark.parametrize("template", ["weather in the {}", "what time is it in {}?", "{} weather?"])
def test_everyday_english_words_are_not_places(
    gazetteer: Gazetteer, word: str, template: str
) -> None:
    message = template.format(word.title() if template.startswith("{}") else word)
    assert dict(analyse(message, gazetteer).places) == {}


@pytest.mark.parametrize("word", ["집", "회사", "학교", "동네", "밖", "비", "친구", "우리집"])
def test_everyday_korean_words_are_not_places(gazetteer: Gazetteer, word: str) -> None:
    assert dict(analyse(f"{word} 날씨 어때?", gazetteer).places) == {}


def test_a_weather_question_about_an_everyday_word_asks_for_the_default_place(
    gazetteer: Gazetteer,
) -> None:
    assert planned("みんなの天気は？", gazetteer, default_place="札幌") == [
        PlannedCall(W, {"place": "札幌"})
    ]
    assert planned("みんなの天気は？", gazetteer) == []  # and without one, the reply asks where


class CountingLookup:
    def __init__(self, known: dict[str, Place] | None = None) -> None:
        self.known = known or {}
        self.asked: list[str] = []

    def find(self, name: str) -> Place | None:
        self.asked.append(name)
        return self.known.get(name)


@pytest.mark.parametrize(
    "message",
    [
        ("あいうえおかきくけこさしすせそ天気" * 200)[:4000],
        ("東京タワーの近くの天気、" * 400)[:4000],
        ("weather in qwx zzy yyx wvu tsr, " * 200)[:4000],
        ("가나다라 마바사 아자차 날씨 " * 300)[:4000],
    ],
)
def test_lookups_per_message_are_bounded(message: str) -> None:
    lookup = CountingLookup()
    analyse(message, lookup)
    assert 0 < len(lookup.asked) <= MAX_PLACE_LOOKUPS
    assert all(len(name) <= 60 for name in lookup.asked)


def test_a_known_name_is_looked_up_once_not_per_spelling() -> None:
    tokyo = Place("Tokyo", "JP", 35.7, 139.7, "Asia/Tokyo", 9_000_000)
    lookup = CountingLookup({"東京": tokyo})
    assert planned("明日の東京の天気", lookup) == [PlannedCall(W, {"place": "東京"})]  # type: ignore[arg-type]
    # 明日の東京 and 日の東京 and の東京 before 東京: the tails, longest first, within a bound.
    assert lookup.asked[-1] == "東京"
    assert len(lookup.asked) <= 4


@pytest.mark.parametrize(
    "message",
    [
        ("東京" * 19 + "の天気") * 190,
        ("ああああああああああああああああの天気" * 300),
        "in Paris " * 444,
        "서울 날씨 " * 666,
        ("today the weather in " + "New York " * 5) * 100,
    ],
)
def test_hostile_messages_with_the_gazetteer_stay_fast(gazetteer: Gazetteer, message: str) -> None:
    started = time.perf_counter()
    plan(analyse(message[:4000], gazetteer), default_place="東京")
    assert time.perf_counter() - started < 0.05
