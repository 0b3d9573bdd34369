"""SpeechService with its embedded voices, over real gRPC to an in-process server: what a caller
hears (one playable WAV a sentence, in order, nothing cut), what it is refused and why, and what
a cancel, a busy service or a deadline do. The voices are loaded once for the module; each test
has a server of its own around them."""

from __future__ import annotations

import asyncio
import io
import time
import wave
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import numpy as np
import pytest
from prometheus_client import REGISTRY

from chatagent.v1 import speech_pb2, speech_pb2_grpc
from services.common.server import ServiceHost
from services.tts.config import SpeechSettings
from services.tts.embedded import EmbeddedVoices
from services.tts.main import SERVICE_NAME, add_speech, speaker_for
from services.tts.speech import Speaker
from services.tts.workers import Worker, start_workers
from tests.support.loop import StallMeter, wait_until

SHORT = "こんにちは。今日はいい天気ですね！散歩に行こうにゃん。"
NOVEL = [
    "吾輩は猫である。",
    "名前はまだ無い。",
    "どこで生れたかとんと見当がつかぬ。",
    "何でも薄暗いじめじめした所でニャーニャー泣いていた事だけは記憶している。",
    "吾輩はここで始めて人間というものを見た。",
]


def novel(chars: int) -> str:
    text = ""
    while len(text) < chars:
        text += NOVEL[len(text) % len(NOVEL)]
    return text[:chars]


@pytest.fixture(scope="module")
def loaded() -> Iterator[tuple[EmbeddedVoices, list[Worker]]]:
    """The embedded voices, loaded on two workers once for every test here."""
    voices = EmbeddedVoices(espeak_command="espeak-ng", piper_threads=2)
    workers = start_workers(2)
    voices.load(workers)
    yield voices, workers
    for worker in workers:
        worker.close()


@dataclass
class Served:
    stub: speech_pb2_grpc.SpeechServiceStub
    speaker: Speaker


@asynccontextmanager
async def serving(
    loaded: tuple[EmbeddedVoices, list[Worker]], **overrides: Any
) -> AsyncIterator[Served]:
    settings = SpeechSettings(
        bind_address="127.0.0.1", port=0, metrics_port=0, shutdown_grace_seconds=1, **overrides
    )
    voices, workers = loaded
    speaker = speaker_for(settings, voices, workers[: settings.tts_max_concurrency])
    host = ServiceHost(settings, [SERVICE_NAME])
    add_speech(host, settings, speaker)
    port = await host.start()
    await host.wait_ready()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Served(speech_pb2_grpc.SpeechServiceStub(channel), speaker)
    finally:
        await channel.close()
        await host.stop()


@pytest.fixture
async def speech(loaded: tuple[EmbeddedVoices, list[Worker]]) -> AsyncIterator[Served]:
    async with serving(loaded) as served:
        yield served


async def synthesize(
    stub: speech_pb2_grpc.SpeechServiceStub, text: str, deadline: float = 60, **fields: str
) -> list[speech_pb2.SynthesizeResponse]:
    call = stub.Synthesize(speech_pb2.SynthesizeRequest(text=text, **fields), timeout=deadline)
    return [response async for response in call]


async def collect(
    call: AsyncIterator[speech_pb2.SynthesizeResponse], into: list[speech_pb2.SynthesizeResponse]
) -> None:
    async for response in call:
        into.append(response)


async def refusal(
    stub: speech_pb2_grpc.SpeechServiceStub, text: str, **fields: str
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await synthesize(stub, text, **fields)
    return info.value


def playable(response: speech_pb2.SynthesizeResponse) -> np.ndarray:
    """The samples of a response's WAV, checked against what the response says about it."""
    with wave.open(io.BytesIO(response.audio_wav), "rb") as file:
        assert (file.getnchannels(), file.getsampwidth()) == (1, 2)
        assert file.getframerate() == response.sample_rate_hz
        frames = file.getnframes()
        samples = np.frombuffer(file.readframes(frames), dtype="<i2")
    assert len(samples) == frames > 0
    said = response.duration.ToNanoseconds() / 1e9
    assert abs(frames / response.sample_rate_hz - said) < 1e-3
    assert response.characters == len(response.text)
    return samples


def loud(samples: np.ndarray) -> bool:
    """Speech, not silence: a clear RMS level."""
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) > 300


