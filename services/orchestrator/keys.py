"""Every Redis key name the orchestrator uses, built in one place.

User ids are arbitrary caller strings (they may contain `{`, `}`, `*` or `:`), so no key ever
contains one: a user's keys carry a digest of the id instead. That digest is also the Redis Cluster
hash tag, so all keys of one user live in one slot and a Lua script or MULTI may span them. Keys
are only ever addressed exactly; nothing here builds a pattern from a user id.
"""

from __future__ import annotations

import hashlib

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


def global_key(concern: str) -> str:
    """The key of a concern shared by all users (global limits, totals)."""
    return f"{PREFIX}:global:{concern}"
