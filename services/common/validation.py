"""Checks every service applies the same way to what callers send."""

from __future__ import annotations

from typing import Final

MAX_USER_ID_CHARS: Final = 128


class InvalidArgument(ValueError):
    """A request field is wrong; the message starts with the field's name."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


def check_user_id(user_id: str) -> None:
    """A caller's user id: 1 to 128 printable characters, not only spaces."""
    if not user_id or not user_id.strip():
        raise InvalidArgument("user_id", "is required")
    if len(user_id) > MAX_USER_ID_CHARS:
        raise InvalidArgument("user_id", f"must be at most {MAX_USER_ID_CHARS} characters")
    if not user_id.isprintable():
        raise InvalidArgument(
            "user_id", "must be printable characters only (no control or formatting characters)"
        )
