"""Reading ROI GeoPackages (``producer.roi_files``): the shelf's features, the layer, the CRS,
valid polygons, and outlines that are the same hashing alike (review of ``produce --roi``)."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import geopandas as gpd
import pytest
import shapely
from shapely.affinity import translate
from shapely.geometry import Point, Polygon, box
from typer.testing import CliRunner

from catalog.gpkg import read_roi
from producer import roi_files
from producer.commands import produce_app
from producer.roi_files import (
    is_default_outline,
    outline_sha256,
    produce_roi,
    read_outline,
    release_roi_file,
    same_outline,
    write_roi_geopackage,
)
from producer.shelves import SHELVES, get_shelf, load_roi_geopackage, roi_polygon

DEMO_SIZE = "128"


def _gpkg(path: Path, geometries: list, crs: object = "EPSG:3031", layer: str | None = None,
          **columns: list) -> Path:
    """Write one layer of features (``columns``: attribute lists) into ``path``."""
    frame = gpd.GeoDataFrame(columns, geometry=geometries, crs=crs)
    frame.to_file(path, driver="GPKG", layer=layer, engine="pyogrio")
    return path


def _moved(shelf: str = "Totten") -> Polygon:
    """An outline other than the registry's (one pixel east), still over the shelf."""
    return translate(roi_polygon(shelf), 30.0, 0.0)


def _produce(args: list[str], weights: Path, out: Path):  # noqa: ANN202 - click Result
    base = ["--weights", str(weights), "--out", str(out), "--demo-size", DEMO_SIZE, "--no-tta",
            "--device", "cpu"]
    return CliRunner().invoke(produce_app(), args + base, env={"COLUMNS": "250"})


# --- finding 1: which feature is the shelf's ---------------------------------------------------

def test_an_unnamed_outline_is_one_shelfs_only_in_a_run_of_that_shelf(tmp_path: Path) -> None:
    single = _gpkg(tmp_path / "single.gpkg", [_moved()])
    release = tmp_path / "release"
    with pytest.raises(ValueError, match=r"single\.gpkg.*no column 'shelf' or 'name'.*"
                                         r"the run maps 2 shelves"):
        produce_roi(release, "Totten", single, run_shelves=["Totten", "holmes"])
    outline, origin = produce_roi(release, "Totten", single, run_shelves=["Totten"])
    assert same_outline(outline, _moved()) and origin == "file:single.gpkg"
    assert same_outline(produce_roi(release, "Totten", single, run_shelves=["totten",
                                                                            "Totten"])[0],
                        _moved())  # the same shelf typed twice is one shelf


def test_an_outline_off_the_shelfs_registered_roi_is_refused(tmp_path: Path) -> None:
    """Totten's unnamed outline asked for Holmes (``--shelf Totten,Holmes``)."""
    single = _gpkg(tmp_path / "single.gpkg", [roi_polygon("Totten")])
    with pytest.raises(ValueError, match=r"--roi .*single\.gpkg: the outline of Holmes does not "
                                         r"overlap the registered ROI of Holmes"):
        produce_roi(tmp_path / "release", "Holmes", single)


def test_a_multi_shelf_run_with_one_unnamed_outline_exits_2(tiny_weights: Path,
                                                            tmp_path: Path) -> None:
    """The reviewer's run: it mapped Holmes on Totten's outline and passed validate. Refused
    by either rule: an unnamed outline in a run of two shelves, or off Holmes' ROI."""
    single = _gpkg(tmp_path / "single.gpkg", [roi_polygon("Totten")])
    out = tmp_path / "release"
    result = _produce(["--shelf", "Totten,Holmes", "--year", "2021", "--roi", str(single)],
                      tiny_weights, out)
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and f"--roi {single}:" in message, message
    assert ("the run maps 2 shelves" in message
            or "does not overlap the registered ROI of Holmes" in message)
    assert not out.exists() or not any(out.iterdir())


