"""Circuit breakers per dependency that blame only the dependency, with their open/close
transitions shared between replicas through Redis without any Redis I/O on the calling path.

Each `Breaker` wraps a local, in-memory pybreaker.CircuitBreaker: pybreaker's own state machine
decides when to open, half-open and close. Used around one outbound call as

    with breaker.calling(budget):
        reply = await unary(stub.Method(request, timeout=budget.require()))

where `budget` is the `services.common.deadline.Budget` the call runs with. An exception counts
as a failure of the dependency only when the dependency is to blame:

* a caller error (the `is_caller_error` predicate: the dependency answered, the request was at
  fault) counts as a success;
* a cancellation (the caller gave up) and a timeout within a budget cut short by the caller's
  deadline (the dependency did not get its own bound) count as nothing at all: they neither add a
  failure nor reset the count, nor close a half-open circuit;
* anything else counts: UNAVAILABLE, INTERNAL, 5xx, connection errors, a timeout at the
  dependency's full configured bound.

The exception always reaches the caller unchanged. An open circuit raises `CircuitOpen` without
calling.

A `BreakerBoard` makes the breakers of one process and, given an async Redis client, shares their
transitions: a circuit opened or closed here is published (PUBLISH, plus a key that lives as long
as the circuit stays open, so a replica that starts later sees it) by a background task, and a
subscriber task applies the other replicas' transitions to the local breakers without publishing
them again. When Redis is away the breakers keep working locally; the outage is logged once, the
subscriber reconnects with backoff and catches up on circuits opened meanwhile. Half-open is not
shared: each replica tries its own trial call when its reset timeout has passed.

The count of failures in a row is shared the same way, so that `fail_max` failures open the
circuit however the calls were spread over the replicas: a closed breaker publishes each failure
it counts, and a success that ends a run of failures, and adds the other replicas' failures to
its own count (or resets it). Whichever replica's count reaches `fail_max` first opens and
publishes the open as above. Nothing is published while calls succeed. The count is as exact as
the messages are prompt: a call that fails while another replica's failure is on its way is one
more than `fail_max`, never `fail_max` per replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable, Generator
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Final

import grpc
import pybreaker
import redis.asyncio as redis
from prometheus_client import Gauge

from services.common import redisconn
from services.common.deadline import Budget

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
_RETRY_MIN_SECONDS: Final = 0.1
# Redis errors as redis-py raises them, and the socket errors beneath (TimeoutError included).
_REDIS_ERRORS: Final = (redis.RedisError, OSError)

ErrorPredicate = Callable[[BaseException], bool]


def _grpc_code(error: BaseException) -> grpc.StatusCode | None:
    code = getattr(error, "code", None) if isinstance(error, grpc.RpcError) else None
    return code() if callable(code) else None


def is_deadline_exceeded(error: BaseException) -> bool:
    """The default `is_timeout`: asyncio's and the builtin TimeoutError, and gRPC's
    DEADLINE_EXCEEDED."""
    return isinstance(error, TimeoutError) or _grpc_code(error) == grpc.StatusCode.DEADLINE_EXCEEDED


def grpc_codes(*codes: grpc.StatusCode) -> ErrorPredicate:
    """A predicate for gRPC errors with one of `codes` (caller errors, say: INVALID_ARGUMENT,
    NOT_FOUND)."""
    wanted = frozenset(codes)

    def matches(error: BaseException) -> bool:
        return _grpc_code(error) in wanted

    return matches


def _never(error: BaseException) -> bool:
    return False


class CircuitOpen(pybreaker.CircuitBreakerError):
    """The dependency's circuit is open: the call was not made."""

    def __init__(self, dependency: str) -> None:
        super().__init__(f"the circuit for {dependency} is open")
        self.dependency = dependency


class _Failed(Exception):
    """What pybreaker is told when the dependency failed; the real error never passes through
    pybreaker, so it reaches the caller exactly as it was raised."""


