"""Outbound gRPC: one long-lived channel per dependency, and a deadline on every call.

Retries happen only inside the channel, by the gRPC service config, and only on UNAVAILABLE
(the call never reached a handler, so repeating it is safe). Deadlines are not propagated by gRPC
in Python, so callers derive each call's timeout from their own caller's remaining time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import grpc.aio

from services.common.tracing import client_interceptors

# Time kept back from a caller's deadline so our answer still reaches it after a downstream
# call used up its own share.
DEADLINE_MARGIN_SECONDS = 0.05


class DeadlineExhausted(Exception):
    """The caller's deadline leaves no time for another downstream call."""


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


class DefaultDeadline(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
):
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

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(self._bounded(client_call_details), request)

    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(self._bounded(client_call_details), request)


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
    interceptors = [DefaultDeadline(default_timeout_seconds), *client_interceptors()]
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)


def call_timeout(
    context: grpc.aio.ServicerContext[Any, Any] | None,
    default_seconds: float,
    *,
    margin_seconds: float = DEADLINE_MARGIN_SECONDS,
) -> float:
    """The timeout for a downstream call made while serving `context`.

    It is the smaller of `default_seconds` and the caller's remaining time less a margin; with
    no caller, or a caller without a deadline, `default_seconds`. Raises DeadlineExhausted when
    nothing is left.
    """
    remaining = None if context is None else context.time_remaining()
    if remaining is None:
        return default_seconds
    budget = remaining - margin_seconds
    if budget <= 0:
        raise DeadlineExhausted(f"the caller's deadline leaves {remaining:.3f}s")
    return min(default_seconds, budget)
