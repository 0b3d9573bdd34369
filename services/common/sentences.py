"""Cutting text into sentences, all at once or as it arrives.

`SentenceSplitter` is fed text in pieces (an LLM's stream, say) and hands out each sentence as
soon as it is complete; `flush()` gives the rest at the end. Fed in any pieces, it gives the same
sentences as `split_sentences` gives for the whole text: a boundary that depends on what follows
("Dr." before a name, 」 before と) is decided only once that has arrived. It keeps no more than
the sentence being completed, and imports nothing but the standard library.

The rules are the same for Japanese, English and Korean text, and mixtures of them:

* A sentence ends after a run of 。．！？!?｡‼⁉ ("そうだね！！", "本当？！" stay whole), with the
  closing brackets and quotes after it, and at every line break.
* "." ends one only before whitespace and then something that is not a lower-case letter, and
  not after a title ("Mr.", "Dr.", "Prof."), an initial ("J. R. R."), a numbering word before a
  number ("No. 5", "p. 12") or a list number ("1. First"). Decimals ("3.14", "３．１４"),
  "e.g." and "example.com" are never cut. Before Japanese or Korean text (no space) "." does end
  a sentence.
* An ellipsis (…, ‥, "...") ends one only before whitespace and something that is not a
  lower-case letter: "えっと…そうだね" and "I was... thinking" stay whole.
* Inside 「」, 『』 and “” nothing is cut: "「行くよ。すぐ戻る。」と言った。" is one sentence. After
  a quote that closes a sentence, the next one starts unless the text goes on with a particle
  (hiragana) or a comma: "「行くよ。」「うん。」" is two.
* A sentence that grows past `max_chars` without ending (or an unclosed quote) is cut at its last
  clause mark (、，,;；:：) or space in the first `max_chars`, else at `max_chars` (not inside a
  Latin word or number when that can be helped), so what is held stays bounded.

Sentences are returned without surrounding whitespace; empty ones are dropped.
"""

from __future__ import annotations

import re
from typing import Final

MAX_SENTENCE_CHARS: Final = 200

# Marks that end a sentence wherever they stand, and those that do only before whitespace.
_STRONG: Final = frozenset("。！？!?｡．‼⁉⁈⁇")
_RUN: Final = frozenset("。！？!?｡．‼⁉⁈⁇.…‥")
_ASCII_STRONG: Final = frozenset("!?")
_CLOSERS: Final = frozenset("」』）)】〕〉》］]}\"'”’»›")
_QUOTES: Final = {"「": "」", "『": "』", "“": "”"}
_QUOTE_CLOSERS: Final = frozenset(_QUOTES.values())
_CLAUSE_MARKS: Final = "、，,;；:："
# What the scan stops at; everything else is passed over at regex speed.
_MARKS: Final = re.compile("[。！？!?｡．‼⁉⁈⁇.…‥\n「」『』“”]")

# Before "." these do not end a sentence: "Mr. Smith", "vs. them".
_TITLES: Final = frozenset(
    {
        *("mr", "mrs", "ms", "mx", "dr", "prof", "st", "sr", "jr", "mt", "ft", "gen", "col"),
        *("lt", "sgt", "capt", "cmdr", "adm", "gov", "sen", "rep", "pres", "rev", "hon"),
        *("messrs", "mme", "mlle", "fr", "vs", "cf"),
    }
)
# Before "." and a number these do not end a sentence: "No. 5", "pp. 10-12".
_NUMBERING: Final = frozenset(
    {"no", "nos", "vol", "vols", "p", "pp", "ch", "fig", "figs", "eq", "art", "sec", "ed", "op"}
)
# Whitespace after "." or an ellipsis is looked through this far for what comes next.
_LOOKAHEAD_SPACES: Final = 64
# A sentence cut for length is not cut before this share of `max_chars`.
_MIN_CUT_SHARE: Final = 4
# A forced cut backs off this far at most, not to split a word or a number.
_WORD_BACKOFF: Final = 24


