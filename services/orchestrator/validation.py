"""Checks on a chat request before anything is done or stored for it.

Each failure names the field and the problem; the servicer answers INVALID_ARGUMENT with it.
"""

from __future__ import annotations

import re
from typing import Final

from services.common.text import quoted
from services.common.timezones import UnknownTimezone, resolve_zone
from services.common.validation import InvalidArgument, check_user_id

MAX_REQUEST_ID_CHARS: Final = 128

# Embedding, override and isolate controls reorder how text is displayed ("Trojan Source"):
# an id or message carrying them can show something other than what it is.
_BIDI_CONTROLS: Final = re.compile("[\u202a-\u202e\u2066-\u2069]")
# C0 and C1 controls other than tab, newline and carriage return, and DEL.
_CONTROLS: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_LANGUAGE_TAG: Final = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*")


def check_message(message: str, max_chars: int) -> None:
    if not message.strip():
        raise InvalidArgument("message", "is empty")
    if len(message) > max_chars:
        raise InvalidArgument(
            "message",
            f"has {len(message)} characters; at most {max_chars} are allowed",
        )
    if "\x00" in message:
        raise InvalidArgument("message", "contains a NUL character")
    control = _CONTROLS.search(message)
    if control:
        raise InvalidArgument(
            "message", f"contains the control character U+{ord(control.group()):04X}"
        )
    bidi = _BIDI_CONTROLS.search(message)
    if bidi:
        raise InvalidArgument(
            "message",
            f"contains the bidirectional control character U+{ord(bidi.group()):04X}",
        )


def check_language(language: str) -> None:
    if language and not _LANGUAGE_TAG.fullmatch(language):
        raise InvalidArgument("language", f"{quoted(language)} is not a BCP-47 language tag")


def check_timezone(timezone: str) -> None:
    if timezone:
        try:
            resolve_zone(timezone)
        except UnknownTimezone as exc:
            raise InvalidArgument("timezone", str(exc)) from None


def check_request_id(request_id: str) -> None:
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidArgument("request_id", f"must be at most {MAX_REQUEST_ID_CHARS} characters")
    if request_id and not request_id.isprintable():
        raise InvalidArgument("request_id", "must be printable characters only")


def check_turn(
    *,
    user_id: str,
    message: str,
    language: str,
    timezone: str,
    request_id: str,
    max_message_chars: int,
) -> None:
    """Raises InvalidArgument for the first bad field, in the order a caller would fix them."""
    check_user_id(user_id)
    check_message(message, max_message_chars)
    check_language(language)
    check_timezone(timezone)
    check_request_id(request_id)
