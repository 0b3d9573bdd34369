"""All four services as real processes, wired to each other: for what only the whole suite shows
(one trace across every service, the metrics every service exposes)."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from chatagent.v1 import chat_pb2_grpc
from tests.support.process import ServiceProcess

# Each service's health name, in the order they start (the orchestrator needs the others).
HEALTH_NAMES = {
    "tools": "chatagent.v1.ToolService",
    "emotion": "chatagent.v1.EmotionService",
    "tts": "chatagent.v1.SpeechService",
    "orchestrator": "chatagent.v1.ChatService",
}


@dataclass
class WholeSuite:
    processes: dict[str, ServiceProcess]

    @property
    def chat(self) -> chat_pb2_grpc.ChatServiceStub:
        channel = self.processes["orchestrator"].channel
        assert channel is not None
        return chat_pb2_grpc.ChatServiceStub(channel)

    def scrape(self, name: str) -> str:
        """The Prometheus text `name` serves on its METRICS_PORT."""
        port = self.processes[name].metrics_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            return str(answer.read().decode())


@contextmanager
def whole_suite(
    env: dict[str, str] | None = None, per_service: dict[str, dict[str, str]] | None = None
) -> Iterator[WholeSuite]:
    """Start tools, emotion, speech and the orchestrator (pointed at the other three), each with
    `env` and its own `per_service[name]`; wait until all are SERVING; stop them all after."""
    per_service = per_service or {}
    with ExitStack() as stack:
        processes: dict[str, ServiceProcess] = {}
        for name in ("tools", "emotion", "tts"):
            processes[name] = stack.enter_context(
                ServiceProcess(name, {**(env or {}), **per_service.get(name, {})})
            )
            processes[name].start(wait_for=None)
        wiring = {
            "TOOLS_ADDR": processes["tools"].address,
            "EMOTION_ADDR": processes["emotion"].address,
            "SPEECH_ADDR": processes["tts"].address,
        }
        orchestrator = ServiceProcess(
            "orchestrator", {**wiring, **(env or {}), **per_service.get("orchestrator", {})}
        )
        processes["orchestrator"] = stack.enter_context(orchestrator)
        orchestrator.start(wait_for=None)
        for name, process in processes.items():
            process.wait_serving(HEALTH_NAMES[name], timeout=60)
        yield WholeSuite(processes)
