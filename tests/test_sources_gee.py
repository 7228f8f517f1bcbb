"""The gee source against a fake of the Earth Engine boundary (and the real client, offline)."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import Transformer
from shapely.geometry import Polygon, box

from producer.grid import Grid
from producer.pipeline import scene_masks
from producer.shelves import SHELVES, roi_polygon
from producer.sources.errors import CredentialsError, SourceError
from producer.sources.gee import (
    EE_MAX_REQUEST_BYTES,
    DailyComposite,
    EarthEngineSource,
    check_tile_size,
    ee_geometry,
    rank,
    tile_windows,
)
from producer.sources.local import LocalFolderSource
from producer.spec import SENSORS
from tests.fake_ee import FakeEE, FakeImage, cloud_pattern, pattern

LC08_T1, LC08_T2 = SENSORS["LC08"].ee_collections
LC09_T1, LC09_T2 = SENSORS["LC09"].ee_collections
LE07_T1, LE07_T2 = SENSORS["LE07"].ee_collections

# A small ROI near Totten (EPSG:3031): a block with a spike, so some top tiles lie outside it.
X0, Y0 = 2_250_000.0, -1_050_000.0
ROI = Polygon([(X0, Y0), (X0 + 3000, Y0), (X0 + 3000, Y0 + 1050), (X0 + 1650, Y0 + 1050),
               (X0 + 1500, Y0 + 2100), (X0 + 1350, Y0 + 1050), (X0, Y0 + 1050)])
TILE = 32  # small tiles so the 100 × 70 px grid needs 12 of them, with ragged edges


def _image(collection: str, pid: str, when: str, cloud: float = 10.0, clear: float = 1.0,
           in_roi: bool = True) -> FakeImage:
    return FakeImage(collection, pid, dt.datetime.fromisoformat(when), cloud, clear, in_roi)


def catalog() -> list[FakeImage]:
    """Fake Landsat images around the 2021 summer (1 Nov 2021 - 31 Mar 2022)."""
    return [
        _image(LC08_T1, "LC08_L1GT_089107_20211205_20211215_02_T1", "2021-12-05T01:20", clear=0.9),
        _image(LC08_T1, "LC08_L1GT_089108_20211205_20211215_02_T1", "2021-12-05T01:21", clear=0.5),
        _image(LC08_T2, "LC08_L1GT_090107_20220110_20220120_02_T2", "2022-01-10T01:30", 30, 0.7),
        _image(LC08_T1, "LC08_L1GT_090107_20220201_20220210_02_T1", "2022-02-01T01:30", 85, 1.0),
        _image(LC08_T1, "LC08_L1GT_090107_20220331_20220410_02_T1", "2022-03-31T23:59", 5, 0.2),
        _image(LC08_T1, "LC08_L1GT_090107_20220401_20220410_02_T1", "2022-04-01T00:00", 5, 1.0),
        _image(LC08_T1, "LC08_L1GT_090107_20211031_20211110_02_T1", "2021-10-31T23:59", 5, 1.0),
        _image(LC08_T1, "LC08_L1GT_120107_20211206_20211216_02_T1", "2021-12-06T01:00", 5, 1.0,
               in_roi=False),
        _image(LC09_T1, "LC09_L1GT_089107_20211220_20211221_02_T1", "2021-12-20T01:20", clear=0.95),
        _image(LC09_T2, "LC09_L1GT_089107_20220115_20220116_02_T2", "2022-01-15T01:20", clear=0.0),
        _image(LE07_T1, "LE07_L1GT_089107_20211207_20211230_02_T1", "2021-12-07T01:00", 5, 1.0),
    ]


@pytest.fixture
def grid() -> Grid:
    return Grid.covering(ROI)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """The gee cache folder of Totten 2021 when the cache root is ``tmp_path``."""
    return tmp_path / "gee" / "Totten" / "2021"


def make_source(fake: FakeEE, root: Path, **options: object) -> EarthEngineSource:
    source = EarthEngineSource(ee_module=fake, tile_size=TILE, progress=False, cache_dir=root,
                               **options)
    source.grid("Totten", ROI)
    return source


def run(fake: FakeEE, root: Path, grid: Grid, year: int = 2021, **options: object) -> list:
    """Scenes of Totten ``year`` with the cache under ``root`` (work folder unused)."""
    return make_source(fake, root, **options).scenes("Totten", year, grid, root / "work")


def test_downloads_go_to_the_persistent_cache(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    monkeypatch.setenv("ICEDAMAGE_CACHE", str(tmp_path / "c"))
    assert EarthEngineSource().scene_dir("Larsen B", 2005) == tmp_path / "c/gee/Larsen B/2005"
    monkeypatch.delenv("ICEDAMAGE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert EarthEngineSource().cache_dir == tmp_path / "x" / "icedamage"


def test_grid_is_the_aligned_roi_grid(grid: Grid) -> None:
    assert grid.shape == (70, 100)
    assert grid.resolution == (30.0, 30.0) and grid.crs == "EPSG:3031"


def test_search_filters_ranking_and_downloads_follow_the_paper(tmp_path: Path, grid: Grid,
                                                               cache: Path) -> None:
    fake = FakeEE(catalog())
    scenes = run(fake, tmp_path, grid, project="my-ee-project")

    assert fake.initialize_calls == [{"project": "my-ee-project"}]
    # Tier 1 and Tier 2 TOA of the sensors plausible in 2021 only: LC08 and LC09, never LE07.
    searched = {args[0] for args in fake.ops("ImageCollection")}
    assert searched == {LC08_T1, LC08_T2, LC09_T1, LC09_T2}
    # Austral-summer window, end exclusive: 1 Nov 2021 .. 31 Mar 2022 inclusive.
    assert fake.ops("filterDate")[0] == ("2021-11-01", "2022-04-01")
    assert {args[0] for args in fake.ops("filter")} == {"lt"}
    assert {args[1:] for args in fake.ops("filter")} == {("CLOUD_COVER", 80.0)}
    # The ROI itself, in EPSG:3031 with planar edges: Earth Engine's region is the local ROI.
    geometry = fake.ops("filterBounds")[0][0]
    assert (geometry.proj, geometry.geodesic) == ("EPSG:3031", False)
    assert geometry.geojson == {"type": "Polygon",
                                "coordinates": [[list(xy) for xy in ROI.exterior.coords]]}
    # Ranking: cloud (bit 3) and shadow (bit 4) masked, daily median, count at 300 m.
    mapped = [body for (body,) in fake.ops("map")]
    ranking = [body for body in mapped if body.update_mask_bits() == {8, 16}]
    flagging = [body for body in mapped if body.flagged_qa_bits() == {8, 16}]
    assert ranking and flagging and len(ranking) + len(flagging) == len(mapped)
    # Cloud-mask flags: 1 where bit 3 or 4 is set, masked where bit 0 (fill) is set.
    assert all(body.update_mask_bits() == {1} for body in flagging)
    # Count reducer at 300 m in EPSG:3031, maxPixels 1e13 and the authors' tileScale 4.
    reductions = fake.ops("reduceRegion")
    assert {(r[0], r[2], r[3], r[4], r[5]) for r in reductions} == {
        ("count", 300, "EPSG:3031", 1e13, 4)}
    assert all(r[1] is geometry or r[1] == geometry for r in reductions)

    # Most valid first; same-day images combined; cloudy, out-of-window, out-of-ROI excluded;
    # a composite with no valid pixel is never chosen.
    assert [(s.sensor, s.acquired.isoformat(), s.valid_fraction) for s in scenes] == [
        ("LC09", "2021-12-20", 0.95), ("LC08", "2021-12-05", 0.9),
        ("LC08", "2022-01-10", 0.7), ("LC08", "2022-03-31", 0.2)]
    assert scenes[1].source_ids == ("LC08_L1GT_089107_20211205_20211215_02_T1",
                                    "LC08_L1GT_089108_20211205_20211215_02_T1")
    assert scenes[1].path == cache / "LC08_Totten_composite_2021-12-05_uint8.tif"
    assert scenes[0].scene_id == "LC09_Totten_composite_2021-12-20"

    # Downloads: unmasked daily median clipped to the ROI, RGB × 255 as bytes, on our grid.
    requested = [r for r in fake.pixel_requests if r["bandIds"] != ["cloud"]]
    masks = [r for r in fake.pixel_requests if r["bandIds"] == ["cloud"]]
    windows = [w for w in tile_windows(grid, TILE) if box(*grid.subgrid(w).bounds).intersects(ROI)]
    assert len(windows) < len(tile_windows(grid, TILE))  # corner tiles outside the ROI skipped
    assert len(requested) == len(masks) == len(scenes) * len(windows)
    # The cloud mask of each composite is requested tile by tile on the same grids as its RGB.
    assert [r["grid"] for r in masks] == [r["grid"] for r in requested]
    for request in masks:
        expression = request["expression"]
        assert expression.chain()[-7:] == ["map", "mean", "gte", "clip", "unmask", "toByte",
                                           "rename"]
        assert expression.find("gte").args == (0.5,)
        # 0 outside the ROI too: sameFootprint false, else unmask keeps the clipped footprint.
        assert expression.find("unmask").args == (0, False)
        assert expression.find("map").args[0].flagged_qa_bits() == {8, 16}
        assert expression.find("median") is None
    for request in requested:
        assert request["fileFormat"] == "GEO_TIFF"
        assert request["grid"]["crsCode"] == "EPSG:3031"
        t = request["grid"]["affineTransform"]
        assert (t["scaleX"], t["scaleY"], t["shearX"], t["shearY"]) == (30.0, -30.0, 0.0, 0.0)
        assert (t["translateX"] - grid.transform.c) % 30 == 0
        dims = request["grid"]["dimensions"]
        assert 0 < dims["width"] <= TILE and 0 < dims["height"] <= TILE
        expression = request["expression"]
        assert expression.chain()[-3:] == ["select", "multiply", "toByte"]
        assert expression.parent.args == (255,)
        assert expression.find("clip") is not None and expression.find("median") is not None
        assert expression.find("map") is None  # downloaded UNMASKED
    bands_by_sensor = {tuple(r["bandIds"]) for r in requested}
    assert bands_by_sensor == {("B4", "B3", "B2")}

    # Each scene is one GeoTIFF on the ROI grid; tiles land exactly where they belong.
    inside = np.zeros(grid.shape, bool)
    for w in windows:
        inside[w.toslices()] = True
    expected = np.where(inside, pattern(grid.transform, grid.width, grid.height), 0)
    expected_cloud = np.where(inside, cloud_pattern(grid.transform, grid.width, grid.height)[0], 0)
    assert 0 < expected_cloud[inside].mean() < 1
    for scene in scenes:
        with rasterio.open(scene.path) as src:
            assert (src.count, src.dtypes, src.crs.to_epsg()) == (3, ("uint8",) * 3, 3031)
            assert src.transform == grid.transform and src.shape == grid.shape
            np.testing.assert_array_equal(src.read(), expected)
            assert src.tags()["SOURCE_IDS"].split(",") == list(scene.source_ids)
        assert scene.cloud_mask_path == cache / f"{scene.scene_id}_cloud.tif"
        with rasterio.open(scene.cloud_mask_path) as msk:
            assert (msk.count, msk.dtypes, msk.transform) == (1, ("uint8",), grid.transform)
            np.testing.assert_array_equal(msk.read(1), expected_cloud)
        # Merge planning sees the clouds: usable = present and not cloudy.
        usable, present = scene_masks(scene, 2021, grid, tmp_path).rows(0, grid.height)
        np.testing.assert_array_equal(present, expected.any(axis=0))
        np.testing.assert_array_equal(usable, expected.any(axis=0) & (expected_cloud == 0))
    # A folder of gee downloads is a valid local:DIR, product ids included.
    local = LocalFolderSource(cache, progress=False)
    local.grid("Totten", ROI)
    again = local.scenes("Totten", 2021, grid, tmp_path / "local-work")
    assert {(s.scene_id, s.source_ids) for s in again} == {(s.scene_id, s.source_ids)
                                                          for s in scenes}
    for scene in again:  # the sidecar carries the cloud mask along
        with rasterio.open(scene.cloud_mask_path) as msk:
            np.testing.assert_array_equal(msk.read(1), expected_cloud)
    manifest = json.loads((cache / "gee_Totten_2021.json").read_text())
    assert len(manifest["candidates"]) == 5 and len(manifest["chosen"]) == 4


def test_le07_summer_searches_landsat7_bands(tmp_path: Path, grid: Grid) -> None:
    fake = FakeEE([_image(LE07_T2, "LE07_L1GT_089107_20051207_20160101_02_T2",
                          "2005-12-07T01:00", 20, 0.8)])
    scenes = run(fake, tmp_path, grid, 2005)
    assert {a[0] for a in fake.ops("ImageCollection")} == set(SENSORS["LE07"].ee_collections)
    assert [s.sensor for s in scenes] == ["LE07"]
    assert {tuple(r["bandIds"]) for r in fake.pixel_requests} == {("B3", "B2", "B1"),
                                                                  ("cloud",)}


def test_top_n_limits_downloads(tmp_path: Path, grid: Grid, cache: Path) -> None:
    fake = FakeEE(catalog())
    scenes = run(fake, tmp_path, grid, top=1)
    assert [s.acquired.isoformat() for s in scenes] == ["2021-12-20", "2021-12-05"]
    assert sorted(p.name for p in cache.glob("*_uint8.tif")) == [
        "LC08_Totten_composite_2021-12-05_uint8.tif", "LC09_Totten_composite_2021-12-20_uint8.tif"]
    assert sorted(p.name for p in cache.glob("*_cloud.tif")) == [
        "LC08_Totten_composite_2021-12-05_cloud.tif", "LC09_Totten_composite_2021-12-20_cloud.tif"]


def test_no_imagery_gives_no_scenes(tmp_path: Path, grid: Grid) -> None:
    fake = FakeEE([])
    assert run(fake, tmp_path, grid) == []
    assert fake.pixel_requests == []


def test_missing_credentials_give_a_clear_error(tmp_path: Path, grid: Grid) -> None:
    fake = FakeEE(catalog(), credentials=False)
    with pytest.raises(CredentialsError) as info:
        run(fake, tmp_path, grid)
    message = str(info.value)
    assert "earthengine authenticate" in message and "set_project" in message
    assert "EE_PROJECT" in message and "--source demo" in message
    assert not list(tmp_path.glob("*"))


def _refresh_error() -> BaseException:
    from google.auth.exceptions import RefreshError

    return RefreshError("invalid_grant: Token has been expired or revoked.")


def _transport_error() -> BaseException:
    from google.auth.exceptions import TransportError

    return TransportError("Failed to resolve 'oauth2.googleapis.com'")


@pytest.mark.parametrize(("call", "error", "kind", "says"), [
    ("Initialize", _transport_error, SourceError,
     r"cannot reach Earth Engine on the session start \(TransportError"),
    ("Initialize", _refresh_error, CredentialsError, "earthengine authenticate"),
    ("getInfo", lambda: ConnectionError("Connection aborted."), SourceError,
     r"cannot reach Earth Engine on the LC08 image search of summer 2021 \(ConnectionError"),
    ("computePixels", lambda: TimeoutError("read timed out"), SourceError,
     r"on LC09_Totten_composite_2021-12-20_uint8\.tif tile .*\(TimeoutError: read timed out\)"),
    ("computePixels", _refresh_error, CredentialsError, "expired or revoked"),
])
def test_network_and_token_failures_are_clear_errors(tmp_path: Path, grid: Grid, cache: Path,
                                                     call: str, error: Callable[[], BaseException],
                                                     kind: type,
                                                     says: str) -> None:
    """The real client converts only Earth Engine's HTTP answers into EEException; a dropped
    connection, a timeout or a token that no longer refreshes comes through raw. Each becomes
    a SourceError (or CredentialsError) naming the step, and no partial scene stays behind."""
    fake = FakeEE(catalog(), errors={call: error()})
    with pytest.raises(kind, match=says):
        run(fake, tmp_path, grid)
    assert not list(cache.glob("*.tif")) and not list(cache.glob(".*.tmp"))


def test_real_client_without_credentials_gives_the_clear_error(
        tmp_path: Path, grid: Grid, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real earthengine-api raises EEException without credentials; we explain it."""
    import ee

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/earthengine/credentials
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("EE_PROJECT", "some-project")
    source = EarthEngineSource(ee_module=ee, progress=False, cache_dir=tmp_path / "cache")
    with pytest.raises(CredentialsError, match="earthengine authenticate"):
        source.scenes("Totten", 2021, grid, tmp_path / "work")


