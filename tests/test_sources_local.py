"""The local:DIR source: real small GeoTIFFs written, selected, reprojected and read back."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import Transformer
from rasterio.enums import ColorInterp
from rasterio.features import geometry_mask
from shapely.geometry import Polygon

from producer.grid import Grid
from producer.shelves import SHELVES, shelf_key
from producer.sources.errors import SourceError
from producer.sources.local import LocalFolderSource, combine_day
from producer.sources.names import (
    export_name,
    parse_export_name,
    parse_product_id,
)
from producer.spec import SENSOR_ORDER, SpecError

X0, Y0 = 2_250_000.0, -1_050_000.0  # near Totten, EPSG:3031
ROI = Polygon([(X0, Y0), (X0 + 3000, Y0), (X0 + 3000, Y0 + 1500), (X0 + 1500, Y0 + 2100),
               (X0, Y0 + 1500)])
GRID = Grid.covering(ROI)  # 100 x 70 px
RGB = (100, 150, 200)


def write_tif(path: Path, data: np.ndarray, transform: Affine, crs: str = "EPSG:3031") -> Path:
    """A plain GeoTIFF of ``data`` (bands, rows, cols)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
                       count=data.shape[0], dtype=data.dtype, crs=crs,
                       transform=transform) as dst:
        dst.write(data)
    return path


def on_grid(path: Path, rgb: tuple[int, int, int] = RGB, extra: np.ndarray | None = None,
            cols: slice = slice(None)) -> Path:
    """A scene exactly on GRID: ``rgb`` in the columns ``cols``, 0 (no data) elsewhere."""
    data = np.zeros((3, *GRID.shape), np.uint8)
    for band, value in enumerate(rgb):
        data[band][:, cols] = value
    if extra is not None:
        data = np.concatenate([data, extra[None].astype(np.uint8)])
    return write_tif(path, data, GRID.transform)


def roi_inside() -> np.ndarray:
    return geometry_mask([ROI], out_shape=GRID.shape, transform=GRID.transform, invert=True)


def source(folder: Path, **options: object) -> LocalFolderSource:
    src = LocalFolderSource(folder, progress=False, **options)
    assert src.grid("Totten", ROI) == GRID
    return src


# --------------------------------------------------------------------------------------------
# File-name parsers (hypothesis round trips)
# --------------------------------------------------------------------------------------------

shelf_names = st.one_of(
    st.sampled_from(sorted(SHELVES)),
    st.from_regex(r"[A-Za-z][A-Za-z0-9 _-]{0,30}", fullmatch=True).map(str.strip)
    .filter(lambda s: s != "" and s[-1] not in " "),
)
dates = st.dates(dt.date(1984, 1, 1), dt.date(2099, 12, 31))


@settings(deadline=None)
@given(sensor=st.sampled_from(SENSOR_ORDER), shelf=shelf_names, day=dates)
def test_export_name_round_trip(sensor: str, shelf: str, day: dt.date) -> None:
    name = export_name(sensor, shelf, day)
    assert name.filename == f"{sensor}_{shelf}_composite_{day.isoformat()}_uint8.tif"
    assert parse_export_name(name.filename) == name


@settings(deadline=None)
@given(sensor=st.sampled_from(SENSOR_ORDER), level=st.sampled_from(["L1TP", "L1GT", "L1GS",
                                                                    "L2SP"]),
       path_row=st.integers(0, 999_999), acquired=dates, processed=dates,
       category=st.sampled_from(["T1", "T2", "RT"]),
       suffix=st.sampled_from(["", ".tif", "_refl.tif", "_B4.TIF", "_SR_stack.tiff"]))
