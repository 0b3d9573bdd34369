"""Where analyses run: a fixed set of worker threads, each with its own analysers, behind a
bounded queue.

Analysis is CPU work; on the event loop it would stall every other call and the health checks.
Each worker thread builds its own analyser set (MeCab taggers are not thread-safe). At most
`workers` analyses run and `max_queue` wait; a call beyond that is refused at once
(`Overloaded`) instead of joining a queue that only grows. A call whose deadline is spent is
not started, neither when it arrives nor when a worker comes free. A worker's slot is given back
when its thread finishes, not when the caller stops waiting: an analysis whose caller cancelled
still runs to its end, and the calls after it wait in this queue (counted, bounded, watched by
their deadlines) rather than in the executor's own, which is none of these.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Final

from services.common.deadline import Deadline, DeadlineExhausted
from services.common.language import SUPPORTED
from services.common.language import warm_up as load_language_identifier
from services.emotion import analyzers, metrics, text
from services.emotion.analysis import Analysis, analyze
from services.emotion.analyzers import AnalyzerFactory, AnalyzerSet
from services.emotion.languages import UNDETERMINED

logger = logging.getLogger(__name__)

# How long the worker threads may take to build their analysers at start.
LOAD_TIMEOUT_SECONDS: Final = 60.0


class Overloaded(Exception):
    """Every worker is busy and the queue is full."""


class NotReady(Exception):
    """The analysers are still loading."""


class AnalysisPool:
    def __init__(
        self, factory: AnalyzerFactory, *, workers: int, max_queue: int, max_chars: int
    ) -> None:
        if workers < 1 or max_queue < 0 or max_chars < 1:
            raise ValueError("an analysis pool needs a worker, a queue of 0 or more and a window")
        self._factory = factory
        self._workers = workers
        self._max_queue = max_queue
        self._max_chars = max_chars
        self._executor: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._slots = asyncio.Semaphore(workers)
        self._admitted = 0  # running or waiting for a worker
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def admitted(self) -> int:
        """Calls running or waiting for a worker."""
        return self._admitted

    async def start(self) -> None:
        """Load the analysers in every worker thread (off the event loop); the readiness check.
        Raises if they cannot be loaded, leaving the pool not ready (a later call retries)."""
        if self._executor is not None:
            return
        started = time.monotonic()
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(_load_shared)
        barrier = threading.Barrier(self._workers, timeout=LOAD_TIMEOUT_SECONDS)

        def build() -> None:
            try:
                self._local.analyzers = self._factory()
            except BaseException:
                barrier.abort()
                raise

        executor = ThreadPoolExecutor(
            max_workers=self._workers, thread_name_prefix="emotion", initializer=build
        )
        # Every thread waits at the barrier, so the executor must start all of them, and each
        # has built its analysers before the pool reports ready.
        loading = [asyncio.wrap_future(executor.submit(barrier.wait)) for _ in range(self._workers)]
        try:
            await asyncio.gather(*loading)
        except BaseException:
            executor.shutdown(wait=False, cancel_futures=True)
            raise
        self._executor = executor
        logger.info(
            "emotion analysers loaded",
            extra={"workers": self._workers, "seconds": round(time.monotonic() - started, 3)},
        )

    async def analyze(self, text: str, language: str, deadline: Deadline) -> Analysis:
        """The emotion in `text` (`language`: a primary subtag, or "" to detect it)."""
        executor = self._executor
        if executor is None:
            raise NotReady("the emotion analysers are still loading")
        if deadline.expired():
            raise DeadlineExhausted("the deadline passed before the analysis began")
        if self._admitted >= self._workers + self._max_queue:
            raise Overloaded(
                f"the emotion service is busy ({self._workers} analyses running and "
                f"{self._max_queue} waiting); try again shortly"
            )
        self._admitted += 1
        metrics.IN_FLIGHT.inc()
        try:
            try:
                async with deadline.timeout():
                    await self._slots.acquire()
            except TimeoutError:
                raise DeadlineExhausted(
                    "the deadline passed while the analysis waited for a worker"
                ) from None
            try:
                future = executor.submit(self._run, text, language, deadline)
            except BaseException:
                self._slots.release()
                raise
            future.add_done_callback(self._give_back_slot)
            return await asyncio.wrap_future(future)
        finally:
            self._admitted -= 1
            metrics.IN_FLIGHT.dec()

    def _give_back_slot(self, _: Future[Analysis]) -> None:
        # Runs in the worker thread (or here, for a job cancelled before it started).
        assert self._loop is not None
        # RuntimeError: the loop has closed, and nobody is waiting for the slot any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._slots.release)

    def _run(self, text: str, language: str, deadline: Deadline) -> Analysis:
        if deadline.expired():
            raise DeadlineExhausted("the deadline passed before the analysis began")
        own: AnalyzerSet = self._local.analyzers
        started = time.perf_counter()
        result = analyze(text, language, own, max_chars=self._max_chars)
        metrics.ANALYSIS_SECONDS.labels(result.analyzer).observe(time.perf_counter() - started)
        metrics.ANALYSES.labels(_language_label(result.language), result.analyzer).inc()
        if result.truncated:
            metrics.TRUNCATED.inc()
        return result

    async def close(self) -> None:
        """Stop the worker threads once the analyses running have finished."""
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)


def _load_shared() -> None:
    analyzers.load_shared()
    text.warm_up()
    # py3langid, for the languages that share a script with ours (about a second, once).
    load_language_identifier()


def _language_label(language: str) -> str:
    # A metric label from a closed set: a caller's tag could be anything.
    if language in SUPPORTED or language == UNDETERMINED:
        return language
    return "other"
