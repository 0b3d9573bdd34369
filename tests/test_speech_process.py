"""`python -m services.tts` as a real process: NOT_SERVING until its voices are loaded, then
SERVING; Synthesize and reflection over real gRPC; SIGTERM exits 0; bad settings exit 2 naming
the variable."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import time
import wave

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from chatagent.v1 import speech_pb2, speech_pb2_grpc
from tests.support.process import ROOT, ServiceProcess

SERVICE = "chatagent.v1.SpeechService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def statuses_until_serving(tts: ServiceProcess, within: float) -> list[int]:
    """The health statuses seen until SERVING (a refused connection is skipped)."""
    seen: list[int] = []
    deadline = time.monotonic() + within
    while not seen or seen[-1] != SERVING:
        assert tts.process is not None
        assert tts.process.poll() is None, tts.logs()
        assert time.monotonic() < deadline, f"not SERVING after {within}s:\n{tts.logs()}"
        with contextlib.suppress(grpc.RpcError):
            seen.append(tts.health(SERVICE, timeout=0.5))
        time.sleep(0.02)
    return seen


def test_the_service_serves_after_loading_its_voices_and_stops_on_sigterm() -> None:
    with ServiceProcess("tts", {"TTS_MAX_CONCURRENCY": "2"}) as tts:
        tts.start(wait_for=None)
        seen = statuses_until_serving(tts, within=60)
        # Loading takes seconds: health said NOT_SERVING meanwhile, and never SERVING early.
        assert NOT_SERVING in seen
        assert tts.health("") == SERVING
        assert any(r["message"] == "voices loaded" for r in tts.log_records())

        assert tts.channel is not None
        stub = speech_pb2_grpc.SpeechServiceStub(tts.channel)
        request = speech_pb2.SynthesizeRequest(text="こんにちは。元気だにゃん！")
        responses = list(stub.Synthesize(request, timeout=30))
        assert [r.text for r in responses] == ["こんにちは。", "元気だにゃん！"]
        for response in responses:
            with wave.open(io.BytesIO(response.audio_wav), "rb") as file:
                assert file.getparams()[:3] == (1, 2, 48_000)
                assert file.getnframes() > 48_000 * 0.3

        database = ProtoReflectionDescriptorDatabase(tts.channel)
        assert SERVICE in set(database.get_services())

        tts.terminate()
        assert tts.wait(timeout=20) == 0
        assert any(r["message"] == "stopping" for r in tts.log_records())


def test_a_bad_setting_stops_the_service_at_start_naming_it() -> None:
    env = {"TTS_MAX_CONCURRENCY": "0", "PORT": "0", "METRICS_PORT": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "services.tts"],
        cwd=ROOT,
        env={**ServiceProcess("tts").env, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "TTS_MAX_CONCURRENCY" in done.stderr
