"""Japanese with Open JTalk (pyopenjtalk-plus): its dictionary and the HTS voice "Mei" ship
inside the wheel, so nothing is downloaded (plain `pyopenjtalk` downloads its dictionary at first
use and fails offline).

Each worker thread gets its own front end (`OpenJTalk`) and back end (`HTSEngine`): separate
engines release the GIL and run in parallel, while the module-level `pyopenjtalk.tts()` shares
one engine behind a lock. The back end gives float64 samples at 48 kHz on the int16 scale, and
loud syllables go past it (peaks of 56,643 seen): they are clipped. A sentence without a
phoneme (the front end found nothing to read) is not handed to the back end at all, which would
only warn on stderr.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Final

from services.tts.voice import VoiceUnavailable
from services.tts.wav import Audio
from services.tts.workers import Worker

SAMPLE_RATE_HZ: Final = 48_000
_FULL_SCALE: Final = 32767.0
# Synthesized once per worker at load, so the first request does not pay for the readings
# models (Sudachi, the "何" model) that load on first use.
_WARM_UP: Final = "何をしているの、にゃん。"


class OpenJTalkVoice:
    name: Final = "mei"
    engine: Final = "openjtalk"

    def __init__(self) -> None:
        self._local = threading.local()

    def load(self, workers: Sequence[Worker]) -> None:
        for worker in workers:
            worker.call(self._engines)

    async def synthesize(self, text: str, worker: Worker) -> Audio:
        return await worker.run(self._speak, text)

    def _engines(self) -> tuple[Any, Any]:
        engines: tuple[Any, Any] | None = getattr(self._local, "engines", None)
        if engines is None:
            # Imported on a worker thread at load time: the import takes about half a second.
            import pyopenjtalk
            from pyopenjtalk.htsengine import HTSEngine
            from pyopenjtalk.openjtalk import OpenJTalk

            engines = (
                OpenJTalk(dn_mecab=pyopenjtalk.OPEN_JTALK_DICT_DIR),
                HTSEngine(pyopenjtalk.DEFAULT_HTS_VOICE),
            )
            self._local.engines = engines
            self._speak(_WARM_UP)
        return engines

    def _speak(self, text: str) -> Audio:
        import pyopenjtalk

        jtalk, hts = self._engines()
        try:
            labels = pyopenjtalk.extract_fullcontext(text, jtalk=jtalk)
            if not labels:
                return Audio(b"", SAMPLE_RATE_HZ)
            samples = hts.synthesize(labels)
            rate = int(hts.get_sampling_frequency())
        except (RuntimeError, MemoryError, ValueError) as exc:
            raise VoiceUnavailable(f"the Japanese voice failed: {exc}") from exc
        return Audio.from_samples(samples, rate, full_scale=_FULL_SCALE)
