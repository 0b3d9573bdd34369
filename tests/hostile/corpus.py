"""The hostile-input corpus (corpus.yaml): loading it, and turning its compact notations into the
strings, bytes and metadata the runners send.

Text anywhere in an entry is a plain string, or one of:

* `{repeat: TEXT, times: N}`: TEXT N times (long messages without a megabyte in the file);
* `{tags: ASCII}`: ASCII written in Unicode tag characters (invisible, readable by an LLM);
* a list of texts, concatenated.

Raw protobuf requests (`raw:`) are lists of `[field_number, value]`, each a length-delimited
field; a value `hex:…` is those bytes as they are, any other value its UTF-8. `raw_hex:` is a
whole message written by hand (truncated lengths, wrong wire types).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Final

import grpc
import yaml

CORPUS: Final = Path(__file__).with_name("corpus.yaml")

# What the issue asks the corpus to cover, one category each.
REQUIRED_CATEGORIES: Final = frozenset(
    {
        "calculator_bomb",
        "sandbox_escape",
        "injection_tool_call",
        "injection_system_prompt",
        "injection_persona",
        "long_message",
        "empty_message",
        "emoji_bomb",
        "mixed_scripts",
        "zero_width",
        "bidi",
        "tag_characters",
        "invalid_utf8",
        "nul_bytes",
        "user_id_abuse",
        "user_id_lookalike",
        "metadata_tricks",
    }
)
TARGETS: Final = frozenset({"turn", "chat_grpc", "tools_grpc"})
STATUS_NAMES: Final = frozenset(code.name for code in grpc.StatusCode)


def load() -> list[dict[str, Any]]:
    entries = yaml.safe_load(CORPUS.read_text(encoding="utf-8"))
    assert isinstance(entries, list), "corpus.yaml holds a list of entries"
    return entries


def text(spec: Any) -> str:
    """The string a text notation stands for."""
    if spec is None:
        return ""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, int | float):
        return str(spec)
    if isinstance(spec, list):
        return "".join(text(part) for part in spec)
    if isinstance(spec, dict):
        if "repeat" in spec:
            return text(spec["repeat"]) * int(spec["times"])
        if "tags" in spec:
            return "".join(chr(0xE0000 + ord(ch)) for ch in spec["tags"])
    raise ValueError(f"not a text notation: {spec!r}")


def seen_by_an_llm(message: str) -> str:
    """What an LLM reads in `message`: tag characters as the ASCII they encode."""
    return "".join(
        chr(ord(ch) - 0xE0000) if 0xE0020 <= ord(ch) <= 0xE007E else ch for ch in message
    )


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def raw_message(entry: dict[str, Any]) -> bytes:
    """The request bytes of an entry with `raw:` or `raw_hex:`."""
    if "raw_hex" in entry:
        return bytes.fromhex(entry["raw_hex"])
    out = bytearray()
    for number, value in entry["raw"]:
        payload = (
            bytes.fromhex(value[4:])
            if isinstance(value, str) and value.startswith("hex:")
            else text(value).encode("utf-8")
        )
        out += _varint(number << 3 | 2) + _varint(len(payload)) + payload
    return bytes(out)


def problems(entries: list[dict[str, Any]]) -> list[str]:
    """What is wrong with the corpus as a whole: too few entries, repeated ids, missing
    categories, entries without a known target, expected statuses that are no status."""
    found = []
    if len(entries) < 150:
        found.append(f"{len(entries)} entries; at least 150 are wanted")
    repeated = [i for i, n in Counter(e.get("id") for e in entries).items() if n > 1]
    if repeated:
        found.append(f"repeated ids: {repeated}")
    missing = REQUIRED_CATEGORIES - {e.get("category") for e in entries}
    if missing:
        found.append(f"categories without entries: {sorted(missing)}")
    for entry in entries:
        where = entry.get("id", "?")
        if entry.get("category") not in REQUIRED_CATEGORIES:
            found.append(f"{where}: unknown category {entry.get('category')!r}")
        if entry.get("target") not in TARGETS:
            found.append(f"{where}: unknown target {entry.get('target')!r}")
        for step in [entry, *entry.get("steps", []), *entry.get("turns", [])]:
            wanted = step.get("expect", {}).get("status", "OK")
            for code in wanted if isinstance(wanted, list) else [wanted]:
                if code not in STATUS_NAMES:
                    found.append(f"{where}: {code!r} is not a gRPC status name")
    return found
