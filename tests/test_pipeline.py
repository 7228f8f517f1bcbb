"""``produce`` end to end on the demo source: products, provenance, skipping, no-coverage years."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from producer import roi_files
from producer.cli import build_app
from producer.commands import produce_app
from producer.grid import Grid
from producer.pipeline import ProduceOptions, parse_years, produce
from producer.provenance import read_provenance
from producer.shelves import roi_polygon
from producer.slcoff import near_cloud
from producer.sources.demo import DemoSource, plan_summer, render_planned
from producer.sources.local import LocalFolderSource
from producer.spec import AUXILIARY_SUFFIXES, SOURCE_TAG, TYPE1, TYPE2, latest_summer
from validation.engine import validate_release

DEMO_SIZE = "128"


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _produce(args: list[str], weights: Path, out: Path, app: str = "produce"):
    base = ["--weights", str(weights), "--out", str(out), "--demo-size", DEMO_SIZE, "--no-tta",
            "--device", "cpu"]
    wide = {"COLUMNS": "250"}  # rich wraps messages at the terminal width
    if app == "produce":
        return CliRunner().invoke(produce_app(), args + base, env=wide)
    return CliRunner().invoke(build_app(), ["produce", *args, *base], env=wide)


@given(st.integers(1999, latest_summer() - 5), st.integers(0, 5))
def test_parse_years(first: int, span: int) -> None:
    assert parse_years(f"{first}") == [first]
    assert parse_years(f"{first}-{first + span}") == list(range(first, first + span + 1))
    assert parse_years(f"{first + span},{first}") == sorted({first, first + span})


@pytest.mark.parametrize("bad", ["21", "2021-2019", "2021,,2022", "2021-2022-2023", "abcd",
                                 "1998", "0999", str(latest_summer() + 1), "2020-9999"])
def test_parse_years_refuses(bad: str) -> None:
    with pytest.raises(ValueError, match="--year"):
        parse_years(bad)


def test_produce_demo_writes_a_valid_release_then_skips(tiny_weights: Path,
                                                        tmp_path: Path) -> None:
    out = tmp_path / "release"
    result = _produce(["--shelf", "Totten", "--year", "2021", "--keep-probability"],
                      tiny_weights, out)
    assert result.exit_code == 0, result.output
    folder = out / "Totten" / "2021"
    records = list(folder.glob("*" + AUXILIARY_SUFFIXES["provenance"]))
    assert len(records) == 1
    record = read_provenance(records[0])
    assert record.source == "demo" and record.demo
    assert json.loads(records[0].read_text())["demo"] is True
    assert record.segmentation.name == "tiny-random-test"
    assert len(record.segmentation.weights_sha256) == 64
    assert record.inputs_digest and record.software["icedamage"]
    assert sum(s.map_fraction for s in record.scenes) == pytest.approx(
        1.0 - record.parameters["uncovered_fraction"], abs=1e-5)
    assert [s.role for s in record.scenes].count("main") == 1
    assert all(0 < s.valid_fraction <= 1 for s in record.scenes)
    name = record.product_name()
    damage_map = folder / name.filename
    damage = folder / name.partner().filename
    for path in (damage_map, damage, folder / name.auxiliary("probability"),
                 folder / name.auxiliary("source_scene")):
        assert path.is_file(), path
    with rasterio.open(damage_map) as t1, rasterio.open(damage) as t2:
        a, b = t1.read(1), t2.read(1)
        assert t1.nodata == TYPE1.nodata and t2.nodata is None
        assert t1.shape == (int(DEMO_SIZE), int(DEMO_SIZE))
        # the maps say they are demo maps even without their provenance record
        assert t1.tags()[SOURCE_TAG] == t2.tags()[SOURCE_TAG] == "demo"
    extent = DemoSource(int(DEMO_SIZE)).layout("Totten", 2021).extent_mask
    assert ((a == TYPE1.nodata) == ~extent).mean() > 0.99  # clipped to the floating shelf
    inside = a != TYPE1.nodata
    assert np.array_equal(a[inside] == TYPE1.damage, b[inside] == TYPE2.damage)
    with rasterio.open(folder / name.auxiliary("source_scene")) as ds:
        index = ds.read(1)
        ids = json.loads(ds.tags()["scene_ids"])
    assert ids == [s.scene_id for s in record.scenes]
    for k, scene in enumerate(record.scenes):
        assert (index == k).mean() == pytest.approx(scene.map_fraction, abs=1e-5)

    report = validate_release(out)
    assert report.ok(), report.to_json()

    mtime = damage_map.stat().st_mtime_ns
    again = _produce(["--shelf", "Totten", "--year", "2021", "--keep-probability"],
                     tiny_weights, out, app="icedamage")
    assert again.exit_code == 0, again.output
    assert "skipped" in again.output and damage_map.stat().st_mtime_ns == mtime
    forced = _produce(["--shelf", "Totten", "--year", "2021", "--keep-probability", "--force"],
                      tiny_weights, out)
    assert forced.exit_code == 0 and "produced" in forced.output
    assert damage_map.stat().st_mtime_ns != mtime
    # A changed parameter is a changed input: redone, and the probability file it no longer
    # asks for is removed with the old record.
    changed = _produce(["--shelf", "Totten", "--year", "2021"], tiny_weights, out)
    assert changed.exit_code == 0 and "produced" in changed.output
    assert not (folder / name.auxiliary("probability")).exists()
    assert validate_release(out).ok()


def test_several_shelves_in_one_call(tiny_weights: Path, tmp_path: Path) -> None:
    """``--shelf "totten, dotson"``: both shelf-years are produced with one model load, in
    folders of the released names, and the release validates."""
    out = tmp_path / "release"
    result = _produce(["--shelf", "totten, dotson", "--year", "2021"], tiny_weights, out)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "Totten 2021: produced" in text and "Dotson 2021: produced" in text
    assert "2 shelf-years: 2 produced" in text  # the tally a long run ends with
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["Dotson", "Totten"]
    assert validate_release(out).ok()


def test_year_without_imagery_writes_nothing_and_fails(tiny_weights: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from producer.sources import demo

    out = tmp_path / "release"
    monkeypatch.setattr(demo, "plan_summer", lambda shelf, year: [])  # no scene that summer
    result = _produce(["--shelf", "Totten", "--year", "2019-2020"], tiny_weights, out)
    assert result.exit_code == 1
    assert "not-mapped" in result.output and "nothing was produced" in result.output
    assert not (out / "Totten").exists()
    # before Landsat 7 there is nothing to look for: refused at once
    result = _produce(["--shelf", "Totten", "--year", "1996-1997"], tiny_weights, out)
    assert result.exit_code == 2 and "no Landsat 7/8/9 summer before 1999" in " ".join(
        result.output.split())


class _CloudySource(DemoSource):
    """Demo scenes whose cloud masks cover a band across the whole window (every date)."""

    def scenes(self, shelf, year, grid, workdir):  # noqa: ANN001, ANN201 - protocol signature
        scenes = super().scenes(shelf, year, grid, workdir)
        for scene in scenes:
            with rasterio.open(scene.cloud_mask_path, "r+") as ds:
                mask = ds.read(1)
                mask[40:80, :] = 1
                ds.write(mask, 1)
        return scenes


def test_uncovered_shelf_is_not_mapped(tiny_weights: Path, tmp_path: Path) -> None:
    reports = []
    options = ProduceOptions(out=tmp_path / "release", weights=tiny_weights, tta=False,
                             device="cpu")
    summary = produce("Totten", [2021], _CloudySource(int(DEMO_SIZE)), options,
                      report=reports.append)
    assert summary.exit_code == 1 and not summary.produced_any
    assert reports[0].status == "not-mapped" and "not fully covered" in reports[0].message
    assert not (tmp_path / "release").exists()


class _DamagedYearSource(DemoSource):
    """Demo scenes, except that the 2022 summer's scene cannot be read (a truncated file)."""

    def scenes(self, shelf, year, grid, workdir):  # noqa: ANN001, ANN201 - protocol signature
        if year == 2022:
            raise rasterio.errors.RasterioIOError(f"{workdir}/scene_2022.tif: not recognized "
                                                  "as being in a supported file format")
        return super().scenes(shelf, year, grid, workdir)


