"""Local time by IANA time zone or by place name."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from services.common.gazetteer import Gazetteer, Place, UnknownPlace, check_place
from services.common.timezones import format_offset, resolve_zone

_WEEKDAYS: Final = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


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
        utc_offset=format_offset(offset_seconds),
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

    Raises UnknownPlace for a place the gazetteer does not know, UnknownTimezone for a bad zone
    and ValueError for a place name too long to be one.
    """
    if check_place(place):
        found = gazetteer.find(place)
        if found is None:
            raise UnknownPlace(place)
        return local_time(found.timezone, now, found)
    if timezone.strip():
        return local_time(timezone, now)
    return local_time(default_timezone, now)
