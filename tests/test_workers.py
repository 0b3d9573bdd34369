"""WORKERS: several orchestrator processes on one port (SO_REUSEPORT), for when one core is the
limit; they share what they must agree on through Redis. Real processes, a real Redis."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from chatagent.v1 import chat_pb2, chat_pb2_grpc
from tests.support.ports import free_port
from tests.support.process import ServiceProcess, metrics_at

SERVICE = "chatagent.v1.ChatService"


def handled_chats(metrics_port: int) -> float:
    return sum(
        value
        for series, value in metrics_at(metrics_port).items()
        if series.startswith("grpc_server_handled_total{") and 'grpc_method="Chat"' in series
    )


def listening(metrics_port: int) -> bool:
    """Whether the worker serving metrics on `metrics_port` has its gRPC server started (it
    watches Redis from then on)."""
    return metrics_at(metrics_port).get('chatagent_dependency_up{dependency="redis"}') == 1.0


def workers_of(supervisor_pid: int) -> list[int]:
    children = Path(f"/proc/{supervisor_pid}/task/{supervisor_pid}/children")
    return [int(pid) for pid in children.read_text().split()] if children.exists() else []


def wait_until(condition: object, timeout: float, message: str) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.1)


def test_more_workers_than_one_need_redis() -> None:
    with ServiceProcess("orchestrator", {"WORKERS": "2"}) as orchestrator:
        orchestrator.start(wait_for=None)
        assert orchestrator.wait(timeout=30) == 2
        assert "WORKERS above 1 needs REDIS_URL" in orchestrator.logs()


def test_workers_share_the_port_and_the_users_and_stop_together(redis_url: str) -> None:
    metrics = free_port()
    env = {
        "WORKERS": "2",
        "REDIS_URL": redis_url,
        "METRICS_PORT": str(metrics),
        "USER_RATE_PER_MINUTE": "6000",
        "USER_BURST": "100",
    }
    with ServiceProcess("orchestrator", env) as orchestrator:
        orchestrator.start(wait_for=SERVICE, timeout=60)
        assert orchestrator.process is not None
        supervisor = orchestrator.process.pid
        wait_until(lambda: len(workers_of(supervisor)) == 2, 30, "two workers")
        # Both workers serve (the supervisor serves nothing).
        wait_until(lambda: listening(metrics) and listening(metrics + 1), 60, "both workers")

        def turn(index: int) -> chat_pb2.ChatResponse:
            # A connection of its own each time (gRPC shares one between channels to the same
            # target unless told otherwise): the kernel spreads connections, not calls.
            options = [("grpc.use_local_subchannel_pool", 1)]
            with grpc.insecure_channel(orchestrator.address, options=options) as channel:
                grpc.channel_ready_future(channel).result(timeout=30)
                stub = chat_pb2_grpc.ChatServiceStub(channel)
                return stub.Chat(
                    chat_pb2.ChatRequest(user_id="shared", message=f"こんにちは {index}"),
                    timeout=30,
                )

        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(turn, range(24)))
        assert all(reply.reply for reply in replies)
        per_worker = [handled_chats(metrics), handled_chats(metrics + 1)]
        assert sum(per_worker) == 24
        assert min(per_worker) > 0, per_worker  # 24 connections all on one worker: ~1e-7
        # One user's turns from both workers were serialized by the Redis lock: none was lost.
        with grpc.insecure_channel(orchestrator.address) as channel:
            usage = chat_pb2_grpc.ChatServiceStub(channel).GetUsage(
                chat_pb2.GetUsageRequest(user_id="shared"), timeout=10
            )
        assert usage.user_today.turns == 24

        # A worker that dies is started again; the other goes on serving meanwhile.
        victim = workers_of(supervisor)[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: len(workers_of(supervisor)) == 2 and victim not in workers_of(supervisor),
            30,
            "the dead worker replaced",
        )
        wait_until(lambda: listening(metrics) and listening(metrics + 1), 60, "both again")
        assert turn(99).reply
        orchestrator.terminate()
        assert orchestrator.wait(timeout=60) == 0
        assert workers_of(supervisor) == []
    with pytest.raises(grpc.FutureTimeoutError), grpc.insecure_channel(orchestrator.address) as ch:
        grpc.channel_ready_future(ch).result(timeout=1)
