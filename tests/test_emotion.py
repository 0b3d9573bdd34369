"""EmotionService's analysis as a caller sees it, on the real analysers (ML-Ask, NRC + VADER, the
Korean table), without gRPC: what each language's sentences come out as, the answers for text
with nothing to read, long texts, languages no analyser covers, and the shape of every answer."""

from __future__ import annotations

import math
import statistics
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.language import warm_up
from services.emotion import text as emotion_text
from services.emotion.analysis import NO_ANALYZER, Analysis, analyze
from services.emotion.analyzers import ANALYZER_SETS, AnalyzerSet, load_shared
from services.emotion.labels import LABELS
from services.emotion.languages import primary_subtag

MAX_CHARS = 2000


@pytest.fixture(scope="module")
def lexicon() -> AnalyzerSet:
    load_shared()
    warm_up()
    emotion_text.warm_up()
    return ANALYZER_SETS["lexicon"]()


def read(analyzers: AnalyzerSet, text: str, language: str = "") -> Analysis:
    result = analyze(text, primary_subtag(language), analyzers, max_chars=MAX_CHARS)
    assert_valid(result)
    return result


def assert_valid(result: Analysis) -> None:
    assert tuple(result.scores) == LABELS
    assert all(0.0 <= score <= 1.0 for score in result.scores.values())
    assert math.isclose(sum(result.scores.values()), 1.0, abs_tol=1e-9)
    assert result.dominant == max(LABELS, key=lambda label: result.scores[label])
    assert -1.0 <= result.polarity <= 1.0


SENTENCES = [
    ("ja", "今日は本当に嬉しい！", "joy"),
    ("ja", "彼女に振られて悲しい", "sadness"),
    ("ja", "ふざけるな、本当に腹が立つ", "anger"),
    ("ja", "夜の地震が怖い", "fear"),
    ("ja", "明日は十時から会議があります", "neutral"),
    ("ja", "大好きだよ", "like"),
    ("ja", "無事に着いてほっとした", "relief"),
    ("ja", "みんなの前で転んで恥ずかしい", "shame"),
    ("ja", "えっ、びっくりした！", "surprise"),
    ("ja", "うざい、大嫌い", "dislike"),
    ("en", "I'm so happy today!", "joy"),
    ("en", "I feel so sad and lonely", "sadness"),
    ("en", "I am so angry at you", "anger"),
    ("en", "I'm scared of the dark", "fear"),
    ("en", "I have a meeting tomorrow at the office", "neutral"),
    ("en", "What time is it in Tokyo?", "neutral"),
    ("en", "I love my cat", "like"),
    ("en", "Phew, I'm so relieved", "relief"),
    ("en", "That was so embarrassing", "shame"),
    ("en", "I can't wait for the trip!", "excitement"),
    ("en", "He cried all night", "sadness"),
    ("en", "I hate Mondays", "dislike"),
    ("ko", "오늘 정말 기뻐요!", "joy"),
    ("ko", "너무 슬퍼요", "sadness"),
    ("ko", "진짜 화가 나", "anger"),
    ("ko", "밤에 혼자 있으면 무서워요", "fear"),
    ("ko", "내일 회의가 있어요", "neutral"),
    ("ko", "다행이다", "relief"),
    ("ko", "사랑해", "like"),
    ("ko", "깜짝 놀랐어", "surprise"),
    ("ko", "ㅋㅋㅋㅋ 웃겨", "joy"),
    ("ko", "ㅠㅠ", "sadness"),
]


@pytest.mark.parametrize(("language", "sentence", "expected"), SENTENCES)
def test_each_language_finds_the_emotion_a_reader_would(
    lexicon: AnalyzerSet, language: str, sentence: str, expected: str
) -> None:
    result = read(lexicon, sentence, language)
    assert result.dominant == expected, result.scores
    assert result.language == language
    assert not result.unsupported_language
    assert result.analyzer == {"ja": "mlask", "en": "nrclex+vader", "ko": "ko-keywords"}[language]


@pytest.mark.parametrize(
    ("sentence", "language"),
    [("今日は本当に嬉しい！", "ja"), ("I'm so happy today!", "en"), ("오늘 정말 기뻐요!", "ko")],
)
def test_the_language_is_detected_when_the_caller_names_none(
    lexicon: AnalyzerSet, sentence: str, language: str
) -> None:
    result = read(lexicon, sentence)
    assert (result.language, result.dominant) == (language, "joy")


