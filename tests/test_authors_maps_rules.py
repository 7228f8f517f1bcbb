"""A release carrying the authors' already-released maps beside ours.

The authors' maps are what the paper's section 4 specifies (LZW, UInt8, EPSG:3031, 30 m) as
plain striped GeoTIFFs: no ``ICEDAMAGE_SOURCE`` tag, no provenance record, their acquisition
dates only in metadata.ods. Our Cloud-Optimized layout is an error for maps ``produce`` wrote
and a warning (with the conversion) for these; their encoding is held to the spec like ours;
their metadata.ods dates must lie in the summer the row's year names.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from click.testing import CliRunner
from rio_cogeo.scripts.cli import cogeo

from catalog.build import catalog_release
from catalog.ods import OdsRow, write_metadata_ods
from catalog.rules.release_metadata import ReleaseMetadataRules
from catalog.uncertainty import PAPER_FACTORS
from producer.provenance import provenance_path
from producer.spec import METADATA_ODS, SOURCE_TAG, TYPE1, build_name
from publish.release import validation_problems
from tests.release_factory import ShelfYear, build_release, fixture_provenance
from validation.engine import validate_release
from validation.raster_rules import COG, CONVERT_COMMAND, OVERVIEWS, TILING

BRUNT = ShelfYear("Brunt", 2000, ("LE07",), size=(400, 400))  # one strip image, under a tile
LARSEN = ShelfYear("Larsen B", 2005, ("LE07",), "DiffGF", size=(600, 700))  # needs overviews
LAYOUT = {TILING, OVERVIEWS, COG}


def products_of(root: Path, item: ShelfYear) -> list[str]:
    """Release-relative paths of a shelf-year's two products (type 1, type 2)."""
    name = build_name(item.sensors, item.shelf, item.year, item.restoration, TYPE1)
    return [name.relative_path().as_posix(), name.partner().relative_path().as_posix()]


def as_authors_geotiff(path: Path, tags: dict[str, str] | None = None, *,
                       compress: str = "LZW", dtype: str = "uint8", crs: str | None = None,
                       nodata: object = "keep") -> None:
    """Rewrite a product as the authors released theirs: a plain striped GeoTIFF (no tiles, no
    overviews, no tags unless given), changing only what is asked."""
    with rasterio.open(path) as src:
        data = src.read().astype(dtype)
        profile = {"driver": "GTiff", "count": 1, "dtype": dtype, "height": src.height,
                   "width": src.width, "crs": crs or src.crs, "transform": src.transform,
                   "nodata": src.nodata if nodata == "keep" else nodata, "compress": compress}
    path.unlink()
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if tags:
            dst.update_tags(**tags)


@pytest.fixture
def authors_release(tmp_path: Path) -> Path:
    """Two shelf-years of the authors' maps (no provenance, untagged, striped), not cataloged."""
    root = build_release(tmp_path / "release", (BRUNT, LARSEN), with_provenance=False)
    for item in (BRUNT, LARSEN):
        for rel in products_of(root, item):
            as_authors_geotiff(root / rel)
    return root


def layout_findings(report_problems: list) -> set[tuple[str, str, str]]:
    """(rule, file, severity) of the COG-layout findings."""
    return {(p.rule, p.file, p.severity) for p in report_problems if p.rule in LAYOUT}


# --------------------------------------------------------------------------------------------
# COG layout: errors for maps produce wrote, warnings for the authors'
# --------------------------------------------------------------------------------------------


def test_authors_plain_geotiffs_are_layout_warnings_and_publish_proceeds(
        authors_release: Path) -> None:
    """Striped LZW UInt8 EPSG:3031 30 m maps without tag or record: tiling, overviews and
    rio-cogeo's verdict are warnings naming the conversion; no error, so publish's preflight
    (which stops on errors only) lets the release through."""
    report = validate_release(authors_release, workers=1)
    brunt, larsen = products_of(authors_release, BRUNT), products_of(authors_release, LARSEN)
    expected = {(TILING, rel, "warning") for rel in brunt + larsen} \
        | {(rule, rel, "warning") for rel in larsen for rule in (OVERVIEWS, COG)}
    assert layout_findings(report.problems) == expected, report.to_json()
    assert all(CONVERT_COMMAND in p.expected for p in report.problems if p.rule in LAYOUT)
    assert [p for p in report.problems if p.severity == "error"] == [], report.to_json()
    assert report.ok(strict=False) and not report.ok(strict=True)
    assert validation_problems(authors_release) == []