class SentenceSplitter:
    """Feed text with `feed`; each call returns the sentences it completed. `flush` returns the
    rest at the end of the text and makes the splitter ready for another text."""

    __slots__ = ("_buffer", "_depth", "_max", "_pos", "_start")

    def __init__(self, *, max_chars: int = MAX_SENTENCE_CHARS) -> None:
        if max_chars < 8:
            raise ValueError("max_chars must be at least 8")
        self._max = max_chars
        self._buffer = ""
        self._start = 0  # where the sentence being completed begins
        self._pos = 0  # where the scan goes on
        self._depth = 0  # quotes open at `_pos`

    def feed(self, text: str) -> list[str]:
        """The sentences completed by `text`, in order."""
        self._buffer = self._buffer[self._start :] + text
        self._pos -= self._start
        self._start = 0
        return self._scan(final=False)

    def flush(self) -> list[str]:
        """The sentences left at the end of the text (none, one, or more when cut for length)."""
        sentences = self._scan(final=True)
        self._emit(sentences, len(self._buffer))
        self._buffer, self._start, self._pos, self._depth = "", 0, 0, 0
        return sentences

    def _emit(self, sentences: list[str], end: int) -> None:
        sentence = self._buffer[self._start : end].strip()
        if sentence:
            sentences.append(sentence)
        self._start = end

    def _scan(self, *, final: bool) -> list[str]:
        text = self._buffer
        sentences: list[str] = []
        while True:
            found = _MARKS.search(text, self._pos)
            at = found.start() if found else len(text)
            if at - self._start > self._max:
                self._emit(sentences, self._cut())
                self._pos = max(self._pos, self._start)
                continue
            if found is None:
                self._pos = len(text)
                return sentences
            decided = self._decide(at, final=final)
            if decided is None:
                # What follows the mark decides; keep the scan at the mark until it arrives.
                self._pos = at
                return sentences
            boundary, self._pos, self._depth = decided
            if boundary is not None:
                self._emit(sentences, boundary)

    def _decide(self, at: int, *, final: bool) -> tuple[int | None, int, int] | None:
        """(where the sentence ends or None, where the scan goes on, quotes open there) for the
        mark at `at`; None when the text after it has not arrived yet."""
        text = self._buffer
        mark = text[at]
        depth = self._depth
        if mark == "\n":
            return at, at + 1, 0
        if mark in _QUOTES:
            return None, at + 1, depth + 1
        if mark in _QUOTE_CLOSERS:
            if depth == 0:
                return None, at + 1, 0
            depth -= 1
            if depth > 0 or not _ends_in_mark(text, self._start, at):
                return None, at + 1, depth
            end = _skip(text, at + 1, _CLOSERS)
            if end == len(text):
                return (end, end, 0) if final else None
            after = text[end]
            continues = _is_hiragana(after) or after in _CLAUSE_MARKS
            return (None if continues else end), end, 0
        if depth > 0:
            return None, at + 1, depth
        run_end = _skip(text, at, _RUN)
        end = _skip(text, run_end, _CLOSERS)
        if end == len(text) and not final:
            return None  # the run or its closers may go on
        run = text[at:run_end]
        if run == "．" and _between_digits(text, at):
            return None, run_end, 0
        if any(ch in _STRONG for ch in run):
            if end < len(text) and _is_word_char(text[end]) and set(run) <= _ASCII_STRONG:
                return None, end, 0  # "https://example.com/?q=1", "Yahoo!7"
            return end, end, 0
        ends = self._dot_ends(at, end, final) if run == "." else _ellipsis_ends(text, end, final)
        if ends is None:
            return None
        return (end if ends else None), end, 0

    def _dot_ends(self, at: int, end: int, final: bool) -> bool | None:
        text = self._buffer
        if end == len(text):
            return True
        after = text[end]
        if not after.isspace():
            # "3.14", "e.g.", "example.com" go on; "OK.じゃあ" does not.
            return _is_cjk_letter(after) and not _between_digits(text, at)
        following = _next_visible(text, end, final)
        if following is None:
            return None
        if following == "" or following == "\n":
            return True
        word = _word_before(text, at).lower()
        if word in _TITLES:
            return False
        if word in _NUMBERING and following.isdigit():
            return False
        if len(word) == 1 and word != "i" and text[at - 1].isupper():
            return False  # an initial: "J. R. R. Tolkien"
        head = text[self._start : at].strip()
        if head.isdigit() and len(head) <= 3:
            return False  # a list number: "1. First"
        return not following.islower()

    def _cut(self) -> int:
        """Where the sentence that grew past `max_chars` is cut."""
        text = self._buffer
        start = self._start
        limit = start + self._max
        shortest = start + self._max // _MIN_CUT_SHARE
        for marks in (_CLAUSE_MARKS, " \t\u3000"):
            at = max(text.rfind(mark, start, limit) for mark in marks)
            if at >= shortest:
                return at + 1
        for at in range(limit, max(shortest, limit - _WORD_BACKOFF), -1):
            if not (_is_word_char(text[at - 1]) and _is_word_char(text[at])):
                return at
        return limit


def split_sentences(text: str, *, max_chars: int = MAX_SENTENCE_CHARS) -> list[str]:
    """The sentences of `text`, in order (see the module's rules)."""
    splitter = SentenceSplitter(max_chars=max_chars)
    return [*splitter.feed(text), *splitter.flush()]


def _skip(text: str, at: int, chars: frozenset[str]) -> int:
    while at < len(text) and text[at] in chars:
        at += 1
    return at


def _ends_in_mark(text: str, start: int, closer: int) -> bool:
    """Whether the quote closed at `closer` ends with a sentence mark ("「行くよ。」")."""
    at = closer - 1
    while at >= start and text[at] in _CLOSERS:
        at -= 1
    return at >= start and text[at] in _RUN


def _next_visible(text: str, at: int, final: bool) -> str | None:
    """The first character after the whitespace at `at` ("" at the end of the text, "\\n" for a
    line break); None when it has not arrived yet."""
    limit = min(len(text), at + _LOOKAHEAD_SPACES)
    while at < limit and text[at].isspace() and text[at] != "\n":
        at += 1
    if at < len(text):
        return text[at] if at < limit else "\n"
    return "" if final else None


def _ellipsis_ends(text: str, end: int, final: bool) -> bool | None:
    if end == len(text):
        return True
    if not text[end].isspace():
        return False
    following = _next_visible(text, end, final)
    if following is None:
        return None
    return not following.islower()


def _word_before(text: str, at: int) -> str:
    start = at
    while start > 0 and text[start - 1].isalpha() and text[start - 1].isascii():
        start -= 1
    return text[start:at]


def _between_digits(text: str, at: int) -> bool:
    return 0 < at < len(text) - 1 and text[at - 1].isdigit() and text[at + 1].isdigit()


def _is_hiragana(ch: str) -> bool:
    return "\u3041" <= ch <= "\u309f"


def _is_cjk_letter(ch: str) -> bool:
    return ch >= "\u2e80" and ch.isalpha()


def _is_word_char(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()
