"""EmotionService's own Prometheus metrics (the per-RPC ones come from services.common)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ANALYSES = Counter(
    "chatagent_emotion_analyses_total",
    "Texts analysed, by language (ja, en, ko, und, other) and analyser.",
    ["language", "analyzer"],
)
TRUNCATED = Counter(
    "chatagent_emotion_truncated_total",
    "Texts longer than EMOTION_MAX_CHARS, of which only a window was analysed.",
)
IN_FLIGHT = Gauge(
    "chatagent_emotion_in_flight",
    "Analyses running or waiting for a worker (refused beyond workers + EMOTION_MAX_QUEUE).",
)
ANALYSIS_SECONDS = Histogram(
    "chatagent_emotion_analysis_seconds",
    "Time one analysis took in its worker thread, by analyser.",
    ["analyzer"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
