"""`make run`'s supervisor: starts all four services, prefixes logs, Ctrl-C stops all cleanly;
with all of them up, a plain greeting is answered with speech and nothing degraded."""

from __future__ import annotations

import io
import re
import signal
import subprocess
import sys
import wave

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chatagent.v1 import chat_pb2, chat_pb2_grpc
from tests.support.ports import free_port
from tests.support.process import ROOT, ServiceProcess


def test_run_starts_the_suite_and_ctrl_c_stops_it_with_status_zero() -> None:
    port, chat_port, emotion_port, speech_port = free_port(), free_port(), free_port(), free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "BIND_ADDRESS": "127.0.0.1",
        "TOOLS__PORT": str(port),
        "TOOLS__METRICS_PORT": str(free_port()),
        "EMOTION__PORT": str(emotion_port),
        "EMOTION__METRICS_PORT": str(free_port()),
        "TTS__PORT": str(speech_port),
        "TTS__METRICS_PORT": str(free_port()),
        "ORCHESTRATOR__PORT": str(chat_port),
        "ORCHESTRATOR__METRICS_PORT": str(free_port()),
        "ORCHESTRATOR__TOOLS_ADDR": f"127.0.0.1:{port}",
        "ORCHESTRATOR__EMOTION_ADDR": f"127.0.0.1:{emotion_port}",
        "ORCHESTRATOR__SPEECH_ADDR": f"127.0.0.1:{speech_port}",
    }
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "scripts.run_suite"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # Reuse the process helper's health polling against the supervisor's child.
    probe = ServiceProcess("tools")
    probe.port = port
    probe.channel = grpc.insecure_channel(probe.address)
    chat_probe = ServiceProcess("orchestrator")
    chat_probe.port = chat_port
    chat_probe.channel = grpc.insecure_channel(chat_probe.address)
    others = []
    for name, at, service in (
        ("emotion", emotion_port, "chatagent.v1.EmotionService"),
        ("tts", speech_port, "chatagent.v1.SpeechService"),
    ):
        other = ServiceProcess(name)
        other.port = at
        other.channel = grpc.insecure_channel(other.address)
        others.append((other, service))
    try:
        probe.wait_serving("chatagent.v1.ToolService", timeout=30)
        chat_probe.wait_serving("chatagent.v1.ChatService", timeout=30)
        for other, service in others:
            other.wait_serving(service, timeout=30)
        assert chat_probe.channel is not None
        reply = chat_pb2_grpc.ChatServiceStub(chat_probe.channel).Chat(
            chat_pb2.ChatRequest(user_id="u-run", message="こんにちは", include_audio=True),
            timeout=30,
        )
        assert list(reply.degraded) == []
        with wave.open(io.BytesIO(reply.audio), "rb") as audio:
            assert audio.getnframes() / audio.getframerate() > 0.5
        supervisor.send_signal(signal.SIGINT)
        output, _ = supervisor.communicate(timeout=60)
    finally:
        probe.stop()
        chat_probe.stop()
        for other, _ in others:
            other.stop()
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
    assert supervisor.returncode == 0, output
    for name in ("tools", "emotion", "tts", "orchestrator"):
        lines = [line for line in output.splitlines() if re.match(rf"{name} +\| ", line)]
        assert any('"message": "serving"' in line for line in lines), output
        assert any('"message": "stopped"' in line for line in lines), output

    with grpc.insecure_channel(probe.address) as channel, pytest.raises(grpc.RpcError) as info:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