def test_rerun_uses_the_cache_without_earth_engine(tmp_path: Path, grid: Grid) -> None:
    first = run(FakeEE(catalog()), tmp_path, grid)
    stamps = {s.path: s.path.stat().st_mtime_ns for s in first}

    offline = FakeEE(catalog(), credentials=False)  # any Earth Engine use would fail
    again = run(offline, tmp_path, grid)
    assert again == first
    assert offline.initialize_calls == [] and offline.calls == []
    assert {s.path: s.path.stat().st_mtime_ns for s in again} == stamps

    first[1].path.unlink()  # one scene lost: only that one is fetched, no new ranking
    fake = FakeEE(catalog())
    run(fake, tmp_path, grid)
    assert fake.getinfo_calls == []
    windows = [w for w in tile_windows(grid, TILE) if box(*grid.subgrid(w).bounds).intersects(ROI)]
    assert len(fake.pixel_requests) == len(windows)
    assert {r["bandIds"][0] for r in fake.pixel_requests} == {"B4"}
    assert first[1].path.exists()
    assert all(s.path.stat().st_mtime_ns == stamps[s.path] for s in first if s is not first[1])


def test_cache_without_cloud_masks_fetches_only_the_masks(tmp_path: Path, grid: Grid,
                                                          cache: Path) -> None:
    """A cache written before cloud masks were downloaded gets them, RGB left untouched."""
    first = run(FakeEE(catalog()), tmp_path, grid, top=1)
    stamps = {s.path: s.path.stat().st_mtime_ns for s in first}
    for scene in first:
        scene.cloud_mask_path.unlink()
        (cache / f"{scene.path.name}.json").unlink()
    fake = FakeEE(catalog())
    again = run(fake, tmp_path, grid, top=1)
    assert fake.getinfo_calls == []  # the ranking is reused
    windows = [w for w in tile_windows(grid, TILE) if box(*grid.subgrid(w).bounds).intersects(ROI)]
    assert [r["bandIds"] for r in fake.pixel_requests] == [["cloud"]] * (2 * len(windows))
    assert {s.path: s.path.stat().st_mtime_ns for s in again} == stamps
    for scene in again:
        assert scene.cloud_mask_path.exists()
        sidecar = json.loads((cache / f"{scene.path.name}.json").read_text())
        assert sidecar == {"sensor": scene.sensor, "date": scene.acquired.isoformat(),
                           "shelf": "Totten", "cloud_mask": scene.cloud_mask_path.name,
                           "source_ids": list(scene.source_ids)}


