"""Outbound gRPC: one long-lived channel per dependency, a deadline on every call, and calls
that really end when their caller gives up.

Retries happen only inside the channel, by the gRPC service config, and only on UNAVAILABLE
(the call never reached a handler, so repeating it is safe). Deadlines are not propagated by gRPC
in Python: callers give each call a timeout from their own deadline (`services.common.deadline`).

Cancellation: OpenTelemetry's aio client interceptor awaits the call's status in the
interceptors' own task, so cancelling the task that awaits a call, or even the call object,
only cancels that wait: the RPC runs on, and the server never sees CANCELLED. The channel's
innermost interceptor therefore ties the RPC on the wire to the call object the caller holds,
and `unary()` / `streaming()` cancel that call object whenever its caller stops waiting:

    reply = await unary(stub.Calculate(request, timeout=budget.require()))

    async with streaming(stub.Synthesize(request, timeout=budget.require())) as responses:
        async for response in responses:
            ...
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import grpc
import grpc.aio

from services.common.tracing import client_interceptors

ResponseT = TypeVar("ResponseT")


def retry_service_config(
    service_names: Sequence[str],
    *,
    max_attempts: int = 3,
    initial_backoff_seconds: float = 0.05,
    max_backoff_seconds: float = 0.5,
) -> str:
    """A gRPC service config that retries calls to `service_names` on UNAVAILABLE only."""
    config = {
        "methodConfig": [
            {
                "name": [{"service": name} for name in service_names],
                "retryPolicy": {
                    "maxAttempts": max_attempts,
                    "initialBackoff": f"{initial_backoff_seconds}s",
                    "maxBackoff": f"{max_backoff_seconds}s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
    return json.dumps(config)


# grpc.aio files an interceptor under the first call kind it implements only (unary-unary before
# unary-stream), so each kind gets a class of its own.


class _DefaultDeadline:
    """Gives a call made without `timeout=` a deadline anyway: nothing waits forever."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds

    def _bounded(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        if details.timeout is not None:
            return details
        return grpc.aio.ClientCallDetails(
            details.method,
            self._seconds,
            details.metadata,
            details.credentials,
            details.wait_for_ready,
        )


class _UnaryDefaultDeadline(_DefaultDeadline, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(self._bounded(client_call_details), request)


class _StreamDefaultDeadline(_DefaultDeadline, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(self._bounded(client_call_details), request)


def default_deadline(seconds: float) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors giving every unary and server-streaming call a deadline of `seconds` when
    its caller set none."""
    return [_UnaryDefaultDeadline(seconds), _StreamDefaultDeadline(seconds)]


def _tie(call: grpc.aio.Call) -> None:
    interceptors_task = asyncio.current_task()
    if interceptors_task is None:  # pragma: no cover - interceptors always run in a task
        return

    def end(task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is not None:
            call.cancel()

    interceptors_task.add_done_callback(end)


class _UnaryCancelOnWire(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        call = await continuation(client_call_details, request)
        _tie(call)
        return call


class _StreamCancelOnWire(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        call = await continuation(client_call_details, request)
        _tie(call)
        return call


def cancel_on_wire() -> list[grpc.aio.ClientInterceptor]:
    """Interceptors that cancel the RPC on the wire when the call object the caller holds is
    cancelled (the innermost of a channel's interceptors).

    grpc runs a channel's interceptors in a task of their own, and cancelling the caller's call
    object (or the task awaiting it) cancels that task; an interceptor that is awaiting the
    RPC's status there (OpenTelemetry's does) then gives up waiting, and the RPC itself runs on.
    These see the RPC itself: when the interceptors' task ends cancelled or failed, nobody can
    reach the RPC any more, so it is cancelled here.
    """
    return [_UnaryCancelOnWire(), _StreamCancelOnWire()]


async def unary(call: grpc.aio.UnaryUnaryCall[Any, ResponseT]) -> ResponseT:
    """The response of a unary call; if the awaiting task is cancelled, the call is cancelled
    (the server sees CANCELLED) before the cancellation goes on."""
    try:
        return await call
    except asyncio.CancelledError:
        call.cancel()
        raise


@asynccontextmanager
async def streaming(
    call: grpc.aio.UnaryStreamCall[Any, ResponseT],
) -> AsyncIterator[AsyncIterator[ResponseT]]:
    """The responses of a server-streaming call, for an `async for` inside the block. However
    the block ends (the stream read to its end, a `break`, an error, a cancellation), the call
    ends with it: the server is not left streaming to nobody."""
    try:
        yield aiter(call)
    finally:
        call.cancel()  # a call that has already ended is not affected


def open_channel(
    target: str,
    service_names: Sequence[str],
    *,
    max_message_bytes: int = 8 * 1024 * 1024,
    max_attempts: int = 3,
    default_timeout_seconds: float = 10.0,
) -> grpc.aio.Channel:
    """The one channel to a dependency: traced, retried on UNAVAILABLE, and with a deadline on
    every call (`default_timeout_seconds` when the caller gave none)."""
    options: list[tuple[str, Any]] = [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", retry_service_config(service_names, max_attempts=max_attempts)),
        ("grpc.max_receive_message_length", max_message_bytes),
        # Fail over quickly when a pod behind a Kubernetes Service goes away.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 5_000),
    ]
    interceptors = [
        *default_deadline(default_timeout_seconds),
        *client_interceptors(),
        # Innermost, so it holds the call on the wire whatever the interceptors above it do.
        *cancel_on_wire(),
    ]
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