class _Verdict:
    __slots__ = ("failed",)

    def __init__(self) -> None:
        self.failed = False


def _outcome(verdict: _Verdict) -> Generator[None, None, None]:
    # pybreaker admits a call whose function returns a generator (running its checks and
    # transitions of admission) and records the call's outcome only when that generator is
    # first resumed: a success when it ends, a failure when it raises. A call that says nothing
    # about the dependency leaves it unresumed, and pybreaker records nothing.
    if verdict.failed:
        raise _Failed
    return
    yield  # pragma: no cover - makes this a generator


def _settle(pending: Generator[None, None, None], verdict: _Verdict, *, failed: bool) -> None:
    verdict.failed = failed
    with contextlib.suppress(StopIteration, _Failed):
        next(pending)


class _Guard:
    """The `with` block of one call: admitted on entry, its outcome judged on exit."""

    __slots__ = ("_breaker", "_budget", "_pending", "_verdict")

    def __init__(self, breaker: Breaker, budget: Budget) -> None:
        self._breaker = breaker
        self._budget = budget
        self._verdict = _Verdict()
        self._pending: Generator[None, None, None] | None = None

    def __enter__(self) -> None:
        try:
            self._pending = self._breaker._circuit.call(_outcome, self._verdict)
        except pybreaker.CircuitBreakerError:
            raise CircuitOpen(self._breaker.name) from None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._pending is not None
        blamed = False if error is None else self._breaker._blame(error, self._budget)
        if blamed is not None:
            self._breaker._record(self._pending, self._verdict, failed=blamed)
        # Returning None: the error propagates to the caller as it was.


class _Transitions(pybreaker.CircuitBreakerListener):
    def __init__(self, breaker: Breaker) -> None:
        self._breaker = breaker

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        old = old_state.name if old_state is not None else pybreaker.STATE_CLOSED
        self._breaker._changed(old, new_state.name)


