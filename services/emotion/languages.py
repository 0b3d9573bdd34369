"""The language a text is analysed as: the caller's BCP-47 tag when it gives one, else detected.

Detection starts from the scripts (`services.common.language`): kana mean Japanese, Hangul
Korean. Where a script is shared with languages no analyser covers, py3langid decides, and only
on enough text to be sure: Latin letters may be English or French, Han characters alone Japanese
or Chinese, and letters of other scripts (Cyrillic, Arabic, Thai, ...) are never English. A text
too short to tell ("Danke") is read as English, where it most likely finds nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from services.common.language import (
    ENGLISH_LIKE,
    IDENTIFY_CONFIDENCE,
    IDENTIFY_MAX_CHARS,
    IDENTIFY_MIN_LATIN_LETTERS,
    Language,
    has_evidence,
    identify,
    is_supported,
    script_counts,
)

UNDETERMINED: Final = "und"

# Han-only text is asked about from this many characters (py3langid's other thresholds are
# services.common.language's, shared with the persona guard).
IDENTIFY_MIN_HAN_CHARS: Final = 8
# Enough to name the language of a text already known to be unsupported (Cyrillic, say).
NAMING_CONFIDENCE: Final = 0.5

# A primary language subtag (2–3 letters, or 4–8 for registered ones) and optional subtags.
_TAG = re.compile(r"[A-Za-z]{2,8}(?:[-_][A-Za-z0-9]{1,8})*")
MAX_TAG_CHARS: Final = 35


@dataclass(frozen=True, slots=True)
class TextLanguage:
    tag: str  # the BCP-47 primary subtag the text is analysed as: "ja", "fr", or "und"
    analyser: Language | None  # the language whose analyser reads it; None: no analyser does


def primary_subtag(tag: str) -> str:
    """The lower-case primary subtag of a caller's tag ("ja-JP" -> "ja"); "" for an empty or
    "und" tag. ValueError, naming the field, for something that is not a language tag."""
    tag = tag.strip()
    if not tag:
        return ""
    if len(tag) > MAX_TAG_CHARS or _TAG.fullmatch(tag) is None:
        raise ValueError(f"language: {tag[:MAX_TAG_CHARS]!r} is not a BCP-47 language tag")
    primary = tag.replace("_", "-").split("-", 1)[0].lower()
    return "" if primary == UNDETERMINED else primary


def from_tag(primary: str) -> TextLanguage:
    """The language named by a primary subtag (from `primary_subtag`, not empty)."""
    return TextLanguage(primary, primary if is_supported(primary) else None)


def detect(text: str) -> TextLanguage:
    """The language `text` (cleaned) is written in, as far as its scripts and py3langid tell."""
    counts = script_counts(text)
    if not has_evidence(counts):
        # "ok", "w": too few letters to tell; Latin ones are read as English (and most likely
        # found neutral), anything else has no language we can name.
        if counts.latin and not counts.other:
            return TextLanguage("en", "en")
        return TextLanguage(UNDETERMINED, None)
    scores = counts.scores()
    # Japanese first on a tie, as services.common.language.detect_language has it.
    best: Language = max(("ja", "ko", "en"), key=lambda lang: scores[lang])
    if best == "en":
        if counts.other > counts.latin:
            # Not English whatever py3langid says; it only names the language, when it can.
            code = identify(text[:IDENTIFY_MAX_CHARS], min_confidence=NAMING_CONFIDENCE)
            return TextLanguage(UNDETERMINED if code in ENGLISH_LIKE else code, None)
        if counts.latin >= IDENTIFY_MIN_LATIN_LETTERS:
            code = identify(text[:IDENTIFY_MAX_CHARS], min_confidence=IDENTIFY_CONFIDENCE)
            if code not in ENGLISH_LIKE and code != UNDETERMINED:
                return TextLanguage(code, None)
        return TextLanguage("en", "en")
    if best == "ja" and counts.kana == 0 and counts.han >= IDENTIFY_MIN_HAN_CHARS:
        code = identify(text[:IDENTIFY_MAX_CHARS], min_confidence=IDENTIFY_CONFIDENCE)
        if code not in ("ja", UNDETERMINED):
            return TextLanguage(code, None)
    return TextLanguage(best, best)