def test_changed_parameters_redo_the_ranking(tmp_path: Path, grid: Grid) -> None:
    run(FakeEE(catalog()), tmp_path, grid)
    fake = FakeEE(catalog())
    scenes = run(fake, tmp_path, grid, cloud_cover_max=20)
    assert fake.getinfo_calls  # ranked again
    assert {a[2] for a in fake.ops("filter")} == {20.0}
    assert [s.acquired.isoformat() for s in scenes] == ["2021-12-20", "2021-12-05", "2022-03-31"]


def test_top_n_is_per_sensor(tmp_path: Path, grid: Grid) -> None:
    """top=2 keeps LC08's best two although LC09 has only one usable composite: each sensor
    keeps its own top N, as the authors' one run per collection did."""
    scenes = run(FakeEE(catalog()), tmp_path, grid, top=2)
    assert [(s.sensor, s.acquired.isoformat()) for s in scenes] == [
        ("LC09", "2021-12-20"), ("LC08", "2021-12-05"), ("LC08", "2022-01-10")]


def test_a_ranking_cached_under_the_old_rules_is_redone(tmp_path: Path, grid: Grid,
                                                        cache: Path) -> None:
    """A ranking from before top N became per sensor (and the ROI went to Earth Engine in
    EPSG:3031) is not reused: its parameters say ``top`` across sensors and no ``ee_roi``."""
    run(FakeEE(catalog()), tmp_path, grid, top=1)
    manifest = cache / "gee_Totten_2021.json"
    cached = json.loads(manifest.read_text())
    params = cached["parameters"]
    assert params["top_per_sensor"] == 1 and params["ee_roi"] == "EPSG:3031 planar"
    params["top"] = params.pop("top_per_sensor")
    del params["ee_roi"]
    cached["chosen"] = cached["chosen"][:1]  # the old rule chose only LC09's best
    manifest.write_text(json.dumps(cached))
    fake = FakeEE(catalog())
    scenes = run(fake, tmp_path, grid, top=1)
    assert fake.getinfo_calls  # ranked again
    assert [s.sensor for s in scenes] == ["LC09", "LC08"]


