from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime, timedelta, timezone

import pytest

from services.common.gazetteer import Gazetteer, Place, UnknownPlace, load_gazetteer, normalize_name
from services.common.timezones import UnknownTimezone, resolve_zone
from services.tools.timeinfo import LocalTime, get_time, local_time

WINTER = datetime(2026, 1, 15, 17, 0, 0, tzinfo=UTC)
SUMMER = datetime(2026, 7, 15, 17, 0, 0, tzinfo=UTC)
TOKYO_MORNING = datetime(2026, 11, 26, 0, 30, 0, 123456, tzinfo=UTC)


@pytest.fixture(scope="module")
def gazetteer() -> Gazetteer:
    return load_gazetteer()


def test_tokyo() -> None:
    assert local_time("Asia/Tokyo", TOKYO_MORNING) == LocalTime(
        local_time="2026-11-26T09:30:00+09:00",
        timezone="Asia/Tokyo",
        utc_offset="+09:00",
        utc_offset_seconds=9 * 3600,
        abbreviation="JST",
        is_dst=False,
        weekday="Thursday",
        place="",
        country_code="",
    )


def test_new_york_winter_is_standard_time(gazetteer: Gazetteer) -> None:
    result = get_time(gazetteer, place="New York", timezone="", default_timezone="UTC", now=WINTER)
    assert result.local_time == "2026-01-15T12:00:00-05:00"
    assert (result.utc_offset, result.utc_offset_seconds) == ("-05:00", -5 * 3600)
    assert (result.abbreviation, result.is_dst) == ("EST", False)
    assert (result.place, result.country_code) == ("New York City", "US")
    assert result.timezone == "America/New_York"


def test_new_york_summer_is_daylight_saving_time(gazetteer: Gazetteer) -> None:
    result = get_time(gazetteer, place="뉴욕", timezone="", default_timezone="UTC", now=SUMMER)
    assert result.local_time == "2026-07-15T13:00:00-04:00"
    assert (result.utc_offset, result.utc_offset_seconds) == ("-04:00", -4 * 3600)
    assert (result.abbreviation, result.is_dst) == ("EDT", True)
    assert result.weekday == "Wednesday"


def test_kathmandu_has_a_quarter_hour_offset() -> None:
    result = local_time("Asia/Kathmandu", WINTER)
    assert result.utc_offset == "+05:45"
    assert result.utc_offset_seconds == 5 * 3600 + 45 * 60
    assert result.local_time == "2026-01-15T22:45:00+05:45"


def test_utc_and_gmt() -> None:
    utc = local_time("UTC", WINTER)
    assert (utc.local_time, utc.utc_offset, utc.timezone) == (
        "2026-01-15T17:00:00+00:00",
        "+00:00",
        "UTC",
    )
    assert local_time("GMT", WINTER).utc_offset == "+00:00"


def test_any_aware_now_gives_the_same_instant() -> None:
    in_tokyo = WINTER.astimezone(timezone(timedelta(hours=9)))
    assert local_time("Europe/London", in_tokyo) == local_time("Europe/London", WINTER)


def test_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        local_time("Asia/Tokyo", datetime(2026, 1, 1))


def test_place_details_are_reported() -> None:
    place = Place("Testville", "ZZ", 0.0, 0.0, "Asia/Seoul", 1)
    result = local_time(place.timezone, WINTER, place)
    assert (result.place, result.country_code, result.abbreviation) == ("Testville", "ZZ", "KST")


@pytest.mark.parametrize(
    ("given", "key"),
    [
        ("asia/tokyo", "Asia/Tokyo"),
        ("ASIA/TOKYO", "Asia/Tokyo"),
        (" America/New_York ", "America/New_York"),
        ("utc", "UTC"),
        ("GMT", "GMT"),
    ],
)
def test_zone_names_are_case_insensitive(given: str, key: str) -> None:
    assert resolve_zone(given).key == key


def test_place_wins_over_timezone(gazetteer: Gazetteer) -> None:
    result = get_time(
        gazetteer,
        place="東京",
        timezone="America/New_York",
        default_timezone="Europe/London",
        now=WINTER,
    )
    assert (result.timezone, result.place, result.country_code) == ("Asia/Tokyo", "Tokyo", "JP")


