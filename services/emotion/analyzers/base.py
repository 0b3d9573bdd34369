"""What an analyser is.

An analyser reads cleaned text of one language and reports evidence (a weight per label of
`services.emotion.labels`) and, if it has a measure of its own, a polarity. It is plain Python
used by one thread at a time: each worker thread builds its own set, so an analyser may hold
state that is not thread-safe (a MeCab tagger does).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from services.common.language import Language


@dataclass(frozen=True, slots=True)
class Finding:
    # Weight per label; empty when nothing emotive was found (the answer is then neutral).
    evidence: Mapping[str, float] = field(default_factory=dict)
    # From -1 to 1; None: derived from the scores (services.emotion.labels.polarity).
    polarity: float | None = None


class Analyzer(Protocol):
    @property
    def name(self) -> str:
        """Reported in AnalyzeResponse.analyzer for the texts it read."""
        ...

    def analyze(self, text: str) -> Finding:
        """`text` is cleaned, at most EMOTION_MAX_CHARS long and has at least one letter."""
        ...


# One analyser per language; a language left out has no analyser (unsupported_language).
AnalyzerSet = Mapping[Language, Analyzer]
# Builds one thread's set; called once in each worker thread.
AnalyzerFactory = Callable[[], AnalyzerSet]