def joined_duration(responses: list[speech_pb2.SynthesizeResponse]) -> float:
    """Plays the responses one after another as one WAV file; its length in seconds."""
    out = io.BytesIO()
    with wave.open(out, "wb") as joined:
        for index, response in enumerate(responses):
            with wave.open(io.BytesIO(response.audio_wav), "rb") as piece:
                if index == 0:
                    joined.setparams(piece.getparams())
                assert piece.getparams()[:3] == joined.getparams()[:3]
                joined.writeframes(piece.readframes(piece.getnframes()))
    with wave.open(io.BytesIO(out.getvalue()), "rb") as whole:
        return whole.getnframes() / whole.getframerate()


def sentences_synthesized(engine: str) -> float:
    value = REGISTRY.get_sample_value("chatagent_tts_sentence_seconds_count", {"engine": engine})
    return value or 0.0


async def test_a_japanese_text_is_spoken_sentence_by_sentence(speech: Served) -> None:
    responses = await synthesize(speech.stub, SHORT)
    assert [r.text for r in responses] == [
        "こんにちは。",
        "今日はいい天気ですね！",
        "散歩に行こうにゃん。",
    ]
    assert [r.sequence for r in responses] == [0, 1, 2]
    for response in responses:
        assert response.sample_rate_hz == 48_000
        assert loud(playable(response))
    # A longer sentence takes longer to say.
    assert responses[1].duration.ToNanoseconds() > responses[0].duration.ToNanoseconds()


@pytest.mark.timeout(300)
async def test_a_1200_character_text_is_spoken_whole_as_it_is_synthesized(speech: Served) -> None:
    """Nothing is cut (the old service stopped at 40 characters): every sentence arrives, in
    order, the first long before the last, and together they play as one WAV. (Thirty times the
    old cut; TTS_MAX_CHARS, the limit, is test_text_over_the_limit_is_refused_before_any_work.)"""
    text = novel(1200)
    started = time.monotonic()
    arrivals: list[float] = []
    responses: list[speech_pb2.SynthesizeResponse] = []
    async for response in speech.stub.Synthesize(
        speech_pb2.SynthesizeRequest(text=text), timeout=240
    ):
        arrivals.append(time.monotonic() - started)
        responses.append(response)
    assert [r.sequence for r in responses] == list(range(len(responses)))
    assert "".join(r.text for r in responses) == text
    assert len(responses) > 35
    assert all(len(r.text) <= 200 for r in responses)
    for response in responses[:3] + responses[-3:]:
        assert loud(playable(response))
    short = joined_duration(await synthesize(speech.stub, SHORT))
    long = joined_duration(responses)
    # 1,200 characters say about 45 times what the 27 of SHORT say.
    assert long > 20 * short
    assert arrivals[0] < arrivals[-1] / 10


async def test_an_emoji_bomb_says_only_the_words(speech: Served) -> None:
    responses = await synthesize(speech.stub, "🔥💥🎯" * 100 + "にゃん")
    assert [r.text for r in responses] == ["にゃん"]
    assert loud(playable(responses[0]))
    assert responses[0].characters == 3


@pytest.mark.parametrize("text", ["😀", "🔥💥🎯" * 100, "(^_^) ｗｗｗ", "\u200b\u200d", "！？…"])
async def test_text_with_nothing_to_say_is_invalid_argument(speech: Served, text: str) -> None:
    error = await refusal(speech.stub, text)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "nothing to speak" in (error.details() or "")


async def test_english_and_korean_are_spoken_by_their_voices(speech: Served) -> None:
    english = await synthesize(speech.stub, "Hello! Mr. Smith says the weather is 3.5 degrees.")
    assert [r.text for r in english] == ["Hello!", "Mr. Smith says the weather is 3.5 degrees."]
    korean = await synthesize(speech.stub, "안녕하세요. 오늘 날씨가 좋네요!")
    assert [r.text for r in korean] == ["안녕하세요.", "오늘 날씨가 좋네요!"]
    for response in english + korean:
        assert response.sample_rate_hz == 22_050
        assert loud(playable(response))


async def test_the_language_tag_and_the_voice_choose_who_speaks(speech: Served) -> None:
    # A tag wins over the script; a named voice over the language's default.
    tagged = await synthesize(speech.stub, "Tokyo", language="ja-JP")
    assert tagged[0].sample_rate_hz == 48_000
    espeak = await synthesize(speech.stub, "Hello there.", voice="espeak-en")
    piper = await synthesize(speech.stub, "Hello there.")
    assert espeak[0].sample_rate_hz == piper[0].sample_rate_hz == 22_050
    assert espeak[0].audio_wav != piper[0].audio_wav
    error = await refusal(speech.stub, "Hello.", voice="galadriel")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "mei" in (error.details() or "")


async def test_text_over_the_limit_is_refused_before_any_work(speech: Served) -> None:
    error = await refusal(speech.stub, "あ" * 5001)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "5,001 characters" in (error.details() or "")


