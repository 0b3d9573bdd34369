"""Language tags: the few languages the suite speaks, and how a BCP-47 tag maps onto them."""

from __future__ import annotations

from typing import Final, Literal, TypeGuard

Language = Literal["ja", "en", "ko"]

SUPPORTED: Final[tuple[Language, ...]] = ("ja", "en", "ko")


def is_supported(tag: str) -> TypeGuard[Language]:
    return tag in SUPPORTED


def base_language(tag: str, default: Language) -> Language:
    """The supported language of a BCP-47 tag ("ja-JP" -> "ja", "EN_us" -> "en").

    An empty tag gives `default`; a well-formed tag of a language the suite does not speak gives
    English, the most widely understood of the three.
    """
    primary = tag.strip().replace("_", "-").split("-", 1)[0].lower()
    if not primary:
        return default
    if is_supported(primary):
        return primary
    return "en"
