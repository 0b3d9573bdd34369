"""Measures what the manifests' resources and probes are sized from; see k8s/README.md.

    .venv/bin/python k8s/measure.py [--out measurements.json]

Starts the four services as real processes (`python -m services.<name>`, loopback ports, each
with an empty TMPDIR and HOME of its own), and for each records: the time from exec to health
SERVING for its service name, the CPU seconds that took, VmRSS / VmHWM at idle, the most its
temp directory held (py3langid's model is an unlinked temp file, so open files are counted too,
not only what `du` sees), and the same after a burst of real calls. The orchestrator runs on its
local planner against the other three; the tools service's weather against a local stand-in for
Open-Meteo (no network). Every process it starts is stopped with SIGTERM before it exits.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from chatagent.v1 import (  # noqa: E402
    chat_pb2,
    chat_pb2_grpc,
    emotion_pb2,
    emotion_pb2_grpc,
    speech_pb2,
    speech_pb2_grpc,
    tools_pb2,
    tools_pb2_grpc,
)
from tests.support.fake_open_meteo import fake_open_meteo  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

SERVICES = {
    "tools": "chatagent.v1.ToolService",
    "tts": "chatagent.v1.SpeechService",
    "emotion": "chatagent.v1.EmotionService",
    "orchestrator": "chatagent.v1.ChatService",
}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def status_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in {"VmRSS", "VmHWM", "Threads"}:
            fields[key] = int(value.split()[0])
    return fields


def cpu_seconds(pid: int) -> float:
    # Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
    rest = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(rest[11]) + int(rest[12])) / CLOCK_TICKS


def temp_bytes(pid: int, tmpdir: Path) -> int:
    """What the temp directory holds now: its files plus files open in it (unlinked included)."""
    total = sum(p.stat().st_size for p in tmpdir.rglob("*") if p.is_file())
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        fds = list(fd_dir.iterdir())
    except OSError:
        return total
    for fd in fds:
        try:
            target = os.readlink(fd)
            if target.startswith(str(tmpdir)) and target.endswith("(deleted)"):
                total += os.stat(fd).st_size
        except OSError:
            continue
    return total


class Service:
    def __init__(self, name: str, env: dict[str, str], scratch: Path) -> None:
        self.name = name
        self.port = free_port()
        self.metrics_port = free_port()
        self.tmpdir = scratch / f"{name}-tmp"
        self.home = scratch / f"{name}-home"
        self.tmpdir.mkdir()
        self.home.mkdir()
        self.log = open(scratch / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.env = {
            "PATH": os.environ["PATH"],
            "HOME": str(self.home),
            "TMPDIR": str(self.tmpdir),
            "BIND_ADDRESS": "127.0.0.1",
            "PORT": str(self.port),
            "METRICS_PORT": str(self.metrics_port),
            **env,
        }
        self.peak_temp = 0
        self._watching = True
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> dict[str, Any]:
        started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.name}"],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        threading.Thread(target=self._watch_temp, daemon=True).start()
        self.channel = grpc.insecure_channel(self.address)
        health = health_pb2_grpc.HealthStub(self.channel)
        request = health_pb2.HealthCheckRequest(service=SERVICES[self.name])
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {self.log.name}")
            try:
                reply = health.Check(request, timeout=0.5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            time.sleep(0.02)
        ready = time.monotonic() - started
        return {"seconds_to_serving": round(ready, 2), "cpu_seconds_to_serving": self.cpu()}

    def _watch_temp(self) -> None:
        while self._watching and self.process is not None and self.process.poll() is None:
            self.peak_temp = max(self.peak_temp, temp_bytes(self.process.pid, self.tmpdir))
            time.sleep(0.01)

    def cpu(self) -> float:
        assert self.process is not None
        return round(cpu_seconds(self.process.pid), 2)

    def sample(self) -> dict[str, Any]:
        assert self.process is not None
        memory = status_kib(self.process.pid)
        return {
            "rss_mib": round(memory["VmRSS"] / 1024, 1),
            "hwm_mib": round(memory["VmHWM"] / 1024, 1),
            "threads": memory["Threads"],
            "cpu_seconds": self.cpu(),
            "temp_peak_mb": round(self.peak_temp / 1e6, 1),
            "temp_now_mb": round(temp_bytes(self.process.pid, self.tmpdir) / 1e6, 1),
            "home_written": sorted(str(p.relative_to(self.home)) for p in self.home.rglob("*")),
        }

    def stop(self) -> int | None:
        self._watching = False
        code = None
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                code = self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                code = self.process.wait()
        self.log.close()
        return code


def burst(calls: list[Callable[[], object]], concurrency: int) -> dict[str, Any]:
    started = time.monotonic()
    failures = 0

    def run(call: Callable[[], object]) -> None:
        nonlocal failures
        try:
            call()
        except grpc.RpcError:
            failures += 1

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(run, calls))
    return {
        "calls": len(calls),
        "concurrency": concurrency,
        "failures": failures,
        "seconds": round(time.monotonic() - started, 2),
    }


def tools_calls(channel: grpc.Channel) -> list[Callable[[], object]]:
    stub = tools_pb2_grpc.ToolServiceStub(channel)
    places = ["東京", "Paris", "서울", "New York", "大阪", "London"]
    calls: list[Callable[[], object]] = []
    for i in range(60):
        place = places[i % len(places)]
        calls += [
            lambda p=place: stub.GetTime(tools_pb2.GetTimeRequest(place=p), timeout=5),
            lambda p=place: stub.GetWeather(tools_pb2.GetWeatherRequest(place=p), timeout=5),
            lambda i=i: stub.GetFortune(
                tools_pb2.GetFortuneRequest(user_id=f"u{i}", timezone="Asia/Tokyo"), timeout=5
            ),
            lambda i=i: stub.Calculate(
                tools_pb2.CalculateRequest(expression=f"sqrt({i}) * (2 ** 10) / 3"), timeout=5
            ),
        ]
    return calls


def tts_calls(channel: grpc.Channel) -> list[Callable[[], object]]:
    stub = speech_pb2_grpc.SpeechServiceStub(channel)
    texts = [
        ("今日はいい天気だにゃん。散歩に行こうにゃん！", "ja"),
        ("It is sunny in Paris today, nyan. Let us go for a walk, nyan!", "en"),
        ("오늘은 날씨가 좋다냥. 산책하자냥!", "ko"),
    ]
    return [
        lambda t=text, lang=lang: list(
            stub.Synthesize(speech_pb2.SynthesizeRequest(text=t, language=lang), timeout=60)
        )
        for text, lang in texts * 8
    ]


def emotion_calls(channel: grpc.Channel) -> list[Callable[[], object]]:
    stub = emotion_pb2_grpc.EmotionServiceStub(channel)
    texts = [
        "試験に受かってとても嬉しい！",
        "地震が怖くて眠れない",
        "I am so angry about the delay, this is terrible.",
        "What a lovely surprise, thank you!",
        "오늘 너무 슬퍼요",
        "今日は特に何もない一日だった。" * 40,
    ]
    return [
        lambda t=text: stub.Analyze(emotion_pb2.AnalyzeRequest(text=t), timeout=5)
        for text in texts * 40
    ]


def orchestrator_calls(channel: grpc.Channel) -> list[Callable[[], object]]:
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    messages = [
        ("東京は今何時？それと今日の運勢を教えて", False),
        ("What is 12 * (3 + 4) and what time is it in London?", False),
        ("서울의 날씨는 어때?", False),
        ("こんにちは！元気？", True),
        ("Tell me my fortune and the weather in Paris", True),
    ]
    return [
        lambda i=i, m=m, audio=audio: stub.Chat(
            chat_pb2.ChatRequest(
                user_id=f"user-{i % 20}",
                message=m,
                include_audio=audio,
                request_id=f"measure-{i}",
            ),
            timeout=30,
        )
        for i, (m, audio) in enumerate(messages * 12)
    ]


@contextmanager
def running(name: str, env: dict[str, str], scratch: Path) -> Iterator[Service]:
    service = Service(name, env, scratch)
    try:
        yield service
    finally:
        service.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    scratch = Path(tempfile.mkdtemp(prefix="chatagent-measure-"))
    try:
        with ExitStack() as stack:
            meteo = stack.enter_context(fake_open_meteo())
            services: dict[str, Service] = {}
            for name in ("tools", "tts", "emotion", "orchestrator"):
                env = {}
                if name == "tools":
                    env = {
                        "OPEN_METEO_GEOCODING_URL": meteo.geocoding_url,
                        "OPEN_METEO_FORECAST_URL": meteo.forecast_url,
                    }
                if name == "orchestrator":
                    env = {
                        "TOOLS_ADDR": services["tools"].address,
                        "SPEECH_ADDR": services["tts"].address,
                        "EMOTION_ADDR": services["emotion"].address,
                        # The measurement's own load, not a rate limit, is what is measured.
                        "USER_RATE_PER_MINUTE": "100000",
                        "USER_BURST": "10000",
                    }
                service = stack.enter_context(running(name, env, scratch))
                services[name] = service
                results[name] = {"start": service.start()}
                time.sleep(2)  # what settles right after SERVING (threads, first GC) settles
                results[name]["idle"] = service.sample()
            for name, make, concurrency in (
                ("tools", tools_calls, 16),
                ("tts", tts_calls, 4),
                ("emotion", emotion_calls, 16),
                ("orchestrator", orchestrator_calls, 8),
            ):
                service = services[name]
                before = service.cpu()
                results[name]["burst"] = burst(make(service.channel), concurrency)
                sample = service.sample()
                sample["cpu_seconds_in_burst"] = round(sample["cpu_seconds"] - before, 2)
                results[name]["after_burst"] = sample
            # The orchestrator's burst loaded the others too: their state after it.
            for name in ("tools", "tts", "emotion"):
                results[name]["after_orchestrator_burst"] = services[name].sample()
            for name in ("orchestrator", "emotion", "tts", "tools"):
                stopped = time.monotonic()
                code = services[name].stop()
                results[name]["sigterm_exit"] = {
                    "code": code,
                    "seconds": round(time.monotonic() - stopped, 2),
                }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    text = json.dumps(results, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
