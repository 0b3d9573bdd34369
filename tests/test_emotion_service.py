"""EmotionService over real gRPC in this process (a grpc.aio server on port 0, the shared
runtime around it): answers on the wire, the concurrency limit, deadlines, cancels, readiness
and an event loop that keeps answering while long texts are analysed. A test-only analyser
that holds its worker until the test lets go makes the limits observable."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chatagent.v1 import emotion_pb2, emotion_pb2_grpc
from services.common.deadline import Deadline, DeadlineExhausted
from services.common.server import ServiceHost
from services.emotion.analyzers import ANALYZER_SETS, AnalyzerFactory, AnalyzerSet, Finding
from services.emotion.config import EmotionSettings
from services.emotion.labels import LABELS
from services.emotion.main import SERVICE_NAME, add_service
from services.emotion.pool import AnalysisPool, Overloaded
from tests.support.loop import StallMeter, wait_until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Gate:
    """Holds every analysis that enters until `release()`; counts what entered and ran."""

    def __init__(self) -> None:
        self._open = threading.Event()
        self._lock = threading.Lock()
        self.entered = 0
        self.running = 0
        self.most_running = 0

    def hold(self) -> None:
        with self._lock:
            self.entered += 1
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            assert self._open.wait(timeout=30), "the test never released the gate"
        finally:
            with self._lock:
                self.running -= 1

    def release(self) -> None:
        self._open.set()


class HeldAnalyzer:
    name = "held"

    def __init__(self, gate: Gate) -> None:
        self._gate = gate

    def analyze(self, text: str) -> Finding:
        self._gate.hold()
        return Finding({"joy": 1.0})


def held(gate: Gate) -> AnalyzerFactory:
    def factory() -> AnalyzerSet:
        analyzer = HeldAnalyzer(gate)
        return {"ja": analyzer, "en": analyzer, "ko": analyzer}

    return factory


@dataclass
class Running:
    stub: emotion_pb2_grpc.EmotionServiceStub
    health: health_pb2_grpc.HealthStub
    pool: AnalysisPool
    host: ServiceHost

    async def status(self) -> int:
        reply = await self.health.Check(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=1
        )
        return int(reply.status)

    async def status_is(self, status: int) -> bool:
        return await self.status() == status

    def analyze(self, text: str, language: str = "", timeout: float = 10) -> Any:
        return self.stub.Analyze(
            emotion_pb2.AnalyzeRequest(text=text, language=language), timeout=timeout
        )


@asynccontextmanager
async def emotion_service(
    factory: AnalyzerFactory, *, wait_ready: bool = True, **overrides: Any
) -> AsyncIterator[Running]:
    settings = EmotionSettings(
        bind_address="127.0.0.1",
        port=0,
        metrics_port=0,
        shutdown_grace_seconds=1,
        **overrides,
    )
    host = ServiceHost(settings, [SERVICE_NAME])
    pool = add_service(host, settings, factory)
    port = await host.start()
    if wait_ready:
        await host.wait_ready()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Running(
            emotion_pb2_grpc.EmotionServiceStub(channel),
            health_pb2_grpc.HealthStub(channel),
            pool,
            host,
        )
    finally:
        await channel.close()
        await host.stop()


async def code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details() or ""


# -- the real analysers on the wire ------------------------------------------------------------


async def test_analyze_answers_on_the_wire_for_each_language() -> None:
    async with emotion_service(ANALYZER_SETS["lexicon"]) as service:
        assert await service.status() == SERVING
        cases = [
            ("今日は本当に嬉しい！", "ja-JP", "joy", "mlask"),
            ("I'm scared of the dark", "en", "fear", "nrclex+vader"),
            ("너무 슬퍼요", "", "sadness", "ko-keywords"),
        ]
        for text, language, dominant, analyzer in cases:
            reply = await service.analyze(text, language)
            assert (reply.emotion.dominant, reply.analyzer) == (dominant, analyzer)
            assert set(reply.emotion.scores) == set(LABELS)
            assert math.isclose(sum(reply.emotion.scores.values()), 1.0, abs_tol=1e-9)
            assert not reply.truncated
            assert not reply.unsupported_language
        assert (await service.analyze("I feel so sad", "en")).polarity < 0

        french = await service.analyze("je suis très heureux", "fr-CA")
        assert french.unsupported_language
        assert (french.language, french.emotion.dominant, french.analyzer) == (
            "fr",
            "neutral",
            "none",
        )

        bomb = await service.analyze("🔥💥🎯" * 3000)
        assert (bomb.emotion.dominant, bomb.truncated, bomb.unsupported_language) == (
            "neutral",
            True,
            False,
        )

        long_text = ("今日は本当に嬉しいけど、明日のことを考えると少し不安です。" * 400)[:10_000]
        started = time.monotonic()
        reply = await service.analyze(long_text)
        assert time.monotonic() - started < 1.0  # about 20 ms
        assert reply.truncated
        assert reply.language == "ja"
        assert reply.emotion.scores["joy"] > 0
        assert reply.emotion.scores["fear"] > 0


async def test_a_malformed_language_tag_is_refused_with_invalid_argument() -> None:
    async with emotion_service(ANALYZER_SETS["lexicon"]) as service:
        code, details = await code_of(service.analyze("嬉しい", "日本語"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details == "language: '日本語' is not a BCP-47 language tag"


async def test_health_checks_answer_while_long_texts_are_analysed() -> None:
    # A window of 100,000 characters: one analysis takes about a second of CPU, which on the
    # event loop would stall every call and probe (Kubernetes gives a probe 1 s) for that long.
    long_text = ("今日は本当に嬉しいけど、明日のことを考えると少し不安です。" * 3500)[:100_000]
    async with emotion_service(ANALYZER_SETS["lexicon"], emotion_max_chars=100_000) as service:
        async with StallMeter() as meter:
            calls = [asyncio.ensure_future(service.analyze(long_text)) for _ in range(2)]
            slowest_probe = 0.0
            while not all(call.done() for call in calls):
                started = time.monotonic()
                assert await service.status() == SERVING
                slowest_probe = max(slowest_probe, time.monotonic() - started)
                await asyncio.sleep(0.02)
            replies = await asyncio.gather(*calls)
        assert all(reply.emotion.dominant in ("joy", "fear") for reply in replies)
        # Generous (a few milliseconds here, more on a loaded machine, where worker threads
        # and the loop share the GIL); an analysis on the loop shows as a full second or more.
        assert meter.max_gap < 0.8, meter.max_gap
        assert slowest_probe < 0.8, slowest_probe


# -- limits, deadlines, cancels ----------------------------------------------------------------


async def test_beyond_the_workers_and_the_queue_a_call_is_refused_at_once() -> None:
    gate = Gate()
    async with emotion_service(
        held(gate), emotion_max_concurrency=2, emotion_max_queue=2
    ) as service:
        admitted = [asyncio.ensure_future(service.analyze(f"text {n}")) for n in range(4)]
        await wait_until(
            lambda: gate.entered == 2 and service.pool.admitted == 4,
            within=10,
            message="two running, two waiting",
        )
        started = time.monotonic()
        code, details = await code_of(service.analyze("one too many"))
        assert time.monotonic() - started < 1.0
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert details == (
            "the emotion service is busy (2 analyses running and 2 waiting); try again shortly"
        )

        gate.release()
        replies = await asyncio.gather(*admitted)
        assert [reply.analyzer for reply in replies] == ["held"] * 4
        assert gate.most_running == 2
        assert (await service.analyze("after the burst")).emotion.dominant == "joy"


async def test_a_call_whose_deadline_passes_while_it_waits_is_never_analysed() -> None:
    gate = Gate()
    async with emotion_service(
        held(gate), emotion_max_concurrency=1, emotion_max_queue=4
    ) as service:
        running = asyncio.ensure_future(service.analyze("holds the only worker"))
        await wait_until(lambda: gate.entered == 1, within=10, message="the worker is busy")
        code, _ = await code_of(service.analyze("waits", timeout=0.3))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        await wait_until(lambda: service.pool.admitted == 1, within=5, message="gave up waiting")

        gate.release()
        await running
        assert (await service.analyze("next")).analyzer == "held"
        assert gate.entered == 2  # the first call and "next"; never the one that gave up


async def test_a_call_that_arrives_with_its_deadline_spent_starts_no_work() -> None:
    gate = Gate()
    gate.release()
    async with emotion_service(held(gate)) as service:
        # 20 ms left is less than the margin kept for the answer to travel back.
        code, _ = await code_of(service.analyze("too late", timeout=0.02))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        with pytest.raises(DeadlineExhausted):
            await service.pool.analyze("too late", "", Deadline.after(-1))
        assert gate.entered == 0
        assert (await service.analyze("in time")).analyzer == "held"


async def test_calls_cancelled_mid_analysis_leave_the_service_answering() -> None:
    gate = Gate()
    async with emotion_service(
        held(gate), emotion_max_concurrency=2, emotion_max_queue=4
    ) as service:
        first = [service.analyze(f"cancelled {n}") for n in range(2)]
        await wait_until(lambda: gate.entered == 2, within=10, message="both workers busy")
        for call in first:
            call.cancel()
        await wait_until(lambda: service.pool.admitted == 0, within=5, message="cancels seen")

        # The cancelled analyses still run in their threads; new calls wait their turn.
        later = [asyncio.ensure_future(service.analyze(f"later {n}")) for n in range(2)]
        await wait_until(lambda: service.pool.admitted == 2, within=5, message="later queued")
        assert gate.entered == 2

        gate.release()
        replies = await asyncio.gather(*later)
        assert [reply.analyzer for reply in replies] == ["held", "held"]
        assert gate.most_running == 2


# -- readiness ---------------------------------------------------------------------------------


async def test_not_serving_and_unavailable_until_every_worker_has_its_analysers() -> None:
    loaded = threading.Event()
    built = []

    def slow_factory() -> AnalyzerSet:
        assert loaded.wait(timeout=30)
        built.append(threading.get_ident())
        gate = Gate()
        gate.release()
        return held(gate)()

    async with emotion_service(
        slow_factory, wait_ready=False, emotion_max_concurrency=3
    ) as service:
        assert await service.status() == NOT_SERVING
        code, details = await code_of(service.analyze("嬉しい"))
        assert (code, details) == (
            grpc.StatusCode.UNAVAILABLE,
            "the emotion analysers are still loading",
        )

        loaded.set()
        await wait_until(lambda: service.status_is(SERVING), within=10, message="SERVING")
        assert len(set(built)) == 3  # one set per worker thread
        assert (await service.analyze("嬉しい")).analyzer == "held"


@pytest.mark.parametrize("workers", [1, 3])
async def test_the_pool_refuses_exactly_beyond_workers_plus_queue(workers: int) -> None:
    gate = Gate()
    pool = AnalysisPool(held(gate), workers=workers, max_queue=1, max_chars=2000)
    await pool.start()
    try:
        calls: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(pool.analyze("x", "", Deadline.after(30)))
            for _ in range(workers + 1)
        ]
        await wait_until(lambda: gate.entered == workers, within=10, message="workers busy")
        with pytest.raises(Overloaded):
            await pool.analyze("x", "", Deadline.after(30))
        gate.release()
        assert {result.analyzer for result in await asyncio.gather(*calls)} == {"held"}
    finally:
        await pool.close()
