"""Weather from Open-Meteo (no API key): geocoding for places the gazetteer lacks, then the
forecast, cached per place for ten minutes.

Every upstream exchange runs under one overall time budget; a slow, failing or garbled upstream
becomes `WeatherUnavailable` within it, never a hang.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Final

import httpx

from services.common.cache import Cache
from services.common.language import Language
from services.common.timezones import format_offset
from services.tools.gazetteer import Gazetteer, Place, check_place

logger = logging.getLogger(__name__)

CACHE_TTL_SECONDS: Final = 600.0
# A place's coordinates do not move; a geocoding answer is kept for a day.
GEOCODE_TTL_SECONDS: Final = 86_400.0

_CURRENT_FIELDS: Final = (
    "temperature_2m,apparent_temperature,relative_humidity_2m,wind_speed_10m,weather_code"
)
_DAILY_FIELDS: Final = "temperature_2m_max,temperature_2m_min,precipitation_probability_max"


class PlaceNotFound(LookupError):
    """Neither the gazetteer nor the geocoder knows the place."""


class WeatherUnavailable(Exception):
    """The upstream weather service failed, was too slow, or answered nonsense."""


@dataclass(frozen=True, slots=True)
class Weather:
    place: str
    country_code: str
    latitude: float
    longitude: float
    timezone: str
    temperature_c: float
    apparent_temperature_c: float
    relative_humidity_percent: float
    wind_speed_kmh: float
    weather_code: int
    description: str
    today_max_c: float
    today_min_c: float
    precipitation_probability_percent: float
    observed_at: str
    from_cache: bool


# WMO weather interpretation codes, as Open-Meteo documents them.
_WMO: Final[dict[int, tuple[str, str, str]]] = {
    0: ("快晴", "clear sky", "맑음"),
    1: ("晴れ", "mainly clear", "대체로 맑음"),
    2: ("晴れ時々曇り", "partly cloudy", "구름 조금"),
    3: ("曇り", "overcast", "흐림"),
    45: ("霧", "fog", "안개"),
    48: ("着氷性の霧", "depositing rime fog", "착빙성 안개"),
    51: ("弱い霧雨", "light drizzle", "약한 이슬비"),
    53: ("霧雨", "moderate drizzle", "이슬비"),
    55: ("強い霧雨", "dense drizzle", "강한 이슬비"),
    56: ("弱い着氷性の霧雨", "light freezing drizzle", "약한 어는 이슬비"),
    57: ("強い着氷性の霧雨", "dense freezing drizzle", "강한 어는 이슬비"),
    61: ("小雨", "slight rain", "약한 비"),
    63: ("雨", "moderate rain", "비"),
    65: ("大雨", "heavy rain", "강한 비"),
    66: ("弱い着氷性の雨", "light freezing rain", "약한 어는 비"),
    67: ("強い着氷性の雨", "heavy freezing rain", "강한 어는 비"),
    71: ("小雪", "slight snow", "약한 눈"),
    73: ("雪", "moderate snow", "눈"),
    75: ("大雪", "heavy snow", "폭설"),
    77: ("霧雪", "snow grains", "싸락눈"),
    80: ("弱いにわか雨", "slight rain showers", "약한 소나기"),
    81: ("にわか雨", "moderate rain showers", "소나기"),
    82: ("激しいにわか雨", "violent rain showers", "강한 소나기"),
    85: ("弱いにわか雪", "slight snow showers", "약한 소낙눈"),
    86: ("強いにわか雪", "heavy snow showers", "강한 소낙눈"),
    95: ("雷雨", "thunderstorm", "뇌우"),
    96: ("雹を伴う雷雨", "thunderstorm with slight hail", "약한 우박을 동반한 뇌우"),
    99: ("激しい雹を伴う雷雨", "thunderstorm with heavy hail", "강한 우박을 동반한 뇌우"),
}
_UNKNOWN_WEATHER: Final = ("不明", "unknown", "알 수 없음")
_LANGUAGE_INDEX: Final[dict[Language, int]] = {"ja": 0, "en": 1, "ko": 2}


def describe(code: int, language: Language) -> str:
    return _WMO.get(code, _UNKNOWN_WEATHER)[_LANGUAGE_INDEX[language]]


class WeatherClient:
    """Looks up weather through one long-lived HTTP client (the caller owns and closes it)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        cache: Cache,
        *,
        geocoding_url: str,
        forecast_url: str,
        cache_ttl_seconds: float = CACHE_TTL_SECONDS,
    ) -> None:
        self._http = http
        self._cache = cache
        self._geocoding_url = geocoding_url
        self._forecast_url = forecast_url
        self._ttl = cache_ttl_seconds

    async def weather(
        self, gazetteer: Gazetteer, place: str, language: Language, timeout_seconds: float
    ) -> Weather:
        """The weather at `place`; raises ValueError, PlaceNotFound or WeatherUnavailable."""
        name = check_place(place)
        if not name:
            raise ValueError("place is required")
        deadline = time.monotonic() + timeout_seconds
        found = gazetteer.find(name) or await self._geocode(name, deadline)
        key = f"forecast:{found.latitude:.2f},{found.longitude:.2f}"
        cached = await self._cache.get(key)
        if cached is not None:
            return self._weather(found, json.loads(cached), language, from_cache=True)
        params = {
            "latitude": f"{found.latitude:.4f}",
            "longitude": f"{found.longitude:.4f}",
            "current": _CURRENT_FIELDS,
            "daily": _DAILY_FIELDS,
            "timezone": found.timezone or "auto",
            "forecast_days": "1",
        }
        forecast = await self._get_json(self._forecast_url, params, deadline)
        weather = self._weather(found, forecast, language, from_cache=False)
        await self._cache.set(key, json.dumps(forecast).encode(), self._ttl)
        return weather

    async def _geocode(self, name: str, deadline: float) -> Place:
        key = "geocode:" + name.casefold()
        cached = await self._cache.get(key)
        answer = (
            json.loads(cached)
            if cached is not None
            else await self._get_json(
                self._geocoding_url,
                {"name": name, "count": "1", "language": "en", "format": "json"},
                deadline,
            )
        )
        results = answer.get("results") if isinstance(answer, dict) else None
        if not results:
            raise PlaceNotFound(f"unknown place {name!r}")
        try:
            first = results[0]
            place = Place(
                name=str(first["name"]),
                country_code=str(first.get("country_code", "")),
                latitude=float(first["latitude"]),
                longitude=float(first["longitude"]),
                timezone=str(first.get("timezone", "")),
                population=int(first.get("population") or 0),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise WeatherUnavailable("the geocoder answered in an unexpected shape") from exc
        if cached is None:
            await self._cache.set(key, json.dumps(answer).encode(), GEOCODE_TTL_SECONDS)
        return place

    async def _get_json(self, url: str, params: dict[str, str], deadline: float) -> Any:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WeatherUnavailable("no time left to ask the weather service")
        try:
            # httpx's timeout bounds each phase; asyncio.timeout bounds the whole exchange, so
            # a server that trickles its answer cannot stretch it.
            async with asyncio.timeout(remaining):
                response = await self._http.get(url, params=params, timeout=remaining)
        except TimeoutError as exc:
            raise WeatherUnavailable(
                f"the weather service did not answer within {remaining:.1f}s"
            ) from exc
        except httpx.HTTPError as exc:
            raise WeatherUnavailable(
                f"the weather service is unreachable ({type(exc).__name__})"
            ) from exc
        if response.status_code != httpx.codes.OK:
            raise WeatherUnavailable(f"the weather service answered HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError as exc:
            raise WeatherUnavailable("the weather service answered with invalid JSON") from exc

    @staticmethod
    def _weather(place: Place, forecast: Any, language: Language, *, from_cache: bool) -> Weather:
        try:
            current = forecast["current"]
            daily = forecast["daily"]
            code = int(current["weather_code"])
            offset = int(forecast.get("utc_offset_seconds", 0))
            return Weather(
                place=place.name,
                country_code=place.country_code,
                latitude=place.latitude,
                longitude=place.longitude,
                timezone=str(forecast.get("timezone") or place.timezone),
                temperature_c=float(current["temperature_2m"]),
                apparent_temperature_c=float(current["apparent_temperature"]),
                relative_humidity_percent=float(current["relative_humidity_2m"]),
                wind_speed_kmh=float(current["wind_speed_10m"]),
                weather_code=code,
                description=describe(code, language),
                today_max_c=float(daily["temperature_2m_max"][0]),
                today_min_c=float(daily["temperature_2m_min"][0]),
                precipitation_probability_percent=float(
                    daily["precipitation_probability_max"][0] or 0
                ),
                observed_at=f"{current['time']}:00{format_offset(offset)}",
                from_cache=from_cache,
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise WeatherUnavailable("the weather service answered in an unexpected shape") from exc