def test_a_damaged_year_fails_alone(tiny_weights: Path, tmp_path: Path) -> None:
    """A year whose input cannot be read is reported as failed; the years after it still run."""
    reports = []
    options = ProduceOptions(out=tmp_path / "release", weights=tiny_weights, tta=False,
                             device="cpu")
    summary = produce("Totten", [2021, 2022, 2019], _DamagedYearSource(int(DEMO_SIZE)),
                      options, report=reports.append)
    assert [(r.year, r.status) for r in reports] == [
        (2021, "produced"), (2022, "failed"), (2019, "produced")]
    assert "scene_2022.tif" in reports[1].message
    assert summary.exit_code == 1 and summary.tally() == "2 produced, 1 failed"


def test_merged_year_uses_several_scenes(tiny_weights: Path, tmp_path: Path) -> None:
    """A summer without a full clear scene is merged from several, main scene first."""
    year = next(y for y in range(2013, 2030)
                if all(p.conditions.cloud_cover > 0 or p.conditions.footprint_cut
                       for p in plan_summer("Totten", y)))
    options = ProduceOptions(out=tmp_path / "release", weights=tiny_weights, tta=False,
                             device="cpu", source_index=True)
    summary = produce("Totten", [year], DemoSource(int(DEMO_SIZE)), options)
    result = summary.results[0]
    if result.status == "not-mapped":
        pytest.skip(f"demo summer {year} is not coverable: {result.message}")
    record = read_provenance(result.provenance)
    assert len(record.scenes) >= 2 and not record.parameters["single_scene"]
    main = record.main_scene
    fills = [s for s in record.scenes if s.role == "fill"]
    assert main.map_fraction > 0 and all(s.map_fraction > 0 for s in fills)


