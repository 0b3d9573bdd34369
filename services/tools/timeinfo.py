"""Local time by IANA time zone or by place name."""

from __future__ import annotations

import functools
import zoneinfo
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from services.tools.gazetteer import Gazetteer, Place

# The longest IANA key today is 32 characters ("America/Argentina/ComodRivadavia"); twice that
# leaves room for new zones while refusing junk before any work is done on it.
MAX_ZONE_LENGTH: Final = 64

# Present in a system zoneinfo directory but not time zones a caller can mean: "localtime" is
# whatever the host is set to, "Factory" a placeholder with the abbreviation "-00".
_NOT_ZONES: Final = frozenset({"localtime", "posixrules", "factory"})

_WEEKDAYS: Final = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

# Error messages quote the caller's text; this keeps a megabyte of junk out of them and the logs.
_MAX_QUOTED: Final = 80


class UnknownTimezone(ValueError):
    def __init__(self, zone: str) -> None:
        super().__init__(f"unknown time zone {_quote(zone)}")
        self.zone = zone


class UnknownPlace(LookupError):
    def __init__(self, place: str) -> None:
        super().__init__(f"unknown place {_quote(place)}")
        self.place = place


@dataclass(frozen=True, slots=True)
class LocalTime:
    local_time: str
    timezone: str
    utc_offset: str
    utc_offset_seconds: int
    abbreviation: str
    is_dst: bool
    weekday: str
    place: str
    country_code: str


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


def local_time(zone: str, now: datetime, place: Place | None = None) -> LocalTime:
    """The time `now` (timezone-aware) in `zone`, described by `place` when one was looked up."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    tz = resolve_zone(zone)
    local = now.astimezone(tz).replace(microsecond=0)
    offset = local.utcoffset() or timedelta(0)
    offset_seconds = int(offset.total_seconds())
    return LocalTime(
        local_time=local.isoformat(),
        timezone=tz.key,
        utc_offset=_format_offset(offset_seconds),
        utc_offset_seconds=offset_seconds,
        abbreviation=local.tzname() or "",
        is_dst=bool(local.dst()),
        # Not strftime("%A"): that follows the process locale.
        weekday=_WEEKDAYS[local.weekday()],
        place=place.name if place is not None else "",
        country_code=place.country_code if place is not None else "",
    )


def get_time(
    gazetteer: Gazetteer, *, place: str, timezone: str, default_timezone: str, now: datetime
) -> LocalTime:
    """Local time at `place` if given, else in `timezone` if given, else in `default_timezone`.

    Raises UnknownPlace for a place the gazetteer does not know and UnknownTimezone for a bad zone.
    """
    if place.strip():
        found = gazetteer.find(place)
        if found is None:
            raise UnknownPlace(place)
        return local_time(found.timezone, now, found)
    if timezone.strip():
        return local_time(timezone, now)
    return local_time(default_timezone, now)


@functools.cache
def _zone_keys() -> dict[str, str]:
    # Reading the zone directory takes ~80 ms, so it happens once, on first use.
    return {
        key.casefold(): key
        for key in zoneinfo.available_timezones()
        if key.casefold() not in _NOT_ZONES
    }


def _format_offset(seconds: int) -> str:
    sign = "-" if seconds < 0 else "+"
    hours, rest = divmod(abs(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{sign}{hours:02d}:{minutes:02d}"
    # Only historical local mean times have second offsets; keep them exact rather than rounded.
    return f"{text}:{secs:02d}" if secs else text


def _quote(text: str) -> str:
    if len(text) > _MAX_QUOTED:
        return repr(text[:_MAX_QUOTED]) + "..."
    return repr(text)
