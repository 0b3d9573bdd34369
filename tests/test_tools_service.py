"""ToolService as a real process over real gRPC: every RPC, health, reflection, errors."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from chatagent.v1 import tools_pb2, tools_pb2_grpc
from tests.support.fake_open_meteo import GEOCODE, FakeOpenMeteo, fake_open_meteo
from tests.support.process import ServiceProcess

SERVICE = "chatagent.v1.ToolService"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenMeteo]:
    with fake_open_meteo() as fake:
        yield fake


@pytest.fixture(scope="module")
def tools(upstream: FakeOpenMeteo) -> Iterator[ServiceProcess]:
    env = {
        "OPEN_METEO_FORECAST_URL": upstream.forecast_url,
        "OPEN_METEO_GEOCODING_URL": upstream.geocoding_url,
        "WEATHER_TIMEOUT_SECONDS": "2",
        "DEFAULT_TIMEZONE": "Asia/Tokyo",
    }
    with ServiceProcess("tools", env) as process:
        process.start(wait_for=SERVICE)
        yield process


@pytest.fixture
def stub(tools: ServiceProcess, upstream: FakeOpenMeteo) -> tools_pb2_grpc.ToolServiceStub:
    upstream.status, upstream.delay_seconds = 200, 0.0
    upstream.geocode = json.loads(json.dumps(GEOCODE))
    upstream.requests.clear()
    assert tools.channel is not None
    return tools_pb2_grpc.ToolServiceStub(tools.channel)


def code_of(call: object) -> tuple[grpc.StatusCode, str]:
    assert callable(call)
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details() or ""


def test_health_reports_serving_per_service_and_for_the_process(tools: ServiceProcess) -> None:
    assert tools.health(SERVICE) == health_pb2.HealthCheckResponse.SERVING
    assert tools.health("") == health_pb2.HealthCheckResponse.SERVING
    code, _ = code_of(lambda: tools.health("chatagent.v1.NoSuchService"))
    assert code == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_tool_service_and_its_methods(tools: ServiceProcess) -> None:
    assert tools.channel is not None
    database = ProtoReflectionDescriptorDatabase(tools.channel)
    services = set(database.get_services())
    assert {SERVICE, "grpc.health.v1.Health"} <= services
    descriptor = database.FindFileContainingSymbol(SERVICE)
    methods = {m.name for s in descriptor.service if s.name == "ToolService" for m in s.method}
    assert methods == {"GetTime", "GetWeather", "GetFortune", "Calculate"}


@pytest.mark.parametrize(
    ("place", "zone", "country"),
    [
        ("東京", "Asia/Tokyo", "JP"),
        ("서울", "Asia/Seoul", "KR"),
        ("New York", "America/New_York", "US"),
        ("london", "Europe/London", "GB"),
    ],
)
def test_get_time_by_place_in_three_languages(
    stub: tools_pb2_grpc.ToolServiceStub, place: str, zone: str, country: str
) -> None:
    reply = stub.GetTime(tools_pb2.GetTimeRequest(place=place), timeout=5)
    assert reply.timezone == zone
    assert reply.country_code == country
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", reply.local_time)
    assert reply.local_time.endswith(reply.utc_offset)


def test_get_time_by_zone_and_by_default(stub: tools_pb2_grpc.ToolServiceStub) -> None:
    kathmandu = stub.GetTime(tools_pb2.GetTimeRequest(timezone="Asia/Kathmandu"), timeout=5)
    assert (kathmandu.utc_offset, kathmandu.utc_offset_seconds) == ("+05:45", 20700)
    assert kathmandu.place == ""
    default = stub.GetTime(tools_pb2.GetTimeRequest(), timeout=5)
    assert (default.timezone, default.utc_offset, default.abbreviation) == (
        "Asia/Tokyo",
        "+09:00",
        "JST",
    )


def test_get_time_refuses_unknown_places_and_zones_by_name(
    stub: tools_pb2_grpc.ToolServiceStub,
) -> None:
    code, details = code_of(lambda: stub.GetTime(tools_pb2.GetTimeRequest(place="Qwxzville")))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "Qwxzville" in details
    code, details = code_of(lambda: stub.GetTime(tools_pb2.GetTimeRequest(timezone="Mars/Olympus")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "Mars/Olympus" in details
    code, _ = code_of(lambda: stub.GetTime(tools_pb2.GetTimeRequest(place="x" * 500)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_fortune_is_stable_for_a_user_and_speaks_the_language(
    stub: tools_pb2_grpc.ToolServiceStub,
) -> None:
    def draw(language: str) -> tools_pb2.GetFortuneResponse:
        request = tools_pb2.GetFortuneRequest(
            user_id="user-42", timezone="Asia/Tokyo", language=language
        )
        return stub.GetFortune(request, timeout=5)

    ja, again, ko = draw("ja"), draw("ja"), draw("ko")
    assert ja == again
    assert ja.level != tools_pb2.FORTUNE_LEVEL_UNSPECIFIED
    assert ko.level == ja.level
    assert ko.label != ja.label
    assert re.search(r"[\uac00-\ud7a3]", ko.message)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", ja.date)
    code, details = code_of(lambda: stub.GetFortune(tools_pb2.GetFortuneRequest(user_id="")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "user_id" in details
    code, details = code_of(
        lambda: stub.GetFortune(tools_pb2.GetFortuneRequest(user_id="u", timezone="Nowhere/X"))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "Nowhere/X" in details


def test_calculate_answers_and_refuses_hostile_input_quickly(
    stub: tools_pb2_grpc.ToolServiceStub,
) -> None:
    reply = stub.Calculate(tools_pb2.CalculateRequest(expression="(1 + 2) × 3 ^ 2"), timeout=5)
    assert (reply.result, reply.value, reply.is_integer) == ("27", 27.0, True)
    for hostile in ("10**10**10", "9**9**9", "factorial(10**6)", "__import__('os')"):
        started = time.perf_counter()
        code, details = code_of(
            lambda e=hostile: stub.Calculate(tools_pb2.CalculateRequest(expression=e), timeout=5)
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT, hostile
        assert details
        assert time.perf_counter() - started < 1.0
    code, details = code_of(lambda: stub.Calculate(tools_pb2.CalculateRequest(expression="1/0")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "zero" in details


def test_invalid_utf8_is_refused_as_invalid_argument(tools: ServiceProcess) -> None:
    assert tools.channel is not None
    raw = tools.channel.unary_unary(
        f"/{SERVICE}/Calculate",
        request_serializer=lambda data: data,
        response_deserializer=lambda data: data,
    )
    # Field 1 (expression), length 2, two bytes that are not UTF-8.
    code, details = code_of(lambda: raw(b"\x0a\x02\xff\xfe", timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "UTF-8" in details


def test_weather_answers_from_the_upstream_then_from_the_cache(
    stub: tools_pb2_grpc.ToolServiceStub, upstream: FakeOpenMeteo
) -> None:
    first = stub.GetWeather(tools_pb2.GetWeatherRequest(place="大阪", language="ja"), timeout=5)
    assert first.place == "Osaka"
    assert first.timezone == "Asia/Tokyo"
    assert (first.temperature_c, first.weather_code, first.description) == (12.3, 61, "小雨")
    assert (first.today_max_c, first.today_min_c) == (15.2, 8.4)
    assert first.observed_at == "2026-11-26T09:30:00+09:00"
    assert not first.from_cache
    second = stub.GetWeather(tools_pb2.GetWeatherRequest(place="Osaka", language="en"), timeout=5)
    assert second.from_cache
    assert second.description == "slight rain"
    assert len(upstream.calls("/v1/forecast")) == 1
    assert upstream.calls("/v1/search") == []  # the gazetteer knew Osaka


def test_weather_geocodes_places_the_gazetteer_lacks(
    stub: tools_pb2_grpc.ToolServiceStub, upstream: FakeOpenMeteo
) -> None:
    reply = stub.GetWeather(tools_pb2.GetWeatherRequest(place="Atlantis Bay"), timeout=5)
    assert (reply.place, reply.country_code, reply.latitude) == ("Atlantis Bay", "XA", 10.5)
    assert upstream.calls("/v1/search")[0].query["name"] == "Atlantis Bay"
    upstream.geocode = {}
    code, details = code_of(
        lambda: stub.GetWeather(tools_pb2.GetWeatherRequest(place="Nowhere Town"), timeout=5)
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert "Nowhere Town" in details


def test_weather_and_time_for_a_made_up_place_are_not_found_and_ask_the_geocoder_once(
    stub: tools_pb2_grpc.ToolServiceStub, upstream: FakeOpenMeteo
) -> None:
    upstream.geocode = {}
    weather = tools_pb2.GetWeatherRequest(place="Zyxwvuton")
    futures = [stub.GetWeather.future(weather, timeout=5) for _ in range(20)]
    for future in futures:
        with pytest.raises(grpc.RpcError) as info:
            future.result()
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert info.value.details() == "unknown place 'Zyxwvuton'"
    for _ in range(20):
        code, details = code_of(lambda: stub.GetWeather(weather, timeout=5))
        assert (code, details) == (grpc.StatusCode.NOT_FOUND, "unknown place 'Zyxwvuton'")
    assert len(upstream.calls("/v1/search")) == 1
    # The time tool says the same about a place it does not know.
    code, details = code_of(lambda: stub.GetTime(tools_pb2.GetTimeRequest(place="Zyxwvuton")))
    assert (code, details) == (grpc.StatusCode.NOT_FOUND, "unknown place 'Zyxwvuton'")


def test_weather_upstream_error_is_unavailable(
    stub: tools_pb2_grpc.ToolServiceStub, upstream: FakeOpenMeteo
) -> None:
    upstream.status = 500
    code, details = code_of(
        lambda: stub.GetWeather(tools_pb2.GetWeatherRequest(place="札幌"), timeout=5)
    )
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "500" in details


def test_weather_upstream_hang_answers_within_the_callers_deadline(
    stub: tools_pb2_grpc.ToolServiceStub, upstream: FakeOpenMeteo
) -> None:
    upstream.delay_seconds = 30
    started = time.monotonic()
    code, _ = code_of(
        lambda: stub.GetWeather(tools_pb2.GetWeatherRequest(place="부산"), timeout=1.0)
    )
    assert code == grpc.StatusCode.UNAVAILABLE  # the service answered, before the deadline hit
    assert time.monotonic() - started < 1.0 + 0.5


def test_weather_upstream_hang_without_a_deadline_is_bounded_by_config(
    stub: tools_pb2_grpc.ToolServiceStub, upstream: FakeOpenMeteo
) -> None:
    upstream.delay_seconds = 30
    started = time.monotonic()
    code, details = code_of(lambda: stub.GetWeather(tools_pb2.GetWeatherRequest(place="Nagoya")))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "did not answer" in details
    assert time.monotonic() - started < 2.0 + 1.5  # WEATHER_TIMEOUT_SECONDS=2
