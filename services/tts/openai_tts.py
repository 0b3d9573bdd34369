"""The production backend: OpenAI's speech API (or any server that speaks it, via
OPENAI_BASE_URL) through the `openai` client, one request per sentence.

Every language is spoken by one provider voice (`TTS_OPENAI_VOICE`, or the request's voice: any
name the provider knows, passed on as it is). Audio is asked for as WAV and converted to this
service's format; a streamed WAV whose sizes are unset is read to its end. The client does not
retry (`max_retries=0`): a failed sentence ends the call with UNAVAILABLE and the caller's
breaker and fallback decide, instead of retries that outlast its deadline.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

import openai

from services.common.language import Language
from services.common.text import quoted
from services.tts.voice import UnknownVoice, VoiceUnavailable
from services.tts.wav import Audio, AudioFormatError, read_wav
from services.tts.workers import Worker

_VOICE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MAX_ERROR_CHARS: Final = 200


class OpenAIVoices:
    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None,
        model: str,
        default_voice: str,
        timeout_seconds: float,
    ) -> None:
        if not api_key:
            raise ValueError("api_key must not be empty (local servers accept any placeholder)")
        self._model = model
        self._default_voice = default_voice
        self._timeout = timeout_seconds
        self._client = openai.AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0)

    def load(self, workers: Sequence[Worker]) -> None:
        # Nothing to load, and the provider is not asked: a replica must not report NOT_SERVING
        # for what its callers' breakers already handle.
        return None

    def choose(self, name: str, language: Language) -> OpenAIVoice:
        name = name or self._default_voice
        if not _VOICE_NAME.fullmatch(name):
            raise UnknownVoice(
                f"{quoted(name)} is not a voice name: letters, digits, '_', '.' and '-', at most 64"
            )
        return OpenAIVoice(self, name)

    async def speak(self, text: str, voice: str) -> Audio:
        try:
            response = await self._client.audio.speech.create(
                model=self._model,
                voice=voice,
                input=text,
                response_format="wav",
                timeout=self._timeout,
            )
        except openai.APIStatusError as exc:
            raise VoiceUnavailable(
                f"the speech provider answered HTTP {exc.status_code}: "
                f"{str(exc.message)[:_MAX_ERROR_CHARS]}"
            ) from exc
        except openai.APITimeoutError as exc:
            raise VoiceUnavailable(
                f"the speech provider gave no answer within {self._timeout:g}s"
            ) from exc
        except openai.OpenAIError as exc:
            raise VoiceUnavailable(
                f"the speech provider could not be reached ({type(exc).__name__})"
            ) from exc
        try:
            return read_wav(response.content)
        except AudioFormatError as exc:
            raise VoiceUnavailable(f"the speech provider's audio cannot be used: {exc}") from exc

    async def aclose(self) -> None:
        await self._client.close()


class OpenAIVoice:
    def __init__(self, voices: OpenAIVoices, name: str) -> None:
        self._voices = voices
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    @property
    def engine(self) -> str:
        return "openai"

    async def synthesize(self, text: str, worker: Worker) -> Audio:
        return await self._voices.speak(text, self._name)
