"""Who the caller is: the name of its bearer token, or the subject of its client certificate, as
a handler sees it (both RPC kinds), and refusals for everyone else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from services.common.auth import BearerTokenInterceptor, caller_of
from services.common.interceptors import TelemetryInterceptor

METHOD_UNARY = "/test.Who/Am"
METHOD_STREAM = "/test.Who/Stream"


def _whoami_handler() -> grpc.GenericRpcHandler:
    async def unary(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return caller_of(context).encode()

    async def stream(
        request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        yield caller_of(context).encode()

    return grpc.method_handlers_generic_handler(
        "test.Who",
        {
            "Am": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        },
    )


async def _ask(channel: grpc.aio.Channel, token: str | None) -> tuple[str, str]:
    metadata = () if token is None else (("authorization", f"Bearer {token}"),)
    unary = channel.unary_unary(METHOD_UNARY)
    stream = channel.unary_stream(METHOD_STREAM)
    first = await unary(b"", metadata=metadata, timeout=5)
    second = [piece async for piece in stream(b"", metadata=metadata, timeout=5)]
    return first.decode(), b"".join(second).decode()


async def test_the_token_names_the_caller_and_other_tokens_are_refused() -> None:
    server = grpc.aio.server(interceptors=[BearerTokenInterceptor({"shop": "t-1", "bank": "t-2"})])
    server.add_generic_rpc_handlers([_whoami_handler()])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert await _ask(channel, "t-1") == ("shop", "shop")
            assert await _ask(channel, "t-2") == ("bank", "bank")
            for token in (None, "t-3", "t-1x", "T-1"):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await _ask(channel, token)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await server.stop(None)


async def test_a_client_certificate_names_the_caller(pki: Path) -> None:
    credentials = grpc.ssl_server_credentials(
        [((pki / "server.key").read_bytes(), (pki / "server.pem").read_bytes())],
        root_certificates=(pki / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([_whoami_handler()])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    client = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(),
        private_key=(pki / "client.key").read_bytes(),
        certificate_chain=(pki / "client.pem").read_bytes(),
    )
    try:
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", client) as channel:
            assert await _ask(channel, None) == ("cert:client", "cert:client")
    finally:
        await server.stop(None)


def test_tokens_need_names_and_values() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        BearerTokenInterceptor({"shop": ""})
    with pytest.raises(ValueError, match="non-empty"):
        BearerTokenInterceptor({})


async def test_the_access_log_names_the_token_each_call_used(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """During a token rotation the logs show which callers still use the old token's name."""
    caplog.set_level("INFO", logger="services.common.interceptors")
    tokens = BearerTokenInterceptor({"shop-2026-11": "t-old", "shop-2026-12": "t-new"})
    server = grpc.aio.server(interceptors=[TelemetryInterceptor(), tokens])
    server.add_generic_rpc_handlers([_whoami_handler()])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await _ask(channel, "t-old")
            await _ask(channel, "t-new")
    finally:
        await server.stop(None)
    finished = [r for r in caplog.records if r.getMessage() == "rpc finished"]
    assert [(r.rpc, getattr(r, "caller", "")) for r in finished] == [
        (METHOD_UNARY, "shop-2026-11"),
        (METHOD_STREAM, "shop-2026-11"),
        (METHOD_UNARY, "shop-2026-12"),
        (METHOD_STREAM, "shop-2026-12"),
    ]
    # The token itself is never logged.
    assert not any("t-old" in str(r.__dict__) or "t-new" in str(r.__dict__) for r in finished)