def test_product_id_round_trip(sensor: str, level: str, path_row: int, acquired: dt.date,
                               processed: dt.date, category: str, suffix: str) -> None:
    pid = (f"{sensor}_{level}_{path_row:06d}_{acquired:%Y%m%d}_{processed:%Y%m%d}_02_"
           f"{category}")
    parsed = parse_product_id(pid + suffix)
    assert (parsed.product_id, parsed.sensor, parsed.acquired, parsed.processed) == (
        pid, sensor, acquired, processed)
    assert (parsed.wrs_path_row, parsed.collection, parsed.category) == (
        f"{path_row:06d}", "02", category)


@pytest.mark.parametrize(("name", "field"), [
    ("LT05_Totten_composite_2001-01-05_uint8.tif", "sensor 'LT05'"),
    ("LC08_Totten_composite_2021-02-30_uint8.tif", "acquisition date '2021-02-30'"),
    ("LC08_Totten_2021-12-05.tif", "does not match"),
])
def test_export_name_errors_name_the_file_and_field(name: str, field: str) -> None:
    with pytest.raises(SpecError, match=field) as info:
        parse_export_name(name)
    assert name in str(info.value)


def test_product_id_errors_name_the_field() -> None:
    with pytest.raises(SpecError, match="acquisition date '20221305'"):
        parse_product_id("LC08_L1TP_101107_20221305_20221315_02_T1_refl.tif")
    with pytest.raises(SpecError, match="LT05"):
        parse_product_id("LT05_L1TP_101107_20020105_20220115_02_T1.tif")


def test_shelf_names_compare_loosely() -> None:
    assert shelf_key("Larsen B") == shelf_key("Larsen_B") == shelf_key("larsen-b")
    assert shelf_key("Amery") != shelf_key("Amery_front")


# --------------------------------------------------------------------------------------------
# Selection, reprojection, masks, merging
# --------------------------------------------------------------------------------------------


def test_export_named_scenes_on_the_grid_are_used_in_place(tmp_path: Path) -> None:
    folder = tmp_path / "scenes"
    full = on_grid(folder / "LC08_Totten_composite_2021-12-05_uint8.tif")
    half = on_grid(folder / "LC09_Totten_composite_2022-01-20_uint8.tif", cols=slice(0, 50))
    on_grid(folder / "LC08_Totten_composite_2022-11-05_uint8.tif")  # summer 2022
    on_grid(folder / "LC08_Amery_composite_2021-12-05_uint8.tif")  # another shelf
    on_grid(folder / "LC08_Totten_composite_2021-06-05_uint8.tif")  # polar night
    scenes = source(folder).scenes("Totten", 2021, GRID, tmp_path / "work")

    assert [s.path for s in scenes] == [full, half]  # most usable first, not copied
    assert [s.scene_id for s in scenes] == ["LC08_Totten_composite_2021-12-05",
                                            "LC09_Totten_composite_2022-01-20"]
    assert scenes[0].valid_fraction == 1.0
    inside = roi_inside()
    assert scenes[1].valid_fraction == pytest.approx(inside[:, :50].sum() / inside.sum())
    assert scenes[1].sensor == "LC09" and scenes[1].acquired == dt.date(2022, 1, 20)
    assert all(s.cloud_mask_path is None for s in scenes)


