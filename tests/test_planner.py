"""The local planner understands ja/en/ko requests, plans the right tool calls and answers in
persona, honestly, in the user's language."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.language import Language
from services.orchestrator.model import Emotion, ToolCallRequest, ToolOutcome, ToolStatus
from services.orchestrator.planner import MAX_REPLY_CHARS, Intent, compose, find_intents, plan
from services.tools.calculator import calculate

T, W, F, C = Intent.TIME, Intent.WEATHER, Intent.FORTUNE, Intent.CALCULATION
G, H, S = Intent.GREETING, Intent.HELP, Intent.SMALL_TALK

ENDINGS: dict[Language, str] = {"ja": "にゃん", "en": "nyan", "ko": "냥"}
KANA = re.compile(r"[\u3040-\u30ff]")
HANGUL = re.compile(r"[\uac00-\ud7a3]")
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7a3\uff00-\uffef]")


def assert_in_persona(reply: str, language: Language) -> None:
    ending = ENDINGS[language]
    assert re.search(re.escape(ending) + r"[。！!？?]?$", reply), reply
    assert len(reply) <= MAX_REPLY_CHARS, (len(reply), reply)
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


@pytest.mark.parametrize(("message", "expected"), INTENTS)
def test_find_intents(message: str, expected: list[Intent]) -> None:
    assert find_intents(message) == expected


def test_intent_table_covers_every_intent_and_language() -> None:
    seen = {intent for _, intents in INTENTS for intent in intents}
    assert seen == set(Intent)
    assert sum(1 for _, intents in INTENTS if intents == [S]) >= 10


def test_negative_cases_plan_no_tool_calls() -> None:
    for message, expected in INTENTS:
        if expected == [S]:
            assert plan(message, default_place="Tokyo") == [], message


# --- plan() ---------------------------------------------------------------------------------------


def calls(message: str, default_place: str = "") -> list[tuple[str, dict[str, Any]]]:
    return [(c.name, json.loads(c.arguments)) for c in plan(message, default_place=default_place)]


PLANS: list[tuple[str, str, list[tuple[str, dict[str, Any]]]]] = [
    # The three-intent example: no place and no default, so no weather call (the reply asks).
    ("今何時で、天気はどうで、ついでに運勢も教えて", "", [("get_time", {}), ("get_fortune", {})]),
    (
        "今何時で、天気はどうで、ついでに運勢も教えて",
        "東京",
        [("get_time", {}), ("get_weather", {"place": "東京"}), ("get_fortune", {})],
    ),
    # Japanese places.
    ("東京の天気", "", [("get_weather", {"place": "東京"})]),
    ("ニューヨークは何時？", "", [("get_time", {"place": "ニューヨーク"})]),
    ("大阪の時間を教えて", "", [("get_time", {"place": "大阪"})]),
    ("明日の東京の天気は？", "", [("get_weather", {"place": "東京"})]),
    ("今日本は何時？", "", [("get_time", {"place": "日本"})]),
    ("今治の天気", "", [("get_weather", {"place": "今治"})]),
    ("New Yorkは何時？", "", [("get_time", {"place": "New York"})]),
    ("今日の天気は？", "札幌", [("get_weather", {"place": "札幌"})]),
    # Each place goes to its own request.
    (
        "東京は何時で、大阪の天気は？",
        "",
        [("get_time", {"place": "東京"}), ("get_weather", {"place": "大阪"})],
    ),
    # A single place serves both.
    (
        "東京は何時で、天気は？",
        "",
        [("get_time", {"place": "東京"}), ("get_weather", {"place": "東京"})],
    ),
    # English places.
    ("What's the weather in Paris?", "", [("get_weather", {"place": "Paris"})]),
    ("What time is it in New York right now?", "", [("get_time", {"place": "New York"})]),
    ("Tokyo weather?", "", [("get_weather", {"place": "Tokyo"})]),
    ("what's the weather in san francisco", "", [("get_weather", {"place": "san francisco"})]),
    (
        "weather in Paris and time in Tokyo",
        "",
        [("get_weather", {"place": "Paris"}), ("get_time", {"place": "Tokyo"})],
    ),
    (
        "What's the weather and time in London?",
        "",
        [("get_weather", {"place": "London"}), ("get_time", {"place": "London"})],
    ),
    ("What's the weather today?", "Berlin", [("get_weather", {"place": "Berlin"})]),
    ("What's the weather in my area?", "", []),
    ("What time is it?", "Berlin", [("get_time", {})]),
    # Korean places.
    ("서울 날씨 어때?", "", [("get_weather", {"place": "서울"})]),
    ("뉴욕은 몇 시야?", "", [("get_time", {"place": "뉴욕"})]),
    ("부산의 날씨 알려줘", "", [("get_weather", {"place": "부산"})]),
    ("오늘 서울 날씨는?", "", [("get_weather", {"place": "서울"})]),
    ("지금 몇 시야?", "", [("get_time", {})]),
    ("지금 몇 시고 날씨는 어때?", "", [("get_time", {})]),
    (
        "뉴욕은 몇 시고 부산 날씨는?",
        "",
        [("get_time", {"place": "뉴욕"}), ("get_weather", {"place": "부산"})],
    ),
    # Fortune takes no arguments.
    ("운세 봐줘", "", [("get_fortune", {})]),
    ("omikuji please", "", [("get_fortune", {})]),
]


@pytest.mark.parametrize(("message", "default_place", "expected"), PLANS)
def test_plan_places(message: str, default_place: str, expected: list[Any]) -> None:
    assert calls(message, default_place) == expected


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
    assert planned == [("calculate", {"expression": e}) for e in expected]
    assert calculate(expected[0]).result == value


def test_plan_several_expressions_and_order() -> None:
    planned = calls("What time is it? Also 1+1 and 2*3, and my fortune")
    assert planned == [
        ("get_time", {}),
        ("calculate", {"expression": "1+1"}),
        ("calculate", {"expression": "2*3"}),
        ("get_fortune", {}),
    ]


def test_plan_ids_and_compact_json() -> None:
    planned = plan("東京は何時で、大阪の天気は？運勢と 1+2 も", default_place="")
    assert [c.id for c in planned] == ["local-1", "local-2", "local-3", "local-4"]
    assert [c.name for c in planned] == ["get_time", "get_weather", "get_fortune", "calculate"]
    assert [c.arguments for c in planned] == [
        '{"place":"東京"}',
        '{"place":"大阪"}',
        "{}",
        '{"expression":"1+2"}',
    ]


def test_plan_without_tool_intents_is_empty() -> None:
    assert plan("こんにちは") == []
    assert plan("What can you do?", default_place="Tokyo") == []
    assert plan("計算して") == []


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


def outcome(
    name: str,
    arguments: dict[str, Any],
    result: dict[str, Any],
    status: ToolStatus = ToolStatus.OK,
    call_id: str = "local-1",
) -> ToolOutcome:
    call = ToolCallRequest(id=call_id, name=name, arguments=json.dumps(arguments))
    return ToolOutcome(call=call, status=status, result=result, duration_seconds=0.01)


# (language, message, outcome, text every reply must contain)
SUCCESSES: list[tuple[Language, str, ToolOutcome, list[str]]] = [
    ("ja", "東京は何時？", outcome("get_time", {"place": "東京"}, TIME_RESULT), ["09:30", "東京"]),
    ("ja", "今何時？", outcome("get_time", {}, {**TIME_RESULT, "place": ""}), ["09:30", "木曜日"]),
    (
        "en",
        "What time is it in Tokyo?",
        outcome("get_time", {"place": "Tokyo"}, TIME_RESULT),
        [
            "09:30",
            "Tokyo",
            "Thursday",
        ],
    ),
    (
        "ko",
        "도쿄는 몇 시야?",
        outcome("get_time", {"place": "도쿄"}, TIME_RESULT),
        [
            "09:30",
            "도쿄",
            "목요일",
        ],
    ),
    (
        "ja",
        "大阪の天気は？",
        outcome("get_weather", {"place": "大阪"}, WEATHER_RESULTS["ja"]),
        ["大阪", "晴れ", "12.3", "15", "8", "20%"],
    ),
    (
        "en",
        "Weather in Osaka?",
        outcome("get_weather", {"place": "Osaka"}, WEATHER_RESULTS["en"]),
        ["Osaka", "clear sky", "12.3°C", "high 15°C", "low 8°C", "20%"],
    ),
    (
        "ko",
        "오사카 날씨 어때?",
        outcome("get_weather", {"place": "오사카"}, WEATHER_RESULTS["ko"]),
        ["오사카", "맑음", "12.3도", "20%"],
    ),
    ("ja", "運勢は？", outcome("get_fortune", {}, FORTUNE_RESULTS["ja"]), ["大吉", "鈴"]),
    (
        "en",
        "My fortune?",
        outcome("get_fortune", {}, FORTUNE_RESULTS["en"]),
        [
            "Great blessing",
            "a bell",
        ],
    ),
    ("ko", "운세 봐줘", outcome("get_fortune", {}, FORTUNE_RESULTS["ko"]), ["대길", "방울"]),
    (
        "ja",
        "12×(3+4)は？",
        outcome("calculate", {"expression": "12×(3+4)"}, CALC_RESULT),
        ["12×(3+4)", "84"],
    ),
    (
        "en",
        "what is 12*(3+4)?",
        outcome("calculate", {"expression": "12*(3+4)"}, CALC_RESULT),
        ["12*(3+4)", "84"],
    ),
    (
        "ko",
        "12*(3+4)는?",
        outcome("calculate", {"expression": "12*(3+4)"}, CALC_RESULT),
        ["12*(3+4)", "84"],
    ),
]


@pytest.mark.parametrize(("language", "message", "result", "needles"), SUCCESSES)
def test_compose_tells_each_result(
    language: Language, message: str, result: ToolOutcome, needles: list[str]
) -> None:
    reply = compose(message, language, [result], ending=ENDINGS[language])
    for needle in needles:
        assert needle in reply, (needle, reply)
    assert_in_persona(reply, language)


def test_compose_three_intents_in_order() -> None:
    message = "今何時で、天気はどうで、ついでに運勢も教えて"
    planned = plan(message, default_place="大阪")
    results = [{**TIME_RESULT, "place": ""}, WEATHER_RESULTS["ja"], FORTUNE_RESULTS["ja"]]
    outcomes = [
        ToolOutcome(call=c, status=ToolStatus.OK, result=r, duration_seconds=0.1)
        for c, r in zip(planned, results, strict=True)
    ]
    reply = compose(message, "ja", outcomes, ending="にゃん")
    assert reply.index("09:30") < reply.index("晴れ") < reply.index("大吉")
    assert_in_persona(reply, "ja")


def test_compose_asks_which_place_when_weather_has_no_place() -> None:
    message = "今何時で、天気はどうで、ついでに運勢も教えて"
    planned = plan(message)
    outcomes = [
        outcome("get_time", {}, {**TIME_RESULT, "place": ""}),
        outcome("get_fortune", {}, FORTUNE_RESULTS["ja"]),
    ]
    assert [c.name for c in planned] == ["get_time", "get_fortune"]
    reply = compose(message, "ja", outcomes, ending="にゃん")
    for needle in ("どこ", "09:30", "大吉"):
        assert needle in reply
    assert_in_persona(reply, "ja")
    assert "Which" in compose("What's the weather?", "en", [], ending="nyan")
    assert "어느" in compose("날씨 어때?", "ko", [], ending="냥")


def test_compose_asks_for_an_expression() -> None:
    assert "計算" in compose("計算して", "ja", [], ending="にゃん")
    assert "calculate" in compose("Can you calculate something?", "en", [], ending="nyan")
    assert "계산" in compose("계산해줘", "ko", [], ending="냥")


FAILING_STATUSES = [
    ToolStatus.FALLBACK,
    ToolStatus.CIRCUIT_OPEN,
    ToolStatus.INVALID_ARGUMENT,
    ToolStatus.REJECTED,
]
# Results that look like answers: a failed call must never be told as one.
FALLBACK_RESULTS: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    "get_time": ({"place": "Atlantis"}, {**TIME_RESULT, "fallback": True}, "09:30"),
    "get_weather": ({"place": "Atlantis"}, {**WEATHER_RESULTS["en"], "fallback": True}, "12.3"),
    "get_fortune": ({}, {**FORTUNE_RESULTS["en"], "fallback": True}, "Great blessing"),
    "calculate": ({"expression": "1/0"}, {"error": "Division by zero is undefined."}, "84"),
}
HONEST: dict[Language, re.Pattern[str]] = {
    "ja": re.compile(r"わからない|ひけない|できない|見つからない"),
    "en": re.compile(r"can't|couldn't|undefined"),
    "ko": re.compile(r"없다|못했다"),
}


@pytest.mark.parametrize("status", FAILING_STATUSES)
@pytest.mark.parametrize("name", list(FALLBACK_RESULTS))
@pytest.mark.parametrize("language", ["ja", "en", "ko"])
def test_compose_tells_failures_honestly(language: Language, name: str, status: ToolStatus) -> None:
    arguments, result, fake_answer = FALLBACK_RESULTS[name]
    reply = compose("…", language, [outcome(name, arguments, result, status)], ending="x")
    assert fake_answer not in reply, reply
    assert HONEST[language].search(reply), reply
    assert re.search(r"x[。！!？?]?$", reply), reply


@pytest.mark.parametrize("language", ["ja", "en", "ko"])
def test_compose_error_result_with_ok_status_is_a_failure(language: Language) -> None:
    failed = outcome("get_weather", {"place": "Paris"}, {"error": "upstream timed out"})
    reply = compose("weather in Paris", language, [failed], ending=ENDINGS[language])
    assert HONEST[language].search(reply), reply
    assert "timed out" not in reply
    assert "Paris" in reply
    assert_in_persona(reply, language)


def test_compose_unknown_place_and_bad_expression_are_named() -> None:
    unknown = outcome(
        "get_time", {"place": "Atlantis"}, {"error": "x"}, ToolStatus.INVALID_ARGUMENT
    )
    assert "Atlantis" in compose("Atlantisは何時？", "ja", [unknown], ending="にゃん")
    assert "見つからない" in compose("Atlantisは何時？", "ja", [unknown], ending="にゃん")
    bad = outcome("calculate", {"expression": "2**"}, {"error": "bad"}, ToolStatus.INVALID_ARGUMENT)
    assert "2**" in compose("2**", "en", [bad], ending="nyan")
    by_zero = outcome(
        "calculate",
        {"expression": "1/0"},
        {"error": "Division by zero is undefined."},
        ToolStatus.INVALID_ARGUMENT,
    )
    assert "0で割る" in compose("1/0は？", "ja", [by_zero], ending="にゃん")


@pytest.mark.parametrize("language", ["ja", "en", "ko"])
def test_compose_missing_fields_are_not_invented(language: Language) -> None:
    empty = [
        outcome("get_time", {}, {}, call_id="a"),
        outcome("get_weather", {"place": "Rome"}, {"place": "Rome"}, call_id="b"),
        outcome("get_fortune", {}, {"message": "?"}, call_id="c"),
        outcome("calculate", {"expression": "1+1"}, {}, call_id="d"),
    ]
    reply = compose("time, weather, fortune, 1+1", language, empty, ending=ENDINGS[language])
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
    reply = compose("weather", "en", [ToolOutcome(call, ToolStatus.OK, camel, 0.1)], ending="nyan")
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
    reply = compose(message, language, [], ending=ENDINGS[language])
    assert needle in reply, reply
    assert_in_persona(reply, language)


def test_compose_greeting_with_a_tool_greets_then_answers() -> None:
    reply = compose(
        "こんにちは！12×(3+4)は？",
        "ja",
        [outcome("calculate", {"expression": "12×(3+4)"}, CALC_RESULT)],
        ending="にゃん",
    )
    assert reply.startswith("こんにちは")
    assert "84" in reply
    assert_in_persona(reply, "ja")


@pytest.mark.parametrize("language", ["ja", "en", "ko"])
def test_compose_small_talk_is_deterministic_and_varied(language: Language) -> None:
    messages = ["今日は疲れた", "I love cats", "고양이 좋아해", "hmm", "そうなの", "ok then"]
    replies = [compose(m, language, [], ending=ENDINGS[language]) for m in messages]
    assert replies == [compose(m, language, [], ending=ENDINGS[language]) for m in messages]
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
    reply = compose("…", language, [], emotion=emotion, ending=ENDINGS[language])
    assert needle in reply
    assert needle not in compose("…", language, [], emotion=Emotion.neutral(), ending="x")
    assert_in_persona(reply, language)


@pytest.mark.parametrize("language", ["ja", "en", "ko"])
def test_compose_stays_short_with_many_results(language: Language) -> None:
    long_fortune = {**FORTUNE_RESULTS[language], "message": "長" * 500}
    outcomes = [outcome("get_fortune", {}, long_fortune, call_id="f")] + [
        outcome("calculate", {"expression": f"{i}*{i}"}, {"result": str(i * i)}, call_id=str(i))
        for i in range(12)
    ]
    reply = compose("運勢と計算", language, outcomes, ending=ENDINGS[language])
    assert reply.startswith({"ja": "今日", "en": "Today", "ko": "오늘"}[language])
    assert_in_persona(reply, language)


def test_compose_huge_numbers_are_shortened_honestly() -> None:
    big = str(2**1000)
    result = outcome("calculate", {"expression": "2**1000"}, {"result": big})
    reply = compose("2**1000", "en", [result], ending="nyan")
    assert big[:20] in reply
    assert "302 digits" in reply
    assert_in_persona(reply, "en")


@pytest.mark.parametrize("ending", ["にゃん", "nyan", "냥", ""])
def test_compose_ends_with_the_given_ending(ending: str) -> None:
    reply = compose("東京の天気", "ja", [], ending=ending)
    assert re.search(re.escape(ending) + r"[。！？]$", reply), reply


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_plans_valid_json_and_replies_in_persona(message: str) -> None:
    planned = plan(message, default_place="Tokyo")
    for call in planned:
        arguments = json.loads(call.arguments)
        assert isinstance(arguments, dict)
        assert call.name in {"get_time", "get_weather", "get_fortune", "calculate"}
    outcomes = [ToolOutcome(c, ToolStatus.FALLBACK, {"error": "x"}, 0.0) for c in planned]
    for language in ("ja", "en", "ko"):
        assert_in_persona(compose(message, language, outcomes, ending=ENDINGS[language]), language)


# --- Speed ----------------------------------------------------------------------------------------


def test_thousand_mixed_messages_in_well_under_a_second() -> None:
    messages = [message for message, _ in INTENTS] + [message for message, _, _ in PLANS]
    batch = (messages * (1000 // len(messages) + 1))[:1000]
    result = outcome("get_time", {}, TIME_RESULT)
    start = time.perf_counter()
    for message in batch:
        plan(message, default_place="Tokyo")
        compose(message, "ja", [result], ending="にゃん")
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
def test_largest_hostile_messages_stay_fast(message: str) -> None:
    message = message[:4000]
    start = time.perf_counter()
    plan(message, default_place="Tokyo")
    compose(message, "en", [], ending="nyan")
    # Typical messages take tens of microseconds; the largest hostile ones a few milliseconds.
    assert time.perf_counter() - start < 0.05
