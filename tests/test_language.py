from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from services.common import language
from services.common.language import (
    MAX_SCAN_CHARS,
    Language,
    ScriptCounts,
    base_language,
    detect_language,
    identify,
    is_supported,
    script_counts,
    warm_up,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Japanese: kana, kanji, katakana, halfwidth katakana, with English terms mixed in.
        ("東京の天気は？", "ja"),
        ("こんにちは", "ja"),
        ("コーヒー", "ja"),
        ("ｺｰﾋｰ ﾉﾐﾀｲ", "ja"),
        ("Pythonでlistをsortする方法", "ja"),
        ("Zoomのmeeting URLを教えて", "ja"),
        ("詳しくは https://open-meteo.com/en/docs/forecast-api を見て", "ja"),
        ("今日は楽しかった😺✨", "ja"),
        # Han only: Japanese (short kanji messages are Japanese far more often than not here).
        ("天気", "ja"),
        ("東京都", "ja"),
        ("你好，今天天气怎么样？", "ja"),
        # Korean, with hanja, with a quoted Japanese word, with English.
        ("안녕하세요", "ko"),
        ("서울 날씨 어때?", "ko"),
        ("大韓民國 만세", "ko"),
        ("'ありがとう'는 무슨 뜻이에요?", "ko"),
        ("iPhone 설정은 Settings에서 하세요", "ko"),
        # A Japanese message quoting a Korean word stays Japanese.
        ("「안녕」って韓国語で何？", "ja"),
        # English, also naming a place in kanji.
        ("What's the weather in Tokyo?", "en"),
        ("lol", "en"),
        ("I visited 東京 yesterday", "en"),
        ("I love 寿司", "en"),
        ("ＨＥＬＬＯ", "en"),
        # Languages the suite does not speak answer in English.
        ("Bonjour, quel temps fait-il à Paris ?", "en"),
        ("Wie spät ist es in Berlin?", "en"),
        ("Привет, как дела?", "en"),
        ("สวัสดีครับ", "en"),
    ],
)
def test_detects_the_language_of_a_message(text: str, expected: Language) -> None:
    assert detect_language(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "   \n", "😺", "👍🏽🇯🇵", "12+3", "3.14 * 2 = ?", "ok", "OK!", "w", "no", "・・・", "！？"],
)
@pytest.mark.parametrize("default", ["ja", "en", "ko"])
def test_text_without_enough_letters_gives_the_default(text: str, default: Language) -> None:
    assert detect_language(text, default=default) == default


def test_default_is_japanese() -> None:
    assert detect_language("") == "ja"


def test_only_the_first_part_of_a_long_text_is_read() -> None:
    english = "The weather in Tokyo is sunny today. "
    japanese = "東京の天気は晴れです。"
    head = english * (MAX_SCAN_CHARS // len(english) + 1)
    assert detect_language(head + japanese * 10_000) == "en"
    assert detect_language(japanese * 200 + english * 10_000) == "ja"


def test_a_huge_message_costs_no_more_than_its_first_part() -> None:
    huge = "東京の天気は晴れです。Sure thing! 안녕 " * 300_000  # about 9 million characters
    started = time.perf_counter()
    for _ in range(10):
        detect_language(huge)
    # Reading all of it ten times takes seconds; the bounded prefix takes about a millisecond.
    assert time.perf_counter() - started < 0.5


def test_script_counts_count_letters_only() -> None:
    assert script_counts("東京の天気・晴れ！ 25°C 😺 ok") == ScriptCounts(
        kana=2, han=5, latin=3, hangul=0, other=0
    )
    assert script_counts("서울 ソウル Seoul Сеул") == ScriptCounts(
        kana=3, hangul=2, han=0, latin=5, other=4
    )


def test_urls_are_not_counted_as_english() -> None:
    assert script_counts("見て https://example.com/a/very/long/english/path www.example.org") == (
        ScriptCounts(kana=1, han=1)
    )


@pytest.mark.parametrize(
    ("tag", "expected"),
    [("ja-JP", "ja"), ("EN_us", "en"), ("ko", "ko"), ("fr-CA", "en"), ("", "ko"), ("  ", "ko")],
)
def test_base_language(tag: str, expected: Language) -> None:
    assert base_language(tag, "ko") == expected


def test_is_supported() -> None:
    assert is_supported("ja")
    assert not is_supported("zh")


# -- identify ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def warm() -> None:
    warm_up()


@pytest.mark.usefixtures("warm")
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Sorry, I couldn't reach the weather service right now. Please try again later.", "en"),
        ("Bien sûr ! Il est quinze heures à Tokyo en ce moment, et il fait beau.", "fr"),
        ("Natürlich! In Berlin ist es gerade sonnig und zwanzig Grad warm.", "de"),
        ("你好，今天天气怎么样？", "zh"),
        ("東京の天気は晴れです。", "ja"),
        ("오늘 서울 날씨는 맑아요.", "ko"),
    ],
)
def test_identify_names_the_language(text: str, expected: str) -> None:
    assert identify(text) == expected


@pytest.mark.usefixtures("warm")
def test_identify_says_und_without_letters_or_confidence() -> None:
    assert identify("") == "und"
    assert identify("12 + 3 = 15 😺") == "und"
    # Two letters say little: py3langid guesses, with a low probability.
    assert identify("ok") != "und"
    assert identify("ok", min_confidence=0.9) == "und"


@pytest.fixture
def cold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(language, "_identifier", None)


@pytest.mark.usefixtures("cold")
def test_identify_can_decline_to_load_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_loading() -> Any:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(language, "_load_identifier", no_loading)
    assert not language.is_warm()
    assert identify("Bien sûr ! Il fait beau à Paris aujourd'hui.", load=False) == "und"


@pytest.fixture
def counted_loads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    from py3langid.langid import LanguageIdentifier  # type: ignore[import-untyped]

    loads: list[int] = []
    real = LanguageIdentifier.from_model_file

    def slow_counted(*args: Any, **kwargs: Any) -> Any:
        loads.append(1)
        time.sleep(0.05)  # widen the window in which a second loader could start
        return real(*args, **kwargs)

    monkeypatch.setattr(LanguageIdentifier, "from_model_file", slow_counted)
    return loads


@pytest.mark.usefixtures("cold")
def test_warm_up_loads_the_model_once_across_threads(counted_loads: list[int]) -> None:
    threads = [threading.Thread(target=warm_up) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    warm_up()
    assert counted_loads == [1]
    assert language.is_warm()
    assert identify("The weather in Tokyo is sunny today, with a light breeze.") == "en"
