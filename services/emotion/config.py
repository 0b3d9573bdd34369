"""EmotionService configuration, from the environment."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field

from services.common.config import Port, Seconds, ServiceSettings
from services.emotion.analyzers import AnalyzerSetName


class EmotionSettings(ServiceSettings):
    SERVICE_NAME: ClassVar[str] = "emotion"

    port: Port = 50054
    metrics_port: Port = 9104
    # Which analysers read the texts (services.emotion.analyzers.ANALYZER_SETS).
    emotion_analyzer: AnalyzerSetName = "lexicon"
    # Longer texts are analysed on a window of this many characters (head and tail) and flagged.
    emotion_max_chars: Annotated[int, Field(ge=100, le=100_000)] = 2000
    # Worker threads, each with its own analysers: at most this many analyses run at once.
    emotion_max_concurrency: Annotated[int, Field(ge=1, le=64)] = 2
    # Calls that may wait for a worker; beyond them a call gets RESOURCE_EXHAUSTED at once.
    emotion_max_queue: Annotated[int, Field(ge=0, le=10_000)] = 64
    # The deadline of a call whose caller set none; also the longest any call may take.
    emotion_deadline_seconds: Seconds = 2.0
