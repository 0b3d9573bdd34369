"""Where synthesis runs: a fixed set of workers, each one thread with the engines that live on
it, shared by the calls sentence by sentence, and an admission limit in front of them.

Synthesis is CPU work that would stall the event loop (and the health checks) for as long as a
sentence takes, so it runs on a worker's thread. Each worker keeps its own engines: Open JTalk's
engines hold per-instance state and, one per thread, release the GIL and run in parallel (the
module-level `pyopenjtalk.tts()` shares one engine behind a lock).

At most `workers + max_queue` calls are admitted; a call beyond that is refused at once
(`Overloaded`) rather than joining a queue that only grows. An admitted call takes a worker for
each sentence and gives it back before the sentence is sent, first come first served: a short
call is not stuck behind a long text (it waits for one sentence, not for the text), and a client
that stops reading holds no worker while its stream waits. A call that is cancelled gives its
worker back at once: the sentence already on the worker's thread finishes there (a thread
cannot be interrupted), and the next sentence simply runs after it, so no more sentences run at
once than there are workers. `Worker` knows nothing of event loops; `WorkerPool` is the asyncio
side.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from typing import Final, TypeVar

from services.common.deadline import Deadline, DeadlineExhausted
from services.common.status import Metadata, retry_metadata
from services.tts import metrics

T = TypeVar("T")

# What a refused caller is told to wait: about one sentence's synthesis.
RETRY_AFTER_SECONDS: Final = 0.5


class Overloaded(Exception):
    """As many calls as there are workers are being spoken and the queue is full."""

    def __init__(self, workers: int, max_queue: int) -> None:
        super().__init__(
            f"the speech service is busy ({workers} texts being spoken and {max_queue} "
            f"waiting); retry after {RETRY_AFTER_SECONDS:g} seconds"
        )

    def trailing_metadata(self) -> Metadata:
        return retry_metadata(RETRY_AFTER_SECONDS, str(self))


class Worker:
    """One synthesis thread. What a voice keeps per thread (`threading.local`) is this worker's."""

    def __init__(self, index: int) -> None:
        self.index = index
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tts-{index}")

    async def run(self, function: Callable[..., T], *args: object) -> T:
        """`function(*args)` on this worker's thread, with the caller's context (request id)."""
        call = functools.partial(contextvars.copy_context().run, function, *args)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def call(self, function: Callable[..., T], *args: object) -> T:
        """`function(*args)` on this worker's thread, waited for (for loading, off the loop)."""
        return self._executor.submit(function, *args).result()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def start_workers(count: int) -> list[Worker]:
    return [Worker(index) for index in range(count)]


class WorkerPool:
    """Admits calls (`workers + max_queue` at most) and hands workers to their sentences, one
    each, in the order they asked."""

    def __init__(self, workers: Sequence[Worker], *, max_queue: int) -> None:
        if not workers or max_queue < 0:
            raise ValueError("a worker pool needs a worker and a queue of 0 or more")
        self._size = len(workers)
        self._max_queue = max_queue
        self._free = list(workers)
        self._waiters: deque[asyncio.Future[Worker]] = deque()
        self._admitted = 0

    @property
    def admitted(self) -> int:
        """Calls being spoken or waiting to be."""
        return self._admitted

    @property
    def busy(self) -> int:
        """Workers synthesizing a sentence."""
        return self._size - len(self._free)

    @asynccontextmanager
    async def admission(self) -> AsyncIterator[None]:
        """A place for one call for the block; Overloaded when every place is taken."""
        if self._admitted >= self._size + self._max_queue:
            metrics.REFUSED.inc()
            raise Overloaded(self._size, self._max_queue)
        self._admitted += 1
        metrics.ADMITTED.set(self._admitted)
        try:
            yield
        finally:
            self._admitted -= 1
            metrics.ADMITTED.set(self._admitted)

    @asynccontextmanager
    async def worker(self, deadline: Deadline) -> AsyncIterator[Worker]:
        """A worker for the block; DeadlineExhausted when none comes free before `deadline`."""
        worker = await self._take(deadline)
        metrics.BUSY.set(self.busy)
        try:
            yield worker
        finally:
            self._give_back(worker)
            metrics.BUSY.set(self.busy)

    async def _take(self, deadline: Deadline) -> Worker:
        if self._free and not self._waiters:
            return self._free.pop()
        waiter: asyncio.Future[Worker] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with deadline.timeout():
                return await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                # Handed over in the instant the wait ended: it goes to the next in line.
                self._give_back(waiter.result())
            waiter.cancel()
            with suppress(ValueError):
                self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise DeadlineExhausted(
                    "the deadline passed while the text waited for a free worker"
                ) from None
            raise

    def _give_back(self, worker: Worker) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(worker)
                return
        self._free.append(worker)
