"""What a tool is: derived from the ToolService contract, complete at start-up, and parsing the
LLM's arguments as untrusted input."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from chatagent.v1 import tools_pb2
from services.orchestrator import toolspec
from services.orchestrator.planner import Intent
from services.orchestrator.planner.intents import TOOL_INTENTS
from services.orchestrator.toolspec import (
    MAX_ARGUMENT_BYTES,
    MAX_ARGUMENT_DEPTH,
    IncompleteToolSpecs,
    ToolArgumentError,
    ToolContext,
    ToolSpec,
    canonical_arguments,
    spec_for_intent,
    tool_specs,
)

PROTO = Path(__file__).resolve().parents[1] / "protos/chatagent/v1/tools.proto"
CONTEXT = ToolContext(user_id="alice", language="ko", timezone="Asia/Seoul", place="서울")


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


def spec(name: str) -> ToolSpec:
    return tool_specs()[name]


@pytest.fixture
def rebuilt_specs() -> Iterator[None]:
    """Specs built afresh in the test (after it patches what they are built from), and the
    real ones rebuilt after it, whatever it did."""
    toolspec.tool_specs.cache_clear()
    toolspec.spec_for_intent.cache_clear()
    yield
    toolspec.tool_specs.cache_clear()
    toolspec.spec_for_intent.cache_clear()


# -- derived from the contract -----------------------------------------------------------------


def test_every_tool_rpc_is_a_tool_named_in_snake_case() -> None:
    assert list(tool_specs()) == ["get_time", "get_weather", "get_fortune", "calculate"]
    assert [s.method for s in tool_specs().values()] == [
        m.name for m in toolspec.TOOL_SERVICE.methods
    ]
    assert spec("get_weather").request_class is tools_pb2.GetWeatherRequest


def test_descriptions_are_the_proto_comments() -> None:
    weather = spec("get_weather")
    assert weather.description == proto_comment_above("message GetWeatherRequest")
    place = weather.parameters["properties"]["place"]
    assert place["description"] == proto_comment_above("string place = 1 [(context_default)")
    assert place["type"] == "string"


def test_context_fields_are_hidden_and_required_ones_required() -> None:
    fortune = spec("get_fortune")
    assert fortune.parameters["properties"] == {}
    assert set(fortune.context_fields) == {"user_id", "timezone", "language"}
    weather = spec("get_weather")
    assert set(weather.parameters["properties"]) == {"place"}
    assert weather.context_fields == ("language",)
    assert weather.parameters["additionalProperties"] is False
    time_parameters = spec("get_time").parameters
    assert set(time_parameters["properties"]) == {"place", "timezone"}
    assert spec("calculate").required == ("expression",)


def test_context_defaults_are_offered_but_not_required() -> None:
    # The LLM may name another place or zone; when it names none, the turn's are used.
    assert spec("get_weather").defaulted_fields == ("place",)
    assert spec("get_weather").required == ()
    assert spec("get_time").defaulted_fields == ("timezone",)
    assert spec("get_time").required == ()


def test_no_description_is_empty() -> None:
    for tool in tool_specs().values():
        assert re.search(r"\w{3,}", tool.description), tool.name
        for name, schema in tool.parameters["properties"].items():
            assert re.search(r"\w{3,}", schema["description"]), (tool.name, name)


def test_every_tool_has_a_fallback_and_its_own_intent() -> None:
    specs = tool_specs().values()
    for tool in specs:
        fallback = tool.fallback()
        assert fallback["fallback"] is True
        assert re.search(r"\w{3,}", fallback["error"]), tool.name
        json.dumps(fallback)  # it goes to the LLM as a tool result
    intents = [tool.intent for tool in specs]
    assert len(set(intents)) == len(intents)
    assert set(intents) == TOOL_INTENTS
    assert {intent: tool.name for intent, tool in spec_for_intent().items()} == {
        Intent.TIME: "get_time",
        Intent.WEATHER: "get_weather",
        Intent.FORTUNE: "get_fortune",
        Intent.CALCULATION: "calculate",
    }


# -- checked complete at start-up --------------------------------------------------------------


@pytest.mark.usefixtures("rebuilt_specs")
def test_an_rpc_without_behaviour_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(toolspec._BEHAVIOUR, "GetFortune")

    with pytest.raises(IncompleteToolSpecs, match=r"ToolService\.GetFortune .*_BEHAVIOUR"):
        tool_specs()
    with pytest.raises(IncompleteToolSpecs, match="GetFortune"):
        spec_for_intent()


@pytest.mark.usefixtures("rebuilt_specs")
def test_behaviour_for_an_rpc_the_contract_lacks_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(
        toolspec._BEHAVIOUR, "GetHoroscope", toolspec._Behaviour(Intent.FORTUNE, "down")
    )

    with pytest.raises(IncompleteToolSpecs, match="GetHoroscope"):
        tool_specs()


@pytest.mark.usefixtures("rebuilt_specs")
def test_a_context_field_the_turn_cannot_fill_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(toolspec, "_CONTEXT_FIELDS", toolspec._CONTEXT_FIELDS - {"timezone"})

    with pytest.raises(IncompleteToolSpecs, match=r"GetTimeRequest\.timezone"):
        tool_specs()


def test_numbers_and_booleans_of_a_future_rpc_get_json_types() -> None:
    """A new RPC whose request has numeric and boolean fields (GetTimeResponse stands in)."""
    method = SimpleNamespace(name="GetTime", input_type=tools_pb2.GetTimeResponse.DESCRIPTOR)
    future = toolspec._spec(method, {})  # a stand-in for a MethodDescriptor
    properties = future.parameters["properties"]

    assert properties["utc_offset_seconds"]["type"] == "integer"
    assert properties["is_dst"]["type"] == "boolean"
    assert properties["local_time"]["type"] == "string"

    parsed = future.parse('{"utc_offset_seconds": -18000, "is_dst": true}', CONTEXT)
    assert parsed == tools_pb2.GetTimeResponse(utc_offset_seconds=-18000, is_dst=True)
    for arguments, problem in [
        ('{"utc_offset_seconds": true}', "utc_offset_seconds must be an? integer"),
        ('{"utc_offset_seconds": 1.5}', "utc_offset_seconds must be an? integer"),
        ('{"is_dst": 1}', "is_dst must be a boolean"),
        ('{"utc_offset_seconds": 1099511627776}', "utc_offset_seconds is out of range"),
    ]:
        with pytest.raises(ToolArgumentError, match=problem):
            future.parse(arguments, CONTEXT)


# -- parsing the LLM's arguments ---------------------------------------------------------------


def test_arguments_become_the_request() -> None:
    request = spec("calculate").parse('{"expression": "(1 + 2) * 3"}', CONTEXT)

    assert request == tools_pb2.CalculateRequest(expression="(1 + 2) * 3")


@pytest.mark.parametrize(
    ("name", "arguments", "message"),
    [
        ("calculate", '{"expression": 12}', "calculate: the argument expression must be a string"),
        ("calculate", '{"expression": null}', "the argument expression must be a string"),
        ("get_time", '{"place": true}', "get_time: the argument place must be a string"),
        ("get_weather", '{"place": ["東京"]}', "get_weather: the argument place must be a string"),
        ("get_weather", '{"place": {"name": "東京"}}', "the argument place must be a string"),
    ],
)
def test_an_argument_of_the_wrong_type_is_named(name: str, arguments: str, message: str) -> None:
    with pytest.raises(ToolArgumentError, match=re.escape(message)):
        spec(name).parse(arguments, CONTEXT)


def test_an_unknown_argument_is_named_with_the_known_ones() -> None:
    with pytest.raises(ToolArgumentError) as raised:
        spec("get_weather").parse('{"city": "大阪"}', CONTEXT)
    assert str(raised.value) == "get_weather has no argument 'city'; its arguments: place"

    with pytest.raises(ToolArgumentError) as raised:
        spec("get_fortune").parse('{"wish": "money"}', CONTEXT)
    assert str(raised.value) == "get_fortune has no argument 'wish'; its arguments: none"


def test_a_long_unknown_argument_name_is_shortened_in_the_message() -> None:
    name = "x" * 3000
    with pytest.raises(ToolArgumentError) as raised:
        spec("get_time").parse(json.dumps({name: 1}), CONTEXT)
    assert len(str(raised.value)) < 150
    assert "xxxx…" in str(raised.value)


@pytest.mark.parametrize(
    "arguments",
    ["{}", "", "   ", '{"expression": ""}'],
    ids=["empty-object", "empty", "spaces", "blank"],
)
def test_a_missing_required_argument_is_named(arguments: str) -> None:
    with pytest.raises(ToolArgumentError, match=r"calculate needs the argument\(s\): expression$"):
        spec("calculate").parse(arguments, CONTEXT)


def test_context_fields_come_from_the_turn_whatever_the_llm_says() -> None:
    fortune = spec("get_fortune").parse(
        '{"user_id": "mallory", "timezone": "UTC", "language": "en"}', CONTEXT
    )
    assert fortune == tools_pb2.GetFortuneRequest(
        user_id="alice", timezone="Asia/Seoul", language="ko"
    )

    weather = spec("get_weather").parse('{"place": "大阪", "language": "en"}', CONTEXT)
    assert weather == tools_pb2.GetWeatherRequest(place="大阪", language="ko")


def test_defaulted_fields_are_filled_only_when_empty() -> None:
    weather = spec("get_weather")
    for empty in ("{}", '{"place": ""}'):
        assert weather.parse(empty, CONTEXT) == tools_pb2.GetWeatherRequest(
            place="서울", language="ko"
        )
    assert weather.parse('{"place": "London"}', CONTEXT) == tools_pb2.GetWeatherRequest(
        place="London", language="ko"
    )

    assert spec("get_time").parse("{}", CONTEXT) == tools_pb2.GetTimeRequest(timezone="Asia/Seoul")
    assert spec("get_time").parse('{"timezone": "America/New_York"}', CONTEXT) == (
        tools_pb2.GetTimeRequest(timezone="America/New_York")
    )
    # A place asked about is looked up as given; the zone stays the user's, the place decides.
    assert spec("get_time").parse('{"place": "London"}', CONTEXT) == tools_pb2.GetTimeRequest(
        place="London", timezone="Asia/Seoul"
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ("{not json", "arguments are not valid JSON"),
        ('{"expression": "1+1"', "arguments are not valid JSON"),
        ('["1+1"]', "arguments must be a JSON object"),
        ('"1+1"', "arguments must be a JSON object"),
        ("null", "arguments must be a JSON object"),
    ],
)
def test_malformed_arguments_are_refused(arguments: str, message: str) -> None:
    with pytest.raises(ToolArgumentError, match=re.escape(message)):
        spec("calculate").parse(arguments, CONTEXT)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ("[" * 100_000, f"arguments are longer than {MAX_ARGUMENT_BYTES} bytes"),
        ("{" * 1_000_000, f"arguments are longer than {MAX_ARGUMENT_BYTES} bytes"),
        (
            json.dumps({"expression": "9" * MAX_ARGUMENT_BYTES}),
            f"arguments are longer than {MAX_ARGUMENT_BYTES} bytes",
        ),
        # Fewer characters than the bound, more bytes: 1,500 kanji are 4,500 bytes.
        (
            json.dumps({"expression": "一" * 1500}, ensure_ascii=False),
            f"arguments are longer than {MAX_ARGUMENT_BYTES} bytes",
        ),
        ("[" * 2000 + "]" * 2000, f"nested deeper than {MAX_ARGUMENT_DEPTH} levels"),
        ('{"a":' * 600 + "1" + "}" * 600, f"nested deeper than {MAX_ARGUMENT_DEPTH} levels"),
        ("[" * 4000, f"nested deeper than {MAX_ARGUMENT_DEPTH} levels"),
        ('{"a": [[[[1]]]]}', f"nested deeper than {MAX_ARGUMENT_DEPTH} levels"),
    ],
    ids=[
        "brackets-100k",
        "braces-1M",
        "long-value",
        "multibyte",
        "nested-arrays-4k",
        "nested-objects-4k",
        "unclosed-4k",
        "depth-5",
    ],
)
def test_oversized_or_deep_arguments_are_refused_before_parsing(
    arguments: str, message: str
) -> None:
    for tool in tool_specs().values():
        started = time.perf_counter()
        with pytest.raises(ToolArgumentError, match=re.escape(message)):
            tool.parse(arguments, CONTEXT)
        # No RecursionError, and no time spent: the bounds are checked first, in linear time.
        assert time.perf_counter() - started < 0.1, tool.name


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    expression = "[[[[[[(1+2)]]]]]] {{{{{{" + '\\"[[[[[['
    arguments = json.dumps({"expression": expression})

    request = spec("calculate").parse(arguments, CONTEXT)

    assert request == tools_pb2.CalculateRequest(expression=json.loads(arguments)["expression"])


def test_arguments_at_the_bounds_are_accepted() -> None:
    padding = MAX_ARGUMENT_BYTES - len(json.dumps({"expression": ""}))
    arguments = json.dumps({"expression": "1" * padding})
    assert len(arguments.encode()) == MAX_ARGUMENT_BYTES

    assert spec("calculate").parse(arguments, CONTEXT) == tools_pb2.CalculateRequest(
        expression="1" * padding
    )


def test_tool_argument_errors_are_value_errors_for_the_llm() -> None:
    # The runner turns them into an error result the LLM reads; nothing escapes as another type.
    weird: list[Any] = [
        "\x00",
        "{}" * 3000,
        '{"expression": NaN}',
        '{"expression": 1e999}',
        "\ud800",
    ]
    for arguments in weird:
        with pytest.raises(ToolArgumentError):
            spec("calculate").parse(arguments, CONTEXT)


def test_canonical_arguments_ignore_order_and_spacing() -> None:
    assert canonical_arguments('{"place": "東京", "timezone": "Asia/Tokyo"}') == (
        canonical_arguments('{ "timezone":"Asia/Tokyo",\n"place":"東京" }')
    )
    assert canonical_arguments('{"place": "東京"}') != canonical_arguments('{"place": "大阪"}')
    # Unusable arguments stay as written, so two different malformed calls stay apart.
    assert canonical_arguments("[" * 100_000) == "[" * 100_000
    assert canonical_arguments("{oops") != canonical_arguments("{oops!")
