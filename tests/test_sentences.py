"""The sentence splitter: where Japanese, English and Korean text is cut into sentences, and that
feeding it the text in pieces (an LLM's stream) gives the same sentences as the whole text."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.sentences import MAX_SENTENCE_CHARS, SentenceSplitter, split_sentences


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Japanese punctuation, runs of marks kept whole.
        (
            "こんにちは。今日はいい天気ですね！散歩に行こうにゃん。",
            ["こんにちは。", "今日はいい天気ですね！", "散歩に行こうにゃん。"],
        ),
        ("そうだね！！本当？！うん。", ["そうだね！！", "本当？！", "うん。"]),
        ("えっ⁉そうなの？", ["えっ⁉", "そうなの？"]),
        # 「」 and 『』 kept whole; a quote closing a sentence ends it unless a particle follows.
        (
            "彼は「行くよ。すぐ戻る。」と言った。それから出かけた。",
            ["彼は「行くよ。すぐ戻る。」と言った。", "それから出かけた。"],
        ),
        ("「行くよ。」「うん。」", ["「行くよ。」", "「うん。」"]),
        ("『本当？』って聞いた。", ["『本当？』って聞いた。"]),
        ("「入れ子の『引用。』も。」だって。", ["「入れ子の『引用。』も。」だって。"]),
        # Ellipses: inside a sentence without a following space, a boundary before a new one.
        ("えっと…そうだね。", ["えっと…そうだね。"]),
        (
            "Wait... what? I was... thinking. Okay…",
            ["Wait... what?", "I was... thinking.", "Okay…"],
        ),
        ("Well… Maybe.", ["Well…", "Maybe."]),
        # Titles, initials, numbering and decimals do not end sentences.
        (
            "Mr. Smith met Dr. Jones at 3.14 p.m. yesterday. They talked.",
            ["Mr. Smith met Dr. Jones at 3.14 p.m. yesterday.", "They talked."],
        ),
        (
            "J. R. R. Tolkien wrote it. It is No. 5 on the list.",
            ["J. R. R. Tolkien wrote it.", "It is No. 5 on the list."],
        ),
        ("So did I. Then we left.", ["So did I.", "Then we left."]),
        ("e.g. this one works. OK.", ["e.g. this one works.", "OK."]),
        ("円周率は３．１４です．次の話です。", ["円周率は３．１４です．", "次の話です。"]),
        ("It costs $4.50 today. Cheap!", ["It costs $4.50 today.", "Cheap!"]),
        (
            "See https://example.com/?q=1 for more. Thanks!",
            ["See https://example.com/?q=1 for more.", "Thanks!"],
        ),
        # Quotes and brackets after the mark belong to the sentence.
        (
            'He said "Go." Then he left. "Go," he said.',
            ['He said "Go."', "Then he left.", '"Go," he said.'],
        ),
        ("(This is an aside.) Back to it.", ["(This is an aside.)", "Back to it."]),
        # Korean.
        (
            "안녕하세요. 오늘 날씨가 좋네요! 기온은 3.5도예요. 정말요?",
            ["안녕하세요.", "오늘 날씨가 좋네요!", "기온은 3.5도예요.", "정말요?"],
        ),
        # "." before Japanese text with no space still ends the sentence.
        ("OK.じゃあね", ["OK.", "じゃあね"]),
        # Line breaks end sentences; list numbers stay with their item.
        ("1. First item\n2. Second item\n\nDone", ["1. First item", "2. Second item", "Done"]),
        # Text without a final mark is the last sentence; whitespace is not a sentence.
        ("まだ終わってない", ["まだ終わってない"]),
        ("   \n  ", []),
    ],
)
def test_splits_text_into_sentences(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


def test_a_long_sentence_is_cut_at_a_clause_mark_or_a_space_within_the_bound() -> None:
    japanese = "これは、とても、長い、文です" * 30
    pieces = split_sentences(japanese, max_chars=100)
    assert "".join(pieces) == japanese
    assert all(len(piece) <= 100 for piece in pieces)
    assert all(piece.endswith("、") for piece in pieces[:-1])

    english = "word " * 100
    pieces = split_sentences(english, max_chars=100)
    assert " ".join(pieces) == english.strip()
    assert all(
        len(piece) <= 100 and piece.split() == ["word"] * len(piece.split()) for piece in pieces
    )


def test_text_with_no_mark_or_space_is_cut_at_the_bound_but_not_inside_a_number() -> None:
    pieces = split_sentences("あ" * 450, max_chars=200)
    assert [len(piece) for piece in pieces] == [200, 200, 50]
    digits = "あ" * 190 + "1234567890" * 3
    first = split_sentences(digits, max_chars=200)[0]
    assert first == "あ" * 190


def test_an_unclosed_quote_does_not_hold_the_rest_of_the_text() -> None:
    text = "「閉じない引用。" + "次の文です。" * 60
    pieces = split_sentences(text, max_chars=MAX_SENTENCE_CHARS)
    assert "".join(pieces) == text
    assert all(len(piece) <= MAX_SENTENCE_CHARS for piece in pieces)


def feed_in_pieces(text: str, cuts: list[int], max_chars: int = MAX_SENTENCE_CHARS) -> list[str]:
    splitter = SentenceSplitter(max_chars=max_chars)
    sentences: list[str] = []
    start = 0
    for cut in sorted(cuts):
        sentences += splitter.feed(text[start:cut])
        start = cut
    sentences += splitter.feed(text[start:])
    return sentences + splitter.flush()


SAMPLE = (
    "彼は「行くよ。すぐ戻る。」と言った。Mr. Smith paid $3.50 at 5 p.m. today... "
    "Really?! えっと…そうだね。「はい。」「いいえ。」 No. 5 is J. R. R. Tolkien's. "
    "안녕하세요. 3.5도예요! OK.じゃあね\n1. First\n" + "長い、長い、文" * 40 + "。 end"
)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13, 64])
def test_feeding_in_pieces_gives_the_sentences_of_the_whole_text(size: int) -> None:
    cuts = list(range(size, len(SAMPLE), size))
    assert feed_in_pieces(SAMPLE, cuts, max_chars=60) == split_sentences(SAMPLE, max_chars=60)


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(
        alphabet=st.sampled_from(list("あ漢。、！？!?.… 「」『』“”\"'()ab.AZ19\nMr")), max_size=120
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=120), max_size=12),
)
def test_any_text_fed_in_any_pieces_splits_as_the_whole(text: str, cuts: list[int]) -> None:
    whole = split_sentences(text, max_chars=20)
    assert feed_in_pieces(text, [c for c in cuts if c <= len(text)], max_chars=20) == whole
    # Nothing is lost or invented: the sentences are the text without its whitespace.
    assert "".join("".join(whole).split()) == "".join(text.split())


def test_a_sentence_is_handed_out_as_soon_as_what_follows_shows_it_is_complete() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("こんにちは。") == []  # another 。 or 」 might follow
    assert splitter.feed("今日") == ["こんにちは。"]
    assert splitter.feed("は晴れ。Dr.") == ["今日は晴れ。"]
    assert splitter.feed(" ") == []  # "Dr." before a name does not end a sentence
    assert splitter.feed("Who is here") == []
    assert splitter.flush() == ["Dr. Who is here"]
    # The splitter is ready for the next text.
    assert splitter.feed("次。") == []
    assert splitter.flush() == ["次。"]


def test_splitting_is_linear_in_the_text() -> None:
    text = "これは文です、読点もある。" * 400  # 5,200 characters
    started = time.perf_counter()
    whole = split_sentences(text)
    streamed = feed_in_pieces(text, list(range(4, len(text), 4)))
    assert whole == streamed
    assert len(whole) == 400
    unbroken = "あ" * 20_000
    assert len(feed_in_pieces(unbroken, list(range(4, len(unbroken), 4)))) == 100
    assert time.perf_counter() - started < 2.0


def test_a_tiny_bound_is_refused() -> None:
    with pytest.raises(ValueError, match="max_chars"):
        SentenceSplitter(max_chars=3)
