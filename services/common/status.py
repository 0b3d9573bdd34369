"""Ending a call with a status, and the one idiom every servicer uses to map its domain errors
to status codes: a `StatusTable`.

A servicer's handlers run their plain-Python work inside `async with TABLE.translating(context)`.
A listed error ends the call with its code and the error's own message, which the domain module
writes for the caller (naming the field or the problem, never an exception's class). Errors that
carry trailing metadata (a retry delay, say) expose it through `trailing_metadata()`. Anything
unlisted is a bug and propagates (the telemetry interceptor logs it; the caller sees UNKNOWN).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, NoReturn, Protocol, runtime_checkable

import grpc
import grpc.aio
from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.duration_pb2 import Duration
from google.rpc import code_pb2, error_details_pb2, status_pb2

Metadata = Sequence[tuple[str, str | bytes]]


async def abort(
    context: grpc.aio.ServicerContext[Any, Any],
    code: grpc.StatusCode,
    message: str,
    trailing_metadata: Metadata = (),
) -> NoReturn:
    """End the call with `code` and `message` (and trailing metadata)."""
    await context.abort(code, message, trailing_metadata=tuple(trailing_metadata))
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


@runtime_checkable
class HasTrailingMetadata(Protocol):
    def trailing_metadata(self) -> Metadata: ...


class StatusTable:
    """Domain errors and the status each ends a call with; the first entry that matches wins,
    so list subclasses before their bases."""

    def __init__(self, *entries: tuple[type[Exception], grpc.StatusCode]) -> None:
        self._entries = entries
        self._types = tuple(error for error, _ in entries)

    def code_for(self, error: BaseException) -> grpc.StatusCode | None:
        for kind, code in self._entries:
            if isinstance(error, kind):
                return code
        return None

    @asynccontextmanager
    async def translating(self, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
        try:
            yield
        except self._types as exc:
            code = self.code_for(exc)
            assert code is not None
            trailers = exc.trailing_metadata() if isinstance(exc, HasTrailingMetadata) else ()
            await abort(context, code, str(exc), trailers)


def retry_metadata(seconds: float, message: str) -> tuple[tuple[str, str | bytes], ...]:
    """A RESOURCE_EXHAUSTED retry delay as gRPC's standard RetryInfo detail (in
    `grpc-status-details-bin`) and as plain `retry-after-ms`."""
    delay = Duration()
    delay.FromNanoseconds(int(seconds * 1e9))
    detail = AnyMessage()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=message, details=[detail])
    return (
        ("retry-after-ms", str(max(1, round(seconds * 1000)))),
        ("grpc-status-details-bin", status.SerializeToString()),
    )
