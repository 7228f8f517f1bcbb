"""Searching a cataloged release (DuckDB over stac-geoparquet) and loading results with odc-stac."""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import numpy as np
import pyarrow.parquet as pq
import pystac
import pytest
import rasterio
import stac_geoparquet.arrow as sga
from pyproj import Transformer
from shapely.geometry import box, mapping
from typer.testing import CliRunner

from catalog.build import catalog_release
from catalog.geometry import geojson_and_bbox
from catalog.rules import OfflineSchemas
from catalog.search import SearchError, drop_filled_nulls, search, write_index
from catalog.uncertainty import PAPER_FACTORS
from producer.cli import build_app
from producer.shelves import roi_polygon
from producer.spec import ITEMS_NDJSON, ITEMS_PARQUET
from producer.writer import read_band
from tests.conftest import STAC_SCHEMAS
from tests.release_factory import DEFAULT_SHELF_YEARS, build_release

SCHEMAS = Path(os.environ.get("ICEDAMAGE_STAC_SCHEMAS") or STAC_SCHEMAS)
COLLECTION = "antarctic-ice-shelf-surface-damage"

ALL = ["amery-front-2012", "larsen-b-2001", "larsen-b-2005", "totten-2016", "totten-2021"]


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture release, cataloged once for the module."""
    root = build_release(tmp_path_factory.mktemp("search") / "release")
    catalog_release(root, PAPER_FACTORS)
    return root


def _totten_bbox_3031() -> list[float]:
    return list(roi_polygon("Totten").bounds)


CASES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("everything", {}, ALL),
    ("one shelf", {"shelves": ["Totten"]}, ["totten-2016", "totten-2021"]),
    ("one shelf as a string", {"shelves": "Totten"}, ["totten-2016", "totten-2021"]),
    ("shelf spelled loosely", {"shelves": ["larsen_b", "amery front"]},
     ["amery-front-2012", "larsen-b-2001", "larsen-b-2005"]),
    ("two shelves", {"shelves": ["Totten", "Amery_front"]},
     ["amery-front-2012", "totten-2016", "totten-2021"]),
    ("exact year", {"year": 2005}, ["larsen-b-2005"]),
    ("year range", {"year_from": 2005, "year_to": 2016},
     ["amery-front-2012", "larsen-b-2005", "totten-2016"]),
    ("sensor LC09", {"sensors": ["LC09"]}, ["totten-2021"]),
    ("sensor in lower case", {"sensors": ["lc09"]}, ["totten-2021"]),
    ("one sensor as a string", {"sensors": "LC09"}, ["totten-2021"]),
    ("sensor LE07", {"sensors": ["LE07"]}, ["amery-front-2012", "larsen-b-2001", "larsen-b-2005"]),
    ("any of two sensors", {"sensors": ["LC09", "LE07"]},
     ["amery-front-2012", "larsen-b-2001", "larsen-b-2005", "totten-2021"]),
    ("restored", {"restored": True}, ["amery-front-2012", "larsen-b-2005"]),
    ("not restored", {"restored": False}, ["larsen-b-2001", "totten-2016", "totten-2021"]),
    ("bbox lon/lat", {"bbox": [-63.0, -66.5, -59.0, -64.5]}, ["larsen-b-2001", "larsen-b-2005"]),
    ("bbox polar", {"bbox": _totten_bbox_3031(), "bbox_crs": "EPSG:3031"},
     ["totten-2016", "totten-2021"]),
    ("bbox nowhere", {"bbox": [0.0, -80.0, 10.0, -75.0]}, []),
    ("intersects point", {"intersects": {"type": "Point", "coordinates": [72.0, -69.8]}},
     ["amery-front-2012"]),
    ("intersects Feature", {"intersects": {"type": "Feature", "properties": {},
                                           "geometry": mapping(box(71, -70, 73, -69))}},
     ["amery-front-2012"]),
    ("intersects FeatureCollection (union)", {"intersects": {
        "type": "FeatureCollection", "features": [
            {"type": "Feature", "properties": {}, "geometry": mapping(box(71, -70, 73, -69))},
            {"type": "Feature", "properties": {}, "geometry": mapping(box(-63, -66, -60, -65))},
        ]}}, ["amery-front-2012", "larsen-b-2001", "larsen-b-2005"]),
    ("min fraction", {"min_fraction": 0.08}, ["totten-2021"]),
    ("combined", {"shelves": ["Larsen B"], "restored": False}, ["larsen-b-2001"]),
]


@pytest.mark.parametrize(("query", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_search_filters_return_exactly_the_expected_ids(release: Path, query: dict[str, Any],
                                                        expected: list[str]) -> None:
    assert [item.id for item in search(release, **query)] == expected


def test_search_accepts_catalog_json_and_parquet(release: Path, tmp_path: Path) -> None:
    for source in (release / "stac" / "catalog.json", release / ITEMS_PARQUET,
                   release / ITEMS_NDJSON):  # the ndjson was refused: "no items.parquet found"
        assert [i.id for i in search(source, year=2021)] == ["totten-2021"]
    lines = (release / ITEMS_NDJSON).read_text().splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == ALL
    other = tmp_path / "notes.txt"
    other.write_text("x")
    with pytest.raises(SearchError, match="not a release to search; give the release folder"):
        search(other)
    copy = Path(shutil.copytree(release, tmp_path / "copy"))
    (copy / ITEMS_PARQUET).unlink()  # not cataloged (any more): say so, for either file
    for source in (copy / "stac" / "catalog.json", copy / ITEMS_NDJSON):
        with pytest.raises(SearchError, match="run `icedamage catalog` on the release first"):
            search(source)


def test_search_rejects_bad_input(release: Path, tmp_path: Path) -> None:
    with pytest.raises(SearchError, match="LT05"):
        search(release, sensors=["LT05"])
    with pytest.raises(SearchError, match="bbox_crs"):
        search(release, bbox=[0, 0, 1, 1], bbox_crs="EPSG:32633")
    with pytest.raises(SearchError, match="icedamage catalog"):
        search(tmp_path)
    with pytest.raises(SearchError, match=r"'Thwaits' is not registered \(did you mean 'Thwaites'"):
        search(release, shelves=["Thwaits"])  # an error, not a silently empty result


@pytest.mark.parametrize("value", [15, 100, -0.1, 1.5, float("nan")])
def test_a_fraction_outside_0_to_1_is_refused(release: Path, value: float) -> None:
    """``--min-fraction 15`` (15 %) once matched nothing without a word."""
    with pytest.raises(SearchError, match="a fraction 0–1, not a percentage"):
        search(release, min_fraction=value)
    assert [i.id for i in search(release, min_fraction=1)] == []  # the bounds are fine
    assert len(search(release, min_fraction=0)) == len(ALL)


def test_search_command_hints_at_percentages_and_takes_any_case(release: Path) -> None:
    result = CliRunner().invoke(build_app(), ["search", str(release), "--min-fraction", "15"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "not a percentage (15 % is 0.15)" in text, result.output
    result = CliRunner().invoke(build_app(), ["search", str(release), "--sensor", "lc08",
                                              "--format", "json"])
    assert result.exit_code == 0, result.output
    assert [i["id"] for i in json.loads(result.output)] == ["amery-front-2012", "totten-2016",
                                                            "totten-2021"]


def test_search_table_says_not_observed_for_a_map_without_valid_pixels(
        tmp_path: Path) -> None:
    """A map with no valid pixel is "not observed" in the search table, as in stats, not
    0.00 km² of damage."""
    from catalog.stats import NOT_OBSERVED
    from producer.writer import write_products
    from tests.release_factory import fixture_grid

    root = build_release(tmp_path / "r", DEFAULT_SHELF_YEARS[1:2])  # Totten 2016
    shape = (60, 70)
    write_products(root, "Dotson", 2020, ("LC08",), None, np.zeros(shape, bool),
                   np.zeros(shape, bool), fixture_grid("Dotson", shape))
    catalog_release(root, PAPER_FACTORS)
    result = CliRunner().invoke(build_app(), ["search", str(root)])
    assert result.exit_code == 0, result.output
    (row,) = [line for line in result.output.splitlines() if "dotson-2020" in line]
    assert "0.00" not in row and "not" in row.split("│")[6]  # the cell wraps on narrow consoles
    empty, seen = search(root)
    assert empty.id == "dotson-2020" and empty.properties["icedamage:valid_area_km2"] == 0
    from catalog.commands import search_row

    assert search_row(empty)[5] == NOT_OBSERVED and search_row(seen)[5] != NOT_OBSERVED


def stac_errors(data: dict[str, Any]) -> list[str]:
    """Errors of a STAC dict against core 1.1.0 and every extension it declares (offline)."""
    checker = OfflineSchemas(SCHEMAS)
    errors = []
    for uri in (checker.core_uri(data), *data.get("stac_extensions", [])):
        assert checker.available(uri), f"{uri} is not in {SCHEMAS}"
        error = checker.error(data, uri)
        if error is not None:
            errors.append(f"{data.get('id')}: {uri}: {list(error.absolute_path)} {error.message}")
    return errors


def test_index_read_by_stac_geoparquet_gives_valid_classes(release: Path) -> None:
    """items.parquet read with stac-geoparquet's own reader (a Pangeo user's way, not our
    search) gives classes that validate: every class has the same fields, so the columnar round
    trip fills in no null. (Properties an item lacks, such as a two-satellite map's
    ``platform``, come back as nulls by stac-geoparquet's design; the README says to drop them
    with ``drop_filled_nulls``.)"""
    table = pq.read_table(release / ITEMS_PARQUET)
    items = [json.loads(json.dumps(d, default=str)) for d in sga.stac_table_to_items(table)]
    assert len(items) == len(DEFAULT_SHELF_YEARS)
    checker = OfflineSchemas(SCHEMAS)
    uri = next(u for u in items[0]["stac_extensions"] if "/classification/" in u)
    for item in items:
        assert checker.error(item, uri) is None


def _parquet_items_as_the_readme_says(parquet: Path) -> dict[str, dict[str, Any]]:
    """items.parquet read with stac-geoparquet's own reader, then ``drop_filled_nulls`` (the
    README's advice), by id."""
    records = sga.stac_table_to_items(pq.read_table(parquet))
    return {d["id"]: drop_filled_nulls(json.loads(json.dumps(d, default=str)))
            for d in records}