def test_other_crs_is_reprojected_onto_the_grid_nearest(tmp_path: Path) -> None:
    folder = tmp_path / "ee"
    to_utm = Transformer.from_crs("EPSG:3031", "EPSG:32750", always_xy=True)
    ux, uy = to_utm.transform(X0 + 1500, Y0 + 1000)  # footprint centred in the ROI
    utm = Affine(30.0, 0, ux - 1200, 0, -30.0, uy + 1200)  # 80 x 80 px at 30 m: 2.4 km
    data = np.stack([np.full((80, 80), v, np.uint8) for v in RGB])
    write_tif(folder / "LC08_L1GT_101107_20211205_20211215_02_T1_refl.tif", data, utm,
              "EPSG:32750")
    far = Affine(30.0, 0, ux + 500_000, 0, -30.0, uy)  # an image of elsewhere: not selected
    write_tif(folder / "LC08_L1GT_120107_20211205_20211215_02_T1_refl.tif", data, far,
              "EPSG:32750")
    (scene,) = source(folder).scenes("Totten", 2021, GRID, tmp_path / "work")

    assert scene.path == tmp_path / "work" / "LC08_Totten_composite_2021-12-05_uint8.tif"
    assert scene.source_ids == ("LC08_L1GT_101107_20211205_20211215_02_T1",)
    assert scene.metadata["reprojected"] and scene.metadata["resampling"] == "nearest"
    with rasterio.open(scene.path) as out:
        assert (out.crs.to_epsg(), out.transform, out.shape, out.count) == (
            3031, GRID.transform, GRID.shape, 3)
        pixels = out.read()
    present = pixels.any(axis=0)
    assert 0.2 < present.mean() < 0.8  # the 2.4 km footprint inside the 3 x 2.1 km grid
    for band, value in enumerate(RGB):  # nearest keeps the values exactly
        assert set(np.unique(pixels[band][present])) == {value}
    assert scene.valid_fraction == pytest.approx((present & roi_inside()).sum()
                                                 / roi_inside().sum())


def test_bilinear_does_not_blend_with_no_data(tmp_path: Path) -> None:
    folder = tmp_path / "ee"
    # 45 m (the coarsest scene accepted: 1.5 x the grid), half a grid pixel off the grid
    coarse = Affine(45.0, 0, X0 + 315, 0, -45.0, Y0 + 1815)
    data = np.stack([np.full((24, 40), v, np.uint8) for v in RGB])
    write_tif(folder / "LC08_Totten_composite_2021-12-05_uint8.tif", data, coarse)
    (scene,) = source(folder, resampling="bilinear").scenes("Totten", 2021, GRID, tmp_path / "w")
    with rasterio.open(scene.path) as out:
        pixels = out.read()
    present = pixels.any(axis=0)
    assert present.sum() > 100
    for band, value in enumerate(RGB):
        assert set(np.unique(pixels[band][present])) == {value}


def test_cloud_mask_band_and_sidecar_mask(tmp_path: Path) -> None:
    folder = tmp_path / "scenes"
    cloud = np.zeros(GRID.shape, np.uint8)
    cloud[:, :25] = 1
    on_grid(folder / "LC08_Totten_composite_2021-12-05_uint8.tif", extra=cloud)
    write_tif(folder / "my_mask.tif", cloud[None, :, ::-1].copy(), GRID.transform)
    plain = on_grid(folder / "scene_b.tif")
    (folder / "scene_b.tif.json").write_text(json.dumps(
        {"sensor": "lc09", "date": "2022-02-03", "cloud_mask": "my_mask.tif",
         "source_ids": ["LC09_L1GT_089107_20220203_20220204_02_T1"]}))
    scenes = source(folder).scenes("Totten", 2021, GRID, tmp_path / "work")

    assert len(scenes) == 2  # the mask file is not a scene
    by_sensor = {s.sensor: s for s in scenes}
    inside = roi_inside()
    band4, sidecar = by_sensor["LC08"], by_sensor["LC09"]
    assert band4.valid_fraction == pytest.approx((inside & (cloud == 0)).sum() / inside.sum())
    assert sidecar.valid_fraction == pytest.approx(
        (inside & (cloud[:, ::-1] == 0)).sum() / inside.sum())
    assert sidecar.source_ids == ("LC09_L1GT_089107_20220203_20220204_02_T1",)
    assert sidecar.path != plain  # a mask travels with the scene: written on the grid
    for scene, expected in ((band4, cloud), (sidecar, cloud[:, ::-1])):
        with rasterio.open(scene.cloud_mask_path) as msk:
            np.testing.assert_array_equal(msk.read(1), expected)
        with rasterio.open(scene.path) as rgb:
            assert rgb.count == 3
            np.testing.assert_array_equal(rgb.read(1), np.full(GRID.shape, RGB[0]))


