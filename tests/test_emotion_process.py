"""`python -m services.emotion` as a real process: SERVING only once loaded, Analyze and reflection
over real gRPC, its metrics, SIGTERM exits 0, a bad setting exits 2 naming the variable."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from chatagent.v1 import emotion_pb2, emotion_pb2_grpc
from tests.support.process import ROOT, ServiceProcess

SERVICE = "chatagent.v1.EmotionService"


def test_the_process_serves_analyze_and_exits_zero_on_sigterm() -> None:
    with ServiceProcess("emotion", {"LOG_LEVEL": "INFO"}) as emotion:
        emotion.start(wait_for=SERVICE)
        assert emotion.health("") == health_pb2.HealthCheckResponse.SERVING
        messages = [record["message"] for record in emotion.log_records()]
        assert messages.index("emotion analysers loaded") < messages.index("serving")

        assert emotion.channel is not None
        stub = emotion_pb2_grpc.EmotionServiceStub(emotion.channel)
        reply = stub.Analyze(emotion_pb2.AnalyzeRequest(text="地震が怖い"), timeout=5)
        assert (reply.emotion.dominant, reply.analyzer, reply.language) == ("fear", "mlask", "ja")
        reply = stub.Analyze(
            emotion_pb2.AnalyzeRequest(text="안녕하세요😀こんにちは🇰🇷" * 1000), timeout=5
        )
        assert (reply.emotion.dominant, reply.truncated) == ("neutral", True)

        database = ProtoReflectionDescriptorDatabase(emotion.channel)
        assert {SERVICE, "grpc.health.v1.Health"} <= set(database.get_services())

        metrics_url = f"http://127.0.0.1:{emotion.metrics_port}/metrics"
        with urllib.request.urlopen(metrics_url, timeout=5) as page:
            exposed = page.read().decode()
        assert 'chatagent_emotion_analyses_total{analyzer="mlask",language="ja"} 2.0' in exposed
        assert "chatagent_emotion_truncated_total 1.0" in exposed
        # The user's text is never logged.
        assert "地震" not in emotion.logs()

        emotion.terminate()
        assert emotion.wait(timeout=30) == 0


def test_a_bad_setting_stops_the_process_at_start_naming_the_variable() -> None:
    env = {"EMOTION_ANALYZER": "magic", "EMOTION_MAX_CONCURRENCY": "0"}
    with ServiceProcess("emotion", env) as emotion:
        completed = subprocess.run(
            [sys.executable, "-m", "services.emotion"],
            cwd=ROOT,
            env=emotion.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert completed.returncode == 2
    assert "EMOTION_ANALYZER" in completed.stderr
    assert "EMOTION_MAX_CONCURRENCY" in completed.stderr


def test_the_permissive_analysers_are_chosen_by_setting() -> None:
    with ServiceProcess("emotion", {"EMOTION_ANALYZER": "permissive"}) as emotion:
        emotion.start(wait_for=SERVICE)
        assert emotion.channel is not None
        stub = emotion_pb2_grpc.EmotionServiceStub(emotion.channel)
        reply = stub.Analyze(emotion_pb2.AnalyzeRequest(text="I am so happy"), timeout=5)
        assert (reply.analyzer, reply.emotion.dominant) == ("words+vader", "joy")