def test_a_revised_roi_downloads_its_scenes_again(tmp_path: Path, grid: Grid) -> None:
    """Cached files of an earlier grid are not passed off as scenes of the new one."""
    run(FakeEE(catalog()), tmp_path, grid)
    wider = box(*ROI.buffer(600).bounds)
    fake = FakeEE(catalog())
    source = EarthEngineSource(ee_module=fake, tile_size=TILE, progress=False, cache_dir=tmp_path)
    new_grid = source.grid("Totten", wider)
    scenes = source.scenes("Totten", 2021, new_grid, tmp_path / "work")
    assert fake.getinfo_calls and fake.pixel_requests  # ranked and downloaded again
    for scene in scenes:
        for path in (scene.path, scene.cloud_mask_path):
            with rasterio.open(path) as ds:
                assert new_grid.holds(ds), path


def test_failed_tile_leaves_no_partial_scene(tmp_path: Path, grid: Grid, cache: Path) -> None:
    fake = FakeEE(catalog(), fail_pixels_after=3)
    with pytest.raises(SourceError, match=r"LC09_Totten_composite_2021-12-20_uint8\.tif tile"):
        run(fake, tmp_path, grid)
    assert not list(cache.glob("*.tif")) and not list(cache.glob(".*.tmp"))
    assert not list(cache.glob("*.tif.json"))


