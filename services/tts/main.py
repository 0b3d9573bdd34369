"""Starts the SpeechService: `python -m services.tts`."""

from __future__ import annotations

from collections.abc import Sequence

from chatagent.v1 import speech_pb2, speech_pb2_grpc
from services.common import server
from services.tts.config import SpeechSettings
from services.tts.embedded import EmbeddedVoices
from services.tts.openai_tts import OpenAIVoices
from services.tts.servicer import SpeechServicer
from services.tts.speech import Speaker
from services.tts.voice import Voices
from services.tts.workers import Worker, start_workers

SERVICE_NAME = speech_pb2.DESCRIPTOR.services_by_name["SpeechService"].full_name


def voices_for(settings: SpeechSettings) -> Voices:
    """The configured backend."""
    if settings.tts_backend == "openai":
        return OpenAIVoices(
            api_key=settings.openai_api_key.get_secret_value(),
            base_url=settings.openai_base_url or None,
            model=settings.tts_openai_model,
            default_voice=settings.tts_openai_voice,
            timeout_seconds=settings.tts_openai_timeout_seconds,
        )
    return EmbeddedVoices(
        espeak_command=settings.tts_espeak_ng, piper_threads=settings.tts_piper_threads
    )


def speaker_for(settings: SpeechSettings, voices: Voices, workers: Sequence[Worker]) -> Speaker:
    return Speaker(
        voices,
        workers,
        max_chars=settings.tts_max_chars,
        max_sentence_chars=settings.tts_max_sentence_chars,
        max_queue=settings.tts_max_queue,
        default_language=settings.default_language,
    )


def add_speech(host: server.ServiceHost, settings: SpeechSettings, speaker: Speaker) -> None:
    """The servicer on the host, SERVING only once every voice is loaded on every worker."""
    speech_pb2_grpc.add_SpeechServiceServicer_to_server(
        SpeechServicer(speaker, settings), host.server
    )
    host.add_readiness_check("voices", speaker.load)


async def setup(host: server.ServiceHost, settings: SpeechSettings) -> None:
    workers = start_workers(settings.tts_max_concurrency)
    speaker = speaker_for(settings, voices_for(settings), workers)
    add_speech(host, settings, speaker)
    host.add_closer("voices", speaker.aclose)


def main() -> None:
    server.run(SpeechSettings, [SERVICE_NAME], setup)
