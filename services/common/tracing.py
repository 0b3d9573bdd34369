"""OpenTelemetry tracing: a tracer provider per process, OTLP export when configured.

A provider is installed even without an exporter, so logs and answers carry real trace ids; spans
leave the process only when OTEL_EXPORTER_OTLP_ENDPOINT is set. Health checks are not traced.
Spans are recorded only while something takes them (a span processor is installed): without an
exporter every span is a non-recording one that still carries its trace id, so a process without
a collector does not pay for spans nobody reads (a quarter of a small RPC's CPU). The decision
follows the caller's: a call whose parent was not sampled records nothing here either, as W3C's
sampled flag asks.

OpenTelemetry's aio client interceptor (0.66b2) never ends the span of a unary call that is
cancelled (its interceptor task is, before the status came): the span is lost, and the callee's
server span shows up in Jaeger under a parent that does not exist. A streaming call cancelled
halfway ends with `rpc.grpc.status_code` OK. Two interceptors of ours, inside it on every
channel, end the first (`EndAbandonedUnarySpans`) and mark the second CANCELLED
(`MarkCancelledStreamSpans`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from typing import Any

import grpc
import grpc.aio
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor
from opentelemetry.instrumentation.grpc.filters import health_check, negate
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import Span, Status, StatusCode

logger = logging.getLogger(__name__)

_provider: TracerProvider | None = None


class _WhileExported(Sampler):
    """Parent-based sampling while spans have somewhere to go; nothing recorded before that."""

    def __init__(self) -> None:
        self.exported = False
        self._sampled = ParentBased(root=ALWAYS_ON)

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        sampler = self._sampled if self.exported else ALWAYS_OFF
        return sampler.should_sample(*args, **kwargs)

    def get_description(self) -> str:
        return "ParentBased(AlwaysOn) while a span processor is installed, else AlwaysOff"


class _Provider(TracerProvider):
    def __init__(self, resource: Resource) -> None:
        self._while_exported = _WhileExported()
        # No flush at exit of its own: the server's shutdown flushes within a bound, and the
        # SDK's exit hook would wait up to 30 s more on a collector that does not answer.
        super().__init__(resource=resource, sampler=self._while_exported, shutdown_on_exit=False)

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        super().add_span_processor(span_processor)
        self._while_exported.exported = True


def make_provider(service_name: str, otlp_endpoint: str) -> TracerProvider:
    """A tracer provider for `service_name`, exporting over OTLP when `otlp_endpoint` is set and
    recording spans only once some span processor takes them (see the module's docstring)."""
    provider = _Provider(Resource.create({SERVICE_NAME: service_name}))
    if otlp_endpoint:
        exporter = OTLPSpanExporter(
            endpoint=otlp_endpoint, insecure=otlp_endpoint.startswith("http://")
        )
        provider.add_span_processor(BatchSpanProcessor(exporter))
        logger.info("traces exported over OTLP", extra={"otlp_endpoint": otlp_endpoint})
    return provider


def setup_tracing(service_name: str, otlp_endpoint: str) -> TracerProvider:
    """Install the process's tracer provider (once) and return it."""
    global _provider
    if _provider is not None:
        return _provider
    provider = make_provider(service_name, otlp_endpoint)
    trace.set_tracer_provider(provider)
    logging.getLogger("opentelemetry.sdk.trace").addFilter(_AlreadyEnded())
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


def client_interceptors(
    tracer_provider: trace.TracerProvider | None = None,
) -> Sequence[grpc.aio.ClientInterceptor]:
    """Interceptors that trace outbound calls and carry the W3C trace context to the callee
    (spans to `tracer_provider`, the process's by default), in the order a channel takes them."""
    interceptors = aio_client_interceptors(  # type: ignore[no-untyped-call]
        tracer_provider=tracer_provider or _provider, filter_=negate(health_check())
    )
    return [*interceptors, EndAbandonedUnarySpans(), MarkCancelledStreamSpans()]


class EndAbandonedUnarySpans(grpc.aio.UnaryUnaryClientInterceptor):
    """Ends the client span of a unary call whose interceptors' task was cancelled or failed.

    Runs inside OpenTelemetry's client interceptor, so the current span is the call's. That
    interceptor ends the span itself once it has the call's status, but only if its task got
    that far; when the task ends cancelled or failed, nothing else will, so the span is ended
    here, CANCELLED (or with the failure's class), at the moment the caller gave up.

    One class per call kind: a grpc.aio channel files an interceptor under the first kind it
    implements only, so one class implementing two would never see the second.
    """

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        span = _span_of(client_call_details)
        if span is not None:
            _end_if_abandoned(span)
        return await continuation(client_call_details, request)


class MarkCancelledStreamSpans(grpc.aio.UnaryStreamClientInterceptor):
    """Ends the client span of a server-streaming call cancelled halfway as CANCELLED.

    OpenTelemetry's interceptor ends a stream's span when the reading ends, with the status it
    had: OK, for a call its reader gave up on. A reader cancelled while it waits: the cancel
    passes through the responses below it first, which mark the span. A reader that stopped
    reading and cancelled the call (`channels.streaming` does when its block is left): that
    interceptor would end the span only when its response iterator is garbage-collected (a
    reference cycle: maybe minutes later), so the call's done callback ends it now.
    """

    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        span = _span_of(client_call_details)
        if span is not None:
            _end_if_abandoned(span)
        call = await continuation(client_call_details, request)
        if span is None:
            return call
        with contextlib.suppress(NotImplementedError):
            call.add_done_callback(
                lambda ended: _end_cancelled(span) if ended.cancelled() else None
            )
        return _responses(call, span)


def _span_of(details: grpc.aio.ClientCallDetails) -> Span | None:
    """The span OpenTelemetry started for this call, if it is traced: an untraced call (a
    health check) runs in its caller's span, which is not ours to end."""
    span = trace.get_current_span()
    method = details.method
    if isinstance(method, bytes):  # grpc passes bytes (grpc/grpc#31092)
        method = method.decode()
    if not span.is_recording() or getattr(span, "name", None) != method:
        return None
    return span


def _end_if_abandoned(span: Span) -> None:
    task = asyncio.current_task()  # the interceptors' task, which grpc runs the chain in
    if task is None:  # pragma: no cover - interceptors always run in a task
        return

    def done(task: asyncio.Task[Any]) -> None:
        if not span.is_recording():
            return
        if task.cancelled():
            _cancelled(span)
        elif (error := task.exception()) is not None:
            span.set_status(Status(StatusCode.ERROR))
            span.set_attribute("error.type", type(error).__name__)
        else:
            return  # OpenTelemetry's interceptor ends it
        span.end()

    task.add_done_callback(done)


async def _responses(call: AsyncIterable[Any], span: Span) -> AsyncIterator[Any]:
    try:
        async for response in call:
            yield response
    except asyncio.CancelledError:
        _cancelled(span)
        raise


def _cancelled(span: Span) -> None:
    if span.is_recording():
        span.set_attribute("rpc.grpc.status_code", grpc.StatusCode.CANCELLED.value[0])
        span.set_status(Status(StatusCode.ERROR, "CANCELLED"))


def _end_cancelled(span: Span) -> None:
    if span.is_recording():
        _cancelled(span)
        span.end()


class _AlreadyEnded(logging.Filter):
    """Drops the SDK's warning about ending an ended span: a stream's span ended here at its
    cancel is ended again by OpenTelemetry's interceptor when its iterator is collected."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "Calling end() on an ended span."


def current_trace_id() -> str:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""
