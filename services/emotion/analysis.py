"""One text analysed, end to end: window, clean, language, analyser, scores. Plain, synchronous
Python that runs in a worker thread; `services.emotion.pool` decides when and where."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from services.emotion import labels
from services.emotion.analyzers import AnalyzerSet
from services.emotion.languages import UNDETERMINED, detect, from_tag
from services.emotion.text import clean, has_words, window

# AnalyzeResponse.analyzer when no analyser read the text (no letters, or no analyser for its
# language).
NO_ANALYZER: Final = "none"


@dataclass(frozen=True, slots=True)
class Analysis:
    scores: Mapping[str, float]  # all eleven labels, summing to 1
    dominant: str
    polarity: float  # -1 to 1
    analyzer: str
    language: str  # BCP-47 primary subtag, "und" when the text has none
    truncated: bool
    unsupported_language: bool


def analyze(text: str, language: str, analyzers: AnalyzerSet, *, max_chars: int) -> Analysis:
    """The emotion in `text`. `language` is a primary subtag from
    `languages.primary_subtag`; empty: detected. Only `max_chars` characters are read."""
    part, truncated = window(text, max_chars)
    cleaned = clean(part)
    readable = has_words(cleaned)
    if language:
        found = from_tag(language)
    elif readable:
        found = detect(cleaned)
    else:
        found = from_tag(UNDETERMINED)
    analyser = None if found.analyser is None else analyzers.get(found.analyser)
    if analyser is None or not readable:
        neutral = labels.scores({})
        return Analysis(
            scores=neutral,
            dominant=labels.NEUTRAL,
            polarity=0.0,
            analyzer=NO_ANALYZER,
            language=found.tag,
            truncated=truncated,
            # Known to be a language no analyser reads: named by the caller, or letters of one.
            unsupported_language=analyser is None and (bool(language) or readable),
        )
    finding = analyser.analyze(cleaned)
    scored = labels.scores(finding.evidence)
    polarity = labels.polarity(scored) if finding.polarity is None else finding.polarity
    return Analysis(
        scores=scored,
        dominant=labels.dominant(scored),
        polarity=max(-1.0, min(1.0, polarity)) if math.isfinite(polarity) else 0.0,
        analyzer=analyser.name,
        language=found.tag,
        truncated=truncated,
        unsupported_language=False,
    )
