from __future__ import annotations

import time

import pytest

from services.common.gazetteer import (
    ALIASES,
    MAX_NAME_LENGTH,
    Gazetteer,
    Place,
    UnknownPlace,
    load_gazetteer,
    normalize_name,
    zone_city,
)


@pytest.fixture(scope="module")
def gazetteer() -> Gazetteer:
    return load_gazetteer()


@pytest.fixture(scope="module")
def bare() -> Gazetteer:
    """The data without the aliases, but for one that contradicts the data."""
    return Gazetteer.load(aliases={"Paris": ("Tokyo", "JP")})


@pytest.mark.parametrize(
    ("name", "english", "country", "zone"),
    [
        # Japanese
        ("東京", "Tokyo", "JP", "Asia/Tokyo"),
        ("東京都", "Tokyo", "JP", "Asia/Tokyo"),
        ("とうきょう", "Tokyo", "JP", "Asia/Tokyo"),
        ("トウキョウ", "Tokyo", "JP", "Asia/Tokyo"),
        ("大阪", "Osaka", "JP", "Asia/Tokyo"),
        ("大阪府", "Osaka", "JP", "Asia/Tokyo"),
        ("大阪市", "Osaka", "JP", "Asia/Tokyo"),
        ("おおさか", "Osaka", "JP", "Asia/Tokyo"),
        ("札幌", "Sapporo", "JP", "Asia/Tokyo"),
        ("京都府", "Kyoto", "JP", "Asia/Tokyo"),
        ("ニューヨーク", "New York City", "US", "America/New_York"),
        ("ロンドン", "London", "GB", "Europe/London"),
        ("ソウル", "Seoul", "KR", "Asia/Seoul"),
        ("仁川", "Incheon", "KR", "Asia/Seoul"),
        ("カトマンズ", "Kathmandu", "NP", "Asia/Kathmandu"),
        ("パリ", "Paris", "FR", "Europe/Paris"),
        # English
        ("Tokyo", "Tokyo", "JP", "Asia/Tokyo"),
        ("Tokyo-to", "Tokyo", "JP", "Asia/Tokyo"),
        ("Osaka-shi", "Osaka", "JP", "Asia/Tokyo"),
        ("Osaka City", "Osaka", "JP", "Asia/Tokyo"),
        ("Sapporo", "Sapporo", "JP", "Asia/Tokyo"),
        ("Seoul", "Seoul", "KR", "Asia/Seoul"),
        ("New York", "New York City", "US", "America/New_York"),
        ("New York City", "New York City", "US", "America/New_York"),
        ("London", "London", "GB", "Europe/London"),
        ("Paris", "Paris", "FR", "Europe/Paris"),
        ("Washington, D.C.", "Washington", "US", "America/New_York"),
        ("Sao Paulo", "São Paulo", "BR", "America/Sao_Paulo"),
        ("Zurich", "Zürich", "CH", "Europe/Zurich"),
        # Korean
        ("서울", "Seoul", "KR", "Asia/Seoul"),
        ("서울시", "Seoul", "KR", "Asia/Seoul"),
        ("도쿄", "Tokyo", "JP", "Asia/Tokyo"),
        ("뉴욕", "New York City", "US", "America/New_York"),
        ("오사카", "Osaka", "JP", "Asia/Tokyo"),
        ("오사카시", "Osaka", "JP", "Asia/Tokyo"),
        ("런던", "London", "GB", "Europe/London"),
        ("부산", "Busan", "KR", "Asia/Seoul"),
        ("부산광역시", "Busan", "KR", "Asia/Seoul"),
        ("삿포로", "Sapporo", "JP", "Asia/Tokyo"),
        ("교토", "Kyoto", "JP", "Asia/Tokyo"),
        ("오키나와", "Okinawa", "JP", "Asia/Tokyo"),
    ],
)
def test_finds_places_by_japanese_english_and_korean_names(
    gazetteer: Gazetteer, name: str, english: str, country: str, zone: str
) -> None:
    place = gazetteer.find(name)
    assert place is not None, name
    assert (place.name, place.country_code, place.timezone) == (english, country, zone)