def test_cloud_mask_named_after_its_scene_is_used(tmp_path: Path) -> None:
    """``<scene id>_cloud.tif`` beside an export-named scene (the gee cache's layout, sidecar
    lost or never written) is that scene's cloud mask, not a scene of its own."""
    folder = tmp_path / "scenes"
    cloud = np.zeros(GRID.shape, np.uint8)
    cloud[:, 60:] = 1
    on_grid(folder / "LC08_Totten_composite_2021-12-05_uint8.tif")
    write_tif(folder / "LC08_Totten_composite_2021-12-05_cloud.tif", cloud[None],
              GRID.transform)
    for sidecar in (None, {"sensor": "LC08", "date": "2021-12-05"}):  # sidecar, no mask field
        if sidecar is not None:
            (folder / "LC08_Totten_composite_2021-12-05_uint8.tif.json").write_text(
                json.dumps(sidecar))
        (scene,) = source(folder).scenes("Totten", 2021, GRID, tmp_path / "work")
        inside = roi_inside()
        assert scene.valid_fraction == pytest.approx(
            (inside & (cloud == 0)).sum() / inside.sum())
        with rasterio.open(scene.cloud_mask_path) as msk:
            np.testing.assert_array_equal(msk.read(1), cloud)


def test_same_day_files_are_combined_by_median(tmp_path: Path) -> None:
    folder = tmp_path / "scenes"
    on_grid(folder / "LC08_L1GT_089107_20211205_20211215_02_T1.tif", (10, 10, 10),
            cols=slice(0, 60))
    on_grid(folder / "LC08_L1GT_089108_20211205_20211215_02_T1.tif", (30, 30, 30),
            cols=slice(40, 100))
    (scene,) = source(folder).scenes("Totten", 2021, GRID, tmp_path / "work")
    assert scene.source_ids == ("LC08_L1GT_089107_20211205_20211215_02_T1",
                                "LC08_L1GT_089108_20211205_20211215_02_T1")
    with rasterio.open(scene.path) as out:
        band = out.read(1)
    assert (band[:, :40] == 10).all() and (band[:, 40:60] == 20).all()
    assert (band[:, 60:] == 30).all() and scene.valid_fraction == 1.0