def test_an_unnamed_outline_overlapping_both_shelves_is_refused_for_a_run_of_two(
        tiny_weights: Path, tmp_path: Path) -> None:
    """Thwaites' ROI holds Crosson: the overlap rule cannot tell, the run's shelves do
    (``check_request`` passes them to ``produce_roi``), in the command and in ``produce``."""
    from producer.pipeline import ProduceError, ProduceOptions, produce
    from producer.sources.demo import DemoSource

    single = _gpkg(tmp_path / "single.gpkg", [roi_polygon("Thwaites")])
    out = tmp_path / "release"
    result = _produce(["--shelf", "Thwaites,Crosson", "--year", "2021", "--roi", str(single)],
                      tiny_weights, out)
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "single.gpkg" in message, message
    assert "the run maps 2 shelves" in message
    options = ProduceOptions(out=out, weights=tiny_weights, tta=False, device="cpu",
                             roi_file=single)
    with pytest.raises(ProduceError, match="the run maps 2 shelves"):
        produce(["Thwaites", "crosson"], [2021], DemoSource(int(DEMO_SIZE)), options)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("column", ["Shelf", "SHELF", "Name", "NAME"])
def test_the_shelf_column_is_matched_in_any_case(tmp_path: Path, column: str) -> None:
    """A one-feature ``Shelf='Holmes'`` file was taken as Totten's ROI."""
    path = _gpkg(tmp_path / "holmes.gpkg", [roi_polygon("Holmes")], **{column: ["Holmes"]})
    with pytest.raises(ValueError, match=rf"no feature whose '{column}' is 'Totten'.*'Holmes'"):
        read_outline(path, "Totten", "--roi")
    assert same_outline(read_outline(path, "Holmes", "--roi"), roi_polygon("Holmes"))


def test_one_file_of_every_shelf_gives_each_its_own(tmp_path: Path) -> None:
    path = _gpkg(tmp_path / "all.gpkg", [roi_polygon(s) for s in SHELVES], Name=list(SHELVES))
    for shelf in SHELVES:
        assert same_outline(read_outline(path, shelf), roi_polygon(shelf)), shelf


# --- finding 2: one layer selection for produce and the catalog ------------------------------

def test_the_roi_layer_is_found_after_a_points_layer(tmp_path: Path) -> None:
    path = _gpkg(tmp_path / "layers.gpkg", [Point(roi_polygon("Totten").centroid)],
                 layer="labels", label=["a"])
    _gpkg(path, [_moved()], layer="roi", shelf=["Totten"])
    assert same_outline(read_outline(path, "Totten", "--roi"), _moved())
    assert same_outline(load_roi_geopackage(path, "Totten"), _moved())


def test_of_two_polygon_layers_the_one_named_roi_is_read_by_both(tmp_path: Path) -> None:
    """A grounding line before the ROI: GDAL's first layer is the wrong outline, and the
    catalog used to merge both."""
    grounding = _moved().buffer(-20_000)
    path = _gpkg(tmp_path / "layers.gpkg", [grounding], layer="a_grounding", shelf=["Totten"])
    _gpkg(path, [_moved()], layer="Totten_ROI", shelf=["Totten"])
    assert same_outline(read_outline(path, "Totten", "--roi"), _moved())
    (kept,) = read_roi(path).geometry
    assert same_outline(kept, _moved())


def test_two_polygon_layers_neither_named_roi_are_ambiguous(tmp_path: Path) -> None:
    path = _gpkg(tmp_path / "two.gpkg", [_moved().buffer(-20_000)], layer="grounding",
                 shelf=["Totten"])
    _gpkg(path, [_moved()], layer="outline", shelf=["Totten"])
    ambiguous = r"2 polygon layers \('grounding', 'outline'\).*ambiguous"
    with pytest.raises(ValueError, match=rf"--roi .*two\.gpkg: {ambiguous}"):
        read_outline(path, "Totten", "--roi")
    with pytest.raises(ValueError, match=rf"two\.gpkg: {ambiguous}"):
        read_roi(path)


# --- finding 3: geographic outlines, and the release's files in EPSG:3031 --------------------

@pytest.mark.parametrize("shelf", ["Thwaites", "Totten", "Amery"])
def test_a_lonlat_rectangle_keeps_its_parallels(tmp_path: Path, shelf: str) -> None:
    """The authors' Earth Engine rectangle (planar lon/lat edges) given as its 5 corners in
    EPSG:4326 is the registry's densified box, not its chords (-1,275 km² on Thwaites)."""
    record = get_shelf(shelf)
    rect = box(record.lon_min, record.lat_min, record.lon_max, record.lat_max)
    path = _gpkg(tmp_path / "rect.gpkg", [rect], crs="EPSG:4326", shelf=[shelf])
    outline = read_outline(path, shelf, "--roi")
    registry = roi_polygon(shelf)
    assert outline.symmetric_difference(registry).area < 1e-5 * registry.area
    assert same_outline(outline, registry)


