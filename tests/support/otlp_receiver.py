"""A local OTLP/gRPC trace receiver: what a service exports lands here for the test to read.

Each span keeps what an operator would see of it in Jaeger: its service, name, kind, ids and
parent, attributes, events (name and attributes), status and times."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

# OTLP's enums, as the spans carry them.
KIND_INTERNAL = trace_pb2.Span.SPAN_KIND_INTERNAL
KIND_SERVER = trace_pb2.Span.SPAN_KIND_SERVER
KIND_CLIENT = trace_pb2.Span.SPAN_KIND_CLIENT
STATUS_UNSET = trace_pb2.Status.STATUS_CODE_UNSET
STATUS_OK = trace_pb2.Status.STATUS_CODE_OK
STATUS_ERROR = trace_pb2.Status.STATUS_CODE_ERROR


@dataclass(frozen=True)
class ReceivedEvent:
    name: str
    attributes: dict[str, Any]


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any] = field(default_factory=dict)
    events: tuple[ReceivedEvent, ...] = ()
    status_code: int = STATUS_UNSET
    status_message: str = ""
    start_unix_nano: int = 0
    end_unix_nano: int = 0

    def texts(self) -> Iterator[str]:
        """Every piece of text the span carries besides its ids: its name, attribute keys and
        values, event names and their attributes, the status message."""
        yield self.name
        yield self.status_message
        yield from _texts(self.attributes)
        for event in self.events:
            yield event.name
            yield from _texts(event.attributes)


def _texts(attributes: dict[str, Any]) -> Iterator[str]:
    for key, value in attributes.items():
        yield key
        values = value if isinstance(value, list) else [value]
        yield from (str(v) for v in values)


def _value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind)


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


@dataclass
class OtlpReceiver:
    endpoint: str = ""
    spans: list[ReceivedSpan] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)

    def wait_for(self, predicate: object, timeout: float = 15.0) -> list[ReceivedSpan]:
        """Wait until some received spans satisfy `predicate` and return them."""
        assert callable(predicate)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [s for s in self.snapshot() if predicate(s)]
            if found:
                return found
            time.sleep(0.05)
        return []

    def wait_until(
        self, condition: Callable[[list[ReceivedSpan]], bool], timeout: float = 15.0
    ) -> list[ReceivedSpan]:
        """Wait until `condition` holds of all the spans received so far; return them (as they
        are when it first holds, or when the time is up)."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.snapshot()
            if condition(spans) or time.monotonic() >= deadline:
                return spans
            time.sleep(0.05)


def _received(service: str, span: trace_pb2.Span) -> ReceivedSpan:
    return ReceivedSpan(
        service=service,
        name=span.name,
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_span_id=span.parent_span_id.hex(),
        kind=span.kind,
        attributes=_attributes(span.attributes),
        events=tuple(
            ReceivedEvent(name=event.name, attributes=_attributes(event.attributes))
            for event in span.events
        ),
        status_code=span.status.code,
        status_message=span.status.message,
        start_unix_nano=span.start_time_unix_nano,
        end_unix_nano=span.end_time_unix_nano,
    )


@contextmanager
def otlp_receiver(port: int) -> Iterator[OtlpReceiver]:
    state = OtlpReceiver(endpoint=f"http://127.0.0.1:{port}")

    class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(
            self,
            request: trace_service_pb2.ExportTraceServiceRequest,
            context: grpc.ServicerContext,
        ) -> trace_service_pb2.ExportTraceServiceResponse:
            received = []
            for resource_spans in request.resource_spans:
                service = str(
                    _attributes(resource_spans.resource.attributes).get("service.name", "")
                )
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        received.append(_received(service, span))
            with state._lock:
                state.spans.extend(received)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        yield state
    finally:
        server.stop(grace=None)
