"""``icedamage validate`` on the fixture release, and on corruptions written with plain rasterio.

Each corruption changes one thing the way a careless tool would, and the report must name the
rule it breaks and the file (relative to the release root) it breaks it in.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.io import MemoryFile
from typer.testing import CliRunner

from producer.cli import build_app
from tests.release_factory import ShelfYear, build_release
from validation import engine, product_rules
from validation.engine import (
    ENTRY_POINT_GROUP,
    RULE_SET_FAILED,
    ValidationOptions,
    ValidationReport,
    default_rule_sets,
    register_rule_set,
    unregister_rule_set,
    validate_release,
)
from validation.report import Problem

T16 = "Totten/2016/LC08_Totten_2016"
T21 = "Totten/2021/LC08_LC09_Totten_2021"
L05 = "Larsen B/2005/LE07_Larsen B_2005_slc_off_DiffGF"
AMERY = "Amery_front/2012/LE07_LC08_Amery_front_2012_slc_off_DiffGF"
MAP, DMG = "_damage_map.tif", "_damage.tif"
KEEP = object()


def run_validate(*args: str, columns: int | None = None) -> tuple[int, str]:
    """Run ``icedamage validate`` in-process; (exit code, output). ``columns`` widens the
    table so that long file names are not folded."""
    env = {"COLUMNS": str(columns)} if columns else None
    result = CliRunner().invoke(build_app(), ["validate", *args], env=env)
    return result.exit_code, result.output


def found(report: ValidationReport) -> set[tuple[str, str]]:
    """(rule, file) of every problem."""
    return {(p.rule, p.file) for p in report.problems}


# --------------------------------------------------------------------------------------------
# Corruptions, written with plain rasterio (GDAL's GTiff and COG drivers), never the writer
# --------------------------------------------------------------------------------------------


def rewrite(path: Path, pixels: np.ndarray | None = None, *, driver: str = "COG",
            nodata: object = KEEP, crs: str | None = None, transform: Affine | None = None,
            compress: str = "LZW", overview_resampling: str = "NEAREST",
            tiled: bool = True) -> None:
    """Rewrite a product with plain rasterio, changing only what is asked."""
    with rasterio.open(path) as src:
        data = src.read() if pixels is None else pixels
        profile = {"driver": "GTiff", "count": data.shape[0], "dtype": data.dtype.name,
                   "height": data.shape[1], "width": data.shape[2],
                   "crs": crs or src.crs, "transform": transform or src.transform,
                   "nodata": src.nodata if nodata is KEEP else nodata}
    if driver == "GTiff":
        extra = {"tiled": True, "blockxsize": 512, "blockysize": 512} if tiled else {}
        with rasterio.open(path, "w", compress=compress, **profile, **extra) as dst:
            dst.write(data)
        return
    with MemoryFile() as mem, mem.open(**profile) as tmp:
        tmp.write(data)
        rasterio.shutil.copy(tmp, path, driver="COG", COMPRESS=compress, BLOCKSIZE=512,
                             OVERVIEW_RESAMPLING=overview_resampling)


def pixels_of(path: Path) -> np.ndarray:
    """(1, rows, cols) pixels of a product."""
    with rasterio.open(path) as src:
        return src.read()


def rename_stem(root: Path, old: str, new: str) -> None:
    """Rename every file of a product stem (products and auxiliary files) to a new stem."""
    folder = (root / old).parent
    for path in folder.glob(f"{Path(old).name}_*"):
        target = root / new
        target.parent.mkdir(parents=True, exist_ok=True)
        path.rename(target.parent / (Path(new).name + path.name[len(Path(old).name):]))


def with_value(root: Path, rel: str, value: int) -> None:
    """Set a few pixels inside the image to a value, rewritten as a proper COG."""
    data = pixels_of(root / rel)
    data[0, 300:303, 300:303] = value
    rewrite(root / rel, data)


def damage_outside(root: Path) -> None:
    """Type 1 says damage (1) where type 2 says background, inside the extent."""
    type1, type2 = pixels_of(root / (T16 + MAP)), pixels_of(root / (T16 + DMG))
    spot = (type1[0] == 0) & (type2[0] == 0)
    rows, cols = np.nonzero(spot)
    type1[0, rows[:50], cols[:50]] = 1
    rewrite(root / (T16 + MAP), type1)


def averaged_overviews(root: Path) -> None:
    """Overviews resampled with 'average', so they hold values between 0 and 255."""
    rewrite(root / (AMERY + DMG), overview_resampling="AVERAGE")


def overviews_after_data(root: Path) -> None:
    """A tiled GeoTIFF whose overviews were added afterwards (IFDs after the data)."""
    path = root / (AMERY + MAP)
    rewrite(path, driver="GTiff")
    with rasterio.open(path, "r+") as dst:
        dst.build_overviews([2], rasterio.enums.Resampling.nearest)


def truncate(root: Path) -> None:
    """Cut a file in half, as an interrupted copy would."""
    path = root / (T21 + MAP)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def shift_grid(root: Path) -> None:
    """Type 2 one pixel to the east of type 1."""
    with rasterio.open(root / (T16 + DMG)) as src:
        moved = src.transform @ Affine.translation(1, 0)
    rewrite(root / (T16 + DMG), transform=moved)


def move(root: Path, old: str, new: str) -> None:
    """Rename a file or folder under the root."""
    (root / old).rename(root / new)


def internal_mask(root: Path, rel: str) -> None:
    """Rewrite a product as a COG with an internal mask band hiding its top rows (GDAL then
    reads them as NoData, which neither the nodata tag nor the pixel values show)."""
    path = root / rel
    with rasterio.open(path) as src:
        data, profile = src.read(), src.profile
    mask = np.full(data.shape[1:], 255, np.uint8)
    mask[:200, :] = 0
    profile.update(driver="GTiff")
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), MemoryFile() as mem:
        with mem.open(**profile) as tmp:
            tmp.write(data)
            tmp.write_mask(mask)
        with mem.open() as tmp:
            rasterio.shutil.copy(tmp, path, driver="COG", COMPRESS="LZW", BLOCKSIZE=512,
                                 OVERVIEW_RESAMPLING="NEAREST")


def self_link(root: Path, rel: str) -> None:
    """A symbolic link that points at itself (resolving it fails with ELOOP)."""
    (root / rel).symlink_to((root / rel).name)


@dataclass(frozen=True)
class Corruption:
    """One way to break the fixture release, the rule it breaks and the file named."""

    id: str
    apply: Callable[[Path], None]
    rule: str
    file: str


CORRUPTIONS: tuple[Corruption, ...] = (
    Corruption("wrong-dtype", lambda r: rewrite(r / (T16 + MAP), pixels_of(r / (T16 + MAP))
                                                .astype(np.uint16)), "raster-dtype", T16 + MAP),
    Corruption("value-2", lambda r: with_value(r, T16 + MAP, 2), "raster-values", T16 + MAP),
    Corruption("value-1-in-type-2", lambda r: with_value(r, T21 + DMG, 1), "raster-values",
               T21 + DMG),
    Corruption("nodata-on-type-2", lambda r: rewrite(r / (T16 + DMG), nodata=0),
               "raster-nodata", T16 + DMG),
    Corruption("nodata-missing-on-type-1", lambda r: rewrite(r / (T16 + MAP), nodata=None),
               "raster-nodata", T16 + MAP),
    Corruption("epsg-4326", lambda r: rewrite(r / (T16 + DMG), crs="EPSG:4326"),
               "raster-crs", T16 + DMG),
    Corruption("60m-pixels", lambda r: rewrite(
        r / (L05 + MAP), transform=rasterio.open(r / (L05 + MAP)).transform @ Affine.scale(2)),
        "raster-resolution", L05 + MAP),
    Corruption("deflate", lambda r: rewrite(r / (T21 + DMG), compress="DEFLATE"),
               "raster-compression", T21 + DMG),
    Corruption("strip-layout", lambda r: rewrite(r / (T16 + MAP), driver="GTiff", tiled=False),
               "raster-tiling", T16 + MAP),
    Corruption("averaged-overviews", averaged_overviews, "raster-overview-values", AMERY + DMG),
    Corruption("no-overviews", lambda r: rewrite(r / (AMERY + DMG), driver="GTiff"),
               "raster-overviews", AMERY + DMG),
    Corruption("overviews-after-data", overviews_after_data, "raster-cog", AMERY + MAP),
    Corruption("two-bands", lambda r: rewrite(r / (T16 + DMG), np.repeat(
        pixels_of(r / (T16 + DMG)), 2, axis=0)), "raster-band-count", T16 + DMG),
    Corruption("truncated", truncate, "raster-unreadable", T21 + MAP),
    Corruption("damage-outside-type-2", damage_outside, "pair-damage", T16 + MAP),
    Corruption("pair-grid", shift_grid, "pair-grid", T16 + MAP),
    Corruption("missing-partner", lambda r: (r / (T21 + DMG)).unlink(),
               "layout-partner-missing", T21 + MAP),
    Corruption("mismatched-sensors", lambda r: move(
        r, T21 + DMG, "Totten/2021/LC09_Totten_2021_damage.tif"),
        "layout-pair-sensors", T21 + MAP),
    Corruption("mismatched-restoration", lambda r: move(
        r, L05 + DMG, "Larsen B/2005/LE07_Larsen B_2005_slc_off_FillNodata_damage.tif"),
        "layout-pair-restoration", L05 + MAP),
    Corruption("le07-in-2016", lambda r: rename_stem(
        r, T16, "Totten/2016/LE07_LC08_Totten_2016_slc_off_DiffGF"), "sensor-year",
        "Totten/2016/LE07_LC08_Totten_2016_slc_off_DiffGF" + MAP),
    Corruption("lc09-in-2015", lambda r: rename_stem(r, T16, "Totten/2015/LC09_Totten_2015"),
               "sensor-year", "Totten/2015/LC09_Totten_2015" + DMG),
    Corruption("diffgf-on-lc08", lambda r: rename_stem(
        r, T16, "Totten/2016/LC08_Totten_2016_slc_off_DiffGF"), "restoration-unexpected",
        "Totten/2016/LC08_Totten_2016_slc_off_DiffGF" + MAP),
    Corruption("slc-off-without-token", lambda r: rename_stem(
        r, L05, "Larsen B/2005/LE07_Larsen B_2005"), "restoration-missing",
        "Larsen B/2005/LE07_Larsen B_2005" + MAP),
    Corruption("year-mismatch", lambda r: rename_stem(r, T16, "Totten/2016/LC08_Totten_2017"),
               "layout-year-mismatch", "Totten/2016/LC08_Totten_2017" + MAP),
    Corruption("shelf-mismatch", lambda r: rename_stem(r, T16, "Totten/2016/LC08_Brunt_2016"),
               "layout-shelf-mismatch", "Totten/2016/LC08_Brunt_2016" + DMG),
    Corruption("unregistered-shelf", lambda r: move(r, "Totten", "Totten Glacier"),
               "layout-unregistered-shelf", "Totten Glacier"),
    Corruption("year-folder-not-4-digits", lambda r: move(r, "Totten/2016", "Totten/16"),
               "layout-year-folder", "Totten/16"),
    Corruption("unparseable-name", lambda r: move(
        r, T16 + DMG, "Totten/2016/LX05_Totten_2016_damage.tif"), "layout-name-syntax",
        "Totten/2016/LX05_Totten_2016_damage.tif"),
    Corruption("stray-file", lambda r: (r / "Totten/2016/notes.txt").write_text("todo"),
               "layout-stray-file", "Totten/2016/notes.txt"),
    Corruption("stray-root-file", lambda r: (r / "old_metadata.ods").write_bytes(b"x"),
               "layout-stray-file", "old_metadata.ods"),
    Corruption("leftover-temp-file", lambda r: shutil.copy(
        r / (T16 + MAP), r / "Totten/2016/.LC08_Totten_2016_damage_map.tif.x1y2.tmp"),
        "layout-stray-file", "Totten/2016/.LC08_Totten_2016_damage_map.tif.x1y2.tmp"),
    Corruption("orphan-auxiliary", lambda r: (r / "Totten/2016/LC09_Totten_2016_provenance.json")
               .write_text("{}"), "layout-stray-file",
               "Totten/2016/LC09_Totten_2016_provenance.json"),
    Corruption("folder-in-year", lambda r: (r / "Totten/2016/tiles").mkdir(),
               "layout-stray-folder", "Totten/2016/tiles"),
    Corruption("type-2-internal-mask", lambda r: internal_mask(r, T16 + DMG), "raster-mask",
               T16 + DMG),
    Corruption("type-1-internal-mask", lambda r: internal_mask(r, T21 + MAP), "raster-mask",
               T21 + MAP),
    Corruption("link-loop-at-root", lambda r: self_link(r, "loop"), "layout-broken-link", "loop"),
    Corruption("link-loop-in-shelf", lambda r: self_link(r, "Totten/loop"),
               "layout-broken-link", "Totten/loop"),
    Corruption("link-loop-in-year", lambda r: self_link(r, "Totten/2016/loop"),
               "layout-broken-link", "Totten/2016/loop"),
    Corruption("dangling-product-link", lambda r: [(r / (T16 + DMG)).unlink(), (
        r / (T16 + DMG)).symlink_to("/nonexistent/x.tif")], "layout-broken-link", T16 + DMG),
    Corruption("two-products-in-a-year", lambda r: [shutil.copy(
        r / (T16 + s), r / f"Totten/2016/LC08_LC09_Totten_2016{s}") for s in (MAP, DMG)],
        "layout-multiple-products", "Totten/2016"),
)


def test_corruptions_are_distinct_and_many() -> None:
    """At least 20 different corruptions, each caught by its own (rule, file)."""
    assert len({c.id for c in CORRUPTIONS}) == len(CORRUPTIONS) >= 20
    assert len({c.rule for c in CORRUPTIONS}) >= 20


@pytest.mark.parametrize("corruption", CORRUPTIONS, ids=lambda c: c.id)
def test_corruption_is_caught(release: Path, corruption: Corruption) -> None:
    """The report names the broken rule and the file it is broken in, and the release fails."""
    corruption.apply(release)
    report = validate_release(release, workers=1)
    assert (corruption.rule, corruption.file) in found(report), report.to_json()
    assert not report.ok(strict=False)


# --------------------------------------------------------------------------------------------
# The fixture passes; CLI behaviour
# --------------------------------------------------------------------------------------------


def test_fixture_release_is_valid(pristine_release: Path) -> None:
    """The writer's release passes: exit 0, no problem, all ten product files checked."""
    code, output = run_validate(str(pristine_release))
    assert code == 0, output
    assert "valid" in output and "not valid" not in output
    seen: list[tuple[int, int]] = []
    report = validate_release(pristine_release, workers=2,
                              progress=lambda done, total: seen.append((done, total)))
    # not cataloged yet (a normal step before `icedamage catalog`): one warning says so
    assert [(p.rule, p.severity) for p in report.problems] == [("catalog-missing", "warning")]
    assert report.product_files == 10
    # the progress bar counts the five shelf-years' pixel checks up to the end
    assert seen[0] == (0, 5) and seen[-1] == (5, 5) and len(seen) == 6