def test_a_shared_name_goes_to_the_most_populous_city(gazetteer: Gazetteer) -> None:
    # Paris, Texas and London, Ontario exist; people asking for the time mean the capitals.
    paris = gazetteer.find("Paris")
    london = gazetteer.find("London")
    assert paris is not None
    assert paris.country_code == "FR"
    assert london is not None
    assert london.country_code == "GB"
    assert london.population > 1_000_000


def test_place_carries_coordinates_and_population(gazetteer: Gazetteer) -> None:
    tokyo = gazetteer.find("Tokyo")
    assert tokyo is not None
    assert tokyo.latitude == pytest.approx(35.69, abs=0.1)
    assert tokyo.longitude == pytest.approx(139.69, abs=0.1)
    assert tokyo.population > 5_000_000


@pytest.mark.parametrize(
    "spelling",
    ["tokyo", "TOKYO", "ToKyO", "  Tokyo  ", "ＴＯＫＹＯ", "ｔｏｋｙｏ", "\tTokyo\n", "東京\u3000"],
)
def test_case_width_and_spacing_do_not_matter(gazetteer: Gazetteer, spelling: str) -> None:
    place = gazetteer.find(spelling)
    assert place is not None
    assert place.name == "Tokyo"


@pytest.mark.parametrize(
    "spelling", ["new york", "NEW  YORK", "New-York", "new_york", "ｎｅｗ　ｙｏｒｋ", "New York."]
)
def test_separators_count_as_spaces(gazetteer: Gazetteer, spelling: str) -> None:
    place = gazetteer.find(spelling)
    assert place is not None
    assert place.name == "New York City"


def test_half_width_katakana_matches(gazetteer: Gazetteer) -> None:
    place = gazetteer.find("ｵｵｻｶ")
    assert place is not None
    assert place.name == "Osaka"


def test_normalize_name_rules() -> None:
    assert normalize_name(" Ｎｅｗ　York-City ") == "new york city"
    assert normalize_name("トウキョウ") == normalize_name("とうきょう") == "とうきょう"
    assert normalize_name("Washington, D.C.") == "washington d c"
    # Diacritics stay: stripping them would also strip Japanese voicing marks (ガ -> カ).
    assert normalize_name("Zürich") == "zürich"
    assert normalize_name("ガ") == "が"


@pytest.mark.parametrize(
    "name", ["Qwxzville", "not a city at all", "市", "시", "city", "", "   ", "-", "...", "\x00"]
)
def test_unknown_names_give_none(gazetteer: Gazetteer, name: str) -> None:
    assert gazetteer.find(name) is None


def test_overlong_names_give_none_without_work(gazetteer: Gazetteer) -> None:
    # A known name padded past the bound: found if the bound were not enforced.
    padded = "Tokyo" + " " * MAX_NAME_LENGTH
    assert gazetteer.find(padded[:MAX_NAME_LENGTH]) is not None
    assert gazetteer.find(padded) is None
    assert gazetteer.find("東" * 1_000_000) is None


@pytest.mark.parametrize(("alias", "target"), sorted(ALIASES.items()))
def test_each_alias_resolves_to_its_target(
    gazetteer: Gazetteer, alias: str, target: tuple[str, str]
) -> None:
    place = gazetteer.find(alias)
    assert place is not None
    assert (place.name, place.country_code) == target


def test_every_alias_fills_a_gap_in_the_data(bare: Gazetteer) -> None:
    # If geonames gains one of these names, the alias is dead weight (or, worse, disagrees).
    assert {alias: bare.find(alias) for alias in ALIASES} == dict.fromkeys(ALIASES)


def test_alias_never_overrides_the_data(bare: Gazetteer) -> None:
    paris = bare.find("Paris")
    assert paris is not None
    assert paris.country_code == "FR"


def test_population_threshold_limits_the_index(gazetteer: Gazetteer) -> None:
    big_only = Gazetteer.load(min_population=5_000_000)
    assert 0 < len(big_only) < len(gazetteer)
    assert big_only.find("Tokyo") is not None
    assert big_only.find("Sapporo") is None
    # An alias whose city is below the threshold finds nothing rather than failing.
    assert big_only.find("센다이") is None