@pytest.mark.parametrize("with_provenance", [True, False], ids=["provenance", "no-provenance"])
def test_stac_geoparquet_reader_and_drop_filled_nulls_give_the_catalog_items(
        release: Path, tmp_path: Path, with_provenance: bool) -> None:
    """The round trip gives a map not restored nulls for the restoration fields of the
    restored ones (restoration model and hash, restored fraction, restored upper factor);
    dropping only non-``icedamage:`` nulls keeps them, ``drop_filled_nulls`` removes them and
    keeps the nulls the items really hold (unknown facts, not-applicable fields)."""
    root = release
    if not with_provenance:
        root = build_release(tmp_path / "r", DEFAULT_SHELF_YEARS, with_provenance=False)
        catalog_release(root, PAPER_FACTORS)
    found = _parquet_items_as_the_readme_says(root / ITEMS_PARQUET)
    originals = {d["id"]: d for d in map(json.loads,
                                         (root / ITEMS_NDJSON).read_text().splitlines())}
    assert sorted(found) == sorted(originals) == ALL
    for item_id, item in found.items():
        assert set(item["properties"]) == set(originals[item_id]["properties"]), item_id
        assert item == originals[item_id]
        assert stac_errors(item) == []
    if not with_provenance:  # unknown nulls are kept, listed
        props = found["larsen-b-2005"]["properties"]
        assert props["icedamage:restoration_model"] is None
        assert "icedamage:restoration_model" in props["icedamage:unknown"]


