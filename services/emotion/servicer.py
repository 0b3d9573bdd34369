"""EmotionService over gRPC: the request to the analysis pool, its answer to protobuf, its
errors to status codes. No analysis happens here."""

from __future__ import annotations

from typing import Any, Final

import grpc
import grpc.aio

from chatagent.v1 import emotion_pb2, emotion_pb2_grpc, types_pb2
from services.common.deadline import Deadline, DeadlineExhausted
from services.common.status import StatusTable
from services.emotion.analysis import Analysis
from services.emotion.config import EmotionSettings
from services.emotion.languages import primary_subtag
from services.emotion.pool import AnalysisPool, NotReady, Overloaded

Context = grpc.aio.ServicerContext[Any, Any]

TABLE: Final = StatusTable(
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NotReady, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExhausted, grpc.StatusCode.DEADLINE_EXCEEDED),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
)


class EmotionServicer(emotion_pb2_grpc.EmotionServiceServicer):
    def __init__(self, settings: EmotionSettings, pool: AnalysisPool) -> None:
        self._settings = settings
        self._pool = pool

    async def Analyze(
        self, request: emotion_pb2.AnalyzeRequest, context: Context
    ) -> emotion_pb2.AnalyzeResponse:
        deadline = Deadline.from_context(
            context, default_seconds=self._settings.emotion_deadline_seconds
        )
        async with TABLE.translating(context):
            language = primary_subtag(request.language)
            analysis = await self._pool.analyze(request.text, language, deadline)
        return to_response(analysis)


def to_response(analysis: Analysis) -> emotion_pb2.AnalyzeResponse:
    return emotion_pb2.AnalyzeResponse(
        emotion=types_pb2.EmotionResult(scores=analysis.scores, dominant=analysis.dominant),
        analyzer=analysis.analyzer,
        polarity=analysis.polarity,
        truncated=analysis.truncated,
        language=analysis.language,
        unsupported_language=analysis.unsupported_language,
    )
