"""Text cleaned for speech: what a voice would read aloud wrongly (emoji names, kaomoji letter by
letter, "double-u" three times) is gone, what it should read is kept, and text with nothing to
say is refused with a message that says so."""

from __future__ import annotations

import time

import emoji
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.tts.normalise import NothingToSay, is_speakable, normalise


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Emoji and pictographs: sequences, flags, skin tones, keycaps, hearts.
        ("🔥💥🎯" * 100 + "にゃん", "にゃん"),
        ("今日は🔥いい天気💥だにゃん。", "今日はいい天気だにゃん。"),
        ("안녕하세요😀こんにちは🇰🇷", "안녕하세요こんにちは"),
        ("Family 👨\u200d👩\u200d👧 time ✌🏽 ok ❤️", "Family time ok"),
        ("great🔥thanks", "great thanks"),
        ("1️⃣ first, #1 second", "first, #1 second"),
        ("★☆♪ 25℃です → 次へ", "25℃です 次へ"),
        ("本当‼ いいね⁉", "本当! いいね!?"),
        # Invisible characters.
        ("に\u200bゃ\u200dん\ufeff", "にゃん"),
        ("\u202eevil\u202c text\x00\x07", "evil text"),
        # Kaomoji, bracketed and bare.
        ("ありがとう(^^)またね", "ありがとうまたね"),
        ("(´・ω・｀)しょんぼり", "しょんぼり"),
        ("ヽ(・∀・)ノ やった", "やった"),
        ("(T_T) 悲しい", "悲しい"),
        ("(=^・^=)にゃん", "にゃん"),
        ("(╯°□°）╯ もう", "もう"),
        ("¯\\_(ツ)_/¯ whatever", "whatever"),
        ("thanks :) bye ;-)", "thanks bye"),
        ("^_^ ok >_< ugh", "ok ugh"),
        ("I <3 you", "I you"),
        # Laughter, but not words or addresses with w in them.
        ("そうだねｗｗｗ", "そうだね"),
        ("草www", "草"),
        ("そうだねw", "そうだね"),
        ("www.example.com", "www.example.com"),
        ("WWW and wow", "WWW and wow"),
        # Brackets that hold words, times and ratios are text, not faces.
        ("(笑)", "(笑)"),
        ("(Mr. Smith) said", "(Mr. Smith) said"),
        ("(2^3) and 10:30, 1:3", "(2 3) and 10:30, 1:3"),
        # Runs of marks collapsed, decorations and markdown marks gone.
        ("すごーーーーーい！！！", "すごーーい！"),
        ("えっと・・・そうだね。。。", "えっと…そうだね。"),
        ("Wait.... what??", "Wait… what?"),
        ("-----\n# Title\n**bold** text", "Title\nbold text"),
        # Whitespace collapsed, line breaks kept.
        ("tab\there\r\n\r\nnew  line\u3000end", "tab here\nnew line end"),
    ],
)
def test_normalises_text_for_speech(text: str, expected: str) -> None:
    assert normalise(text) == expected


@pytest.mark.parametrize(
    "text", ["😀", "🔥💥🎯" * 100, "!!!", "(^^)", "ｗｗｗ", "\u200b\u200b", "★ → ♪", " "]
)
def test_text_with_nothing_to_say_is_refused_naming_the_problem(text: str) -> None:
    with pytest.raises(NothingToSay, match="nothing to speak"):
        normalise(text)


def test_speakable_means_a_letter_or_digit() -> None:
    assert all(is_speakable(text) for text in ("にゃん", "7", "안", "a"))
    assert not any(is_speakable(text) for text in ("！", "ー", "… 、", ""))


PIECES = [*sorted(emoji.EMOJI_DATA)[::7], "あ", "a", " ", "。", "!", "\u200d", "\ufe0f"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=30).map("".join))
def test_no_emoji_survives(text: str) -> None:
    try:
        cleaned = normalise(text)
    except NothingToSay:
        return
    assert emoji.emoji_count(cleaned) == 0


def test_a_long_text_is_normalised_in_milliseconds() -> None:
    text = ("今日は🔥いい天気だにゃん(^^)。Mr. Smith's ｗｗｗ!!! " * 120)[:5000]
    normalise(text)
    started = time.perf_counter()
    normalise(text)
    assert time.perf_counter() - started < 0.2
