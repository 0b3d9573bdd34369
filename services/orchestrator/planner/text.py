"""The scanned text of a message and the regex helper every keyword table uses."""

from __future__ import annotations

import string
from typing import Final

# Messages are at most 4,000 characters; anything longer (a caller that skipped validation) is
# only read this far, so the cost of one message stays bounded whatever arrives.
MAX_SCANNED_CHARS: Final = 8000

_ASCII_LOWER: Final = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def fold(text: str) -> str:
    """`text` (already cut to MAX_SCANNED_CHARS) with letters in lower case, every position
    unchanged."""
    folded = text.lower()
    # A few letters grow when lowered ("İ" -> "i̇"); positions matter more than those letters.
    return folded if len(folded) == len(text) else text.translate(_ASCII_LOWER)


def words(*alternatives: str) -> str:
    r"""Alternatives that each start a word, as a regex for the case-folded text.

    `\b` at the front of an alternative stops the regex engine from skipping ahead to the
    characters an alternative can start with, which makes a long message scan several times
    slower; a look-behind placed after the first letter means the same and keeps the skip.
    """
    return "|".join(rf"{alt[0]}(?<!\w.){alt[1:]}" for alt in alternatives)