@settings(max_examples=60, deadline=None)
@given(width=st.integers(1, 260), height=st.integers(1, 260), size=st.integers(16, 128))
def test_tiles_cover_the_grid_exactly(width: int, height: int, size: int) -> None:
    grid = Grid.from_bounds(0, 0, width * 30.0, height * 30.0)
    hits = np.zeros(grid.shape, np.int32)
    for window in tile_windows(grid, size):
        assert 0 < window.width <= size and 0 < window.height <= size
        hits[window.toslices()] += 1
        sub = grid.subgrid(window)
        assert sub.transform.c == grid.transform.c + window.col_off * 30
    assert (hits == 1).all()


def test_default_tiles_fit_earth_engine_limits() -> None:
    check_tile_size(2048, 3)
    assert EE_MAX_REQUEST_BYTES >= 2048 * 2048 * 3
    check_tile_size(4096, 3)  # exactly 48 MiB is allowed
    with pytest.raises(SourceError, match="50331648"):
        check_tile_size(4097, 3)
    with pytest.raises(SourceError):
        EarthEngineSource(tile_size=40000)


def test_rank_prefers_valid_then_early_then_sensor_order() -> None:
    day = dt.date(2022, 1, 1)
    composites = [DailyComposite("LC09", day, ("b",), 0.5),
                  DailyComposite("LC08", day, ("a",), 0.5),
                  DailyComposite("LC08", dt.date(2021, 12, 1), ("c",), 0.5),
                  DailyComposite("LC08", day, ("d",), 0.0)]
    assert [c.source_ids for c in rank(composites, 30)] == [("c",), ("a",), ("b",)]
    # top=1 is LC08's best and LC09's best, still in the same order.
    assert [c.source_ids for c in rank(composites, 1)] == [("c",), ("b",)]


