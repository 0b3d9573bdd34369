"""`make run`'s supervisor: starts every service, prefixes logs, Ctrl-C stops all cleanly."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.ports import free_port
from tests.support.process import ROOT, ServiceProcess


def test_run_starts_the_suite_and_ctrl_c_stops_it_with_status_zero() -> None:
    port, chat_port = free_port(), free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "BIND_ADDRESS": "127.0.0.1",
        "TOOLS__PORT": str(port),
        "TOOLS__METRICS_PORT": str(free_port()),
        "ORCHESTRATOR__PORT": str(chat_port),
        "ORCHESTRATOR__METRICS_PORT": str(free_port()),
        "ORCHESTRATOR__TOOLS_ADDR": f"127.0.0.1:{port}",
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
    try:
        probe.wait_serving("chatagent.v1.ToolService", timeout=30)
        chat_probe.wait_serving("chatagent.v1.ChatService", timeout=30)
        supervisor.send_signal(signal.SIGINT)
        output, _ = supervisor.communicate(timeout=60)
    finally:
        probe.stop()
        chat_probe.stop()
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
    assert supervisor.returncode == 0, output
    for name in ("tools", "orchestrator"):
        lines = [line for line in output.splitlines() if re.match(rf"{name} +\| ", line)]
        assert any('"message": "serving"' in line for line in lines), output
        assert any('"message": "stopped"' in line for line in lines), output

    with grpc.insecure_channel(probe.address) as channel, pytest.raises(grpc.RpcError) as info:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