def test_index_lines_are_valid_items_with_a_collection_link(release: Path) -> None:
    for line in (release / ITEMS_NDJSON).read_text().splitlines():
        item = json.loads(line)
        assert stac_errors(item) == []
        [link] = [link for link in item["links"] if link["rel"] == "collection"]
        assert item["collection"] == COLLECTION
        assert link["href"] == f"stac/{COLLECTION}/collection.json"  # from the release root
        assert (release / link["href"]).exists()


@pytest.mark.parametrize("output", ["json", "geojson"])
def test_search_output_is_valid_stac(release: Path, output: str) -> None:
    result = CliRunner().invoke(build_app(), ["search", str(release), "--format", output])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    features = data["features"] if output == "geojson" else data
    assert [f["id"] for f in features] == ALL
    for feature in features:
        assert stac_errors(feature) == []
        [link] = [link for link in feature["links"] if link["rel"] == "collection"]
        assert pystac.Collection.from_file(link["href"]).id == feature["collection"]


def _same_items(found: list[pystac.Item], expected: list[pystac.Item], copy: Path,
                release: Path) -> None:
    """The items decoded from the parquet equal those read from items.ndjson (hrefs aside)."""
    assert [i.id for i in found] == [i.id for i in expected]
    for a, b in zip(found, expected, strict=True):
        da, db = a.to_dict(transform_hrefs=False), b.to_dict(transform_hrefs=False)
        for entry in (*da["assets"].values(), *da["links"]):
            entry["href"] = str(Path(entry["href"]).relative_to(copy.resolve()))
        for entry in (*db["assets"].values(), *db["links"]):
            entry["href"] = str(Path(entry["href"]).relative_to(release.resolve()))
        assert da == db
        assert stac_errors(da) == []


