"""Emotion service timings.

Latency of one analysis of a 50- and a 10,000-character text per language (goal for 10,000:
well under 100 ms): in-process (the analysers alone, on one thread), and over real gRPC on
loopback against a real `python -m services.emotion` process, one call at a time and 16 at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc.aio

from bench.tools_bench import row
from chatagent.v1 import emotion_pb2, emotion_pb2_grpc
from services.common.language import warm_up
from services.emotion import text
from services.emotion.analysis import analyze
from services.emotion.analyzers import ANALYZER_SETS, load_shared
from services.emotion.config import EmotionSettings
from tests.support.process import ServiceProcess

SENTENCES = {
    "ja": "今日は本当に嬉しいけど、明日の会議のことを考えると少し不安です。でも頑張るよ！",
    "en": "I'm so happy today, but a bit worried about tomorrow's exam. ",
    "ko": "오늘 정말 기뻐요! 그런데 내일 시험이 걱정돼요. 그래도 힘낼게요! ",
}
MAX_CHARS = EmotionSettings.model_fields["emotion_max_chars"].default


def sized(language: str, chars: int) -> str:
    sentence = SENTENCES[language]
    return (sentence * (chars // len(sentence) + 1))[:chars]


def timed(call: Callable[[], object], repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


async def concurrent(address: str, body: str, calls: int, concurrency: int) -> list[float]:
    samples: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = emotion_pb2_grpc.EmotionServiceStub(channel)
        request = emotion_pb2.AnalyzeRequest(text=body)
        await stub.Analyze(request, timeout=5)

        async def worker() -> None:
            for _ in range(calls // concurrency):
                started = time.perf_counter()
                await stub.Analyze(request, timeout=5)
                samples.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples


def main() -> None:
    header = f"| {'measurement':<34} |  p50 (ms) |  p99 (ms) |  max (ms) | {'goal':<14} |"
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
    load_shared()
    warm_up()
    text.warm_up()
    analyzers = ANALYZER_SETS["lexicon"]()
    for chars, repeat, goal in ((50, 500, "-"), (10_000, 100, "< 100 ms")):
        for language in SENTENCES:
            body = sized(language, chars)
            samples = timed(lambda b=body: analyze(b, "", analyzers, max_chars=MAX_CHARS), repeat)
            row(f"in-process {language}, {chars:,} chars", samples, goal)
    with ServiceProcess("emotion", {"LOG_LEVEL": "WARNING"}) as emotion:
        emotion.start(wait_for="chatagent.v1.EmotionService")
        assert emotion.channel is not None
        stub = emotion_pb2_grpc.EmotionServiceStub(emotion.channel)
        for chars, repeat, goal in ((50, 500, "-"), (10_000, 100, "< 100 ms")):
            for language in SENTENCES:
                request = emotion_pb2.AnalyzeRequest(text=sized(language, chars))
                call = lambda r=request: stub.Analyze(r, timeout=5)  # noqa: E731
                timed(call, 20)  # warm up the channel and the workers
                row(f"gRPC {language}, {chars:,} chars", timed(call, repeat), goal)
        for chars in (50, 10_000):
            started = time.perf_counter()
            samples = asyncio.run(concurrent(emotion.address, sized("ja", chars), 800, 16))
            rate = len(samples) / (time.perf_counter() - started)
            row(f"gRPC ja {chars:,} chars ×16, {rate:,.0f}/s", samples, "-")


if __name__ == "__main__":
    main()
