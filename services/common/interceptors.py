"""Server interceptors: request id, access log and RPC metrics, around every handler.

One interceptor does all three so each call is wrapped once. Unary and streaming handlers are
wrapped separately, as opentelemetry-python-contrib's aio server interceptor does.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from services.common import metrics
from services.common.logs import request_id_var

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
_HEALTH_PREFIX = "/grpc.health.v1.Health/"


def _rpc_type(handler: grpc.RpcMethodHandler[Any, Any]) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    if handler.response_streaming:
        return "server_stream"
    return "unary"


def _incoming_request_id(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str:
    for key, value in metadata or ():
        # Only a short printable id is trusted: it goes into logs verbatim.
        if (
            key == REQUEST_ID_HEADER
            and isinstance(value, str)
            and 0 < len(value) <= 128
            and value.isascii()
            and value.isprintable()
        ):
            return value
    return uuid.uuid4().hex


def _status_code(context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(error, asyncio.CancelledError):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED.name
        return grpc.StatusCode.CANCELLED.name
    if error is not None and not isinstance(error, grpc.aio.AbortError):
        return grpc.StatusCode.UNKNOWN.name
    return grpc.StatusCode.OK.name


class _CallRecord:
    """Book-keeping for one call: metrics and the access log line when it ends."""

    __slots__ = ("_labels", "_method", "_quiet", "_rpc_type", "_start")

    def __init__(self, full_method: str, rpc_type: str) -> None:
        service, _, method = full_method.lstrip("/").partition("/")
        self._labels = (rpc_type, service, method)
        self._method = full_method
        self._rpc_type = rpc_type
        self._quiet = full_method.startswith(_HEALTH_PREFIX)
        self._start = time.perf_counter()
        metrics.RPC_STARTED.labels(*self._labels).inc()

    def finish(
        self, context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None
    ) -> None:
        elapsed = time.perf_counter() - self._start
        code = _status_code(context, error)
        metrics.RPC_HANDLED.labels(*self._labels, code).inc()
        metrics.RPC_LATENCY.labels(*self._labels).observe(elapsed)
        if error is not None and code == "UNKNOWN":
            logger.error(
                "rpc failed",
                exc_info=error,
                extra={"rpc": self._method, "code": code, "duration_ms": round(elapsed * 1e3, 2)},
            )
            return
        level = logging.DEBUG if self._quiet else logging.INFO
        if logger.isEnabledFor(level):
            logger.log(
                level,
                "rpc finished",
                extra={"rpc": self._method, "code": code, "duration_ms": round(elapsed * 1e3, 2)},
            )


class _Malformed:
    """Stands in for a request that could not be decoded, so the handler can refuse it."""

    __slots__ = ("detail",)

    def __init__(self, detail: str) -> None:
        self.detail = detail


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """Wrap a request deserializer so bad bytes (invalid UTF-8 in a string field, truncated
    messages) become INVALID_ARGUMENT naming the problem, not gRPC's opaque UNKNOWN."""
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as exc:
            return _Malformed(str(exc))

    return deserialize


UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
StreamBehavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]


class TelemetryInterceptor(grpc.aio.ServerInterceptor):
    """Sets the request id for the call's logs, logs its end, and counts it."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        metadata = handler_call_details.invocation_metadata
        rpc_type = _rpc_type(handler)
        deserializer = (
            handler.request_deserializer
            if handler.request_streaming
            else _tolerant(handler.request_deserializer)
        )

        if handler.response_streaming:
            inner_stream: Any = handler.unary_stream or handler.stream_stream
            if not inspect.isasyncgenfunction(inner_stream):
                return handler  # a context.write() handler; none of ours are

            async def stream_behavior(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                request_id_var.set(_incoming_request_id(metadata))
                record = _CallRecord(method, rpc_type)
                try:
                    async for response in inner_stream(request, context):
                        yield response
                except BaseException as error:
                    record.finish(context, error)
                    raise
                record.finish(context, None)

            factory = (
                grpc.unary_stream_rpc_method_handler
                if handler.unary_stream
                else grpc.stream_stream_rpc_method_handler
            )
            return factory(
                stream_behavior,
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )

        inner_unary: Any = handler.unary_unary or handler.stream_unary

        async def unary_behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            request_id_var.set(_incoming_request_id(metadata))
            record = _CallRecord(method, rpc_type)
            try:
                if isinstance(request, _Malformed):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.detail)
                response = await inner_unary(request, context)
            except BaseException as error:
                record.finish(context, error)
                raise
            record.finish(context, None)
            return response

        factory_unary = (
            grpc.unary_unary_rpc_method_handler
            if handler.unary_unary
            else grpc.stream_unary_rpc_method_handler
        )
        return factory_unary(
            unary_behavior,
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
