"""ToolService configuration, from the environment."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field, field_validator

from services.common.config import Port, Seconds, ServiceSettings, Timezone
from services.common.language import Language


class ToolSettings(ServiceSettings):
    SERVICE_NAME: ClassVar[str] = "tools"

    port: Port = 50052
    metrics_port: Port = 9102
    # The zone used when a request names neither a place nor a zone.
    default_timezone: Timezone = "UTC"
    default_language: Language = "ja"
    open_meteo_geocoding_url: str = "https://geocoding-api.open-meteo.com/v1/search"
    open_meteo_forecast_url: str = "https://api.open-meteo.com/v1/forecast"
    # Upper bound for one weather lookup; a caller's shorter deadline wins.
    weather_timeout_seconds: Seconds = 5.0
    weather_cache_ttl_seconds: Seconds = 600.0
    weather_cache_max_entries: Annotated[int, Field(ge=1, le=1_000_000)] = 4096
    gazetteer_min_population: Annotated[int, Field(ge=0)] = 15000

    @field_validator("open_meteo_geocoding_url", "open_meteo_forecast_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value
