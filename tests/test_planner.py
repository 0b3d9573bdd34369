"""The local planner understands ja/en/ko requests, plans the right tool calls and answers in
persona, honestly, in the user's language."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.gazetteer import Gazetteer, load_gazetteer
from services.common.language import Language
from services.orchestrator.model import Emotion, ToolCallRequest, ToolOutcome, ToolStatus
from services.orchestrator.planner import (
    MAX_REPLY_CHARS,
    TOOL_INTENTS,
    Analysis,
    Greeting,
    Intent,
    PlannedCall,
    analyse,
    compose,
    plan,
)
from services.tools.calculator import calculate

T, W, F, C = Intent.TIME, Intent.WEATHER, Intent.FORTUNE, Intent.CALCULATION
G, H, S = Intent.GREETING, Intent.HELP, Intent.SMALL_TALK
# The orchestrator's names for the tools, only to build the outcomes compose is given.
TOOL_NAMES = {T: "get_time", W: "get_weather", F: "get_fortune", C: "calculate"}

ENDINGS: dict[Language, str] = {"ja": "にゃん", "en": "nyan", "ko": "냥"}
KANA = re.compile(r"[\u3040-\u30ff]")
HANGUL = re.compile(r"[\uac00-\ud7a3]")
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7a3\uff00-\uffef]")


def assert_in_persona(reply: str, language: Language, quoted: Sequence[str] = ()) -> None:
    """The reply ends in the persona's ending, fits, and is written in `language`, but for the
    `quoted` words (places and expressions as the user wrote them)."""
    ending = ENDINGS[language]
    assert re.search(re.escape(ending) + r"[。！!？?]?$", reply), reply
    assert len(reply) <= MAX_REPLY_CHARS, (len(reply), reply)
    for words in sorted(quoted, key=len, reverse=True):
        reply = reply.replace(words, "")
    if language == "ja":
        assert KANA.search(reply), reply
    elif language == "ko":
        assert HANGUL.search(reply), reply
        assert not KANA.search(reply), reply
    else:
        assert not CJK.search(reply), reply


# --- Intents --------------------------------------------------------------------------------------

INTENTS: list[tuple[str, list[Intent]]] = [
    # Japanese.
    ("今何時で、天気はどうで、ついでに運勢も教えて", [T, W, F]),
    ("東京は何時で、大阪の天気は？", [T, W]),
    ("ニューヨークは何時？", [T]),
    ("大阪の時間を教えて", [T]),
    ("明日は雨？", [W]),
    ("今日のおみくじ引いて", [F]),
    ("12×(3+4)は？", [C]),
    ("3たす4は？", [C]),
    ("計算して", [C]),
    ("こんにちは！今日の運勢は？", [G, F]),
    ("おはよう、今日の天気は？", [G, W]),
    ("何ができるの？", [H]),
    ("ヘルプ", [H]),
    ("今日は疲れた", [S]),
    ("時間がない", [S]),
    ("何時間かかる？", [S]),
    ("猫が2匹いるよ", [S]),
    # English.
    ("What time is it in New York?", [T]),
    ("What's the weather in Paris?", [W]),
    ("Tell me my fortune and the time in London", [F, T]),
    ("Hello! What is 12*(3+4)?", [G, C]),
    ("calculate sqrt(2) * 3", [C]),
    ("what is 10 divided by 2", [C]),
    ("Hey, will it rain tomorrow?", [G, W]),
    ("What can you do?", [H]),
    ("help", [H]),
    ("I had a great time", [S]),
    ("I have 2 cats", [S]),
    ("2026-11-26 is my birthday", [S]),
    ("Good luck on your exam!", [S]),
    ("Unfortunately this thing is broken", [S]),
    ("We offer 24/7 support", [S]),
    ("COVID-19 is over", [S]),
    ("Call me at 090-1234-5678", [S]),
    ("this is a thing", [S]),
    # Korean.
    ("서울 날씨 어때?", [W]),
    ("뉴욕은 몇 시야?", [T]),
    ("지금 몇 시고 날씨는 어때? 운세도 봐줘", [T, W, F]),
    ("안녕하세요! 오늘 운세 좀 봐줘", [G, F]),
    ("3 더하기 4는?", [C]),
    ("계산해줘", [C]),
    ("도움말", [H]),
    ("뭘 할 수 있어?", [H]),
    ("비행기 타러 가", [S]),
    ("시간이 없어", [S]),
    ("몇 시간 걸려?", [S]),
    ("고양이 좋아해", [S]),
]


@pytest.fixture(scope="module")
def gazetteer() -> Gazetteer:
    return load_gazetteer()


@pytest.mark.parametrize(("message", "expected"), INTENTS)
def test_find_intents(message: str, expected: list[Intent], gazetteer: Gazetteer) -> None:
    assert list(analyse(message).intents) == expected
    assert list(analyse(message, gazetteer).intents) == expected


def test_intent_table_covers_every_intent_and_language() -> None:
    seen = {intent for _, intents in INTENTS for intent in intents}
    assert seen == set(Intent)
    assert sum(1 for _, intents in INTENTS if intents == [S]) >= 10


def test_negative_cases_plan_no_tool_calls() -> None:
    for message, expected in INTENTS:
        if expected == [S]:
            assert plan(analyse(message), default_place="Tokyo") == [], message


# --- plan() ---------------------------------------------------------------------------------------


def calls(
    message: str, default_place: str = "", places: Gazetteer | None = None
) -> list[tuple[Intent, dict[str, str]]]:
    planned = plan(analyse(message, places), default_place=default_place)
    return [(c.intent, c.arguments) for c in planned]


PLANS: list[tuple[str, str, list[tuple[Intent, dict[str, str]]]]] = [
    # The three-intent example: no place and no default, so no weather call (the reply asks).
    ("今何時で、天気はどうで、ついでに運勢も教えて", "", [(T, {}), (F, {})]),
    (
        "今何時で、天気はどうで、ついでに運勢も教えて",
        "東京",
        [(T, {}), (W, {"place": "東京"}), (F, {})],
    ),
    # Japanese places.
    ("東京の天気", "", [(W, {"place": "東京"})]),
    ("ニューヨークは何時？", "", [(T, {"place": "ニューヨーク"})]),
    ("大阪の時間を教えて", "", [(T, {"place": "大阪"})]),
    ("明日の東京の天気は？", "", [(W, {"place": "東京"})]),
    ("今日本は何時？", "", [(T, {"place": "日本"})]),
    ("今治の天気", "", [(W, {"place": "今治"})]),
    ("New Yorkは何時？", "", [(T, {"place": "New York"})]),
    ("今日の天気は？", "札幌", [(W, {"place": "札幌"})]),
    # Each place goes to its own request.
    (
        "東京は何時で、大阪の天気は？",
        "",
        [(T, {"place": "東京"}), (W, {"place": "大阪"})],
    ),
    # A single place serves both.
    (
        "東京は何時で、天気は？",
        "",
        [(T, {"place": "東京"}), (W, {"place": "東京"})],
    ),
    # English places.
    ("What's the weather in Paris?", "", [(W, {"place": "Paris"})]),
    ("What time is it in New York right now?", "", [(T, {"place": "New York"})]),
    ("Tokyo weather?", "", [(W, {"place": "Tokyo"})]),
    ("what's the weather in san francisco", "", [(W, {"place": "san francisco"})]),
    (
        "weather in Paris and time in Tokyo",
        "",
        [(W, {"place": "Paris"}), (T, {"place": "Tokyo"})],
    ),
    (
        "What's the weather and time in London?",
        "",
        [(W, {"place": "London"}), (T, {"place": "London"})],
    ),
    ("What's the weather today?", "Berlin", [(W, {"place": "Berlin"})]),
    ("What's the weather in my area?", "", []),
    ("What time is it?", "Berlin", [(T, {})]),
    # Korean places.
    ("서울 날씨 어때?", "", [(W, {"place": "서울"})]),
    ("뉴욕은 몇 시야?", "", [(T, {"place": "뉴욕"})]),
    ("부산의 날씨 알려줘", "", [(W, {"place": "부산"})]),
    ("오늘 서울 날씨는?", "", [(W, {"place": "서울"})]),
    ("지금 몇 시야?", "", [(T, {})]),
    ("지금 몇 시고 날씨는 어때?", "", [(T, {})]),
    (
        "뉴욕은 몇 시고 부산 날씨는?",
        "",
        [(T, {"place": "뉴욕"}), (W, {"place": "부산"})],
    ),
    # Fortune takes no arguments.
    ("운세 봐줘", "", [(F, {})]),
    ("omikuji please", "", [(F, {})]),
]


# Where the gazetteer reads a message differently, and why.
WITH_GAZETTEER: dict[str, list[tuple[Intent, dict[str, str]]]] = {
    # 日本 is a country, not a city: the user's own zone answers.
    "今日本は何時？": [(T, {})],
}


@pytest.mark.parametrize(("message", "default_place", "expected"), PLANS)
def test_plan_places(
    message: str, default_place: str, expected: list[Any], gazetteer: Gazetteer
) -> None:
    assert calls(message, default_place) == expected
    assert calls(message, default_place, gazetteer) == WITH_GAZETTEER.get(message, expected)


EXPRESSIONS: list[tuple[str, list[str], str]] = [
    ("12×(3+4)は？", ["12×(3+4)"], "84"),
    ("what is 2^10?", ["2^10"], "1024"),
    ("calculate sqrt(2) * 3", ["sqrt(2) * 3"], "4.24264068711929"),
    ("3たす4は？", ["3+ 4"], "7"),
    ("10わる4", ["10/ 4"], "2.5"),
    ("what is 10 divided by 2", ["10 / 2"], "5"),
    ("7 times 6", ["7 * 6"], "42"),
    ("3 더하기 4는?", ["3 + 4"], "7"),
    ("100 곱하기 3 계산해줘", ["100 * 3"], "300"),
    ("1,000 + 2,000", ["1000 + 2000"], "3000"),
    ("(2+3)*4 を計算して", ["(2+3)*4"], "20"),
    ("１２＋３０は？", ["１２＋３０"], "42"),
    ("5-3=?", ["5-3"], "2"),
    ("What's 10-3?", ["10-3"], "7"),
    ("計算して: 2026-11-26", ["2026-11-26"], "1989"),
    ("(see 3+4)", ["3+4"], "7"),
    ("2**64", ["2**64"], "18446744073709551616"),
    ("max(1, 2) + 1", ["max(1, 2) + 1"], "3"),
]


@pytest.mark.parametrize(("message", "expected", "value"), EXPRESSIONS)
def test_plan_extracts_expressions_the_calculator_accepts(
    message: str, expected: list[str], value: str
) -> None:
    planned = calls(message)
    assert planned == [(C, {"expression": e}) for e in expected]
    assert calculate(expected[0]).result == value


def test_plan_several_expressions_and_order() -> None:
    planned = calls("What time is it? Also 1+1 and 2*3, and my fortune")
    assert planned == [
        (T, {}),
        (C, {"expression": "1+1"}),
        (C, {"expression": "2*3"}),
        (F, {}),
    ]


def test_plan_speaks_intents_in_the_order_asked() -> None:
    planned = plan(analyse("東京は何時で、大阪の天気は？運勢と 1+2 も"))
    assert planned == [
        PlannedCall(T, {"place": "東京"}),
        PlannedCall(W, {"place": "大阪"}),
        PlannedCall(F, {}),
        PlannedCall(C, {"expression": "1+2"}),
    ]


def test_plan_without_tool_intents_is_empty() -> None:
    assert plan(analyse("こんにちは")) == []
    assert plan(analyse("What can you do?"), default_place="Tokyo") == []
    assert plan(analyse("計算して")) == []


def test_weather_without_any_place_is_no_call() -> None:
    assert plan(analyse("天気は？"), default_place="  ") == []
    assert plan(analyse("天気は？"), default_place=" 札幌 ") == [PlannedCall(W, {"place": "札幌"})]


def test_the_analysis_carries_what_plan_and_compose_need() -> None:
    analysis = analyse("おはよう！東京は何時で、大阪の天気は？ 1+2 と 3*4 も")
    assert analysis.intents == (G, T, W, C)
    assert dict(analysis.places) == {T: "東京", W: "大阪"}
    assert analysis.expressions == ("1+2", "3*4")
    assert analysis.greeting == "morning"
    with pytest.raises(TypeError):
        analysis.places[F] = "x"  # type: ignore[index]


# --- compose() ------------------------------------------------------------------------------------

TIME_RESULT = {
    "local_time": "2026-11-26T09:30:00+09:00",
    "timezone": "Asia/Tokyo",
    "utc_offset": "+09:00",
    "utc_offset_seconds": 32400,
    "weekday": "Thursday",
    "place": "Tokyo",
}
DESCRIPTIONS: list[tuple[Language, str]] = [("ja", "晴れ"), ("en", "Clear sky"), ("ko", "맑음")]
WEATHER_RESULTS: dict[Language, dict[str, Any]] = {
    language: {
        "place": "Osaka",
        "description": description,
        "temperature_c": 12.34,
        "today_max_c": 15.0,
        "today_min_c": 7.96,
        "precipitation_probability_percent": 20.0,
    }
    for language, description in DESCRIPTIONS
}
FORTUNE_RESULTS: dict[Language, dict[str, Any]] = {
    "ja": {"label": "大吉", "message": "よいことがありそう。", "lucky_item": "鈴"},
    "en": {"label": "Great blessing", "message": "Good things are coming.", "lucky_item": "a bell"},
    "ko": {"label": "대길", "message": "좋은 일이 생길 거예요.", "lucky_item": "방울"},
}
CALC_RESULT = {"result": "84", "value": 84.0, "is_integer": True}


Result = tuple[Intent, ToolOutcome]


def outcome(
    intent: Intent,
    arguments: dict[str, Any],
    result: dict[str, Any],
    status: ToolStatus = ToolStatus.OK,
    call_id: str = "local-1",
) -> Result:
    call = ToolCallRequest(id=call_id, name=TOOL_NAMES[intent], arguments=json.dumps(arguments))
    return intent, ToolOutcome(call=call, status=status, result=result, duration_seconds=0.01)


def say(message: str, language: Language, results: list[Result], **options: Any) -> str:
    return compose(analyse(message), language, results, **options)


def test_compose_reads_the_analysis_not_the_message() -> None:
    # Built by hand, with no message at all: compose answers from what the analysis says.
    analysis = Analysis(intents=(W, C), places={}, expressions=("2*3",), greeting=None, variant=0)
    result = outcome(C, {"expression": "2*3"}, {"result": "6"})
    reply = compose(analysis, "en", [result], ending="nyan")
    assert "2*3 is 6" in reply
    assert "Which city" in reply  # asked for the weather, named no place
    greeted = Analysis(
        intents=(G,), places={}, expressions=(), greeting=Greeting.EVENING, variant=0
    )
    assert compose(greeted, "ja", [], ending="にゃん").startswith("こんばんは")


# (language, message, outcome, text every reply must contain)
SUCCESSES: list[tuple[Language, str, Result, list[str]]] = [
    ("ja", "東京は何時？", outcome(T, {"place": "東京"}, TIME_RESULT), ["09:30", "東京"]),
    ("ja", "今何時？", outcome(T, {}, {**TIME_RESULT, "place": ""}), ["09:30", "木曜日"]),
    (
        "en",
        "What time is it in Tokyo?",
        outcome(T, {"place": "Tokyo"}, TIME_RESULT),
        [
            "09:30",
            "Tokyo",
            "Thursday",
        ],
    ),
    (
        "ko",
        "도쿄는 몇 시야?",
        outcome(T, {"place": "도쿄"}, TIME_RESULT),
        [
            "09:30",
            "도쿄",
            "목요일",
        ],
    ),
    (
        "ja",
        "大阪の天気は？",
        outcome(W, {"place": "大阪"}, WEATHER_RESULTS["ja"]),
        ["大阪", "晴れ", "12.3", "15", "8", "20%"],
    ),
    (
        "en",
        "Weather in Osaka?",
        outcome(W, {"place": "Osaka"}, WEATHER_RESULTS["en"]),
        ["Osaka", "clear sky", "12.3°C", "high 15°C", "low 8°C", "20%"],
    ),
    (
        "ko",
        "오사카 날씨 어때?",
        outcome(W, {"place": "오사카"}, WEATHER_RESULTS["ko"]),
        ["오사카", "맑음", "12.3도", "20%"],
    ),
    ("ja", "運勢は？", outcome(F, {}, FORTUNE_RESULTS["ja"]), ["大吉", "鈴"]),
    (
        "en",
        "My fortune?",
        outcome(F, {}, FORTUNE_RESULTS["en"]),
        [
            "Great blessing",
            "a bell",
        ],
    ),
    ("ko", "운세 봐줘", outcome(F, {}, FORTUNE_RESULTS["ko"]), ["대길", "방울"]),
    (
        "ja",
        "12×(3+4)は？",
        outcome(C, {"expression": "12×(3+4)"}, CALC_RESULT),
        ["12×(3+4)", "84"],
    ),
    (
        "en",
        "what is 12*(3+4)?",
        outcome(C, {"expression": "12*(3+4)"}, CALC_RESULT),
        ["12*(3+4)", "84"],
    ),
    (
        "ko",
        "12*(3+4)는?",
        outcome(C, {"expression": "12*(3+4)"}, CALC_RESULT),
        ["12*(3+4)", "84"],
    ),
]


@pytest.mark.parametrize(("language", "message", "result", "needles"), SUCCESSES)
def test_compose_tells_each_result(
    language: Language, message: str, result: Result, needles: list[str]
) -> None:
    reply = say(message, language, [result], ending=ENDINGS[language])
    for needle in needles:
        assert needle in reply, (needle, reply)
    assert_in_persona(reply, language)


def test_compose_three_intents_in_order() -> None:
    message = "今何時で、天気はどうで、ついでに運勢も教えて"
    analysis = analyse(message)
    planned = plan(analysis, default_place="大阪")
    results = [{**TIME_RESULT, "place": ""}, WEATHER_RESULTS["ja"], FORTUNE_RESULTS["ja"]]
    outcomes = [outcome(c.intent, c.arguments, r) for c, r in zip(planned, results, strict=True)]
    reply = compose(analysis, "ja", outcomes, ending="にゃん")
    assert reply.index("09:30") < reply.index("晴れ") < reply.index("大吉")
    assert_in_persona(reply, "ja")


def test_compose_asks_which_place_when_weather_has_no_place() -> None:
    message = "今何時で、天気はどうで、ついでに運勢も教えて"
    planned = plan(analyse(message))
    outcomes = [
        outcome(T, {}, {**TIME_RESULT, "place": ""}),
        outcome(F, {}, FORTUNE_RESULTS["ja"]),
    ]
    assert [c.intent for c in planned] == [T, F]
    reply = say(message, "ja", outcomes, ending="にゃん")
    for needle in ("どこ", "09:30", "大吉"):
        assert needle in reply
    assert_in_persona(reply, "ja")
    assert "Which" in say("What's the weather?", "en", [], ending="nyan")
    assert "어느" in say("날씨 어때?", "ko", [], ending="냥")


def test_compose_asks_for_an_expression() -> None:
    assert "計算" in say("計算して", "ja", [], ending="にゃん")
    assert "calculate" in say("Can you calculate something?", "en", [], ending="nyan")
    assert "계산" in say("계산해줘", "ko", [], ending="냥")


FAILING_STATUSES = [
    ToolStatus.FALLBACK,
    ToolStatus.CIRCUIT_OPEN,
    ToolStatus.INVALID_ARGUMENT,
    ToolStatus.REJECTED,
]
# Results that look like answers: a failed call must never be told as one.
FALLBACK_RESULTS: dict[Intent, tuple[dict[str, Any], dict[str, Any], str]] = {
    T: ({"place": "Atlantis"}, {**TIME_RESULT, "fallback": True}, "09:30"),
    W: ({"place": "Atlantis"}, {**WEATHER_RESULTS["en"], "fallback": True}, "12.3"),
    F: ({}, {**FORTUNE_RESULTS["en"], "fallback": True}, "Great blessing"),
    C: ({"expression": "1/0"}, {"error": "Division by zero is undefined."}, "84"),
}
HONEST: dict[Language, re.Pattern[str]] = {
    "ja": re.compile(r"わからない|ひけない|できない|見つからない"),
    "en": re.compile(r"can't|couldn't|undefined"),
    "ko": re.compile(r"없다|못했다"),
}


@pytest.mark.parametrize("status", FAILING_STATUSES)
@pytest.mark.parametrize("intent", list(FALLBACK_RESULTS))
@pytest.mark.parametrize("language", ["ja", "en", "ko"])
def test_compose_tells_failures_honestly(
    language: Language, intent: Intent, status: ToolStatus
) -> None:
    arguments, result, fake_answer = FALLBACK_RESULTS[intent]
    reply = say("…", language, [outcome(intent, arguments, result, status)], ending="x")
    assert fake_answer not in reply, reply
    assert HONEST[language].search(reply), reply
    assert re.search(r"x[。！!？?]?$", reply), reply


@pytest.mark.parametrize("language", ["ja", "en", "ko"])
def test_compose_error_result_with_ok_status_is_a_failure(language: Language) -> None:
    failed = outcome(W, {"place": "Paris"}, {"error": "upstream timed out"})
    reply = say("weather in Paris", language, [failed], ending=ENDINGS[language])
    assert HONEST[language].search(reply), reply
    assert "timed out" not in reply
    assert "Paris" in reply
    assert_in_persona(reply, language)


def test_compose_unknown_place_and_bad_expression_are_named() -> None:
    unknown = outcome(T, {"place": "Atlantis"}, {"error": "x"}, ToolStatus.INVALID_ARGUMENT)
    assert "Atlantis" in say("Atlantisは何時？", "ja", [unknown], ending="にゃん")
    assert "見つからない" in say("Atlantisは何時？", "ja", [unknown], ending="にゃん")
    bad = outcome(C, {"expression": "2**"}, {"error": "bad"}, ToolStatus.INVALID_ARGUMENT)
    assert "2**" in say("2**", "en", [bad], ending="nyan")
    by_zero = outcome(
        C,
        {"expression": "1/0"},
        {"error": "Division by zero is undefined."},
        ToolStatus.INVALID_ARGUMENT,
    )
    assert "0で割る" in say("1/0は？", "ja", [by_zero], ending="にゃん")


@pytest.mark.parametrize("language", ["ja", "en", "ko"])
def test_compose_missing_fields_are_not_invented(language: Language) -> None:
    empty = [
        outcome(T, {}, {}, call_id="a"),
        outcome(W, {"place": "Rome"}, {"place": "Rome"}, call_id="b"),
        outcome(F, {}, {"message": "?"}, call_id="c"),
        outcome(C, {"expression": "1+1"}, {}, call_id="d"),
    ]
    reply = say("time, weather, fortune, 1+1", language, empty, ending=ENDINGS[language])
    assert len(HONEST[language].findall(reply)) >= 3, reply
    assert_in_persona(reply, language)


def test_compose_survives_malformed_arguments_and_camel_case_results() -> None:
    call = ToolCallRequest(id="x", name="get_weather", arguments="{not json")
    camel = {
        "place": "Rome",
        "description": "Rain",
        "temperatureC": 9.0,
        "todayMaxC": 11.0,
        "todayMinC": 6.0,
        "precipitationProbabilityPercent": 80.0,
    }
    reply = say("weather", "en", [(W, ToolOutcome(call, ToolStatus.OK, camel, 0.1))], ending="nyan")
    for needle in ("Rome", "9°C", "80%", "umbrella"):
        assert needle in reply
    assert_in_persona(reply, "en")


@pytest.mark.parametrize(
    ("language", "message", "needle"),
    [
        ("ja", "こんにちは", "こんにちは"),
        ("ja", "おはよう！", "おはよう"),
        ("en", "hi there", "Hello"),
        ("en", "Good evening", "Good evening"),
        ("ko", "안녕하세요", "안녕"),
        ("ja", "何ができる？", "天気"),
        ("en", "What can you do?", "weather"),
        ("ko", "도움말", "날씨"),
    ],
)
def test_compose_greeting_and_help_need_no_tools(
    language: Language, message: str, needle: str
) -> None:
    reply = say(message, language, [], ending=ENDINGS[language])
    assert needle in reply, reply
    assert_in_persona(reply, language)


def test_compose_greeting_with_a_tool_greets_then_answers() -> None:
    reply = say(
        "こんにちは！12×(3+4)は？",
        "ja",
        [outcome(C, {"expression": "12×(3+4)"}, CALC_RESULT)],
        ending="にゃん",
    )
    assert reply.startswith("こんにちは")
    assert "84" in reply
    assert_in_persona(reply, "ja")


@pytest.mark.parametrize("language", ["ja", "en", "ko"])
def test_compose_small_talk_is_deterministic_and_varied(language: Language) -> None:
    messages = ["今日は疲れた", "I love cats", "고양이 좋아해", "hmm", "そうなの", "ok then"]
    replies = [say(m, language, [], ending=ENDINGS[language]) for m in messages]
    assert replies == [say(m, language, [], ending=ENDINGS[language]) for m in messages]
    assert len(set(replies)) >= 2
    for reply in replies:
        assert_in_persona(reply, language)


@pytest.mark.parametrize(
    ("language", "dominant", "needle"),
    [
        ("ja", "sadness", "元気出して"),
        ("en", "sadness", "here for you"),
        ("ko", "sadness", "힘내"),
        ("ja", "joy", "うれしい"),
        ("en", "joy", "happy"),
    ],
)
def test_compose_emotion_colours_the_opening(
    language: Language, dominant: str, needle: str
) -> None:
    emotion = Emotion(scores={dominant: 1.0}, dominant=dominant)
    reply = say("…", language, [], emotion=emotion, ending=ENDINGS[language])
    assert needle in reply
    assert needle not in say("…", language, [], emotion=Emotion.neutral(), ending="x")
    assert_in_persona(reply, language)


@pytest.mark.parametrize("language", ["ja", "en", "ko"])
def test_compose_stays_short_with_many_results(language: Language) -> None:
    long_fortune = {**FORTUNE_RESULTS[language], "message": "長" * 500}
    outcomes = [outcome(F, {}, long_fortune, call_id="f")] + [
        outcome(C, {"expression": f"{i}*{i}"}, {"result": str(i * i)}, call_id=str(i))
        for i in range(12)
    ]
    reply = say("運勢と計算", language, outcomes, ending=ENDINGS[language])
    assert reply.startswith({"ja": "今日", "en": "Today", "ko": "오늘"}[language])
    assert_in_persona(reply, language)


def test_compose_huge_numbers_are_shortened_honestly() -> None:
    big = str(2**1000)
    result = outcome(C, {"expression": "2**1000"}, {"result": big})
    reply = say("2**1000", "en", [result], ending="nyan")
    assert big[:20] in reply
    assert "302 digits" in reply
    assert_in_persona(reply, "en")


@pytest.mark.parametrize("ending", ["にゃん", "nyan", "냥", ""])
def test_compose_ends_with_the_given_ending(ending: str) -> None:
    reply = say("東京の天気", "ja", [], ending=ending)
    assert re.search(re.escape(ending) + r"[。！？]$", reply), reply


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_plans_string_arguments_and_replies_in_persona(message: str) -> None:
    analysis = analyse(message)
    planned = plan(analysis, default_place="Tokyo")
    for call in planned:
        assert call.intent in TOOL_INTENTS
        assert all(isinstance(v, str) and v for v in call.arguments.values())
        assert set(call.arguments) <= {"place", "expression"}
    outcomes = [
        outcome(c.intent, c.arguments, {"error": "x"}, ToolStatus.FALLBACK) for c in planned
    ]
    quoted = [value for call in planned for value in call.arguments.values()]
    for language in ("ja", "en", "ko"):
        reply = compose(analysis, language, outcomes, ending=ENDINGS[language])
        assert_in_persona(reply, language, quoted)


# --- Speed ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_gazetteer", [False, True])
def test_thousand_mixed_messages_in_well_under_a_second(
    with_gazetteer: bool, gazetteer: Gazetteer
) -> None:
    messages = [message for message, _ in INTENTS] + [message for message, _, _ in PLANS]
    batch = (messages * (1000 // len(messages) + 1))[:1000]
    result = outcome(T, {}, TIME_RESULT)
    places = gazetteer if with_gazetteer else None
    start = time.perf_counter()
    for message in batch:
        analysis = analyse(message, places)
        plan(analysis, default_place="Tokyo")
        compose(analysis, "ja", [result], ending="にゃん")
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    "message",
    [
        "1+" * 2000,
        "(" * 2000 + "1" + ")" * 1999,
        "東京" * 2000,
        ("東京" * 19 + "の天気") * 190,
        " " * 4000,
        "1," * 2000,
        "in Paris " * 444,
        "서울 날씨 " * 666,
        "what time " * 400,
        "sqrt(" * 800,
    ],
)
@pytest.mark.parametrize("with_gazetteer", [False, True])
def test_largest_hostile_messages_stay_fast(
    message: str, with_gazetteer: bool, gazetteer: Gazetteer
) -> None:
    message = message[:4000]
    start = time.perf_counter()
    analysis = analyse(message, gazetteer if with_gazetteer else None)
    plan(analysis, default_place="Tokyo")
    compose(analysis, "en", [], ending="nyan")
    # Typical messages take tens of microseconds; the largest hostile ones a few milliseconds.
    assert time.perf_counter() - start < 0.05
