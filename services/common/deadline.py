"""A deadline as a value: one clock, what remains of it, and the time budget of one call.

gRPC in Python does not propagate deadlines, so every outbound call's timeout is derived from
the caller's: `Deadline.from_context` reads the caller's remaining time once, and
`Deadline.budget` gives each call its share (its own bound, a margin kept for our answer, time
reserved for what must still happen after it). The budget also says whether it was cut short by
the deadline: a dependency that times out within a budget shorter than its own bound did
nothing wrong, and a circuit breaker must not count it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

Clock = Callable[[], float]

# Kept back from a caller's deadline so that our answer still reaches it after a downstream
# call used up its own share.
DEADLINE_MARGIN_SECONDS: Final = 0.05


class _HasTimeRemaining(Protocol):
    def time_remaining(self) -> float | None: ...


class DeadlineExhausted(Exception):
    """The deadline leaves no time for another downstream call."""


@dataclass(frozen=True, slots=True)
class Budget:
    """The time one call may take."""

    seconds: float  # <= 0: there is no time left to make the call at all
    cut_short: bool  # True when the deadline, not the call's own bound, set `seconds`

    @property
    def usable(self) -> bool:
        return self.seconds > 0

    def require(self) -> float:
        """`seconds`, or DeadlineExhausted when nothing is left."""
        if self.seconds <= 0:
            raise DeadlineExhausted("the deadline leaves no time for this call")
        return self.seconds


class Deadline:
    """A point in time on one clock (time.monotonic unless a test injects another)."""

    __slots__ = ("_clock", "at")

    def __init__(self, at: float, *, clock: Clock = time.monotonic) -> None:
        self.at = at
        self._clock = clock

    @classmethod
    def after(cls, seconds: float, *, clock: Clock = time.monotonic) -> Deadline:
        return cls(clock() + seconds, clock=clock)

    @classmethod
    def from_context(
        cls,
        context: _HasTimeRemaining | Any | None,
        *,
        default_seconds: float,
        margin_seconds: float = DEADLINE_MARGIN_SECONDS,
        clock: Clock = time.monotonic,
    ) -> Deadline:
        """The deadline of the call being served: the caller's, less `margin_seconds` for the
        answer to reach it, and never later than `default_seconds` from now (also the deadline
        of a caller that set none)."""
        remaining = None if context is None else context.time_remaining()
        seconds = default_seconds
        if remaining is not None:
            seconds = min(default_seconds, remaining - margin_seconds)
        return cls.after(seconds, clock=clock)

    def remaining(self) -> float:
        """Seconds left; zero or less once it has passed."""
        return self.at - self._clock()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def budget(
        self,
        cap: float = math.inf,
        *,
        margin: float = DEADLINE_MARGIN_SECONDS,
        reserve: float = 0.0,
    ) -> Budget:
        """The time a call may take now: at most `cap` (the call's own bound), and ending
        `margin + reserve` before the deadline (`reserve`: time kept for what follows)."""
        left = self.remaining() - margin - reserve
        if left < cap:
            return Budget(left, cut_short=True)
        return Budget(cap, cut_short=False)

    def timeout(self) -> asyncio.Timeout:
        """An `async with` block that is cancelled when the deadline passes."""
        remaining = self.remaining()
        return asyncio.timeout(None if math.isinf(remaining) else max(0.0, remaining))

    def __repr__(self) -> str:
        return f"Deadline(remaining={self.remaining():.3f}s)"
