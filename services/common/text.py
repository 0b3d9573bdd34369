"""Small text helpers shared by services."""

from __future__ import annotations

import re
from typing import Final

# Error messages quote the caller's text; this keeps a megabyte of junk out of them and the logs.
MAX_QUOTED: Final = 80


def quoted(text: str) -> str:
    """`text` as repr() for an error message, cut to MAX_QUOTED characters."""
    if len(text) > MAX_QUOTED:
        return repr(text[:MAX_QUOTED]) + "..."
    return repr(text)


# C0 controls but tab and newline (ESC starts terminal escapes; CR rewrites a printed line), DEL,
# C1 controls, and the bidi embedding, override and isolate controls ("Trojan Source").
_UNPRINTABLE: Final = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def without_controls(text: str) -> str:
    """`text` without the control characters a reader's terminal or display would act on."""
    return _UNPRINTABLE.sub("", text)
