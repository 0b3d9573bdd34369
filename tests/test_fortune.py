from __future__ import annotations

import datetime
import re
from collections import Counter

import pytest

from services.tools.fortune import Fortune, FortuneLevel, draw_fortune

DAY = datetime.date(2026, 11, 26)
NEXT_DAY = DAY + datetime.timedelta(days=1)
USERS = [f"user-{n}" for n in range(5_000)]

HANGUL = re.compile(r"[\uac00-\ud7a3]")
KANA = re.compile(r"[\u3040-\u30ff]")
KANJI = re.compile(r"[\u4e00-\u9fff]")


def draw(user_id: str, date: datetime.date = DAY, language: str = "ja") -> Fortune:
    return draw_fortune(user_id=user_id, local_date=date, language=language)


@pytest.fixture(scope="module")
def levels() -> Counter[FortuneLevel]:
    return Counter(draw(user).level for user in USERS)


def test_same_user_and_date_give_the_same_fortune() -> None:
    assert draw("alice") == draw("alice")
    assert draw("alice").date == "2026-11-26"


def test_a_datetime_counts_as_its_date() -> None:
    moment = datetime.datetime(2026, 11, 26, 23, 59, 59)
    assert draw_fortune(user_id="alice", local_date=moment, language="ja") == draw("alice")


def test_levels_match_the_proto_enum_numbers() -> None:
    assert [(level.name, level.value) for level in FortuneLevel] == [
        ("DAIKICHI", 1),
        ("CHUKICHI", 2),
        ("SHOKICHI", 3),
        ("KICHI", 4),
        ("SUEKICHI", 5),
        ("KYO", 6),
    ]


def test_every_level_occurs(levels: Counter[FortuneLevel]) -> None:
    assert set(levels) == set(FortuneLevel)


def test_best_and_worst_are_rarer_than_plain_blessing(levels: Counter[FortuneLevel]) -> None:
    assert levels[FortuneLevel.DAIKICHI] < levels[FortuneLevel.KICHI]
    assert levels[FortuneLevel.KYO] < levels[FortuneLevel.KICHI]
    assert levels[FortuneLevel.KYO] < levels[FortuneLevel.SHOKICHI]


@pytest.mark.parametrize(
    ("level", "share"),
    [
        (FortuneLevel.DAIKICHI, 0.12),
        (FortuneLevel.CHUKICHI, 0.18),
        (FortuneLevel.SHOKICHI, 0.20),
        (FortuneLevel.KICHI, 0.22),
        (FortuneLevel.SUEKICHI, 0.18),
        (FortuneLevel.KYO, 0.10),
    ],
)
def test_distribution_follows_the_weights(
    levels: Counter[FortuneLevel], level: FortuneLevel, share: float
) -> None:
    # Five standard deviations at n = 5,000: a wrong weight fails, sampling noise does not.
    assert levels[level] / len(USERS) == pytest.approx(share, abs=0.03)


def test_different_users_draw_differently() -> None:
    draws = {(f.level, f.message, f.lucky_item) for f in (draw(user) for user in USERS[:500])}
    # 6 levels x 3 messages x 13 items; 500 users should see a large part of it.
    assert len(draws) > 100


def test_the_date_changes_the_draw_for_most_users() -> None:
    users = USERS[:1_000]
    changed = sum(
        (draw(user).level, draw(user).message, draw(user).lucky_item)
        != (
            draw(user, NEXT_DAY).level,
            draw(user, NEXT_DAY).message,
            draw(user, NEXT_DAY).lucky_item,
        )
        for user in users
    )
    assert changed > 900
    assert draw("alice", NEXT_DAY).date == "2026-11-27"


def test_languages_share_the_draw_and_differ_in_text() -> None:
    for user in USERS[:300]:
        ja, en, ko = (draw(user, language=lang) for lang in ("ja", "en", "ko"))
        assert ja.level == en.level == ko.level
        assert ja.date == en.date == ko.date
        assert len({ja.label, en.label, ko.label}) == 3
        assert len({ja.message, en.message, ko.message}) == 3
        assert len({ja.lucky_item, en.lucky_item, ko.lucky_item}) == 3


def test_languages_pick_the_same_message_and_item() -> None:
    # Each Japanese text must always pair with one English and one Korean text, and vice versa:
    # then the index, not just the level, is shared across languages.
    pairs: set[tuple[str, str, str]] = set()
    items: set[tuple[str, str, str]] = set()
    for user in USERS[:2_000]:
        ja, en, ko = (draw(user, language=lang) for lang in ("ja", "en", "ko"))
        pairs.add((ja.message, en.message, ko.message))
        items.add((ja.lucky_item, en.lucky_item, ko.lucky_item))
    for triples in (pairs, items):
        for column in range(3):
            assert len({triple[column] for triple in triples}) == len(triples)
    assert len(pairs) >= 6 * 3
    assert len(items) >= 10


@pytest.mark.parametrize("tag", ["ja", "ja-JP", "JA_jp", ""])
def test_japanese_by_tag_and_by_default(tag: str) -> None:
    fortune = draw("alice", language=tag)
    assert fortune == draw("alice", language="ja")


@pytest.mark.parametrize("tag", ["fr", "de-DE", "zh-Hans", "xx"])
def test_unknown_language_gives_english(tag: str) -> None:
    assert draw("alice", language=tag) == draw("alice", language="en")


def test_korean_by_tag() -> None:
    assert draw("alice", language="ko-KR") == draw("alice", language="ko")


def test_scripts_of_each_language() -> None:
    for user in USERS[:500]:
        ja, en, ko = (draw(user, language=lang) for lang in ("ja", "en", "ko"))
        for text in (ja.label, ja.message, ja.lucky_item):
            assert KANA.search(text) or KANJI.search(text), text
            assert not HANGUL.search(text), text
        for text in (ko.label, ko.message, ko.lucky_item):
            assert HANGUL.search(text), text
            assert not KANA.search(text), text
        for text in (en.label, en.message, en.lucky_item):
            assert text.isascii(), text


def test_japanese_text_leaves_nyan_to_the_persona() -> None:
    for user in USERS[:1_000]:
        fortune = draw(user, language="ja")
        assert not fortune.message.rstrip("。！!？?").endswith("にゃん"), fortune.message
        assert "にゃん" not in fortune.message


def test_labels() -> None:
    labels: dict[tuple[FortuneLevel, str], str] = {}
    for user in USERS[:500]:
        for lang in ("ja", "en", "ko"):
            fortune = draw(user, language=lang)
            labels[(fortune.level, lang)] = fortune.label
    assert len(labels) == len(FortuneLevel) * 3
    assert [labels[(level, "ja")] for level in FortuneLevel] == [
        "大吉",
        "中吉",
        "小吉",
        "吉",
        "末吉",
        "凶",
    ]
    assert labels[(FortuneLevel.DAIKICHI, "en")] == "Great blessing"
    assert labels[(FortuneLevel.DAIKICHI, "ko")] == "대길"
    assert labels[(FortuneLevel.KYO, "ko")] == "흉"