@given(st.integers(0, 254), st.integers(0, 254))
def test_daily_median_drops_the_fraction_as_earth_engine_to_byte_does(a: int, b: int) -> None:
    """Two files of a day: their mean, fraction dropped (never rounded half to even)."""
    rgbs = [np.full((3, 2, 2), v + 1, np.uint8) for v in (a, b)]  # > 0: both have data
    out, _ = combine_day(rgbs, [None, None])
    assert (out == (a + 1 + b + 1) // 2).all()


def test_combine_day_cloudy_where_at_least_half_the_files_with_data_are() -> None:
    """The median of the files is bounded by clear values only where most files are clear."""
    a = np.full((3, 1, 5), 50, np.uint8)
    b = np.full((3, 1, 5), 70, np.uint8)
    c = np.full((3, 1, 5), 90, np.uint8)
    b[:, 0, 3] = 0  # no data in b and c at the fourth pixel, in c at the fifth
    c[:, 0, 3:] = 0
    rgb, cloud = combine_day([a, b, c], [np.array([[1, 1, 0, 1, 1]]),
                                         np.array([[0, 1, 0, 0, 0]]), None])
    assert rgb[0].tolist() == [[70, 70, 70, 50, 60]]
    # cloudy shares: 1/3, 2/3, 0/3, 1/1 (only a has data), 1/2
    assert cloud.tolist() == [[False, True, False, True, True]]


def test_implausible_sensor_is_skipped_with_a_reason(tmp_path: Path) -> None:
    folder = tmp_path / "scenes"
    path = on_grid(folder / "LE07_Totten_composite_2015-12-05_uint8.tif")
    src = source(folder)
    assert src.scenes("Totten", 2015, GRID, tmp_path / "work") == []
    assert src.skipped == [(path, "LE07 is not used for summer 2015")]


def test_rerun_reuses_derived_scenes_until_inputs_change(tmp_path: Path) -> None:
    folder = tmp_path / "scenes"
    cloud = np.zeros(GRID.shape, np.uint8)
    path = on_grid(folder / "LC08_Totten_composite_2021-12-05_uint8.tif", extra=cloud)
    (first,) = source(folder).scenes("Totten", 2021, GRID, tmp_path / "work")
    stamp = first.path.stat().st_mtime_ns
    (again,) = source(folder).scenes("Totten", 2021, GRID, tmp_path / "work")
    assert again == first and again.path.stat().st_mtime_ns == stamp

    cloud[:35] = 1
    on_grid(path, extra=cloud)
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
    (changed,) = source(folder).scenes("Totten", 2021, GRID, tmp_path / "work")
    assert changed.valid_fraction < first.valid_fraction


@pytest.mark.parametrize(("name", "data", "message"), [
    ("scene.tif", np.zeros((3, 4, 4), np.uint8), r"scene\.tif: cannot tell the sensor.*sidecar"),
    ("LC08_Totten_composite_2021-02-30_uint8.tif", np.zeros((3, 4, 4), np.uint8),
     "acquisition date '2021-02-30'"),
    ("LT05_L1TP_101107_20011205_20211215_02_T1.tif", np.zeros((3, 4, 4), np.uint8),
     "sensor 'LT05'"),
    ("LC08_Totten_composite_2021-12-05_uint8.tif", np.zeros((1, 4, 4), np.uint8),
     "band count is 1"),
    ("LC08_Totten_composite_2021-12-05_uint8.tif", np.zeros((3, 4, 4), np.uint16),
     r"'uint16'.*expected uint8"),
])
def test_bad_files_fail_with_the_file_and_field(tmp_path: Path, name: str, data: np.ndarray,
                                                message: str) -> None:
    folder = tmp_path / "scenes"
    path = write_tif(folder / name, data, GRID.transform)
    with pytest.raises(SourceError, match=message) as info:
        source(folder).scenes("Totten", 2021, GRID, tmp_path / "work")
    assert str(path) in str(info.value)
    assert not (tmp_path / "work").exists() or not list((tmp_path / "work").glob("*.tif"))


def test_damaged_scene_file_names_the_file(tmp_path: Path) -> None:
    """A truncated download is a clear SourceError naming the file, not a rasterio traceback."""
    folder = tmp_path / "scenes"
    path = on_grid(folder / "LC08_Totten_composite_2021-12-05_uint8.tif")
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(SourceError, match="not a readable GeoTIFF") as info:
        source(folder).scenes("Totten", 2021, GRID, tmp_path / "work")
    assert str(path) in str(info.value)


@pytest.mark.parametrize(("sidecar", "message"), [
    ({"sensor": "LC08"}, "field 'date' is missing"),
    ({"sensor": "LT05", "date": "2021-12-05"}, "field 'sensor' is 'LT05'"),
    ({"sensor": "LC08", "date": "5 Dec"}, "field 'date' is '5 Dec'"),
    ({"sensor": "LC08", "date": "2021-12-05", "cloud_mask": "nope.tif"}, "field 'cloud_mask'"),
])
def test_bad_sidecars_name_the_field(tmp_path: Path, sidecar: dict, message: str) -> None:
    folder = tmp_path / "scenes"
    on_grid(folder / "scene.tif")
    (folder / "scene.tif.json").write_text(json.dumps(sidecar))
    with pytest.raises(SourceError, match=message) as info:
        source(folder).scenes("Totten", 2021, GRID, tmp_path / "work")
    assert "scene.tif.json" in str(info.value)


def test_missing_folder_and_bad_resampling_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        LocalFolderSource(tmp_path / "nope")
    with pytest.raises(SourceError, match="resampling 'cubic'"):
        LocalFolderSource(tmp_path, resampling="cubic")


# --------------------------------------------------------------------------------------------
# Review fixes: signatures, no-data marking, alpha, damaged pixels, skipped files, duplicates
# --------------------------------------------------------------------------------------------

DAY = "LC08_Totten_composite_2021-12-05_uint8.tif"


def _later(path: Path, seconds: int = 5) -> None:
    """Move a file's mtime forward, as a re-export some seconds after the first one does."""
    stamp = path.stat().st_mtime_ns + seconds * 10**9
    os.utime(path, ns=(stamp, stamp))


def test_digest_key_follows_the_files_of_the_day(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A scene id says nothing of the files: a replaced file or a second file of the same day
    changes the scene's digest key, and ``scene_keys`` gives the same keys without pixels."""
    folder = tmp_path / "scenes"
    path = on_grid(folder / DAY)
    (first,) = source(folder).scenes("Totten", 2021, GRID, tmp_path / "w1")
    on_grid(path, (90, 90, 90))  # re-exported under the same name
    _later(path)
    (replaced,) = source(folder).scenes("Totten", 2021, GRID, tmp_path / "w2")
    on_grid(folder / "LC08_L1GT_089108_20211205_20211215_02_T1.tif", (30, 30, 30))
    src = source(folder)
    (added,) = src.scenes("Totten", 2021, GRID, tmp_path / "w3")
    assert first.scene_id == replaced.scene_id == added.scene_id
    assert len({first.digest_key, replaced.digest_key, added.digest_key}) == 3

    def no_pixels(*args: object, **kwargs: object) -> None:
        raise AssertionError("scene_keys read pixels")

    monkeypatch.setattr(LocalFolderSource, "_build", no_pixels)
    monkeypatch.setattr(LocalFolderSource, "_fourth_band", no_pixels)
    assert src.scene_keys("Totten", 2021, GRID) == [added.digest_key]
    assert source(folder, top=5).scene_keys("Totten", 2021, GRID) == [added.digest_key]


def test_scene_keys_cannot_tell_when_top_keeps_some_days(tmp_path: Path) -> None:
    folder = tmp_path / "scenes"
    on_grid(folder / DAY)
    on_grid(folder / "LC08_Totten_composite_2022-01-05_uint8.tif")
    assert source(folder, top=1).scene_keys("Totten", 2021, GRID) is None


def _masked_internally(path: Path, valid: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.stack([np.full(GRID.shape, v, np.uint8) for v in RGB])
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(
            path, "w", driver="GTiff", width=GRID.width, height=GRID.height, count=3,
            dtype="uint8", crs="EPSG:3031", transform=GRID.transform) as dst:
        dst.write(data)  # non-zero under the mask too, as JPEG-compressed exports have
        dst.write_mask(valid.astype(np.uint8) * 255)


def _nodata_255(path: Path, valid: np.ndarray) -> None:
    data = np.stack([np.where(valid, v, 255).astype(np.uint8) for v in RGB])
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=GRID.width, height=GRID.height,
                       count=3, dtype="uint8", crs="EPSG:3031", transform=GRID.transform,
                       nodata=255) as dst:
        dst.write(data)


@pytest.mark.parametrize("write", [_masked_internally, _nodata_255])
def test_a_files_own_no_data_marking_is_honoured(tmp_path: Path, write) -> None:  # noqa: ANN001
    """A per-dataset mask or a nodata tag of 255 marks no data the producer would not see in
    the raw pixels: such a file is copied with those pixels 0, not used in place."""
    folder = tmp_path / "scenes"
    valid = np.zeros(GRID.shape, bool)
    valid[:, :50] = True
    write(folder / DAY, valid)
    (scene,) = source(folder).scenes("Totten", 2021, GRID, tmp_path / "work")
    assert not scene.metadata["used_in_place"] and scene.path.parent == tmp_path / "work"
    inside = roi_inside()
    assert scene.valid_fraction == pytest.approx((inside & valid).sum() / inside.sum())
    with rasterio.open(scene.path) as out:
        pixels = out.read()
    assert not pixels[:, ~valid].any() and (pixels[0][valid] == RGB[0]).all()


def test_a_nodata_tag_that_cannot_be_honoured_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "scenes"
    path = on_grid(folder / DAY)
    with rasterio.open(path, "r+") as ds:
        ds.nodata = 0.5
    with pytest.raises(SourceError, match=r"nodata tag is 0\.5; .*integer 0-255") as info:
        source(folder).scenes("Totten", 2021, GRID, tmp_path / "work")
    assert str(path) in str(info.value)


def test_an_alpha_band_is_validity_not_cloud(tmp_path: Path) -> None:
    """RGBA as ``gdalwarp -dstalpha`` writes it (255 = data, 0 = outside) is not 100 % cloud."""
    folder = tmp_path / "scenes"
    alpha = np.zeros(GRID.shape, np.uint8)
    alpha[:, :60] = 255
    path = on_grid(folder / DAY, cols=slice(0, 60), extra=alpha)
    with rasterio.open(path) as ds:
        assert ds.colorinterp[3] == ColorInterp.alpha  # GDAL's default for 4 UInt8 bands
    src = source(folder)
    (scene,) = src.scenes("Totten", 2021, GRID, tmp_path / "work")
    inside = roi_inside()
    assert scene.valid_fraction == pytest.approx(inside[:, :60].sum() / inside.sum())
    assert scene.cloud_mask_path is None and scene.metadata["fourth_band"] == ["alpha"]
    assert src.notes == []


def test_a_4th_band_flagging_all_data_as_cloud_is_reported(tmp_path: Path) -> None:
    folder = tmp_path / "scenes"
    path = on_grid(folder / DAY, extra=np.ones(GRID.shape, np.uint8))
    src = source(folder)
    (scene,) = src.scenes("Totten", 2021, GRID, tmp_path / "work")
    assert scene.valid_fraction == 0.0 and scene.metadata["fourth_band"] == ["cloud"]
    (note,) = src.notes
    assert note.startswith(f"{path}: band 4 flags 100.0% of the file's data pixels")
    assert note in src.explain("Totten", 2021)


def test_unreadable_pixels_name_the_file(tmp_path: Path) -> None:
    """A copy cut short keeps a readable header: the pixel read fails, naming the file."""
    folder = tmp_path / "scenes"
    path = on_grid(folder / DAY)
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.6)])
    with pytest.raises(SourceError, match="cannot read pixels .*truncated or corrupt") as info:
        source(folder).scenes("Totten", 2021, GRID, tmp_path / "work")
    assert str(path) in str(info.value)


