"""The eleven emotion labels, and how evidence for them becomes scores.

The labels are ML-Ask's ten emotion classes (Nakamura's dictionary of emotive expressions) in
English, plus `neutral`. Every analyser reports evidence (a weight per label); `scores` turns it
into the answer: all eleven labels, summing to 1, `neutral` 1.0 when nothing was found.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Final

from services.common.emotions import EMOTION_LABELS, NEUTRAL

__all__ = [
    "LABELS",
    "NEGATED",
    "NEUTRAL",
    "VALENCE",
    "add",
    "dominant",
    "is_label",
    "polarity",
    "scores",
]

LABELS: Final = EMOTION_LABELS
_KNOWN: Final = frozenset(LABELS)

# ML-Ask's valence of its classes: yorokobi, suki, yasu positive; iya, aware, ikari, kowa
# negative; takaburi, odoroki, haji either ("NorP"), so 0.
VALENCE: Final[Mapping[str, float]] = {
    "joy": 1.0,
    "like": 1.0,
    "relief": 1.0,
    "excitement": 0.0,
    "surprise": 0.0,
    "sadness": -1.0,
    "shame": 0.0,
    "anger": -1.0,
    "dislike": -1.0,
    "fear": -1.0,
    "neutral": 0.0,
}

# What a negated emotion word expresses instead: ML-Ask's table of contextual valence shifters
# (CVS_TABLE) in our labels, so that 「嬉しくない」, "not happy" and "기쁘지 않아" shift alike.
NEGATED: Final[Mapping[str, tuple[str, ...]]] = {
    "like": ("dislike",),
    "anger": ("relief",),
    "fear": ("relief",),
    "relief": ("anger", "excitement", "surprise", "shame", "fear"),
    "dislike": ("joy", "like"),
    "sadness": ("like", "joy", "excitement", "surprise", "shame"),
    "excitement": ("relief", "sadness"),
    "surprise": ("relief", "sadness"),
    "shame": ("relief", "sadness"),
    "joy": ("dislike",),
}


def is_label(name: str) -> bool:
    return name in _KNOWN


def add(evidence: dict[str, float], label: str, weight: float, *, negated: bool = False) -> None:
    """Add `weight` for `label` to `evidence`, spread over the shifted labels when negated."""
    if not negated:
        evidence[label] = evidence.get(label, 0.0) + weight
        return
    shifted = NEGATED.get(label, ())
    for other in shifted:
        evidence[other] = evidence.get(other, 0.0) + weight / len(shifted)


def scores(evidence: Mapping[str, float]) -> dict[str, float]:
    """All eleven labels, summing to 1: `evidence` normalised, or `neutral` 1.0 without any.

    Unknown labels and weights that are not positive finite numbers are left out, so an analyser
    can never put anything else into an answer.
    """
    kept = {
        label: weight
        for label, weight in evidence.items()
        if label in _KNOWN and math.isfinite(weight) and weight > 0
    }
    total = sum(kept.values())
    if total <= 0:
        return {label: 1.0 if label == NEUTRAL else 0.0 for label in LABELS}
    return {label: kept.get(label, 0.0) / total for label in LABELS}


def dominant(scored: Mapping[str, float]) -> str:
    """The label with the highest score; ties go to the label listed first."""
    return max(LABELS, key=lambda label: (scored.get(label, 0.0), -LABELS.index(label)))


def polarity(scored: Mapping[str, float]) -> float:
    """From -1 to 1: the scores weighted by each label's valence."""
    value = sum(scored.get(label, 0.0) * valence for label, valence in VALENCE.items())
    return max(-1.0, min(1.0, value))