def test_timezone_wins_over_default(gazetteer: Gazetteer) -> None:
    result = get_time(
        gazetteer, place="  ", timezone="Asia/Seoul", default_timezone="Asia/Tokyo", now=WINTER
    )
    assert (result.timezone, result.place, result.country_code) == ("Asia/Seoul", "", "")


def test_default_timezone_when_nothing_given(gazetteer: Gazetteer) -> None:
    result = get_time(gazetteer, place="", timezone=" ", default_timezone="Asia/Tokyo", now=WINTER)
    assert (result.timezone, result.place, result.local_time) == (
        "Asia/Tokyo",
        "",
        "2026-01-16T02:00:00+09:00",
    )


def test_unknown_place_names_the_place(gazetteer: Gazetteer) -> None:
    with pytest.raises(UnknownPlace, match="unknown place 'Qwxzville'") as caught:
        get_time(
            gazetteer, place="Qwxzville", timezone="Asia/Tokyo", default_timezone="UTC", now=WINTER
        )
    assert isinstance(caught.value, LookupError)
    assert caught.value.place == "Qwxzville"


def test_unknown_place_does_not_fall_back_to_the_timezone() -> None:
    # An empty gazetteer knows no places: the caller asked about a place, so a zone's answer
    # would be an answer to a different question.
    empty = Gazetteer({})
    with pytest.raises(UnknownPlace):
        get_time(empty, place="Tokyo", timezone="Asia/Tokyo", default_timezone="UTC", now=WINTER)


def test_place_zone_comes_from_the_gazetteer() -> None:
    place = Place("Testville", "ZZ", 0.0, 0.0, "Asia/Kathmandu", 1)
    small = Gazetteer({normalize_name(place.name): place})
    result = get_time(small, place="testville", timezone="", default_timezone="UTC", now=WINTER)
    assert (result.timezone, result.utc_offset, result.place) == (
        "Asia/Kathmandu",
        "+05:45",
        "Testville",
    )


BAD_ZONES = [
    "",
    "   ",
    "Mars/Olympus",
    "Asia",
    "Asia/",
    "Asia/Tokyo/",
    "Asia/Tokyo/extra",
    "Asia//Tokyo",
    "Asia/../Asia/Tokyo",
    "../../etc/passwd",
    "/etc/localtime",
    "/usr/share/zoneinfo/Asia/Tokyo",
    "localtime",
    "posixrules",
    "Factory",
    "zone.tab",
    "tzdata.zi",
    ".",
    "..",
    "Asia/Tokyo\x00",
    "\x00",
    "Asia/\ud800",
    "A" * 65,
    "Asia/Tokyo" + " " * 100 + "x",
    "x" * 1_000_000,
    "+09:00",
    "JST",
]


@pytest.mark.parametrize("zone", BAD_ZONES)
def test_bad_zones_raise_unknown_timezone_and_nothing_else(zone: str) -> None:
    with pytest.raises(UnknownTimezone) as caught:
        resolve_zone(zone)
    assert isinstance(caught.value, ValueError)
    assert caught.value.zone == zone
    message = str(caught.value)
    assert message.startswith("unknown time zone ")
    assert repr(zone)[:40] in message
    assert len(message) < 200


def test_bad_zone_message_quotes_the_zone() -> None:
    with pytest.raises(UnknownTimezone) as caught:
        resolve_zone("Mars/Olympus")
    assert str(caught.value) == "unknown time zone 'Mars/Olympus'"


# A blank zone means "not given" to get_time, so only the non-blank ones can be bad there.
@pytest.mark.parametrize("zone", [zone for zone in BAD_ZONES if zone.strip()])
def test_bad_zones_through_get_time(gazetteer: Gazetteer, zone: str) -> None:
    with pytest.raises(UnknownTimezone):
        get_time(gazetteer, place="", timezone=zone, default_timezone="UTC", now=WINTER)


def test_bad_default_zone_raises_unknown_timezone(gazetteer: Gazetteer) -> None:
    with pytest.raises(UnknownTimezone, match="Nowhere/Land"):
        get_time(gazetteer, place="", timezone="", default_timezone="Nowhere/Land", now=WINTER)


def test_every_available_zone_resolves() -> None:
    keys = sorted(zoneinfo.available_timezones() - {"localtime", "posixrules", "Factory"})
    assert "Asia/Tokyo" in keys
    for key in keys:
        assert resolve_zone(key).key == key