def test_catalog_and_publish_files_are_allowed(release: Path) -> None:
    """metadata.ods, ROI GeoPackages, STAC folder, items, notes and publish state are expected."""
    for name in ("metadata.ods", "Totten_ROI.gpkg", "Larsen B_ROI.gpkg", "items.parquet",
                 "items.ndjson", "RELEASE_NOTES.md", "release.yaml"):
        (release / name).write_bytes(b"x")
    for folder in ("stac/Totten", ".icedamage-publish"):
        (release / folder).mkdir(parents=True)
        (release / folder / "anything.json").write_text("{}")
    # the layout allows them (the catalog rule sets report these stand-ins as a broken catalog)
    assert [p for p in validate_release(release).problems if p.rule.startswith("layout-")] == []


def test_allow_globs_silence_strays(release: Path) -> None:
    """--allow leaves matching files and folders alone; others are still reported."""
    (release / "README.txt").write_text("hello")
    (release / "Totten/2016/notes.txt").write_text("todo")
    (release / "scratch").mkdir()
    (release / "scratch/x.tif").write_bytes(b"x")
    code, _ = run_validate(str(release), "--allow", "*.txt", "--allow", "scratch")
    assert code == 0
    report = validate_release(release, allow=["README.txt"])
    assert found(report) == {("layout-stray-file", "Totten/2016/notes.txt"),
                             ("layout-stray-folder", "scratch"),
                             ("catalog-missing", "stac/catalog.json")}


