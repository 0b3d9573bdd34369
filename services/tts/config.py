"""SpeechService configuration, from the environment."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Self

from pydantic import Field, SecretStr, model_validator

from services.common.config import Port, Seconds, ServiceSettings
from services.common.language import Language


class SpeechSettings(ServiceSettings):
    SERVICE_NAME: ClassVar[str] = "tts"

    port: Port = 50053
    metrics_port: Port = 9103
    # "embedded": the voices that ship with the service; "openai": OpenAI's speech API (or any
    # server that speaks it, at OPENAI_BASE_URL).
    tts_backend: Literal["embedded", "openai"] = "embedded"
    # Longer texts are refused with INVALID_ARGUMENT; shorter ones are spoken whole.
    tts_max_chars: Annotated[int, Field(ge=1, le=100_000)] = 5000
    # A sentence longer than this is cut at a clause mark or a space: what one response holds.
    tts_max_sentence_chars: Annotated[int, Field(ge=20, le=2000)] = 200
    # Worker threads: sentences synthesized at once (the calls take turns, a sentence each).
    tts_max_concurrency: Annotated[int, Field(ge=1, le=64)] = 2
    # Calls admitted beyond the workers, waiting their turn; beyond them a call gets
    # RESOURCE_EXHAUSTED at once.
    tts_max_queue: Annotated[int, Field(ge=0, le=10_000)] = 8
    # The deadline of a call whose caller set none; also the longest any call may take.
    tts_timeout_seconds: Seconds = 60.0
    # The language of a text whose request names none and whose script says nothing.
    default_language: Language = "ja"
    # The espeak-ng executable (Korean, and English when Piper cannot load).
    tts_espeak_ng: str = "espeak-ng"
    # Intra-op threads of the Piper (English) voice's ONNX session, shared by the workers.
    tts_piper_threads: Annotated[int, Field(ge=1, le=64)] = 2
    openai_api_key: SecretStr = SecretStr("")
    openai_base_url: str = ""
    tts_openai_model: str = "gpt-4o-mini-tts"
    # The provider voice for every language when a request names none.
    tts_openai_voice: str = "alloy"
    # Upper bound for one sentence from the provider; a caller's shorter deadline wins.
    tts_openai_timeout_seconds: Seconds = 10.0

    @model_validator(mode="after")
    def _openai_complete(self) -> Self:
        if self.tts_backend == "openai" and not self.openai_api_key.get_secret_value():
            raise ValueError(
                "OPENAI_API_KEY is required when TTS_BACKEND=openai (a local server accepts "
                "any placeholder)"
            )
        if self.openai_base_url and not self.openai_base_url.startswith(("http://", "https://")):
            raise ValueError("OPENAI_BASE_URL must be an http:// or https:// URL")
        return self
