"""The weather client in-process against the fake Open-Meteo: caching of places, of names no one
knows and of forecasts, one upstream exchange for many concurrent requests, and deadlines."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import httpx
import pytest

from services.common.cache import MemoryCache
from services.common.deadline import Deadline, DeadlineExhausted
from services.common.gazetteer import Gazetteer, Place, UnknownPlace, normalize_name
from services.tools.timeinfo import get_time
from services.tools.weather import (
    GEOCODE_MISS_TTL_SECONDS,
    GEOCODE_TTL_SECONDS,
    WeatherClient,
    WeatherUnavailable,
)
from tests.support.clock import Clock
from tests.support.fake_open_meteo import GEOCODE, FakeOpenMeteo, fake_open_meteo

OSAKA = Place("Osaka", "JP", 34.69, 135.5, "Asia/Tokyo", 2_500_000)
PLACES = Gazetteer({normalize_name("Osaka"): OSAKA, normalize_name("大阪"): OSAKA})


@pytest.fixture(scope="module")
def module_upstream() -> Iterator[FakeOpenMeteo]:
    with fake_open_meteo() as fake:
        yield fake


@pytest.fixture
def upstream(module_upstream: FakeOpenMeteo) -> FakeOpenMeteo:
    module_upstream.status, module_upstream.delay_seconds = 200, 0.0
    module_upstream.geocode = json.loads(json.dumps(GEOCODE))
    module_upstream.requests.clear()
    return module_upstream


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def client(upstream: FakeOpenMeteo, clock: Clock) -> AsyncIterator[WeatherClient]:
    async with httpx.AsyncClient() as http:
        yield WeatherClient(
            http,
            MemoryCache(1000, clock=clock),
            geocoding_url=upstream.geocoding_url,
            forecast_url=upstream.forecast_url,
            timeout_seconds=2.0,
        )


def soon(seconds: float = 2.0) -> Deadline:
    return Deadline.after(seconds)


async def test_a_made_up_place_is_asked_for_once_then_answered_from_the_cache(
    client: WeatherClient, upstream: FakeOpenMeteo
) -> None:
    upstream.geocode = {}
    for _ in range(50):
        with pytest.raises(UnknownPlace, match="Qwxzville") as caught:
            await client.weather(PLACES, "Qwxzville", "en", soon())
        assert caught.value.place == "Qwxzville"
    # Any spelling of the same name in case is the same question.
    with pytest.raises(UnknownPlace, match="QWXZVILLE"):
        await client.weather(PLACES, "QWXZVILLE", "en", soon())
    assert len(upstream.calls("/v1/search")) == 1
    assert upstream.calls("/v1/forecast") == []


async def test_twenty_concurrent_requests_for_a_made_up_place_ask_once(
    client: WeatherClient, upstream: FakeOpenMeteo
) -> None:
    upstream.geocode, upstream.delay_seconds = {}, 0.2
    names = ["Nowhere Town"] * 10 + ["NOWHERE TOWN"] * 10
    results = await asyncio.gather(
        *(client.weather(PLACES, name, "ja", soon()) for name in names), return_exceptions=True
    )
    assert all(isinstance(result, UnknownPlace) for result in results), results
    # Each caller is told about the name as it wrote it.
    assert [str(result) for result in results[-1:]] == ["unknown place 'NOWHERE TOWN'"]
    assert len(upstream.calls("/v1/search")) == 1


async def test_a_miss_is_forgotten_after_an_hour_a_place_after_a_day(
    client: WeatherClient, upstream: FakeOpenMeteo, clock: Clock
) -> None:
    assert GEOCODE_MISS_TTL_SECONDS < GEOCODE_TTL_SECONDS
    found = await client.weather(PLACES, "Atlantis Bay", "en", soon())
    assert (found.place, found.latitude) == ("Atlantis Bay", 10.5)
    upstream.geocode = {}
    with pytest.raises(UnknownPlace):
        await client.weather(PLACES, "Qwxzville", "en", soon())
    asked = len(upstream.calls("/v1/search"))
    assert asked == 2

    clock.now += GEOCODE_MISS_TTL_SECONDS + 1
    upstream.geocode = json.loads(json.dumps(GEOCODE))
    # The made-up name is asked again (the geocoder may know it by now); the place is not.
    assert (await client.weather(PLACES, "Qwxzville", "en", soon())).place == "Atlantis Bay"
    assert (await client.weather(PLACES, "Atlantis Bay", "en", soon())).place == "Atlantis Bay"
    assert [r.query["name"] for r in upstream.calls("/v1/search")[asked:]] == ["Qwxzville"]

    clock.now += GEOCODE_TTL_SECONDS
    await client.weather(PLACES, "Atlantis Bay", "en", soon())
    assert upstream.calls("/v1/search")[-1].query["name"] == "Atlantis Bay"


async def test_a_garbled_geocoder_answer_is_unavailable_and_not_cached_as_a_miss(
    client: WeatherClient, upstream: FakeOpenMeteo
) -> None:
    for garbled in ({"results": [{"name": "x"}]}, {"results": "many"}):
        upstream.geocode = garbled
        with pytest.raises(WeatherUnavailable, match="unexpected shape"):
            await client.weather(PLACES, "Atlantis Bay", "en", soon())
    upstream.geocode = json.loads(json.dumps(GEOCODE))
    assert (await client.weather(PLACES, "Atlantis Bay", "en", soon())).country_code == "XA"
    assert len(upstream.calls("/v1/search")) == 3


async def test_a_failing_geocoder_is_unavailable_and_not_cached_as_a_miss(
    client: WeatherClient, upstream: FakeOpenMeteo
) -> None:
    upstream.status = 503
    with pytest.raises(WeatherUnavailable, match="503"):
        await client.weather(PLACES, "Atlantis Bay", "en", soon())
    upstream.status = 200
    assert (await client.weather(PLACES, "Atlantis Bay", "en", soon())).place == "Atlantis Bay"


async def test_places_the_gazetteer_knows_are_never_geocoded_and_forecasts_are_cached(
    client: WeatherClient, upstream: FakeOpenMeteo
) -> None:
    first = await client.weather(PLACES, "大阪", "ja", soon())
    again = await client.weather(PLACES, "Osaka", "en", soon())
    assert (first.description, first.from_cache) == ("小雨", False)
    assert (again.description, again.from_cache) == ("slight rain", True)
    assert upstream.calls("/v1/search") == []
    assert len(upstream.calls("/v1/forecast")) == 1


async def test_twenty_concurrent_requests_for_one_forecast_ask_once(
    client: WeatherClient, upstream: FakeOpenMeteo
) -> None:
    upstream.delay_seconds = 0.2
    languages = ["ja", "en", "ko"] * 7
    results = await asyncio.gather(
        *(client.weather(PLACES, "Osaka", language, soon()) for language in languages)
    )
    assert {r.description for r in results} == {"小雨", "slight rain", "약한 비"}
    assert len(upstream.calls("/v1/forecast")) == 1


async def test_a_caller_in_a_hurry_does_not_fail_the_callers_who_wait_longer(
    client: WeatherClient, upstream: FakeOpenMeteo
) -> None:
    upstream.delay_seconds = 0.3
    hurried = asyncio.create_task(client.weather(PLACES, "Osaka", "en", soon(0.1)))
    patient = asyncio.create_task(client.weather(PLACES, "Osaka", "en", soon(2.0)))
    with pytest.raises(WeatherUnavailable, match=r"did not answer within 0\.1s"):
        await hurried
    assert (await patient).temperature_c == 12.3
    assert len(upstream.calls("/v1/forecast")) == 1


async def test_an_exchange_nobody_waits_for_is_dropped(
    client: WeatherClient, upstream: FakeOpenMeteo
) -> None:
    upstream.delay_seconds = 30
    with pytest.raises(WeatherUnavailable):
        await client.weather(PLACES, "Osaka", "en", soon(0.1))
    # The next request asks afresh instead of joining the hung exchange's remaining 1.9 s.
    started = asyncio.get_running_loop().time()
    with pytest.raises(WeatherUnavailable):
        await client.weather(PLACES, "Osaka", "en", soon(0.1))
    assert asyncio.get_running_loop().time() - started < 1.0
    assert len(upstream.calls("/v1/forecast")) == 2


async def test_a_cancelled_caller_leaves_the_others_their_answer(
    client: WeatherClient, upstream: FakeOpenMeteo
) -> None:
    upstream.delay_seconds = 0.3
    first = asyncio.create_task(client.weather(PLACES, "Osaka", "en", soon()))
    second = asyncio.create_task(client.weather(PLACES, "Osaka", "en", soon()))
    await asyncio.sleep(0.05)
    first.cancel()
    assert (await second).place == "Osaka"
    assert first.cancelled()


async def test_no_time_left_is_deadline_exhausted_and_asks_nobody(
    client: WeatherClient, upstream: FakeOpenMeteo
) -> None:
    with pytest.raises(DeadlineExhausted):
        await client.weather(PLACES, "Osaka", "en", Deadline.after(0.0))
    with pytest.raises(DeadlineExhausted):
        await client.weather(PLACES, "Atlantis Bay", "en", Deadline.after(-1.0))
    assert upstream.requests == []


async def test_blank_and_overlong_places_are_value_errors(client: WeatherClient) -> None:
    for place in ("", "   ", "x" * 500):
        with pytest.raises(ValueError, match="place"):
            await client.weather(PLACES, place, "en", soon())


async def test_time_and_weather_raise_one_exception_for_an_unknown_place(
    client: WeatherClient, upstream: FakeOpenMeteo
) -> None:
    upstream.geocode = {}
    with pytest.raises(UnknownPlace) as by_weather:
        await client.weather(PLACES, "Qwxzville", "en", soon())
    with pytest.raises(UnknownPlace) as by_time:
        get_time(
            PLACES, place="Qwxzville", timezone="", default_timezone="UTC", now=datetime.now(UTC)
        )
    assert str(by_weather.value) == str(by_time.value) == "unknown place 'Qwxzville'"
