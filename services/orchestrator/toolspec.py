"""What a tool is: one `ToolSpec` per ToolService RPC, derived from the contract.

A tool's name is the RPC's name in snake_case, its description the comment above the request
message, its parameters the request's fields (types from the proto, descriptions from the field
comments). Field options say who fills a field: `context_filled` ones come from the turn and are
hidden from the LLM, `required_argument` ones the LLM must give, `context_default` ones the turn
fills when the LLM leaves them empty. The proto is the single source of truth for all of that.

What the contract cannot say lives in `_BEHAVIOUR`, one entry per RPC: the planner's intent that
the tool answers and the fallback result given when the tool is down. `tool_specs()` refuses to
build an incomplete set (an RPC without an entry, a context field the turn cannot fill), so a
new RPC fails at start-up, not on its first error during an incident.

A spec also parses the LLM's arguments for its tool, bounded before anything is parsed: the
arguments' size and nesting depth, then each argument's name and JSON type. Whatever is wrong
becomes a `ToolArgumentError`, whose message is written for the LLM.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from functools import cache
from importlib import resources
from typing import Any, Final

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message

from chatagent.v1 import options_pb2, tools_pb2
from services.orchestrator.planner import Intent

TOOL_SERVICE: Final = tools_pb2.DESCRIPTOR.services_by_name["ToolService"]

# The LLM's arguments for one call: at most this many UTF-8 bytes and this deep. Ours are flat
# objects of short strings; anything bigger is not a real call.
MAX_ARGUMENT_BYTES: Final = 4096
MAX_ARGUMENT_DEPTH: Final = 4

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
_PYTHON_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "string": (str,),
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float),
}
_STRINGS: Final = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS: Final = re.compile(r"[^\[\]{}]+")


class ToolArgumentError(ValueError):
    """The LLM's arguments for a tool are unusable; the message tells the LLM why."""


