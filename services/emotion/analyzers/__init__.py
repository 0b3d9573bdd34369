"""The analyser sets `EMOTION_ANALYZER` chooses between. A new analyser implements
`base.Analyzer` and is registered here under a name (and in the settings' `AnalyzerSetName`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

from services.emotion.analyzers import english
from services.emotion.analyzers.base import Analyzer, AnalyzerFactory, AnalyzerSet, Finding
from services.emotion.analyzers.english import EnglishAnalyzer
from services.emotion.analyzers.japanese import MlaskAnalyzer
from services.emotion.analyzers.korean import KoreanAnalyzer

__all__ = ["ANALYZER_SETS", "Analyzer", "AnalyzerFactory", "AnalyzerSet", "Finding"]

AnalyzerSetName = Literal["lexicon", "permissive"]


def lexicon() -> AnalyzerSet:
    """ML-Ask (ja); the NRC lexicon with our word table, and VADER (en); the keyword table (ko)."""
    return {"ja": MlaskAnalyzer(), "en": EnglishAnalyzer(use_nrc=True), "ko": KoreanAnalyzer()}


def permissive() -> AnalyzerSet:
    """`lexicon` without the NRC lexicon, which is free for non-commercial research only:
    English is read by our word table and VADER alone (less recall)."""
    return {"ja": MlaskAnalyzer(), "en": EnglishAnalyzer(use_nrc=False), "ko": KoreanAnalyzer()}


ANALYZER_SETS: Final[Mapping[AnalyzerSetName, AnalyzerFactory]] = {
    "lexicon": lexicon,
    "permissive": permissive,
}


def load_shared() -> None:
    """Load the data every thread's analysers share (held in module-level caches) once, before
    the worker threads build their sets."""
    english.load_shared()
