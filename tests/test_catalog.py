"""The catalog of a release: STAC items, metadata.ods, GeoPackages, stats, rules, no-provenance."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import jsonschema
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pystac
import pytest
import rasterio
import shapely
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from pyproj import Transformer
from pystac.extensions.classification import ClassificationExtension
from pystac.extensions.projection import ProjectionExtension
from shapely.geometry import Point, Polygon, box, shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union
from typer.testing import CliRunner

import catalog.stac as stac_builders
import schemas
from catalog.build import catalog_release
from catalog.geometry import (
    TOLERANCE_M,
    bbox_of,
    footprint_lonlat,
    geojson_and_bbox,
    lonlat_bbox_geometry,
)
from catalog.gpkg import read_roi
from catalog.ods import OdsRow, read_metadata_ods, write_metadata_ods
from catalog.rules import (
    CatalogConsistencyRules,
    OfflineSchemas,
    ReleaseMetadataRules,
    StacSchemaRules,
)
from catalog.search import search
from catalog.stac import CatalogSettings, build_collection, collection_title
from catalog.stats import (
    NOT_OBSERVED,
    RESTORED_LABEL,
    UNKNOWN_BOUND,
    DamageStats,
    PixelCounts,
    console_cells,
    damage_stats,
    is_diffgf_derived,
    shelf_styles,
    stats_figure,
    write_stats_table,
    year_limits,
)
from catalog.uncertainty import (
    PAPER_EVALUATIONS,
    PAPER_FACTORS,
    PAPER_RESTORATION,
    Evaluation,
    UncertaintyFactors,
    derive_factors,
)
from producer.cli import build_app
from producer.grid import Grid
from producer.provenance import provenance_path, read_provenance
from producer.shelves import SHELVES, roi_polygon
from producer.spec import (
    DEMO_SOURCE,
    ITEMS_NDJSON,
    ITEMS_PARQUET,
    METADATA_ODS,
    RESTORATION_METHODS,
    SOURCE_TAG,
    TYPE1,
    build_name,
    roi_geopackage_name,
)
from producer.writer import write_cog
from publish.release import demo_products
from tests.conftest import STAC_SCHEMAS
from tests.publish_support import write_tagged_products
from tests.release_factory import DEFAULT_SHELF_YEARS, ShelfYear, build_release
from validation.engine import validate_release

SCHEMAS = Path(os.environ.get("ICEDAMAGE_STAC_SCHEMAS") or STAC_SCHEMAS)
COLLECTION = "antarctic-ice-shelf-surface-damage"


@pytest.fixture(scope="module")
def cataloged_pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fixture release with its catalog built once per module (never modify)."""
    root = build_release(tmp_path_factory.mktemp("cat") / "release")
    catalog_release(root, PAPER_FACTORS)
    return root


@pytest.fixture
def cataloged(cataloged_pristine: Path, tmp_path: Path) -> Path:
    """A private copy of the cataloged release that a test may corrupt."""
    return Path(shutil.copytree(cataloged_pristine, tmp_path / "release"))


def item_path(release: Path, item_id: str) -> Path:
    return release / "stac" / COLLECTION / item_id / f"{item_id}.json"


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def rules_found(release: Path, only: str | None = None) -> set[str]:
    rule_sets = [StacSchemaRules(SCHEMAS), CatalogConsistencyRules(), ReleaseMetadataRules()]
    return {p.rule for rs in rule_sets if only in (None, rs.name) for p in rs.check(release)}


RULE_SET_OF = {"stac-schema": "stac-schema", "stac-json-invalid": "stac-schema",
               "ods-unreadable": "release-metadata", "ods-row-missing": "release-metadata",
               "acquisition-dates": "release-metadata", "roi-missing": "release-metadata",
               "roi-crs": "release-metadata", "product-outside-roi": "release-metadata"}


# --------------------------------------------------------------------------------------------
# STAC content
# --------------------------------------------------------------------------------------------


def test_catalog_is_valid_offline_and_consistent(cataloged_pristine: Path) -> None:
    assert SCHEMAS.joinpath("schema-map.json").exists(), "offline STAC schemas are needed"
    problems = [p for rs in (StacSchemaRules(SCHEMAS), CatalogConsistencyRules(),
                             ReleaseMetadataRules()) for p in rs.check(cataloged_pristine)]
    assert problems == []


def test_items_carry_sensors_grid_classes_and_uncertainty(cataloged_pristine: Path) -> None:
    catalog = pystac.Catalog.from_file(str(cataloged_pristine / "stac" / "catalog.json"))
    items = {i.id: i for i in catalog.get_items(recursive=True)}
    assert sorted(items) == ["amery-front-2012", "larsen-b-2001", "larsen-b-2005",
                             "totten-2016", "totten-2021"]
    larsen = items["larsen-b-2005"]
    props = larsen.properties
    assert props["platform"] == "landsat-7" and props["instruments"] == ["etm+"]
    assert props["icedamage:restoration"] == "DiffGF" and props["icedamage:slc_off"] is True
    assert props["icedamage:restored_fraction"] == 0.17  # of the type 1 map's valid pixels
    assert [s["restored_fraction"] for s in props["icedamage:scenes"]] == [0.15]
    assert props["icedamage:lambda_upper_restored"] == pytest.approx(
        PAPER_FACTORS.lambda_upper_restored)
    assert props["icedamage:damage_area_km2_high"] == pytest.approx(
        props["icedamage:damage_area_km2"] * PAPER_FACTORS.lambda_upper_restored)
    multi = items["totten-2021"].properties
    assert multi["icedamage:sensors"] == ["LC08", "LC09"] and "platform" not in multi
    assert multi["start_datetime"] == "2021-12-10T00:00:00Z"
    assert multi["end_datetime"] == "2021-12-19T23:59:59Z"
    assert multi["datetime"] == "2021-12-10T00:00:00Z"
    assert "icedamage:lambda_upper_restored" not in multi
    assert "icedamage:restored_fraction" not in multi
    damage_map, damage = larsen.assets["damage_map"], larsen.assets["damage"]
    path = Path(damage_map.get_absolute_href())
    with rasterio.open(path) as src:
        assert damage_map.extra_fields["proj:shape"] == [src.height, src.width]
        assert damage_map.extra_fields["proj:transform"] == list(src.transform)[:6]
    assert damage_map.extra_fields["nodata"] == 255 and "nodata" not in damage.extra_fields
    assert [c["value"] for c in damage.extra_fields["classification:classes"]] == [0, 255]
    assert damage_map.extra_fields["file:checksum"].startswith("1220")
    assert Path(larsen.assets["thumbnail"].get_absolute_href()).read_bytes()[:4] == b"\x89PNG"
    collection = catalog.get_child(COLLECTION)
    assert collection.license == "CC-BY-4.0"
    assert len(collection.extent.spatial.bboxes) == 1 + 3  # union + one per shelf
    assert {link.rel for link in collection.links} >= {"describedby", "related"}


def test_item_assets_describe_every_asset_the_items_carry(cataloged_pristine: Path,
                                                         tmp_path: Path) -> None:
    """Each asset key of an item (the provenance record included) has its item_assets entry,
    with the item's title, media type and roles; none is described that no item carries."""
    for root in (cataloged_pristine, build_release(tmp_path / "r", DEFAULT_SHELF_YEARS[:1],
                                                   with_provenance=False)):
        if root != cataloged_pristine:
            catalog_release(root, PAPER_FACTORS)
        catalog = pystac.Catalog.from_file(str(root / "stac" / "catalog.json"))
        collection = catalog.get_child(COLLECTION)
        keys = {key for item in catalog.get_items(recursive=True) for key in item.assets}
        assert set(collection.item_assets) == keys
        for item in catalog.get_items(recursive=True):
            for key, asset in item.assets.items():
                definition = collection.item_assets[key]
                assert (definition.title, definition.media_type, definition.roles) == \
                    (asset.title, asset.media_type, asset.roles), (item.id, key)
    provenance = pystac.Collection.from_file(
        str(cataloged_pristine / "stac" / COLLECTION / "collection.json")
    ).item_assets["provenance"]
    assert provenance.media_type == pystac.MediaType.JSON and provenance.roles == ["metadata"]
    assert "provenance" not in collection.item_assets  # the release without records


def test_catalog_folder_can_be_served(cataloged: Path) -> None:
    """The stac/ folder gets the permissions of any folder the user makes (umask), not the
    private 0700 of its staging folder: a web server or a colleague can read the catalog."""
    mask = os.umask(0o022)
    try:
        catalog_release(cataloged, PAPER_FACTORS, force=True)
    finally:
        os.umask(mask)
    for folder in (cataloged / "stac", cataloged / "stac" / COLLECTION):
        assert folder.stat().st_mode & 0o777 == 0o755, folder


def test_catalog_moves_with_the_release(cataloged_pristine: Path, tmp_path: Path) -> None:
    moved = Path(shutil.copytree(cataloged_pristine, tmp_path / "elsewhere" / "r"))
    catalog = pystac.Catalog.from_file(str(moved / "stac" / "catalog.json"))
    for item in catalog.get_items(recursive=True):
        for asset in item.assets.values():
            assert Path(asset.get_absolute_href()).is_relative_to(moved)
            assert Path(asset.get_absolute_href()).exists()


