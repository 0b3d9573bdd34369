"""Test doubles of our own gRPC services, served from the test process on a free port, for the
behaviours the real ones cannot be steered into (fixed delays, failures, canned scores)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc

from chatagent.v1 import (
    emotion_pb2,
    emotion_pb2_grpc,
    tools_pb2,
    tools_pb2_grpc,
    types_pb2,
)
from tests.support.ports import free_port


@dataclass
class Double:
    address: str = ""
    delays: dict[str, float] = field(default_factory=dict)
    failures: dict[str, grpc.StatusCode] = field(default_factory=dict)
    calls: list[tuple[str, object, float]] = field(default_factory=list)
    # Calls whose client went away (cancelled, or past its deadline) before the answer.
    cancelled: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: grpc.Server | None = None
    _start: Callable[[], grpc.Server] | None = None

    def reset(self) -> None:
        """As new, for the next test of a module that shares one double."""
        with self._lock:
            self.calls.clear()
            self.cancelled.clear()
        self.delays.clear()
        self.failures.clear()

    def stop(self) -> None:
        """Take the service down, as a crashed or stopped process would be."""
        assert self._server is not None
        self._server.stop(grace=None)
        self._server = None

    def restart(self) -> None:
        """Bring it back on the same address."""
        assert self._start is not None
        assert self._server is None
        self._server = self._start()

    def _enter(self, method: str, request: object, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.calls.append((method, request, time.monotonic()))
        delay = self.delays.get(method, 0.0)
        if delay:
            end = time.monotonic() + delay
            while (left := end - time.monotonic()) > 0 and not self.release.is_set():
                if not context.is_active():
                    with self._lock:
                        self.cancelled.append(method)
                    return
                # Checks for a cancel every 10 ms, and ends on time, not up to 10 ms late.
                self.release.wait(min(0.01, left))
        failure = self.failures.get(method)
        if failure is not None:
            context.abort(failure, f"{method} failed on purpose")

    def called(self, method: str) -> list[object]:
        with self._lock:
            return [request for name, request, _ in self.calls if name == method]


# What the doubles answer, shared by the threaded doubles here and the asyncio ones of
# tests/support/turns.py.


def time_answer(request: tools_pb2.GetTimeRequest) -> tools_pb2.GetTimeResponse:
    return tools_pb2.GetTimeResponse(
        local_time="2026-11-26T09:30:00+09:00",
        timezone=request.timezone or "Asia/Tokyo",
        utc_offset="+09:00",
        utc_offset_seconds=32400,
        abbreviation="JST",
        weekday="Thursday",
        place=request.place,
    )


def weather_answer(request: tools_pb2.GetWeatherRequest) -> tools_pb2.GetWeatherResponse:
    return tools_pb2.GetWeatherResponse(
        place=request.place, description="晴れ", temperature_c=20.5, weather_code=1,
        today_max_c=23.0, today_min_c=15.0,
    )  # fmt: skip


def fortune_answer(_request: tools_pb2.GetFortuneRequest) -> tools_pb2.GetFortuneResponse:
    return tools_pb2.GetFortuneResponse(
        level=tools_pb2.FORTUNE_LEVEL_DAIKICHI, label="大吉", message="いい日",
        lucky_item="鈴", date="2026-11-26",
    )  # fmt: skip


def calculate_answer(_request: tools_pb2.CalculateRequest) -> tools_pb2.CalculateResponse:
    return tools_pb2.CalculateResponse(result="42", value=42.0, is_integer=True)


def emotion_answer(
    scores: dict[str, float] | None = None, dominant: str = "joy"
) -> emotion_pb2.AnalyzeResponse:
    return emotion_pb2.AnalyzeResponse(
        emotion=types_pb2.EmotionResult(
            scores={"joy": 0.8, "neutral": 0.2} if scores is None else scores, dominant=dominant
        ),
        analyzer="double",
    )


class _Tools(tools_pb2_grpc.ToolServiceServicer):
    def __init__(self, state: Double) -> None:
        self.state = state

    def GetTime(self, request, context):
        self.state._enter("GetTime", request, context)
        return time_answer(request)

    def GetWeather(self, request, context):
        self.state._enter("GetWeather", request, context)
        return weather_answer(request)

    def GetFortune(self, request, context):
        self.state._enter("GetFortune", request, context)
        return fortune_answer(request)

    def Calculate(self, request, context):
        self.state._enter("Calculate", request, context)
        return calculate_answer(request)


class _Emotion(emotion_pb2_grpc.EmotionServiceServicer):
    def __init__(self, state: Double) -> None:
        self.state = state

    def Analyze(self, request, context):
        self.state._enter("Analyze", request, context)
        return emotion_answer()


@contextmanager
def _serve(add: object, servicer: object, state: Double) -> Iterator[Double]:
    state.address = f"127.0.0.1:{free_port()}"

    def start() -> grpc.Server:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        add(servicer, server)  # type: ignore[operator]
        server.add_insecure_port(state.address)
        server.start()
        return server

    state._start = start
    state._server = start()
    try:
        yield state
    finally:
        state.release.set()
        if state._server is not None:
            state._server.stop(grace=None)


@contextmanager
def tools_double() -> Iterator[Double]:
    state = Double()
    with _serve(tools_pb2_grpc.add_ToolServiceServicer_to_server, _Tools(state), state) as s:
        yield s


@contextmanager
def emotion_double() -> Iterator[Double]:
    state = Double()
    with _serve(emotion_pb2_grpc.add_EmotionServiceServicer_to_server, _Emotion(state), state) as s:
        yield s