def test_an_outline_metres_off_the_registry_is_its_own_in_the_digest() -> None:
    """Within the 3 m of ``same_outline`` an outline still rasterises to other ROI pixels (the
    registry box grown 2 m: 1,211 of Totten's), and its maps are made on it: it must not pass
    for the registry's default, whose digest leaves the outline out; the registry's own, as
    the catalog writes it back, does."""
    registry = roi_polygon("Totten")
    grown = registry.buffer(2.0, join_style="mitre")
    assert same_outline(grown, registry)
    assert not is_default_outline("Totten", grown)
    assert is_default_outline("Totten", shapely.from_wkb(shapely.to_wkb(registry)))


def test_a_release_roi_file_not_in_epsg_3031_is_refused_but_roi_takes_any_crs(
        tmp_path: Path) -> None:
    release = tmp_path / "release"
    release.mkdir()
    frame = gpd.GeoDataFrame({"shelf": ["Totten"]}, geometry=[_moved()], crs="EPSG:3031")
    kept = release_roi_file(release, "Totten")
    frame.to_crs("EPSG:4326").to_file(kept, driver="GPKG", layer="roi")
    with pytest.raises(ValueError, match=r"Totten_ROI\.gpkg: in EPSG:4326.*rule roi-crs.*"
                                         r"move it out of the release and give it as --roi"):
        produce_roi(release, "Totten")
    given = tmp_path / "mine_4326.gpkg"
    kept.rename(given)
    outline, origin = produce_roi(release, "Totten", given)
    assert same_outline(outline, _moved()) and origin == "file:mine_4326.gpkg"


# --- finding 4: the same outline, the same digest --------------------------------------------

def test_copies_of_an_outline_hash_alike(tmp_path: Path) -> None:
    outline = _moved()
    round_trip = gpd.GeoSeries([outline], crs="EPSG:3031").to_crs("EPSG:4326").to_crs(
        "EPSG:3031").iloc[0]
    assert round_trip.equals_exact(outline, 0.0) is False  # noise there is
    for copy in (round_trip, shapely.force_3d(outline, 12.0), outline.reverse()):
        assert outline_sha256(copy) == outline_sha256(outline)
    assert outline_sha256(translate(outline, 1.0, 0.0)) != outline_sha256(outline)


def test_a_given_copy_of_the_releases_outline_is_the_releases(tmp_path: Path) -> None:
    release = tmp_path / "release"
    write_roi_geopackage(release, "Totten", _moved(), "test")
    given = tmp_path / "copy.gpkg"
    gpd.GeoDataFrame({"shelf": ["Totten"]}, geometry=[shapely.force_3d(_moved(), 5.0)],
                     crs="EPSG:3031").to_crs("EPSG:4326").to_file(given, driver="GPKG")
    outline, origin = produce_roi(release, "Totten", given)
    assert outline.equals_exact(read_outline(release_roi_file(release, "Totten"), "Totten"), 0.0)
    assert origin == "file:copy.gpkg"


def test_registry_outlines_stay_out_of_the_digest(tmp_path: Path) -> None:
    """The digest holds ``outline_sha256`` only for outlines other than the registry's
    (``producer.pipeline.produce_year``), so its new snapping changes no default run: the
    registry's ROI, and the copy the catalog writes into a release, are the default."""
    release = tmp_path / "release"
    for shelf in SHELVES:
        write_roi_geopackage(release, shelf, roi_polygon(shelf), "registry")
        outline, origin = produce_roi(release, shelf)
        assert origin.startswith("release:") and is_default_outline(shelf, outline), shelf
    assert not is_default_outline("Totten", _moved())


def test_a_rerun_on_a_reprojected_copy_of_the_roi_is_skipped(tiny_weights: Path,
                                                             tmp_path: Path) -> None:
    mine = _gpkg(tmp_path / "mine.gpkg", [_moved()], shelf=["Totten"])
    copy = tmp_path / "copy_4326.gpkg"
    gpd.read_file(mine).to_crs("EPSG:4326").to_file(copy, driver="GPKG")
    out = tmp_path / "release"
    args = ["--shelf", "Totten", "--year", "2021"]
    made = _produce([*args, "--roi", str(mine)], tiny_weights, out)
    assert made.exit_code == 0 and "produced" in made.output, made.output
    again = _produce([*args, "--roi", str(copy)], tiny_weights, out)
    assert again.exit_code == 0 and "skipped" in again.output, again.output