class Breaker:
    """The circuit breaker of one dependency (see the module's docstring)."""

    def __init__(
        self,
        name: str,
        *,
        fail_max: int,
        reset_seconds: float,
        is_timeout: ErrorPredicate = is_deadline_exceeded,
        is_caller_error: ErrorPredicate = _never,
    ) -> None:
        """`fail_max` failures in a row open the circuit for `reset_seconds`; `is_timeout` says
        which errors are timeouts, `is_caller_error` which are the caller's fault."""
        self.name = name
        self._is_timeout = is_timeout
        self._is_caller_error = is_caller_error
        self._storage = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
        self._circuit = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_seconds,
            state_storage=self._storage,
            listeners=[_Transitions(self)],
            name=name,
            # Let the dependency's own error reach the caller when it trips the circuit.
            throw_new_error_on_trip=False,
        )
        self._adopting = False
        self._adopted_remaining = 0.0
        # Set by a BreakerBoard that shares this breaker's transitions and failure count.
        self._share: Callable[[Breaker, str], None] | None = None
        self._share_count: Callable[[Breaker, bool], None] | None = None
        BREAKER_STATE.labels(name).set(0)

    @property
    def state(self) -> str:
        """pybreaker's state name: "closed", "open" or "half-open"."""
        return self._circuit.current_state

    @property
    def fail_max(self) -> int:
        return self._circuit.fail_max

    @property
    def reset_seconds(self) -> float:
        return self._circuit.reset_timeout

    def calling(self, budget: Budget) -> _Guard:
        """A `with` block around one call made with `budget`; raises CircuitOpen when open."""
        return _Guard(self, budget)

    def open_remaining(self) -> float:
        """Seconds until an open circuit lets a trial call through; 0 when not open."""
        opened_at = self._storage.opened_at
        if self.state != pybreaker.STATE_OPEN or opened_at is None:
            return 0.0
        elapsed = (datetime.now(UTC) - opened_at).total_seconds()
        return max(0.0, self.reset_seconds - elapsed)

    @property
    def failures(self) -> int:
        """Failures in a row counted by the closed circuit (other replicas' included)."""
        return self._storage.counter

    def _record(
        self, pending: Generator[None, None, None], verdict: _Verdict, *, failed: bool
    ) -> None:
        counted_before = self._storage.counter
        was_closed = self.state == pybreaker.STATE_CLOSED
        _settle(pending, verdict, failed=failed)
        if self._share_count is None or not was_closed or self.state != pybreaker.STATE_CLOSED:
            return  # half-open trials are this replica's own; an open is shared as a transition
        if failed or counted_before:
            self._share_count(self, failed)

    def _count_remote(self, reset: bool, failures: int) -> None:
        """Another replica's count: a success that ended its run of failures (`reset`), then
        `failures` in a row (at most fail_max are counted). Reaching fail_max opens here."""
        if self.state != pybreaker.STATE_CLOSED:
            return
        if reset:
            self._storage.reset_counter()
        for _ in range(min(failures, self.fail_max)):
            self._storage.increment_counter()
        if failures and self._storage.counter >= self.fail_max:
            # Failures that ended together on both replicas (a hang timing out everywhere at
            # once) each arrive after the other's own count: the sum decides.
            self._circuit.open()

    def _blame(self, error: BaseException, budget: Budget) -> bool | None:
        """True: the dependency failed; False: it answered; None: the call says nothing."""
        if isinstance(error, asyncio.CancelledError):
            return None
        if self._is_caller_error(error):
            return False
        if self._is_timeout(error):
            return None if budget.cut_short else True
        # KeyboardInterrupt, SystemExit, GeneratorExit: nothing the dependency did.
        return isinstance(error, Exception)

    def _changed(self, old: str, new: str) -> None:
        if old == new:
            return  # a late failure re-tripping an open circuit: not a transition
        BREAKER_STATE.labels(self.name).set(_STATE_VALUES[new])
        source = "another replica" if self._adopting else "this replica"
        fields = {"dependency": self.name, "from": old, "to": new, "decided_by": source}
        if new == pybreaker.STATE_OPEN:
            open_for = self._adopted_remaining if self._adopting else self.reset_seconds
            logger.warning(
                "circuit breaker opened: calls fail fast",
                extra={**fields, "open_for_s": round(open_for, 3)},
            )
        elif new == pybreaker.STATE_HALF_OPEN:
            logger.info("circuit breaker half-open: trying the dependency again", extra=fields)
        else:
            logger.info("circuit breaker closed", extra=fields)
        if self._share is not None and not self._adopting and new != pybreaker.STATE_HALF_OPEN:
            self._share(self, new)

    def _adopt(self, state: str, remaining_seconds: float = 0.0) -> None:
        """Apply another replica's transition: open for `remaining_seconds`, or closed."""
        if state == self.state:
            return
        self._adopting = True
        self._adopted_remaining = remaining_seconds
        try:
            if state == pybreaker.STATE_OPEN:
                self._circuit.open()
                # Opened there `reset_seconds - remaining_seconds` ago: it stays open here for
                # what is left of that, not for a whole new reset period.
                elapsed = max(0.0, self.reset_seconds - remaining_seconds)
                self._storage.opened_at = datetime.now(UTC) - timedelta(seconds=elapsed)
            elif state == pybreaker.STATE_CLOSED:
                self._circuit.close()
        finally:
            self._adopting = False


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class _Outage:
    """One log line when an outage begins and one when it ends, however long it lasts."""

    def __init__(self, began: str, ended: str) -> None:
        self._began = began
        self._ended = ended
        self._active = False

    def began(self, error: Exception) -> None:
        if self._active:
            return
        self._active = True
        # An error other than Redis's own is a bug: log its traceback.
        unexpected = not isinstance(error, _REDIS_ERRORS)
        logger.warning(self._began, extra={"error": repr(error)}, exc_info=unexpected)

    def ended(self) -> None:
        if self._active:
            self._active = False
            logger.info(self._ended)