class IncompleteToolSpecs(RuntimeError):
    """The ToolService contract has an RPC this orchestrator does not know how to offer."""


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What the turn fills in for the LLM: who is asking, in which language, zone and place.
    Field names match the request fields they fill."""

    user_id: str
    language: str
    timezone: str
    place: str = ""


_CONTEXT_FIELDS: Final = frozenset(f.name for f in fields(ToolContext))


@dataclass(frozen=True, slots=True)
class _Behaviour:
    intent: Intent
    fallback: str  # told to the LLM (and the planner) when the tool is down


# One entry per ToolService RPC; `tool_specs()` checks that none is missing.
_BEHAVIOUR: Final[dict[str, _Behaviour]] = {
    "GetTime": _Behaviour(Intent.TIME, "The clock service is unavailable right now."),
    "GetWeather": _Behaviour(Intent.WEATHER, "The weather service is unavailable right now."),
    "GetFortune": _Behaviour(Intent.FORTUNE, "The fortune service is unavailable right now."),
    "Calculate": _Behaviour(Intent.CALCULATION, "The calculator is unavailable right now."),
}


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str  # as the LLM calls it, e.g. "get_weather"
    method: str  # the ToolService RPC, e.g. "GetWeather"
    request_class: type[Message]
    description: str
    parameters: dict[str, Any]  # a JSON schema of the arguments the LLM gives
    context_fields: tuple[str, ...]  # filled from the turn, hidden from the LLM
    defaulted_fields: tuple[str, ...]  # filled from the turn when the LLM leaves them empty
    intent: Intent
    fallback_message: str

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(self.parameters["required"])

    def fallback(self) -> dict[str, Any]:
        """The result the LLM sees when the tool failed or its circuit is open."""
        return {"error": self.fallback_message, "fallback": True}

    def parse(self, arguments: str, context: ToolContext) -> Message:
        """The request for the LLM's JSON `arguments`, with the turn's context filled in."""
        parsed = _bounded_json(arguments)
        properties: dict[str, Any] = self.parameters["properties"]
        request = self.request_class()
        for key, value in parsed.items():
            if key in self.context_fields:
                continue  # the turn, not the LLM, says who the user is
            schema = properties.get(key)
            if schema is None:
                known = ", ".join(properties) or "none"
                raise ToolArgumentError(
                    f"{self.name} has no argument {_short(key)}; its arguments: {known}"
                )
            kind = schema["type"]
            if not isinstance(value, _PYTHON_TYPES[kind]) or (
                kind != "boolean" and isinstance(value, bool)
            ):
                article = "an" if kind[0] in "aeiou" else "a"
                raise ToolArgumentError(f"{self.name}: the argument {key} must be {article} {kind}")
            try:
                setattr(request, key, value)
            except (TypeError, ValueError):
                raise ToolArgumentError(
                    f"{self.name}: the argument {key} is out of range"
                ) from None
        missing = [name for name in self.required if not getattr(request, name)]
        if missing:
            raise ToolArgumentError(f"{self.name} needs the argument(s): {', '.join(missing)}")
        for name in self.context_fields:
            setattr(request, name, getattr(context, name))
        for name in self.defaulted_fields:
            if not getattr(request, name):
                setattr(request, name, getattr(context, name))
        return request


def _short(text: str) -> str:
    return repr(text[:40] + "…" if len(text) > 40 else text)


def _bounded_json(arguments: str) -> dict[str, Any]:
    """The arguments as a JSON object, size and depth checked before parsing."""
    text = arguments.strip() or "{}"
    if len(text) > MAX_ARGUMENT_BYTES or len(text.encode("utf-8", "replace")) > MAX_ARGUMENT_BYTES:
        raise ToolArgumentError(f"arguments are longer than {MAX_ARGUMENT_BYTES} bytes")
    depth = deepest = 0
    for bracket in _NOT_BRACKETS.sub("", _STRINGS.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    if deepest > MAX_ARGUMENT_DEPTH:
        raise ToolArgumentError(f"arguments are nested deeper than {MAX_ARGUMENT_DEPTH} levels")
    try:
        parsed = json.loads(text)
    except ValueError:
        raise ToolArgumentError("arguments are not valid JSON") from None
    if not isinstance(parsed, dict):
        raise ToolArgumentError("arguments must be a JSON object")
    return parsed


def canonical_arguments(arguments: str) -> str:
    """One spelling of the same arguments (key order and spacing aside), for telling repeated
    calls apart; unusable arguments stay as written."""
    try:
        return json.dumps(_bounded_json(arguments), sort_keys=True, ensure_ascii=False)
    except ToolArgumentError:
        return arguments


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


def _spec(method: MethodDescriptor, comments: dict[tuple[str, int], str]) -> ToolSpec:
    behaviour = _BEHAVIOUR.get(method.name)
    if behaviour is None:
        raise IncompleteToolSpecs(
            f"ToolService.{method.name} has no entry in toolspec._BEHAVIOUR (its planner intent "
            "and fallback result); add one"
        )
    request = method.input_type
    properties: dict[str, Any] = {}
    required: list[str] = []
    context: list[str] = []
    defaulted: list[str] = []
    for index, field in enumerate(request.fields):
        options = field.GetOptions()
        from_turn = (
            options.Extensions[options_pb2.context_filled]
            or options.Extensions[options_pb2.context_default]
        )
        if from_turn and field.name not in _CONTEXT_FIELDS:
            raise IncompleteToolSpecs(
                f"{request.name}.{field.name} is filled from the turn's context, which has "
                f"no {field.name} (it has {', '.join(sorted(_CONTEXT_FIELDS))})"
            )
        if options.Extensions[options_pb2.context_filled]:
            context.append(field.name)
            continue
        if options.Extensions[options_pb2.context_default]:
            defaulted.append(field.name)
        if field.cpp_type not in _JSON_TYPES or field.is_repeated:
            raise IncompleteToolSpecs(f"{request.name}.{field.name} has a type tools cannot take")
        properties[field.name] = {
            "type": _JSON_TYPES[field.cpp_type],
            "description": comments.get((request.name, index), ""),
        }
        if options.Extensions[options_pb2.required_argument]:
            required.append(field.name)
    return ToolSpec(
        name=snake_case(method.name),
        method=method.name,
        request_class=getattr(tools_pb2, request.name),
        description=comments.get((request.name, -1), ""),
        parameters={
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": False,
        },
        context_fields=tuple(context),
        defaulted_fields=tuple(defaulted),
        intent=behaviour.intent,
        fallback_message=behaviour.fallback,
    )


@cache
def tool_specs() -> dict[str, ToolSpec]:
    """Every tool by name, built once from the contract; raises IncompleteToolSpecs."""
    comments = _comments()
    specs = {spec.name: spec for spec in (_spec(m, comments) for m in TOOL_SERVICE.methods)}
    unknown = set(_BEHAVIOUR) - {m.name for m in TOOL_SERVICE.methods}
    if unknown:
        raise IncompleteToolSpecs(f"toolspec._BEHAVIOUR names RPCs the contract lacks: {unknown}")
    return specs


@cache
def spec_for_intent() -> dict[Intent, ToolSpec]:
    return {spec.intent: spec for spec in tool_specs().values()}