def test_search_without_the_ndjson_gives_the_same_valid_items(release: Path,
                                                              tmp_path: Path) -> None:
    copy = Path(shutil.copytree(release, tmp_path / "copy"))
    (copy / ITEMS_NDJSON).unlink()
    _same_items(search(copy), search(release), copy, release)


def test_parquet_fallback_keeps_the_nulls_an_item_has(tmp_path: Path) -> None:
    root = build_release(tmp_path / "v1", DEFAULT_SHELF_YEARS[:3], with_provenance=False)
    catalog_release(root, PAPER_FACTORS)
    copy = Path(shutil.copytree(root, tmp_path / "copy"))
    (copy / ITEMS_NDJSON).unlink()
    found, expected = search(copy), search(root)
    _same_items(found, expected, copy, root)
    restored = next(i for i in found if i.id == "larsen-b-2005").properties
    assert restored["icedamage:restoration_model"] is None  # unknown, listed, kept
    assert "icedamage:restoration_model" in restored["icedamage:unknown"]


LONG_POLYGON = mapping(box(71, -70, 73, -69).segmentize(0.05))


def test_search_command_intersects(release: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    inline = json.dumps(LONG_POLYGON)
    assert len(inline) > 255  # longer than a file name may be
    collection = tmp_path / "qgis.geojson"
    collection.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": "a"}, "geometry": LONG_POLYGON},
        {"type": "Feature", "properties": {"name": "b"},
         "geometry": mapping(box(110, -70, 120, -60))}]}))
    for value, expected in ((inline, ["amery-front-2012"]),
                            (collection, ["amery-front-2012", "totten-2016", "totten-2021"])):
        result = runner.invoke(build_app(), ["search", str(release), "--intersects", str(value),
                                             "--format", "json"])
        assert result.exit_code == 0, result.output
        assert [i["id"] for i in json.loads(result.output)] == expected
    for value, message in (("[1,2]", "GeoJSON object"), ('{"type": "Polygon"}', "not a valid"),
                           (str(tmp_path / "missing.geojson"), "readable file"),
                           ('{"type": "Feature", "geometry": null}', "no GeoJSON geometry"),
                           ("{not json", "not valid JSON")):
        result = runner.invoke(build_app(), ["search", str(release), "--intersects", value])
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
        assert message in " ".join(result.output.split()) and "Traceback" not in result.output


