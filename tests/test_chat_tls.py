"""TLS and mutual TLS on the ChatService, from certificate paths in the environment."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from chatagent.v1 import chat_pb2, chat_pb2_grpc
from tests.support.process import ServiceProcess

SERVICE = "chatagent.v1.ChatService"


def chat(channel: grpc.Channel) -> chat_pb2.ChatResponse:
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    return stub.Chat(chat_pb2.ChatRequest(user_id="u-tls", message="hello"), timeout=5)


def test_tls_serves_only_tls_clients(pki: Path) -> None:
    ca = (pki / "ca.pem").read_bytes()
    env = {"TLS_CERT_FILE": str(pki / "server.pem"), "TLS_KEY_FILE": str(pki / "server.key")}
    with ServiceProcess("orchestrator", env, grpc.ssl_channel_credentials(ca)) as server:
        server.start(wait_for=SERVICE)
        assert server.channel is not None
        assert chat(server.channel).reply
        with grpc.insecure_channel(server.address) as plain, pytest.raises(grpc.RpcError) as info:
            chat(plain)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate_from_the_ca(pki: Path) -> None:
    ca = (pki / "ca.pem").read_bytes()
    env = {
        "TLS_CERT_FILE": str(pki / "server.pem"),
        "TLS_KEY_FILE": str(pki / "server.key"),
        "TLS_CLIENT_CA_FILE": str(pki / "ca.pem"),
    }
    with_cert = grpc.ssl_channel_credentials(
        ca, (pki / "client.key").read_bytes(), (pki / "client.pem").read_bytes()
    )
    with ServiceProcess("orchestrator", env, with_cert) as server:
        server.start(wait_for=SERVICE)
        assert server.channel is not None
        assert chat(server.channel).reply
        no_cert = grpc.ssl_channel_credentials(ca)
        with (
            grpc.secure_channel(server.address, no_cert) as channel,
            pytest.raises(grpc.RpcError) as info,
        ):
            chat(channel)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_certificate_without_its_key_stops_the_process(pki: Path) -> None:
    with ServiceProcess("orchestrator", {"TLS_CERT_FILE": str(pki / "server.pem")}) as server:
        server.start(wait_for=None)
        assert server.wait(timeout=30) == 2
        assert "TLS_CERT_FILE and TLS_KEY_FILE" in server.logs()