def test_index_holds_every_name_once(gazetteer: Gazetteer) -> None:
    assert len(gazetteer) > 100_000


def test_lookups_are_dict_probes_not_scans(gazetteer: Gazetteer) -> None:
    # A miss runs every suffix variant, the slowest path. 10,000 of them take ~30 ms; a scan
    # of the ~300,000 keys per lookup would take minutes.
    names = ["Qwxzville City", "東京", "오사카시", "nowhere-shi"] * 2_500
    started = time.perf_counter()
    for name in names:
        gazetteer.find(name)
    assert time.perf_counter() - started < 2.0


def test_gazetteer_from_a_mapping() -> None:
    place = Place("Testville", "ZZ", 1.0, 2.0, "UTC", 10)
    small = Gazetteer({normalize_name("Testville"): place})
    assert len(small) == 1
    assert small.find("TESTVILLE") is place
    assert small.find("Testville City") is place


def test_the_process_shares_one_index_per_threshold(gazetteer: Gazetteer) -> None:
    started = time.perf_counter()
    assert load_gazetteer() is gazetteer
    assert load_gazetteer(15000) is gazetteer
    assert time.perf_counter() - started < 0.01  # not indexed again (that takes over a second)


@pytest.mark.parametrize(
    ("zone", "city"),
    [
        ("Asia/Tokyo", "Tokyo"),
        ("asia/tokyo", "Tokyo"),
        (" Asia/Seoul ", "Seoul"),
        ("Europe/London", "London"),
        ("America/New_York", "New York City"),
        ("America/Argentina/Buenos_Aires", "Buenos Aires"),
        ("America/Indiana/Indianapolis", "Indianapolis"),
        ("Asia/Kolkata", "Kolkata"),
        # Old names some browsers still report: links to the zone geonames gives the city.
        ("Asia/Calcutta", "Kolkata"),
        ("America/Buenos_Aires", "Buenos Aires"),
        ("Asia/Saigon", "Ho Chi Minh City"),
        ("Europe/Kiev", "Kyiv"),
    ],
)
def test_zone_city_is_the_city_a_zone_is_named_after(
    gazetteer: Gazetteer, zone: str, city: str
) -> None:
    assert zone_city(zone, gazetteer) == city


@pytest.mark.parametrize(
    "zone",
    [
        "UTC",
        "Etc/UTC",
        "Etc/GMT+9",
        "GMT",
        "Japan",
        # Named after a country or a rule: "Pacific" and "Central" are also towns in geonames.
        "US/Pacific",
        "US/Central",
        "Canada/Pacific",
        # Named after a region, or a city only known elsewhere (San Luis, Argentina is not São
        # Luís, Brazil; Costa Rica is a town in Brazil too).
        "America/Costa_Rica",
        "America/Argentina/San_Luis",
        "America/Indiana/Petersburg",
        "Pacific/Norfolk",
        # Not zones at all.
        "",
        "Mars/Olympus",
        "../../etc/passwd",
        "Asia/" + "x" * 1000,
    ],
)
def test_zone_city_is_empty_for_zones_named_after_no_city_the_gazetteer_puts_there(
    gazetteer: Gazetteer, zone: str
) -> None:
    assert zone_city(zone, gazetteer) == ""


def test_zone_city_of_every_zone_is_a_city_in_that_zone(gazetteer: Gazetteer) -> None:
    import zoneinfo

    found = {zone: zone_city(zone, gazetteer) for zone in zoneinfo.available_timezones()}
    named = {zone: city for zone, city in found.items() if city}
    assert len(named) > 250
    for zone, city in named.items():
        place = gazetteer.find(city)
        assert place is not None, (zone, city)


def test_unknown_place_names_the_place() -> None:
    error = UnknownPlace("Qwxzville")
    assert isinstance(error, LookupError)
    assert (str(error), error.place) == ("unknown place 'Qwxzville'", "Qwxzville")
    assert len(str(UnknownPlace("x" * 10_000))) < 100