async def test_a_cancelled_stream_stops_and_frees_its_worker_for_the_next_call(
    loaded: tuple[EmbeddedVoices, list[Worker]],
) -> None:
    async with serving(loaded, tts_max_concurrency=1, tts_max_queue=0) as speech:
        call = speech.stub.Synthesize(speech_pb2.SynthesizeRequest(text=novel(600)), timeout=60)
        first = await call.read()
        assert isinstance(first, speech_pb2.SynthesizeResponse)
        call.cancel()
        after_cancel = sentences_synthesized("openjtalk")
        await wait_until(lambda: speech.speaker.pool.admitted == 0, within=5, message="call ended")
        # The next caller is served, not refused, and at once (the worker is not still busy
        # with the rest of the cancelled text).
        started = time.monotonic()
        responses = await synthesize(speech.stub, "次のお客さんにゃん。")
        assert [r.text for r in responses] == ["次のお客さんにゃん。"]
        assert time.monotonic() - started < 3
        # At most the sentence in flight at the cancel was finished, then the one just asked.
        assert sentences_synthesized("openjtalk") - after_cancel <= 2


async def test_over_the_limit_calls_get_resource_exhausted_with_a_retry_delay(
    loaded: tuple[EmbeddedVoices, list[Worker]],
) -> None:
    async with serving(loaded, tts_max_concurrency=1, tts_max_queue=1) as speech:
        first = speech.stub.Synthesize(speech_pb2.SynthesizeRequest(text=novel(600)))
        second = speech.stub.Synthesize(speech_pb2.SynthesizeRequest(text=novel(600)))
        await first.read()
        await second.read()
        assert speech.speaker.pool.admitted == 2

        error = await refusal(speech.stub, "入れてにゃん。")
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "busy" in (error.details() or "")
        assert ("retry-after-ms", "500") in tuple(error.trailing_metadata() or ())

        # A place is free again as soon as a call ends.
        first.cancel()
        await wait_until(lambda: speech.speaker.pool.admitted == 1, within=5, message="freed")
        assert [r.text for r in await synthesize(speech.stub, "入れてにゃん。")] == [
            "入れてにゃん。"
        ]
        second.cancel()


async def test_a_short_call_is_not_held_behind_a_long_text(
    loaded: tuple[EmbeddedVoices, list[Worker]],
) -> None:
    """With one worker, a long text being spoken (or a client that stopped reading its stream)
    delays a short call by a sentence, not by the text."""
    async with serving(loaded, tts_max_concurrency=1, tts_max_queue=2) as speech:
        reading = speech.stub.Synthesize(speech_pb2.SynthesizeRequest(text=novel(3000)))
        await reading.read()
        not_reading = speech.stub.Synthesize(speech_pb2.SynthesizeRequest(text=novel(3000)))
        await wait_until(lambda: speech.speaker.pool.admitted == 2, within=5, message="both in")
        started = time.monotonic()
        responses = await synthesize(speech.stub, "割り込みにゃん。")
        assert [r.text for r in responses] == ["割り込みにゃん。"]
        assert time.monotonic() - started < 3
        # The long text goes on meanwhile.
        assert isinstance(await reading.read(), speech_pb2.SynthesizeResponse)
        reading.cancel()
        not_reading.cancel()


async def test_the_callers_deadline_ends_a_long_text_and_frees_the_worker(speech: Served) -> None:
    started = time.monotonic()
    call = speech.stub.Synthesize(speech_pb2.SynthesizeRequest(text=novel(3000)), timeout=1.0)
    received: list[speech_pb2.SynthesizeResponse] = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(call, received)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # What was synthesized in time was sent; the rest was not waited for.
    assert received
    assert [r.sequence for r in received] == list(range(len(received)))
    assert time.monotonic() - started < 3
    await wait_until(lambda: speech.speaker.pool.busy == 0, within=5, message="worker free")


async def test_the_event_loop_keeps_running_while_texts_are_spoken(speech: Served) -> None:
    async with StallMeter() as meter:
        await asyncio.gather(
            synthesize(speech.stub, novel(150)),
            synthesize(speech.stub, "Hello there. " * 10),
            synthesize(speech.stub, "안녕하세요. " * 10),
            # 5,000 characters to clean and split: prepared off the loop.
            refusal(speech.stub, "🔥" * 5000),
            synthesize(speech.stub, "あ。" * 2500, deadline=0.5),
            return_exceptions=True,
        )
    # Health checks and other calls are served meanwhile: a Kubernetes probe waits 1 s. (Alone
    # here the longest gap is under 0.1 s; the bound leaves room for a machine shared with
    # other work.)
    assert meter.max_gap < 0.75
