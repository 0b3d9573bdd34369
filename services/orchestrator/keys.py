"""Every Redis key name the orchestrator uses, built in one place.

User ids and caller names are arbitrary strings (they may contain `{`, `}`, `*` or `:`), so no key
ever contains one: a user's keys carry a digest of the id instead. That digest is also the Redis
Cluster hash tag, so all keys of one user live in one slot and a Lua script or MULTI may span
them; likewise for a caller. Keys are only ever addressed exactly; nothing here builds a pattern
from a user id.
"""

from __future__ import annotations

import hashlib
import unicodedata

PREFIX = "chatagent"


def digest(value: str) -> str:
    """A fixed-length, pattern-free stand-in for an arbitrary string (128 bits of SHA-256)."""
    return hashlib.sha256(value.encode()).hexdigest()[:32]


def user_tag(user_id: str) -> str:
    """The hash tag (without braces) shared by every key of `user_id`."""
    return digest(user_id)


def user_key(user_id: str, concern: str) -> str:
    """The key of one concern ("history", "prefs", ...) of one user."""
    return f"{PREFIX}:user:{{{user_tag(user_id)}}}:{concern}"


def caller_key(caller: str, concern: str) -> str:
    """The key of one concern of one caller (a backend calling on behalf of its users)."""
    return f"{PREFIX}:caller:{{{digest(caller)}}}:{concern}"


def global_key(concern: str) -> str:
    """The key of a concern shared by all users (global limits, totals)."""
    return f"{PREFIX}:global:{concern}"


def lookalike(user_id: str) -> str:
    """One spelling for ids that only look different ("ａｌｉｃｅ", "Alice ", "alice"): NFKC,
    case-folded, whitespace collapsed. Rate limits count by it, so a caller cannot multiply a
    user's allowance by rotating look-alike spellings; history stays under the exact id."""
    return " ".join(unicodedata.normalize("NFKC", user_id).casefold().split())