def test_allowing_a_folders_content_allows_the_folder(release: Path) -> None:
    """docs/validation.md's own example: ``scratch/*`` leaves ``scratch/`` and its content
    alone; a folder inside a year folder likewise."""
    (release / "scratch").mkdir()
    (release / "scratch/x.tif").write_bytes(b"x")
    (release / "Totten/2016/tmp").mkdir()
    (release / "Totten/2016/tmp/a.txt").write_text("x")
    report = validate_release(release, allow=["scratch/*", "Totten/2016/tmp/*"], workers=1)
    # only the warning that the release is not cataloged yet
    assert found(report) == {("catalog-missing", "stac/catalog.json")}, report.to_json()
    assert found(validate_release(release, allow=["scratch/*"], workers=1)) == {
        ("layout-stray-folder", "Totten/2016/tmp"), ("catalog-missing", "stac/catalog.json")}


def test_catalog_validator_and_packager_agree_on_year_folders(release: Path) -> None:
    """A folder named with another script's digits ("٢٠١٦", which int() reads as 2016) is no
    year folder for any of them: the catalog does not describe its files, the packager does not
    take its shelf for a shelf folder, the validator reports it as a stray."""
    from catalog.release import scan_release as catalog_scan
    from publish.package import shelf_dirs
    from validation.inventory import scan_release as inventory_scan

    arabic = "\u0662\u0660\u0661\u0666"
    for shelf in ("Totten", "Nowhere"):  # a shelf with real years, and one with only this
        (release / shelf / arabic).mkdir(parents=True)
        product = release / f"{T16}{MAP}"
        shutil.copy(product, release / shelf / arabic / product.name)
    assert all(f.folder.name != arabic for f in catalog_scan(release))
    assert {y.year for y in inventory_scan(release).years} == {"2001", "2005", "2012", "2016",
                                                                 "2021"}
    assert "Nowhere" not in [d.name for d in shelf_dirs(release)]
    assert ("layout-stray-folder", "Nowhere") in found(validate_release(release, workers=1))


