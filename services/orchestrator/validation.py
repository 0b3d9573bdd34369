"""Checks on a chat request before anything is done or stored for it.

Each failure names the field and the problem; the servicer answers INVALID_ARGUMENT with it.

Invisible text: Unicode tag characters (U+E0000–U+E007F) render as nothing and are a known way
to smuggle instructions to an LLM past a human reader, so they are removed from the message,
except inside the emoji tag sequences they exist for (the flags of England, Scotland, Wales:
🏴 followed by tags and the cancel tag). A message with nothing visible left (only spaces,
zero-width and formatting characters, fillers, combining marks) is refused.
"""

from __future__ import annotations

import re
import unicodedata
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
_TAG_CHARACTERS: Final = re.compile("[\U000e0000-\U000e007f]")
# Only the three flags in use (Unicode's RGI set): any other tag run after 🏴 would smuggle text.
_EMOJI_TAG_SEQUENCE: Final = re.compile(
    "|".join(
        "\U0001f3f4" + "".join(chr(0xE0000 + ord(c)) for c in code) + "\U000e007f"
        for code in ("gbeng", "gbsct", "gbwls")
    )
)
# Categories that show nothing by themselves: separators, controls, formatting, marks, surrogates,
# private use and unassigned code points.
_INVISIBLE_CATEGORIES: Final = frozenset(
    {"Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co", "Cn", "Mn", "Mc", "Me"}
)
# Letters and symbols that render blank (Hangul fillers, the blank Braille pattern).
_BLANKS: Final = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def without_tag_characters(text: str) -> str:
    """`text` without Unicode tag characters, but for those of emoji tag sequences."""
    if not _TAG_CHARACTERS.search(text):
        return text
    kept = _EMOJI_TAG_SEQUENCE.split(text)
    sequences = _EMOJI_TAG_SEQUENCE.findall(text)
    parts = [_TAG_CHARACTERS.sub("", piece) for piece in kept]
    out = [parts[0]]
    for sequence, piece in zip(sequences, parts[1:], strict=True):
        out += [sequence, piece]
    return "".join(out)


def has_visible_text(text: str) -> bool:
    return any(
        ch not in _BLANKS and unicodedata.category(ch) not in _INVISIBLE_CATEGORIES for ch in text
    )


def check_message(message: str, max_chars: int) -> str:
    """The message as the turn uses it (tag characters removed); InvalidArgument otherwise."""
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
    cleaned = without_tag_characters(message)
    if not has_visible_text(cleaned):
        raise InvalidArgument("message", "has no visible text")
    return cleaned


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
) -> str:
    """The message as the turn uses it; raises InvalidArgument for the first bad field, in the
    order a caller would fix them."""
    check_user_id(user_id)
    cleaned = check_message(message, max_message_chars)
    check_language(language)
    check_timezone(timezone)
    check_request_id(request_id)
    return cleaned