def test_maps_produce_wrote_keep_layout_errors(authors_release: Path) -> None:
    """The same striped files are errors when produce wrote them: tagged with
    ICEDAMAGE_SOURCE (Brunt), or untagged in a shelf-year holding its provenance record
    (Larsen B: a tool that rewrote the file dropped the tag); publish refuses them."""
    for rel in products_of(authors_release, BRUNT):
        as_authors_geotiff(authors_release / rel, {SOURCE_TAG: "local"})
    name = build_name(LARSEN.sensors, LARSEN.shelf, LARSEN.year, LARSEN.restoration, TYPE1)
    provenance_path(authors_release, name).write_text(fixture_provenance(LARSEN).to_json())
    report = validate_release(authors_release, workers=1)
    brunt, larsen = products_of(authors_release, BRUNT), products_of(authors_release, LARSEN)
    expected = {(TILING, rel, "error") for rel in brunt + larsen} \
        | {(rule, rel, "error") for rel in larsen for rule in (OVERVIEWS, COG)}
    # tags written after the pixels also move Brunt's IFD to the end: raster-cog, an error
    assert expected <= layout_findings(report.problems), report.to_json()
    assert {severity for _, _, severity in layout_findings(report.problems)} == {"error"}
    assert not any(CONVERT_COMMAND in p.expected for p in report.problems)
    assert not report.ok(strict=False)
    assert any(f"[{TILING}]" in line for line in validation_problems(authors_release))


@pytest.mark.parametrize(("change", "rule", "index"), [
    ({"compress": "DEFLATE"}, "raster-compression", 0),
    ({"dtype": "uint16"}, "raster-dtype", 0),
    ({"crs": "EPSG:3976"}, "raster-crs", 1),
    ({"nodata": 0}, "raster-nodata", 1),
    ({"nodata": None}, "raster-nodata", 0),
], ids=["deflate", "uint16", "epsg-3976", "type2-nodata", "type1-no-nodata"])
def test_encoding_rules_stay_errors_for_the_authors_maps(authors_release: Path, change: dict,
                                                         rule: str, index: int) -> None:
    """What the paper does specify (compression, dtype, CRS, nodata) is an error whoever
    wrote the map."""
    rel = products_of(authors_release, LARSEN)[index]
    as_authors_geotiff(authors_release / rel, **change)
    report = validate_release(authors_release, workers=1)
    assert (rule, rel, "error") in {(p.rule, p.file, p.severity) for p in report.problems}
    assert not report.ok(strict=False)


def test_values_stay_errors_for_the_authors_maps(authors_release: Path) -> None:
    rel = products_of(authors_release, BRUNT)[0]
    with rasterio.open(authors_release / rel, "r+") as dst:
        data = dst.read(1)
        data[200:203, 200:203] = 2
        dst.write(data, 1)
    report = validate_release(authors_release, workers=1)
    assert ("raster-values", rel, "error") in {(p.rule, p.file, p.severity)
                                               for p in report.problems}


def test_the_conversion_the_warning_gives_makes_the_maps_pass(authors_release: Path) -> None:
    """Running the command the warning names (rio cogeo create, the writer's settings) on every
    authors' map leaves no raster finding at all: same pixels, encoding and grid, COG layout."""
    args = shlex.split(CONVERT_COMMAND)
    assert args[:3] == ["rio", "cogeo", "create"] and args[-2:] == ["IN.tif", "OUT.tif"]
    for item in (BRUNT, LARSEN):
        for rel in products_of(authors_release, item):
            path = authors_release / rel
            with rasterio.open(path) as src:
                before = src.read()
            out = path.with_name("converted.tif")
            result = CliRunner().invoke(cogeo, [*args[2:-2], "--quiet", str(path), str(out)])
            assert result.exit_code == 0, result.output
            out.replace(path)
            with rasterio.open(path) as src:
                assert np.array_equal(src.read(), before)
    report = validate_release(authors_release, workers=1)
    assert [p for p in report.problems if p.rule.startswith("raster-")] == [], report.to_json()
    assert report.ok(strict=False)


# --------------------------------------------------------------------------------------------
# metadata.ods acquisition dates of shelf-years without provenance: in the summer of the row
# --------------------------------------------------------------------------------------------

TOTTEN = ShelfYear("Totten", 2015, ("LC08",), size=(300, 300))
ROW = "metadata.ods row Totten 2015"
SUMMER = "2015-11-01 .. 2016-03-31"


def write_authors_ods(path: Path, date: str) -> None:
    """metadata.ods as the authors wrote it: a sheet per shelf, their column names."""
    with pd.ExcelWriter(path, engine="odf") as writer:
        pd.DataFrame([{"Shelf": "Totten", "Year": 2015, "Acquisition dates": date}]).to_excel(
            writer, sheet_name="Totten", index=False)


