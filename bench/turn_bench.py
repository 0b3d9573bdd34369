"""Orchestrator timings, against the fake LLM and a ToolService double, over real gRPC.

* Tool phase of a 3-tool turn (delays 120, 350 and 80 ms) against the sum and the max of the
  delays: the time from the first tool_call_started to the last tool_call_finished event of
  StreamChat. Target: max + 20 ms.
* Time to the first audio against time to the last for a five-sentence Japanese reply through
  StreamChat, a streaming fake LLM writing it over about two seconds and the real SpeechService
  speaking it sentence by sentence. Target: first <= 25% of last.
* Turn latency p50/p99 and turns/s at concurrency 1, 16 and 64 with a zero-latency LLM (one
  completion, no tools) — the orchestrator's own overhead plus the fake LLM's HTTP round trip.
  Targets: overhead p50 <= 5 ms at concurrency 1 (turn p50 minus the p50 of the same
  completion made straight from the openai client), >= 300 turns/s.

Everything shares the machine's two cores: the load generator, the fake LLM (a Python HTTP
server) and the orchestrator, so the throughput numbers are a floor for the orchestrator alone.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import grpc.aio

from bench.common import METADATA, TOKEN, orchestrator_env
from chatagent.v1 import chat_pb2, chat_pb2_grpc
from services.orchestrator.llm import LlmRequest, OpenAIChat
from services.orchestrator.model import UserMessage
from tests.support.doubles import emotion_double, tools_double
from tests.support.fake_openai import Reply, fake_openai
from tests.support.process import ServiceProcess

DELAYS = {"GetTime": 0.120, "GetWeather": 0.350, "Calculate": 0.080}
LOAD_SECONDS = 5.0


def _tool_turn() -> Reply:
    calls = [
        {"id": "c1", "name": "get_time", "arguments": '{"place":"東京"}'},
        {"id": "c2", "name": "get_weather", "arguments": '{"place":"大阪"}'},
        {"id": "c3", "name": "calculate", "arguments": '{"expression":"6*7"}'},
    ]
    return Reply(tool_calls=calls)


async def tool_phase(address: str, samples: int) -> list[float]:
    phases = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        for i in range(samples):
            request = chat_pb2.StreamChatRequest(
                user_id=f"phase-{i}", message="ツール", language="ja"
            )
            first = last = 0.0
            async for event in stub.StreamChat(request, metadata=METADATA, timeout=10):
                kind = event.WhichOneof("event")
                if kind == "tool_call_started" and not first:
                    first = time.perf_counter()
                elif kind == "tool_call_finished":
                    last = time.perf_counter()
            phases.append(last - first)
    return phases


FIVE = (
    "こんにちは、ご主人さま。今日の東京は晴れで、気温は十二度だにゃん。"
    "午後から少し風が強くなるみたい。お散歩に行くなら、上着を忘れないでね。"
    "楽しい一日になるといいにゃん。"
)


async def first_audio(address: str, samples: int) -> list[tuple[float, float, float]]:
    """(first text, first audio, last audio) after the request, per streamed turn."""
    timings = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        for i in range(samples):
            request = chat_pb2.StreamChatRequest(
                user_id=f"voice-{i}", message="今日はどう？", language="ja", include_audio=True
            )
            started = time.perf_counter()
            text = first = last = 0.0
            async for event in stub.StreamChat(request, metadata=METADATA, timeout=30):
                kind = event.WhichOneof("event")
                now = time.perf_counter() - started
                if kind == "text_delta" and not text:
                    text = now
                elif kind == "audio_chunk":
                    first = first or now
                    last = now
            timings.append((text, first, last))
    return timings


async def load(address: str, concurrency: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        stop_at = time.perf_counter() + LOAD_SECONDS

        async def worker(worker_id: int) -> None:
            n = 0
            while time.perf_counter() < stop_at:
                request = chat_pb2.ChatRequest(
                    user_id=f"load-{concurrency}-{worker_id}-{n % 50}",
                    message="こんにちは",
                    language="ja",
                )
                started = time.perf_counter()
                await stub.Chat(request, metadata=METADATA, timeout=10)
                latencies.append(time.perf_counter() - started)
                n += 1

        for _ in range(20):  # warm up the connection, the model, the caches
            await stub.Chat(
                chat_pb2.ChatRequest(user_id="warm", message="こんにちは", language="ja"),
                metadata=METADATA,
                timeout=10,
            )
        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    return latencies, len(latencies) / elapsed


async def llm_round_trip(base_url: str, samples: int = 300) -> float:
    """p50 of one completion straight from the openai client to the fake LLM: the part of a
    turn's latency that is the fake LLM's, not the orchestrator's."""
    llm = OpenAIChat(api_key="sk-bench", base_url=base_url, model="fake-model")
    latencies = []
    for _ in range(samples):
        started = time.perf_counter()
        await llm.complete(
            LlmRequest((UserMessage("こんにちは"),), (), max_tokens=256), timeout_seconds=5
        )
        latencies.append(time.perf_counter() - started)
    await llm.aclose()
    return statistics.median(latencies[samples // 5 :])


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:8.2f}"


def main() -> None:
    with fake_openai() as llm, tools_double() as tools, emotion_double() as emotion:
        tools.delays = dict(DELAYS)
        env = orchestrator_env(
            TOOLS_ADDR=tools.address,
            EMOTION_ADDR=emotion.address,
            SPEECH_ADDR="127.0.0.1:1",
            OPENAI_BASE_URL=llm.base_url,
        )
        with ServiceProcess("orchestrator", env) as chat:
            chat.start(wait_for="chatagent.v1.ChatService")
            samples = 10
            llm.responder = lambda body: (
                _tool_turn() if body["messages"][-1]["role"] == "user" else Reply("はいにゃん")
            )
            phases = asyncio.run(tool_phase(chat.address, samples))
            total, longest = sum(DELAYS.values()), max(DELAYS.values())
            print("| 3-tool turn, tool phase   | p50 (ms) | max (ms) | sum of delays | max delay |")
            print("|---------------------------|----------|----------|---------------|-----------|")
            print(
                f"| {samples} turns                  | {_ms(statistics.median(phases))} "
                f"| {_ms(max(phases))} | {_ms(total)}      | {_ms(longest)} |"
            )
            print()
            tools.delays = {}
            llm.responder = lambda body: Reply("はいにゃん")
            llm_p50 = asyncio.run(llm_round_trip(llm.base_url))
            print("| concurrency | turns/s | p50 (ms) | p99 (ms) | overhead p50 (ms) |")
            print("|-------------|---------|----------|----------|-------------------|")
            for concurrency in (1, 16, 64):
                latencies, rate = asyncio.run(load(chat.address, concurrency))
                latencies.sort()
                p50 = statistics.median(latencies)
                p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
                overhead = _ms(p50 - llm_p50) if concurrency == 1 else "       -"
                print(
                    f"| {concurrency:11d} | {rate:7.0f} | {_ms(p50)} | {_ms(p99)} "
                    f"| {overhead}          |"
                )
            print(f"(overhead = turn p50 minus the LLM round trip alone, {_ms(llm_p50)} ms)")
    print()
    speaking()


def speaking() -> None:
    """StreamChat with speech: a streaming fake LLM and a real SpeechService process."""
    with fake_openai() as llm, tools_double() as tools, emotion_double() as emotion:
        speech = ServiceProcess("tts", {"LOG_LEVEL": "WARNING"})
        speech.start(wait_for="chatagent.v1.SpeechService", timeout=60)
        env = {
            "TOOLS_ADDR": tools.address,
            "EMOTION_ADDR": emotion.address,
            "SPEECH_ADDR": speech.address,
            "OPENAI_BASE_URL": llm.base_url,
            "OPENAI_API_KEY": "sk-bench",
            "CHAT_API_TOKENS": f"bench:{TOKEN}",
            "LOG_LEVEL": "WARNING",
            "LLM_MODEL": "fake-model",
            "LLM_PRICES": '{"fake-model": [0.15, 0.6]}',
        }
        try:
            with ServiceProcess("orchestrator", env) as chat:
                chat.start(wait_for="chatagent.v1.ChatService")
                # A token (here a character) every 25 ms: about two seconds of writing, as a
                # hosted LLM writes a Japanese reply this long.
                llm.default = Reply(
                    content=FIVE, stream_piece_chars=1, stream_piece_delay_seconds=0.025
                )
                samples = 5
                timings = asyncio.run(first_audio(chat.address, samples))
        finally:
            speech.stop()
    text = statistics.median(t for t, _, _ in timings)
    first = statistics.median(f for _, f, _ in timings)
    last = statistics.median(last for _, _, last in timings)
    print("| StreamChat, 5-sentence reply | first text (ms) | first audio (ms) | last audio (ms) "
          "| first / last |")  # fmt: skip
    print("|---|---|---|---|---|")
    print(
        f"| {samples} turns, p50 | {_ms(text)} | {_ms(first)} | {_ms(last)} "
        f"| {first / last:.0%} (target <= 25%) |"
    )


if __name__ == "__main__":
    main()