def test_a_release_without_products_is_not_valid(tmp_path: Path) -> None:
    """An empty folder (a wrong path) or one with only empty shelf folders fails, exit 1."""
    empty = tmp_path / "empty"
    empty.mkdir()
    report = validate_release(empty, workers=1)
    assert found(report) == {("layout-no-products", ".")} and not report.ok()
    code, output = run_validate(str(empty), columns=250)
    assert code == 1 and "layout-no-products" in output
    (empty / "Totten").mkdir()
    assert ("layout-no-products", ".") in found(validate_release(empty, workers=1))


def test_a_link_loop_is_reported_not_raised(release: Path) -> None:
    """A self-referencing link makes every stat fail with ELOOP: reported by name, the
    command ends with exit 1 and its report, not a traceback."""
    (release / "Totten/2016/loop").symlink_to("loop")
    code, output = run_validate(str(release), columns=250)
    assert code == 1, output
    assert "layout-broken-link" in output and "Totten/2016/loop" in output
    assert "Traceback" not in output


def test_a_name_that_is_not_utf8_is_reported_escaped(release: Path, tmp_path: Path) -> None:
    """A file name with a byte that is not UTF-8: the table and the JSON report are written,
    the name shown with the byte escaped."""
    folder = bytes(release / "Totten/2016")
    with open(folder + b"/notes_\xff.txt", "wb") as fh:
        fh.write(b"x")
    code, output = run_validate(str(release), "--json", str(tmp_path / "r.json"), columns=250)
    assert code == 1, output
    assert "notes_\\xff.txt" in output
    data = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert {(p["rule"], p["file"]) for p in data["problems"]} == {
        ("layout-stray-file", "Totten/2016/notes_\\xff.txt"),
        ("catalog-missing", "stac/catalog.json")}


