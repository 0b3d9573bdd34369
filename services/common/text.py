"""Small text helpers shared by services."""

from __future__ import annotations

from typing import Final

# Error messages quote the caller's text; this keeps a megabyte of junk out of them and the logs.
MAX_QUOTED: Final = 80


def quoted(text: str) -> str:
    """`text` as repr() for an error message, cut to MAX_QUOTED characters."""
    if len(text) > MAX_QUOTED:
        return repr(text[:MAX_QUOTED]) + "..."
    return repr(text)
