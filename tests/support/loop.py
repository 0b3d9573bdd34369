"""Watching the event loop from inside a test: how long it went without running a task, and
waiting for observable state instead of sleeping."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from types import TracebackType


class StallMeter:
    """A task that ticks every `interval` seconds and records the longest gap between ticks:
    a blocking call on the loop shows up as a gap that long."""

    def __init__(self, interval: float = 0.01) -> None:
        self._interval = interval
        self.max_gap = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(self._interval)
            now = time.monotonic()
            self.max_gap = max(self.max_gap, now - last - self._interval)
            last = now

    async def __aenter__(self) -> StallMeter:
        self._task = asyncio.create_task(self._tick())
        await asyncio.sleep(0)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def wait_until(
    condition: Callable[[], object],
    *,
    within: float,
    message: str = "condition",
    poll: float = 0.02,
) -> float:
    """Poll `condition` (a function, or one returning an awaitable) until its result is true;
    the seconds it took. Fails the test after `within` seconds."""
    start = time.monotonic()
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() - start > within:
            raise AssertionError(f"{message} not reached within {within}s")
        await asyncio.sleep(poll)
