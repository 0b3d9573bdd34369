"""The Python mirrors of proto enums keep the proto's numbers and names: a number sent on the wire
means the same thing to every program that reads it (DESIGN.md: released numbers never change)."""

from __future__ import annotations

import enum

import pytest
from google.protobuf.descriptor import EnumDescriptor

from chatagent.v1 import chat_pb2, tools_pb2
from services.orchestrator.model import ToolStatus
from services.tools.fortune import FortuneLevel

MIRRORS: list[tuple[type[enum.IntEnum], EnumDescriptor, str]] = [
    (ToolStatus, chat_pb2.ToolCallStatus.DESCRIPTOR, "TOOL_CALL_STATUS_"),
    (FortuneLevel, tools_pb2.FortuneLevel.DESCRIPTOR, "FORTUNE_LEVEL_"),
]
IDS = [mirror.__name__ for mirror, _, _ in MIRRORS]


def proto_values(descriptor: EnumDescriptor, prefix: str) -> dict[str, int]:
    """The proto enum's values but UNSPECIFIED, by their name without the enum's prefix."""
    values: dict[str, int] = {}
    for value in descriptor.values:
        assert value.name.startswith(prefix), value.name  # Buf's ENUM_VALUE_PREFIX
        if value.number == 0:
            assert value.name == prefix + "UNSPECIFIED"
            continue
        values[value.name.removeprefix(prefix)] = value.number
    return values


@pytest.mark.parametrize(("mirror", "descriptor", "prefix"), MIRRORS, ids=IDS)
def test_every_proto_value_has_a_mirror_with_its_number(
    mirror: type[enum.IntEnum], descriptor: EnumDescriptor, prefix: str
) -> None:
    for name, number in proto_values(descriptor, prefix).items():
        assert name in mirror.__members__, f"{descriptor.full_name}.{prefix}{name} has no mirror"
        assert mirror[name].value == number, name


@pytest.mark.parametrize(("mirror", "descriptor", "prefix"), MIRRORS, ids=IDS)
def test_every_mirror_value_is_in_the_proto_with_its_number(
    mirror: type[enum.IntEnum], descriptor: EnumDescriptor, prefix: str
) -> None:
    proto = proto_values(descriptor, prefix)
    for member in mirror:
        assert member.name in proto, f"{mirror.__name__}.{member.name} is not in the proto"
        assert proto[member.name] == member.value, member.name
    # Nothing in the mirror stands for "not set": a result always says what happened.
    assert 0 not in {member.value for member in mirror}


@pytest.mark.parametrize(("mirror", "descriptor", "prefix"), MIRRORS, ids=IDS)
def test_a_mirror_value_goes_on_the_wire_as_the_proto_value(
    mirror: type[enum.IntEnum], descriptor: EnumDescriptor, prefix: str
) -> None:
    for member in mirror:
        assert descriptor.values_by_number[int(member)].name == prefix + member.name
