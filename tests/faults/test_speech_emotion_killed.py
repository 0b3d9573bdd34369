"""SpeechService and EmotionService SIGKILLed while StreamChat streams with audio, under a small
concurrent load over the whole suite: every stream still ends with its final summary; what
follows is text only (`degraded: ["speech"]`) with a neutral emotion (`degraded: ["emotion"]`),
and the reply is the whole text the LLM wrote."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from chatagent.v1 import chat_pb2
from tests.faults.harness import (
    AUTH,
    Outcome,
    assert_history_is_the_answered_turns,
    orchestrator_env,
    wait_until,
)
from tests.support.fake_openai import FakeOpenAI, Reply, fake_openai
from tests.support.suite import WholeSuite, whole_suite

TEXT = "一つ目の文だにゃん。二つ目の文だにゃん。三つ目の文だにゃん。四つ目の文だにゃん。"
USERS = [f"se-{n}" for n in range(3)]
STREAMS_PER_USER = 3


@pytest.fixture
def suite() -> Iterator[tuple[WholeSuite, FakeOpenAI]]:
    with fake_openai() as llm:
        llm.default = Reply(
            content=TEXT, prompt_tokens=100, completion_tokens=20,
            stream_piece_chars=4, stream_piece_delay_seconds=0.04,
        )  # fmt: skip
        env = orchestrator_env(llm=llm, tools="", emotion="", speech="")
        for wiring in ("TOOLS_ADDR", "EMOTION_ADDR", "SPEECH_ADDR"):
            del env[wiring]
        with whole_suite(per_service={"orchestrator": env}) as running:
            yield running, llm


class Stream:
    """One StreamChat with audio, its events kept."""

    def __init__(self, suite: WholeSuite, user: str, message: str) -> None:
        self.outcome = Outcome(user, message, 0.0)
        self.audio = 0
        self.text = ""
        self.first_audio = threading.Event()
        self._suite = suite

    def run(self) -> Stream:
        request = chat_pb2.StreamChatRequest(
            user_id=self.outcome.user, message=self.outcome.message, include_audio=True
        )
        started = time.monotonic()
        try:
            for event in self._suite.chat.StreamChat(request, metadata=AUTH, timeout=30):
                kind = event.WhichOneof("event")
                if kind == "audio_chunk":
                    self.audio += 1
                    self.first_audio.set()
                elif kind == "text_delta":
                    self.text += event.text_delta
                elif kind == "final":
                    self.outcome.reply = event.final
        except grpc.RpcError as error:
            self.outcome.code, self.outcome.details = error.code(), error.details()
        self.outcome.seconds = time.monotonic() - started
        return self


def test_speech_and_emotion_killed_mid_stream(suite: tuple[WholeSuite, FakeOpenAI]) -> None:
    running, llm = suite
    healthy = Stream(running, "se-healthy", "今日はとても嬉しい！").run()
    assert healthy.outcome.reply is not None, healthy.outcome
    assert healthy.audio >= 1
    assert list(healthy.outcome.reply.degraded) == []
    assert healthy.outcome.reply.emotion.dominant != "neutral"

    killed = threading.Event()
    streams: list[Stream] = []
    lock = threading.Lock()

    def client(user: str) -> None:
        for index in range(STREAMS_PER_USER):
            stream = Stream(running, user, f"load-{user}-{index} 今日はとても嬉しい！")
            with lock:
                streams.append(stream)
            stream.run()

    def killer() -> None:
        wait_until(lambda: any(s.first_audio.is_set() for s in streams), 30, "first audio")
        for name in ("tts", "emotion"):
            process = running.processes[name].process
            assert process is not None
            process.kill()
            process.wait()
        killed.set()

    with ThreadPoolExecutor(max_workers=len(USERS) + 1) as pool:
        futures = [pool.submit(client, user) for user in USERS]
        kill = pool.submit(killer)
        for future in [*futures, kill]:
            future.result(timeout=90)
    assert killed.is_set()

    for stream in streams:
        final = stream.outcome.reply
        assert final is not None, stream.outcome  # every stream ends with its summary
        assert final.reply == stream.text == TEXT, (final.reply, stream.text)
        assert set(final.degraded) <= {"speech", "emotion"}, final.degraded
        if "emotion" in final.degraded:
            assert final.emotion.dominant == "neutral"
            assert final.emotion.scores["neutral"] == pytest.approx(1.0)
    # The streams that began after the kill: text only, neutral.
    last = [
        s
        for s in streams
        if s.outcome.message.endswith(f"-{STREAMS_PER_USER - 1} 今日はとても嬉しい！")
    ]
    for stream in last:
        final = stream.outcome.reply
        assert final is not None
        assert stream.audio == 0, stream.outcome
        assert sorted(final.degraded) == ["emotion", "speech"], final.degraded
        assert final.emotion.dominant == "neutral"
    # Some stream was cut off mid-speech: it had audio and still says speech fell back.
    assert any(s.audio >= 1 and "speech" in s.outcome.reply.degraded for s in streams), [
        (s.audio, list(s.outcome.reply.degraded)) for s in streams
    ]

    stub = running.chat
    assert_history_is_the_answered_turns(llm, stub, [s.outcome for s in streams], USERS)
