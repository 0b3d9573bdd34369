"""Typed configuration from environment variables, read once at start.

Every service declares a frozen settings class derived from `ServiceSettings`; `load()` reads the
environment once and turns any bad or missing value into a `ConfigError` naming the variable,
which `services.common.server.main` reports before exiting with status 2.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, ClassVar, Self, TypeVar

from pydantic import AfterValidator, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from services.common.timezones import UnknownTimezone, resolve_zone

Port = Annotated[int, Field(ge=0, le=65535)]
Seconds = Annotated[float, Field(gt=0, le=3600)]


def _zone_key(value: str) -> str:
    try:
        return resolve_zone(value).key
    except UnknownTimezone as exc:
        raise ValueError(str(exc)) from None


# An IANA zone name, checked at start and spelled as IANA does ("asia/tokyo" -> "Asia/Tokyo").
Timezone = Annotated[str, AfterValidator(_zone_key)]


class ConfigError(Exception):
    """A configuration variable is missing or malformed; the message names it."""


class ServiceSettings(BaseSettings):
    """What every service reads the same way. Field names are the variable names, upper-cased."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False)

    # Overridden per service: the name used in logs, metrics and traces.
    SERVICE_NAME: ClassVar[str] = "chatagent"

    bind_address: str = Field(default="[::]", description="Address the gRPC server listens on.")
    port: Port = 50050
    # 0 turns the Prometheus endpoint off.
    metrics_port: Port = 0
    log_level: str = "INFO"
    # Calls larger than this are refused with RESOURCE_EXHAUSTED before a handler sees them.
    max_request_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024
    # How long in-flight calls may run on after SIGTERM before they are cancelled.
    shutdown_grace_seconds: Seconds = 10.0
    # A connection is closed this long after it opened, its calls given the grace to finish.
    max_connection_age_seconds: Annotated[float, Field(gt=0, le=86_400)] = 300.0
    max_connection_age_grace_seconds: Seconds = 60.0
    otel_exporter_otlp_endpoint: str = ""
    otel_service_name: str = ""
    redis_url: str = ""
    redis_timeout_seconds: Seconds = 0.5
    # REDIS_URL names one node of a Redis Cluster; the others are discovered from it.
    redis_cluster: bool = False
    # TLS for the server: certificate chain and key (PEM); with a client CA, clients must present
    # a certificate it signed (mTLS).
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    # A plaintext port serving only grpc.health.v1.Health, for Kubernetes' native gRPC probes,
    # which cannot speak TLS; 0 serves health on PORT only.
    health_port: Port = 0
    # Worker processes sharing PORT (SO_REUSEPORT; services.common.workers). REUSE_PORT is set
    # for the workers; without it a second process on the port is refused.
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    reuse_port: bool = False

    @field_validator("tls_cert_file", "tls_key_file", "tls_client_ca_file")
    @classmethod
    def _readable_file(cls, value: str) -> str:
        if value and not os.access(value, os.R_OK):
            raise ValueError(f"cannot read {value!r}")
        return value

    @model_validator(mode="after")
    def _tls_complete(self) -> Self:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("TLS_CERT_FILE and TLS_KEY_FILE must be set together")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ValueError("TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE")
        if self.health_port and self.health_port in (self.port, self.metrics_port):
            raise ValueError("HEALTH_PORT must differ from PORT and METRICS_PORT")
        if self.workers > 1 and self.port == 0:
            raise ValueError("WORKERS above 1 needs a fixed PORT for the workers to share")
        return self

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @model_validator(mode="after")
    def _redis_cluster_url(self) -> Self:
        if self.redis_cluster and not self.redis_url.startswith(("redis://", "rediss://")):
            raise ValueError("REDIS_CLUSTER needs REDIS_URL, a redis:// or rediss:// node address")
        return self

    @field_validator("otel_exporter_otlp_endpoint")
    @classmethod
    def _otlp_scheme(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @property
    def service_name(self) -> str:
        return self.otel_service_name or self.SERVICE_NAME


SettingsT = TypeVar("SettingsT", bound=ServiceSettings)


def load(settings_cls: type[SettingsT]) -> SettingsT:
    """Read `settings_cls` from the environment once, naming every bad variable.

    Values are not echoed: a variable may hold a secret.
    """
    try:
        return settings_cls()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            # Errors about several variables together name them in their message.
            where = f"{str(error['loc'][0]).upper()}: " if error["loc"] else ""
            problems.append(where + error["msg"])
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
    except SettingsError as exc:
        # A complex value (a JSON object) that does not parse; pydantic names the field.
        field = re.search(r'field "?(\w+)', str(exc))
        variable = field.group(1).upper() if field else "?"
        raise ConfigError(f"invalid configuration: {variable}: not valid JSON") from None
