"""IANA time zones: validating a caller's zone name, and writing UTC offsets."""

from __future__ import annotations

import functools
import zoneinfo
from typing import Final

from services.common.text import quoted

# The longest IANA key today is 32 characters ("America/Argentina/ComodRivadavia"); twice that
# leaves room for new zones while refusing junk before any work is done on it.
MAX_ZONE_LENGTH: Final = 64

# Present in a system zoneinfo directory but not time zones a caller can mean: "localtime" is
# whatever the host is set to, "Factory" a placeholder with the abbreviation "-00".
_NOT_ZONES: Final = frozenset({"localtime", "posixrules", "factory"})


class UnknownTimezone(ValueError):
    def __init__(self, zone: str) -> None:
        super().__init__(f"unknown time zone {quoted(zone)}")
        self.zone = zone


def resolve_zone(name: str) -> zoneinfo.ZoneInfo:
    """The zone with IANA key `name`, matched case-insensitively ("asia/tokyo" -> Asia/Tokyo).

    Raises UnknownTimezone, and nothing else, for any string that is not such a key.
    """
    stripped = name.strip()
    if not stripped or len(stripped) > MAX_ZONE_LENGTH:
        raise UnknownTimezone(name)
    # Only keys from the known set reach ZoneInfo, so path tricks ("../../etc/passwd",
    # "/etc/localtime"), NUL bytes and lone surrogates never touch the file system.
    key = _zone_keys().get(stripped.casefold())
    if key is None:
        raise UnknownTimezone(name)
    try:
        return zoneinfo.ZoneInfo(key)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as exc:
        # The zone files changed under us since the key set was read.
        raise UnknownTimezone(name) from exc


@functools.cache
def _zone_keys() -> dict[str, str]:
    # Reading the zone directory takes ~80 ms, so it happens once, on first use.
    return {
        key.casefold(): key
        for key in zoneinfo.available_timezones()
        if key.casefold() not in _NOT_ZONES
    }


def format_offset(seconds: int) -> str:
    """A UTC offset as "+09:00", "-05:00" or "+05:45" (with seconds only where history has them)."""
    sign = "-" if seconds < 0 else "+"
    hours, rest = divmod(abs(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{sign}{hours:02d}:{minutes:02d}"
    return f"{text}:{secs:02d}" if secs else text
