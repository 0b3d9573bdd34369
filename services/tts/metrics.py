"""SpeechService's own Prometheus metrics (the per-RPC ones come from services.common)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CHARACTERS = Counter(
    "chatagent_tts_characters_total", "Characters synthesized, by engine.", ["engine"]
)
AUDIO_SECONDS = Counter(
    "chatagent_tts_audio_seconds_total", "Seconds of audio synthesized, by engine.", ["engine"]
)
SENTENCE_SECONDS = Histogram(
    "chatagent_tts_sentence_seconds",
    "Time to synthesize one sentence, by engine.",
    ["engine"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
)
FAILURES = Counter(
    "chatagent_tts_failures_total", "Sentences a voice failed to synthesize, by engine.", ["engine"]
)
REFUSED = Counter(
    "chatagent_tts_refused_total",
    "Calls refused with RESOURCE_EXHAUSTED: as many admitted as workers and queue allow.",
)
ADMITTED = Gauge("chatagent_tts_calls_admitted", "Calls being spoken or waiting to be.")
BUSY = Gauge("chatagent_tts_workers_busy", "Workers synthesizing a sentence.")