@pytest.mark.parametrize(
    ("sentence", "negated"),
    [("嬉しくない", "嬉しい"), ("I am not happy", "I am happy"), ("기쁘지 않아", "기뻐")],
)
def test_a_negated_emotion_is_not_read_as_itself(
    lexicon: AnalyzerSet, sentence: str, negated: str
) -> None:
    assert read(lexicon, negated).dominant == "joy"
    result = read(lexicon, sentence)
    assert result.dominant != "joy"
    assert result.polarity < 0


def test_polarity_follows_the_feeling(lexicon: AnalyzerSet) -> None:
    for language, sentence, expected in SENTENCES:
        polarity = read(lexicon, sentence, language).polarity
        if expected in ("joy", "like", "relief"):
            assert polarity > 0, sentence
        elif expected in ("sadness", "anger", "fear", "dislike"):
            assert polarity < 0, sentence
    assert read(lexicon, "明日は十時から会議があります", "ja").polarity == 0.0


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n\t ",
        "😀" * 10_000,
        "🔥💥🎯" * 100,
        "👨‍👩‍👧‍👦🏳️‍🌈🇰🇷1️⃣" * 500,
        "(´・ω・`)(╯°□°)╯︵ ┻━┻ (^_^) orz",
        "\u200b\u200d\ufeff\u2060" * 100,
    ],
    ids=["empty", "blank", "emoji-10k", "emoji-bomb", "sequences", "kaomoji", "invisible"],
)
def test_text_with_nothing_to_read_is_neutral(lexicon: AnalyzerSet, text: str) -> None:
    result = read(lexicon, text)
    assert result.dominant == "neutral"
    assert result.scores["neutral"] == 1.0
    assert result.polarity == 0.0
    assert result.analyzer == NO_ANALYZER
    assert result.language == "und"
    assert not result.unsupported_language
    named = read(lexicon, text, "ja")
    assert (named.dominant, named.language, named.unsupported_language) == ("neutral", "ja", False)


def test_words_among_emoji_and_kaomoji_are_still_read(lexicon: AnalyzerSet) -> None:
    assert read(lexicon, "😭" * 300 + "悲しい" + "(´；ω；｀)" * 50).dominant == "sadness"
    assert read(lexicon, "so happy 😀😀😀 (^_^)").dominant == "joy"
    assert read(lexicon, "ha\u200bppy to see you").dominant == "joy"
    assert read(lexicon, "ｈａｐｐｙ", "en").dominant == "joy"


def test_mixed_scripts_give_a_valid_answer(lexicon: AnalyzerSet) -> None:
    result = read(lexicon, "안녕하세요😀こんにちは🇰🇷")
    assert result.language in ("ja", "ko")
    assert result.dominant == "neutral"
    assert read(lexicon, "Pythonでlistをsortできて嬉しい").dominant == "joy"


NEUTRAL_EN = "The train leaves the station at nine and arrives in the city at noon. "


def test_a_long_text_is_read_on_its_head_and_tail_and_flagged(lexicon: AnalyzerSet) -> None:
    head = "I'm so happy today! " * 60  # 1,200 characters
    middle = "I am so angry at you. " * 300  # 6,600
    tail = "I feel so sad and lonely. " * 60  # 1,560
    result = read(lexicon, head + middle + tail)
    assert result.truncated
    assert result.scores["joy"] > 0.2
    assert result.scores["sadness"] > 0.2
    # The middle of a long paste is what is skipped (the README says so).
    assert result.scores["anger"] == 0.0
    assert not read(lexicon, head).truncated


def test_a_long_factual_text_stays_neutral(lexicon: AnalyzerSet) -> None:
    # NRC gives "leaves" sadness and "arrives" anticipation; 150 sentences of them are still news.
    result = read(lexicon, NEUTRAL_EN * 150)
    assert result.truncated
    assert result.dominant == "neutral"
    ranting = read(lexicon, "I hate this, it is awful and I am so angry about the delay. " * 40)
    assert ranting.dominant in ("anger", "dislike")


def test_exactly_the_limit_is_not_truncated(lexicon: AnalyzerSet) -> None:
    assert not read(lexicon, "あ" * MAX_CHARS).truncated
    assert read(lexicon, "あ" * (MAX_CHARS + 1)).truncated


