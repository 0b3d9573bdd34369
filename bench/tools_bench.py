"""Tools service timings.

Tools service: the calculator's refusal time for hostile input (goal: well under 50 ms), and
per-RPC latency over real gRPC on loopback against a real tools process.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable

from chatagent.v1 import tools_pb2, tools_pb2_grpc
from services.tools.calculator import CalculationError, calculate
from tests.support.process import ServiceProcess

HOSTILE = [
    "10**10**10",
    "9**9**9",
    "factorial(10**6)",
    "(" * 199 + "1" + ")" * 199,
    "9*" * 499 + "9",
]


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered), p99, max(ordered)


def row(name: str, samples: list[float], goal: str) -> None:
    p50, p99, worst = (x * 1e3 for x in percentiles(samples))
    print(f"| {name:<34} | {p50:9.3f} | {p99:9.3f} | {worst:9.3f} | {goal:<14} |")


def timed(call: Callable[[], object], repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        with contextlib.suppress(CalculationError):
            call()
        samples.append(time.perf_counter() - started)
    return samples


def main() -> None:
    header = f"| {'measurement':<34} |  p50 (ms) |  p99 (ms) |  max (ms) | {'goal':<14} |"
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
    for expression in HOSTILE:
        samples = timed(lambda e=expression: calculate(e), 200)
        row(f"refuse {expression[:24]!s}", samples, "< 50 ms")
    with ServiceProcess("tools", {"LOG_LEVEL": "WARNING"}) as tools:
        tools.start(wait_for="chatagent.v1.ToolService")
        assert tools.channel is not None
        stub = tools_pb2_grpc.ToolServiceStub(tools.channel)
        calls: dict[str, Callable[[], object]] = {
            "gRPC Calculate (2**64)": lambda: stub.Calculate(
                tools_pb2.CalculateRequest(expression="2**64"), timeout=5
            ),
            "gRPC GetTime (東京)": lambda: stub.GetTime(
                tools_pb2.GetTimeRequest(place="東京"), timeout=5
            ),
            "gRPC GetFortune": lambda: stub.GetFortune(
                tools_pb2.GetFortuneRequest(user_id="bench", timezone="Asia/Tokyo"), timeout=5
            ),
        }
        for name, call in calls.items():
            timed(call, 50)  # warm up the channel and the server
            row(name, timed(call, 1000), "-")


if __name__ == "__main__":
    main()
