"""Circuit breakers (pybreaker) per dependency, with their state in Redis when configured so
every replica sees the same open circuit, and exported as a metric.

Used as `with breaker.calling(): await call()` — pybreaker's `call_async` never counts a failure.
Cancellation is excluded: a caller that gave up says nothing about the dependency's health.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any, Final

import pybreaker
import redis
from prometheus_client import Gauge

logger = logging.getLogger(__name__)

BREAKER_STATE = Gauge(
    "chatagent_breaker_state",
    "Circuit breaker state per dependency: 0 closed, 1 half-open, 2 open.",
    ["dependency"],
)
_STATE_VALUES: Final = {
    pybreaker.STATE_CLOSED: 0,
    pybreaker.STATE_HALF_OPEN: 1,
    pybreaker.STATE_OPEN: 2,
}
# pybreaker's Redis storage is synchronous and runs on the event loop, so a Redis outage must
# cost milliseconds per call, not the usual half second.
_STORAGE_TIMEOUT_SECONDS: Final = 0.05


class _StateMetric(pybreaker.CircuitBreakerListener):
    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        logger.warning(
            "circuit breaker changed state",
            extra={
                "dependency": cb.name,
                "from": getattr(old_state, "name", ""),
                "to": getattr(new_state, "name", ""),
            },
        )


def make_breaker(
    name: str,
    *,
    fail_max: int,
    reset_seconds: float,
    redis_url: str = "",
    exclude: Iterable[type[BaseException] | Callable[[BaseException], bool]] = (),
) -> pybreaker.CircuitBreaker:
    """A breaker for dependency `name`; `exclude` lists errors that are not its fault."""
    storage: pybreaker.CircuitBreakerStorage | None = None
    if redis_url:
        client = redis.Redis.from_url(
            redis_url,
            socket_timeout=_STORAGE_TIMEOUT_SECONDS,
            socket_connect_timeout=_STORAGE_TIMEOUT_SECONDS,
        )
        try:
            storage = pybreaker.CircuitRedisStorage(
                pybreaker.STATE_CLOSED, client, namespace=f"chatagent:breaker:{name}"
            )
        except redis.RedisError as exc:
            # The breaker still protects this replica; it just does not share its state.
            logger.warning(
                "breaker state kept in-process: Redis unreachable",
                extra={"dependency": name, "error": repr(exc)},
            )
    breaker = pybreaker.CircuitBreaker(
        fail_max=fail_max,
        reset_timeout=reset_seconds,
        exclude=[asyncio.CancelledError, *exclude],
        listeners=[_StateMetric()],
        state_storage=storage,
        name=name,
    )
    # Read at scrape time: with shared storage another replica may have opened the circuit.
    BREAKER_STATE.labels(name).set_function(lambda: _STATE_VALUES.get(breaker.current_state, 0))
    return breaker
