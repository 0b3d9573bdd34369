"""Starts the EmotionService: `python -m services.emotion`."""

from __future__ import annotations

from chatagent.v1 import emotion_pb2, emotion_pb2_grpc
from services.common import server
from services.emotion.analyzers import ANALYZER_SETS, AnalyzerFactory
from services.emotion.config import EmotionSettings
from services.emotion.pool import AnalysisPool
from services.emotion.servicer import EmotionServicer

SERVICE_NAME = emotion_pb2.DESCRIPTOR.services_by_name["EmotionService"].full_name


def add_service(
    host: server.ServiceHost, settings: EmotionSettings, factory: AnalyzerFactory
) -> AnalysisPool:
    """The EmotionService on `host`, its analysers built by `factory` in each worker thread;
    SERVING once they all are. One place for production and for the tests' own analysers."""
    pool = AnalysisPool(
        factory,
        workers=settings.emotion_max_concurrency,
        max_queue=settings.emotion_max_queue,
        max_chars=settings.emotion_max_chars,
    )
    emotion_pb2_grpc.add_EmotionServiceServicer_to_server(
        EmotionServicer(settings, pool), host.server
    )
    host.add_readiness_check("analysers", pool.start)
    host.add_closer("analysers", pool.close)
    return pool


async def setup(host: server.ServiceHost, settings: EmotionSettings) -> None:
    add_service(host, settings, ANALYZER_SETS[settings.emotion_analyzer])


def main() -> None:
    server.run(EmotionSettings, [SERVICE_NAME], setup)
