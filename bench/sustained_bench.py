"""A sustained run at a fixed request rate against the suite, open loop: each turn starts on its
schedule whether or not the earlier ones have finished, so a slow spell shows as latency and
errors instead of quietly lowering the rate (a closed loop's coordinated omission).

The turn is the peers benchmark's full turn: the fake LLM (its own process) asks for three tools
at once, the orchestrator runs them on the real ToolService, analyses the emotion on the real
EmotionService and writes the reply; users rotate over a pool, so history is read and written.
Per 10-second window: turns started, p50 and p99 latency of the turns that started in it, and
errors (any non-OK status, deadline included). The plot (matplotlib, Agg backend; an optional
bench dependency) is written next to the report.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import grpc.aio

from bench.common import (
    METADATA,
    FakeLlmProcess,
    Section,
    machine,
    machine_line,
    orchestrator_env,
    p50,
    percentile,
)
from bench.peers_bench import MESSAGE
from chatagent.v1 import chat_pb2, chat_pb2_grpc
from tests.support.process import ServiceProcess

WINDOW = 10.0
HERE = Path(__file__).resolve().parent


async def open_loop(
    address: str, rate: float, seconds: float, users: int, deadline: float
) -> list[tuple[float, float, bool]]:
    """(start offset, latency, ok) of every turn, started on schedule at `rate` per second."""
    samples: list[tuple[float, float, bool]] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        for n in range(20):  # warm up the channel and the services
            await stub.Chat(
                chat_pb2.ChatRequest(user_id=f"warm-{n}", message=MESSAGE, language="ja"),
                metadata=METADATA, timeout=deadline,
            )  # fmt: skip

        async def one(n: int, offset: float) -> None:
            request = chat_pb2.ChatRequest(
                user_id=f"sustained-{n % users}", message=MESSAGE, language="ja"
            )
            started = time.perf_counter()
            ok = True
            try:
                await stub.Chat(request, metadata=METADATA, timeout=deadline)
            except grpc.RpcError:
                ok = False
            samples.append((offset, time.perf_counter() - started, ok))

        tasks: set[asyncio.Task[None]] = set()
        origin = time.perf_counter()
        total = int(rate * seconds)
        for n in range(total):
            due = origin + n / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(n, due - origin))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
    return samples


def windows(samples: list[tuple[float, float, bool]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if not samples:
        return rows
    last = max(offset for offset, _, _ in samples)
    for index in range(int(last // WINDOW) + 1):
        inside = [s for s in samples if index * WINDOW <= s[0] < (index + 1) * WINDOW]
        latencies = [latency for _, latency, ok in inside if ok]
        rows.append({
            "start_s": index * WINDOW,
            "turns": len(inside),
            "errors": sum(not ok for _, _, ok in inside),
            "p50_ms": p50(latencies) * 1e3,
            "p99_ms": percentile(latencies, 0.99) * 1e3,
        })  # fmt: skip
    return rows


def plot(rows: list[dict[str, Any]], rate: float, path: Path) -> str:
    """Write the PNG; the reason there is none when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return "no plot: matplotlib is not installed (pip install -e '.[bench]')"
    matplotlib.use("Agg")
    from matplotlib import pyplot

    starts = [row["start_s"] for row in rows]
    figure, latency = pyplot.subplots(figsize=(8, 4), dpi=100)
    latency.plot(starts, [row["p50_ms"] for row in rows], marker="o", label="p50")
    latency.plot(starts, [row["p99_ms"] for row in rows], marker="o", label="p99")
    latency.set_xlabel("seconds into the run (10 s windows)")
    latency.set_ylabel("turn latency (ms)")
    latency.set_ylim(bottom=0)
    errors = latency.twinx()
    errors.bar(starts, [row["errors"] for row in rows], width=WINDOW * 0.6, alpha=0.3,
               color="red", label="errors", align="edge")  # fmt: skip
    errors.set_ylabel("errors per window")
    errors.set_ylim(bottom=0, top=max(1, *(row["errors"] for row in rows)) * 1.2)
    handles = latency.get_legend_handles_labels()[0] + errors.get_legend_handles_labels()[0]
    latency.legend(handles=handles, loc="upper left")
    latency.set_title(f"Sustained {rate:g} turns/s, open loop: full turn with three tools")
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
    return ""


def main(argv: list[str] | None = None) -> Section:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--rate", type=float, default=30.0, help="turns started per second")
    parser.add_argument("--users", type=int, default=1000, help="user ids rotated over")
    parser.add_argument("--timeout", type=float, default=10.0, help="each turn's deadline")
    parser.add_argument("--out-dir", type=Path, default=HERE)
    args = parser.parse_args(argv)
    info = machine()
    with (
        FakeLlmProcess() as llm,
        ServiceProcess("tools", {"LOG_LEVEL": "WARNING"}) as tools,
        ServiceProcess("emotion", {"LOG_LEVEL": "WARNING"}) as emotion,
    ):
        tools.start(wait_for=None)
        emotion.start(wait_for=None)
        tools.wait_serving("chatagent.v1.ToolService", timeout=60)
        emotion.wait_serving("chatagent.v1.EmotionService", timeout=60)
        env = orchestrator_env(
            OPENAI_BASE_URL=llm.base_url, TOOLS_ADDR=tools.address,
            EMOTION_ADDR=emotion.address, SPEECH_ADDR="127.0.0.1:1",
        )  # fmt: skip
        with ServiceProcess("orchestrator", env) as chat:
            chat.start(wait_for="chatagent.v1.ChatService", timeout=60)
            samples = asyncio.run(
                open_loop(chat.address, args.rate, args.seconds, args.users, args.timeout)
            )
    rows = windows(samples)
    png = args.out_dir / "sustained.png"
    missing = plot(rows, args.rate, png)
    lines = [
        f"Measured {machine_line(info)}. {args.rate:g} turns/s for {args.seconds:g} s, open "
        f"loop, {args.users:,} users rotated, {args.timeout:g} s deadline per turn.",
        "",
        "| window (s) | turns | p50 (ms) | p99 (ms) | errors |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['start_s']:.0f}–{min(row['start_s'] + WINDOW, args.seconds):.0f} "
            f"| {row['turns']} "
            f"| {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['errors']} |"
        )
    latencies = [latency for _, latency, ok in samples if ok]
    errors = sum(not ok for _, _, ok in samples)
    lines += [
        "",
        f"Whole run: {len(samples):,} turns, p50 {p50(latencies) * 1e3:.1f} ms, p99 "
        f"{percentile(latencies, 0.99) * 1e3:.1f} ms, {errors} errors.",
        "",
        missing or f"![latency and errors over time]({png.name})",
    ]
    section = Section(
        "Sustained load: latency and errors over time",
        "\n".join(lines),
        {
            "machine": info,
            "rate": args.rate,
            "seconds": args.seconds,
            "windows": rows,
            "turns": len(samples),
            "errors": errors,
        },
        [] if missing else [str(png)],
    )
    print(section.markdown)
    return section


if __name__ == "__main__":
    main()