def test_rank_keeps_the_top_n_of_each_sensor() -> None:
    """Two sensors each keep their own top N (the authors' TOP_K per collection run), even when
    every composite of one is better than every composite of the other."""
    start = dt.date(2021, 11, 1)
    lc09 = [DailyComposite("LC09", start + dt.timedelta(d), (f"9-{d}",), 0.95 - d / 1000)
            for d in range(40)]
    lc08 = [DailyComposite("LC08", start + dt.timedelta(d), (f"8-{d}",), 0.90 - d / 1000)
            for d in range(40)]
    chosen = rank(lc08 + lc09, 30)
    assert [c for c in chosen if c.sensor == "LC09"] == lc09[:30]
    assert [c for c in chosen if c.sensor == "LC08"] == lc08[:30]
    assert chosen == lc09[:30] + lc08[:30]  # one list, most valid first
    interleaved = rank([lc08[0], lc09[0], lc08[1], lc09[1], lc08[2]], 2)
    assert interleaved == [lc09[0], lc09[1], lc08[0], lc08[1]]


@pytest.mark.parametrize("roi", [
    box(*ROI.bounds).buffer(600_000, join_style="mitre"),  # 4 corners, km-scale edges
    Polygon([(-50_000, -1_000_000), (50_000, -1_000_000), (50_000, -1_100_000),
             (-50_000, -1_100_000)]),  # across the antimeridian (the -y axis of EPSG:3031)
], ids=["4-corner-rectangle", "antimeridian"])
def test_earth_engine_gets_the_roi_itself(roi: Polygon) -> None:
    """The ROI goes to Earth Engine as the EPSG:3031 polygon with planar edges: its region is
    exactly the local ROI, with no densifying needed and no antimeridian to refuse."""
    fake = FakeEE([])
    geometry = ee_geometry(fake, roi)
    assert (geometry.proj, geometry.geodesic) == ("EPSG:3031", False)
    assert Polygon(geometry.geojson["coordinates"][0]).equals_exact(roi, 0)


def test_thwaites_roi_is_the_authors_rectangle() -> None:
    """Thwaites' default ROI is the roiRegion of the authors' published Earth Engine script,
    ee.Geometry.Rectangle([-111.69132190, -76.38148504, -101.92339670, -73.91560727], null,
    false): a lon/lat rectangle with planar edges. Densified in EPSG:3031, every vertex handed
    to Earth Engine lies on that rectangle's graticule edges, and its corners are the script's."""
    lon0, lat0, lon1, lat1 = -111.69132190, -76.38148504, -101.92339670, -73.91560727
    record = SHELVES["Thwaites"]
    assert (record.lon_min, record.lat_min, record.lon_max, record.lat_max) == (
        lon0, lat0, lon1, lat1)
    assert "authors' published Earth Engine script" in record.source
    assert "roiRegion" in record.source
    geometry = ee_geometry(FakeEE([]), roi_polygon("Thwaites"))
    assert (geometry.proj, geometry.geodesic) == ("EPSG:3031", False)
    to_lonlat = Transformer.from_crs("EPSG:3031", "EPSG:4326", always_xy=True)
    lon, lat = to_lonlat.transform(*np.array(geometry.geojson["coordinates"][0]).T)
    assert len(lon) > 100  # densified: planar EPSG:3031 edges follow the graticule
    on_edge = (np.isclose(lon, lon0, atol=1e-9) | np.isclose(lon, lon1, atol=1e-9)
               | np.isclose(lat, lat0, atol=1e-9) | np.isclose(lat, lat1, atol=1e-9))
    assert on_edge.all()
    corners = {(round(x, 8), round(y, 8)) for x, y in zip(lon, lat, strict=True)}
    assert {(lon0, lat0), (lon0, lat1), (lon1, lat0), (lon1, lat1)} <= corners