def test_explain_says_why_files_were_left_out(tmp_path: Path) -> None:
    folder = tmp_path / "scenes"
    typo = on_grid(folder / "scene.tif")
    (folder / "scene.tif.json").write_text(json.dumps(
        {"sensor": "LC08", "date": "2021-12-05", "shelf": "Toten"}))
    glacier = on_grid(folder / "LC08_TottenGlacier_composite_2021-12-06_uint8.tif")
    le07 = on_grid(folder / "LE07_L1TP_101107_20211205_20211231_02_T1_refl.tif")
    on_grid(folder / "LC08_Totten_composite_2021-01-15_uint8.tif")  # the summer 2020
    src = source(folder)
    assert src.scenes("Totten", 2021, GRID, tmp_path / "work") == []
    lines = "\n".join(src.explain("Totten", 2021))
    assert f"skipped {typo}: shelf 'Toten' of the sidecar field 'shelf'" in lines
    assert f"skipped {glacier}: shelf 'TottenGlacier' of the file name" in lines
    assert lines.count("(did you mean 'Totten'?)") == 2
    assert f"skipped {le07}: LE07 is not used for summer 2021" in lines
    assert "1 file(s) named for Totten or without a shelf name are dated in the summer 2020 " \
           "(November 2020 – March 2021): --year 2020" in lines