def test_search_rejects_bad_intersects(release: Path) -> None:
    for value in ([1, 2], "POINT (1 2)", {"type": "Nope", "coordinates": [1, 2]},
                  {"type": "Polygon", "coordinates": [[1, 2]]},
                  {"type": "FeatureCollection", "features": []}):
        with pytest.raises(SearchError, match="intersects"):
            search(release, intersects=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(("query", "message"), [
    ({"bbox": [2_260_000, -1_120_000, 2_280_000, -1_100_000]}, "--bbox-crs EPSG:3031"),
    ({"bbox": [298, -66, 299, -65]}, "subtract 360"),
    ({"bbox": [-62, -95, -61, -65]}, "not longitude/latitude"),
    ({"bbox": [-62, -65.0, -61, -65.7]}, "south (-65.0) is above north"),
    ({"intersects": mapping(box(2_260_000, -1_120_000, 2_280_000, -1_100_000))}, "metres"),
    ({"intersects": {**mapping(box(110, -70, 120, -60)), "crs": {
        "type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::3031"}}}}, "EPSG::3031"),
])
def test_search_refuses_coordinates_that_are_not_lonlat(release: Path, query: dict[str, Any],
                                                       message: str) -> None:
    """Polar-stereographic metres, 0–360 longitudes, latitudes past the pole, a box upside
    down or GeoJSON declaring another CRS are errors that say what to do, not an empty result
    (which reads as "no damage map there")."""
    with pytest.raises(SearchError, match=re.escape(message)):
        search(release, **query)


@pytest.mark.parametrize("crs_name", ["urn:ogc:def:crs:OGC:1.3:CRS84",
                                      "http://www.opengis.net/def/crs/EPSG/0/4326",
                                      "urn:ogc:def:crs:EPSG:6.6:4326", "EPSG:4326"])
def test_lonlat_crs_member_and_edge_coordinates_are_accepted(release: Path,
                                                            crs_name: str) -> None:
    """Every spelling of WGS 84 lon/lat in a legacy crs member is accepted."""
    legacy = {**mapping(box(110, -70, 120, -60)), "crs": {
        "type": "name", "properties": {"name": crs_name}}}
    assert [i.id for i in search(release, intersects=legacy)] == ["totten-2016", "totten-2021"]
    assert len(search(release, bbox=[-180, -90, 180, -60])) == len(DEFAULT_SHELF_YEARS)


def test_search_across_the_antimeridian(release: Path, tmp_path: Path) -> None:
    item = json.loads((release / ITEMS_NDJSON).read_text().splitlines()[0])
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:3031", always_xy=True).transform(180, -80)
    geometry, bbox = geojson_and_bbox(box(x - 50_000, y - 30_000, x + 50_000, y + 30_000))
    write_index(tmp_path, [{**item, "id": "ross-2020", "geometry": geometry, "bbox": bbox}])
    assert [i.id for i in search(tmp_path, bbox=[179.5, -81, -179.5, -79])] == ["ross-2020"]
    assert [i.id for i in search(tmp_path, bbox=[-179.9, -81, -179.5, -79])] == ["ross-2020"]
    assert search(tmp_path, bbox=[10, -81, 20, -79]) == []
    ross = mapping(box(178, -80.5, 179.9, -79.5))
    assert [i.id for i in search(tmp_path, intersects=ross)] == ["ross-2020"]


def test_search_command_formats(release: Path) -> None:
    runner = CliRunner()
    hrefs = runner.invoke(build_app(), ["search", str(release), "--sensor", "LC09",
                                        "--format", "hrefs"])
    assert hrefs.exit_code == 0, hrefs.output
    assert Path(hrefs.output.strip()).name == "LC08_LC09_Totten_2021_damage_map.tif"
    geojson = runner.invoke(build_app(), ["search", str(release), "--restored",
                                          "--format", "geojson"])
    features = json.loads(geojson.output)["features"]
    assert [f["id"] for f in features] == ["amery-front-2012", "larsen-b-2005"]
    polar = runner.invoke(build_app(), ["search", str(release), "--bbox",
                                        ",".join(map(str, _totten_bbox_3031())),
                                        "--bbox-crs", "EPSG:3031", "--format", "json"])
    assert [i["id"] for i in json.loads(polar.output)] == ["totten-2016", "totten-2021"]
    bad = runner.invoke(build_app(), ["search", str(release), "--sensor", "LX99"])
    assert bad.exit_code == 2 and "LX99" in bad.output


