"""Searching a cataloged release (DuckDB over stac-geoparquet) and loading results with odc-stac."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from shapely.geometry import box, mapping
from typer.testing import CliRunner

from catalog.build import catalog_release
from catalog.geometry import geojson_and_bbox
from catalog.search import SearchError, search, write_index
from catalog.uncertainty import PAPER_FACTORS
from producer.cli import build_app
from producer.shelves import roi_polygon
from producer.spec import ITEMS_NDJSON, ITEMS_PARQUET
from tests.release_factory import build_release

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
    ("shelf spelled loosely", {"shelves": ["larsen_b", "amery front"]},
     ["amery-front-2012", "larsen-b-2001", "larsen-b-2005"]),
    ("two shelves", {"shelves": ["Totten", "Amery_front"]},
     ["amery-front-2012", "totten-2016", "totten-2021"]),
    ("exact year", {"year": 2005}, ["larsen-b-2005"]),
    ("year range", {"year_from": 2005, "year_to": 2016},
     ["amery-front-2012", "larsen-b-2005", "totten-2016"]),
    ("sensor LC09", {"sensors": ["LC09"]}, ["totten-2021"]),
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
    ("min fraction", {"min_fraction": 0.08}, ["totten-2021"]),
    ("combined", {"shelves": ["Larsen B"], "restored": False}, ["larsen-b-2001"]),
]


@pytest.mark.parametrize(("query", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_search_filters_return_exactly_the_expected_ids(release: Path, query: dict[str, Any],
                                                        expected: list[str]) -> None:
    assert [item.id for item in search(release, **query)] == expected


def test_search_accepts_catalog_json_and_parquet(release: Path) -> None:
    for source in (release / "stac" / "catalog.json", release / ITEMS_PARQUET):
        assert [i.id for i in search(source, year=2021)] == ["totten-2021"]
    lines = (release / ITEMS_NDJSON).read_text().splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == ALL


def test_search_rejects_bad_input(release: Path, tmp_path: Path) -> None:
    with pytest.raises(SearchError, match="LT05"):
        search(release, sensors=["LT05"])
    with pytest.raises(SearchError, match="bbox_crs"):
        search(release, bbox=[0, 0, 1, 1], bbox_crs="EPSG:32633")
    with pytest.raises(SearchError, match="icedamage catalog"):
        search(tmp_path)
    with pytest.raises(SearchError, match=r"'Thwaits' is not registered \(did you mean 'Thwaites'"):
        search(release, shelves=["Thwaits"])  # an error, not a silently empty result


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
    assert bad.exit_code == 1 and "LX99" in bad.output


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
