"""SpeechService over gRPC: translates the request to the plain speech modules, their chunks to
responses and their errors to status codes. No speech logic lives here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any, Final

import grpc
import grpc.aio
from google.protobuf.duration_pb2 import Duration

from chatagent.v1 import speech_pb2, speech_pb2_grpc
from services.common.deadline import Deadline, DeadlineExhausted
from services.common.status import StatusTable
from services.tts.config import SpeechSettings
from services.tts.speech import Chunk, Speaker
from services.tts.voice import VoiceUnavailable
from services.tts.workers import Overloaded

Context = grpc.aio.ServicerContext[Any, Any]

# The speech modules' errors and what a caller is told; the message is the error's own. Every
# error in the request (too long, nothing to say, an unknown voice) is a ValueError.
TABLE: Final = StatusTable(
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExhausted, grpc.StatusCode.DEADLINE_EXCEEDED),
    (VoiceUnavailable, grpc.StatusCode.UNAVAILABLE),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
)


class SpeechServicer(speech_pb2_grpc.SpeechServiceServicer):
    def __init__(self, speaker: Speaker, settings: SpeechSettings) -> None:
        self._speaker = speaker
        self._settings = settings

    async def Synthesize(
        self, request: speech_pb2.SynthesizeRequest, context: Context
    ) -> AsyncIterator[speech_pb2.SynthesizeResponse]:
        deadline = Deadline.from_context(
            context, default_seconds=self._settings.tts_timeout_seconds
        )
        async with TABLE.translating(context):
            utterance = await self._speaker.prepare(request.text, request.language, request.voice)
            # Closed however the call ends, so a cancelled call gives its worker back at once.
            async with aclosing(self._speaker.speak(utterance, deadline)) as chunks:
                async for chunk in chunks:
                    yield _response(chunk)


def _response(chunk: Chunk) -> speech_pb2.SynthesizeResponse:
    duration = Duration()
    duration.FromNanoseconds(round(chunk.audio.duration_seconds * 1e9))
    return speech_pb2.SynthesizeResponse(
        sequence=chunk.sequence,
        text=chunk.text,
        audio_wav=chunk.audio.wav(),
        sample_rate_hz=chunk.audio.sample_rate_hz,
        duration=duration,
        characters=chunk.characters,
    )