# --------------------------------------------------------------------------------------------
# The same source with the REAL earthengine-api client, offline (as ee.apitestcase runs it):
# proves the calls we build are valid Earth Engine API and serialize to the expected graph.
# --------------------------------------------------------------------------------------------


@pytest.fixture
def real_ee(monkeypatch: pytest.MonkeyPatch):
    import ee
    from ee import apitestcase

    monkeypatch.setattr(ee.data, "_install_cloud_api_resource", lambda: None)
    monkeypatch.setattr(ee.data, "getAlgorithms", apitestcase.GetAlgorithms)
    monkeypatch.setattr(ee.deprecation, "_FetchDataCatalogStac", lambda: {})
    ee.Reset()
    ee.Initialize(None, "", project="my-project")
    yield ee
    ee.Reset()


def test_real_client_serializes_the_expected_graph(real_ee, tmp_path: Path, grid: Grid,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    ee = real_ee
    graphs: list[str] = []
    times = [int(dt.datetime(2021, 12, 5, 1, 20, tzinfo=dt.UTC).timestamp() * 1000)]

    def compute_value(obj: object) -> object:
        graph = json.dumps(ee.serializer.encode(obj, for_cloud_api=True))
        graphs.append(graph)
        if "AggregateFeatureCollection.array" in graph:
            lc08 = "LANDSAT/LC08" in graph
            return {"ids": ["LC08_L1GT_089107_20211205_20211215_02_T1"] if lc08 else [],
                    "times": times if lc08 else []}
        return {"LC08_2021-12-05": 600, "roi": 1000}

    def compute_pixels(params: dict) -> bytes:
        graphs.append(json.dumps(ee.serializer.encode(params["expression"], for_cloud_api=True)))
        return FakeEE([]).data.computePixels(params)

    monkeypatch.setattr(ee.data, "computeValue", compute_value)
    monkeypatch.setattr(ee.data, "computePixels", compute_pixels)
    source = EarthEngineSource(ee_module=ee, tile_size=64, progress=False, cache_dir=tmp_path)
    source._initialized = True  # ee.Initialize already ran against the stubbed API
    source.grid("Totten", ROI)
    scenes = source.scenes("Totten", 2021, grid, tmp_path / "work")
    assert [(s.sensor, s.valid_fraction) for s in scenes] == [("LC08", 0.6)]
    search, counts = graphs[0], graphs[2]
    (pixels,) = {g for g in graphs[3:] if '["B4", "B3", "B2"]' in g}
    (cloud,) = {g for g in graphs[3:] if '"cloud"' in g}

    def functions(graph: str) -> set[str]:
        return set(re.findall(r'"functionName": "([^"]+)"', graph))

    def constants(graph: str) -> set[str]:
        return set(re.findall(r'"constantValue": ("[^"]*"|[0-9.e+]+)', graph))

    assert {"ImageCollection.load", "ImageCollection.merge", "Filter.intersects",
            "Filter.lessThan", "Filter.dateRangeContains",
            "AggregateFeatureCollection.array"} <= functions(search)
    assert {f'"{LC08_T1}"', f'"{LC08_T2}"', '"CLOUD_COVER"', "80.0", '"2021-11-01"',
            '"2022-04-01"', '"EPSG:3031"'} <= constants(search)
    # The ROI's own EPSG:3031 vertices, planar edges (no EPSG:4326 anywhere).
    assert "GeometryConstructors.Polygon" in functions(search) and "EPSG:4326" not in search
    assert '"geodesic": {"constantValue": false}' in search
    assert all(json.dumps(list(xy)) in search for xy in ROI.exterior.coords)
    assert {"Collection.map", "Image.bitwiseAnd", "Image.eq", "Image.and", "Image.updateMask",
            "reduce.median", "Image.clip", "Image.reduceRegion", "Reducer.count"} <= \
        functions(counts)
    assert {"8", "16", "300", '"2021-12-05"', '"2021-12-06"', '"EPSG:3031"'} <= constants(counts)
    assert '"tileScale": {"constantValue": 4}' in counts
    assert '"maxPixels": {"constantValue": 10000000000000.0}' in counts
    assert '"QA_PIXEL"' in counts
    assert {"reduce.median", "Image.clip", "Image.select", "Image.multiply",
            "Image.toByte"} <= functions(pixels)
    assert "Collection.map" not in functions(pixels) and '"QA_PIXEL"' not in constants(pixels)
    assert "255" in constants(pixels) and '["B4", "B3", "B2"]' in pixels
    assert {"Collection.map", "Image.bitwiseAnd", "Image.eq", "Image.and", "Image.not",
            "Image.updateMask", "reduce.mean", "Image.gte", "Image.clip", "Image.unmask",
            "Image.toByte", "Image.rename"} <= functions(cloud)
    assert "reduce.median" not in functions(cloud)
    assert {"1", "8", "16", "0.5", "0"} <= constants(cloud)
    assert '"sameFootprint": {"constantValue": false}' in cloud
    assert '"QA_PIXEL"' in cloud and '"cloud"' in cloud


def test_a_ranking_made_before_the_summer_settled_is_searched_again(
        tmp_path: Path, grid: Grid, monkeypatch: pytest.MonkeyPatch) -> None:
    """A search during the summer missed scenes still on their way from Real-Time to the tier
    collections; its ranking, even an empty one, used to be reused forever (--force too)."""
    from producer.sources import gee

    early = [image for image in catalog() if image.acquired < dt.datetime(2021, 12, 1)]
    monkeypatch.setattr(gee, "today", lambda: dt.date(2021, 12, 2))
    assert run(FakeEE(early), tmp_path, grid) == []  # nothing usable yet
    monkeypatch.setattr(gee, "today", lambda: dt.date(2022, 5, 15))  # 45 days after the end
    fake = FakeEE(catalog())
    found = run(fake, tmp_path, grid)
    assert fake.getinfo_calls and found  # searched again: the summer's scenes are there now
    settled_search = FakeEE(catalog(), credentials=False)  # any Earth Engine use would fail
    assert run(settled_search, tmp_path, grid) == found  # now final: reused
    assert settled_search.calls == []


def test_produce_force_reaches_the_gee_cache() -> None:
    from producer.pipeline import resolve_source

    assert resolve_source("gee", None, force=True).force
    assert not resolve_source("gee").force
    assert resolve_source("demo", None, force=True).name == "demo"  # takes no such option


def test_an_unavailable_service_is_no_credentials_problem(tmp_path: Path, grid: Grid) -> None:
    from tests.fake_ee import FakeEEException

    fake = FakeEE(catalog(), errors={"Initialize": FakeEEException(
        "The service is currently unavailable.")})
    with pytest.raises(SourceError, match="could not start a session: The service is currently "
                                          "unavailable") as info:
        run(fake, tmp_path, grid)
    assert not isinstance(info.value, CredentialsError)
    assert "earthengine authenticate" not in str(info.value)


def test_a_day_whose_images_changed_is_downloaded_again(
        tmp_path: Path, grid: Grid, monkeypatch: pytest.MonkeyPatch) -> None:
    """After the summer settled, a second scene of 5 Dec had arrived: the day's composite is
    another one. The cached mosaic of one scene used to be kept under both scenes' ids."""
    from producer.sources import gee

    first, late = catalog()[:2]  # two scenes of 2021-12-05
    monkeypatch.setattr(gee, "today", lambda: dt.date(2021, 12, 20))
    (before,) = run(FakeEE([first]), tmp_path, grid)
    monkeypatch.setattr(gee, "today", lambda: dt.date(2022, 6, 1))
    fake = FakeEE([first, late])
    (after,) = run(fake, tmp_path, grid)
    assert len(after.source_ids) == 2 and fake.pixel_requests  # fetched again
    with rasterio.open(after.path) as src:
        assert src.tags()["SOURCE_IDS"].split(",") == list(after.source_ids)


def test_a_ranking_cached_by_an_earlier_version_needs_no_earth_engine(
        tmp_path: Path, grid: Grid, cache: Path) -> None:
    """Rankings written before `searched_on` existed: the file's date stands in, so a summer
    long over re-runs from the cache alone, as before."""
    found = run(FakeEE(catalog()), tmp_path, grid)
    manifest = cache / "gee_Totten_2021.json"
    record = json.loads(manifest.read_text())
    del record["searched_on"]
    manifest.write_text(json.dumps(record))
    offline = FakeEE(catalog(), credentials=False)  # any Earth Engine use would fail
    assert run(offline, tmp_path, grid) == found and offline.calls == []