def test_every_problem_is_reported_not_just_the_first(release: Path, tmp_path: Path) -> None:
    """Three corruptions in three files: the JSON report lists them all, exit status 1."""
    with_value(release, T16 + MAP, 7)
    rewrite(release / (T21 + DMG), compress="DEFLATE")
    (release / "Larsen B/2001/x.txt").write_text("x")
    code, output = run_validate(str(release), "--json", str(tmp_path / "out" / "report.json"))
    assert code == 1
    assert "raster-values" in output
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["ok"] is False and data["errors"] == 4 and data["product_files"] == 10
    assert {(p["rule"], p["file"]) for p in data["problems"]} == {
        ("raster-values", T16 + MAP), ("raster-overview-values", T16 + MAP),
        ("raster-compression", T21 + DMG),
        ("layout-stray-file", "Larsen B/2001/x.txt"), ("catalog-missing", "stac/catalog.json")}
    value = next(p for p in data["problems"] if p["rule"] == "raster-values")
    assert value["found"] == "values 7: 9 px" and "0, 1, 255" in value["expected"]
    assert set(value) == {"file", "rule", "found", "expected", "severity"}
    assert not list((tmp_path / "out").glob(".*.tmp")), "temporary report left behind"


def test_warnings_fail_only_with_strict(release: Path, tmp_path: Path) -> None:
    """An empty year folder is a warning: exit 0 normally, 1 with --strict."""
    (release / "Totten/2019").mkdir()
    code, output = run_validate(str(release), "--json", str(tmp_path / "r.json"))
    assert code == 0, output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["ok"] is True and data["ok_strict"] is False and data["warnings"] == 2
    assert {(p["rule"], p["file"]) for p in data["problems"]} == {
        ("layout-empty-folder", "Totten/2019"),
        ("catalog-missing", "stac/catalog.json")}  # and: not cataloged yet
    code, output = run_validate(str(release), "--strict")
    assert code == 1 and "not valid (strict)" in output


def test_missing_release_folder_exits_2(tmp_path: Path) -> None:
    """A folder that does not exist is a usage error with a clear message."""
    code, output = run_validate(str(tmp_path / "nope"))
    assert code == 2
    assert "does not exist" in output
    with pytest.raises(NotADirectoryError):
        validate_release(tmp_path / "nope")


# --------------------------------------------------------------------------------------------
# Plug-in rule sets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Needs:
    """A toy rule set (as the catalog would add): the root must hold a given file."""

    required: str
    name: str = "needs-file"

    def check(self, release_dir: Path) -> list[Problem]:
        if (release_dir / self.required).exists():
            return []
        return [Problem(self.required, "needs-file", "missing", "present")]


class _Broken:
    name = "broken"

    def check(self, release_dir: Path) -> list[Problem]:
        raise RuntimeError("boom")


def test_registered_rule_set_runs_by_default(release: Path) -> None:
    """A factory registered by another package runs in every default validation."""
    def factory(options: ValidationOptions) -> _Needs:
        return _Needs("metadata.ods")

    register_rule_set(factory)
    try:
        assert "needs-file" in [r.name for r in default_rule_sets()]
        report = validate_release(release)
        assert found(report) == {("needs-file", "metadata.ods"),
                                 ("catalog-missing", "stac/catalog.json")}
        assert "needs-file" in report.rule_sets
    finally:
        unregister_rule_set(factory)
    assert validate_release(release).ok()
    assert "needs-file" not in [r.name for r in default_rule_sets()]


def test_crashing_rule_set_is_reported_and_others_still_run(release: Path) -> None:
    """A rule set that raises becomes a problem; the other rule sets still report theirs."""
    (release / "junk").write_text("x")
    report = validate_release(release, rule_sets=[_Broken(), *default_rule_sets()])
    assert (RULE_SET_FAILED, ".") in found(report)
    assert ("layout-stray-file", "junk") in found(report)
    assert "boom" in next(p.found for p in report.problems if p.rule == RULE_SET_FAILED)


def _needs_metadata(options: ValidationOptions) -> _Needs:
    """An entry-point style factory (module:attribute) for the plug-in test."""
    return _Needs("metadata.ods")


