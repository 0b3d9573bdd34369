"""The gRPC server every service runs: bootstrap, health, reflection, limits, graceful stop.

A service's `main.py` calls `run(SettingsClass, setup)`. `setup` registers the servicer on the
host and names what must be ready before the service reports SERVING; the host does the rest:

* health v1 with one status per service name and "" for the process, NOT_SERVING until every
  readiness check has passed and from the moment the process begins to stop. A service name is
  also NOT_SERVING whenever a critical dependency watched by a dependency monitor is down, and
  "" is not: readiness probes ask for the service (traffic goes to replicas that can serve it),
  liveness probes for "" (a Redis outage must not have every replica restarted);
* server reflection, so grpcurl-style clients work without our stubs;
* a request-size limit, tracing, metrics, request ids and access logs on every call;
* with HEALTH_PORT set, the health service alone on a plaintext port of its own as well, for
  Kubernetes' native gRPC probes, which cannot speak TLS;
* SIGTERM or SIGINT: NOT_SERVING at once, in-flight calls get `SHUTDOWN_GRACE_SECONDS` to finish,
  new calls are refused, then the closers run (Redis, HTTP clients, channels), spans are flushed
  and the process exits with status 0. After the grace, cleaning up takes at most
  `SHUTDOWN_CLEANUP_SECONDS`, whatever hangs: a pod's terminationGracePeriodSeconds must exceed
  the grace plus that.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.config import ConfigError, ServiceSettings, load
from services.common.interceptors import TelemetryInterceptor
from services.common.logs import setup_logging
from services.common.metrics import DEPENDENCY_UP, serve_metrics
from services.common.tracing import server_interceptors, setup_tracing, shutdown_tracing
from services.common.workers import supervise

logger = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[object]]
Closer = Callable[[], Awaitable[Any]]
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

# After the grace: the closers together get this long (a hung connection must not keep a
# terminating pod alive), then buffered spans get the flush time; what is left is dropped.
_CLOSE_SECONDS = 5.0
_SPAN_FLUSH_SECONDS = 3.0
SHUTDOWN_CLEANUP_SECONDS = _CLOSE_SECONDS + _SPAN_FLUSH_SECONDS
_READINESS_RETRY_MAX_SECONDS = 5.0


@dataclass(slots=True)
class _Monitor:
    name: str
    check: ReadinessCheck
    interval_seconds: float
    failures_to_trip: int
    timeout_seconds: float
    down: bool = False


def server_credentials(settings: ServiceSettings) -> grpc.ServerCredentials | None:
    """TLS credentials from TLS_CERT_FILE / TLS_KEY_FILE (and TLS_CLIENT_CA_FILE for mTLS)."""
    if not settings.tls_cert_file:
        return None
    with open(settings.tls_cert_file, "rb") as cert, open(settings.tls_key_file, "rb") as key:
        pair = (key.read(), cert.read())
    client_ca = None
    if settings.tls_client_ca_file:
        with open(settings.tls_client_ca_file, "rb") as ca:
            client_ca = ca.read()
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def server_options(settings: ServiceSettings) -> list[tuple[str, Any]]:
    """The gRPC server options every service runs with."""
    return [
        ("grpc.max_receive_message_length", settings.max_request_bytes),
        # A second process on the same port must fail to start, not share it (unless it is one
        # of the workers the supervisor started to share it).
        ("grpc.so_reuseport", int(settings.reuse_port)),
        # Connections are closed after an age (GOAWAY, then the grace for the calls on them):
        # clients spread over new pods after a scale-up, and a stream whose client stopped
        # reading (writes blocked by flow control, which no deadline of ours can end) ends too.
        ("grpc.max_connection_age_ms", round(settings.max_connection_age_seconds * 1000)),
        (
            "grpc.max_connection_age_grace_ms",
            round(settings.max_connection_age_grace_seconds * 1000),
        ),
    ]


class ServiceHost:
    """One `grpc.aio` server with the shared runtime around the servicers added to it."""

    def __init__(
        self,
        settings: ServiceSettings,
        service_names: Sequence[str],
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    ) -> None:
        """`interceptors` run inside the shared ones (tracing, then metrics and logs), so what
        they refuse (authentication, say) is still traced, counted and logged."""
        self.settings = settings
        self.service_names = tuple(service_names)
        self.health = health.aio.HealthServicer()
        self.server = grpc.aio.server(
            interceptors=[*server_interceptors(), TelemetryInterceptor(), *interceptors],
            options=server_options(settings),
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        # The probes' own port: plaintext, health only (no servicer, no reflection), the same
        # statuses as on PORT. Untraced and unauthenticated, like health on PORT.
        self.health_server: grpc.aio.Server | None = None
        if settings.health_port:
            self.health_server = grpc.aio.server(
                options=[
                    ("grpc.max_receive_message_length", 4096),
                    ("grpc.so_reuseport", int(settings.reuse_port)),
                ]
            )
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
        reflection.enable_server_reflection(
            [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        self._readiness: list[tuple[str, ReadinessCheck]] = []
        self._monitors: list[_Monitor] = []
        self._closers: list[tuple[str, Closer]] = []
        self._ready_task: asyncio.Task[None] | None = None
        self._monitor_tasks: list[asyncio.Task[None]] = []
        self._ready = False
        self._stopping = False
        self._status: Any = None
        self._status_lock = asyncio.Lock()
        self.port = 0

    def add_readiness_check(self, name: str, check: ReadinessCheck) -> None:
        """`check` must succeed once before the service reports SERVING; it is retried."""
        self._readiness.append((name, check))

    def add_dependency_monitor(
        self,
        name: str,
        check: ReadinessCheck,
        *,
        interval_seconds: float = 1.0,
        failures_to_trip: int = 2,
        timeout_seconds: float | None = None,
    ) -> None:
        """Watch a critical dependency for the life of the process: `check` runs every
        `interval_seconds`; after `failures_to_trip` failures in a row (an error, or no answer
        within `timeout_seconds`, the interval by default) every health status is NOT_SERVING,
        and SERVING again once it passes. The startup readiness checks still apply."""
        if interval_seconds <= 0 or failures_to_trip < 1:
            raise ValueError("a dependency monitor needs a positive interval and failure count")
        self._monitors.append(
            _Monitor(
                name,
                check,
                interval_seconds,
                failures_to_trip,
                interval_seconds if timeout_seconds is None else timeout_seconds,
            )
        )

    def add_closer(self, name: str, closer: Closer) -> None:
        """`closer` runs at shutdown, after the server stopped, in reverse order of adding."""
        self._closers.append((name, closer))

    async def start(self) -> int:
        """Bind, start serving with every status NOT_SERVING, and begin the readiness checks."""
        address = f"{self.settings.bind_address}:{self.settings.port}"
        credentials = server_credentials(self.settings)
        if credentials is None:
            self.port = self.server.add_insecure_port(address)
        else:
            self.port = self.server.add_secure_port(address, credentials)
        if self.health_server is not None:
            health_address = f"{self.settings.bind_address}:{self.settings.health_port}"
            self.health_server.add_insecure_port(health_address)
        await self._publish_status()
        await self.server.start()
        if self.health_server is not None:
            await self.health_server.start()
        logger.info(
            "listening",
            extra={
                "address": address,
                "port": self.port,
                "tls": credentials is not None,
                "client_certificates": bool(self.settings.tls_client_ca_file),
                "health_port": self.settings.health_port or self.port,
            },
        )
        self._ready_task = asyncio.create_task(self._become_ready(), name="readiness")
        for monitor in self._monitors:
            DEPENDENCY_UP.labels(monitor.name).set(1)
        self._monitor_tasks = [
            asyncio.create_task(self._watch(monitor), name=f"monitor {monitor.name}")
            for monitor in self._monitors
        ]
        return self.port

    async def _publish_status(self) -> None:
        """The process ("") SERVING once ready and until stopping; each service name that and
        no watched dependency down. Once stopping, the health servicer's graceful shutdown keeps
        every status NOT_SERVING for good."""
        async with self._status_lock:
            alive = self._ready and not self._stopping
            serving = alive and not any(monitor.down for monitor in self._monitors)
            statuses = (_SERVING if alive else _NOT_SERVING, _SERVING if serving else _NOT_SERVING)
            if statuses == self._status:
                return
            self._status = statuses
            await self.health.set("", statuses[0])
            for name in self.service_names:
                await self.health.set(name, statuses[1])

    async def _watch(self, monitor: _Monitor) -> None:
        failures = 0
        while True:
            try:
                async with asyncio.timeout(monitor.timeout_seconds):
                    await monitor.check()
            except Exception as exc:
                failures += 1
                if failures >= monitor.failures_to_trip and not monitor.down:
                    monitor.down = True
                    DEPENDENCY_UP.labels(monitor.name).set(0)
                    error = (
                        f"no answer within {monitor.timeout_seconds}s"
                        if isinstance(exc, TimeoutError)
                        else repr(exc)
                    )
                    logger.warning(
                        "dependency down: the service reports NOT_SERVING",
                        extra={"dependency": monitor.name, "error": error, "failures": failures},
                    )
                    await self._publish_status()
            else:
                failures = 0
                if monitor.down:
                    monitor.down = False
                    DEPENDENCY_UP.labels(monitor.name).set(1)
                    logger.info(
                        "dependency back: reporting SERVING unless another is down",
                        extra={"dependency": monitor.name},
                    )
                    await self._publish_status()
            await asyncio.sleep(monitor.interval_seconds)

    async def _become_ready(self) -> None:
        for name, check in self._readiness:
            delay = 0.1
            while True:
                try:
                    await check()
                    break
                except Exception as exc:
                    logger.warning(
                        "dependency not ready; retrying",
                        extra={"dependency": name, "error": repr(exc), "retry_in_s": delay},
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _READINESS_RETRY_MAX_SECONDS)
        self._ready = True
        await self._publish_status()
        logger.info("serving", extra={"services": list(self.service_names)})

    async def wait_ready(self) -> None:
        if self._ready_task is not None:
            await self._ready_task

    async def stop(self) -> None:
        """Graceful stop: NOT_SERVING, drain within the grace period, then close dependencies."""
        self._stopping = True
        tasks = [*self._monitor_tasks, *([self._ready_task] if self._ready_task else [])]
        self._monitor_tasks = []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.health.enter_graceful_shutdown()
        grace = self.settings.shutdown_grace_seconds
        logger.info("stopping", extra={"grace_s": grace})
        await self.server.stop(grace)
        # Probes go on reading NOT_SERVING until the calls are done, then the port closes.
        if self.health_server is not None:
            await self.health_server.stop(None)
        loop = asyncio.get_running_loop()
        closing_ends = loop.time() + _CLOSE_SECONDS
        closers = list(reversed(self._closers))
        for index, (name, closer) in enumerate(closers):
            # A fair share of what is left: one that hangs cannot leave the next with nothing.
            share = (closing_ends - loop.time()) / (len(closers) - index)
            try:
                await asyncio.wait_for(closer(), max(0.0, share))
            except TimeoutError:
                logger.warning(
                    "close took too long: left unfinished",
                    extra={"dependency": name, "close_budget_s": _CLOSE_SECONDS},
                )
            except Exception as exc:
                logger.warning("close failed", extra={"dependency": name, "error": repr(exc)})


SettingsT = TypeVar("SettingsT", bound=ServiceSettings)
Setup = Callable[[ServiceHost, SettingsT], Awaitable[None]]


async def _serve(
    settings: SettingsT,
    service_names: Sequence[str],
    setup: Setup[SettingsT],
    interceptors: Sequence[grpc.aio.ServerInterceptor],
) -> None:
    host = ServiceHost(settings, service_names, interceptors)
    await setup(host, settings)
    # Last, once everything the service loads at start is loaded: before it is SERVING.
    host.add_readiness_check("heap", freeze_heap)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await host.start()
    await stop.wait()
    await host.stop()


async def freeze_heap() -> None:
    """Move what the process loaded at start out of the cyclic garbage collector's reach.

    Dictionaries, gazetteer, lexicons and models are hundreds of thousands of objects that live
    as long as the process; every full collection walked them all again (about 200 ms on the
    2-core machine, a stall of the event loop every few thousand requests). Frozen after one
    last collection, they are never walked again; reference counting still frees them.
    """
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    took_ms = round(1000 * (time.perf_counter() - started))
    logger.info(
        "start-up objects frozen out of the garbage collector",
        extra={"objects": gc.get_freeze_count(), "ms": took_ms},
    )


def run(
    settings_cls: type[SettingsT],
    service_names: Sequence[str],
    setup: Setup[SettingsT],
    interceptors: Callable[[SettingsT], Sequence[grpc.aio.ServerInterceptor]] = lambda _: (),
) -> None:
    """The whole life of a service process; exits 0 after a graceful stop, 2 on bad config."""
    try:
        settings = load(settings_cls)
    except ConfigError as exc:
        print(f"{settings_cls.SERVICE_NAME}: {exc}", file=sys.stderr)
        sys.exit(2)
    setup_logging(settings.service_name, settings.log_level)
    if settings.workers > 1:
        # This process supervises; the workers (each started as `python -m services.<name>`)
        # serve. The package is named as the service is.
        grace = settings.shutdown_grace_seconds + SHUTDOWN_CLEANUP_SECONDS + 5
        module = f"services.{settings_cls.SERVICE_NAME}"
        sys.exit(supervise(module, settings.workers, settings.metrics_port, grace))
    setup_tracing(settings.service_name, settings.otel_exporter_otlp_endpoint)
    try:
        serve_metrics(settings.metrics_port)
        asyncio.run(_serve(settings, service_names, setup, interceptors(settings)))
    except OSError as exc:
        logger.critical("cannot start", extra={"error": repr(exc)})
        sys.exit(1)
    except RuntimeError as exc:
        # grpc raises RuntimeError when the port cannot be bound.
        logger.critical("cannot start", extra={"error": str(exc)})
        sys.exit(1)
    finally:
        _flush_spans(_SPAN_FLUSH_SECONDS)
    logger.info("stopped")


def _flush_spans(timeout_seconds: float) -> None:
    """Export the buffered spans, giving up after `timeout_seconds`: the SDK's own flush ignores
    its timeout and retries an unreachable collector for up to the exporter's timeout, then
    waits up to 30 s for its worker. Its threads are daemons, so the process does not wait."""
    worker = threading.Thread(target=shutdown_tracing, name="span flush", daemon=True)
    worker.start()
    worker.join(timeout_seconds)
    if worker.is_alive():
        logger.warning("spans not exported in time: dropped", extra={"flush_s": timeout_seconds})
