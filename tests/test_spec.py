"""The product spec: names round-trip, bad names are refused, plausibility rules, summers."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from producer.shelves import SHELVES, UnknownShelfError, parse_shelves
from producer.spec import (
    PRODUCT_TYPES,
    RESTORATION_METHODS,
    SENSOR_ORDER,
    SENSORS,
    TYPE1,
    TYPE2,
    Rule,
    SpecError,
    build_name,
    is_demo_source,
    is_year_dir,
    latest_summer,
    parse_name,
    plausibility_problems,
    shelf_year_dir,
    summer_of,
    summer_window,
)

sensor_sets = st.lists(st.sampled_from(SENSOR_ORDER), min_size=1, unique=True).map(
    lambda chosen: tuple(s for s in SENSOR_ORDER if s in chosen))
shelf_names = st.one_of(
    st.sampled_from(sorted(SHELVES)),
    st.from_regex(r"[A-Za-z][A-Za-z0-9 _-]{0,62}[A-Za-z0-9_-]", fullmatch=True),
).filter(lambda name: name.split("_")[0] not in SENSORS)  # ambiguous: refused (tested below)
years = st.integers(1000, 9999)
restorations = st.one_of(st.none(), st.sampled_from(sorted(RESTORATION_METHODS)))
product_types = st.sampled_from(PRODUCT_TYPES)


@given(sensor_sets, shelf_names, years, restorations, product_types)
def test_names_round_trip_exactly(sensors: tuple[str, ...], shelf: str, year: int,
                                  restoration: str | None, product_type: object) -> None:
    """build -> file name -> parse -> build gives the same fields and the same file name."""
    name = build_name(sensors, shelf, year, restoration, product_type)  # type: ignore[arg-type]
    parsed = parse_name(name.filename)
    assert parsed == name
    assert build_name(parsed.sensors, parsed.shelf, parsed.year, parsed.restoration,
                      parsed.product_type).filename == name.filename
    assert parsed.partner().partner() == parsed
    assert parsed.relative_path().parts == (shelf, f"{year:04d}", name.filename)


@given(sensor_sets, st.sampled_from(sorted(SHELVES)), years, restorations)
def test_pair_names_share_their_stem(sensors: tuple[str, ...], shelf: str, year: int,
                                     restoration: str | None) -> None:
    """Type 1 and type 2 of a shelf-year differ only in the suffix of the spec."""
    type1 = build_name(sensors, shelf, year, restoration, TYPE1)
    type2 = type1.partner()
    assert type2.product_type is TYPE2
    assert type1.filename == type1.stem + "_damage_map.tif"
    assert type2.filename == type1.stem + "_damage.tif"


def test_released_example_names_parse() -> None:
    """Names as the usage notes write them, spaces in shelf names included."""
    name = parse_name("LE07_Larsen B_2005_slc_off_DiffGF_damage_map.tif")
    assert (name.sensors, name.shelf, name.year, name.restoration, name.product_type) == (
        ("LE07",), "Larsen B", 2005, "DiffGF", TYPE1)
    name = parse_name("LC08_LC09_Pine Island_2022_damage.tif")
    assert (name.sensors, name.shelf, name.year, name.restoration, name.product_type) == (
        ("LC08", "LC09"), "Pine Island", 2022, None, TYPE2)
    assert parse_name("LE07_LC08_Amery_front_2012_slc_off_DiffGF_damage.tif").shelf == \
        "Amery_front"


@pytest.mark.parametrize("filename", [
    "LT05_Totten_2016_damage.tif",                 # unknown sensor
    "LC08_LE07_Totten_2016_damage.tif",            # wrong order
    "LC08_LC08_Totten_2016_damage.tif",            # duplicate sensor
    "LC08_Totten_16_damage.tif",                   # two-digit year
    "LC08_Totten_2016_damage.tiff",                # wrong extension
    "LC08_Totten_2016_damage_map.TIF",             # wrong case
    "LC08_Totten_2016_slc_off_Magic_damage.tif",   # unknown restoration method
    "LC08_Totten_2016_probability.tif",            # not a product suffix
    "LC08_2016_damage.tif",                        # no shelf
    "LC08_../x_2016_damage.tif",                   # path escape in the shelf
    "LC08_ Totten_2016_damage.tif",                # leading space in the shelf
    "Totten_2016_damage.tif",                      # no sensor
    "LC08_Totten_\u0662\u0660\u0661\u0666_damage.tif",  # Arabic-Indic digits for the year
    "",
])
def test_bad_names_are_refused(filename: str) -> None:
    """Anything off the pattern raises SpecError (never a wrong parse)."""
    with pytest.raises(SpecError):
        parse_name(filename)


@pytest.mark.parametrize("shelf", ["../x", "x/y", "..", "", " Totten", "Totten ", "a\\b",
                                   "LC08_Totten", "x" * 65])
def test_unsafe_or_ambiguous_shelf_names_are_refused(shelf: str) -> None:
    """Shelf names reach paths: no separators or '..'; none that would parse back differently."""
    with pytest.raises(SpecError):
        build_name(("LC08",), shelf, 2016, None, TYPE1)
    if shelf != "LC08_Totten":
        with pytest.raises(SpecError):
            shelf_year_dir(shelf, 2016)


def test_build_name_refuses_bad_fields() -> None:
    """Unordered or unknown sensors, bad years and unknown restoration methods."""
    for sensors, year, restoration in ((("LC08", "LE07"), 2012, None), (("LX01",), 2012, None),
                                       (("LC08",), 999, None), (("LC08",), 2016, "Magic")):
        with pytest.raises(SpecError):
            build_name(sensors, "Totten", year, restoration, TYPE1)


def rules(sensors: tuple[str, ...], year: int, restoration: str | None = None) -> set[Rule]:
    """The plausibility rules a combination breaks."""
    return {rule for rule, _ in plausibility_problems(sensors, year, restoration)}


@pytest.mark.parametrize(("sensors", "year", "restoration", "broken"), [
    (("LE07",), 1999, None, set()),
    (("LE07",), 1998, None, {Rule.SENSOR_YEAR}),
    (("LE07",), 2002, None, set()),                              # last summer before SLC failure
    (("LE07",), 2003, None, {Rule.RESTORATION_MISSING}),         # SLC-off from 2003-05-31
    (("LE07",), 2003, "DiffGF", set()),
    (("LE07",), 2003, "FillNodata", set()),
    (("LE07",), 2002, "DiffGF", {Rule.RESTORATION_UNEXPECTED}),
    (("LE07",), 2012, "DiffGF", set()),
    (("LE07", "LC08"), 2016, "DiffGF", {Rule.SENSOR_YEAR}),      # LE07 in 2016
    (("LC08",), 2011, None, {Rule.SENSOR_YEAR}),
    (("LC08",), 2012, None, set()),                              # first images March 2013
    (("LC08",), 2016, "DiffGF", {Rule.RESTORATION_UNEXPECTED}),  # DiffGF on LC08 only
    (("LC09",), 2015, None, {Rule.SENSOR_YEAR}),
    (("LC09",), 2020, None, {Rule.SENSOR_YEAR}),
    (("LC08", "LC09"), 2021, None, set()),
    (("LC08", "LE07"), 2012, "DiffGF", {Rule.SENSOR_ORDER}),
    (("LC08", "LC08"), 2016, None, {Rule.SENSOR_ORDER}),
    (("LT05",), 2000, None, {Rule.SENSOR_UNKNOWN}),
    (("LE07",), 2005, "Magic", {Rule.RESTORATION_UNKNOWN}),
    (("LC08", "LC09"), latest_summer(), None, set()),
    (("LC08", "LC09"), latest_summer() + 1, None, {Rule.SENSOR_YEAR}),  # not begun
])
def test_plausibility_rules(sensors: tuple[str, ...], year: int, restoration: str | None,
                            broken: set[Rule]) -> None:
    """Each rule fires exactly where the satellites' operating dates say it should."""
    assert rules(sensors, year, restoration) == broken