@pytest.mark.parametrize(
    "text",
    [
        ("今日は本当に嬉しいけど、明日のことを考えると少し不安です。" * 400)[:10_000],
        ("I am so happy today but a bit worried about tomorrow's exam. " * 200)[:10_000],
        ("오늘 정말 기뻐요! 그런데 내일 시험이 걱정돼요. " * 400)[:10_000],
        "a" * 10_000,
        "(" * 10_000,
    ],
    ids=["ja", "en", "ko", "one-word", "brackets"],
)
def test_ten_thousand_characters_answer_in_bounded_time(lexicon: AnalyzerSet, text: str) -> None:
    durations = []
    for _ in range(5):
        started = time.perf_counter()
        result = read(lexicon, text)
        durations.append(time.perf_counter() - started)
    assert result.truncated
    # Generous, for shared machines: about 20 ms here (the goal, measured by `make bench`, is
    # well under 100 ms); read whole, the English text alone takes over 300 ms.
    assert statistics.median(durations) < 0.25


@pytest.mark.parametrize(
    ("language", "text", "tag"),
    [
        ("fr", "je suis très heureux", "fr"),
        ("de-DE", "Ich bin so glücklich", "de"),
        ("zh-Hant-TW", "我今天很高興", "zh"),
        ("", "Bonjour, je suis très heureux aujourd'hui, merci beaucoup pour tout", "fr"),
        ("", "Я очень рад видеть тебя сегодня", "ru"),
        ("", "我今天很高兴，因为天气很好，我们去公园散步", "zh"),
    ],
)
def test_a_language_no_analyser_covers_is_neutral_and_says_so(
    lexicon: AnalyzerSet, language: str, text: str, tag: str
) -> None:
    result = read(lexicon, text, language)
    assert result.unsupported_language
    assert result.scores["neutral"] == 1.0
    assert result.polarity == 0.0
    assert result.language == tag
    assert result.analyzer == NO_ANALYZER


def test_a_short_latin_text_is_read_as_english(lexicon: AnalyzerSet) -> None:
    # Too short for a language identifier to be sure: English, not a guess at another language.
    result = read(lexicon, "so sad")
    assert (result.language, result.dominant, result.unsupported_language) == (
        "en",
        "sadness",
        False,
    )


def test_the_callers_language_wins_over_detection(lexicon: AnalyzerSet) -> None:
    result = read(lexicon, "I'm so happy today!", "ko")
    assert (result.language, result.analyzer, result.dominant) == ("ko", "ko-keywords", "neutral")


@pytest.mark.parametrize("tag", ["ja-JP", "EN_us", "ko-Kore-KR", "und", ""])
def test_language_tags_are_read_as_bcp47(tag: str) -> None:
    assert primary_subtag(tag) == {"ja-JP": "ja", "EN_us": "en", "ko-Kore-KR": "ko"}.get(tag, "")


@pytest.mark.parametrize("tag", ["日本語", "ja jp", "e", "x" * 40, "ja--JP", "../etc"])
def test_something_that_is_not_a_language_tag_is_refused_by_name(tag: str) -> None:
    with pytest.raises(ValueError, match=r"^language: .* is not a BCP-47 language tag$"):
        primary_subtag(tag)


def test_the_permissive_set_reads_english_without_the_nrc_lexicon() -> None:
    load_shared()
    permissive = ANALYZER_SETS["permissive"]()
    result = read(permissive, "I'm so happy today!")
    assert (result.analyzer, result.dominant) == ("words+vader", "joy")
    # A word only NRC knows is not read.
    assert read(permissive, "That was a nightmare", "en").dominant == "neutral"
    assert read(ANALYZER_SETS["lexicon"](), "That was a nightmare", "en").dominant == "fear"


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    text=st.text(max_size=300)
    | st.text(alphabet="あいう嬉悲怖😀🇰ㅋㅠ기뻐 (´ω`)^_^!?。、\u200b", max_size=300),
    language=st.sampled_from(["", "ja", "en", "ko", "fr"]),
)
def test_every_answer_has_the_eleven_labels_summing_to_one(
    lexicon: AnalyzerSet, text: str, language: str
) -> None:
    read(lexicon, text, language)
