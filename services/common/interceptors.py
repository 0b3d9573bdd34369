"""Server interceptors: request id, access log and RPC metrics, around every handler, and
INVALID_ARGUMENT for a request that cannot be decoded.

One interceptor does all of it so each call is wrapped once. The four kinds of handler
(unary/stream request x unary/stream response) are told apart in one place,
`wrap_rpc_behavior`, as opentelemetry-python-contrib's aio server interceptor does.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from services.common import metrics
from services.common.callers import caller_of
from services.common.logs import request_id_var
from services.common.status import abort

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
            fields: dict[str, object] = {
                "rpc": self._method,
                "code": code,
                "duration_ms": round(elapsed * 1e3, 2),
            }
            # Which token (or certificate) made the call: a rotation shows in the logs.
            caller = caller_of(context)
            if caller:
                fields["caller"] = caller
            logger.log(level, "rpc finished", extra=fields)


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


Context = grpc.aio.ServicerContext[Any, Any]
# A handler's behavior: (request or request iterator, context) -> a response (a coroutine), or
# an async iterator of responses (an async generator) for a streaming one.
Behavior = Callable[[Any, Context], Any]
# What an interceptor makes of a behavior, told whether requests and responses are streamed.
BehaviorWrapper = Callable[[Behavior, bool, bool], Behavior]


def wrap_rpc_behavior(
    handler: grpc.RpcMethodHandler[Any, Any] | None,
    wrap: BehaviorWrapper,
    *,
    request_deserializer: Callable[
        [Callable[[bytes], Any] | None], Callable[[bytes], Any] | None
    ] = lambda deserializer: deserializer,
) -> grpc.RpcMethodHandler[Any, Any] | None:
    """`handler` with its behavior replaced by `wrap(behavior, request_streaming,
    response_streaming)`, whichever of the four kinds it is (opentelemetry-python-contrib's
    `_wrap_rpc_behavior`); `request_deserializer` may replace the deserializer too."""
    if handler is None:
        return None
    behavior: Any  # the stubs type them as synchronous; an aio server's are coroutines
    factory: Any
    if handler.request_streaming and handler.response_streaming:
        behavior, factory = handler.stream_stream, grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        behavior, factory = handler.stream_unary, grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        behavior, factory = handler.unary_stream, grpc.unary_stream_rpc_method_handler
    else:
        behavior, factory = handler.unary_unary, grpc.unary_unary_rpc_method_handler
    return factory(  # type: ignore[no-any-return]
        wrap(behavior, handler.request_streaming, handler.response_streaming),
        request_deserializer=request_deserializer(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )


async def _refuse_malformed(request: Any, context: Context) -> None:
    if isinstance(request, _Malformed):
        await abort(context, grpc.StatusCode.INVALID_ARGUMENT, request.detail)


async def _checked_stream(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
    async for request in requests:
        await _refuse_malformed(request, context)
        yield request


async def _decoded(request: Any, streaming: bool, context: Context) -> Any:
    """The request for the handler (or its requests, checked one by one as they come); a
    request that could not be decoded ends the call with INVALID_ARGUMENT."""
    if streaming:
        return _checked_stream(request, context)
    await _refuse_malformed(request, context)
    return request


class TelemetryInterceptor(grpc.aio.ServerInterceptor):
    """Sets the request id for the call's logs, logs its end, and counts it; refuses requests
    that could not be decoded with INVALID_ARGUMENT, for every kind of handler."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        metadata = handler_call_details.invocation_metadata
        rpc_type = _rpc_type(handler)

        def begin() -> _CallRecord:
            request_id_var.set(_incoming_request_id(metadata))
            return _CallRecord(method, rpc_type)

        def wrap(behavior: Behavior, request_streaming: bool, response_streaming: bool) -> Behavior:
            # Streaming handlers are async generators (OpenTelemetry's server interceptor,
            # outside this one, iterates them too; a context.write() handler fails there).
            if response_streaming:

                async def stream_behavior(request: Any, context: Context) -> AsyncIterator[Any]:
                    record = begin()
                    try:
                        checked = await _decoded(request, request_streaming, context)
                        async with aclosing(behavior(checked, context)) as responses:
                            async for response in responses:
                                yield response
                    except BaseException as error:
                        record.finish(context, error)
                        raise
                    record.finish(context, None)

                return stream_behavior

            async def unary_behavior(request: Any, context: Context) -> Any:
                record = begin()
                try:
                    checked = await _decoded(request, request_streaming, context)
                    response = await behavior(checked, context)
                except BaseException as error:
                    record.finish(context, error)
                    raise
                record.finish(context, None)
                return response

            return unary_behavior

        return wrap_rpc_behavior(handler, wrap, request_deserializer=_tolerant)