def test_odc_stac_loads_a_search_result(release: Path) -> None:
    odc_stac = pytest.importorskip("odc.stac")
    items = search(release, shelves=["Totten"])
    data = odc_stac.load(items, bands=["damage_map"], crs="EPSG:3031", resolution=30,
                         chunks=None)
    cube = data["damage_map"]
    assert cube.sizes["time"] == 2 and cube.dtype == np.uint8
    assert data.odc.geobox.crs.epsg == 3031 and data.odc.geobox.resolution.x == 30
    assert cube.attrs["nodata"] == 255
    for index, item in enumerate(sorted(items, key=lambda i: i.datetime)):
        with rasterio.open(item.assets["damage_map"].href) as src:
            expected = src.read(1)
            assert data.x.values[0] == pytest.approx(src.transform.c + 15)
        np.testing.assert_array_equal(cube.isel(time=index).values, expected)


def test_search_without_the_ndjson_decodes_the_parquet(release: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / ITEMS_PARQUET).write_bytes((release / ITEMS_PARQUET).read_bytes())
    [expected] = search(release, sensors=["LE07"], bbox=[60, -75, 80, -60])
    found = search(copy, sensors=["LE07"], bbox=[60, -75, 80, -60])
    assert [i.id for i in found] == ["amery-front-2012"]
    assert found[0].common_metadata.start_datetime == expected.common_metadata.start_datetime
    times = ("start_datetime", "end_datetime", "datetime")
    assert {k: v for k, v in found[0].properties.items() if k not in times} == \
        {k: v for k, v in expected.properties.items() if k not in times}
    assert Path(found[0].assets["damage_map"].href).relative_to(copy.resolve()) == \
        Path(expected.assets["damage_map"].href).relative_to(release.resolve())


def test_an_ndjson_not_written_with_the_parquet_is_refused(release: Path,
                                                           tmp_path: Path) -> None:
    """An items.ndjson of the same size as the one the parquet was written with, but other
    content (a write of the pair interrupted in between): the byte offsets would still fit,
    so only the recorded digest tells; search refuses rather than serve other items."""
    lines = [json.loads(line) for line in (release / ITEMS_NDJSON).read_text().splitlines()]
    write_index(tmp_path / "a", lines)
    renamed = [{**line, "id": line["id"].replace("20", "19", 1)} for line in lines]
    write_index(tmp_path / "b", renamed)
    assert (tmp_path / "a" / ITEMS_NDJSON).stat().st_size == \
        (tmp_path / "b" / ITEMS_NDJSON).stat().st_size
    assert [i.id for i in search(tmp_path / "a")] == ALL
    shutil.copy(tmp_path / "b" / ITEMS_NDJSON, tmp_path / "a" / ITEMS_NDJSON)
    with pytest.raises(SearchError, match=r"items\.ndjson is not the file .*items\.parquet"):
        search(tmp_path / "a")


def test_an_index_the_catalog_does_not_record_is_refused(release: Path, tmp_path: Path) -> None:
    """A cataloged release whose build state records no item index (a `catalog` run killed
    before writing it) is refused with the files named and the command that fixes it."""
    copy = Path(shutil.copytree(release, tmp_path / "copy"))
    state = copy / "stac" / ".build.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "index": None}))
    with pytest.raises(SearchError) as refused:
        search(copy, shelves=["Totten"])
    message = " ".join(str(refused.value).split())
    assert str(copy / ITEMS_PARQUET) in message and str(copy / ITEMS_NDJSON) in message
    assert f"run `icedamage catalog {copy}`" in message
    result = CliRunner().invoke(build_app(), ["search", str(copy)])
    assert result.exit_code == 1 and "icedamage catalog" in result.output
    assert not catalog_release(copy, PAPER_FACTORS).skipped
    assert [i.id for i in search(copy, shelves=["Totten"])] == ["totten-2016", "totten-2021"]