class BreakerBoard:
    """The breakers of one process, their transitions shared through `client` when given.

    Make the breakers with `breaker()`, then `await start()`; `await aclose()` at shutdown (the
    client stays open: whoever created it closes it). Without a client the breakers are local.
    """

    def __init__(
        self,
        client: redisconn.Client | None = None,
        *,
        prefix: str = "chatagent:breaker",
        retry_max_seconds: float = 2.0,
        sync_timeout_seconds: float = 1.0,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._channel = f"{prefix}:transitions"
        self._retry_max = retry_max_seconds
        self._sync_timeout = sync_timeout_seconds
        self._origin = uuid.uuid4().hex
        self._breakers: dict[str, Breaker] = {}
        self._pending: dict[str, str] = {}
        # Per breaker: whether a success reset its count, then how many failures followed.
        self._counts: dict[str, tuple[bool, int]] = {}
        self._dirty = asyncio.Event()
        self._synced = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False

    def breaker(
        self,
        name: str,
        *,
        fail_max: int,
        reset_seconds: float,
        is_timeout: ErrorPredicate = is_deadline_exceeded,
        is_caller_error: ErrorPredicate = _never,
    ) -> Breaker:
        """The breaker of dependency `name` (one per name; made before `start()`)."""
        if self._started:
            raise RuntimeError("make the breakers before starting the board")
        if name in self._breakers:
            raise ValueError(f"there is already a breaker for {name}")
        made = Breaker(
            name,
            fail_max=fail_max,
            reset_seconds=reset_seconds,
            is_timeout=is_timeout,
            is_caller_error=is_caller_error,
        )
        if self._client is not None:
            made._share = self._queue
            made._share_count = self._queue_count
        self._breakers[name] = made
        return made

    def __getitem__(self, name: str) -> Breaker:
        return self._breakers[name]

    async def start(self) -> None:
        """Start sharing; waits (at most `sync_timeout_seconds`) to learn the circuits other
        replicas have open. Never fails because of Redis."""
        if self._started:
            return
        self._started = True
        if self._client is None:
            return
        self._tasks = [
            asyncio.create_task(self._subscribe(self._client), name="breaker subscriber"),
            asyncio.create_task(self._publish(self._client), name="breaker publisher"),
        ]
        try:
            async with asyncio.timeout(self._sync_timeout):
                await self._synced.wait()
        except TimeoutError:
            pass

    async def aclose(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _key(self, name: str) -> str:
        return f"{self._prefix}:{name}:open"

    def _queue(self, breaker: Breaker, state: str) -> None:
        # Called inside pybreaker's transition, on the calling path: no I/O here, only a note
        # for the publisher. The latest transition of a breaker wins.
        self._pending[breaker.name] = state
        self._dirty.set()

    def _queue_count(self, breaker: Breaker, failed: bool) -> None:
        # On the calling path too: a note for the publisher, nothing more.
        reset, failures = self._counts.get(breaker.name, (False, 0))
        self._counts[breaker.name] = (reset, failures + 1) if failed else (True, 0)
        self._dirty.set()

    async def _publish(self, client: redisconn.Client) -> None:
        outage = _Outage(
            "breaker transitions not shared: Redis unreachable; retrying",
            "breaker transitions shared again",
        )
        delay = _RETRY_MIN_SECONDS
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            batch, self._pending = self._pending, {}
            counts, self._counts = self._counts, {}
            try:
                await self._send(client, batch, counts)
            except Exception as exc:
                outage.began(exc)
                for name, state in batch.items():
                    self._pending.setdefault(name, state)  # unless a newer one is queued
                # Counts are not kept: after an outage, each replica counts afresh from what
                # it sees, which errs toward keeping the circuit closed a little longer.
                self._dirty.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max)
                continue
            outage.ended()
            delay = _RETRY_MIN_SECONDS

    async def _send(
        self, client: redisconn.Client, batch: dict[str, str], counts: dict[str, tuple[bool, int]]
    ) -> None:
        pipe = client.pipeline(transaction=False)
        # A cluster pipeline refuses PUBLISH (redis-py): there the messages follow the keys.
        cluster = redisconn.is_cluster(client)
        messages: list[str] = []
        for name, state in batch.items():
            breaker = self._breakers[name]
            if breaker.state != state:
                continue  # superseded since: its own transition is queued, or another replica's
            message: dict[str, Any] = {"origin": self._origin, "dependency": name, "state": state}
            if state == pybreaker.STATE_OPEN:
                remaining_ms = int(breaker.open_remaining() * 1000)
                if remaining_ms <= 0:
                    continue  # it opened so long ago (Redis was away) that it is over
                message["remaining_ms"] = remaining_ms
                pipe.set(self._key(name), self._origin, px=remaining_ms)
            else:
                pipe.delete(self._key(name))
            if cluster:
                messages.append(json.dumps(message))
            else:
                pipe.publish(self._channel, json.dumps(message))
        for name, (reset, failures) in counts.items():
            if self._breakers[name].state != pybreaker.STATE_CLOSED:
                continue  # it opened since: the transition says more
            count: dict[str, Any] = {
                "origin": self._origin, "dependency": name, "reset": reset, "failures": failures
            }  # fmt: skip
            if cluster:
                messages.append(json.dumps(count))
            else:
                pipe.publish(self._channel, json.dumps(count))
        if len(pipe):
            await pipe.execute()
        for message_text in messages:
            await client.publish(self._channel, message_text)

    async def _subscribe(self, client: redisconn.Client) -> None:
        outage = _Outage(
            "breaker transitions of other replicas not received: Redis unreachable; reconnecting",
            "breaker transitions of other replicas received again",
        )
        delay = _RETRY_MIN_SECONDS
        while True:
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await redisconn.ready(client)
                await pubsub.subscribe(self._channel)
                # Subscribed first, then read what is open: no transition falls in between.
                await self._catch_up(client)
                self._synced.set()
                outage.ended()
                delay = _RETRY_MIN_SECONDS
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                    if message is not None and message.get("type") == "message":
                        self._receive(message["data"])
            except Exception as exc:
                outage.began(exc)
                self._synced.set()  # start() does not wait out an outage
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._retry_max)

    async def _catch_up(self, client: redisconn.Client) -> None:
        """Open the breakers whose circuit another replica opened while we were not listening.
        A close missed meanwhile is not caught up: the breaker then closes by its own trial."""
        names = list(self._breakers)
        if not names:
            return
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.get(self._key(name))
            pipe.pttl(self._key(name))
        replies = await pipe.execute()
        for index, name in enumerate(names):
            origin, ttl_ms = replies[2 * index], replies[2 * index + 1]
            if origin is None or _text(origin) == self._origin:
                continue  # closed, or our own open (our breaker knows better than our old key)
            if isinstance(ttl_ms, int) and ttl_ms > 0:
                self._breakers[name]._adopt(pybreaker.STATE_OPEN, ttl_ms / 1000)

    def _receive(self, data: bytes | str) -> None:
        try:
            message = json.loads(data)
            origin, name = message["origin"], message["dependency"]
            if not isinstance(name, str):
                raise TypeError("dependency")
            if "failures" in message:
                reset, failures = message["reset"], message["failures"]
                if not isinstance(reset, bool) or type(failures) is not int:
                    raise TypeError("count")
                state, remaining = None, 0.0
            else:
                state = message["state"]
                remaining = float(message.get("remaining_ms", 0)) / 1000
        except (ValueError, TypeError, KeyError):
            logger.warning("unreadable breaker message ignored")
            return
        if origin == self._origin or name not in self._breakers:
            return
        breaker = self._breakers[name]
        if state is None:
            breaker._count_remote(reset, max(0, failures))
        elif state in (pybreaker.STATE_OPEN, pybreaker.STATE_CLOSED):
            breaker._adopt(state, remaining)
