"""The LLM's tool list comes from the ToolService contract, not from a hand-written copy."""

from __future__ import annotations

import re
from pathlib import Path

from services.orchestrator.toolspec import tool_definitions, tool_specs

PROTO = Path(__file__).resolve().parents[1] / "protos/chatagent/v1/tools.proto"


def proto_comment_above(declaration: str) -> str:
    """The `//` comment lines directly above `declaration` in tools.proto, joined."""
    lines = PROTO.read_text(encoding="utf-8").splitlines()
    index = next(i for i, line in enumerate(lines) if line.strip().startswith(declaration))
    comment: list[str] = []
    for line in reversed(lines[:index]):
        if not line.strip().startswith("//"):
            break
        comment.insert(0, line.strip()[2:].strip())
    return " ".join(comment)


def test_every_tool_rpc_is_a_tool_named_in_snake_case() -> None:
    assert [d["function"]["name"] for d in tool_definitions()] == [
        "get_time",
        "get_weather",
        "get_fortune",
        "calculate",
    ]
    assert tool_specs()["get_weather"].method == "GetWeather"


def test_descriptions_are_the_proto_comments() -> None:
    weather = tool_specs()["get_weather"].definition["function"]
    assert weather["description"] == proto_comment_above("message GetWeatherRequest")
    place = weather["parameters"]["properties"]["place"]
    assert place["description"] == proto_comment_above("string place = 1 [(required_argument)")
    assert place["type"] == "string"


def test_context_fields_are_hidden_and_required_ones_required() -> None:
    specs = tool_specs()
    fortune = specs["get_fortune"]
    assert fortune.definition["function"]["parameters"]["properties"] == {}
    assert set(fortune.context_fields) == {"user_id", "timezone", "language"}
    weather = specs["get_weather"].definition["function"]["parameters"]
    assert set(weather["properties"]) == {"place"}
    assert weather["required"] == ["place"]
    assert weather["additionalProperties"] is False
    time_parameters = specs["get_time"].definition["function"]["parameters"]
    assert set(time_parameters["properties"]) == {"place", "timezone"}
    assert time_parameters["required"] == []
    assert specs["calculate"].definition["function"]["parameters"]["required"] == ["expression"]


def test_no_description_is_empty() -> None:
    for definition in tool_definitions():
        function = definition["function"]
        assert re.search(r"\w{3,}", function["description"]), function["name"]
        for name, schema in function["parameters"]["properties"].items():
            assert re.search(r"\w{3,}", schema["description"]), (function["name"], name)