def set_item_dates(root: Path, dates: list[str]) -> None:
    """Give the STAC item the dates metadata.ods gives (as the catalog copies them), so that
    only the summer can be wrong."""
    [path] = root.glob("stac/**/totten-2015.json")
    item = json.loads(path.read_text())
    item["properties"]["icedamage:acquisition_dates"] = dates
    path.write_text(json.dumps(item))


@pytest.fixture(scope="module")
def cataloged_authors_year(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cataloged release of one authors' shelf-year whose metadata.ods gives a summer date
    (never modify: copy it)."""
    root = build_release(tmp_path_factory.mktemp("authors") / "release", (TOTTEN,),
                         with_provenance=False)
    write_authors_ods(root / METADATA_ODS, "2016-01-05")
    catalog_release(root, PAPER_FACTORS)
    return root


@pytest.fixture
def authors_year(cataloged_authors_year: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(cataloged_authors_year, tmp_path / "release"))


def test_a_summer_date_passes(authors_year: Path) -> None:
    assert list(ReleaseMetadataRules().check(authors_year)) == []


@pytest.mark.parametrize("date", ["2014-12-05", "2016-07-15", "2061-01-05"],
                         ids=["summer-before", "winter-after", "decades-later"])
def test_authors_ods_date_outside_the_summer_is_an_error(authors_year: Path, date: str) -> None:
    """A date of another summer, a winter or a year to come in the authors' metadata.ods
    (their only record of the dates) is an error naming the file, row, field and window."""
    write_authors_ods(authors_year / METADATA_ODS, date)
    set_item_dates(authors_year, [date])
    problems = list(ReleaseMetadataRules().check(authors_year))
    assert [(p.file, p.rule, p.severity) for p in problems] == \
        [(ROW, "acquisition-dates", "error")], problems
    assert problems[0].found == f"acquisition_dates ['{date}']"
    assert SUMMER in problems[0].expected and "2015" in problems[0].expected


def test_ods_date_outside_the_summer_in_the_catalogs_layout(authors_year: Path) -> None:
    """In the layout the catalog writes (Summary and a sheet per shelf) both rows are named;
    only the dates outside the window are listed."""
    name = build_name(TOTTEN.sensors, TOTTEN.shelf, TOTTEN.year, None, TYPE1)
    dates = ["2015-12-10", "2016-04-02"]
    write_metadata_ods(authors_year / METADATA_ODS, [OdsRow(
        "Totten", 2015, name.filename, name.partner().filename, ("LC08",), None,
        acquisition_dates=tuple(pd.Timestamp(d).date() for d in dates))])
    set_item_dates(authors_year, dates)
    problems = list(ReleaseMetadataRules().check(authors_year))
    assert {(p.file, p.rule, p.found) for p in problems} == {
        (ROW, "acquisition-dates", "acquisition_dates ['2016-04-02']"),
        ("metadata.ods sheet Totten row Totten 2015", "acquisition-dates",
         "acquisition_dates ['2016-04-02']")}, problems


def test_plain_geotiff_assets_are_not_labelled_cloud_optimized(authors_release: Path) -> None:
    """The catalog called every asset "profile=cloud-optimized"; a client that trusts it for
    range reads of a striped file without overviews reads it whole. Converted, it says so."""
    catalog_release(authors_release, PAPER_FACTORS)
    stac = authors_release / "stac/antarctic-ice-shelf-surface-damage"
    item = stac / "larsen-b-2005"
    assets = json.loads((item / "larsen-b-2005.json").read_text())["assets"]
    assert assets["damage_map"]["type"] == "image/tiff; application=geotiff"
    assert assets["damage"]["type"] == "image/tiff; application=geotiff"
    # Brunt's small striped file passes rio-cogeo, but strips are no COG (raster-tiling warns)
    brunt = json.loads((stac / "brunt-2000" / "brunt-2000.json").read_text())["assets"]
    assert brunt["damage_map"]["type"] == "image/tiff; application=geotiff"
    item_assets = json.loads((stac / "collection.json").read_text())["item_assets"]
    assert item_assets["damage_map"]["type"] == "image/tiff; application=geotiff"
    args = shlex.split(CONVERT_COMMAND)
    for rel in products_of(authors_release, LARSEN):
        path = authors_release / rel
        out = path.with_name("converted.tif")
        assert CliRunner().invoke(cogeo, [*args[2:-2], "--quiet", str(path),
                                          str(out)]).exit_code == 0
        out.replace(path)
    catalog_release(authors_release, PAPER_FACTORS)
    assets = json.loads((item / "larsen-b-2005.json").read_text())["assets"]
    assert assets["damage_map"]["type"] == "image/tiff; application=geotiff; " \
        "profile=cloud-optimized"