def test_a_catalog_of_an_older_format_is_rebuilt(cataloged: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """New catalog code (or a changed extension schema) rebuilds a catalog whose inputs did
    not change: "up to date" must not keep items the current code would write otherwise."""
    from catalog import build

    assert catalog_release(cataloged, PAPER_FACTORS).skipped
    monkeypatch.setattr(build, "CATALOG_FORMAT", build.CATALOG_FORMAT + 1)
    assert not catalog_release(cataloged, PAPER_FACTORS).skipped
    assert catalog_release(cataloged, PAPER_FACTORS).skipped


def test_rerun_skips_and_force_rebuilds(cataloged: Path) -> None:
    before = (cataloged / "stac" / "catalog.json").stat().st_mtime_ns
    assert catalog_release(cataloged, PAPER_FACTORS).skipped
    assert (cataloged / "stac" / "catalog.json").stat().st_mtime_ns == before
    steps: list[tuple[str, int, int]] = []
    result = catalog_release(cataloged, PAPER_FACTORS, force=True,
                             progress=lambda text, done, total: steps.append((text, done, total)))
    assert not result.skipped
    assert [s[1] for s in steps] == list(range(len(steps) - 1)) + [steps[-1][2]]
    assert any(text == "Totten 2021" for text, _, _ in steps)


def test_collection_links_to_release_files_are_relative(cataloged: Path, tmp_path: Path) -> None:
    moved = cataloged.rename(tmp_path / "moved")  # the original path is gone
    collection = json.loads((moved / "stac" / COLLECTION / "collection.json").read_text())
    links = [link for link in collection["links"] if link["rel"] in ("describedby", "related")]
    assert sorted(Path(link["href"]).name for link in links) == [
        "Amery_front_ROI.gpkg", "Larsen B_ROI.gpkg", "Totten_ROI.gpkg", METADATA_ODS]
    for link in links:
        assert not Path(link["href"]).is_absolute(), link
        target = (moved / "stac" / COLLECTION / link["href"]).resolve()
        assert target.parent == moved.resolve() and target.exists()
    assert rules_found(moved) == set()  # no catalog-link-broken after the move


OUTPUTS: list[tuple[str, Callable[[Path], Path]]] = [
    ("items.parquet", lambda r: r / ITEMS_PARQUET),
    ("items.ndjson", lambda r: r / ITEMS_NDJSON),
    ("roi-geopackage", lambda r: r / roi_geopackage_name("Totten")),
    ("thumbnail", lambda r: r / "Totten/2016/LC08_Totten_2016_thumbnail.png"),
    ("item-json", lambda r: item_path(r, "totten-2016")),
]


@pytest.mark.parametrize("where", [o[1] for o in OUTPUTS], ids=[o[0] for o in OUTPUTS])
def test_rerun_rebuilds_a_deleted_output(cataloged: Path, where: Callable[[Path], Path]) -> None:
    where(cataloged).unlink()
    result = catalog_release(cataloged, PAPER_FACTORS)
    assert not result.skipped and where(cataloged).exists()
    assert [i.id for i in search(cataloged, shelves=["Totten"])] == ["totten-2016", "totten-2021"]
    assert rules_found(cataloged) == set()
    assert catalog_release(cataloged, PAPER_FACTORS).skipped  # now up to date again


@pytest.mark.parametrize("damage", ["truncated", "edited"])
def test_a_damaged_stac_file_is_not_up_to_date(cataloged: Path, damage: str) -> None:
    """A truncated item, or one edited by hand, used to pass for an up-to-date catalog while
    validate reported errors; the rebuild restores it."""
    item = item_path(cataloged, "totten-2016")
    original = item.read_text()
    if damage == "truncated":
        item.write_text(original[: len(original) // 2])
    else:
        item.write_text(original.replace('"totten-2016"', '"totten-2016-x"', 1))
    assert not catalog_release(cataloged, PAPER_FACTORS).skipped
    assert item.read_text() == original
    assert rules_found(cataloged) == set()
    assert catalog_release(cataloged, PAPER_FACTORS).skipped


def test_a_replaced_roi_geopackage_is_caught_then_recataloged(cataloged: Path) -> None:
    """A user's own ROI GeoPackage dropped in: validate names the stale collection asset, and
    the next catalog run (not "up to date") records the new file."""
    gpkg = cataloged / roi_geopackage_name("Totten")
    roi = gpd.read_file(gpkg)
    roi["geometry"] = roi.buffer(-100.0)
    roi.to_file(gpkg, driver="GPKG")
    assert {"asset-checksum", "asset-size"} <= rules_found(cataloged, "catalog-consistency")
    assert not catalog_release(cataloged, PAPER_FACTORS).skipped
    assert rules_found(cataloged, "catalog-consistency") == set()
    assert catalog_release(cataloged, PAPER_FACTORS).skipped


def test_an_edited_thumbnail_is_rendered_again(cataloged: Path) -> None:
    thumbnail = cataloged / "Totten/2016/LC08_Totten_2016_thumbnail.png"
    rendered = thumbnail.read_bytes()
    Image.new("RGBA", (8, 8), (255, 0, 0, 255)).save(thumbnail)
    assert not catalog_release(cataloged, PAPER_FACTORS).skipped
    assert thumbnail.read_bytes() == rendered
    assert catalog_release(cataloged, PAPER_FACTORS).skipped


def _watch_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the files a catalog run hashes or scans from now on (one entry per read)."""
    from catalog import file_facts

    reads: list[str] = []
    for name in ("file_checksum", "raster_facts", "count_pixels"):
        real = getattr(file_facts, name)

        def watched(path: Path, *args: object, _real: Callable = real, **kwargs: object
                    ) -> object:
            reads.append(Path(path).name)
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(file_facts, name, watched)
    return reads


def _saved_catalog(release: Path) -> dict[str, dict]:
    """Every STAC object of a release's catalog, by path; without the collection's metadata.ods
    asset, whose bytes ``--force`` rewrites (the zip entries' times)."""
    stac = release / "stac"
    saved = {str(p.relative_to(stac)): json.loads(p.read_text())
             for p in sorted(stac.rglob("*.json")) if not p.name.startswith(".")}
    saved[f"{COLLECTION}/collection.json"]["assets"].pop("metadata")
    return saved


def test_a_rebuild_reads_only_the_files_that_changed(cataloged: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-producing one shelf-year of a big release must not cost reading every map again:
    the rebuild reads that shelf-year's changed map only, and writes the very catalog a full
    ``--force`` rebuild writes."""
    from catalog import file_facts

    monkeypatch.setattr(file_facts, "RACY_SECONDS", 0.0)  # files written just now: trusted
    catalog_release(cataloged, PAPER_FACTORS, force=True)  # the copy's files: new inodes
    damage_map = cataloged / "Totten/2021/LC08_LC09_Totten_2021_damage_map.tif"
    with rasterio.open(damage_map) as src:
        pixels, grid = src.read(1), Grid(src.transform, src.width, src.height, src.crs.to_string())
    background = np.argwhere(pixels == TYPE1.background)[0]
    pixels[tuple(background)] = TYPE1.damage  # one more damage pixel, as a re-run might map
    write_cog(damage_map, pixels, grid, TYPE1)
    reads = _watch_reads(monkeypatch)
    result = catalog_release(cataloged, PAPER_FACTORS)
    assert not result.skipped
    # its hash, grid and counts; of the small files the last run itself wrote (thumbnails,
    # metadata.ods: modified during that run, so not trusted to this one) only the hashes
    assert {name for name in reads if name.endswith(".tif")} == {
        "LC08_LC09_Totten_2021_damage_map.tif"}
    item = json.loads(item_path(cataloged, "totten-2021").read_text())
    with rasterio.open(damage_map) as src:
        damage_km2 = int((src.read(1) == TYPE1.damage).sum()) * 30 * 30 / 1e6
    assert item["properties"]["icedamage:damage_area_km2"] == pytest.approx(damage_km2)
    incremental = _saved_catalog(cataloged)
    reads.clear()
    catalog_release(cataloged, PAPER_FACTORS, force=True)
    assert "LC08_Totten_2016_damage_map.tif" in reads  # --force reads everything again
    assert _saved_catalog(cataloged) == incremental
    assert rules_found(cataloged) == set()


def test_a_touched_or_damaged_memo_means_reading_again(cataloged: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The kept facts are trusted only for a file whose inode, size and mtime are those read:
    a file rewritten with other bytes under the same size is read again; a garbled memo file
    costs a full read, never a wrong item."""
    from catalog import file_facts

    monkeypatch.setattr(file_facts, "RACY_SECONDS", 0.0)  # files written just now: trusted
    catalog_release(cataloged, PAPER_FACTORS, force=True)
    damage = cataloged / "Totten/2016/LC08_Totten_2016_damage.tif"
    stat = damage.stat()
    os.utime(damage, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    reads = _watch_reads(monkeypatch)
    catalog_release(cataloged, PAPER_FACTORS)
    assert {name for name in reads if name.endswith(".tif")} == {"LC08_Totten_2016_damage.tif"}
    (cataloged / "stac" / ".file-facts.json").write_text("{not json")
    os.utime(damage, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2))
    reads.clear()
    before = _saved_catalog(cataloged)
    catalog_release(cataloged, PAPER_FACTORS)
    tifs = {p.name for p in cataloged.rglob("*.tif")}
    assert tifs <= set(reads)
    assert _saved_catalog(cataloged) == before


def test_a_file_changed_just_before_the_run_is_not_trusted_to_the_next(cataloged: Path) -> None:
    """A file modified within the same second as the run that read it may change again
    within that mtime tick (file systems keeping whole seconds): its facts are not kept, so
    the next run reads it again; an older file's are kept."""
    damage = cataloged / "Totten/2016/LC08_Totten_2016_damage.tif"
    now = time.time_ns()
    for path in cataloged.rglob("*"):
        if path.is_file():
            os.utime(path, ns=(now - 60 * 10**9, now - 60 * 10**9))
    os.utime(damage, ns=(now, now))
    catalog_release(cataloged, PAPER_FACTORS, force=True)
    kept = json.loads((cataloged / "stac" / ".file-facts.json").read_text())["files"]
    assert "Totten/2016/LC08_Totten_2016_damage.tif" not in kept
    assert "Totten/2016/LC08_Totten_2016_damage_map.tif" in kept


# --------------------------------------------------------------------------------------------
# Geometry near the pole and the antimeridian
# --------------------------------------------------------------------------------------------


def test_footprint_across_the_antimeridian_is_split() -> None:
    to_polar = Transformer.from_crs("EPSG:4326", "EPSG:3031", always_xy=True)
    x, y = to_polar.transform(180.0, -80.0)  # a Ross-like shelf straddling 180°
    footprint = box(x - 60_000, y - 40_000, x + 60_000, y + 40_000)
    geometry = footprint_lonlat(footprint)
    assert geometry.geom_type == "MultiPolygon" and geometry.is_valid
    west, south, east, north = bbox_of(geometry)
    assert west > 170 and east < -170 and west > east  # RFC 7946 wrapping bbox
    back = Transformer.from_crs("EPSG:3031", "EPSG:4326", always_xy=True)
    for corner in footprint.exterior.coords:
        lon, lat = back.transform(*corner)
        assert geometry.buffer(1e-6).contains(Point(lon, lat))
    assert not geometry.contains(Point(0.0, -80.0))


def test_footprint_containing_the_pole_is_a_cap() -> None:
    geometry = footprint_lonlat(box(-100_000, -100_000, 100_000, 100_000))
    assert bbox_of(geometry)[0] == -180 and bbox_of(geometry)[1] == -90


def _lonlat(x: float, y: float) -> tuple[float, float]:
    return Transformer.from_crs("EPSG:3031", "EPSG:4326", always_xy=True).transform(x, y)


POLE_CASES = [  # footprint, (west, east) its bbox must have
    ("corner at the pole", box(0, -100_000, 100_000, 0), (90.0, 180.0)),
    ("corner at the pole, y > 0", box(0, 0, 100_000, 100_000), (0.0, 90.0)),
    ("edge through the pole", box(-100_000, -100_000, 100_000, 0), (90.0, -90.0)),
    ("edge along x = 0 through the pole", box(-100_000, -100_000, 0, 100_000), (-180.0, 0.0)),
]


@pytest.mark.parametrize(("footprint", "west_east"), [c[1:] for c in POLE_CASES],
                         ids=[c[0] for c in POLE_CASES])
def test_footprints_touching_the_pole(footprint: BaseGeometry,
                                      west_east: tuple[float, float]) -> None:
    geometry = footprint_lonlat(footprint)
    assert geometry.is_valid and not geometry.is_empty
    west, south, east, north = bbox_of(geometry)
    assert (west, east) == west_east and south == -90.0
    assert north == pytest.approx(max(_lonlat(*c)[1] for c in footprint.exterior.coords))
    minx, miny, maxx, maxy = footprint.bounds
    for x in np.linspace(minx + 2_000, maxx - 2_000, 6):  # interior points, none at x = 0
        for y in np.linspace(miny + 2_000, maxy - 2_000, 6):
            lon, lat = _lonlat(x, y)
            assert geometry.buffer(1e-6).contains(Point(lon, lat)), (x, y, lon, lat)
    to_polar = Transformer.from_crs("EPSG:4326", "EPSG:3031", always_xy=True)
    for part in getattr(geometry, "geoms", [geometry]):  # and nothing outside the footprint
        point = part.representative_point()
        assert footprint.buffer(1.0).contains(Point(to_polar.transform(point.x, point.y)))


def _departure_m(footprint: Polygon, geometry: BaseGeometry) -> tuple[float, float]:
    """(how far the footprint reaches outside the lon/lat geometry, how far the geometry
    reaches beyond the footprint), in EPSG:3031 metres: the geometry's straight lon/lat edges
    traced point by point (as GeoJSON means them), projected back and compared with the
    footprint's edges (splits at 180° fall on the footprint's inside and count as neither)."""
    to_polar = Transformer.from_crs("EPSG:4326", "EPSG:3031", always_xy=True)
    outside = beyond = 0.0
    for part in getattr(geometry, "geoms", [geometry]):
        lon, lat = np.asarray(shapely.segmentize(part.exterior, 0.002).coords).T
        points = shapely.points(np.column_stack(to_polar.transform(lon, lat)))
        inside = shapely.contains(footprint, points)
        distance = shapely.distance(footprint.exterior, points)
        split = np.isclose(np.abs(lon), 180.0)
        outside = max(outside, float(distance[inside & ~split].max(initial=0.0)))
        beyond = max(beyond, float(distance[~inside].max(initial=0.0)))
    return outside, beyond


@pytest.mark.parametrize("shelf", ["Amery", "Thwaites", "Totten"])
def test_item_geometry_holds_a_registered_grid_to_within_a_metre(shelf: str) -> None:
    """The grid of a product of the largest registered shelf (Amery's ROI box, 620 km x
    455 km) lies inside its item geometry to within TOLERANCE_M, and the geometry reaches no
    further beyond it: edges get the vertices they need, not a fixed budget."""
    footprint = box(*roi_polygon(shelf).bounds)
    geometry = shape(geojson_and_bbox(footprint)[0])
    outside, beyond = _departure_m(footprint, geometry)
    assert outside <= TOLERANCE_M and beyond <= TOLERANCE_M, (outside, beyond)


def _shelf_item(identifier: str, footprint: BaseGeometry) -> pystac.Item:
    """A minimal item with this EPSG:3031 footprint, of a made-up shelf across 180° (no
    released shelf is there; the Ross ice shelf is)."""
    geometry, bbox = geojson_and_bbox(footprint)
    return pystac.Item(identifier, geometry, bbox, dt.datetime(2021, 12, 1, tzinfo=dt.UTC), {
        "start_datetime": "2021-12-01T00:00:00Z", "end_datetime": "2021-12-31T23:59:59Z",
        "icedamage:shelf": "Ross West", "icedamage:year": 2021, "icedamage:sensors": ["LC08"],
        "icedamage:restoration": None})


def test_collection_texts_follow_the_spec_and_the_release(cataloged_pristine: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """The title names the summers the release holds (the published dataset's own title for
    the paper's 1999-2024), the description the spec's encodings, even once the spec changes."""
    root = pystac.Catalog.from_file(str(cataloged_pristine / "stac" / "catalog.json"))
    items = list(root.get_items(recursive=True))
    collection = build_collection(items, CatalogSettings(), {})
    assert collection.title == "Surface Damage Dataset for Antarctic Ice Shelves 2001-2021"
    assert collection_title(1999, 2024) == \
        "Surface Damage Dataset for Antarctic Ice Shelves 1999-2024"
    assert collection_title(2021, 2021).endswith("Ice Shelves 2021")
    assert "(0 background, 1 damage, 255 nodata)" in collection.description
    assert "(0 background, 255 damage)" in collection.description
    type1 = dataclasses.replace(TYPE1, nodata=254, classes=tuple(
        dataclasses.replace(c, value=254) if c.nodata else c for c in TYPE1.classes))
    monkeypatch.setattr(stac_builders, "TYPE1", type1)
    changed = build_collection(items, CatalogSettings(), {})
    assert "(0 background, 1 damage, 254 nodata)" in changed.description


def test_collection_names_the_restorations_the_items_used(cataloged_pristine: Path,
                                                          tmp_path: Path) -> None:
    """The description and keywords name the SLC-off restoration methods the items really
    used: a release restored with FillNodata only says it is a classical fill and claims no
    DiffGF; a mixed one names both; one without restored maps says nothing of restoration."""
    root = build_release(tmp_path / "r", (ShelfYear("Larsen B", 2006, ("LE07",), "FillNodata"),))
    catalog_release(root, PAPER_FACTORS)
    saved = json.loads((root / "stac" / COLLECTION / "collection.json").read_text())
    assert "restored with FillNodata (a classical fill, not DiffGF)." in saved["description"]
    assert "restored with DiffGF" not in saved["description"]
    assert "FillNodata" in saved["keywords"] and "DiffGF" not in saved["keywords"]

    catalog = pystac.Catalog.from_file(str(cataloged_pristine / "stac" / "catalog.json"))
    items = list(catalog.get_items(recursive=True))
    diffgf = build_collection(items, CatalogSettings(), {})
    assert "Landsat 7 SLC-off imagery restored with DiffGF. Type 1" in diffgf.description
    assert "FillNodata" not in diffgf.description and "FillNodata" not in diffgf.keywords
    assert {"SLC-off", "DiffGF"} <= set(diffgf.keywords)
    larsen = next(i for i in items if i.id == "larsen-b-2005")
    larsen.properties["icedamage:restoration"] = "FillNodata"
    mixed = build_collection(items, CatalogSettings(), {})
    assert ("restored with DiffGF (1 map) and with FillNodata (1 map; a classical fill, not "
            "DiffGF).") in mixed.description
    assert {"DiffGF", "FillNodata"} <= set(mixed.keywords)
    plain = [i for i in items if not i.properties["icedamage:restoration"]]
    unrestored = build_collection(plain, CatalogSettings(), {})
    assert "restor" not in unrestored.description
    assert not {"SLC-off", "DiffGF", "FillNodata"} & set(unrestored.keywords)


def test_diffgf_derived_is_the_released_restoration_token(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """A product name is read with the spec (its restoration token must be DiffGF exactly);
    only names that do not parse fall back to the authors' "contains diffgf" rule."""
    monkeypatch.setitem(RESTORATION_METHODS, "DiffGFLite", "a hypothetical method")
    assert not is_diffgf_derived("Larsen B/2005/LE07_Larsen B_2005_slc_off_DiffGFLite"
                                 "_damage_map.tif")
    assert is_diffgf_derived(Path("x/LE07_Larsen B_2005_slc_off_DiffGF_damage_map.tif"))
    assert not is_diffgf_derived("LE07_Larsen B_2005_slc_off_FillNodata_damage_map.tif")
    assert not is_diffgf_derived("/data/diffgf-runs/LC08_Totten_2016_damage_map.tif")
    assert is_diffgf_derived("Larsen_B_2005_DIFFGF_restored_map.tif")  # the authors' rule
    assert not is_diffgf_derived("Larsen_B_2005_map.tif")


def test_shelf_extent_covers_every_footprint_across_the_antimeridian() -> None:
    crossing = box(-300e3, -1300e3, 200e3, -700e3)  # lon 164 .. -157, across 180°
    beside = box(-1000e3, -900e3, -800e3, -700e3)  # same shelf, another year: lon -138 .. -125
    union = unary_union([footprint_lonlat(crossing), footprint_lonlat(beside)])
    west, south, east, north = bbox_of(union)
    eastern = [g for g in footprint_lonlat(crossing).geoms if g.bounds[2] == 180.0]
    assert west == min(g.bounds[0] for g in eastern) and 160 < west < 170
    assert east == footprint_lonlat(beside).bounds[2] and -130 < east < -120  # the 2nd part too
    assert lonlat_bbox_geometry((west, south, east, north)).buffer(1e-9).covers(union)
    items = [_shelf_item("ross-west-2020", crossing), _shelf_item("ross-west-2021", beside)]
    collection = build_collection(items, CatalogSettings(), {})
    [extent] = collection.extent.spatial.bboxes
    assert extent == [west, south, east, north]
    checker = OfflineSchemas(SCHEMAS)
    data = collection.to_dict(include_self_link=False)
    for uri in (checker.core_uri(data), *data["stac_extensions"]):
        assert checker.available(uri) and checker.error(data, uri) is None, uri


# --------------------------------------------------------------------------------------------
# metadata.ods, GeoPackages, stats
# --------------------------------------------------------------------------------------------


def test_metadata_ods_reads_back_with_pandas(cataloged_pristine: Path) -> None:
    sheets = pd.read_excel(cataloged_pristine / METADATA_ODS, sheet_name=None, engine="odf")
    assert set(sheets) == {"Summary", "Totten", "Larsen B", "Amery_front"}
    summary = sheets["Summary"]
    assert len(summary) == len(DEFAULT_SHELF_YEARS)
    row = summary[(summary["shelf"] == "Totten") & (summary["year"] == 2021)].iloc[0]
    assert row["acquisition_dates"] == "2021-12-10; 2021-12-19"
    assert row["damage_map_file"] == "LC08_LC09_Totten_2021_damage_map.tif"
    assert row["main_scene"] == "LC08_Totten_composite_2021-12-10"
    assert len(sheets["Larsen B"]) == 2


def test_roi_geopackages_read_back(cataloged_pristine: Path) -> None:
    for shelf in ("Totten", "Larsen B", "Amery_front"):
        frame = gpd.read_file(cataloged_pristine / roi_geopackage_name(shelf))
        assert frame.crs.to_epsg() == 3031
        assert list(frame["shelf"]) == [shelf] and "approximate" in frame["source"].iloc[0]
        assert frame.geometry.iloc[0].is_valid


def test_stats_equal_an_independent_computation(cataloged_pristine: Path) -> None:
    catalog = pystac.Catalog.from_file(str(cataloged_pristine / "stac" / "catalog.json"))
    for item in catalog.get_items(recursive=True):
        with rasterio.open(item.assets["damage_map"].get_absolute_href()) as src:
            pixels, transform = src.read(1), src.transform
        pixel_km2 = abs(transform.a * transform.e) / 1e6
        damage = np.sum(pixels == 1) * pixel_km2
        valid = np.sum(pixels != 255) * pixel_km2
        restored = "diffgf" in item.assets["damage_map"].href.lower()
        s1, s2, k = 0.8164 / 0.8410, 0.8384 / 0.7916, 0.9691 / 0.9286
        high = max(s1, s2) * (k if restored else 1.0)
        props = item.properties
        assert props["icedamage:damage_area_km2"] == pytest.approx(damage)
        assert props["icedamage:valid_area_km2"] == pytest.approx(valid)
        assert props["icedamage:damage_fraction"] == pytest.approx(damage / valid)
        assert props["icedamage:damage_area_km2_low"] == pytest.approx(damage * min(s1, s2))
        assert props["icedamage:damage_area_km2_high"] == pytest.approx(damage * high)
        assert props["icedamage:damage_fraction_high"] == pytest.approx(
            min(1.0, damage / valid * high))


def test_stats_command_writes_table_and_plot(cataloged_pristine: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(build_app(), [
        "stats", str(cataloged_pristine), "--out", str(tmp_path / "t.csv"),
        "--plot", str(tmp_path / "f.png")])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "t.csv")
    item = json.loads(item_path(cataloged_pristine, "totten-2016").read_text())
    row = table[(table["shelf"] == "Totten") & (table["year"] == 2016)].iloc[0]
    assert row["damage_fraction"] == pytest.approx(item["properties"]["icedamage:damage_fraction"])
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_stats_table_names_date_sensors_and_restoration(cataloged_pristine: Path,
                                                        tmp_path: Path) -> None:
    """Each row says which map it is: main-scene date (the item's datetime), sensors and
    restoration method come first, in the CSV and the ODS."""
    for suffix in (".csv", ".ods"):
        out = tmp_path / f"t{suffix}"
        result = CliRunner().invoke(build_app(), ["stats", str(cataloged_pristine), "--out",
                                                  str(out)])
        assert result.exit_code == 0, result.output
        table = (pd.read_csv(out) if suffix == ".csv" else pd.read_excel(out, engine="odf"))
        assert list(table.columns[:5]) == ["shelf", "year", "main_scene_date", "sensors",
                                           "restoration"]
        rows = {(r.shelf, r.year): r for r in table.itertuples()}
        for item_id, key in (("totten-2021", ("Totten", 2021)),
                             ("larsen-b-2005", ("Larsen B", 2005))):
            item = pystac.Item.from_file(str(item_path(cataloged_pristine, item_id)))
            assert rows[key].main_scene_date == item.datetime.date().isoformat()
            assert rows[key].sensors == " ".join(item.properties["icedamage:sensors"])
        assert rows[("Totten", 2021)].sensors == "LC08 LC09"
        assert rows[("Larsen B", 2005)].restoration == "DiffGF"
        assert pd.isna(rows[("Larsen B", 2001)].restoration)


def _stats_row(shelf: str, year: int, damage: int = 100, valid: int = 1000) -> DamageStats:
    """One shelf-year's stats from pixel counts (30 m pixels), no raster needed."""
    return damage_stats(shelf, year, PixelCounts(damage, valid, 900.0), False, PAPER_FACTORS)


def _figure_axes(rows: list[DamageStats]):  # noqa: ANN202 - matplotlib axes
    """The (area, fraction) axes of the stats figure of ``rows``; the figure is closed after."""
    import matplotlib.pyplot as plt

    fig = stats_figure(rows)
    plt.close(fig)
    return fig.axes[0], fig.axes[1]


def test_every_released_shelf_gets_its_own_style() -> None:
    """Ten shelves, ten colours and ten markers: no two shelves look alike in the plot."""
    styles = shelf_styles(SHELVES)
    assert len({s.colour for s in styles.values()}) == len(SHELVES) == 10
    assert len({s.marker for s in styles.values()}) == len(SHELVES)
    # a shelf keeps its style whichever other shelves a release holds
    assert shelf_styles(["Totten"])["Totten"] == styles["Totten"]
    ax_area, _ = _figure_axes([_stats_row(s, y) for s in SHELVES for y in (2020, 2021)])
    drawn = {line.get_label(): (line.get_color(), line.get_marker())
             for line in ax_area.get_lines()}
    assert set(drawn) == set(SHELVES)
    assert len(set(drawn.values())) == len(SHELVES)
    assert len({colour for colour, _ in drawn.values()}) == len(SHELVES)


#: Colour-vision-deficiency simulation matrices in linear RGB (Machado et al. 2009, severity 1).
CVD_MATRICES = {
    "normal": np.eye(3),
    "protanopia": np.array([[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216],
                            [-0.003882, -0.048116, 1.051998]]),
    "deuteranopia": np.array([[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413],
                              [-0.011820, 0.042940, 0.968881]]),
}


def _lab(colour: str, vision: str) -> np.ndarray:
    """CIELAB (D65) of a hex colour as a viewer with ``vision`` sees it."""
    srgb = np.array([int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    linear = np.clip(CVD_MATRICES[vision] @ linear, 0, 1)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722],
                    [0.0193, 0.1192, 0.9505]]) @ linear / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def _colour_distance(a: str, b: str) -> float:
    """The smallest CIE76 ΔE of two colours for normal, protanope and deuteranope viewers."""
    return min(float(np.linalg.norm(_lab(a, v) - _lab(b, v))) for v in CVD_MATRICES)


def test_shelf_colours_stay_apart_for_colour_blind_readers() -> None:
    """Larsen B (reddish purple) and Totten (wine) once looked alike, and grey matched the
    purple under deuteranopia (ΔE 7): no two released shelves are now closer than Okabe & Ito's
    own orange and yellow, and Larsen B and Totten are far apart."""
    styles = shelf_styles(SHELVES)
    colours = [s.colour for s in styles.values()]
    closest = min(_colour_distance(a, b) for i, a in enumerate(colours) for b in colours[i + 1:])
    assert closest >= 15
    assert _colour_distance(styles["Larsen B"].colour, styles["Totten"].colour) >= 40


def test_restored_years_have_hollow_markers_and_a_legend_entry() -> None:
    rows = [_stats_row("Larsen B", 2004),
            damage_stats("Larsen B", 2005, PixelCounts(100, 1000, 900.0), "DiffGF",
                         PAPER_FACTORS),
            _stats_row("Larsen B", 2006)]
    for axis in _figure_axes(rows):
        hollow = [line for line in axis.get_lines() if line.get_markerfacecolor() == "white"]
        assert [list(line.get_xdata()) for line in hollow] == [[2005]]
        assert hollow[0].get_markeredgecolor() == shelf_styles(["Larsen B"])["Larsen B"].colour
    ax_area, _ = _figure_axes(rows)
    assert RESTORED_LABEL in [t.get_text() for t in ax_area.get_legend().get_texts()]
    ax_plain, _ = _figure_axes([_stats_row("Larsen B", 2004)])
    assert RESTORED_LABEL not in [t.get_text() for t in ax_plain.get_legend().get_texts()]


@pytest.mark.parametrize(("years", "limits"), [((2021,), (2020, 2022)),
                                               ((2001, 2005, 2021), (2000, 2022))])
def test_time_axis_spans_the_years_with_integer_ticks(years: tuple[int, ...],
                                                      limits: tuple[int, int]) -> None:
    """One year of margin each side (a one-year release once got 1909.8-2132.2), whole years."""
    assert year_limits(years) == limits
    ax_area, ax_frac = _figure_axes([_stats_row("Totten", y) for y in years])
    for axis in (ax_area, ax_frac):
        assert axis.get_xlim() == pytest.approx(limits)
        ticks = [t for t in axis.get_xticks() if limits[0] <= t <= limits[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
    shown = {label.get_position()[0]: label.get_text() for label in ax_frac.get_xticklabels()}
    assert all(text == f"{x:.0f}" for x, text in shown.items())  # "2021", not 2021.0 or offset
    assert all(f"{y}" in shown.values() for y in years if len(years) == 1)


def test_map_without_valid_pixels_is_empty_in_the_table(tmp_path: Path) -> None:
    """0 of 0 valid pixels is no observation: the table leaves damage area and fraction empty."""
    rows = [_stats_row("Dotson", 2019), _stats_row("Dotson", 2020, damage=0, valid=0),
            _stats_row("Dotson", 2021)]
    blank = rows[1].as_row()
    for field in ("damage_area_km2", "damage_area_km2_low", "damage_area_km2_high",
                  "damage_fraction", "damage_fraction_low", "damage_fraction_high"):
        assert blank[field] is None, field
    assert rows[0].as_row()["damage_area_km2"] == pytest.approx(100 * 900 / 1e6)
    csv = pd.read_csv(write_stats_table(rows, tmp_path / "t.csv"))
    ods = pd.read_excel(write_stats_table(rows, tmp_path / "t.ods"), engine="odf")
    for table in (csv, ods):
        assert table["damage_area_km2"].isna().tolist() == [False, True, False]
        assert table["damage_area_km2_high"].isna().tolist() == [False, True, False]
        assert table["damage_fraction"].isna().tolist() == [False, True, False]
        assert table["valid_pixels"].tolist() == [1000, 0, 1000]
    assert console_cells(rows[1]) == (NOT_OBSERVED, "0.00", "")  # not "0.00 (0.00-0.00)"
    assert console_cells(rows[0])[0] == "0.09 (0.09-0.10)"


def test_plot_breaks_at_missing_and_unmeasured_years() -> None:
    """No 0 for a map without valid pixels, and no line or band joining years across a gap."""
    rows = [_stats_row("Larsen B", 2005), _stats_row("Larsen B", 2007),  # 2006 missing
            _stats_row("Dotson", 2019), _stats_row("Dotson", 2020, damage=0, valid=0),
            _stats_row("Dotson", 2021), _stats_row("Dotson", 2022)]
    ax_area, ax_frac = _figure_axes(rows)
    colours = {shelf: style.colour for shelf, style in shelf_styles(["Larsen B", "Dotson"]).items()}
    gaps = {"Larsen B": 2006, "Dotson": 2020}
    for axis in (ax_area, ax_frac):
        for shelf, gap in gaps.items():
            (line,) = [x for x in axis.get_lines() if x.get_color() == colours[shelf]]
            xs, ys = np.asarray(line.get_xdata()), np.asarray(line.get_ydata(), float)
            assert gap in xs.tolist() and np.isnan(ys[xs == gap]).all()
            assert not np.isnan(ys[xs != gap]).any() and (ys[xs != gap] > 0).all()
        for band in axis.collections:
            for path in band.get_paths():
                x = path.vertices[:, 0]
                for gap in gaps.values():
                    assert not (x.min() < gap < x.max()), f"a band spans {gap}"


# --------------------------------------------------------------------------------------------
# Every rule catches what it is about
# --------------------------------------------------------------------------------------------


def _append_byte(release: Path) -> None:
    with open(release / "Totten/2016/LC08_Totten_2016_damage_map.tif", "ab") as handle:
        handle.write(b"\0")


def _rewrite_ods(release: Path, change: Callable[[list[OdsRow]], list[OdsRow]]) -> None:
    rows = read_metadata_ods(release / METADATA_ODS)
    write_metadata_ods(release / METADATA_ODS, change(rows))


def _shift_date(rows: list[OdsRow]) -> list[OdsRow]:
    return [OdsRow(**{**r.__dict__, "acquisition_dates": (dt.date(r.year, 12, 1),)})
            if r.shelf == "Totten" and r.year == 2016 else r for r in rows]


def _demo_provenance(release: Path) -> None:
    name = build_name(("LC08",), "Totten", 2016, None, TYPE1)
    path = provenance_path(release, name)
    edit_json(path, lambda d: d.update(source="demo"))


def _gpkg_far_away(release: Path) -> None:
    frame = gpd.GeoDataFrame({"shelf": ["Totten"], "source": ["test"]},
                             geometry=[box(0, 0, 1000, 1000)], crs="EPSG:3031")
    (release / roi_geopackage_name("Totten")).unlink()
    frame.to_file(release / roi_geopackage_name("Totten"), driver="GPKG")


def _gpkg_4326(release: Path) -> None:
    frame = gpd.read_file(release / roi_geopackage_name("Totten")).to_crs("EPSG:4326")
    (release / roi_geopackage_name("Totten")).unlink()
    frame.to_file(release / roi_geopackage_name("Totten"), driver="GPKG")


CORRUPTIONS: list[tuple[str, Callable[[Path], None]]] = [
    ("stac-schema", lambda r: edit_json(item_path(r, "totten-2016"), lambda d: d["assets"][
        "damage_map"]["classification:classes"][0].update(name="not a name"))),
    ("product-without-item", lambda r: shutil.rmtree(item_path(r, "totten-2016").parent)),
    ("stac-json-invalid", lambda r: item_path(r, "totten-2016").write_text("{not json")),
    ("asset-missing", lambda r: (r / "Totten/2016/LC08_Totten_2016_thumbnail.png").unlink()),
    ("asset-checksum", _append_byte),
    ("asset-size", _append_byte),
    ("item-grid-mismatch", lambda r: edit_json(item_path(r, "totten-2016"), lambda d: d[
        "assets"]["damage_map"].update({"proj:shape": [1, 1]}))),
    ("item-stats-mismatch", lambda r: edit_json(item_path(r, "totten-2016"), lambda d: d[
        "properties"].update({"icedamage:damage_area_km2": 1.0}))),
    ("unknown-not-listed", lambda r: edit_json(item_path(r, "totten-2016"), lambda d: d[
        "properties"].update({"icedamage:model": None}))),
    ("demo-flag", _demo_provenance),
    ("index-missing", lambda r: (r / ITEMS_PARQUET).unlink()),
    ("index-unreadable", lambda r: (r / ITEMS_PARQUET).write_bytes(b"not parquet")),
    ("catalog-link-broken", lambda r: shutil.rmtree(item_path(r, "totten-2016").parent)),
    ("ods-row-missing", lambda r: _rewrite_ods(r, lambda rows: rows[1:])),
    ("acquisition-dates", lambda r: _rewrite_ods(r, _shift_date)),
    ("ods-unreadable", lambda r: (r / METADATA_ODS).write_bytes(b"not a spreadsheet")),
    ("roi-missing", lambda r: (r / roi_geopackage_name("Totten")).unlink()),
    ("roi-crs", _gpkg_4326),
    ("product-outside-roi", _gpkg_far_away),
]


@pytest.mark.parametrize(("rule", "corrupt"), CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_each_rule_catches_its_problem(cataloged: Path, rule: str,
                                       corrupt: Callable[[Path], None]) -> None:
    corrupt(cataloged)
    assert rule in rules_found(cataloged, RULE_SET_OF.get(rule, "catalog-consistency"))


# --------------------------------------------------------------------------------------------
# Each problem is reported with its file, and one bad file never aborts a rule set
# --------------------------------------------------------------------------------------------

ITEM_T16 = f"stac/{COLLECTION}/totten-2016/totten-2016.json"
ITEM_T21 = f"stac/{COLLECTION}/totten-2021/totten-2021.json"
ITEM_AMERY = f"stac/{COLLECTION}/amery-front-2012/amery-front-2012.json"
ODS_T16 = f"{METADATA_ODS} row Totten 2016"
T16_TYPE1 = "Totten/2016/LC08_Totten_2016_damage_map.tif"
T16_TYPE2 = "Totten/2016/LC08_Totten_2016_damage.tif"
AMERY_TYPE2 = "Amery_front/2012/LE07_LC08_Amery_front_2012_slc_off_DiffGF_damage.tif"
T16_NAME = build_name(("LC08",), "Totten", 2016, None, TYPE1)

#: What a test expects: (rule set, rule id, file named by the problem).
Expected = tuple[str, str, str]


def problems_by_rule_set(release: Path) -> dict[str, set[tuple[str, str]]]:
    """(rule, file) of every problem, per rule set; each rule set runs on its own."""
    rule_sets = [StacSchemaRules(SCHEMAS), CatalogConsistencyRules(), ReleaseMetadataRules()]
    return {rs.name: {(p.rule, p.file) for p in rs.check(release)} for rs in rule_sets}


def _edit_item(item: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
    return lambda release: edit_json(item_path(release, item), change)


def _set_asset(key: str, **fields: object) -> Callable[[Path], None]:
    return _edit_item("totten-2016", lambda d: d["assets"][key].update(fields))


def _thumbnail_outside(release: Path) -> None:
    """The thumbnail moved out of the release, its asset following it with an absolute href."""
    outside = release.parent / "elsewhere_thumbnail.png"
    shutil.move(release / "Totten/2016/LC08_Totten_2016_thumbnail.png", outside)
    _set_asset("thumbnail", href=str(outside))(release)


def _provenance_escaping(release: Path) -> None:
    """The provenance asset reaches a copy beside the release through ``..``."""
    shutil.copy(provenance_path(release, T16_NAME), release.parent / "copy_provenance.json")
    _set_asset("provenance", href="../../../../copy_provenance.json")(release)


def _link_absolute(release: Path) -> None:
    def change(data: dict) -> None:
        for link in data["links"]:
            if link["rel"] == "describedby":
                link["href"] = str(release / METADATA_ODS)
    edit_json(release / "stac" / COLLECTION / "collection.json", change)


def _ods_t16(**changes: object) -> Callable[[Path], None]:
    return lambda release: _rewrite_ods(release, lambda rows: [
        dataclasses.replace(r, **changes) if (r.shelf, r.year) == ("Totten", 2016) else r
        for r in rows])


def _ods_duplicate(release: Path) -> None:
    _rewrite_ods(release, lambda rows: rows + [
        dataclasses.replace(r, acquisition_dates=(dt.date(2030, 1, 1),))
        for r in rows if (r.shelf, r.year) == ("Totten", 2016)])


def _truncate_amery(release: Path) -> None:
    path = release / AMERY_TYPE2
    path.write_bytes(path.read_bytes()[:300])


def _unregistered_shelf_product(release: Path) -> None:
    (release / "Foo" / "2016").mkdir(parents=True)
    shutil.copy(release / T16_TYPE1, release / "Foo/2016/LC08_Foo_2016_damage_map.tif")


def _garble_provenance(release: Path) -> None:
    (release / "Larsen B/2001/LE07_Larsen B_2001_provenance.json").write_text("{garbled")


def _demo_without_provenance_asset(release: Path) -> None:
    _demo_provenance(release)
    _edit_item("totten-2016", lambda d: d["assets"].pop("provenance"))(release)


ITEM_T16_COPY = f"stac/{COLLECTION}/totten-2016-copy/totten-2016-copy.json"


def _demo_item_copy(release: Path) -> None:
    """Demo products, and a second item under another id pointing at them that says not demo
    (the same relative depth, so its hrefs still reach the products)."""
    _demo_provenance(release)
    data = json.loads(item_path(release, "totten-2016").read_text())
    data["id"] = "totten-2016-copy"
    data["properties"]["icedamage:demo"] = False
    copy = release / ITEM_T16_COPY
    copy.parent.mkdir()
    copy.write_text(json.dumps(data))


def _no_provenance_no_dates(release: Path) -> None:
    """A shelf-year whose provenance record is gone, and whose ods row has no dates: the
    dates (and the demo flag) its item still claims come from nowhere."""
    provenance_path(release, T16_NAME).unlink()
    _edit_item("totten-2016", lambda d: d["assets"].pop("provenance"))(release)
    _ods_t16(acquisition_dates=())(release)


def _parquet_fraction(release: Path) -> None:
    table = pq.read_table(release / ITEMS_PARQUET)
    column = "icedamage:damage_fraction"
    stale = pa.array([0.999] * table.num_rows, table.schema.field(column).type)
    pq.write_table(table.set_column(table.column_names.index(column), column, stale),
                   release / ITEMS_PARQUET)


def _ndjson_content(release: Path) -> None:
    lines = (release / ITEMS_NDJSON).read_text().splitlines(keepends=True)
    lines = [line.replace('"icedamage:damage_area_km2": ', '"icedamage:damage_area_km2": 9')
             if '"id": "totten-2016"' in line else line for line in lines]
    (release / ITEMS_NDJSON).write_text("".join(lines))


def _gpkg_point_layer_first(release: Path) -> None:
    """A point layer before the ROI layer (which lies far from the products)."""
    path = release / roi_geopackage_name("Totten")
    path.unlink()
    gpd.GeoDataFrame({"name": ["label"]}, geometry=[Point(0, 0)], crs="EPSG:3031").to_file(
        path, layer="labels", driver="GPKG", engine="pyogrio")
    gpd.GeoDataFrame({"shelf": ["Totten"]}, geometry=[box(0, 0, 1000, 1000)],
                     crs="EPSG:3031").to_file(path, layer="roi", driver="GPKG",
                                              engine="pyogrio")


def _both(*corruptions: Callable[[Path], None]) -> Callable[[Path], None]:
    def apply(release: Path) -> None:
        for corrupt in corruptions:
            corrupt(release)
    return apply


_T21_YEAR_X = _edit_item("totten-2021", lambda d: d["properties"].update(
    {"icedamage:year": "x"}))

FILE_CORRUPTIONS: list[tuple[str, Callable[[Path], None], list[Expected]]] = [
    # 1: asset hrefs are relative paths inside the release
    ("asset absolute, outside the release", _thumbnail_outside,
     [("catalog-consistency", "asset-href", ITEM_T16)]),
    ("asset escaping the release with ..", _provenance_escaping,
     [("catalog-consistency", "asset-href", ITEM_T16)]),
    ("asset file:// URL to a missing file", _set_asset("thumbnail", href="file:///nowhere/x.png"),
     [("catalog-consistency", "asset-href", ITEM_T16),
      ("catalog-consistency", "asset-missing", ITEM_T16)]),
    ("product asset absolute, inside the release",
     lambda r: _set_asset("damage_map", href=str(r / T16_TYPE1))(r),
     [("catalog-consistency", "asset-href", ITEM_T16)]),
    ("collection link absolute", _link_absolute,
     [("catalog-consistency", "link-href", f"stac/{COLLECTION}/collection.json")]),
    # 2: metadata.ods rows agree with the product and its provenance
    ("ods sensors", _ods_t16(sensors=("LE07",)),
     [("release-metadata", "ods-row-mismatch", ODS_T16)]),
    ("ods restoration", _ods_t16(restoration="DiffGF"),
     [("release-metadata", "ods-row-mismatch", ODS_T16)]),
    ("ods damage_file", _ods_t16(damage_file="LE07_Totten_2016_damage.tif"),
     [("release-metadata", "ods-file-name", ODS_T16)]),
    ("ods damage_map_file empty", _ods_t16(damage_map_file=""),
     [("release-metadata", "ods-file-name", ODS_T16)]),
    ("ods scene_ids", _ods_t16(scene_ids=("bogus",)),
     [("release-metadata", "ods-row-mismatch", ODS_T16)]),
    ("ods scene_sensors", _ods_t16(scene_sensors=("LC09",)),
     [("release-metadata", "ods-row-mismatch", ODS_T16)]),
    ("ods main scene", _ods_t16(main_scene="bogus", main_scene_date=dt.date(2017, 1, 1)),
     [("release-metadata", "ods-row-mismatch", ODS_T16)]),
    # 3: one row per shelf-year
    ("ods duplicate row", _ods_duplicate,
     [("release-metadata", "ods-row-duplicate", METADATA_ODS),
      ("release-metadata", "acquisition-dates", ODS_T16)]),
    # 4: odd STAC files are problems of their own, the other files are still checked
    ("item without stac_version", _both(
        _edit_item("amery-front-2012", lambda d: d.pop("stac_version")), _append_byte,
        _gpkg_far_away, _T21_YEAR_X),
     [("stac-schema", "stac-schema", ITEM_AMERY), ("stac-schema", "stac-schema", ITEM_T21),
      ("catalog-consistency", "asset-checksum", ITEM_T16),
      ("release-metadata", "product-outside-roi", T16_TYPE2)]),
    ("item of STAC 1.0.0", _both(
        _edit_item("totten-2016", lambda d: d.update(stac_version="1.0.0")), _T21_YEAR_X),
     [("stac-schema", "stac-schema", ITEM_T16), ("stac-schema", "stac-schema", ITEM_T21)]),
    ("item without type", _both(_edit_item("totten-2016", lambda d: d.pop("type")),
                                _T21_YEAR_X),
     [("stac-schema", "stac-schema", ITEM_T16), ("stac-schema", "stac-schema", ITEM_T21)]),
    ("item pystac cannot read", _both(
        _edit_item("totten-2016", lambda d: d["assets"]["thumbnail"].pop("href")),
        _edit_item("totten-2021", lambda d: d["assets"]["damage"].update(
            {"file:size": 1})), _gpkg_far_away),
     [("catalog-consistency", "stac-item-invalid", ITEM_T16),
      ("catalog-consistency", "asset-size", ITEM_T21),
      ("release-metadata", "product-outside-roi", T16_TYPE2)]),
    # 5: a file that does not read is reported, the rule set goes on
    ("truncated product", _both(_truncate_amery, _append_byte, _gpkg_far_away),
     [("catalog-consistency", "catalog-file-unreadable", AMERY_TYPE2),
      ("catalog-consistency", "asset-checksum", ITEM_T16),
      ("release-metadata", "catalog-file-unreadable", AMERY_TYPE2),
      ("release-metadata", "product-outside-roi", T16_TYPE2)]),
    ("product of an unregistered shelf", _both(_unregistered_shelf_product, _append_byte),
     [("catalog-consistency", "product-without-item", "Foo/2016/LC08_Foo_2016_damage_map.tif"),
      ("catalog-consistency", "asset-checksum", ITEM_T16)]),
    ("garbled provenance", _both(_garble_provenance, _gpkg_far_away),
     [("catalog-consistency", "catalog-file-unreadable",
       "Larsen B/2001/LE07_Larsen B_2001_provenance.json"),
      ("release-metadata", "product-outside-roi", T16_TYPE2)]),
    # 6: the demo flag follows the release's provenance record, not the item's asset
    ("demo provenance, asset dropped", _demo_without_provenance_asset,
     [("catalog-consistency", "demo-flag", ITEM_T16)]),
    ("demo products under another item id", _demo_item_copy,
     [("catalog-consistency", "demo-flag", ITEM_T16_COPY)]),
    ("dates and demo flag without a source", _no_provenance_no_dates,
     [("catalog-consistency", "demo-flag", ITEM_T16),
      ("release-metadata", "acquisition-dates", ITEM_T16)]),
    # 8: the item index holds the items as they are
    ("parquet values stale", _parquet_fraction,
     [("catalog-consistency", "index-stale", ITEMS_PARQUET)]),
    ("ndjson content stale", _ndjson_content,
     [("catalog-consistency", "index-stale", ITEMS_NDJSON)]),
    # 9: item-level grid, geometry and bbox are the footprint product's
    ("item proj:shape", _edit_item("totten-2016", lambda d: d["properties"].update(
        {"proj:shape": [1, 1]})), [("catalog-consistency", "item-grid-mismatch", ITEM_T16)]),
    ("item proj:transform", _edit_item("totten-2016", lambda d: d["properties"].update(
        {"proj:transform": [30.0, 0.0, 0.0, 0.0, -30.0, 0.0]})),
     [("catalog-consistency", "item-grid-mismatch", ITEM_T16)]),
    ("item bbox", _edit_item("totten-2016", lambda d: d.update(
        bbox=[-60.0, -66.0, -59.0, -65.0])),
     [("catalog-consistency", "item-geometry-mismatch", ITEM_T16)]),
    ("item geometry", _edit_item("totten-2016", lambda d: d.update(geometry={
        "type": "Polygon",
        "coordinates": [[[-60, -66], [-59, -66], [-59, -65], [-60, -65], [-60, -66]]]})),
     [("catalog-consistency", "item-geometry-mismatch", ITEM_T16)]),
    # 10: timestamps follow the acquisition dates
    ("item datetimes", _edit_item("totten-2016", lambda d: d["properties"].update(
        datetime="2030-01-01T00:00:00Z", start_datetime="2030-01-01T00:00:00Z",
        end_datetime="2030-01-01T23:59:59Z")),
     [("catalog-consistency", "item-datetime", ITEM_T16)]),
    ("item end_datetime only", _edit_item("totten-2021", lambda d: d["properties"].update(
        end_datetime="2022-03-31T23:59:59Z")),
     [("catalog-consistency", "item-datetime", ITEM_T21)]),
    # fields of types no rule expects: the schema says so, no rule set stops
    ("item id a list", _edit_item("totten-2016", lambda d: d.update(id=["a"])),
     [("stac-schema", "stac-schema", ITEM_T16)]),
    ("unknown a list of lists", _edit_item("totten-2016", lambda d: d["properties"].update(
        {"icedamage:unknown": [["a"]]})), [("stac-schema", "stac-schema", ITEM_T16)]),
    ("shelf a list", _edit_item("totten-2016", lambda d: d["properties"].update(
        {"icedamage:shelf": ["Totten"]})), [("stac-schema", "stac-schema", ITEM_T16)]),
    # 11: the ROI is read from the polygon layer, whatever layer comes first
    ("ROI behind a point layer", _gpkg_point_layer_first,
     [("release-metadata", "product-outside-roi", T16_TYPE2)]),
]


@pytest.mark.parametrize(("corrupt", "expected"), [c[1:] for c in FILE_CORRUPTIONS],
                         ids=[c[0] for c in FILE_CORRUPTIONS])
def test_each_problem_names_its_file_and_no_rule_set_aborts(
        cataloged: Path, corrupt: Callable[[Path], None], expected: list[Expected]) -> None:
    corrupt(cataloged)
    found = problems_by_rule_set(cataloged)  # a rule set that raises fails the test here
    for rule_set, rule, file in expected:
        assert (rule, file) in found[rule_set], (rule_set, sorted(found[rule_set]))
    assert not any(rule == "catalog-check-failed" for f in found.values() for rule, _ in f)
    assert ("roi-invalid", roi_geopackage_name("Totten")) not in found["release-metadata"]


def test_validate_reports_a_truncated_product_without_failing_a_rule_set(cataloged: Path
                                                                         ) -> None:
    _truncate_amery(cataloged)
    report = validate_release(cataloged, rule_sets=[StacSchemaRules(SCHEMAS),
                                                    CatalogConsistencyRules(),
                                                    ReleaseMetadataRules()])
    rules = {(p.rule, p.file) for p in report.problems}
    assert ("catalog-file-unreadable", AMERY_TYPE2) in rules
    assert not any(rule == "validator-rule-set-failed" for rule, _ in rules)


def test_valid_variations_pass_the_catalog_rules(cataloged: Path) -> None:
    """What a valid release may hold and the rules must not call wrong: sensors of an ODS row
    in another order, and a not-applicable null a catalog built earlier listed as unknown."""
    _rewrite_ods(cataloged, lambda rows: [
        dataclasses.replace(r, sensors=tuple(reversed(r.sensors)))
        if (r.shelf, r.year) == ("Totten", 2021) else r for r in rows])
    _edit_item("totten-2016", lambda d: d["properties"]["icedamage:unknown"].append(
        "icedamage:restoration"))(cataloged)  # null (not restored), listed as unknown
    found = problems_by_rule_set(cataloged)
    assert not any(rule in {"ods-row-mismatch", "unknown-not-null", "unknown-not-listed"}
                   for f in found.values() for rule, _ in f), found


def test_release_reached_through_dotdot_is_consistent(cataloged: Path, tmp_path: Path) -> None:
    (tmp_path / "detour").mkdir()
    winding = Path(f"{tmp_path}/detour/../{cataloged.name}")
    assert rules_found(winding) == set()


def test_build_state_dot_file_is_no_stac_object(cataloged: Path) -> None:
    assert (cataloged / "stac" / ".build.json").exists()
    assert rules_found(cataloged, "stac-schema") == set()


def test_unrelated_asset_checks_survive_an_absolute_outside_href(cataloged: Path) -> None:
    _thumbnail_outside(cataloged)
    problems = list(CatalogConsistencyRules().check(cataloged))
    [href] = [p for p in problems if p.rule == "asset-href"]
    assert "assets.thumbnail" in href.found and "outside the release" in href.found


def test_read_roi_picks_the_polygon_layer_and_refuses_a_file_without_one(tmp_path: Path
                                                                         ) -> None:
    path = tmp_path / "roi.gpkg"
    gpd.GeoDataFrame({"name": ["a"]}, geometry=[Point(0, 0)], crs="EPSG:3031").to_file(
        path, layer="labels", driver="GPKG", engine="pyogrio")
    with pytest.raises(ValueError, match="no polygon layer.*labels"):
        read_roi(path)
    gpd.GeoDataFrame({"shelf": ["Totten"]}, geometry=[box(0, 0, 10, 10)],
                     crs="EPSG:3031").to_file(path, layer="roi", driver="GPKG",
                                              engine="pyogrio")
    frame = read_roi(path)
    assert list(frame.geometry.geom_type) == ["Polygon"] and frame.crs.to_epsg() == 3031


def test_schema_message_names_the_items_own_branch(cataloged: Path) -> None:
    """An item missing its statistics is told so, not that it should have been a Collection."""
    def drop_stats(data: dict) -> None:
        for key in [k for k in data["properties"] if "fraction" in k or "area" in k]:
            del data["properties"][key]
    edit_json(item_path(cataloged, "totten-2016"), drop_stats)
    found = [p.found for p in StacSchemaRules(SCHEMAS).check(cataloged)
             if p.file == ITEM_T16 and p.rule == "stac-schema"]
    assert found and not any("Collection" in text for text in found)
    assert any("required property" in text for text in found)


def _props(data: dict) -> dict:
    return data["properties"]


#: (what, "item" or "collection", change) of objects our extension schema must refuse.
SCHEMA_REFUSES: list[tuple[str, str, Callable[[dict], object]]] = [
    ("slc_off null", "item", lambda d: _props(d).update({"icedamage:slc_off": None})),
    ("month 13 in acquisition_dates", "item",
     lambda d: _props(d).update({"icedamage:acquisition_dates": ["2019-13-01"]})),
    ("day 45 in acquisition_dates", "item",
     lambda d: _props(d).update({"icedamage:acquisition_dates": ["2019-12-45"]})),
    ("31 November", "item", lambda d: _props(d).update({"icedamage:acquisition_dates":
                                                        ["2019-11-31"]})),
    ("scene acquired 2019-99-99", "item",
     lambda d: _props(d)["icedamage:scenes"][0].update(acquired="2019-99-99")),
    ("unknown lists no field", "item",
     lambda d: _props(d)["icedamage:unknown"].append("icedamage:nonexistent")),
    ("icedamage typo on an asset", "item",
     lambda d: d["assets"]["damage_map"].update({"icedamage:shelff": "Totten"})),
    ("icedamage typo at the collection's top level", "collection",
     lambda d: d.update({"icedamage:typo": 1})),
    ("summary of year not a range or list", "collection",
     lambda d: d["summaries"].update({"icedamage:year": "junk"})),
    ("summary year range of strings", "collection",
     lambda d: d["summaries"].update({"icedamage:year": {"minimum": "a", "maximum": "b"}})),
    ("summary of an unknown sensor", "collection",
     lambda d: d["summaries"].update({"icedamage:sensors": ["XX99"]})),
    ("summary of an undefined field", "collection",
     lambda d: d["summaries"].update({"icedamage:shelves": ["Totten"]})),
    ("icedamage typo in item_assets", "collection",
     lambda d: d["item_assets"]["damage_map"].update({"icedamage:typo": 1})),
    ("icedamage typo on a collection asset", "collection",
     lambda d: d["assets"]["metadata"].update({"icedamage:typo": 1})),
]


def _extension_errors(data: dict) -> list[str]:
    """Errors of a STAC dict against our extension schema alone (as packaged)."""
    validator = jsonschema.Draft7Validator(schemas.load_schema())
    return [error.message for error in validator.iter_errors(data)]


def _saved_objects(release: Path) -> dict[str, dict]:
    return {"item": json.loads(item_path(release, "larsen-b-2005").read_text()),
            "collection": json.loads(
                (release / "stac" / COLLECTION / "collection.json").read_text())}


@pytest.mark.parametrize(("kind", "change"), [c[1:] for c in SCHEMA_REFUSES],
                         ids=[c[0] for c in SCHEMA_REFUSES])
def test_extension_schema_refuses_what_the_doc_rules_out(cataloged_pristine: Path, kind: str,
                                                         change: Callable[[dict], object]) -> None:
    """docs/stac-extension.md's rules hold wherever an ``icedamage:`` field may appear: the
    collection (top level, summaries, item_assets, assets) and item assets as well as item
    properties; dates are calendar dates; ``icedamage:unknown`` names defined fields only."""
    data = _saved_objects(cataloged_pristine)[kind]
    assert _extension_errors(data) == []
    change(data)
    assert _extension_errors(data) != []


def test_extension_schema_accepts_valid_variations(cataloged_pristine: Path) -> None:
    """What the doc allows still validates: a defined field in a summary (as a list, a range or
    a JSON Schema), on an asset or at the collection's top level, a leap day, other prefixes."""
    objects = _saved_objects(cataloged_pristine)
    item, collection = objects["item"], objects["collection"]
    _props(item)["icedamage:acquisition_dates"] = ["2020-02-29"]
    item["assets"]["damage_map"]["icedamage:shelf"] = "Larsen B"
    item["assets"]["damage_map"]["other:field"] = None
    collection["summaries"].update({"icedamage:damage_fraction": {"minimum": 0, "maximum": 0.2},
                                    "icedamage:acquisition_dates": ["2005-12-10"],
                                    "icedamage:model": {"type": "string"}})
    collection["icedamage:shelf"] = "Larsen B"
    assert _extension_errors(item) == [] and _extension_errors(collection) == []


def test_extension_schema_summaries_and_unknown_cover_every_field() -> None:
    """Every field of the extension may be summarized and listed unknown, and no other name:
    a field added to the schema must be added to both lists."""
    definitions = schemas.load_schema()["definitions"]
    fields = set(definitions["fields"]["properties"])
    assert set(definitions["summaries"]["properties"]) == fields
    unknown = definitions["fields"]["properties"]["icedamage:unknown"]["items"]["enum"]
    assert set(unknown) == fields - {"icedamage:unknown"}


# --------------------------------------------------------------------------------------------
# Releases without provenance (the published v1)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("garble", ['{"shelf": "Totten",\n', '{"shelf": "Totten"}'])
def test_catalog_names_an_unreadable_provenance_record(cataloged: Path, garble: str) -> None:
    """A truncated record, or one missing fields, is a one-line error naming the file (exit
    1), not a traceback or a message without a file name."""
    name = build_name(("LC08",), "Totten", 2016, None, TYPE1)
    record = provenance_path(cataloged, name)
    record.write_text(garble)
    result = CliRunner().invoke(build_app(), ["catalog", str(cataloged), "--force"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert record.name in result.output.replace("\n", "")  # rich may wrap the path
    assert "Traceback" not in result.output


def test_demo_maps_without_provenance_are_still_demo(cataloged: Path) -> None:
    """Trimmed of its provenance record, a demo shelf-year is still flagged demo: the products'
    own source tag says so (and the rule checks the flag against it)."""
    name = build_name(("LC08",), "Totten", 2016, None, TYPE1)
    folder = cataloged / name.relative_path().parent
    for product in (name, name.partner()):
        with rasterio.open(folder / product.filename, "r+",
                           IGNORE_COG_LAYOUT_BREAK="YES") as dataset:
            dataset.update_tags(**{SOURCE_TAG: "demo"})
    provenance_path(cataloged, name).unlink()
    catalog_release(cataloged, PAPER_FACTORS)
    path = item_path(cataloged, "totten-2016")
    props = json.loads(path.read_text())["properties"]
    assert props["icedamage:demo"] is True and props["icedamage:source"] == "demo"
    assert "icedamage:demo" not in props["icedamage:unknown"]
    assert "demo-flag" not in rules_found(cataloged, "catalog-consistency")
    edit_json(path, lambda d: d["properties"].update({"icedamage:demo": None}))
    assert "demo-flag" in rules_found(cataloged, "catalog-consistency")


T16_NAME = build_name(("LC08",), "Totten", 2016, None, TYPE1)


def _tag_products(release: Path, source: str) -> list[Path]:
    """Re-write Totten 2016's two products with the real writer, ``source`` in their
    ``SOURCE_TAG`` (valid COGs: only what the test changes is wrong)."""
    written = write_tagged_products(release, source, "Totten", 2016)
    return [written.damage_map, written.damage]


def _relative(release: Path, paths: list[Path]) -> list[str]:
    return sorted(p.relative_to(release).as_posix() for p in paths)


def test_a_demo_tag_however_spelled_is_demo_for_catalog_and_publisher(cataloged: Path
                                                                       ) -> None:
    """A hand-edited "Demo " tag is the demo source for the catalog, its demo-flag rule and
    the publisher alike (one rule: ``spec.is_demo_source``)."""
    paths = _tag_products(cataloged, "Demo ")
    provenance_path(cataloged, T16_NAME).unlink()
    catalog_release(cataloged, PAPER_FACTORS)
    props = json.loads(item_path(cataloged, "totten-2016").read_text())["properties"]
    assert props["icedamage:demo"] is True and props["icedamage:source"] == DEMO_SOURCE
    assert "demo-flag" not in rules_found(cataloged, "catalog-consistency")
    assert demo_products(cataloged) == _relative(cataloged, paths)


def test_a_record_whose_demo_field_contradicts_its_source_does_not_read(cataloged: Path
                                                                         ) -> None:
    """``"demo": true`` beside ``"source": "gee"``: the publisher counts it as demo, so the
    catalog and its rules must not read it as a real record (it is reported, not ignored)."""
    record = provenance_path(cataloged, T16_NAME)
    record.write_text(json.dumps({**json.loads(record.read_text()), "source": "gee",
                                  "demo": True}))
    with pytest.raises(ValueError, match="contradicts"):
        read_provenance(record)
    problems = list(CatalogConsistencyRules().check(cataloged))
    [unreadable] = [p for p in problems if p.rule == "catalog-file-unreadable"]
    assert unreadable.file == _relative(cataloged, [record])[0]
    assert "'demo' field (true) contradicts its 'source' ('gee')" in unreadable.found
    assert demo_products(cataloged) == _relative(cataloged, [record])


def test_products_tagged_demo_beside_a_gee_record_fail_validation(cataloged: Path) -> None:
    """The catalog reads the record (gee) and would call the demo maps real: the source-tag
    rule names each product, its tag and the record's source."""
    record = provenance_path(cataloged, T16_NAME)
    record.write_text(dataclasses.replace(read_provenance(record), source="gee").to_json())
    paths = _tag_products(cataloged, DEMO_SOURCE)
    catalog_release(cataloged, PAPER_FACTORS)  # a fresh catalog: only the disagreement is left
    report = validate_release(cataloged, workers=1)
    tagged = [p for p in report.problems if p.rule == "source-tag"]
    assert {p.rule for p in report.errors} == {"source-tag"}, report.to_json()
    assert sorted(p.file for p in tagged) == _relative(cataloged, paths)
    for problem in tagged:
        assert f"{SOURCE_TAG} = 'demo'" in problem.found and "source = 'gee'" in problem.found
        assert _relative(cataloged, [record])[0] in problem.found
    _tag_products(cataloged, " GEE")  # the same source, however spaced or cased
    assert "source-tag" not in rules_found(cataloged, "catalog-consistency")


def test_release_without_provenance_lists_unknowns(tmp_path: Path) -> None:
    root = build_release(tmp_path / "v1", DEFAULT_SHELF_YEARS[:2], with_provenance=False)
    result = catalog_release(root, PAPER_FACTORS)
    item = json.loads(item_path(root, "totten-2016").read_text())
    props = item["properties"]
    assert set(result.unknown_items) == {"totten-2016", "totten-2021"}
    assert {"icedamage:acquisition_dates", "icedamage:scenes", "icedamage:main_scene",
            "icedamage:model", "icedamage:model_weights_sha256", "icedamage:demo",
            "icedamage:source"} == set(props["icedamage:unknown"])
    assert props["datetime"] is None
    assert props["start_datetime"] == "2016-11-01T00:00:00Z"  # the summer, not invented dates
    assert props["end_datetime"] == "2017-03-31T23:59:59Z"
    assert props["icedamage:damage_area_km2"] > 0
    assert rules_found(root) == set()


def test_release_without_provenance_takes_dates_from_its_metadata_ods(tmp_path: Path) -> None:
    root = build_release(tmp_path / "v1", DEFAULT_SHELF_YEARS[:1], with_provenance=False)
    shelf_year = DEFAULT_SHELF_YEARS[0]
    name = build_name(shelf_year.sensors, shelf_year.shelf, shelf_year.year, None, TYPE1)
    write_metadata_ods(root / METADATA_ODS, [OdsRow(
        "Totten", 2021, name.filename, name.partner().filename, ("LC08", "LC09"), None,
        acquisition_dates=(dt.date(2022, 1, 5), dt.date(2021, 12, 2)))])
    original = (root / METADATA_ODS).read_bytes()
    catalog_release(root, PAPER_FACTORS)
    assert (root / METADATA_ODS).read_bytes() == original  # the authors' file is kept as is
    props = json.loads(item_path(root, "totten-2021").read_text())["properties"]
    assert props["icedamage:acquisition_dates"] == ["2021-12-02", "2022-01-05"]
    assert props["start_datetime"] == "2021-12-02T00:00:00Z"
    assert props["end_datetime"] == "2022-01-05T23:59:59Z"
    assert "icedamage:acquisition_dates" not in props["icedamage:unknown"]
    assert "icedamage:main_scene" in props["icedamage:unknown"]


def test_new_shelf_year_gets_its_ods_row_beside_one_without_provenance(tmp_path: Path) -> None:
    root = build_release(tmp_path / "r", (ShelfYear("Totten", 2016, ("LC08",)),),
                         with_provenance=False)
    catalog_release(root, PAPER_FACTORS)
    [old_row] = read_metadata_ods(root / METADATA_ODS)
    build_release(root, (ShelfYear("Totten", 2021, ("LC08", "LC09")),))  # newly produced
    result = catalog_release(root, PAPER_FACTORS)
    assert result.metadata_written
    rows = {(r.shelf, r.year): r for r in read_metadata_ods(root / METADATA_ODS)}
    assert rows[("Totten", 2016)] == old_row  # kept: it has no provenance to rebuild it from
    assert rows[("Totten", 2021)].acquisition_dates == (dt.date(2021, 12, 10),
                                                        dt.date(2021, 12, 19))
    assert rules_found(root) == set()  # no ods-row-missing
    assert not catalog_release(root, PAPER_FACTORS, force=True).metadata_written


def test_provenance_dates_match_items(cataloged_pristine: Path) -> None:
    name = build_name(("LE07", "LC08"), "Amery_front", 2012, "DiffGF", TYPE1)
    prov = read_provenance(provenance_path(cataloged_pristine, name))
    props = json.loads(item_path(cataloged_pristine, "amery-front-2012").read_text())[
        "properties"]
    assert props["icedamage:acquisition_dates"] == sorted(
        s.acquired.isoformat() for s in prov.scenes)
    assert shape(json.loads(item_path(cataloged_pristine, "amery-front-2012").read_text())[
        "geometry"]).is_valid


def test_validate_runs_the_catalog_rule_sets(cataloged: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(build_app(), ["validate", str(cataloged), "--schemas", str(SCHEMAS)])
    assert ok.exit_code == 0, ok.output
    assert "catalog-consistency" in ok.output and "stac-schema" in ok.output
    edit_json(item_path(cataloged, "larsen-b-2001"), lambda d: d["properties"].update(
        {"icedamage:damage_area_km2": 0.5}))
    report = cataloged.parent / "report.json"
    bad = runner.invoke(build_app(), ["validate", str(cataloged), "--schemas", str(SCHEMAS),
                                      "--json", str(report)])
    assert bad.exit_code == 1
    problems = json.loads(report.read_text())["problems"]
    # the item index still holds the item as it was: search would serve the old numbers
    assert {(p["rule"], p["file"]) for p in problems} == {
        ("item-stats-mismatch", f"stac/{COLLECTION}/larsen-b-2001/larsen-b-2001.json"),
        ("index-stale", ITEMS_NDJSON)}


def test_schema_warning_without_a_schema_folder(cataloged_pristine: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ICEDAMAGE_STAC_SCHEMAS", raising=False)
    problems = list(StacSchemaRules().check(cataloged_pristine))
    assert {p.rule for p in problems} == {"stac-schema-unavailable"}
    assert all(p.severity == "warning" for p in problems)
    assert not any("icedamage.github.io" in p.found for p in problems)  # ours is packaged


# --------------------------------------------------------------------------------------------
# Property tests of the parsers / encoders
# --------------------------------------------------------------------------------------------

_dates = st.dates(min_value=dt.date(1999, 11, 1), max_value=dt.date(2030, 3, 31))
_ids = st.text(alphabet=st.characters(whitelist_categories=("Lu", "Ll", "Nd"),
                                      whitelist_characters="_-"), min_size=1, max_size=20)


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(scenes=[("NaN", dt.date(2000, 1, 1), "LE07"), ("NA", dt.date(2000, 1, 2), "LE07"),
                 ("null", dt.date(2000, 1, 3), "LC08")], restoration=None)  # not "missing"
@given(scenes=st.lists(st.tuples(_ids, _dates, st.sampled_from(["LE07", "LC08", "LC09"])),
                       min_size=0, max_size=4, unique_by=lambda t: t[0]),
       restoration=st.sampled_from([None, "DiffGF"]))
def test_metadata_ods_round_trips(tmp_path: Path, scenes: list, restoration: str | None) -> None:
    row = OdsRow("Larsen B", 2005, "a_damage_map.tif", "a_damage.tif", ("LE07",), restoration,
                 acquisition_dates=tuple(s[1] for s in scenes),
                 scene_ids=tuple(s[0] for s in scenes),
                 scene_sensors=tuple(s[2] for s in scenes),
                 main_scene=scenes[0][0] if scenes else None,
                 main_scene_date=scenes[0][1] if scenes else None)
    path = tmp_path / "m.ods"
    write_metadata_ods(path, [row])
    assert read_metadata_ods(path) == [row]


def test_metadata_ods_bytes_depend_only_on_its_rows(tmp_path: Path) -> None:
    """A rewrite of the same rows (catalog --force) gives the same bytes, so the collection's
    checksum of it, and a release published again, see no change; still a valid ODF zip."""
    row = OdsRow("Larsen B", 2005, "a_damage_map.tif", "a_damage.tif", ("LE07",), "DiffGF",
                 acquisition_dates=(dt.date(2006, 1, 2),), scene_ids=("s1",),
                 scene_sensors=("LE07",), main_scene="s1", main_scene_date=dt.date(2006, 1, 2))
    first, second = tmp_path / "a.ods", tmp_path / "b.ods"
    write_metadata_ods(first, [row])
    write_metadata_ods(second, [row])
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(second) as ods:
        # not the wall clock, which made two writes seconds apart differ
        assert {info.date_time for info in ods.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        mimetype = ods.infolist()[0]
        assert mimetype.filename == "mimetype" and mimetype.compress_type == zipfile.ZIP_STORED
        assert ods.read("mimetype") == b"application/vnd.oasis.opendocument.spreadsheet"
    assert read_metadata_ods(second) == [row]


def _counterclockwise(geometry: BaseGeometry) -> bool:
    """RFC 7946 3.1.6: exterior rings counterclockwise, holes clockwise."""
    return all(p.exterior.is_ccw and not any(r.is_ccw for r in p.interiors)
               for p in getattr(geometry, "geoms", [geometry]))


@pytest.mark.parametrize("footprint", [
    box(2_200_000, -1_200_000, 2_300_000, -1_100_000),   # Totten-like
    box(-100_000, 1_500_000, 100_000, 1_600_000),          # across the antimeridian
    box(0, -100_000, 100_000, 0),                          # corner at the pole
    box(-100_000, -100_000, 100_000, 0),                   # edge through the pole
    box(-100_000, -100_000, 100_000, 100_000),             # the pole inside
    box(0, 0, 3e5, 3e5).difference(box(1e5, 1e5, 2e5, 2e5)),  # a hole
])
def test_item_geometries_wind_counterclockwise(footprint: BaseGeometry) -> None:
    """Clockwise rings made the antimeridian package (stactools) read a shelf's footprint as the
    rest of the globe; RFC 7946 requires counterclockwise exteriors."""
    geometry, _ = geojson_and_bbox(footprint)
    assert _counterclockwise(shape(geometry))


@settings(max_examples=60, deadline=None)
@given(cx=st.floats(-2.5e6, 2.5e6), cy=st.floats(-2.5e6, 2.5e6),
       half_w=st.floats(2e3, 3e5), half_h=st.floats(2e3, 3e5))
def test_footprints_are_valid_and_cover_their_corners(cx: float, cy: float, half_w: float,
                                                      half_h: float) -> None:
    footprint = box(cx - half_w, cy - half_h, cx + half_w, cy + half_h)
    geometry = footprint_lonlat(footprint)
    assert geometry.is_valid and not geometry.is_empty
    assert _counterclockwise(geometry)
    west, south, east, north = bbox_of(geometry)
    assert -90 <= south < north <= -30 and -180 <= west <= 180 and -180 <= east <= 180
    back = Transformer.from_crs("EPSG:3031", "EPSG:4326", always_xy=True)
    for corner in footprint.exterior.coords:
        lon, lat = back.transform(*corner)
        assert geometry.buffer(1e-5).intersects(Point(lon, lat))


def test_rebuild_keeps_the_dois_the_publisher_wrote(cataloged: Path) -> None:
    catalog = pystac.Catalog.from_file(str(cataloged / "stac" / "catalog.json"))
    collection = catalog.get_child(COLLECTION)
    collection.extra_fields["sci:doi"] = "10.5281/zenodo.20425951"
    collection.add_link(pystac.Link("cite-as", "https://doi.org/10.5281/zenodo.20425951"))
    item = next(i for i in catalog.get_items(recursive=True) if i.id == "totten-2016")
    zenodo = "/vsizip//vsicurl/https://zenodo.org/records/1/files/Totten.zip/Totten/2016/x.tif"
    item.assets["damage_map"].extra_fields["alternate"] = {"zenodo": {"href": zenodo}}
    item.stac_extensions.append(
        "https://stac-extensions.github.io/alternate-assets/v1.2.0/schema.json")
    catalog.save(pystac.CatalogType.SELF_CONTAINED)  # what the publisher does
    catalog_release(cataloged, PAPER_FACTORS, force=True)
    rebuilt = json.loads((cataloged / "stac" / COLLECTION / "collection.json").read_text())
    assert rebuilt["sci:doi"] == "10.5281/zenodo.20425951"
    assert any(link["rel"] == "cite-as" for link in rebuilt["links"])
    rebuilt_item = json.loads(item_path(cataloged, "totten-2016").read_text())
    assert rebuilt_item["assets"]["damage_map"]["alternate"]["zenodo"]["href"] == zenodo
    assert rules_found(cataloged) <= {"stac-schema-unavailable"}  # alternate-assets not local


def test_rebuild_drops_what_the_record_no_longer_holds(cataloged: Path) -> None:
    """After a published map is re-produced, its item no longer claims the record holds it:
    the changed file's Zenodo alternate and the item's DOI and record links are dropped, the
    unchanged files' alternates and the other items' DOIs stay."""
    name = build_name(("LC08",), "Totten", 2016, None, TYPE1)
    folder = cataloged / name.relative_path().parent
    with rasterio.open(folder / name.filename) as src:
        grid = Grid(src.transform, src.width, src.height)
    probability = folder / name.auxiliary("probability")
    write_cog(probability, np.full(grid.shape, 40, np.uint8), grid, None, nodata=255)
    catalog_release(cataloged, PAPER_FACTORS)
    catalog = pystac.Catalog.from_file(str(cataloged / "stac" / "catalog.json"))
    zenodo = "/vsizip//vsicurl/https://zenodo.org/records/1/files/Totten.zip/Totten/2016/"
    for item in catalog.get_items(recursive=True):
        item.properties["sci:doi"] = "10.5281/zenodo.1"
        item.add_link(pystac.Link("cite-as", "https://doi.org/10.5281/zenodo.1"))
        for key, asset in item.assets.items():
            asset.extra_fields["alternate"] = {"zenodo": {"href": zenodo + key}}
        item.stac_extensions += [
            "https://stac-extensions.github.io/alternate-assets/v1.2.0/schema.json",
            "https://stac-extensions.github.io/scientific/v1.0.0/schema.json"]
    catalog.save(pystac.CatalogType.SELF_CONTAINED)  # what the publisher does
    write_cog(probability, np.full(grid.shape, 60, np.uint8), grid, None, nodata=255)
    catalog_release(cataloged, PAPER_FACTORS)
    changed = json.loads(item_path(cataloged, "totten-2016").read_text())
    assert "alternate" not in changed["assets"]["probability"]
    assert changed["assets"]["damage_map"]["alternate"]["zenodo"]["href"] == zenodo + "damage_map"
    assert "sci:doi" not in changed["properties"]
    assert not any(link["rel"] == "cite-as" for link in changed["links"])
    unchanged = json.loads(item_path(cataloged, "totten-2021").read_text())
    assert unchanged["properties"]["sci:doi"] == "10.5281/zenodo.1"
    assert any(link["rel"] == "cite-as" for link in unchanged["links"])


def test_catalog_refuses_a_bad_license(cataloged: Path) -> None:
    result = CliRunner().invoke(build_app(), ["catalog", str(cataloged), "--force",
                                              "--license", "CC BY 4.0"])
    assert result.exit_code == 1 and "SPDX" in result.output


BAD_FACTORS: list[tuple[str, object, str]] = [
    ("a list", [0.9, 1.1, 1.04], "not a list"),
    ("no lambda_restoration", {"lambda_min": 0.9, "lambda_max": 1.1}, "'lambda_restoration'"),
    ("a string", {"lambda_min": "0.9", "lambda_max": 1.1, "lambda_restoration": 1.04},
     "'lambda_min' must be a positive number"),
    ("an unknown key", {"lambda_min": 0.9, "lambda_max": 1.1, "lambda_restored": 1.04},
     "unknown key(s) ['lambda_restored']"),
    ("an edited upper bound", {"lambda_min": 0.9, "lambda_max": 1.1, "lambda_restoration": 1.04,
                               "lambda_upper_restored": 1.3}, "'lambda_upper_restored' is 1.3"),
]


@pytest.mark.parametrize(("content", "message"), [c[1:] for c in BAD_FACTORS],
                         ids=[c[0] for c in BAD_FACTORS])
def test_malformed_factors_files_are_clear_errors(cataloged: Path, tmp_path: Path,
                                                  content: object, message: str) -> None:
    factors = tmp_path / "factors.json"
    factors.write_text(json.dumps(content))
    result = CliRunner().invoke(build_app(), ["catalog", str(cataloged), "--force",
                                              "--factors", str(factors)])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    bare = "".join(result.output.split())  # rich wraps long paths anywhere, spaces included
    assert str(factors).replace(" ", "") in bare and message.replace(" ", "") in bare
    assert "Traceback" not in result.output


def test_factors_file_giving_the_restored_upper_bound(cataloged: Path, tmp_path: Path) -> None:
    factors = tmp_path / "factors.json"
    factors.write_text(json.dumps({"lambda_min": 0.9, "lambda_max": 1.1,
                                   "lambda_upper_restored": 1.2}))
    assert UncertaintyFactors.from_json(factors.read_text()).lambda_upper_restored == \
        pytest.approx(1.2)
    result = CliRunner().invoke(build_app(), ["catalog", str(cataloged), "--force",
                                              "--factors", str(factors)])
    assert result.exit_code == 0, result.output
    props = json.loads(item_path(cataloged, "larsen-b-2005").read_text())["properties"]
    assert props["icedamage:lambda_upper_restored"] == pytest.approx(1.2)
    assert props["icedamage:damage_area_km2_high"] == pytest.approx(
        props["icedamage:damage_area_km2"] * 1.2)
    assert rules_found(cataloged) == set()


def test_auxiliary_rasters_and_demo_source_are_cataloged(cataloged: Path) -> None:
    """The probability asset says its values are percent (0-100), the source-scene asset names
    the scene of each index value in the file's own order, and the collection declares every
    extension its item_assets use (pystac refuses to read them otherwise)."""
    name = build_name(("LC08",), "Totten", 2016, None, TYPE1)
    folder = cataloged / name.relative_path().parent
    with rasterio.open(folder / name.filename) as src:
        grid = Grid(src.transform, src.width, src.height)
    probability = np.full(grid.shape, 80, dtype=np.uint8)
    probability[:5] = 255
    write_cog(folder / name.auxiliary("probability"), probability, grid, None, nodata=255)
    scene_ids = ["LC08_L1TP_088113_20161215_20200905_02_T1", "LANDSAT/LC08/C02/T1_TOA/X"]
    write_cog(folder / name.auxiliary("source_scene"), np.ones(grid.shape, np.uint8), grid,
              None, nodata=255, tags={"scene_ids": json.dumps(scene_ids)})
    edit_json(provenance_path(cataloged, name), lambda d: d.update(source="demo"))
    catalog_release(cataloged, PAPER_FACTORS)
    item = json.loads(item_path(cataloged, "totten-2016").read_text())
    asset = item["assets"]["probability"]
    assert asset["roles"] == ["data"] and asset["proj:shape"] == [grid.height, grid.width]
    assert asset["file:checksum"].startswith("1220") and asset["nodata"] == 255
    assert asset["unit"] == "percent" and "0-100" in asset["title"]
    classes = item["assets"]["source_scene"]["classification:classes"]
    assert [(c["value"], c["title"]) for c in classes] == [
        (0, scene_ids[0]), (1, scene_ids[1]), (254, "not imaged"), (255, "outside the ROI")]
    assert classes[1]["name"] == "LANDSAT_LC08_C02_T1_TOA_X"
    assert [c["nodata"] for c in classes] == [False, False, True, True]
    assert item["properties"]["icedamage:demo"] is True
    collection_path = cataloged / "stac" / COLLECTION / "collection.json"
    collection = json.loads(collection_path.read_text())
    assert collection["summaries"]["icedamage:demo"] == [False, True]
    assert collection["item_assets"]["probability"]["unit"] == "percent"
    read = pystac.Collection.from_file(str(collection_path))
    type1_classes = ClassificationExtension.ext(read.item_assets[TYPE1.key]).classes
    assert [c.value for c in type1_classes or []] == [0, 1, 255]
    assert ProjectionExtension.summaries(read).code == ["EPSG:3031"]
    assert rules_found(cataloged) == set()


class _RoiRows:
    """The ``rows`` of a ``ShelfArea`` for a given ROI mask (the extent is not read here)."""

    def __init__(self, roi: np.ndarray) -> None:
        self.roi = roi

    def rows(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
        return self.roi[r0:r1], self.roi[r0:r1]


def test_every_value_the_producer_writes_in_the_source_index_has_its_class() -> None:
    """The producer's source-index writer, given a plan using as many scenes as one can index
    and pixels of every kind (each scene, ROI pixels no scene imaged, outside the ROI), writes
    only values that the catalog's classes name, with the spec's meanings: 255 (the nodata)
    is outside the ROI, SOURCE_SCENE_NOT_IMAGED inside it but never imaged."""
    from producer import pipeline
    from producer.merge import MAX_SCENES, NO_SCENE, MergePlan
    from producer.spec import SOURCE_SCENE_NOT_IMAGED, SOURCE_SCENE_RASTER

    candidates = list(range(MAX_SCENES))
    index = np.array([[*candidates, NO_SCENE]] * 2, dtype=np.uint8)
    roi = np.array([[True] * index.shape[1], [False] * index.shape[1]])
    plan = MergePlan(index=index, main=0, order=tuple(candidates),
                     fractions=(1 / MAX_SCENES,) * MAX_SCENES, single_scene=False,
                     cloudy_fill_fraction=0.0, uncovered_fraction=0.0,
                     roi_pixels=int(roi.sum()))
    written = pipeline._source_index_rows(plan, _RoiRows(roi))(0, 2)
    scene_ids = [f"LC08_scene_{i:03d}" for i in candidates]
    classes = {c.value: c for c in stac_builders.scene_classes(scene_ids)}
    assert set(np.unique(written)) <= set(classes)
    assert set(classes) == set(range(len(scene_ids))) | {SOURCE_SCENE_NOT_IMAGED,
                                                         SOURCE_SCENE_RASTER.nodata}
    assert classes[int(written[1, 0])].name == "outside_roi"  # outside the ROI polygon
    assert classes[int(written[0, -1])].name == "not_imaged"  # in the ROI, no scene's data
    assert [classes[int(v)].title for v in written[0, :-1]] == scene_ids
    assert classes[SOURCE_SCENE_RASTER.nodata].nodata and classes[SOURCE_SCENE_NOT_IMAGED].nodata
    with pytest.raises(ValueError, match="reserved"):
        stac_builders.scene_classes([*scene_ids, "one too many"])


def test_a_wrongly_cased_shelf_folder_is_refused(cataloged: Path) -> None:
    """totten/2016 instead of Totten/2016 (a case-sensitive disk): refused with the folder the
    products belong in, instead of an item silently without its provenance."""
    (cataloged / "Totten").rename(cataloged / "totten")
    result = CliRunner().invoke(build_app(), ["catalog", str(cataloged), "--force"])
    assert result.exit_code == 1, result.output
    assert "belong in Totten/2016, not totten/2016" in " ".join(result.output.split())


def test_two_maps_for_one_shelf_year_are_refused(cataloged: Path) -> None:
    folder = cataloged / "Totten" / "2016"
    shutil.copy(folder / "LC08_Totten_2016_damage_map.tif",
                folder / "LC08_LC09_Totten_2016_damage_map.tif")
    result = CliRunner().invoke(build_app(), ["catalog", str(cataloged), "--force"])
    assert result.exit_code == 1 and "two products for Totten 2016" in result.output


def test_release_yaml_sets_version_and_license(cataloged: Path) -> None:
    (cataloged / "release.yaml").write_text("version: '1.1'\nlicense: CC-BY-NC-4.0\n")
    catalog_release(cataloged, PAPER_FACTORS)
    item = json.loads(item_path(cataloged, "larsen-b-2005").read_text())
    collection = json.loads((cataloged / "stac" / COLLECTION / "collection.json").read_text())
    assert item["properties"]["version"] == "1.1" and collection["version"] == "1.1"
    assert collection["license"] == "CC-BY-NC-4.0"
    assert any("/version/" in uri for uri in item["stac_extensions"])
    assert rules_found(cataloged, "stac-schema") == set()


def test_a_classical_fill_has_no_model_and_no_known_restoration_factor(tmp_path: Path) -> None:
    """FillNodata: no restoration model (not applicable, so not "unknown"), no λ_restoration
    known (null and listed unknown), and the catalog rules accept exactly that."""
    root = build_release(tmp_path / "r", (ShelfYear("Larsen B", 2006, ("LE07",), "FillNodata"),))
    catalog_release(root, PAPER_FACTORS)
    (path,) = (root / "stac").rglob("larsen-b-2006.json")
    props = json.loads(path.read_text())["properties"]
    assert props["icedamage:restoration"] == "FillNodata"
    assert props["icedamage:restoration_model"] is None
    assert props["icedamage:lambda_upper_restored"] is None
    assert "icedamage:restoration_model" not in props["icedamage:unknown"]
    assert "icedamage:lambda_upper_restored" in props["icedamage:unknown"]
    assert rules_found(root) == set()


def test_a_fill_without_a_known_factor_has_unknown_upper_bounds(tmp_path: Path) -> None:
    """FillNodata once got the bounds of an unrestored map while its item said its factor was
    unknown: now its upper bounds are null and listed unknown, stats says "unknown", the plot
    names what was applied, and the catalog rules and ``validate`` accept it."""
    root = build_release(tmp_path / "r", (ShelfYear("Larsen B", 2006, ("LE07",), "FillNodata"),
                                          ShelfYear("Larsen B", 2005, ("LE07",), "DiffGF")))
    catalog_release(root, PAPER_FACTORS)
    props = json.loads(item_path(root, "larsen-b-2006").read_text())["properties"]
    for field in ("damage_area_km2_high", "damage_fraction_high", "lambda_restoration"):
        assert props[f"icedamage:{field}"] is None, field
        assert f"icedamage:{field}" in props["icedamage:unknown"], field
    assert props["icedamage:damage_area_km2_low"] == pytest.approx(
        props["icedamage:damage_area_km2"] * PAPER_FACTORS.lambda_min)
    assert [i.id for i in search(root, year=2006)] == ["larsen-b-2006"]  # reads back
    assert rules_found(root) == set() and validate_release(root).ok()
    result = CliRunner().invoke(build_app(), ["stats", str(root), "--out",
                                              str(tmp_path / "t.csv")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert f"-{UNKNOWN_BOUND})" in text and "upper bound unknown for maps restored with " \
        "FillNodata" in text
    table = pd.read_csv(tmp_path / "t.csv").set_index("year")
    assert pd.isna(table.loc[2006, "damage_area_km2_high"])
    assert table.loc[2005, "damage_area_km2_high"] > table.loc[2005, "damage_area_km2"]
    rows = [damage_stats("Larsen B", 2005, PixelCounts(100, 1000, 900.0), "DiffGF",
                         PAPER_FACTORS),
            damage_stats("Larsen B", 2006, PixelCounts(100, 1000, 900.0), "FillNodata",
                         PAPER_FACTORS)]
    ax_area, _ = _figure_axes(rows)
    title = " ".join(ax_area.get_title().split())
    assert "λ_DiffGF 1.044" in title and "FillNodata maps: no restoration factor known" in title
    (dash,) = [line for line in ax_area.get_lines() if line.get_marker() == "_"]
    assert list(dash.get_xdata()) == [2006]  # the lower bound alone, no band to an unknown
    assert list(dash.get_ydata()) == [pytest.approx(rows[1].damage_area_km2_low)]
    ax_plain, _ = _figure_axes([_stats_row("Totten", 2020)])
    assert "DiffGF" not in ax_plain.get_title()  # nothing claimed that was not applied


def test_a_factors_file_gives_a_fill_its_own_factor(tmp_path: Path) -> None:
    """A restoration factor for FillNodata (``icedamage uncertainty --restoration-method
    FillNodata``) gives FillNodata maps their bounds, recorded in the item."""
    root = build_release(tmp_path / "r", (ShelfYear("Larsen B", 2006, ("LE07",), "FillNodata"),))
    path = tmp_path / "f.json"  # as `icedamage uncertainty --restoration-method FillNodata` writes
    path.write_text(json.dumps({"lambda_min": PAPER_FACTORS.lambda_min,
                                "lambda_max": PAPER_FACTORS.lambda_max,
                                "lambda_restoration": PAPER_FACTORS.lambda_restoration,
                                "restoration_factors": {"FillNodata": 0.95 / 0.90}}))
    result = CliRunner().invoke(build_app(), ["catalog", str(root), "--factors", str(path)])
    assert result.exit_code == 0, result.output
    props = json.loads(item_path(root, "larsen-b-2006").read_text())["properties"]
    assert props["icedamage:lambda_restoration"] == pytest.approx(0.95 / 0.90)
    assert props["icedamage:damage_area_km2_high"] == pytest.approx(
        props["icedamage:damage_area_km2"] * PAPER_FACTORS.lambda_max * 0.95 / 0.90)
    assert not {"icedamage:damage_area_km2_high", "icedamage:lambda_restoration"} & set(
        props["icedamage:unknown"])
    assert rules_found(root) == set()


def _factors_file(path: Path, factors: UncertaintyFactors) -> Path:
    path.write_text(factors.to_json())
    return path


def test_stats_use_the_factors_the_release_was_cataloged_with(cataloged: Path,
                                                               tmp_path: Path) -> None:
    """``icedamage stats RELEASE`` gives the numbers the items carry, even when the catalog was
    built with other factors than the paper's; --factors that differ say so on stderr."""
    other = _factors_file(tmp_path / "other.json", derive_factors(
        [Evaluation("a", 0.85, 0.80), Evaluation("b", 0.90, 0.82)], PAPER_RESTORATION))
    result = CliRunner().invoke(build_app(), ["catalog", str(cataloged), "--force",
                                              "--factors", str(other)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(build_app(), ["stats", str(cataloged), "--out",
                                              str(tmp_path / "t.csv")])
    assert result.exit_code == 0 and "warning" not in result.output, result.output
    table = pd.read_csv(tmp_path / "t.csv")
    for row in table.itertuples():
        item_id = f"{row.shelf.lower().replace(' ', '-').replace('_', '-')}-{row.year}"
        props = json.loads(item_path(cataloged, item_id).read_text())["properties"]
        for field in ("damage_area_km2_low", "damage_area_km2_high", "damage_fraction_low",
                      "damage_fraction_high"):
            assert getattr(row, field) == pytest.approx(props[f"icedamage:{field}"]), field
    paper = _factors_file(tmp_path / "paper.json", PAPER_FACTORS)
    result = CliRunner().invoke(build_app(), ["stats", str(cataloged), "--factors", str(paper),
                                              "--out", str(tmp_path / "t.csv")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "warning:" in text and "differs from the factors" in text and "λ_min" in text
    assert "λ_min 1.062 > 1" not in text  # the paper's factors were used, as asked
    table = pd.read_csv(tmp_path / "t.csv")
    assert list(table["damage_area_km2_low"]) == pytest.approx(
        list(table["damage_area_km2"] * PAPER_FACTORS.lambda_min))


def test_a_plain_rebuild_keeps_the_factors_the_catalog_was_built_with(
        cataloged: Path, tmp_path: Path) -> None:
    """After `catalog --factors own.json`, the README's plain `icedamage catalog` (another year
    produced) silently put the paper's factors back into every item."""
    plain = CliRunner().invoke(build_app(), ["catalog", str(cataloged)])
    assert "uncertaintyfactors" not in "".join(plain.output.split())  # the paper's: no note
    own = derive_factors([Evaluation("a", 0.85, 0.80), Evaluation("b", 0.90, 0.82)],
                         PAPER_RESTORATION).with_restoration("FillNodata", 1.2)
    path = _factors_file(tmp_path / "own.json", own)
    assert CliRunner().invoke(build_app(), ["catalog", str(cataloged), "--force",
                                            "--factors", str(path)]).exit_code == 0
    item = item_path(cataloged, "totten-2016")
    before = json.loads(item.read_text())["properties"]["icedamage:lambda_lower"]
    assert before == pytest.approx(own.lambda_min)
    again = CliRunner().invoke(build_app(), ["catalog", str(cataloged)])
    assert "cataloguptodate" in "".join(again.output.split())  # same factors: nothing to do
    result = CliRunner().invoke(build_app(), ["catalog", str(cataloged), "--force"])
    assert result.exit_code == 0, result.output
    assert json.loads(item.read_text())["properties"]["icedamage:lambda_lower"] == \
        pytest.approx(own.lambda_min)
    said = "".join(result.output.split())
    assert "keepingtheuncertaintyfactorsthecatalogwasbuiltwith" in said
    assert "λ_FillNodata1.2(thepapergivesnone)" in said  # kept whole, not rebuilt from items
    from catalog.build import built_factors

    assert built_factors(cataloged) == own
    # a downloaded record has no build state (hidden files are not published): the items say
    (cataloged / "stac" / ".build.json").unlink()
    result = CliRunner().invoke(build_app(), ["catalog", str(cataloged), "--force"])
    assert result.exit_code == 0, result.output
    assert json.loads(item.read_text())["properties"]["icedamage:lambda_lower"] == \
        pytest.approx(own.lambda_min)
    assert "keepingtheuncertaintyfactorsthecatalogwasbuiltwith" in "".join(
        result.output.split())


def test_a_restoration_factor_below_one_widens_the_catalogs_lower_bound(
        cataloged: Path, tmp_path: Path) -> None:
    """λ_DiffGF < 1 (restored imagery over-maps) once pulled the upper bound of DiffGF maps
    below the unrestored one; now it lowers their lower bound and the upper stays λ_max."""
    lam_r = 0.90 / 0.95
    factors = derive_factors(PAPER_EVALUATIONS, Evaluation("restored", 0.90, 0.95))
    path = _factors_file(tmp_path / "f.json", factors)
    result = CliRunner().invoke(build_app(), ["catalog", str(cataloged), "--force",
                                              "--factors", str(path)])
    assert result.exit_code == 0, result.output
    props = json.loads(item_path(cataloged, "larsen-b-2005").read_text())["properties"]
    damage = props["icedamage:damage_area_km2"]
    assert props["icedamage:damage_area_km2_high"] == pytest.approx(damage * factors.lambda_max)
    assert props["icedamage:damage_area_km2_low"] == pytest.approx(
        damage * factors.lambda_min * lam_r)
    assert props["icedamage:lambda_restoration"] == pytest.approx(lam_r)
    assert props["icedamage:lambda_upper_restored"] == pytest.approx(factors.lambda_max)
    assert rules_found(cataloged) == set()


# --------------------------------------------------------------------------------------------
# Crash safety: the item index is the catalog's or is refused
# --------------------------------------------------------------------------------------------


def _killed(*_args: object, **_kwargs: object) -> None:
    """Stands in for a step the process is killed in."""
    raise KeyboardInterrupt("killed")


def _index_is_the_catalogs(release: Path) -> bool:
    """Whether items.ndjson holds exactly the saved STAC items (hrefs from the release root)."""
    from catalog.search import release_relative

    saved = {}
    for path in (release / "stac" / COLLECTION).glob("*/*.json"):
        data = json.loads(path.read_text())
        saved[data["id"]] = release_relative(data, path, release)
    lines = [json.loads(line) for line in (release / ITEMS_NDJSON).read_text().splitlines()]
    return len(lines) == len(saved) and {line["id"]: line for line in lines} == saved


def _other_factors() -> UncertaintyFactors:
    """Factors that change every item (as new evaluations would)."""
    return dataclasses.replace(PAPER_FACTORS, lambda_min=round(PAPER_FACTORS.lambda_min - 0.1, 4))


def test_a_catalog_killed_before_its_item_index_is_rebuilt_not_up_to_date(
        cataloged: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after the new stac/ is swapped in, before the item index is written: the index
    still holds the old factors, search refuses it, and the re-run rebuilds it (it used to
    call the release up to date and leave the stale index for good)."""
    from catalog import build
    from catalog.search import SearchError

    with monkeypatch.context() as patch:
        patch.setattr(build, "write_index", _killed)
        with pytest.raises(KeyboardInterrupt):
            catalog_release(cataloged, _other_factors())
    assert not _index_is_the_catalogs(cataloged)
    with pytest.raises(SearchError, match=r"items\.parquet.*icedamage catalog"):
        search(cataloged)
    assert not catalog_release(cataloged, _other_factors()).skipped
    assert _index_is_the_catalogs(cataloged)
    assert [i.id for i in search(cataloged, shelves=["Totten"])] == ["totten-2016", "totten-2021"]
    assert catalog_release(cataloged, _other_factors()).skipped
    assert rules_found(cataloged) == set()


def test_an_item_index_killed_between_its_two_files_is_refused_and_rebuilt(
        cataloged: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after the new items.ndjson, before the new items.parquet: the pair disagrees,
    search refuses it rather than read new lines at old offsets, and the re-run rebuilds."""
    from catalog import search as search_module
    from catalog.search import SearchError

    with monkeypatch.context() as patch:
        patch.setattr(search_module.sga, "parse_stac_items_to_arrow", _killed)
        with pytest.raises(KeyboardInterrupt):
            catalog_release(cataloged, _other_factors())
    with pytest.raises(SearchError, match="icedamage catalog"):
        search(cataloged)
    assert not catalog_release(cataloged, _other_factors()).skipped
    assert _index_is_the_catalogs(cataloged) and len(search(cataloged)) == 5


def test_an_item_index_not_written_with_the_catalog_is_refused_and_rebuilt(
        cataloged: Path) -> None:
    """A consistent items.parquet + items.ndjson that the catalog's build state does not
    record (written apart from the catalog) is refused by search and rebuilt by a re-run."""
    from catalog.search import SearchError, write_index

    lines = [json.loads(line) for line in (cataloged / ITEMS_NDJSON).read_text().splitlines()]
    for line in lines:
        line["properties"]["icedamage:damage_fraction"] = 0.999
    write_index(cataloged, lines)
    with pytest.raises(SearchError, match=r"differ from .*\.build\.json"):
        search(cataloged)
    assert not catalog_release(cataloged, PAPER_FACTORS).skipped
    assert _index_is_the_catalogs(cataloged)
    assert catalog_release(cataloged, PAPER_FACTORS).skipped


# --------------------------------------------------------------------------------------------
# Catalog rule gaps: a missing root catalog, item fields against the product name and the
# provenance record, the ROI's grid and attribute, implausible provenance, link loops, the
# per-shelf sheets of metadata.ods, geometry within the builder's tolerance
# --------------------------------------------------------------------------------------------

NOT_CATALOGED = ("catalog-missing", "stac/catalog.json")


def all_problems(release: Path, check_stats: bool = True) -> list:
    """Every problem of the three catalog rule sets (never raising: a rule set that raises
    fails the test)."""
    rule_sets = [StacSchemaRules(SCHEMAS), CatalogConsistencyRules(check_stats=check_stats),
                 ReleaseMetadataRules()]
    return [p for rs in rule_sets for p in rs.check(release)]


def rule_files(problems: list) -> set[tuple[str, str]]:
    return {(p.rule, p.file) for p in problems}


def item_rel(item_id: str) -> str:
    return f"stac/{COLLECTION}/{item_id}/{item_id}.json"


def test_a_deleted_root_catalog_is_an_error_and_its_remains_still_checked(
        cataloged: Path) -> None:
    """Deleting stac/catalog.json must not switch the catalog checks off: it is an error, and
    a stale checksum in an item beside it is still found."""
    edit_json(item_path(cataloged, "totten-2021"), lambda d: d["assets"]["damage"].update(
        {"file:checksum": "1220" + "0" * 64}))
    (cataloged / "stac" / "catalog.json").unlink()
    problems = all_problems(cataloged, check_stats=False)
    missing = [p for p in problems if p.rule == "catalog-missing"]
    assert [(p.file, p.severity) for p in missing] == [("stac/catalog.json", "error")]
    assert "stac/" in missing[0].found and "icedamage catalog --force" in missing[0].expected
    assert ("asset-checksum", item_rel("totten-2021")) in rule_files(problems)
    assert ("catalog-link-broken", f"stac/{COLLECTION}/collection.json") in rule_files(problems)


def test_a_deleted_stac_folder_is_an_error(cataloged: Path) -> None:
    """Without stac/ but with the item index beside the products, the catalog is broken."""
    shutil.rmtree(cataloged / "stac")
    problems = all_problems(cataloged, check_stats=False)
    assert ("catalog-missing", "stac/catalog.json", "error") in {
        (p.rule, p.file, p.severity) for p in problems}
    assert ("product-without-item", "Totten/2021/LC08_LC09_Totten_2021_damage_map.tif") in \
        rule_files(problems)


def test_an_uncataloged_release_only_warns(tmp_path: Path) -> None:
    """Validating before `icedamage catalog` is a normal step: one warning, no error, also with
    a metadata.ods and an ROI GeoPackage the user supplied for the catalog run."""
    from catalog.gpkg import ensure_roi_geopackage

    root = build_release(tmp_path / "release", DEFAULT_SHELF_YEARS[:1])
    warned = [(p.rule, p.file, p.severity) for p in all_problems(root)]
    assert warned == [(*NOT_CATALOGED, "warning")]
    report = validate_release(root)
    assert report.ok() and not report.ok(strict=True)
    write_metadata_ods(root / METADATA_ODS, [OdsRow("Totten", 2021, "", "", ("LC08", "LC09"),
                                                    None)])
    ensure_roi_geopackage(root, "Totten")
    problems = all_problems(root)
    assert [(p.rule, p.severity) for p in problems] == [("catalog-missing", "warning")]
    assert "metadata.ods" in problems[0].found


def _set_props(**fields: object) -> Callable[[dict], None]:
    return lambda data: data["properties"].update(
        {k.replace("__", ":"): v for k, v in fields.items()})


def _swap_classes(data: dict) -> None:
    data["assets"]["damage_map"]["classification:classes"] = [
        {"value": 0, "name": "damage"}, {"value": 1, "name": "background"}]


ITEM_EDITS = {  # id: (item, edit, rule, field named in "found")
    "sensors-and-platform": ("totten-2016", _set_props(icedamage__sensors=["LC09"],
                                                       platform="landsat-9"),
                             "item-name-mismatch", "icedamage:sensors"),
    "platform-of-a-merged-map": ("totten-2021", _set_props(platform="landsat-8"),
                                 "item-name-mismatch", "platform"),
    "instruments": ("totten-2016", _set_props(instruments=["etm+"]), "item-name-mismatch",
                    "instruments"),
    "restoration": ("larsen-b-2005", _set_props(icedamage__restoration=None,
                                                icedamage__slc_off=False),
                    "item-name-mismatch", "icedamage:restoration"),
    "slc-off": ("larsen-b-2001", _set_props(icedamage__slc_off=True), "item-name-mismatch",
                "icedamage:slc_off"),
    "year": ("totten-2021", _set_props(icedamage__year=2020), "item-name-mismatch",
             "icedamage:year"),
    "classes": ("totten-2021", _swap_classes, "item-classes", "damage_map"),
    "model-hash": ("totten-2021", _set_props(icedamage__model_weights_sha256="f" * 64),
                   "item-provenance-mismatch", "icedamage:model_weights_sha256"),
    "main-scene": ("totten-2021", _set_props(
        icedamage__main_scene="LC09_Totten_composite_2021-11-19"),
        "item-provenance-mismatch", "icedamage:main_scene"),
    "restoration-model": ("larsen-b-2005", _set_props(
        icedamage__restoration_weights_sha256="2" * 64),
        "item-provenance-mismatch", "icedamage:restoration_weights_sha256"),
    "scene-sensor": ("amery-front-2012", lambda d: d["properties"]["icedamage:scenes"][0].update(
        {"sensor": "LC09"}), "item-provenance-mismatch", "icedamage:scenes"),
}


@pytest.mark.parametrize("case", ITEM_EDITS, ids=str)
def test_item_fields_say_what_the_name_and_the_provenance_say(cataloged: Path,
                                                              case: str) -> None:
    """An item edited after cataloging (and re-indexed, so the index agrees) must not describe
    other satellites, restoration, year, classes, models or scenes than its products."""
    from catalog.build import reindex

    item, edit, rule, field = ITEM_EDITS[case]
    edit_json(item_path(cataloged, item), edit)
    reindex(cataloged)
    hits = [p for p in CatalogConsistencyRules(check_stats=False).check(cataloged)
            if p.rule == rule]
    assert [p.file for p in hits] and {p.file for p in hits} == {item_rel(item)}
    assert any(field in p.found for p in hits), hits


def _record_grid(root: Path, rel_stem: str, shift_px: int = 0) -> None:
    """Write the products' grid into a fixture provenance record (as `produce` records it),
    shifted by ``shift_px`` pixels east."""
    with rasterio.open(root / f"{rel_stem}_damage.tif") as src:
        transform, width, height = list(src.transform)[:6], src.width, src.height
    transform[2] += shift_px * 30
    path = root / f"{rel_stem}_provenance.json"
    data = json.loads(path.read_text())
    data["parameters"]["grid"] = [transform, width, height]
    path.write_text(json.dumps(data))


def test_type2_must_be_on_the_grid_covering_its_roi(cataloged: Path) -> None:
    """With records that say which grid the maps were made on, type 2 must map the full ROI of
    the release's GeoPackage; any valid polygon will do as the ROI, not only the default."""
    from catalog.gpkg import write_roi_geopackage

    for stem in ("Totten/2016/LC08_Totten_2016", "Totten/2021/LC08_LC09_Totten_2021"):
        _record_grid(cataloged, stem)
    t16, t21 = "Totten/2016/LC08_Totten_2016_damage.tif", \
        "Totten/2021/LC08_LC09_Totten_2021_damage.tif"
    found = rule_files(ReleaseMetadataRules().check(cataloged))
    # the fixture's maps cover a small window of the default (approximate) Totten ROI
    assert {("roi-grid-mismatch", t16), ("roi-grid-mismatch", t21)} <= found
    assert not {r for r, _ in found} & {"provenance-grid", "product-outside-roi"}
    with rasterio.open(cataloged / t16) as src:
        left, bottom, right, top = src.bounds
    middle_x, middle_y = (left + right) / 2, (bottom + top) / 2
    outline = Polygon([(left, middle_y), (middle_x, top), (right, middle_y),
                       (middle_x, bottom)])  # an "official" outline whose covering grid it is
    write_roi_geopackage(cataloged, "Totten", outline, "official outline (test)")
    assert rule_files(ReleaseMetadataRules().check(cataloged)) == set()


def test_products_must_be_on_the_grid_their_record_names(cataloged: Path) -> None:
    """A product cropped or shifted after production is not the map its record describes."""
    _record_grid(cataloged, "Larsen B/2005/LE07_Larsen B_2005_slc_off_DiffGF", shift_px=1)
    found = rule_files(ReleaseMetadataRules().check(cataloged))
    stem = "Larsen B/2005/LE07_Larsen B_2005_slc_off_DiffGF"
    assert {("provenance-grid", f"{stem}_damage_map.tif"),
            ("provenance-grid", f"{stem}_damage.tif")} <= found


def test_roi_geopackage_of_another_shelf_is_reported(cataloged: Path) -> None:
    """The GeoPackage's shelf attribute names the shelf of its file name."""
    path = cataloged / roi_geopackage_name("Totten")
    frame = read_roi(path)
    frame["shelf"] = "Larsen B"
    path.unlink()
    frame.to_file(path, driver="GPKG")
    assert ("roi-shelf", "Totten_ROI.gpkg") in rule_files(ReleaseMetadataRules().check(cataloged))


@pytest.mark.parametrize(("column", "value", "reported"), [
    ("Shelf", "totten ice shelf", False),  # produce reads this file as Totten's: so does validate
    ("NAME", "Totten", False),
    ("Shelf", "Holmes", True),
])
def test_roi_shelf_column_is_read_as_produce_reads_it(cataloged: Path, column: str, value: str,
                                                       reported: bool) -> None:
    path = cataloged / roi_geopackage_name("Totten")
    frame = read_roi(path).drop(columns="shelf")
    frame[column] = value
    path.unlink()
    frame.to_file(path, driver="GPKG")
    found = rule_files(ReleaseMetadataRules().check(cataloged))
    assert (("roi-shelf", "Totten_ROI.gpkg") in found) is reported


def test_demo_products_cover_a_window_centred_in_their_roi(tmp_path: Path) -> None:
    """The demo source renders a square window centred in the ROI, not the full ROI: that
    passes, and the window is still checked against the ROI (a replaced ROI is caught)."""
    from catalog.gpkg import write_roi_geopackage
    from tests.release_factory import fixture_provenance

    item = ShelfYear("Totten", 2021, ("LC09",), size=(640, 640))
    root = build_release(tmp_path / "release", (item,), with_provenance=False)
    name = build_name(item.sensors, item.shelf, item.year, None, TYPE1)
    with rasterio.open(root / name.partner().relative_path()) as src:
        grid = [list(src.transform)[:6], src.width, src.height]
    record = dataclasses.replace(fixture_provenance(item), source=DEMO_SOURCE,
                                 parameters={"grid": grid})
    provenance_path(root, name).write_text(record.to_json())
    catalog_release(root, PAPER_FACTORS)
    assert rule_files(ReleaseMetadataRules().check(root)) == set()
    write_roi_geopackage(root, "Totten", box(-3e6, -3e6, 3e6, 3e6), "all of Antarctica")
    assert ("roi-grid-mismatch", name.partner().relative_path().as_posix()) in \
        rule_files(ReleaseMetadataRules().check(root))


def _edit_record(root: Path, rel: str, change: Callable[[dict], None]) -> str:
    path = root / rel
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return rel


def test_implausible_provenance_is_reported_when_everything_agrees(cataloged: Path) -> None:
    """Scenes of another season, or of a satellite the name does not list, are errors of the
    record, even when metadata.ods and the items were rebuilt from it and agree with it."""
    def winter(data: dict) -> None:
        data["scenes"][0]["acquired"] = "2016-07-15"

    def other_sensor(data: dict) -> None:
        data["sensors"] = ["LC08"]
        data["scenes"][0]["sensor"] = "LC08"

    dates = _edit_record(cataloged, "Totten/2016/LC08_Totten_2016_provenance.json", winter)
    sensors = _edit_record(cataloged, "Larsen B/2001/LE07_Larsen B_2001_provenance.json",
                           other_sensor)
    catalog_release(cataloged, PAPER_FACTORS, force=True)
    problems = list(ReleaseMetadataRules().check(cataloged))
    assert ("acquisition-dates", dates) in rule_files(problems)
    assert {p.found for p in problems if p.rule == "provenance-sensors" and p.file == sensors} \
        == {"scenes of ['LC08']", "sensors = ['LC08']"}
    # metadata.ods and the STAC items agree with the records: only the records are wrong
    assert {p.file for p in problems} == {dates, sensors}


def _loop(path: Path) -> None:
    if path.exists() or path.is_symlink():
        path.unlink()
    os.symlink(path.name, path)


def test_link_loops_are_reported_and_hide_nothing(cataloged: Path) -> None:
    """A link to itself (Path.resolve raises RuntimeError on it) is a problem of that file;
    the other files are still checked (here: a stale checksum of another item)."""
    loop = "Totten/2021/LC08_LC09_Totten_2021_damage.tif"
    _loop(cataloged / loop)
    _loop(cataloged / "stac" / "loop.json")
    edit_json(item_path(cataloged, "larsen-b-2005"), lambda d: d["assets"]["damage"].update(
        {"file:checksum": "1220" + "0" * 64}))
    problems = all_problems(cataloged, check_stats=False)
    found = rule_files(problems)
    assert ("asset-checksum", item_rel("larsen-b-2005")) in found
    assert ("catalog-file-unreadable", loop) in found
    assert ("asset-missing", item_rel("totten-2021")) in found
    invalid = [p for p in problems if p.rule == "stac-json-invalid"]
    assert [p.file for p in invalid] == ["stac/loop.json"]
    assert "symbolic links" in invalid[0].found
    assert not [p for p in problems if p.rule == "catalog-check-failed"]


def test_each_shelf_sheet_of_metadata_ods_is_checked(cataloged: Path) -> None:
    """The per-shelf sheets hold the same rows as Summary: a wrong date or file name there is
    reported, and so is a missing sheet (Summary itself is intact)."""
    path = cataloged / METADATA_ODS
    sheets = pd.read_excel(path, sheet_name=None, engine="odf", dtype=str,
                           keep_default_na=False)
    sheets["Totten"]["acquisition_dates"] = "1999-07-01"
    sheets["Totten"]["damage_file"] = "wrong.tif"
    del sheets["Larsen B"]
    with pd.ExcelWriter(path, engine="odf") as writer:
        for name, frame in sheets.items():
            frame.to_excel(writer, sheet_name=name, index=False)
    found = rule_files(ReleaseMetadataRules().check(cataloged))
    assert {("acquisition-dates", "metadata.ods sheet Totten row Totten 2016"),
            ("ods-file-name", "metadata.ods sheet Totten row Totten 2021"),
            ("ods-sheet-missing", "metadata.ods")} <= found
    assert not [f for _, f in found if f.startswith("metadata.ods row")]


def _shifted(coords: object, dlat: float) -> object:
    if isinstance(coords, list) and coords and isinstance(coords[0], int | float):
        return [coords[0], coords[1] + dlat]
    return [_shifted(c, dlat) for c in coords]  # type: ignore[union-attr]


def _corners_only(data: dict) -> None:
    ring = data["geometry"]["coordinates"][0]
    step = len(ring) // 4
    data["geometry"] = {"type": "Polygon",
                        "coordinates": [[ring[0], ring[step], ring[2 * step], ring[3 * step],
                                         ring[0]]]}


def test_item_geometry_is_compared_in_metres_within_the_builders_tolerance(
        cataloged: Path) -> None:
    """A geometry a few decimetres off (a catalog whose builder placed its vertices otherwise)
    still describes the footprint; one whose straight lon/lat edges stray from it says by how
    many metres and vertices, and when the catalog is older than the code, how to rebuild."""
    amery = item_path(cataloged, "amery-front-2012")
    edit_json(amery, lambda d: d["geometry"].update(
        coordinates=_shifted(d["geometry"]["coordinates"], 3e-6)))  # about 0.33 m north
    rules = CatalogConsistencyRules(check_stats=False)
    assert "item-geometry-mismatch" not in {p.rule for p in rules.check(cataloged)}
    edit_json(amery, _corners_only)
    hits = [p for p in rules.check(cataloged) if p.rule == "item-geometry-mismatch"]
    assert len(hits) == 1 and hits[0].file == item_rel("amery-front-2012")
    assert "5 vertices" in hits[0].found and " m from the footprint" in hits[0].found
    assert "vertices" in hits[0].expected and "within 1 m" in hits[0].expected
    assert "--force" not in hits[0].expected  # built by this code from these files
    edit_json(cataloged / "stac" / ".build.json", lambda d: d.update(inputs="0" * 64))
    hits = [p for p in rules.check(cataloged) if p.rule == "item-geometry-mismatch"]
    assert "icedamage catalog --force" in hits[0].expected


# --------------------------------------------------------------------------------------------
# Shortcuts taken at dataset scale (see docs/benchmarks.md)
# --------------------------------------------------------------------------------------------


def test_an_exact_geometry_is_not_measured_and_any_other_is(
        cataloged: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An item geometry equal to the footprint the builder makes skips the Hausdorff distance
    (quadratic in vertices); one that differs at all, however little, is measured, and a
    shift beyond the builder's tolerance is still reported."""
    from catalog.rules import consistency

    measured: list[int] = []
    in_metres = consistency._in_metres  # densify and project: the start of every measure

    def counting(geometry: BaseGeometry) -> BaseGeometry:
        measured.append(1)
        return in_metres(geometry)

    monkeypatch.setattr(consistency, "_in_metres", counting)
    rules = CatalogConsistencyRules(check_stats=False)
    assert "item-geometry-mismatch" not in {p.rule for p in rules.check(cataloged)}
    assert measured == []  # every item as built: no distance taken

    totten = item_path(cataloged, "totten-2016")
    data = json.loads(totten.read_text())["geometry"]
    geometry = shape(data)
    moved = shape(data | {"coordinates": _shifted(data["coordinates"], 1e-9)})  # ~0.1 mm
    assert consistency.geometry_distance_m(geometry, shape(geometry.__geo_interface__)) == 0.0
    assert 0.0 < consistency.geometry_distance_m(moved, geometry) < 1e-3
    assert len(measured) == 2  # both outlines

    edit_json(totten, lambda d: d["geometry"].update(
        coordinates=_shifted(d["geometry"]["coordinates"], 2e-5)))  # about 2.2 m north
    hits = [p for p in rules.check(cataloged) if p.rule == "item-geometry-mismatch"]
    assert [h.file for h in hits] == [item_rel("totten-2016")]
    assert " m from the footprint" in hits[0].found and "within 1 m" in hits[0].expected
    assert len(measured) == 4  # that item only


def test_an_up_to_date_rerun_does_not_read_metadata_ods(
        cataloged: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """"Up to date" is decided before metadata.ods is read (its digest covers the file and
    every input of its rows); any change it covers reads the file as before."""
    from catalog import ods

    reads: list[str] = []
    read_sheets = ods.read_sheets

    def spying(path: Path) -> dict[str, pd.DataFrame]:
        reads.append(Path(path).name)
        return read_sheets(path)

    monkeypatch.setattr(ods, "read_sheets", spying)
    steps: list[str] = []
    result = catalog_release(cataloged, PAPER_FACTORS,
                             progress=lambda text, _done, _total: steps.append(text))
    assert result.skipped and not result.metadata_written
    assert reads == [] and steps == [f"{METADATA_ODS} is up to date"]

    record = provenance_path(cataloged, T16_NAME)
    os.utime(record, ns=(record.stat().st_atime_ns, record.stat().st_mtime_ns + 10**9))
    result = catalog_release(cataloged, PAPER_FACTORS)
    assert not result.skipped and not result.metadata_written and reads == [METADATA_ODS]
    assert catalog_release(cataloged, PAPER_FACTORS).skipped and reads == [METADATA_ODS]

    ods_path = cataloged / METADATA_ODS
    rows = read_metadata_ods(ods_path)
    reads.clear()
    write_metadata_ods(ods_path, [dataclasses.replace(rows[0], scene_ids=("edited",)),
                                  *rows[1:]])
    result = catalog_release(cataloged, PAPER_FACTORS)
    assert not result.skipped and result.metadata_written and reads == [METADATA_ODS]
    assert read_metadata_ods(ods_path) == rows  # the provenance records' rows again
    assert not catalog_release(cataloged, PAPER_FACTORS, force=True).skipped
    assert reads == [METADATA_ODS, METADATA_ODS, METADATA_ODS]
