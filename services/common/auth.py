"""Bearer-token authentication for a gRPC server, as a server interceptor, and who the caller is.

Callers send `authorization: Bearer <token>` metadata. Each token has a name, the caller's
identity (for quotas and logs). Tokens are compared in constant time, and against every
configured token, so timing says nothing about which one nearly matched. Health checks and
reflection stay open: Kubernetes' probes carry no token.

`caller_of(context)` names the caller of the call being served: the token's name, else the
subject of a verified client certificate (mTLS), else "".
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

import grpc
import grpc.aio

from services.common.callers import caller_of, caller_var
from services.common.interceptors import wrap_rpc_behavior

__all__ = ["BearerTokenInterceptor", "caller_of"]

_OPEN_PREFIXES: Final = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_SCHEME: Final = "bearer "


class _Ambiguous(Exception):
    """More than one authorization header: which one counts would depend on the proxy."""


def _token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    values = [value for key, value in metadata or () if key == "authorization"]
    if len(values) > 1:
        raise _Ambiguous
    if not values or not isinstance(values[0], str):
        return None
    value = values[0]
    if value[: len(_SCHEME)].lower() != _SCHEME:
        return None
    return value[len(_SCHEME) :].strip()


def _refusal(
    handler: grpc.RpcMethodHandler[Any, Any], message: str
) -> grpc.RpcMethodHandler[Any, Any] | None:
    def wrap(_behavior: Any, _request_streaming: bool, response_streaming: bool) -> Any:
        async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        async def refuse_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
            yield  # pragma: no cover - makes this an async generator, like the handler

        return refuse_stream if response_streaming else refuse

    return wrap_rpc_behavior(handler, wrap)


def _as_caller(
    handler: grpc.RpcMethodHandler[Any, Any], name: str
) -> grpc.RpcMethodHandler[Any, Any] | None:
    """`handler` with the caller's name set for the handler's own task."""

    def wrap(behavior: Any, _request_streaming: bool, response_streaming: bool) -> Any:
        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            caller_var.set(name)
            return await behavior(request, context)

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            caller_var.set(name)
            async for response in behavior(request, context):
                yield response

        return stream if response_streaming else unary

    return wrap_rpc_behavior(handler, wrap)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: Mapping[str, str] | Sequence[str]) -> None:
        named = (
            dict(tokens)
            if isinstance(tokens, Mapping)
            else {f"token-{i}": t for i, t in enumerate(tokens, start=1)}
        )
        if not named or any(not token for token in named.values()):
            raise ValueError("at least one non-empty token is needed")
        self._tokens = [(name, token.encode()) for name, token in named.items()]

    def _match(self, presented: str) -> str:
        """The name of the token presented, or "" (every token compared, in constant time)."""
        candidate = presented.encode()
        found = ""
        for name, token in self._tokens:
            if hmac.compare_digest(candidate, token):
                found = name
        return found

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(_OPEN_PREFIXES):
            return handler
        try:
            presented = _token(handler_call_details.invocation_metadata)
        except _Ambiguous:
            return _refusal(handler, "more than one 'authorization' header: send exactly one")
        if presented is None:
            return _refusal(handler, "missing 'authorization: Bearer <token>' metadata")
        name = self._match(presented)
        if not name:
            return _refusal(handler, "invalid bearer token")
        return _as_caller(handler, name)
