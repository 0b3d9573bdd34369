"""The tools the LLM is offered, derived from the ToolService contract.

Each RPC of `chatagent.v1.ToolService` is one tool: its name is the RPC's name in snake_case, its
description the comment above the request message, its parameters the request's fields (types
from the proto, descriptions from the field comments). Fields marked `context_filled` are filled
by the orchestrator and hidden from the LLM; `required_argument` fields are required. The proto
is the single source of truth: change a comment there and the LLM reads the new text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Final

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from chatagent.v1 import options_pb2, tools_pb2

TOOL_SERVICE: Final = tools_pb2.DESCRIPTOR.services_by_name["ToolService"]

# descriptor.proto's field numbers, the path elements of SourceCodeInfo locations.
_MESSAGE_TYPE: Final = 4
_MESSAGE_FIELD: Final = 2

_JSON_TYPES: Final = {
    FieldDescriptor.CPPTYPE_STRING: "string",
    FieldDescriptor.CPPTYPE_BOOL: "boolean",
    FieldDescriptor.CPPTYPE_INT32: "integer",
    FieldDescriptor.CPPTYPE_INT64: "integer",
    FieldDescriptor.CPPTYPE_UINT32: "integer",
    FieldDescriptor.CPPTYPE_UINT64: "integer",
    FieldDescriptor.CPPTYPE_DOUBLE: "number",
    FieldDescriptor.CPPTYPE_FLOAT: "number",
}


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str  # as the LLM calls it, e.g. "get_weather"
    method: str  # the ToolService RPC, e.g. "GetWeather"
    request_class: type[Message]
    context_fields: tuple[str, ...]  # filled by the orchestrator, not by the LLM
    definition: dict[str, Any]  # the OpenAI "tools" entry


def snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _comments() -> dict[tuple[str, int], str]:
    """Leading comments of tools.proto's messages (field index -1) and their fields."""
    raw = resources.files("chatagent.v1").joinpath("descriptors.binpb").read_bytes()
    files = descriptor_pb2.FileDescriptorSet.FromString(raw)
    tools_file = next(f for f in files.file if f.name == tools_pb2.DESCRIPTOR.name)
    found: dict[tuple[str, int], str] = {}
    for location in tools_file.source_code_info.location:
        path = list(location.path)
        if len(path) >= 2 and path[0] == _MESSAGE_TYPE:
            message = tools_file.message_type[path[1]].name
            text = " ".join(location.leading_comments.split())
            if len(path) == 2:
                found[(message, -1)] = text
            elif len(path) == 4 and path[2] == _MESSAGE_FIELD:
                found[(message, path[3])] = text
    return found


def _spec(method: Any, comments: dict[tuple[str, int], str]) -> ToolSpec:
    request = method.input_type
    properties: dict[str, Any] = {}
    required: list[str] = []
    context: list[str] = []
    for index, field in enumerate(request.fields):
        options = field.GetOptions()
        if options.Extensions[options_pb2.context_filled]:
            context.append(field.name)
            continue
        properties[field.name] = {
            "type": _JSON_TYPES[field.cpp_type],
            "description": comments.get((request.name, index), ""),
        }
        if options.Extensions[options_pb2.required_argument]:
            required.append(field.name)
    name = snake_case(method.name)
    definition = {
        "type": "function",
        "function": {
            "name": name,
            "description": comments.get((request.name, -1), ""),
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": False,
            },
        },
    }
    return ToolSpec(
        name=name,
        method=method.name,
        request_class=getattr(tools_pb2, request.name),
        context_fields=tuple(context),
        definition=definition,
    )


@cache
def tool_specs() -> dict[str, ToolSpec]:
    """Every tool by name, built once from the contract."""
    comments = _comments()
    return {spec.name: spec for spec in (_spec(m, comments) for m in TOOL_SERVICE.methods)}


@cache
def tool_definitions() -> list[dict[str, Any]]:
    return [spec.definition for spec in tool_specs().values()]
