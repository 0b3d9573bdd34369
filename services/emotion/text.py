"""What of a text is analysed: a bounded window of it, cleaned of what carries no words.

Window: a text longer than the limit is read as its head and its tail, half the limit each,
each cut back to a word or sentence boundary near the cut. The opening says what a message is
about and its end how the writer feels by then; what is skipped is the middle of a long paste.

Cleaning: control, zero-width and format characters removed (so "ha\u200bppy" is "happy"
again), emoji and pictographs (the `emoji` package) and kaomoji (by pattern) replaced by a
space, then NFKC (full-width Latin and half-width katakana become what the lexicons spell).
None of the analysers reads emoji or kaomoji; left in, the Greek and Cyrillic letters of
「(´・ω・`)」 would also count as another script when the language is detected.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

import emoji

# A cut looks this far back (head) or ahead (tail) for a boundary before it cuts mid-word.
BOUNDARY_SEARCH_CHARS: Final = 40

_BOUNDARY = re.compile(r"[\s.,!?;:、。！？，．…」』)）]")

# C0/C1 controls except tab and newline, zero-width and bidirectional marks, word joiners,
# variation selectors and the BOM: invisible, and they split words.
_INVISIBLE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u206f"
    "\ufe00-\ufe0f\ufeff\U000e0000-\U000e007f]"
)

# Any character an emoji can start with, ASCII left out (keycaps start with a digit, "#" or
# "*" and are found by their U+20E3): text without one skips the emoji package's slower scan.
# A set, not a regex class: sre tests a class of 1,400 astral characters one range at a time.
_EMOJI_STARTS: Final = frozenset(
    {key[0] for key in emoji.EMOJI_DATA if key[0] > "\x7f"} | {"\u20e3"}
)

# Kaomoji: a bracketed face made of symbols and a few letters used as eyes and mouths (not
# 「(笑)」 or "(see above)", which are words), and the common unbracketed ones.
_FACE_PARTS = r"[^\w\s()（）]|[_ωДд∀εσ▽∇oOTvuｏﾟﾉノ]"
_EYES = r"[´`'^ω∀Дд▽∇・･°ﾟ゜;；＾_＿≧≦><*ﾉノ]"
_KAOMOJI = re.compile(
    rf"[(（](?=(?:{_FACE_PARTS}){{2,20}}[)）])(?=[^)）]*{_EYES})(?:{_FACE_PARTS}){{2,20}}[)）]"
    r"|\^[_\-.oOω ]?\^|(?<![A-Za-z])[TＴ];?_+;?[TＴ](?![A-Za-z])|>_<|(?<![A-Za-z])orz(?![A-Za-z])"
)
_SPACES = re.compile(r"[ \t\u3000]{2,}")
# Hangul compatibility jamo (ㅋㅋ, ㅠㅠ) are left as they are: NFKC would compose "ㅋㅠ" into
# the syllable 큐.
_JAMO_RUNS = re.compile("([\u3131-\u318e]+)")


def window(text: str, max_chars: int) -> tuple[str, bool]:
    """The part of `text` that is analysed (at most `max_chars` characters), and whether that
    is less than all of it."""
    if len(text) <= max_chars:
        return text, False
    head_size = max_chars // 2
    tail_size = max_chars - head_size - 1  # one for the newline that keeps them apart
    head = text[:head_size]
    cut = _last_boundary(head)
    if cut is not None:
        head = head[:cut]
    tail = text[len(text) - tail_size :]
    start = _first_boundary(tail)
    if start is not None:
        tail = tail[start:]
    return f"{head}\n{tail}", True


def _last_boundary(head: str) -> int | None:
    floor = max(0, len(head) - BOUNDARY_SEARCH_CHARS)
    for index in range(len(head) - 1, floor - 1, -1):
        if _BOUNDARY.match(head, index):
            return index + 1
    return None


def _first_boundary(tail: str) -> int | None:
    match = _BOUNDARY.search(tail, 0, BOUNDARY_SEARCH_CHARS)
    return None if match is None else match.end()


def clean(text: str) -> str:
    """`text` without invisible characters, emoji and kaomoji, NFKC-normalised."""
    # Emoji first: their sequences hold joiners and variation selectors.
    if not _EMOJI_STARTS.isdisjoint(text):
        text = emoji.replace_emoji(text, " ")
    text = _INVISIBLE.sub("", text)
    text = _KAOMOJI.sub(" ", text)
    text = _nfkc(text)
    return _SPACES.sub(" ", text).strip()


def _nfkc(text: str) -> str:
    if not _JAMO_RUNS.search(text):
        return unicodedata.normalize("NFKC", text)
    parts = _JAMO_RUNS.split(text)
    # split() with a group: the jamo runs are the odd parts.
    return "".join(
        part if index % 2 else unicodedata.normalize("NFKC", part)
        for index, part in enumerate(parts)
    )


def warm_up() -> None:
    """The emoji package builds its search tree at first use (about 10 ms): at start instead."""
    clean("😀")


def has_words(text: str) -> bool:
    """Whether anything is left to read: a letter of any script."""
    return any(ch.isalpha() for ch in text)
