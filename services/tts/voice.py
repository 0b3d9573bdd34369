"""What a voice is to the service, and what a backend (a catalogue of voices) is.

A `Voice` speaks one sentence on a worker and returns its audio. A `Voices` catalogue is a
backend: it loads its engines onto the workers (off the event loop, before the service reports
SERVING) and picks the voice for a request, by name or by the text's language. The backends are
`services.tts.embedded` (no account, no network) and `services.tts.openai_tts`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from services.common.language import Language
from services.tts.wav import Audio
from services.tts.workers import Worker


class VoiceUnavailable(Exception):
    """A voice cannot speak now: its engine failed, or is not loaded; the message says which."""


class UnknownVoice(ValueError):
    """The request names a voice this service does not have."""


class Voice(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def engine(self) -> str:
        """What speaks ("openjtalk", "piper", "espeak-ng", "openai"): a bounded metric label,
        where a provider's voice names are not."""
        ...

    async def synthesize(self, text: str, worker: Worker) -> Audio:
        """The audio of one sentence (no frames when the engine found nothing to say);
        VoiceUnavailable when the engine fails."""
        ...


class Voices(Protocol):
    def load(self, workers: Sequence[Worker]) -> None:
        """Load the engines (blocking, idempotent); raises when the backend cannot serve."""
        ...

    def choose(self, name: str, language: Language) -> Voice:
        """The voice `name`, or the language's default for ""; UnknownVoice if there is none."""
        ...

    async def aclose(self) -> None: ...
