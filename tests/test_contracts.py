"""The public contract: service and RPC names other programs call, and the fields DESIGN.md
promises. Renaming any of them breaks callers, so a rename must fail here first."""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import FieldDescriptor, ServiceDescriptor

from chatagent.v1 import chat_pb2, emotion_pb2, speech_pb2, tools_pb2

SERVICES: dict[str, tuple[ServiceDescriptor, dict[str, bool]]] = {
    "chatagent.v1.ChatService": (
        chat_pb2.DESCRIPTOR.services_by_name["ChatService"],
        {"Chat": False, "StreamChat": True, "DeleteUserData": False, "GetUsage": False},
    ),
    "chatagent.v1.ToolService": (
        tools_pb2.DESCRIPTOR.services_by_name["ToolService"],
        {"GetTime": False, "GetWeather": False, "GetFortune": False, "Calculate": False},
    ),
    "chatagent.v1.SpeechService": (
        speech_pb2.DESCRIPTOR.services_by_name["SpeechService"],
        {"Synthesize": True},
    ),
    "chatagent.v1.EmotionService": (
        emotion_pb2.DESCRIPTOR.services_by_name["EmotionService"],
        {"Analyze": False},
    ),
}


@pytest.mark.parametrize("full_name", sorted(SERVICES))
def test_services_expose_the_promised_rpcs_with_their_own_messages(full_name: str) -> None:
    service, rpcs = SERVICES[full_name]
    assert service.full_name == full_name
    assert {m.name: m.server_streaming for m in service.methods} == rpcs
    for method in service.methods:
        assert not method.client_streaming
        assert method.input_type.name == f"{method.name}Request"
        assert method.output_type.name == f"{method.name}Response"


def fields(message: object) -> dict[str, int]:
    descriptor = message.DESCRIPTOR  # type: ignore[attr-defined]
    return {f.name: f.type for f in descriptor.fields}


def test_chat_request_and_response_carry_the_promised_fields() -> None:
    request = fields(chat_pb2.ChatRequest)
    for name in ("user_id", "message", "language", "timezone", "request_id"):
        assert request[name] == FieldDescriptor.TYPE_STRING
    assert request["include_audio"] == FieldDescriptor.TYPE_BOOL
    response = fields(chat_pb2.ChatResponse)
    assert set(response) >= {
        "reply", "language", "emotion", "tool_calls", "audio", "usage", "degraded", "trace_id",
    }  # fmt: skip
    tool_call = fields(chat_pb2.ToolCall)
    assert set(tool_call) >= {"name", "arguments_json", "result_json", "status", "duration"}
    usage = fields(chat_pb2.Usage)
    assert set(usage) >= {"prompt_tokens", "completion_tokens", "tts_characters", "cost_usd"}
