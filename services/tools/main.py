"""Starts the ToolService: `python -m services.tools`."""

from __future__ import annotations

import functools

import httpx
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

from chatagent.v1 import tools_pb2, tools_pb2_grpc
from services.common import redisconn, server
from services.common.cache import Cache, MemoryCache, RedisCache
from services.tools.config import ToolSettings
from services.tools.servicer import ToolServicer
from services.tools.weather import WeatherClient

SERVICE_NAME = tools_pb2.DESCRIPTOR.services_by_name["ToolService"].full_name


async def setup(host: server.ServiceHost, settings: ToolSettings) -> None:
    cache: Cache
    if settings.redis_url:
        client = redisconn.connect(
            settings.redis_url, settings.redis_timeout_seconds, cluster=settings.redis_cluster
        )
        host.add_readiness_check("redis", functools.partial(redisconn.ping, client))
        host.add_closer("redis", client.aclose)
        cache = RedisCache(client, prefix="chatagent:tools:")
    else:
        cache = MemoryCache(settings.weather_cache_max_entries)

    http = httpx.AsyncClient(
        timeout=settings.weather_timeout_seconds,
        headers={"user-agent": "chatagent-tools/0.1"},
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
    )
    # Client spans for Open-Meteo, and the W3C trace context sent along with each request.
    HTTPXClientInstrumentor.instrument_client(http)
    host.add_closer("http", http.aclose)

    weather = WeatherClient(
        http,
        cache,
        geocoding_url=settings.open_meteo_geocoding_url,
        forecast_url=settings.open_meteo_forecast_url,
        cache_ttl_seconds=settings.weather_cache_ttl_seconds,
        timeout_seconds=settings.weather_timeout_seconds,
    )
    servicer = ToolServicer(settings, weather)
    tools_pb2_grpc.add_ToolServiceServicer_to_server(servicer, host.server)
    host.add_readiness_check("gazetteer", servicer.load_places)


def main() -> None:
    server.run(ToolSettings, [SERVICE_NAME], setup)
