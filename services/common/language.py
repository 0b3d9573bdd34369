"""Language tags: the few languages the suite speaks, how a BCP-47 tag maps onto them, and which
of them a text is written in.

Detection is by script, not by a statistical model: for {ja, en, ko} the script decides almost
everything (kana only occur in Japanese, Hangul only in Korean), a regex pass over at most
`MAX_SCAN_CHARS` characters costs tens of microseconds, and it needs no model in memory. A
statistical identifier could only add the difference between English and other Latin-script
languages, and those all map to English anyway (see `base_language`). `identify` still exposes
py3langid for callers that need that difference (the persona guard does).
"""

from __future__ import annotations

import re
import string
import threading
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeGuard

Language = Literal["ja", "en", "ko"]

SUPPORTED: Final[tuple[Language, ...]] = ("ja", "en", "ko")

# Only this much of a text is looked at: a message's language shows in its first lines, and the
# work per message stays bounded whatever the message size limit is.
MAX_SCAN_CHARS: Final = 2000

# Latin-script text with fewer letters than this ("ok", "w", "no") says nothing about the writer's
# language; the caller's default (hint, history) is a better guess.
MIN_LETTERS: Final = 3

# One CJK character carries about as much as three Latin letters, so a Japanese sentence with a
# few English words ("Pythonでlistをsortする方法") still counts as Japanese and an English one
# naming a place ("I visited 東京 yesterday") as English.
LATIN_LETTERS_PER_CJK_CHAR: Final = 3.0

# Han characters without any kana or Hangul may be Chinese, a name or a terse Japanese phrase:
# weaker evidence for Japanese than kana.
HAN_ONLY_WEIGHT: Final = 0.5


def is_supported(tag: str) -> TypeGuard[Language]:
    return tag in SUPPORTED


def base_language(tag: str, default: Language) -> Language:
    """The supported language of a BCP-47 tag ("ja-JP" -> "ja", "EN_us" -> "en").

    An empty tag gives `default`; a well-formed tag of a language the suite does not speak gives
    English, the most widely understood of the three.
    """
    primary = tag.strip().replace("_", "-").split("-", 1)[0].lower()
    if not primary:
        return default
    if is_supported(primary):
        return primary
    return "en"


# -- scripts -----------------------------------------------------------------------------------

# Letters only: the kana blocks' punctuation (゠ ・) and the voicing marks (゛゜) are left out.
_KANA = re.compile(
    "[\u3041-\u3096\u309d-\u309f\u30a1-\u30fa\u30fc-\u30ff\u31f0-\u31ff"
    "\uff66-\uff9d\U0001b000-\U0001b16f]"
)
_HANGUL = re.compile(
    "[\u1100-\u11ff\u3131-\u318e\ua960-\ua97c\uac00-\ud7a3\ud7b0-\ud7fb\uffa0-\uffdc]"
)
# 々〆〇 are written with kanji and count as Han.
_HAN = re.compile("[\u3005-\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U000323af]")
_LATIN = re.compile(
    "[A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff\uff21-\uff3a\uff41-\uff5a]"
)
# Everything the classes above do not cover and that could be a letter of another script
# (Cyrillic, Greek, Arabic, Thai, ...); each candidate is then tested with str.isalpha(). Ranges
# of pure punctuation and symbols are left out so that the common case finds nothing.
_OTHER_CANDIDATE = re.compile(
    "[^\x00-\u024f\u1100-\u11ff\u1e00-\u1eff\u2000-\u2bff\u3000-\u30ff\u3131-\u318e"
    "\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\ua960-\ua97c\uac00-\ud7a3\ud7b0-\ud7fb"
    "\uf900-\ufaff\ufe00-\ufe6f\uff00-\uffef\U0001b000-\U0001b16f\U0001f000-\U0001faff"
    "\U00020000-\U000323af]"
)
_ASCII_LETTERS: Final = string.ascii_letters.encode("ascii")
# A URL is Latin letters whatever the language around it.
_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ScriptCounts:
    """Letters per script in a text (digits, punctuation and emoji are not letters)."""

    kana: int = 0
    hangul: int = 0
    han: int = 0
    latin: int = 0
    other: int = 0  # letters of any other script

    @property
    def cjk(self) -> int:
        return self.kana + self.hangul + self.han

    @property
    def letters(self) -> int:
        return self.cjk + self.latin + self.other

    def scores(self) -> dict[Language, float]:
        """The evidence for each supported language, in CJK-character units.

        Han characters count for Korean when the text has Hangul and no kana (hanja), for Japanese
        otherwise; letters of scripts other than CJK count for English, the language the suite
        answers unsupported languages in.
        """
        han_ja = han_ko = 0.0
        if self.hangul and not self.kana:
            han_ko = float(self.han)
        elif self.kana:
            han_ja = float(self.han)
        else:
            han_ja = self.han * HAN_ONLY_WEIGHT
        return {
            "ja": self.kana + han_ja,
            "ko": self.hangul + han_ko,
            "en": (self.latin + self.other) / LATIN_LETTERS_PER_CJK_CHAR,
        }


