"""Cutting text into sentences as it arrives: fed in pieces (an LLM's stream), it hands out each
sentence as soon as it is complete, so speech can start before the text has ended.

A sentence ends after 。．！？!?… (and runs of them), or after . when whitespace follows (so
"3.14" and "e.g" stay whole), together with the closing brackets and quotes after it; a sentence
inside 「」 is not cut. A sentence that grows past `max_chars` without ending is cut at its last
clause mark or space (or, failing those, at `max_chars`), so what is held stays bounded.
"""

from __future__ import annotations

from typing import Final

_ENDS: Final = frozenset("。．！？!?…‥\n")
_ASCII_END: Final = "."
_CLOSERS: Final = frozenset("」』）)】〕]}\"'”’»›")
_OPENERS: Final = {"「": "」", "『": "』"}
_CLAUSE_ENDS: Final = "、，,;；:："
MAX_SENTENCE_CHARS: Final = 300


class SentenceSplitter:
    """Feed text with `feed`; each call returns the sentences completed by it. `flush` returns
    what is left at the end of the text."""

    __slots__ = ("_buffer", "_max")

    def __init__(self, max_chars: int = MAX_SENTENCE_CHARS) -> None:
        if max_chars < 2:
            raise ValueError("max_chars must be at least 2")
        self._buffer = ""
        self._max = max_chars

    def feed(self, text: str) -> list[str]:
        self._buffer += text
        sentences: list[str] = []
        while (end := self._end()) is not None:
            sentence, self._buffer = self._buffer[:end].strip(), self._buffer[end:]
            if sentence:
                sentences.append(sentence)
        return sentences

    def flush(self) -> list[str]:
        rest, self._buffer = self._buffer.strip(), ""
        return [rest] if rest else []

    def _end(self) -> int | None:
        """Where the first complete sentence of the buffer ends, or None if none is complete."""
        text = self._buffer
        depth = 0
        i = 0
        while i < len(text):
            ch = text[i]
            if ch in _OPENERS:
                depth += 1
            elif ch in _OPENERS.values() and depth:
                depth -= 1
            is_end = ch in _ENDS or (
                ch == _ASCII_END and i + 1 < len(text) and text[i + 1].isspace()
            )
            if is_end and depth == 0:
                j = i + 1
                # The run of marks and the closers after them belong to this sentence; what
                # follows must be seen to know the run has ended.
                while j < len(text) and (text[j] in _ENDS or text[j] in _CLOSERS):
                    j += 1
                if j == len(text) and ch != "\n":
                    return None
                return j
            i += 1
        if len(text) > self._max:
            return self._cut(text)
        return None

    def _cut(self, text: str) -> int:
        """Where an over-long sentence is cut: after its last clause mark, else before its last
        space, within `max_chars`; else at `max_chars`."""
        head = text[: self._max]
        for marks in (_CLAUSE_ENDS, " \u3000"):
            at = max(head.rfind(mark) for mark in marks)
            if at > 0:
                return at + 1
        return self._max


def split_sentences(text: str) -> list[str]:
    splitter = SentenceSplitter()
    return [*splitter.feed(text), *splitter.flush()]