def test_slc_off_year_needs_diffgf_or_explicit_fill(tiny_weights: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """An SLC-off summer merged from several scenes (demo Holmes 2009: Totten 2005, merged
    too, is not coverable on the 128 px window once gap pixels beside clouds count as cloudy)."""
    from producer.restoration import api

    monkeypatch.setattr(api, "DEMO_WEIGHTS", tmp_path / "no-demo-diffgf.safetensors")
    out = tmp_path / "release"
    refused = _produce(["--shelf", "Holmes", "--year", "2009"], tiny_weights, out)
    assert refused.exit_code == 2  # refused before any work (check_request), not a failed year
    assert "--diffgf" in refused.output and "FillNodata" in refused.output
    assert not list(out.rglob("*.tif"))
    filled = _produce(["--shelf", "Holmes", "--year", "2009", "--restoration", "FillNodata",
                       "--source-index"], tiny_weights, out)
    assert filled.exit_code == 0, filled.output
    (tif,) = out.glob("Holmes/2009/*_damage_map.tif")
    assert tif.name == "LE07_Holmes_2009_slc_off_FillNodata_damage_map.tif"
    record = read_provenance(next(out.glob("Holmes/2009/*_provenance.json")))
    assert record.restoration == "FillNodata" and all(s.slc_off for s in record.scenes)
    assert len(record.scenes) > 1 and not record.parameters["single_scene"]
    run = record.restoration_run
    assert run is not None and record.restoration_model is None
    assert {k: v for k, v in run.items() if k != "scenes"} == {
        "method": "FillNodata", "max_search_distance_px": 100.0, "smoothing_iterations": 0,
        "device": "cpu"}
    assert {s.scene_id for s in record.scenes} <= set(run["scenes"])
    assert validate_release(out).ok()

    # How much of the map rests on restored gap pixels: recounted from the source-scene index
    # and the demo scenes' own gap masks.
    with rasterio.open(next(out.glob("Holmes/2009/*_source_scene.tif"))) as ds:
        index = ds.read(1)
    with rasterio.open(tif) as ds:
        valid = ds.read(1) != TYPE1.nodata
    rendered = {p.scene_id: render_planned("Holmes", 2009, p, int(DEMO_SIZE))
                for p in plan_summer("Holmes", 2009)}
    restored = np.zeros(index.shape, bool)
    for k, scene in enumerate(record.scenes):
        from_gaps = (index == k) & rendered[scene.scene_id].gaps
        # no pixel of the type 1 map comes from a gap a cloud may lie across
        assert not (from_gaps & valid & near_cloud(rendered[scene.scene_id].cloud)).any()
        assert scene.restored_fraction == pytest.approx(from_gaps.sum() / (index != 255).sum(),
                                                        abs=1e-6)
        gaps = rendered[scene.scene_id].gaps
        assert run["scenes"][scene.scene_id] == {
            "gap_pixels": int(gaps.sum()),
            "gap_fraction": round(float(gaps.sum() / rendered[scene.scene_id].footprint.sum()),
                                  6)}
        restored |= from_gaps
    assert 0.05 < record.parameters["restored_fraction"] < 0.4
    assert record.parameters["restored_extent_fraction"] == pytest.approx(
        (restored & valid).sum() / valid.sum(), abs=1e-6)


class _NoFetchSource(DemoSource):
    """A demo source that must not be asked for scenes (the request should stop before)."""

    def scenes(self, shelf, year, grid, workdir):  # noqa: ANN001, ANN201 - as DemoSource
        raise AssertionError(f"scenes of {shelf} {year} were fetched")


def test_missing_diffgf_weights_are_refused_before_any_scene_is_fetched(
        tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A year that may be SLC-off, restored with DiffGF, without weights: the run stops at once
    with the restoration message, not after fetching scenes and computing masks; years that
    cannot be SLC-off (and FillNodata) need no DiffGF weights."""
    from producer.pipeline import ProduceError, check_request
    from producer.restoration import api

    monkeypatch.setattr(api, "DEMO_WEIGHTS", tmp_path / "no-demo-diffgf.safetensors")
    source = _NoFetchSource(int(DEMO_SIZE))
    options = ProduceOptions(out=tmp_path / "r", weights=tiny_weights, device="cpu",
                             diffgf=tmp_path / "missing.safetensors")
    says = "missing.safetensors do not exist: Landsat 7 SLC-off imagery needs a restoration"
    with pytest.raises(ProduceError, match=says):
        produce("Pine Island", [2021, 2008], source, options)
    assert not (tmp_path / "r").exists()
    assert check_request("Totten", source, options, [2021, 2022]) == "Totten"
    fill = ProduceOptions(out=tmp_path / "r", weights=tiny_weights, restoration="FillNodata")
    assert check_request("Totten", source, fill, [2005]) == "Totten"
    demo = ProduceOptions(out=tmp_path / "r", weights=tiny_weights)  # the demo DiffGF, absent
    with pytest.raises(ProduceError, match="no DiffGF weights given"):
        check_request("Totten", source, demo, [2005])


def test_diffgf_runs_on_the_run_device_and_its_settings_are_recorded(
        tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--device`` reaches DiffGF (resolved as for segmentation); the provenance records the
    weights, seed, DDIM steps, tile size and overlap, the device and each scene's gaps."""
    from producer.restoration import api
    from producer.restoration.diffgf import build_diffgf, save_diffgf
    from tests.tiny_models import TINY_UNET, TINY_VAE

    diffgf = save_diffgf(build_diffgf(TINY_VAE, TINY_UNET, seed=0),
                         tmp_path / "tiny-diffgf.safetensors")
    devices: list[object] = []
    real = api.restore_scene_file

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - passes everything on
        devices.append(kwargs.get("device"))
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "restore_scene_file", spy)
    monkeypatch.setattr("producer.restoration.restore_scene_file", spy)
    out = tmp_path / "release"
    result = _produce(["--shelf", "Holmes", "--year", "2009", "--diffgf", str(diffgf)],
                      tiny_weights, out)
    assert result.exit_code == 0, result.output
    record = read_provenance(next(out.glob("Holmes/2009/*_provenance.json")))
    assert devices and set(devices) == {"cpu"}
    assert record.restoration == "DiffGF"
    assert record.restoration_model.weights_file == "tiny-diffgf.safetensors"
    run = record.restoration_run
    assert {k: v for k, v in run.items() if k != "scenes"} == {
        "method": "DiffGF", "seed": 0, "ddim_steps": 20, "ddim_eta": 0.0, "tile_px": 256,
        "overlap_px": 64, "device": "cpu"}
    assert len(run["scenes"]) == len(devices)
    assert all(facts["tiles"] == 1 and facts["gap_pixels"] > 0
               for facts in run["scenes"].values())


def test_records_without_a_restoration_run_stay_readable(tiny_weights: Path,
                                                         tmp_path: Path) -> None:
    """Records written before ``restoration_run`` existed read as None."""
    from producer.provenance import Provenance

    out = tmp_path / "release"
    assert _produce(["--shelf", "Totten", "--year", "2021"], tiny_weights, out).exit_code == 0
    path = next(out.glob("Totten/2021/*_provenance.json"))
    data = json.loads(path.read_text())
    assert data["restoration_run"] is None  # nothing restored in 2021
    del data["restoration_run"]
    assert Provenance.from_json(json.dumps(data)).restoration_run is None


def test_gaps_of_a_scene_clipped_to_the_roi_stay_inside_it(tmp_path: Path) -> None:
    """A complete Landsat 7 scene of 2005 clipped to a registered ROI (as Earth Engine gives
    it) has no gap: the convex hull of its data reaches past the ROI's curved poleward edge by
    slivers narrower than a gap, which are outside the ROI, not gaps, and are not restored."""
    import datetime as dt

    from producer.extent import ShelfArea, roi_mask
    from producer.pipeline import _no_progress, restore_scenes, scene_masks
    from producer.slcoff import detect_gaps
    from producer.sources.base import Scene

    roi = roi_polygon("Holmes")
    grid = Grid.covering(roi, resolution=480.0)  # a coarse grid keeps the test quick
    inside = roi_mask(roi, grid)
    rgb = np.repeat(np.where(inside, 200, 0).astype(np.uint8)[..., None], 3, axis=2)
    assert (detect_gaps(rgb) & ~inside).sum() > 100  # the hull alone finds false gaps
    path = tmp_path / "LE07_Holmes_20051205.tif"
    with rasterio.open(path, "w", driver="GTiff", width=grid.width, height=grid.height,
                       count=3, dtype="uint8", crs=grid.crs, transform=grid.transform) as ds:
        ds.write(np.moveaxis(rgb, -1, 0))
    scene = Scene("LE07_Holmes_20051205", "LE07", dt.date(2005, 12, 5), path, 1.0)
    masks = scene_masks(scene, 2005, grid, tmp_path, ShelfArea(roi, roi, grid))
    assert masks.slc_off and not masks.gap_mask().any()
    usable, present = masks.rows(0, grid.height)
    assert np.array_equal(present, inside) and np.array_equal(usable, inside)
    restored = restore_scenes([masks], ProduceOptions(restoration="FillNodata"), None,
                              tmp_path, _no_progress)
    assert restored.run["scenes"][scene.scene_id]["gap_pixels"] == 0
    with rasterio.open(restored.images[scene.scene_id]) as ds:
        assert np.array_equal(np.moveaxis(ds.read(), 0, -1), rgb)


def test_missing_demo_weights_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    import producer.pipeline as pipeline

    monkeypatch.setattr(pipeline, "DEMO_WEIGHTS", tmp_path / "absent.safetensors")
    result = CliRunner().invoke(produce_app(), ["--shelf", "Totten", "--year", "2021",
                                                "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    text = " ".join(result.output.split())  # rich wraps lines at the terminal width
    assert "--weights" in text and "random weights are never used" in text
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("args", "says"), [
    (["--shelf", "Thwaits"], "shelf 'Thwaits' is not registered (did you mean 'Thwaites'?)"),
    (["--shelf", "Ross"], "shelf 'Ross' is not registered; valid names: 'Amery'"),
    (["--shelf", "Totten", "--restoration", "NSPI"], "--restoration 'NSPI': use DiffGF or"),
    (["--shelf", "Totten", "--extent", "nope.gpkg"], "--extent nope.gpkg: no such file"),
])
def test_a_request_that_cannot_run_is_one_line_before_any_work(
        tiny_weights: Path, tmp_path: Path, args: list[str], says: str) -> None:
    """A mistyped shelf (with the name it probably meant) or restoration is refused with exit
    2 before the progress bars are drawn, and nothing is written."""
    out = tmp_path / "r"
    result = _produce([*args, "--year", "2021"], tiny_weights, out)
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert text.startswith("error: ") and says in text
    assert "segmentation" not in text  # no stage bars
    assert not out.exists()


def test_impossible_device_or_batch_is_refused_before_any_work(tiny_weights: Path,
                                                                tmp_path: Path) -> None:
    """--device cuda without a CUDA device, or --batch-size 0, stop the run at once (every
    shelf-year would fail the same way, the first with a traceback)."""
    from producer.pipeline import ProduceError, check_request

    out = tmp_path / "r"
    result = _produce(["--shelf", "Totten", "--year", "2021", "--batch-size", "0"],
                      tiny_weights, out)
    assert result.exit_code == 2 and "--batch-size" in result.output and not out.exists()
    if not torch.cuda.is_available():
        options = ProduceOptions(out=out, weights=tiny_weights, device="cuda")
        with pytest.raises(ProduceError, match="--device cuda: torch .* sees no CUDA device"):
            check_request("Totten", DemoSource(int(DEMO_SIZE)), options)


def test_shelf_names_are_typed_loosely_and_written_as_released(tiny_weights: Path) -> None:
    from producer.pipeline import check_request

    options = ProduceOptions(out=Path("unused"), weights=tiny_weights)
    for typed in ("pine island", "Pine_Island", "PINE-ISLAND"):
        assert check_request(typed, DemoSource(), options) == "Pine Island"


def test_compile_without_a_cpp_compiler_is_a_clear_error(tiny_weights: Path, tmp_path: Path,
                                                         monkeypatch) -> None:
    """``--compile`` on the CPU needs a C++ compiler: said before any work, nothing written."""
    from torch._inductor.cpp_builder import cpp_compiler_search

    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no g++ / clang++ to find
    monkeypatch.delenv("CXX", raising=False)
    cpp_compiler_search.cache_clear()  # Inductor remembers the compiler it found earlier
    out = tmp_path / "r"
    try:
        result = _produce(["--shelf", "Totten", "--year", "2021", "--compile"], tiny_weights, out)
    finally:
        cpp_compiler_search.cache_clear()
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "needs a C++ compiler" in text and "without --compile" in text
    assert not out.exists()


def test_extent_file_clips_type1_and_is_recorded(tiny_weights: Path, tmp_path: Path) -> None:
    import geopandas as gpd
    from shapely.geometry import box

    from producer.shelves import roi_polygon

    grid = DemoSource(int(DEMO_SIZE)).grid("Totten", roi_polygon("Totten"))
    left, bottom, right, top = grid.bounds
    half = box(left, bottom, (left + right) / 2, top)
    path = tmp_path / "extents.gpkg"
    gpd.GeoDataFrame({"shelf": ["Totten"], "year": [2021]}, geometry=[half],
                     crs="EPSG:3031").to_file(path)
    out = tmp_path / "release"
    result = _produce(["--shelf", "Totten", "--year", "2021", "--extent", str(path)],
                      tiny_weights, out)
    assert result.exit_code == 0, result.output
    (tif,) = out.glob("Totten/2021/*_damage_map.tif")
    with rasterio.open(tif) as ds:
        pixels = ds.read(1)
    cols = int(DEMO_SIZE) // 2
    assert (pixels[:, cols:] == TYPE1.nodata).all() and (pixels[:, :cols] != TYPE1.nodata).all()
    record = read_provenance(next(out.glob("Totten/2021/*_provenance.json")))
    assert record.parameters["extent"] == "file:extents.gpkg"
    missing = _produce(["--shelf", "Totten", "--year", "2020", "--extent", str(path)],
                       tiny_weights, out)
    assert missing.exit_code == 1 and "no row with shelf == 'Totten' and year == 2020" in (
        missing.output)
    assert not (out / "Totten" / "2020").exists()


class _WindowSource(DemoSource):
    """Demo scenes on the demo window of the registered Totten ROI, whatever ROI it is given."""

    def grid(self, shelf, roi):  # noqa: ANN001, ANN201 - protocol signature
        from producer.shelves import roi_polygon

        return super().grid(shelf, roi_polygon(shelf))


def test_extent_beyond_the_roi_is_refused_past_the_tolerance(
        tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An extent file drawn past the ROI: nothing is imaged there, so the shelf region is not
    fully covered. Up to MAX_OUTSIDE_ROI_SHARE (1 %) of its area is GIS imprecision: that part
    is NoData in the type 1 map (never "background") and the provenance says how much it was;
    beyond it the year is not mapped, and the message names the extent and the share."""
    import geopandas as gpd
    from shapely.geometry import box


    source = _WindowSource(int(DEMO_SIZE))
    grid = source.grid("Totten", None)
    left, bottom, right, top = grid.bounds
    size = int(DEMO_SIZE)
    path = tmp_path / "extents.gpkg"
    gpd.GeoDataFrame({"shelf": ["Totten"] * 3, "year": [2021, 2022, 2020]},
                     geometry=[box(*grid.bounds)] * 3, crs="EPSG:3031").to_file(path)
    options = ProduceOptions(out=tmp_path / "release", weights=tiny_weights, tta=False,
                             device="cpu", extent_file=path)

    def roi_columns(cols: int) -> None:
        monkeypatch.setattr(roi_files, "roi_polygon",
                            lambda shelf: box(left, bottom, left + 30.0 * cols, top))

    roi_columns(size - 1)  # 1 of 128 columns outside: 0.8 %, tolerated
    (result,) = produce("Totten", [2021], source, options).results
    assert result.status == "produced", result.message
    assert "0.8% of the effective extent lies outside the ROI" in result.message
    with rasterio.open(result.products.damage_map) as ds:
        pixels = ds.read(1)
    assert (pixels[:, -1] == TYPE1.nodata).all() and (pixels[:, :-1] != TYPE1.nodata).all()
    record = read_provenance(result.provenance)
    assert record.parameters["extent_outside_roi_fraction"] == pytest.approx(1 / size, abs=1e-6)

    roi_columns(size - 2)  # 1.6 %: the shelf region is not covered, no map
    (result,) = produce("Totten", [2022], source, options).results
    assert result.status == "not-mapped"
    assert ("1.6% of the effective extent's area (file:extents.gpkg) lies outside the ROI of "
            "Totten") in result.message and "at most 1% may lie outside" in result.message
    roi_columns(3 * size // 4)  # 25 %
    (result,) = produce("Totten", [2022], source, options).results
    assert result.status == "not-mapped" and "25.0% of the effective extent's" in result.message
    assert not (tmp_path / "release" / "Totten" / "2022").exists()

    monkeypatch.setattr(roi_files, "roi_polygon",  # an extent wholly outside the ROI
                        lambda shelf: box(left - 3000.0, bottom, left - 1500.0, top))
    (result,) = produce("Totten", [2020], source, options).results
    assert result.status == "failed" and "does not overlap the ROI" in result.message
    assert not (tmp_path / "release" / "Totten" / "2020").exists()


class _EdgeSource:
    """Review case r4 on ``small_window``: two LC08 scenes imaging the ROI (its first
    ``EDGE_ROI_COLS`` columns) except its first 4 columns, both cloudy in the bottom 8 rows,
    and an extent well inside the imaged, clear part."""

    name = "edge-test"

    def grid(self, shelf: str, roi: object) -> Grid:
        """The small window, whatever the ROI."""
        return small_window()

    def extent(self, shelf: str, year: int, grid: Grid) -> object:
        """Rows 10-40, columns 10-40 of the window."""
        from shapely.geometry import box

        x0, _, _, y1 = grid.bounds
        return box(x0 + 300, y1 - 1200, x0 + 1200, y1 - 300)

    def scenes(self, shelf: str, year: int, grid: Grid, workdir: Path) -> list:
        """The two scenes and their cloud masks, written to ``workdir``."""
        import datetime as dt

        from producer.sources.base import Scene

        roi, cloud = _edge_masks()
        data = roi.copy()
        data[:, :4] = False
        out = []
        for k, day in enumerate((dt.date(year, 12, 1), dt.date(year, 12, 20))):
            image = small_scene(Path(workdir) / f"S{k}.tif", 120 + 40 * k)
            with rasterio.open(image, "r+") as ds:
                ds.write(np.where(data, ds.read(), 0).astype(np.uint8))
            mask = small_scene(Path(workdir) / f"S{k}_cloud.tif", 1)
            with rasterio.open(mask, "r+") as ds:
                ds.write(np.stack([cloud & data] * 3).astype(np.uint8))
            out.append(Scene(f"LC08_T_{day:%Y%m%d}", "LC08", day, image, 0.5,
                             cloud_mask_path=mask))
        return out


EDGE_ROI_COLS = 48


def _edge_masks() -> tuple[np.ndarray, np.ndarray]:
    """(ROI, cloud) of ``_EdgeSource`` on ``small_window``."""
    roi = np.zeros(small_window().shape, bool)
    roi[:, :EDGE_ROI_COLS] = True
    cloud = np.zeros_like(roi)
    cloud[-8:] = True
    return roi, cloud


def test_type2_zeros_and_the_source_index_off_the_imagery(
        tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review case r4: type 2 holds 0 (no NoData) outside the ROI and at ROI pixels no scene
    imaged; the source index tells them apart (255 outside, 254 not imaged), and every
    fraction of the provenance is a share of the ROI, whose pixel count it records."""
    from shapely.geometry import box

    from producer.provenance import Provenance
    from producer.spec import SOURCE_SCENE_NOT_IMAGED

    grid = small_window()
    left, bottom, _, top = grid.bounds
    monkeypatch.setattr(roi_files, "roi_polygon",
                        lambda shelf: box(left, bottom, left + 30.0 * EDGE_ROI_COLS, top))
    options = ProduceOptions(out=tmp_path / "release", weights=tiny_weights, tta=False,
                             device="cpu")
    (result,) = produce("Totten", [2021], _EdgeSource(), options).results
    assert result.status == "produced", result.message
    folder = result.products.damage.parent
    with rasterio.open(result.products.damage) as t2:
        assert t2.nodata is None
        damage = t2.read(1)
    with rasterio.open(next(folder.glob("*_source_scene.tif"))) as ds:
        assert ds.nodata == 255
        index = ds.read(1)
    roi, cloud = _edge_masks()
    not_imaged = roi.copy()
    not_imaged[:, 4:] = False
    assert (damage[~roi] == 0).all() and (damage[not_imaged] == 0).all()
    assert (index[~roi] == 255).all() and (index[not_imaged] == SOURCE_SCENE_NOT_IMAGED).all()
    assert set(np.unique(index[roi & ~not_imaged])) <= {0, 1}

    record = read_provenance(result.provenance)
    params, roi_px = record.parameters, int(roi.sum())
    assert record.fraction_base == "roi" and params["roi_pixels"] == roi_px
    assert params["uncovered_fraction"] == pytest.approx(not_imaged.sum() / roi_px, abs=1e-6)
    assert params["extent_pixels"] == 30 * 30
    assert params["extent_fraction"] == pytest.approx(30 * 30 / roi_px, abs=1e-6)
    cloudy = (cloud & roi & ~not_imaged).sum() / roi_px
    assert params["cloudy_fill_fraction"] == pytest.approx(cloudy, abs=1e-6)
    for k, scene in enumerate(record.scenes):
        assert scene.map_fraction == pytest.approx((index == k).sum() / roi_px, abs=1e-6)
        assert scene.cloud_fraction == pytest.approx(cloudy, abs=1e-6)
        assert scene.valid_fraction + scene.cloud_fraction == pytest.approx(
            1 - not_imaged.sum() / roi_px, abs=1e-5)

    # a record written before the ROI became every fraction's base still reads, as such
    old = json.loads(result.provenance.read_text())
    old["schema_version"] = "1.0"
    for key in ("roi_pixels", "extent_pixels"):
        del old["parameters"][key]
    legacy = Provenance.from_json(json.dumps(old))
    assert legacy.fraction_base == "grid" and legacy.scenes == record.scenes


def test_version_names_the_package_and_the_libraries_in_provenance() -> None:
    """``--version`` on both console scripts: what a bug report and a provenance record need."""
    import importlib.metadata

    expected = f"icedamage {importlib.metadata.version('icedamage')}"
    for app, args in ((produce_app(), ["--version"]), (build_app(), ["--version"]),
                      (build_app("produce"), ["produce", "--version"])):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert lines[0] == expected
        assert f"torch {torch.__version__}" in lines[1] and "gdal " in lines[1]


# ---------------------------------------------------------------------------------------------
# local:DIR on a small window of Totten (what a year that cannot be mapped says)
# ---------------------------------------------------------------------------------------------


def small_window() -> Grid:
    """A 64 × 64 px grid at the centre of Totten's ROI: segmentation on it stays fast."""
    centre = roi_polygon("Totten").centroid
    x0, y0 = round(centre.x / 30) * 30 - 32 * 30, round(centre.y / 30) * 30 - 32 * 30
    return Grid.from_bounds(x0, y0, x0 + 64 * 30, y0 + 64 * 30)


class SmallLocalSource(LocalFolderSource):
    """The local:DIR source delivering its scenes on ``small_window``."""

    def grid(self, shelf: str, roi: object) -> Grid:
        """The window (the ROI is remembered for the footprint test, as the base does)."""
        super().grid(shelf, roi)
        return small_window()


def small_scene(path: Path, value: int, fourth: np.ndarray | None = None) -> Path:
    """A textured full-coverage UInt8 scene on ``small_window`` (a 4th band if given)."""
    grid = small_window()
    rng = np.random.default_rng(value)
    rgb = np.clip(rng.normal(value, 8, (3, *grid.shape)), 1, 255).astype(np.uint8)
    data = rgb if fourth is None else np.concatenate([rgb, fourth[None].astype(np.uint8)])
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=grid.width, height=grid.height,
                       count=len(data), dtype="uint8", crs=grid.crs,
                       transform=grid.transform) as dst:
        dst.write(data)
    return path


def test_local_year_without_scenes_says_why(tiny_weights: Path, tmp_path: Path) -> None:
    """Files left out are listed with the reason, the summer's months and the neighbours."""
    folder = tmp_path / "scenes"
    small_scene(folder / "scene.tif", 100)
    (folder / "scene.tif.json").write_text(json.dumps(
        {"sensor": "LC08", "date": "2021-12-05", "shelf": "Toten"}))
    small_scene(folder / "LE07_L1TP_101107_20211205_20211231_02_T1_refl.tif", 100)
    small_scene(folder / "LC08_Totten_composite_2021-01-15_uint8.tif", 100)
    options = ProduceOptions(out=tmp_path / "release", weights=tiny_weights, tta=False,
                             device="cpu")
    (result,) = produce("Totten", [2021], SmallLocalSource(folder, progress=False),
                        options).results
    assert result.status == "not-mapped"
    message = result.message
    assert "no scene of Totten in the summer 2021 (November 2021 – March 2022)" in message
    assert "shelf 'Toten' of the sidecar field 'shelf' is not a registered shelf (did you " \
           "mean 'Totten'?)" in message
    assert "LE07_L1TP_101107_20211205_20211231_02_T1_refl.tif: LE07 is not used for summer " \
           "2021" in message
    assert "dated in the summer 2020 (November 2020 – March 2021): --year 2020" in message
    assert not (tmp_path / "release").exists()


def test_local_all_cloud_4th_band_is_named_when_not_covered(tiny_weights: Path,
                                                            tmp_path: Path) -> None:
    folder = tmp_path / "scenes"
    path = small_scene(folder / "LC08_Totten_composite_2021-12-05_uint8.tif", 100,
                       np.ones(small_window().shape))
    options = ProduceOptions(out=tmp_path / "release", weights=tiny_weights, tta=False,
                             device="cpu")
    (result,) = produce("Totten", [2021], SmallLocalSource(folder, progress=False),
                        options).results
    assert result.status == "not-mapped" and "not fully covered" in result.message
    assert f"{path}: band 4 flags 100.0% of the file's data pixels" in result.message


def test_velocity_guides_the_main_scene_of_a_merged_year(tiny_weights: Path,
                                                         tmp_path: Path) -> None:
    """Ice flowing fast only where a fill scene imaged makes that scene the main one, the
    velocity product enters the record and the digest, and a re-run skips (paper 2.4.1)."""
    year = next(y for y in range(2013, 2030)
                if all(p.conditions.cloud_cover > 0 or p.conditions.footprint_cut
                       for p in plan_summer("Totten", y)))
    out = tmp_path / "release"
    plain = _produce(["--shelf", "Totten", "--year", str(year)], tiny_weights, out)
    assert plain.exit_code == 0, plain.output
    record_path = next(out.glob(f"Totten/{year}/*_provenance.json"))
    before = read_provenance(record_path)
    if before.parameters["single_scene"]:
        pytest.skip(f"demo summer {year} has a full-coverage scene")
    with rasterio.open(next(out.glob(f"Totten/{year}/*_source_scene.tif"))) as ds:
        index, profile = ds.read(1), ds.profile
        scene_ids = json.loads(ds.tags()["scene_ids"])
    with rasterio.open(next(out.glob(f"Totten/{year}/*_damage_map.tif"))) as ds:
        extent = ds.read(1) != 255
    fill_id = next(s.scene_id for s in before.scenes if s.role == "fill")
    fast = extent & (index == scene_ids.index(fill_id))
    assert fast.any()
    speed = np.where(fast, 2000.0, 5.0).astype("float32")
    velocity = tmp_path / "speed.tif"
    profile.update(dtype="float32", nodata=None, count=1, driver="GTiff")
    for key in ("blockxsize", "blockysize", "tiled", "compress", "interleave"):
        profile.pop(key, None)
    with rasterio.open(velocity, "w", **profile) as ds:
        ds.write(speed, 1)

    guided = _produce(["--shelf", "Totten", "--year", str(year), "--velocity", str(velocity)],
                      tiny_weights, out)
    assert guided.exit_code == 0 and "produced" in guided.output, guided.output
    after = read_provenance(next(out.glob(f"Totten/{year}/*_provenance.json")))
    assert after.main_scene.scene_id != before.main_scene.scene_id
    assert after.parameters["velocity"] == "speed.tif"
    assert after.parameters["velocity_sha256"] and after.inputs_digest != before.inputs_digest
    assert after.parameters["main_scene_flow_fraction"] > 0.5
    assert validate_release(out).ok()
    again = _produce(["--shelf", "Totten", "--year", str(year), "--velocity", str(velocity)],
                     tiny_weights, out)
    assert again.exit_code == 0 and "skipped" in again.output

    elsewhere = tmp_path / "elsewhere.tif"
    t = profile["transform"]
    profile.update(transform=Affine(t.a, t.b, t.c - 1e6, t.d, t.e, t.f))  # 1000 km away
    with rasterio.open(elsewhere, "w", **profile) as ds:
        ds.write(speed, 1)
    off = _produce(["--shelf", "Totten", "--year", str(year), "--velocity", str(elsewhere)],
                   tiny_weights, out)
    assert off.exit_code == 1 and "no speed above 0 over the shelf region" in off.output
    bad = _produce(["--shelf", "Totten", "--year", str(year), "--velocity",
                    str(tmp_path / "none.tif")], tiny_weights, out)
    assert bad.exit_code == 2 and "none.tif: no such file" in " ".join(bad.output.split())


def test_velocity_does_not_concern_a_summer_with_a_full_coverage_scene(
        tiny_weights: Path, tmp_path: Path) -> None:
    """A full-coverage summer's main scene is the map whatever the ice does: a velocity
    product (even of another region) neither fails it nor redoes it."""
    out = tmp_path / "release"
    year = 2013
    first = _produce(["--shelf", "Totten", "--year", str(year)], tiny_weights, out)
    assert first.exit_code == 0, first.output
    record = read_provenance(next(out.glob(f"Totten/{year}/*_provenance.json")))
    if not record.parameters["single_scene"]:
        pytest.skip(f"demo summer {year} is merged")
    assert record.parameters["short_axis_padding"] == "centred"  # a 128 px demo window
    far = tmp_path / "far.tif"
    with rasterio.open(far, "w", driver="GTiff", width=4, height=4, count=1, dtype="float32",
                       crs="EPSG:3031", transform=Affine(450.0, 0, 0, 0, -450.0, 0)) as ds:
        ds.write(np.full((1, 4, 4), 500.0, "float32"))
    again = _produce(["--shelf", "Totten", "--year", str(year), "--velocity", str(far)],
                     tiny_weights, out)
    assert again.exit_code == 0 and "skipped" in again.output, again.output
    forced = _produce(["--shelf", "Totten", "--year", str(year), "--velocity", str(far),
                       "--force"], tiny_weights, out)
    assert forced.exit_code == 0 and "produced" in forced.output, forced.output
    redone = read_provenance(next(out.glob(f"Totten/{year}/*_provenance.json")))
    assert "velocity_sha256" not in redone.parameters and "velocity" not in redone.parameters
    assert redone.inputs_digest == record.inputs_digest


def test_single_scene_records_older_than_comparisons_count_as_full_coverage_for_velocity(
        ) -> None:
    from producer.pipeline import _recorded_full_coverage
    from tests.release_factory import ShelfYear, fixture_provenance

    legacy = fixture_provenance(ShelfYear("Totten", 2021, ("LC08",)))
    legacy.parameters.clear()
    legacy.parameters["single_scene"] = True  # no full_coverage_scenes: before comparisons
    assert _recorded_full_coverage(legacy) is None  # how many is unknown (compare-scenes)
    assert _recorded_full_coverage(legacy, velocity=True) == 1  # at least one: not merged
    legacy.parameters["single_scene"] = False
    assert _recorded_full_coverage(legacy, velocity=True) == 0


def test_produce_maps_the_releases_own_roi_or_the_one_given(tiny_weights: Path,
                                                            tmp_path: Path) -> None:
    """``--roi FILE`` (e.g. the official outline) is mapped and written into the release; the
    release's own ROI GeoPackage is mapped after that; another outline is refused; the
    registry's ROI written back by the catalog changes nothing."""
    import geopandas as gpd
    from shapely.affinity import translate

    from catalog.build import catalog_release
    from catalog.gpkg import read_roi
    from catalog.uncertainty import PAPER_FACTORS

    args = ["--shelf", "Totten", "--year", "2021"]
    default = tmp_path / "default"
    assert _produce(args, tiny_weights, default).exit_code == 0
    catalog_release(default, PAPER_FACTORS)  # writes the registry's ROI into the release
    assert "skipped" in _produce(args, tiny_weights, default).output

    moved = translate(roi_polygon("Totten"), 30_000, -15_000)
    mine = tmp_path / "my_roi.gpkg"
    gpd.GeoDataFrame({"shelf": ["Totten"]}, geometry=[moved], crs="EPSG:3031").to_file(mine)
    refused = _produce([*args, "--roi", str(mine)], tiny_weights, default)
    assert refused.exit_code == 2 and "with another outline of Totten" in " ".join(
        refused.output.split())

    out = tmp_path / "release"
    made = _produce([*args, "--roi", str(mine)], tiny_weights, out)
    assert made.exit_code == 0 and "produced" in made.output, made.output
    kept = read_roi(out / "Totten_ROI.gpkg")
    assert kept.geometry.iloc[0].symmetric_difference(moved).area < 1.0
    record = read_provenance(next(out.glob("Totten/2021/*_provenance.json")))
    assert record.parameters["roi"] == "file:my_roi.gpkg" and record.parameters["roi_sha256"]
    with rasterio.open(next(out.glob("Totten/2021/*_damage.tif"))) as moved_map, \
            rasterio.open(next(default.glob("Totten/2021/*_damage.tif"))) as default_map:
        assert moved_map.bounds.left - default_map.bounds.left == pytest.approx(30_000, abs=60)
    catalog_release(out, PAPER_FACTORS)
    assert validate_release(out).ok()
    assert "skipped" in _produce(args, tiny_weights, out).output  # the release's own ROI
    (out / "Totten_ROI.gpkg").unlink()  # lost: a skipped year made on --roi writes it back
    assert "skipped" in _produce([*args, "--roi", str(mine)], tiny_weights, out).output
    assert read_roi(out / "Totten_ROI.gpkg").geometry.iloc[0].symmetric_difference(
        moved).area < 1.0