def script_counts(text: str) -> ScriptCounts:
    """Count the letters per script in the first `MAX_SCAN_CHARS` characters, URLs left out.

    Regex passes over a bounded prefix: linear, no per-character Python code in the common case,
    and safe to call from any thread.
    """
    text = text[:MAX_SCAN_CHARS]
    if "://" in text or "www." in text or "WWW." in text:
        text = _URL.sub(" ", text)
    if text.isascii():
        # The common English case in one C-speed pass.
        data = text.encode("ascii")
        return ScriptCounts(latin=len(data) - len(data.translate(None, _ASCII_LETTERS)))
    other = sum(1 for ch in _OTHER_CANDIDATE.findall(text) if ch.isalpha())
    return ScriptCounts(
        kana=len(_KANA.findall(text)),
        hangul=len(_HANGUL.findall(text)),
        han=len(_HAN.findall(text)),
        latin=len(_LATIN.findall(text)),
        other=other,
    )


def has_evidence(counts: ScriptCounts) -> bool:
    """Whether a text has enough letters to tell its language: any CJK, or a few other letters."""
    return counts.cjk > 0 or counts.latin + counts.other >= MIN_LETTERS


def detect_language(text: str, *, default: Language = "ja") -> Language:
    """The supported language `text` is written in, from its scripts.

    Hangul means Korean and kana Japanese; Han characters alone mean Japanese; Latin and other
    alphabets mean English (the suite answers unsupported languages in English). Text mixing
    scripts goes to the script with the most weight (`ScriptCounts.scores`), ties to CJK. Text
    with no letters, or only a couple of Latin letters ("ok", "w", "12+3"), gives `default`.
    Only the first `MAX_SCAN_CHARS` characters are looked at.
    """
    counts = script_counts(text)
    if not has_evidence(counts):
        return default
    scores = counts.scores()
    # max() keeps the first of equal scores: Japanese, then Korean, then English.
    return max(("ja", "ko", "en"), key=lambda lang: scores[lang])


# -- statistical identification (py3langid) ----------------------------------------------------

# Our own identifier, not py3langid's module-level one: nobody else's set_languages() can narrow
# it, and loading it is guarded by a lock (py3langid's global loader is not).
_identifier: Any = None
_identifier_lock = threading.Lock()


def _load_identifier() -> Any:
    global _identifier
    if _identifier is None:
        with _identifier_lock:
            if _identifier is None:
                from py3langid.langid import (  # type: ignore[import-untyped]
                    MODEL_FILE,
                    LanguageIdentifier,
                )

                # norm_probs gives probabilities, so callers can ask for a confidence.
                _identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return _identifier


def warm_up() -> None:
    """Load the identification model (about half a second, once; later calls return at once).

    Call it at service start, off the event loop. py3langid unpacks its model (~70 MB) into a
    temporary file while loading, so the temp directory must be writable.
    """
    _load_identifier()


def is_warm() -> bool:
    """Whether `identify` can answer without loading the model first."""
    return _identifier is not None


# How py3langid is asked about text whose script more than one language shares: only this much
# of it, only with at least this many letters of that script, and believed only this sure.
IDENTIFY_MAX_CHARS: Final = 600
IDENTIFY_MIN_LATIN_LETTERS: Final = 30
IDENTIFY_CONFIDENCE: Final = 0.9
# What py3langid says of text that is still English for our purposes: Nigerian Pidgin (an
# English creole) and "no linguistic content".
ENGLISH_LIKE: Final = frozenset({"en", "pcm", "zxx"})


def identify(text: str, *, min_confidence: float = 0.0, load: bool = True) -> str:
    """py3langid's language code for `text` ("en", "fr", "ja", "zh", ...), or "und".

    The codes are the model's labels: ISO 639-1 where one exists, ISO 639-3 otherwise ("pcm",
    "yue"). "und" when the text has no letters, when the best guess's probability is below
    `min_confidence`, or when `load` is false and the model is not loaded yet (so a caller on an
    event loop never waits for it). Short texts get unreliable guesses with low probabilities;
    ask for a confidence. Looks at the first `MAX_SCAN_CHARS` characters; thread-safe.
    """
    text = text[:MAX_SCAN_CHARS]
    if not any(ch.isalpha() for ch in text):
        return "und"
    if not load and _identifier is None:
        return "und"
    code, probability = _load_identifier().classify(text)
    if probability < min_confidence:
        return "und"
    return str(code)
