"""ToolService over gRPC: translates protobuf to the plain tool modules and their errors to
status codes. No tool logic lives here."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, Final

import grpc
import grpc.aio

from chatagent.v1 import tools_pb2, tools_pb2_grpc
from services.common.deadline import Deadline, DeadlineExhausted
from services.common.gazetteer import Gazetteer, UnknownPlace, load_gazetteer
from services.common.language import base_language
from services.common.status import StatusTable, abort
from services.common.timezones import resolve_zone
from services.common.validation import check_user_id
from services.tools.calculator import calculate
from services.tools.config import ToolSettings
from services.tools.fortune import draw_fortune
from services.tools.timeinfo import get_time
from services.tools.weather import WeatherClient, WeatherUnavailable

logger = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

# The tool modules' errors and what a caller is told; the message is the error's own. Every
# argument error (CalculationError, UnknownTimezone, bad lengths) is a ValueError.
TABLE: Final = StatusTable(
    (UnknownPlace, grpc.StatusCode.NOT_FOUND),
    (WeatherUnavailable, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExhausted, grpc.StatusCode.DEADLINE_EXCEEDED),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
)


class ToolServicer(tools_pb2_grpc.ToolServiceServicer):
    def __init__(self, settings: ToolSettings, weather: WeatherClient) -> None:
        self._settings = settings
        self._weather = weather
        self._gazetteer: Gazetteer | None = None

    async def load_places(self) -> None:
        """Index the offline gazetteer once, off the event loop (it takes over a second)."""
        if self._gazetteer is None:
            self._gazetteer = await asyncio.to_thread(
                load_gazetteer, self._settings.gazetteer_min_population
            )
            logger.info("gazetteer indexed", extra={"names": len(self._gazetteer)})

    async def _places(self, context: Context) -> Gazetteer:
        if self._gazetteer is None:
            await abort(context, grpc.StatusCode.UNAVAILABLE, "the place index is still loading")
        return self._gazetteer

    async def GetTime(
        self, request: tools_pb2.GetTimeRequest, context: Context
    ) -> tools_pb2.GetTimeResponse:
        gazetteer = await self._places(context)
        async with TABLE.translating(context):
            found = get_time(
                gazetteer,
                place=request.place,
                timezone=request.timezone,
                default_timezone=self._settings.default_timezone,
                now=datetime.now(UTC),
            )
        return tools_pb2.GetTimeResponse(**asdict(found))

    async def GetWeather(
        self, request: tools_pb2.GetWeatherRequest, context: Context
    ) -> tools_pb2.GetWeatherResponse:
        gazetteer = await self._places(context)
        language = base_language(request.language, self._settings.default_language)
        deadline = Deadline.from_context(
            context, default_seconds=self._settings.weather_timeout_seconds
        )
        async with TABLE.translating(context):
            found = await self._weather.weather(gazetteer, request.place, language, deadline)
        return tools_pb2.GetWeatherResponse(**asdict(found))

    async def GetFortune(
        self, request: tools_pb2.GetFortuneRequest, context: Context
    ) -> tools_pb2.GetFortuneResponse:
        async with TABLE.translating(context):
            check_user_id(request.user_id)
            zone = resolve_zone(request.timezone or self._settings.default_timezone)
        fortune = draw_fortune(
            user_id=request.user_id,
            local_date=datetime.now(zone).date(),
            language=base_language(request.language, self._settings.default_language),
        )
        return tools_pb2.GetFortuneResponse(**asdict(fortune))

    async def Calculate(
        self, request: tools_pb2.CalculateRequest, context: Context
    ) -> tools_pb2.CalculateResponse:
        async with TABLE.translating(context):
            result = calculate(request.expression)
        return tools_pb2.CalculateResponse(**asdict(result))
