"""ToolService over gRPC: translates protobuf to the plain tool modules and their errors to
status codes. No tool logic lives here."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any, NoReturn

import grpc
import grpc.aio

from chatagent.v1 import tools_pb2, tools_pb2_grpc
from services.common.channels import DeadlineExhausted, call_timeout
from services.common.language import base_language
from services.tools.calculator import CalculationError, calculate
from services.tools.config import ToolSettings
from services.tools.fortune import draw_fortune
from services.tools.gazetteer import Gazetteer
from services.tools.timeinfo import UnknownPlace, UnknownTimezone, get_time, resolve_zone
from services.tools.weather import PlaceNotFound, WeatherClient, WeatherUnavailable

logger = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

MAX_USER_ID_CHARS = 128
MAX_PLACE_CHARS = 200


async def _abort(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


class ToolServicer(tools_pb2_grpc.ToolServiceServicer):
    def __init__(self, settings: ToolSettings, weather: WeatherClient) -> None:
        self._settings = settings
        self._weather = weather
        self._gazetteer: Gazetteer | None = None

    async def load_places(self) -> None:
        """Index the offline gazetteer once, off the event loop (it takes about a second)."""
        if self._gazetteer is None:
            self._gazetteer = await asyncio.to_thread(
                Gazetteer.load, self._settings.gazetteer_min_population
            )
            logger.info("gazetteer indexed", extra={"names": len(self._gazetteer)})

    async def _places(self, context: Context) -> Gazetteer:
        if self._gazetteer is None:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, "the place index is still loading")
        return self._gazetteer

    async def GetTime(
        self, request: tools_pb2.GetTimeRequest, context: Context
    ) -> tools_pb2.GetTimeResponse:
        if len(request.place) > MAX_PLACE_CHARS:
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"place is longer than {MAX_PLACE_CHARS} characters",
            )
        gazetteer = await self._places(context)
        try:
            found = get_time(
                gazetteer,
                place=request.place,
                timezone=request.timezone,
                default_timezone=self._settings.default_timezone,
                now=datetime.now(UTC),
            )
        except UnknownPlace as exc:
            await _abort(context, grpc.StatusCode.NOT_FOUND, str(exc))
        except UnknownTimezone as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return tools_pb2.GetTimeResponse(
            local_time=found.local_time,
            timezone=found.timezone,
            utc_offset=found.utc_offset,
            utc_offset_seconds=found.utc_offset_seconds,
            abbreviation=found.abbreviation,
            is_dst=found.is_dst,
            weekday=found.weekday,
            place=found.place,
            country_code=found.country_code,
        )

    async def GetWeather(
        self, request: tools_pb2.GetWeatherRequest, context: Context
    ) -> tools_pb2.GetWeatherResponse:
        gazetteer = await self._places(context)
        language = base_language(request.language, self._settings.default_language)
        try:
            timeout = call_timeout(context, self._settings.weather_timeout_seconds)
            found = await self._weather.weather(gazetteer, request.place, language, timeout)
        except ValueError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except PlaceNotFound as exc:
            await _abort(context, grpc.StatusCode.NOT_FOUND, str(exc))
        except WeatherUnavailable as exc:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))
        except DeadlineExhausted as exc:
            await _abort(context, grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
        return tools_pb2.GetWeatherResponse(
            place=found.place,
            country_code=found.country_code,
            latitude=found.latitude,
            longitude=found.longitude,
            timezone=found.timezone,
            temperature_c=found.temperature_c,
            apparent_temperature_c=found.apparent_temperature_c,
            relative_humidity_percent=found.relative_humidity_percent,
            wind_speed_kmh=found.wind_speed_kmh,
            weather_code=found.weather_code,
            description=found.description,
            today_max_c=found.today_max_c,
            today_min_c=found.today_min_c,
            precipitation_probability_percent=found.precipitation_probability_percent,
            observed_at=found.observed_at,
            from_cache=found.from_cache,
        )

    async def GetFortune(
        self, request: tools_pb2.GetFortuneRequest, context: Context
    ) -> tools_pb2.GetFortuneResponse:
        user_id = request.user_id
        if not user_id.strip() or len(user_id) > MAX_USER_ID_CHARS:
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"user_id must be 1 to {MAX_USER_ID_CHARS} characters",
            )
        try:
            zone = resolve_zone(request.timezone or self._settings.default_timezone)
        except UnknownTimezone as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        fortune = draw_fortune(
            user_id=user_id,
            local_date=datetime.now(zone).date(),
            language=base_language(request.language, self._settings.default_language),
        )
        return tools_pb2.GetFortuneResponse(
            level=tools_pb2.FortuneLevel.ValueType(int(fortune.level)),
            label=fortune.label,
            message=fortune.message,
            lucky_item=fortune.lucky_item,
            date=fortune.date,
        )

    async def Calculate(
        self, request: tools_pb2.CalculateRequest, context: Context
    ) -> tools_pb2.CalculateResponse:
        try:
            result = calculate(request.expression)
        except CalculationError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return tools_pb2.CalculateResponse(
            result=result.result, value=result.value, is_integer=result.is_integer
        )
