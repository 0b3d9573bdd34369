"""SpeechService with the OpenAI backend (TTS_BACKEND=openai), against a local stand-in for
/v1/audio/speech: what is asked of the provider per sentence, what the caller gets back, and
what a failing, hanging or garbled provider becomes. No network."""

from __future__ import annotations

import io
import json
import struct
import threading
import time
import wave
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import grpc.aio
import numpy as np
import pytest

from chatagent.v1 import speech_pb2, speech_pb2_grpc
from services.common.config import ConfigError, load
from services.common.server import ServiceHost
from services.tts.config import SpeechSettings
from services.tts.main import SERVICE_NAME, add_speech, speaker_for, voices_for
from services.tts.speech import Speaker
from services.tts.workers import start_workers

RATE = 24_000


def streamed_wav(seconds: float) -> bytes:
    """A 16-bit mono tone as OpenAI streams WAV: the RIFF and data sizes left unset."""
    t = np.arange(int(RATE * seconds)) / RATE
    pcm = (np.sin(2 * np.pi * 220 * t) * 8000).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, RATE, RATE * 2, 2, 16)
    return (
        b"RIFF\xff\xff\xff\xffWAVEfmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data\xff\xff\xff\xff"
        + pcm
    )


@dataclass
class FakeSpeechAPI:
    """Answers POST /v1/audio/speech with `status` and `body` (a tone as long as the input
    says, by default) after `delay_seconds`; records every request."""

    base_url: str = ""
    status: int = 200
    body: bytes | None = None
    delay_seconds: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def reset(self) -> None:
        self.status, self.body, self.delay_seconds = 200, None, 0.0
        self.requests.clear()


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeSpeechAPI]:
    fake = FakeSpeechAPI()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            fake.requests.append(
                {"path": self.path, "body": body, "auth": self.headers["authorization"]}
            )
            if fake.delay_seconds:
                fake.release.wait(fake.delay_seconds)
            data = fake.body if fake.body is not None else streamed_wav(0.05 * len(body["input"]))
            if fake.status != 200:
                data = json.dumps(
                    {"error": {"message": "fake failure", "type": "server_error"}}
                ).encode()
            self.send_response(fake.status)
            self.send_header(
                "content-type", "audio/wav" if fake.status == 200 else "application/json"
            )
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    fake.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake
    fake.release.set()
    server.shutdown()
    server.server_close()


@dataclass
class Served:
    stub: speech_pb2_grpc.SpeechServiceStub
    speaker: Speaker


@asynccontextmanager
async def serving(provider: FakeSpeechAPI, **overrides: Any) -> AsyncIterator[Served]:
    provider.reset()
    settings = SpeechSettings(
        bind_address="127.0.0.1",
        port=0,
        metrics_port=0,
        shutdown_grace_seconds=1,
        tts_backend="openai",
        openai_api_key="sk-test",
        openai_base_url=provider.base_url,
        **overrides,
    )
    speaker = speaker_for(
        settings, voices_for(settings), start_workers(settings.tts_max_concurrency)
    )
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
        await speaker.aclose()


async def synthesize(
    stub: speech_pb2_grpc.SpeechServiceStub, text: str, **fields: str
) -> list[speech_pb2.SynthesizeResponse]:
    call = stub.Synthesize(speech_pb2.SynthesizeRequest(text=text, **fields), timeout=20)
    return [response async for response in call]


async def refusal(
    stub: speech_pb2_grpc.SpeechServiceStub, text: str, **fields: str
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await synthesize(stub, text, **fields)
    return info.value


async def test_each_sentence_is_asked_of_the_provider_and_streamed_back(
    provider: FakeSpeechAPI,
) -> None:
    async with serving(provider, tts_openai_model="tts-test", tts_openai_voice="coral") as speech:
        responses = await synthesize(
            speech.stub, "こんにちは🔥。今日は(^^)いい天気ですね！Hello there."
        )
    texts = ["こんにちは。", "今日はいい天気ですね！", "Hello there."]
    assert [r.text for r in responses] == texts
    assert [r.sequence for r in responses] == [0, 1, 2]
    # The provider gets the cleaned sentences, one request each, as WAV, with our key.
    assert [request["body"]["input"] for request in provider.requests] == texts
    assert {request["path"] for request in provider.requests} == {"/v1/audio/speech"}
    assert {request["auth"] for request in provider.requests} == {"Bearer sk-test"}
    for request in provider.requests:
        assert request["body"]["model"] == "tts-test"
        assert request["body"]["voice"] == "coral"
        assert request["body"]["response_format"] == "wav"
    # Its streamed WAVs (sizes unset) come back as self-contained files of the right length.
    for response, text in zip(responses, texts, strict=True):
        assert response.sample_rate_hz == RATE
        assert response.characters == len(text)
        with wave.open(io.BytesIO(response.audio_wav), "rb") as file:
            assert file.getparams()[:3] == (1, 2, RATE)
            assert file.getnframes() == int(RATE * 0.05 * len(text))


async def test_a_named_voice_is_passed_on_and_a_malformed_name_refused(
    provider: FakeSpeechAPI,
) -> None:
    async with serving(provider) as speech:
        await synthesize(speech.stub, "Hi.", voice="nova")
        assert provider.requests[-1]["body"]["voice"] == "nova"
        error = await refusal(speech.stub, "Hi.", voice="../../etc/passwd")
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert len(provider.requests) == 1


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (500, None, "HTTP 500"),
        (429, None, "HTTP 429"),
        (200, b"ID3\x04 this is an mp3", "cannot be used"),
    ],
)
async def test_a_failing_provider_is_unavailable(
    provider: FakeSpeechAPI, status: int, body: bytes | None, message: str
) -> None:
    async with serving(provider) as speech:
        provider.status, provider.body = status, body
        error = await refusal(speech.stub, "こんにちは。")
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert message in (error.details() or "")
        # Not retried: the caller's breaker and fallback decide.
        assert len(provider.requests) == 1


async def test_a_hanging_provider_is_unavailable_within_its_timeout(
    provider: FakeSpeechAPI,
) -> None:
    async with serving(provider, tts_openai_timeout_seconds=0.5) as speech:
        provider.delay_seconds = 10
        started = time.monotonic()
        error = await refusal(speech.stub, "こんにちは。")
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "no answer within 0.5s" in (error.details() or "")
        assert time.monotonic() - started < 3
        provider.release.set()
        provider.release.clear()


def test_the_openai_backend_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTS_BACKEND", "openai")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        load(SpeechSettings)