def test_a_bad_file_of_another_shelf_does_not_stop_this_one(tmp_path: Path) -> None:
    """Overlap first, bands second: a 1-band file far from the ROI is not this shelf's."""
    folder = tmp_path / "scenes"
    on_grid(folder / DAY)
    far = Affine(30.0, 0, -2_400_000, 0, -30.0, 1_300_000)  # Larsen B
    write_tif(folder / "LC08_L1TP_217106_20211210_20211220_02_T1_thermal.tif",
              np.ones((1, 8, 8), np.uint8), far)
    write_tif(folder / "LC08_Amery_composite_2021-12-05_uint8.tif",
              np.ones((1, 8, 8), np.uint8), GRID.transform)  # named for another shelf
    (scene,) = source(folder).scenes("Totten", 2021, GRID, tmp_path / "work")
    assert scene.acquired == dt.date(2021, 12, 5)


def test_a_cloud_mask_without_its_scene_is_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "scenes"
    on_grid(folder / DAY)
    orphan = write_tif(folder / "LC08_Totten_composite_2021-12-20_cloud.tif",
                       np.zeros((1, *GRID.shape), np.uint8), GRID.transform)
    src = source(folder)
    (scene,) = src.scenes("Totten", 2021, GRID, tmp_path / "work")
    assert scene.acquired == dt.date(2021, 12, 5)
    assert src.skipped == [(orphan, "cloud mask without its scene LC08_Totten_composite_"
                                    "2021-12-20_uint8.tif beside it: not used (restore the "
                                    "scene or remove the mask)")]