def test_a_catalog_from_before_the_index_was_recorded_is_searched_then_rebuilt(
        release: Path, tmp_path: Path) -> None:
    """A release cataloged by an older icedamage (its build state has no index entry at all)
    stays searchable; its next `catalog` run rebuilds rather than trusting the old index."""
    copy = Path(shutil.copytree(release, tmp_path / "legacy"))
    state = copy / "stac" / ".build.json"
    state.write_text(json.dumps({"inputs": json.loads(state.read_text())["inputs"]}))
    assert [i.id for i in search(copy, shelves=["Totten"])] == ["totten-2016", "totten-2021"]
    assert not catalog_release(copy, PAPER_FACTORS).skipped
    assert isinstance(json.loads(state.read_text())["index"], dict)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """A static file handler that does not log each request to stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing."""


@pytest.fixture
def served(release: Path) -> Iterator[str]:
    """The cataloged release folder served as is over plain HTTP on 127.0.0.1; its URL."""
    handler = functools.partial(_QuietHandler, directory=str(release))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_release_served_over_http_reads_with_percent_encoded_hrefs(release: Path,
                                                                     served: str) -> None:
    """README "Hrefs with spaces": hrefs stay raw (local reading needs them so); a release
    served as is is browsed with pystac, and its "Larsen B" assets and ROI link read once
    percent-encoded as the README shows, with rasterio, odc-stac and urllib."""
    catalog = pystac.Catalog.from_file(f"{served}/stac/catalog.json")
    item = next(i for i in catalog.get_items(recursive=True) if i.id == "larsen-b-2005")
    raw = item.assets["damage_map"].get_absolute_href()
    assert " " in raw and raw.startswith(f"{served}/Larsen B/2005/")
    assert " " in item.assets["damage_map"].href  # kept raw in the catalog
    for asset in item.assets.values():
        asset.href = quote(asset.get_absolute_href(), safe=":/")  # the README's recipe
    href = item.assets["damage_map"].href
    assert href.startswith(f"{served}/Larsen%20B/2005/LE07_Larsen%20B_2005_")
    pixels = read_band(release / unquote(href[len(served) + 1:]))
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
        with rasterio.open(href) as src:
            np.testing.assert_array_equal(src.read(1), pixels)
        odc_stac = pytest.importorskip("odc.stac")
        cube = odc_stac.load([item], bands=["damage_map"], crs="EPSG:3031", resolution=30,
                             chunks=None)["damage_map"]
    np.testing.assert_array_equal(cube.isel(time=0).values, pixels)
    collection = catalog.get_child(COLLECTION)
    [roi] = [link for link in collection.links if link.rel == "related"
             and "Larsen" in link.get_absolute_href()]
    with urllib.request.urlopen(quote(roi.get_absolute_href(), safe=":/")) as response:
        assert response.read() == (release / "Larsen B_ROI.gpkg").read_bytes()


def test_the_readme_stackstac_call_keeps_the_pixels(release: Path) -> None:
    """README: stackstac (0.5.1 reads projection v1's proj:epsg only, which the items do not
    carry) given epsg, resolution and the bounds from proj:transform / proj:shape returns each
    map's pixels unchanged."""
    stackstac = pytest.importorskip("stackstac")
    items = search(release, shelves=["Totten"])
    asset = items[0].assets["damage_map"].extra_fields
    a, _, left, _, e, top = asset["proj:transform"]
    height, width = asset["proj:shape"]
    cube = stackstac.stack(items, assets=["damage_map"], epsg=3031, resolution=30,
                           bounds=(left, top + e * height, left + a * width, top),
                           dtype="uint8", fill_value=np.uint8(255), rescale=False)
    for index, item in enumerate(items):
        np.testing.assert_array_equal(cube.isel(time=index, band=0).values,
                                      read_band(Path(item.assets["damage_map"].href)))
