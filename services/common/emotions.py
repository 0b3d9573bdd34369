"""The emotion labels every service speaks (DESIGN.md): stable lower-case English keys. The
emotion service scores them; the orchestrator keeps only these from its answers."""

from __future__ import annotations

from typing import Final

# Order matters: it breaks ties between equal scores, the same way everywhere.
EMOTION_LABELS: Final = (
    "joy",
    "like",
    "relief",
    "excitement",
    "surprise",
    "sadness",
    "shame",
    "anger",
    "dislike",
    "fear",
    "neutral",
)
NEUTRAL: Final = "neutral"