def test_restoration_messages_follow_the_sensors_slc_off_dates(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The SLC-off summers a message names come from the sensor's dates, not a copy of them."""
    [unexpected] = plausibility_problems(("LC08",), 2016, "DiffGF")
    assert "LE07 imagery (summers 2003-2012)" in unexpected[1]
    le07 = dataclasses.replace(SENSORS["LE07"], slc_off_from=dt.date(2004, 12, 1),
                               last_summer=2010)
    monkeypatch.setitem(SENSORS, "LE07", le07)
    assert le07.first_slc_off_summer == 2005  # the 2004 summer began before the failure
    [unexpected] = plausibility_problems(("LC08",), 2016, "DiffGF")
    assert "LE07 imagery (summers 2005-2010)" in unexpected[1], unexpected
    [missing] = plausibility_problems(("LE07",), 2006, None)
    assert missing[0] is Rule.RESTORATION_MISSING
    assert missing[1].startswith("LE07 imagery of summer 2006 is SLC-off")


@pytest.mark.parametrize(("value", "demo"), [
    ("demo", True), ("Demo ", True), (" DEMO\t", True),
    ("gee", False), ("local", False), ("demos", False), ("", False), (None, False)])
def test_is_demo_source_ignores_spaces_and_case(value: str | None, demo: bool) -> None:
    """The one demo rule: a hand-edited "Demo " is the demo source; no tag is not demo."""
    assert is_demo_source(value) is demo


@pytest.mark.parametrize(("name", "year"), [
    ("2016", True), ("1999", True), ("\u0662\u0660\u0661\u0666", False),  # ٢٠١٦
    ("\uff12\uff10\uff11\uff16", False), ("201", False), ("20160", False),  # full-width
    ("2016 ", False), ("2016\n", False), ("", False)])
def test_year_folders_are_four_ascii_digits(name: str, year: bool) -> None:
    """Other scripts' digits (which int() reads as a year) do not make a year folder."""
    assert is_year_dir(name) is year


def test_the_latest_summer_begins_on_the_first_of_november() -> None:
    assert latest_summer(dt.date(2026, 10, 31)) == 2025
    assert latest_summer(dt.date(2026, 11, 1)) == latest_summer(dt.date(2027, 3, 1)) == 2026


@given(st.dates(dt.date(1990, 1, 1), dt.date(2090, 12, 31)))
def test_summer_of_agrees_with_summer_window(day: dt.date) -> None:
    """A date in Nov-Mar belongs to exactly the summer whose window holds it; Apr-Oct to none."""
    summer = summer_of(day)
    if day.month in (4, 5, 6, 7, 8, 9, 10):
        assert summer is None
        return
    assert summer is not None
    start, end = summer_window(summer)
    assert start <= day <= end
    assert not summer_window(summer - 1)[0] <= day <= summer_window(summer - 1)[1]


@given(st.integers(1000, 9000))
def test_summer_window_bounds(year: int) -> None:
    """1 November of the year to 31 March of the next, both ends in that summer."""
    start, end = summer_window(year)
    assert (start, end) == (dt.date(year, 11, 1), dt.date(year + 1, 3, 31))
    assert summer_of(start) == summer_of(end) == year
    assert summer_of(start - dt.timedelta(days=1)) is None
    assert summer_of(end + dt.timedelta(days=1)) is None


@given(picked=st.lists(st.sampled_from(list(SHELVES)), min_size=1, max_size=12),
       upper=st.lists(st.booleans(), min_size=12, max_size=12),
       pad=st.sampled_from(["", " ", "  "]))
def test_shelf_lists_parse_loosely_in_order_without_repeats(picked: list[str], upper: list[bool],
                                                            pad: str) -> None:
    typed = [(n.upper() if u else n.lower()).replace(" ", "_") for n, u in
             zip(picked, upper[:len(picked)], strict=True)]
    expected = list(dict.fromkeys(picked))
    assert parse_shelves((pad + "," + pad).join(typed)) == expected
    assert parse_shelves(" ALL ") == list(SHELVES)


@pytest.mark.parametrize(("text", "says"), [("Totten,,Dotson", "empty item"),
                                            ("Totten,Ross", "'Ross' is not registered")])
def test_bad_shelf_lists_are_refused(text: str, says: str) -> None:
    with pytest.raises(UnknownShelfError, match=says):
        parse_shelves(text)
