"""OpenTelemetry tracing: a tracer provider per process, OTLP export when configured.

A provider is installed even without an exporter, so logs and answers carry real trace ids; spans
leave the process only when OTEL_EXPORTER_OTLP_ENDPOINT is set. Health checks are not traced.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import grpc.aio
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor
from opentelemetry.instrumentation.grpc.filters import health_check, negate
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

logger = logging.getLogger(__name__)

_provider: TracerProvider | None = None


def setup_tracing(service_name: str, otlp_endpoint: str) -> TracerProvider:
    """Install the process's tracer provider (once) and return it."""
    global _provider
    if _provider is not None:
        return _provider
    # No flush at exit of its own: the server's shutdown flushes within a bound, and the SDK's
    # exit hook would wait up to 30 s more on a collector that does not answer.
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: service_name}), shutdown_on_exit=False
    )
    if otlp_endpoint:
        exporter = OTLPSpanExporter(
            endpoint=otlp_endpoint, insecure=otlp_endpoint.startswith("http://")
        )
        provider.add_span_processor(BatchSpanProcessor(exporter))
        logger.info("traces exported over OTLP", extra={"otlp_endpoint": otlp_endpoint})
    trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def shutdown_tracing(timeout_seconds: float = 5.0) -> None:
    """Flush the spans still buffered, then stop exporting."""
    if _provider is None:
        return
    if not _provider.force_flush(timeout_millis=int(timeout_seconds * 1000)):
        logger.warning("some spans were not exported before shutdown")
    _provider.shutdown()


def server_interceptors() -> Sequence[grpc.aio.ServerInterceptor]:
    interceptor = aio_server_interceptor(  # type: ignore[no-untyped-call]
        tracer_provider=_provider, filter_=negate(health_check())
    )
    return [interceptor]


def client_interceptors() -> Sequence[grpc.aio.ClientInterceptor]:
    """Interceptors that trace outbound calls and carry the W3C trace context to the callee."""
    interceptors = aio_client_interceptors(  # type: ignore[no-untyped-call]
        tracer_provider=_provider, filter_=negate(health_check())
    )
    return list(interceptors)


def current_trace_id() -> str:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""