def test_entry_point_rule_sets_are_loaded(release: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Installed distributions can add rule sets through the icedamage.rule_sets group."""
    point = EntryPoint("needs", "tests.test_validate:_needs_metadata", ENTRY_POINT_GROUP)
    monkeypatch.setattr(engine, "entry_points",
                        lambda group: [point] if group == ENTRY_POINT_GROUP else [])
    assert ("needs-file", "metadata.ods") in found(validate_release(release))


def test_odd_sized_rasters_overviews_are_read_exactly(tmp_path: Path) -> None:
    """Sizes that overview factors do not divide: valid passes, averaged overviews are caught."""
    item = ShelfYear("Brunt", 2016, ("LC08",), size=(1030, 771))
    root = build_release(tmp_path / "odd", (item,), with_provenance=False)
    # only the warning that the release is not cataloged yet
    assert found(validate_release(root)) == {("catalog-missing", "stac/catalog.json")}
    rel = "Brunt/2016/LC08_Brunt_2016_damage.tif"
    rewrite(root / rel, overview_resampling="AVERAGE")
    report = validate_release(root)
    assert ("raster-overview-values", rel) in found(report)


def test_threads_report_the_same_as_one_thread(release: Path) -> None:
    """The thread pool changes nothing in the report but its speed."""
    with_value(release, T16 + MAP, 9)
    rewrite(release / (AMERY + DMG), overview_resampling="AVERAGE")
    (release / (T21 + DMG)).unlink()
    one, many = validate_release(release, workers=1), validate_release(release, workers=3)
    assert one.problems == many.problems and len(one.problems) >= 4


class _HalfBroken:
    name = "half-broken"

    def check(self, release_dir: Path):  # noqa: ANN201 - a generator, as rule sets may be
        yield Problem("a.tif", "first-rule", "x", "y")
        raise RuntimeError("late failure")


def test_problems_before_a_crash_are_kept(release: Path) -> None:
    """A rule set that fails midway keeps what it already found."""
    report = validate_release(release, rule_sets=[_HalfBroken()])
    assert found(report) == {("first-rule", "a.tif"), (RULE_SET_FAILED, ".")}


def test_unexpected_error_in_one_shelf_year_spares_the_others(
        release: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One shelf-year whose checks raise is reported; the other shelf-years are still checked."""
    original = product_rules.check_pair

    def flaky(pair: product_rules.Pair) -> list[Problem]:
        if pair.files()[0].rel == T16 + MAP:
            raise MemoryError("simulated")
        return original(pair)

    monkeypatch.setattr(product_rules, "check_pair", flaky)
    with_value(release, T21 + MAP, 3)
    report = validate_release(release, workers=1)
    assert ("raster-check-failed", T16 + MAP) in found(report)
    assert ("raster-values", T21 + MAP) in found(report)


# --------------------------------------------------------------------------------------------
# Overviews, grid lattice, scale/offset, PAM sidecars, ROI GeoPackages, implausible content
# --------------------------------------------------------------------------------------------


def own_rules(release: Path, allow: tuple[str, ...] = ()) -> ValidationReport:
    """Validate with the validator's own rule sets only (layout, products, plausibility): the
    catalog's rule sets, which run when installed, judge other things than these tests do."""
    from validation.layout_rules import layout_rules
    from validation.plausibility_rules import plausibility_rules

    return validate_release(release, rule_sets=[
        layout_rules(allow), product_rules.product_rules(allow, workers=1),
        plausibility_rules(allow)])


def cog_translated(path: Path, resampling: str) -> None:
    """Rewrite a product as rio-cogeo does for the writer, with another overview resampling
    (rio-cogeo records it in the OVERVIEW_RESAMPLING tag)."""
    from rio_cogeo.cogeo import cog_translate

    from producer.writer import cog_profile

    source = path.with_name("source.tif")
    path.rename(source)
    with rasterio.open(source) as src:
        cog_translate(src, str(path), cog_profile(), nodata=src.nodata,
                      overview_resampling=resampling, in_memory=True, quiet=True,
                      use_cog_driver=False)
    source.unlink()


def stale_overviews(path: Path) -> None:
    """A valid COG whose overview was built while the image was still all background."""
    with rasterio.open(path) as src:
        data, profile = src.read(), src.profile
    scratch = path.with_name("scratch.tif")
    profile.update(driver="GTiff", tiled=True, blockxsize=512, blockysize=512, compress="LZW")
    with rasterio.open(scratch, "w", **profile) as dst:
        dst.write(np.zeros_like(data))
    with rasterio.open(scratch, "r+") as dst:
        dst.build_overviews([2], rasterio.enums.Resampling.nearest)
        dst.write(data)
    rasterio.shutil.copy(scratch, path, driver="COG", COMPRESS="LZW", BLOCKSIZE=512,
                         OVERVIEWS="FORCE_USE_EXISTING")
    scratch.unlink()


@pytest.mark.parametrize("size", [(1030, 771), (2050, 1030)])
def test_nearest_sources_are_the_pixels_the_writer_copies(tmp_path: Path,
                                                          size: tuple[int, int]) -> None:
    """The writer's nearest overviews (rio-cogeo, GDAL) copy exactly the pixels
    ``nearest_sources`` names, also at levels whose factor does not divide the size (2050 x
    1030: the second level, 513 x 258, is resampled from the first, not from the image)."""
    from producer.grid import Grid
    from producer.writer import write_cog
    from validation.raster_rules import nearest_sources

    height, width = size
    rows, cols = np.mgrid[0:height, 0:width]
    grid = Grid.from_bounds(0, 0, width * 30, height * 30)
    for axis, index in ((0, rows), (1, cols)):
        path = write_cog(tmp_path / f"axis{axis}.tif", (index % 251).astype(np.uint8), grid,
                         None)
        with rasterio.open(path) as src:
            levels = [rasterio.open(path, overview_level=k) for k in range(len(src.overviews(1)))]
        sizes = [o.height if axis == 0 else o.width for o in levels]
        assert sizes
        for level, expected in zip(levels, nearest_sources(size[axis], sizes), strict=True):
            line = level.read(1)[:, 0] if axis == 0 else level.read(1)[0]
            level.close()
            assert np.array_equal(line, expected % 251)


@pytest.mark.parametrize("resampling", ["average", "mode"])
def test_overviews_that_are_not_nearest_are_caught(release: Path, resampling: str) -> None:
    """Type 1 overviews averaged or by mode keep values in {0, 1, 255} but are no nearest
    decimation: the tag rio-cogeo writes and the content comparison both say so."""
    cog_translated(release / (AMERY + MAP), resampling)
    report = own_rules(release)
    assert {("raster-overview-resampling", AMERY + MAP),
            ("raster-overview-content", AMERY + MAP)} <= found(report), report.to_json()
    assert not report.ok()


def test_overviews_are_compared_with_the_image_without_a_tag(release: Path) -> None:
    """GDAL's COG driver writes no resampling tag: an averaged type 1 and a stale type 2
    overview (class values only, layout valid) are caught by their content; a nearest rewrite
    by the same driver passes."""
    rewrite(release / (T16 + MAP), overview_resampling="MODE")
    stale_overviews(release / (AMERY + DMG))
    rewrite(release / (T21 + MAP))
    report = own_rules(release)
    assert found(report) == {("raster-overview-content", T16 + MAP),
                             ("raster-overview-content", AMERY + DMG)}, report.to_json()


def test_overviews_of_odd_sizes_are_compared_exactly(tmp_path: Path) -> None:
    """Sizes no factor divides (levels GDAL rounded, read on their own): a nearest rewrite by
    GDAL's COG driver (which rounds the level size down, rio-cogeo up) passes, mode overviews
    are caught by their content."""
    item = ShelfYear("Brunt", 2016, ("LC08",), size=(1030, 771))
    root = build_release(tmp_path / "odd", (item,), with_provenance=False)
    stem = "Brunt/2016/LC08_Brunt_2016"
    rewrite(root / (stem + DMG))
    rewrite(root / (stem + MAP), overview_resampling="MODE")
    report = own_rules(root)
    assert found(report) == {("raster-overview-content", stem + MAP)}, report.to_json()


def shifted(root: Path, rel: str, dx: float) -> None:
    """Move a product's grid ``dx`` metres east (pixels unchanged)."""
    with rasterio.open(root / rel) as src:
        moved = Affine.translation(dx, 0) @ src.transform
    rewrite(root / rel, transform=moved)


def test_grid_off_the_30m_lattice(release: Path) -> None:
    """An origin off the 30 m lattice is a warning; a shelf whose years lie on different
    lattices is an error for the files off the lattice of the others."""
    for suffix in (MAP, DMG):
        shifted(release, T16 + suffix, 15)     # Totten 2016 vs its aligned 2021
        shifted(release, AMERY + suffix, 15)   # Amery_front has one year only
    report = own_rules(release)
    assert found(report) == {
        *(("raster-grid-origin", stem + suffix) for stem in (T16, AMERY) for suffix in (MAP, DMG)),
        ("raster-grid-stack", T16 + MAP), ("raster-grid-stack", T16 + DMG)}, report.to_json()
    assert {p.severity for p in report.problems if p.rule == "raster-grid-origin"} == {"warning"}
    stack = next(p for p in report.problems if p.rule == "raster-grid-stack")
    assert "(15, 0) m" in stack.found and T21 in stack.found


def test_band_scale_and_offset_are_refused(release: Path) -> None:
    """Scale 2 / offset 10 stored in the file (readers applying them see 10/12/520)."""
    path = release / (T16 + MAP)
    with rasterio.open(path) as src:
        data, profile = src.read(), src.profile
    profile.update(driver="GTiff")
    with MemoryFile() as mem:
        with mem.open(**profile) as tmp:
            tmp.write(data)
            tmp.scales, tmp.offsets = (2.0,), (10.0,)
        with mem.open() as tmp:
            rasterio.shutil.copy(tmp, path, driver="COG", COMPRESS="LZW", BLOCKSIZE=512,
                                 OVERVIEW_RESAMPLING="NEAREST")
    report = own_rules(release)
    assert found(report) == {("raster-scale-offset", T16 + MAP)}, report.to_json()


def test_an_aux_xml_sidecar_does_not_supply_the_nodata_tag(release: Path) -> None:
    """Only the file counts: a PAM sidecar giving NoDataValue 255 to a type 1 without a
    nodata tag does not hide the missing tag (the sidecar allowed, as QGIS leaves them)."""
    rewrite(release / (T16 + MAP), nodata=None)
    (release / (T16 + MAP + ".aux.xml")).write_text(
        '<PAMDataset><PAMRasterBand band="1"><NoDataValue>255</NoDataValue>'
        "</PAMRasterBand></PAMDataset>")
    report = own_rules(release, allow=("*.aux.xml",))
    assert ("raster-nodata", T16 + MAP) in found(report), report.to_json()


def test_roi_geopackages_of_no_shelf_or_of_an_absent_shelf(release: Path) -> None:
    """A root GeoPackage whose shelf part is not registered is a stray; one of a registered
    shelf without products in the release is a warning; those of the release's shelves pass."""
    for name in ("Totten_ROI.gpkg", "Larsen B_ROI.gpkg", "Larsen_B_ROI.gpkg", "Amery_ROI.gpkg",
                 "_ROI.gpkg"):
        (release / name).write_bytes(b"x")
    report = own_rules(release)
    assert found(report) == {("layout-stray-file", "Larsen_B_ROI.gpkg"),
                             ("layout-stray-file", "_ROI.gpkg"),
                             ("layout-unused-roi", "Amery_ROI.gpkg")}, report.to_json()
    unused = next(p for p in report.problems if p.rule == "layout-unused-roi")
    assert unused.severity == "warning"


def test_implausible_content_is_a_warning(release: Path) -> None:
    """A type 1 map all NoData, a pair all damage, a type 1 map without NoData: warnings
    (possible, not plausible), and nothing else."""
    type1 = pixels_of(release / (T16 + MAP))
    rewrite(release / (T16 + MAP), np.full_like(type1, 255))
    type1 = pixels_of(release / (T21 + MAP))
    rewrite(release / (T21 + DMG), np.full_like(type1, 255))
    rewrite(release / (T21 + MAP), np.where(type1 == 255, 255, 1).astype(np.uint8))
    rewrite(release / (L05 + MAP), (pixels_of(release / (L05 + DMG)) == 255).astype(np.uint8))
    report = own_rules(release)
    assert found(report) == {("raster-all-nodata", T16 + MAP),
                             ("raster-all-damage", T21 + MAP), ("raster-all-damage", T21 + DMG),
                             ("raster-no-nodata", L05 + MAP)}, report.to_json()
    assert report.ok() and not report.ok(strict=True)


def test_content_tally_matches_a_plain_count() -> None:
    """The content tally's shortcuts (min, max, settling early) see what np.unique sees."""
    from producer.spec import TYPE1, TYPE2
    from validation.plausibility_rules import ContentTally

    rng = np.random.default_rng(5)
    for product_type in (TYPE1, TYPE2):
        values = sorted(product_type.values)
        for _ in range(200):
            chosen = rng.choice(values, size=rng.integers(1, len(values) + 1), replace=False)
            windows = [rng.choice(chosen, size=(3, 4)).astype(np.uint8) for _ in range(3)]
            tally = ContentTally(product_type)
            for window in windows:
                tally.update(window)
            present = set(np.unique(np.concatenate(windows)).tolist())
            background = product_type.background in present
            assert (product_type.background in tally.seen) == background
            if product_type.nodata is not None:
                assert (product_type.nodata in tally.seen) == (product_type.nodata in present)
            if not background:
                assert (product_type.damage in tally.seen) == (product_type.damage in present)


@pytest.mark.parametrize("text", [b"title: [unclosed\n", b"\xff\xfe\x00garbage", b"- a list\n"],
                         ids=["not-yaml", "not-utf8", "not-a-mapping"])
def test_a_release_yaml_that_does_not_read_is_reported(release: Path, text: bytes) -> None:
    """release.yaml is read as `icedamage publish` reads it (publish.metadata), cataloged or
    not: text it cannot read fails validation instead of failing the publication."""
    (release / "release.yaml").write_bytes(text)
    report = validate_release(release, workers=1)
    assert ("release-yaml-invalid", "release.yaml") in found(report), report.to_json()
    assert not report.ok()
    (release / "release.yaml").write_text("title: Surface damage\nlicense: CC-BY-4.0\n")
    assert "release-yaml-invalid" not in {p.rule for p in validate_release(release).problems}


def test_a_produced_map_without_its_record_is_reported(tmp_path: Path) -> None:
    """``produce --force`` withdraws a shelf-year's record before writing its maps: stopped
    there, the maps lose their scenes and model. Products tagged by produce without a record,
    in a release holding other records, fail validation; a release without any record (v1, or
    trimmed on purpose) and the authors' untagged maps do not."""
    from tests.publish_support import write_tagged_products

    release = build_release(tmp_path / "release")
    write_tagged_products(release, "gee")  # Totten 2021 as produce writes it, record kept
    record = release / f"{T21}_provenance.json"
    assert not {r for r, _ in found(validate_release(release, workers=1))} & {
        "provenance-missing"}
    record.unlink()
    assert ("provenance-missing", f"{T21}{MAP}") in found(validate_release(release, workers=1))
    for other in release.rglob("*_provenance.json"):  # no record at all: trimmed on purpose
        other.unlink()
    assert "provenance-missing" not in {r for r, _ in found(validate_release(release,
                                                                             workers=1))}
