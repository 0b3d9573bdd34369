"""The shared server interceptor, in-process on a real grpc.aio server built by ServiceHost: a
request that cannot be decoded is refused with INVALID_ARGUMENT naming the problem, whatever the
kind of handler, and every kind of call is counted and logged."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest
from prometheus_client import REGISTRY

from chatagent.v1 import speech_pb2, speech_pb2_grpc
from services.common.config import ServiceSettings
from services.common.server import ServiceHost

SPEECH = "chatagent.v1.SpeechService"
KINDS = "test.v1.Kinds"
Context = grpc.aio.ServicerContext[Any, Any]
# A SynthesizeRequest whose `text` (field 1) holds two bytes that are not UTF-8.
BAD_UTF8 = b"\x0a\x02\xc3\x28"
GOOD = speech_pb2.SynthesizeRequest(text="hello").SerializeToString()


class Speech(speech_pb2_grpc.SpeechServiceServicer):
    def __init__(self) -> None:
        self.requests: list[speech_pb2.SynthesizeRequest] = []

    async def Synthesize(
        self, request: speech_pb2.SynthesizeRequest, context: Context
    ) -> AsyncIterator[speech_pb2.SynthesizeResponse]:
        self.requests.append(request)
        for sequence in range(2):
            yield speech_pb2.SynthesizeResponse(sequence=sequence, text=request.text)


def reply(text: str) -> speech_pb2.SynthesizeResponse:
    return speech_pb2.SynthesizeResponse(text=text)


async def unary_unary(request: Any, context: Context) -> Any:
    return reply(request.text)


async def unary_stream(request: Any, context: Context) -> AsyncIterator[Any]:
    yield reply(request.text)


async def stream_unary(requests: AsyncIterator[Any], context: Context) -> Any:
    return reply("".join([request.text async for request in requests]))


async def stream_stream(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
    async for request in requests:
        yield reply(request.text)


def kinds() -> grpc.GenericRpcHandler:
    decode = speech_pb2.SynthesizeRequest.FromString
    encode = speech_pb2.SynthesizeResponse.SerializeToString
    handlers = {
        "UnaryUnary": grpc.unary_unary_rpc_method_handler(unary_unary, decode, encode),
        "UnaryStream": grpc.unary_stream_rpc_method_handler(unary_stream, decode, encode),
        "StreamUnary": grpc.stream_unary_rpc_method_handler(stream_unary, decode, encode),
        "StreamStream": grpc.stream_stream_rpc_method_handler(stream_stream, decode, encode),
    }
    return grpc.method_handlers_generic_handler(KINDS, handlers)


@pytest.fixture
async def served() -> AsyncIterator[tuple[Speech, grpc.aio.Channel]]:
    settings = ServiceSettings(bind_address="127.0.0.1", port=0, shutdown_grace_seconds=1)
    host = ServiceHost(settings, [SPEECH])
    speech = Speech()
    speech_pb2_grpc.add_SpeechServiceServicer_to_server(speech, host.server)
    host.server.add_generic_rpc_handlers((kinds(),))
    port = await host.start()
    await host.wait_ready()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield speech, channel
    finally:
        await channel.close()
        await host.stop()


def handled(service: str, method: str, rpc_type: str, code: str) -> float:
    labels = {"grpc_type": rpc_type, "grpc_service": service, "grpc_method": method}
    return (
        REGISTRY.get_sample_value("grpc_server_handled_total", {**labels, "grpc_code": code}) or 0
    )


async def call(channel: grpc.aio.Channel, method: str, *messages: bytes) -> list[str]:
    """Send raw `messages` to `method` of KINDS (or SPEECH) the way its kind wants; the texts
    of the responses."""
    raw: Any = {"request_serializer": lambda data: data}
    raw["response_deserializer"] = speech_pb2.SynthesizeResponse.FromString
    if method.startswith(f"/{KINDS}/Stream"):
        if method.endswith("Unary"):
            answer = await channel.stream_unary(method, **raw)(iter(messages), timeout=5)
            return [answer.text]
        stream = channel.stream_stream(method, **raw)(iter(messages), timeout=5)
        return [response.text async for response in stream]
    (message,) = messages
    if method.endswith("UnaryUnary"):
        answer = await channel.unary_unary(method, **raw)(message, timeout=5)
        return [answer.text]
    stream = channel.unary_stream(method, **raw)(message, timeout=5)
    return [response.text async for response in stream]


async def test_a_malformed_request_to_a_streaming_rpc_is_invalid_argument(
    served: tuple[Speech, grpc.aio.Channel],
) -> None:
    speech, channel = served
    before = handled(SPEECH, "Synthesize", "server_stream", "INVALID_ARGUMENT")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(channel, f"/{SPEECH}/Synthesize", BAD_UTF8)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "SynthesizeRequest" in (refused.value.details() or "")
    assert "UTF-8" in (refused.value.details() or "")
    assert speech.requests == []  # the handler never saw it
    assert handled(SPEECH, "Synthesize", "server_stream", "INVALID_ARGUMENT") == before + 1

    assert await call(channel, f"/{SPEECH}/Synthesize", GOOD) == ["hello", "hello"]
    assert [request.text for request in speech.requests] == ["hello"]


@pytest.mark.parametrize(
    ("method", "rpc_type"),
    [
        ("UnaryUnary", "unary"),
        ("UnaryStream", "server_stream"),
        ("StreamUnary", "client_stream"),
        ("StreamStream", "bidi_stream"),
    ],
)
async def test_every_kind_of_handler_refuses_malformed_requests_alike(
    served: tuple[Speech, grpc.aio.Channel],
    caplog: pytest.LogCaptureFixture,
    method: str,
    rpc_type: str,
) -> None:
    _, channel = served
    caplog.set_level(logging.INFO, logger="services.common.interceptors")
    path = f"/{KINDS}/{method}"
    assert await call(channel, path, GOOD) == ["hello"]
    assert handled(KINDS, method, rpc_type, "OK") == 1

    messages = (GOOD, BAD_UTF8) if method.startswith("Stream") else (BAD_UTF8,)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(channel, path, *messages)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "String field had bad UTF-8" in (refused.value.details() or "")
    assert handled(KINDS, method, rpc_type, "INVALID_ARGUMENT") == 1
    logged = [
        getattr(record, "code", None)
        for record in caplog.records
        if record.getMessage() == "rpc finished" and getattr(record, "rpc", "") == path
    ]
    assert logged == ["OK", "INVALID_ARGUMENT"]