# --- finding 5: invalid outlines ---------------------------------------------------------------

@pytest.mark.parametrize("named", [True, False])
def test_a_self_intersecting_outline_is_a_valueerror_naming_feature_and_reason(
        tmp_path: Path, named: bool) -> None:
    x0, y0, x1, y1 = _moved().bounds
    bowtie = Polygon([(x0, y0), (x1, y1), (x1, y0), (x0, y1)])
    columns = {"shelf": ["Totten"]} if named else {}
    path = _gpkg(tmp_path / "bowtie.gpkg", [bowtie], **columns)
    feature = "feature fid 1 (shelf = 'Totten')" if named else "feature fid 1"
    with pytest.raises(ValueError, match=rf"--roi .*bowtie\.gpkg: {re.escape(feature)} is not a "
                                         r"valid polygon \(Self-intersection.*make_valid"):
        produce_roi(tmp_path / "release", "Totten", path)


def test_a_self_intersecting_roi_exits_2_with_one_line(tiny_weights: Path,
                                                       tmp_path: Path) -> None:
    x0, y0, x1, y1 = _moved().bounds
    path = _gpkg(tmp_path / "bowtie.gpkg", [Polygon([(x0, y0), (x1, y1), (x1, y0), (x0, y1)])])
    result = _produce(["--shelf", "Totten", "--year", "2021", "--roi", str(path)],
                      tiny_weights, tmp_path / "release")
    assert result.exit_code == 2 and "not a valid polygon" in result.output, result.output
    assert "Traceback" not in result.output


# --- finding 6: shelf names compared loosely ---------------------------------------------------

@pytest.mark.parametrize(("column", "value"), [
    ("shelf", "Larsen_B"), ("shelf", "Larsen B "), ("name", "Larsen B Ice Shelf"),
    ("shelf", "larsen-b"),
])
def test_shelf_names_in_the_column_are_compared_loosely(tmp_path: Path, column: str,
                                                        value: str) -> None:
    path = _gpkg(tmp_path / "larsen.gpkg", [roi_polygon("Larsen B")], **{column: [value]})
    assert same_outline(read_outline(path, "Larsen B"), roi_polygon("Larsen B"))


def test_loose_names_do_not_mix_shelves(tmp_path: Path) -> None:
    """"Amery" is not "Amery_front": only case, spaces, '_', '-' and "Ice Shelf" are loose."""
    path = _gpkg(tmp_path / "amery.gpkg", [roi_polygon("Amery")], shelf=["Amery Ice Shelf"])
    assert same_outline(read_outline(path, "Amery"), roi_polygon("Amery"))
    with pytest.raises(ValueError, match="no feature whose 'shelf' is 'Amery_front'"):
        read_outline(path, "Amery_front")


def test_roi_files_keeps_the_registry_lookup_patchable(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    """Tests shrink grids by patching ``producer.roi_files.roi_polygon``: the overlap rule
    uses the patched ROI too."""
    small = box(*_moved().centroid.buffer(3_000).bounds)
    monkeypatch.setattr(roi_files, "roi_polygon", lambda shelf: small)
    path = _gpkg(tmp_path / "far.gpkg", [translate(small, 500_000, 0)], shelf=["Totten"])
    with pytest.raises(ValueError, match="does not overlap the registered ROI of Totten"):
        read_outline(path, "Totten")


def test_the_same_outline_writes_the_same_geopackage_bytes(tmp_path: Path) -> None:
    """GDAL stamped last_change with the wall clock: a release cataloged twice got ROI files,
    and collection checksums, that differed though nothing had changed."""
    first, second = tmp_path / "a", tmp_path / "b"
    write_roi_geopackage(first, "Larsen B", roi_polygon("Larsen B"), "registry")
    write_roi_geopackage(second, "Larsen B", roi_polygon("Larsen B"), "registry")
    a, b = first / "Larsen B_ROI.gpkg", second / "Larsen B_ROI.gpkg"
    with sqlite3.connect(a) as db:
        [(stamp,)] = db.execute("SELECT last_change FROM gpkg_contents").fetchall()
    assert stamp == roi_files.GPKG_TIME  # not the clock, which differs between the two
    assert a.read_bytes() == b.read_bytes()
    assert read_roi(a).geometry.iloc[0].equals(roi_polygon("Larsen B"))
