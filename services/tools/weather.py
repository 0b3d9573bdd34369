"""Weather from Open-Meteo (no API key): geocoding for places the gazetteer lacks, then the
forecast, cached per place for ten minutes.

Geocoding answers are cached too: a place for a day, a name the geocoder does not know for an
hour, so a flood of requests for a made-up place asks the upstream once. Requests that arrive
while the same question is already out share that one exchange instead of asking again.

Each request waits within its own `Deadline`; a slow, failing or garbled upstream becomes
`WeatherUnavailable` within it, never a hang.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

import httpx

from services.common.cache import Cache
from services.common.deadline import Deadline
from services.common.gazetteer import Gazetteer, Place, UnknownPlace, check_place
from services.common.language import Language
from services.common.timezones import format_offset

CACHE_TTL_SECONDS: Final = 600.0
# A place's coordinates do not move; a geocoding answer is kept for a day.
GEOCODE_TTL_SECONDS: Final = 86_400.0
# A name the geocoder does not know may be a place it learns later; an hour is long enough that
# asking again and again for it costs the upstream nothing.
GEOCODE_MISS_TTL_SECONDS: Final = 3_600.0
# The bound of one upstream exchange when the caller's deadline does not set a shorter one.
TIMEOUT_SECONDS: Final = 5.0

_CURRENT_FIELDS: Final = (
    "temperature_2m,apparent_temperature,relative_humidity_2m,wind_speed_10m,weather_code"
)
_DAILY_FIELDS: Final = "temperature_2m_max,temperature_2m_min,precipitation_probability_max"
_NO_RESULTS: Final = b'{"results":[]}'


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


@dataclass(frozen=True, slots=True)
class _Forecast:
    """A forecast as read from Open-Meteo, before it is told in a language."""

    timezone: str
    temperature_c: float
    apparent_temperature_c: float
    relative_humidity_percent: float
    wind_speed_kmh: float
    weather_code: int
    today_max_c: float
    today_min_c: float
    precipitation_probability_percent: float
    observed_at: str


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
        timeout_seconds: float = TIMEOUT_SECONDS,
    ) -> None:
        self._http = http
        self._cache = cache
        self._geocoding_url = geocoding_url
        self._forecast_url = forecast_url
        self._ttl = cache_ttl_seconds
        self._timeout = timeout_seconds
        self._geocodes: _Shared[Place | None] = _Shared()
        self._forecasts: _Shared[_Forecast] = _Shared()

    async def weather(
        self, gazetteer: Gazetteer, place: str, language: Language, deadline: Deadline
    ) -> Weather:
        """The weather at `place`, known before `deadline` passes. Raises ValueError for a
        missing or over-long name, UnknownPlace, WeatherUnavailable, and DeadlineExhausted when
        the deadline leaves no time to ask."""
        name = check_place(place)
        if not name:
            raise ValueError("place is required")
        found = gazetteer.find(name) or await self._geocode(name, deadline)
        key = f"forecast:{found.latitude:.2f},{found.longitude:.2f}"
        cached = _decode(await self._cache.get(key))
        forecast = _parse_forecast(cached) if cached is not None else None
        if forecast is None:
            fetch = functools.partial(self._fetch_forecast, found, key)
            return _weather(found, await self._forecasts.wait(key, fetch, deadline), language)
        return _weather(found, forecast, language, from_cache=True)

    async def _geocode(self, name: str, deadline: Deadline) -> Place:
        key = "geocode:" + name.casefold()
        cached = _decode(await self._cache.get(key))
        if cached is not None:
            place = _parse_geocode(cached)
        else:
            fetch = functools.partial(self._fetch_geocode, name, key)
            place = await self._geocodes.wait(key, fetch, deadline)
        if place is None:
            raise UnknownPlace(name)
        return place

    async def _fetch_geocode(self, name: str, key: str) -> Place | None:
        params = {"name": name, "count": "1", "language": "en", "format": "json"}
        answer = await self._get_json(self._geocoding_url, params)
        place = _parse_geocode(answer)  # before caching: a garbled answer is not kept
        if place is None:
            await self._cache.set(key, _NO_RESULTS, GEOCODE_MISS_TTL_SECONDS)
        else:
            await self._cache.set(key, json.dumps(answer).encode(), GEOCODE_TTL_SECONDS)
        return place

    async def _fetch_forecast(self, place: Place, key: str) -> _Forecast:
        params = {
            "latitude": f"{place.latitude:.4f}",
            "longitude": f"{place.longitude:.4f}",
            "current": _CURRENT_FIELDS,
            "daily": _DAILY_FIELDS,
            "timezone": place.timezone or "auto",
            "forecast_days": "1",
        }
        answer = await self._get_json(self._forecast_url, params)
        forecast = _parse_forecast(answer)
        if forecast is None:
            raise WeatherUnavailable("the weather service answered in an unexpected shape")
        await self._cache.set(key, json.dumps(answer).encode(), self._ttl)
        return forecast

    async def _get_json(self, url: str, params: dict[str, str]) -> Any:
        try:
            # httpx's timeout bounds each phase; asyncio.timeout bounds the whole exchange, so
            # a server that trickles its answer cannot stretch it.
            async with asyncio.timeout(self._timeout):
                response = await self._http.get(url, params=params, timeout=self._timeout)
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise WeatherUnavailable(
                f"the weather service did not answer within {self._timeout:.1f}s"
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


_T = TypeVar("_T")


@dataclass(slots=True)
class _Exchange(Generic[_T]):
    task: asyncio.Task[_T]
    waiters: int = 0


class _Shared(Generic[_T]):
    """One upstream exchange per key at a time, shared by every request that waits for it.

    The exchange runs under its own bound, not under the deadline of the request that started
    it, so a caller in a hurry does not fail the others; each request waits only within its own
    deadline, and the exchange is cancelled when nobody waits for it any more.
    """

    def __init__(self) -> None:
        self._running: dict[str, _Exchange[_T]] = {}

    async def wait(
        self, key: str, fetch: Callable[[], Coroutine[Any, Any, _T]], deadline: Deadline
    ) -> _T:
        seconds = deadline.budget(margin=0.0).require()
        exchange = self._running.get(key)
        if exchange is None:
            exchange = _Exchange(asyncio.create_task(fetch()))
            self._running[key] = exchange
            exchange.task.add_done_callback(functools.partial(self._forget, key, exchange))
        exchange.waiters += 1
        try:
            async with asyncio.timeout(seconds):
                return await asyncio.shield(exchange.task)
        except TimeoutError as exc:
            raise WeatherUnavailable(
                f"the weather service did not answer within {seconds:.1f}s"
            ) from exc
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if exchange.task.cancelled() and current is not None and not current.cancelling():
                # The exchange was stopped, not this request: that is no cancel of the caller's.
                raise WeatherUnavailable("the weather lookup was stopped") from None
            raise
        finally:
            exchange.waiters -= 1
            if exchange.waiters == 0 and not exchange.task.done():
                exchange.task.cancel()
                # At once, not when the task has wound down: a request arriving meanwhile
                # starts afresh rather than joining an exchange that is being cancelled.
                self._forget(key, exchange)

    def _forget(self, key: str, exchange: _Exchange[_T], _task: object = None) -> None:
        if self._running.get(key) is exchange:
            del self._running[key]


def _decode(cached: bytes | None) -> Any:
    """A cached JSON answer; None for none, and for an entry that is not JSON (refetched)."""
    if cached is None:
        return None
    try:
        return json.loads(cached)
    except ValueError:
        return None


def _parse_geocode(answer: Any) -> Place | None:
    """The first place of a geocoding answer; None when the geocoder found nothing."""
    if not isinstance(answer, dict):
        raise WeatherUnavailable("the geocoder answered in an unexpected shape")
    results = answer.get("results")
    if not results:
        return None
    try:
        first = results[0]
        return Place(
            name=str(first["name"]),
            country_code=str(first.get("country_code", "")),
            latitude=float(first["latitude"]),
            longitude=float(first["longitude"]),
            timezone=str(first.get("timezone", "")),
            population=int(first.get("population") or 0),
        )
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise WeatherUnavailable("the geocoder answered in an unexpected shape") from exc


def _parse_forecast(answer: Any) -> _Forecast | None:
    """The forecast in an Open-Meteo answer; None when the answer lacks its fields."""
    try:
        current = answer["current"]
        daily = answer["daily"]
        offset = int(answer.get("utc_offset_seconds", 0))
        return _Forecast(
            timezone=str(answer.get("timezone") or ""),
            temperature_c=float(current["temperature_2m"]),
            apparent_temperature_c=float(current["apparent_temperature"]),
            relative_humidity_percent=float(current["relative_humidity_2m"]),
            wind_speed_kmh=float(current["wind_speed_10m"]),
            weather_code=int(current["weather_code"]),
            today_max_c=float(daily["temperature_2m_max"][0]),
            today_min_c=float(daily["temperature_2m_min"][0]),
            precipitation_probability_percent=float(daily["precipitation_probability_max"][0] or 0),
            observed_at=f"{current['time']}:00{format_offset(offset)}",
        )
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        return None


def _weather(
    place: Place, forecast: _Forecast, language: Language, *, from_cache: bool = False
) -> Weather:
    return Weather(
        place=place.name,
        country_code=place.country_code,
        latitude=place.latitude,
        longitude=place.longitude,
        timezone=forecast.timezone or place.timezone,
        temperature_c=forecast.temperature_c,
        apparent_temperature_c=forecast.apparent_temperature_c,
        relative_humidity_percent=forecast.relative_humidity_percent,
        wind_speed_kmh=forecast.wind_speed_kmh,
        weather_code=forecast.weather_code,
        description=describe(forecast.weather_code, language),
        today_max_c=forecast.today_max_c,
        today_min_c=forecast.today_min_c,
        precipitation_probability_percent=forecast.precipitation_probability_percent,
        observed_at=forecast.observed_at,
        from_cache=from_cache,
    )
