"""SpeechService timings.

* A five-sentence Japanese reply in one Synthesize call to a real tts process over gRPC: time to
  the first chunk against time to the last. Target: first <= 25% of last.
* The same reply as five one-sentence calls made together, as the orchestrator sends sentences
  while its LLM still writes: the first and the last answer.
* Real-time factor of each embedded voice (synthesis time / audio time; below 1 is faster than
  real time), one sentence at a time on one worker, in-process.

Everything shares the machine's two cores with the load generator.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import grpc.aio

from chatagent.v1 import speech_pb2, speech_pb2_grpc
from services.common.language import Language
from services.tts.embedded import EmbeddedVoices
from services.tts.workers import start_workers
from tests.support.process import ServiceProcess

REPLY = (
    "こんにちは、ご主人さま。今日の東京は晴れで、気温は十二度だにゃん。"
    "午後から少し風が強くなるみたい。お散歩に行くなら、上着を忘れないでね。"
    "楽しい一日になるといいにゃん。"
)
SENTENCES = [s + "。" for s in REPLY.split("。") if s]
SAMPLES = 10
VOICE_SENTENCES: dict[str, tuple[Language, list[str]]] = {
    "mei": ("ja", SENTENCES),
    "joe": (
        "en",
        [
            "Hello there, it is sunny in Tokyo today.",
            "The temperature is twelve degrees, with a light wind from the north.",
            "Take a jacket if you go for a walk this afternoon.",
        ],
    ),
    "espeak-en": ("en", ["Hello there, it is sunny in Tokyo today.", "Take a jacket."]),
    "espeak-ko": (
        "ko",
        ["안녕하세요, 오늘 서울은 맑아요.", "기온은 십이 도이고 바람이 조금 불어요."],
    ),
}


def row(cells: list[str]) -> None:
    print("| " + " | ".join(cells) + " |")


def header(cells: list[str]) -> None:
    row(cells)
    print("|" + "|".join("-" * (len(cell) + 2) for cell in cells) + "|")


async def one_call(stub: speech_pb2_grpc.SpeechServiceStub) -> tuple[float, float, int]:
    started = time.perf_counter()
    first = last = 0.0
    chunks = 0
    async for _ in stub.Synthesize(speech_pb2.SynthesizeRequest(text=REPLY), timeout=30):
        last = time.perf_counter() - started
        first = first or last
        chunks += 1
    return first, last, chunks


async def per_sentence_calls(stub: speech_pb2_grpc.SpeechServiceStub) -> tuple[float, float]:
    started = time.perf_counter()

    async def say(sentence: str) -> float:
        async for _ in stub.Synthesize(speech_pb2.SynthesizeRequest(text=sentence), timeout=30):
            pass
        return time.perf_counter() - started

    done = await asyncio.gather(*(say(sentence) for sentence in SENTENCES))
    return done[0], max(done)


async def over_grpc(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = speech_pb2_grpc.SpeechServiceStub(channel)
        await one_call(stub)  # warm up the channel and the workers
        calls = [await one_call(stub) for _ in range(SAMPLES)]
        split = [await per_sentence_calls(stub) for _ in range(SAMPLES)]
        short = []
        for _ in range(SAMPLES * 3):
            started = time.perf_counter()
            async for _ in stub.Synthesize(speech_pb2.SynthesizeRequest(text="はい。"), timeout=10):
                pass
            short.append(time.perf_counter() - started)
    firsts = [first for first, _, _ in calls]
    lasts = [last for _, last, _ in calls]
    ratios = [first / last for first, last, _ in calls]
    header(["measurement", "p50", "max", "target"])
    row([f"one call, {calls[0][2]} sentences: first chunk", ms(firsts), ms_max(firsts), "-"])
    row(["one call: last chunk", ms(lasts), ms_max(lasts), "-"])
    row(["one call: first / last", pct(ratios), pct(max(ratios)), "<= 25%"])
    row(
        [
            "five one-sentence calls at once: first",
            ms([s[0] for s in split]),
            ms_max([s[0] for s in split]),
            "-",
        ]
    )
    row(
        [
            "five one-sentence calls at once: last",
            ms([s[1] for s in split]),
            ms_max([s[1] for s in split]),
            "-",
        ]
    )
    row(["one short call (「はい。」)", ms(short), ms_max(short), "-"])


def real_time_factors() -> None:
    voices = EmbeddedVoices(espeak_command="espeak-ng", piper_threads=2)
    workers = start_workers(1)
    voices.load(workers)

    async def measure(name: str, language: Language, sentences: list[str]) -> tuple[float, float]:
        voice = voices.choose(name, language)
        spent = audio = 0.0
        for _ in range(3):
            for sentence in sentences:
                started = time.perf_counter()
                result = await voice.synthesize(sentence, workers[0])
                spent += time.perf_counter() - started
                audio += result.duration_seconds
        return spent / audio, spent / (3 * len(sentences))

    print()
    header(["voice", "real-time factor", "per sentence", "audio"])
    for name, (language, sentences) in VOICE_SENTENCES.items():
        factor, per_sentence = asyncio.run(measure(name, language, sentences))
        rate = "48 kHz" if name == "mei" else "22.05 kHz"
        row([name, f"{factor:.3f}", f"{per_sentence * 1e3:.0f} ms", rate])
    for worker in workers:
        worker.close()


def ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1e3:.0f} ms"


def ms_max(samples: list[float]) -> str:
    return f"{max(samples) * 1e3:.0f} ms"


def pct(value: float | list[float]) -> str:
    number = statistics.median(value) if isinstance(value, list) else value
    return f"{number * 100:.0f}%"


def main() -> None:
    with ServiceProcess("tts", {"LOG_LEVEL": "WARNING"}) as tts:
        tts.start(wait_for="chatagent.v1.SpeechService", timeout=60)
        asyncio.run(over_grpc(tts.address))
    real_time_factors()


if __name__ == "__main__":
    main()