@pytest.mark.parametrize(("date", "day"), [
    ("2022-04-01T01:30:00+12:00", dt.date(2022, 3, 31)),  # NZ time: still March in UTC
    ("2021-12-05T23:30:00-05:00", dt.date(2021, 12, 6)),
    ("2021-12-05T10:00:00Z", dt.date(2021, 12, 5)),
    ("2021-12-05", dt.date(2021, 12, 5)),
])
def test_sidecar_with_bom_and_time_zone(tmp_path: Path, date: str, day: dt.date) -> None:
    folder = tmp_path / "scenes"
    on_grid(folder / "scene.tif")
    (folder / "scene.tif.json").write_bytes(
        b"\xef\xbb\xbf" + json.dumps({"sensor": "LC08", "date": date}).encode())
    (scene,) = source(folder).scenes("Totten", 2021, GRID, tmp_path / "work")
    assert scene.acquired == day


def test_one_product_is_used_once_and_sidecars_invent_no_ids(tmp_path: Path) -> None:
    folder = tmp_path / "scenes"
    name = "LC08_L1TP_101107_20211205_20211215_02_T1_refl.tif"
    first = on_grid(folder / name, (10, 10, 10))
    copy = on_grid(folder / "backup" / name, (10, 10, 10))
    on_grid(folder / "my_scene.tif")
    (folder / "my_scene.tif.json").write_text(json.dumps({"sensor": "LC09",
                                                          "date": "2021-12-20"}))
    src = source(folder)
    scenes = {s.sensor: s for s in src.scenes("Totten", 2021, GRID, tmp_path / "work")}
    assert scenes["LC08"].source_ids == ("LC08_L1TP_101107_20211205_20211215_02_T1",)
    assert scenes["LC08"].metadata["files"] == [str(first)]
    assert scenes["LC09"].source_ids == ()
    ((path, why),) = src.skipped
    assert path == copy and why.startswith("the same product (LC08_L1TP_101107_20211205_")
    assert why.endswith(f" as {first}: used once")
