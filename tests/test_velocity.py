"""An ice-velocity product guiding the main scene of a merged year (paper 2.4.1)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import CRS

from producer.grid import Grid
from producer.merge import Candidate, plan_merge
from producer.velocity import VelocityError, speed_on_grid, velocity_layout

SHAPE = (20, 30)
ROI = np.ones(SHAPE, bool)
EXTENT = np.zeros(SHAPE, bool)
EXTENT[5:15, 5:25] = True
#: Slow ice over most of the shelf region, a fast-flowing stream in its last five columns.
SPEED = np.full(SHAPE, 10.0)
SPEED[:, 20:25] = 1000.0


def _scene(name: str, day: int, cols: slice) -> Candidate:
    usable = np.zeros(SHAPE, bool)
    usable[:, cols] = True
    return Candidate(name, dt.date(2021, 12, 1) + dt.timedelta(days=day), usable)


#: "slow" sees 70 % of the shelf region but none of the stream; "stream" 60 % with all of it.
SLOW, STREAM = _scene("slow", 0, slice(0, 19)), _scene("stream", 3, slice(13, 30))


def test_without_velocity_the_larger_coverage_is_the_main_scene() -> None:
    plan = plan_merge([SLOW, STREAM], ROI, EXTENT)
    assert plan.main == 0 and plan.flow_fractions == ()


def test_velocity_makes_the_scene_covering_fast_ice_the_main_scene() -> None:
    plan = plan_merge([SLOW, STREAM], ROI, EXTENT, speed=SPEED)
    assert plan.main == 1 and plan.order == (1, 0)
    flow = 10 * 15 + 1000 * 5  # per row of the shelf region
    assert plan.flow_fractions == pytest.approx((14 * 10 / flow, (7 * 10 + 5 * 1000) / flow))
    # the shelf region is still covered in full, the stream scene first
    assert set(np.unique(plan.index[EXTENT])) == {0, 1}
    assert (plan.index[:, 13:30] == 1).all()


def test_coverage_still_counts_beside_flow() -> None:
    """A scene seeing a sliver of the stream but little of the shelf does not win."""
    sliver = _scene("sliver", 1, slice(19, 22))  # 15 % of the region, 40 % of its flow
    plan = plan_merge([SLOW, sliver, STREAM], ROI, EXTENT, speed=SPEED)
    assert plan.main == 2


@settings(max_examples=30, deadline=None)
@given(scale=st.floats(1e-3, 1e3), offset_col=st.integers(5, 24))
def test_the_unit_of_speed_does_not_change_the_choice(scale: float, offset_col: int) -> None:
    """m/yr or m/day: only relative speeds matter."""
    speed = SPEED.copy()
    speed[:, offset_col] = 300.0
    plans = [plan_merge([SLOW, STREAM], ROI, EXTENT, speed=s) for s in (speed, speed * scale)]
    assert plans[0].main == plans[1].main
    assert plans[0].flow_fractions == pytest.approx(plans[1].flow_fractions)


def test_full_coverage_scene_stays_the_map_whatever_the_speed() -> None:
    full = _scene("full", 9, slice(None))
    plan = plan_merge([STREAM, full], ROI, EXTENT, speed=SPEED)
    assert plan.single_scene and plan.main == 1


def test_negative_speed_is_refused() -> None:
    with pytest.raises(ValueError, match="negative or non-finite"):
        plan_merge([SLOW, STREAM], ROI, EXTENT, speed=-SPEED)


# ---------------------------------------------------------------------------------------------
# Reading velocity products onto the 30 m grid
# ---------------------------------------------------------------------------------------------

#: A 30 m grid of 60 × 90 px inside the 450 m products below.
GRID = Grid(Affine(30.0, 0.0, 993_000.0, 0.0, -30.0, -491_000.0), 90, 60)
COARSE = Affine(450.0, 0.0, 990_000.0, 0.0, -450.0, -490_000.0)


def _geotiff(path: Path, bands: np.ndarray, nodata: float | None = None) -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=bands.shape[2], height=bands.shape[1],
                       count=bands.shape[0], dtype="float32", crs="EPSG:3031",
                       transform=COARSE, nodata=nodata) as ds:
        ds.write(bands.astype("float32"))
    return path


def _measures_netcdf(path: Path, vx: np.ndarray, vy: np.ndarray,
                     variables: tuple[str, str] = ("VX", "VY")) -> Path:
    """A NetCDF laid out as MEaSUREs distributes its velocity (CF grid mapping, x/y in m)."""
    crs = CRS.from_epsg(3031)
    rows, cols = vx.shape
    x = COARSE.c + 450.0 * (np.arange(cols) + 0.5)
    y = COARSE.f - 450.0 * (np.arange(rows) + 0.5)
    mapping = {"grid_mapping": "polar_stereographic"}
    xr.Dataset(
        {variables[0]: (("y", "x"), vx.astype("f4"), mapping),
         variables[1]: (("y", "x"), vy.astype("f4"), mapping),
         "polar_stereographic": ((), 0, {**crs.to_cf(), "crs_wkt": crs.to_wkt()})},
        coords={"x": ("x", x, {"standard_name": "projection_x_coordinate", "units": "m"}),
                "y": ("y", y, {"standard_name": "projection_y_coordinate", "units": "m"})},
    ).to_netcdf(path, engine="scipy")
    return path


def _read(path: Path) -> np.ndarray:
    with speed_on_grid(velocity_layout(path), GRID) as rows:
        return np.vstack([rows(0, 25), rows(25, 60)])


def test_a_speed_raster_is_resampled_onto_the_grid(tmp_path: Path) -> None:
    speed = np.full((1, 20, 20), 250.0)
    speed[0, :, 10:] = 750.0  # a step in speed: bilinear in between, exact away from it
    read = _read(_geotiff(tmp_path / "speed.tif", speed))
    assert read.shape == GRID.shape and read.dtype == np.float32
    assert read[:, :5] == pytest.approx(250.0) and read.min() >= 250.0 and read.max() <= 750.0


def test_nodata_weighs_nothing(tmp_path: Path) -> None:
    speed = np.full((1, 20, 20), 400.0)
    speed[0, :, :12] = -9999.0
    read = _read(_geotiff(tmp_path / "speed.tif", speed, nodata=-9999.0))
    assert (read[:, :20] == 0).all() and read[:, -1] == pytest.approx(400.0)


def test_velocity_components_give_the_speed(tmp_path: Path) -> None:
    vx, vy = np.full((20, 20), 300.0), np.full((20, 20), -400.0)
    from_tif = _read(_geotiff(tmp_path / "vxvy.tif", np.stack([vx, vy])))
    from_nc = _read(_measures_netcdf(tmp_path / "antarctica_ice_velocity_450m_v2.nc", vx, vy))
    assert from_tif == pytest.approx(500.0) and from_nc == pytest.approx(500.0)


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: d / "missing.tif", "no such file"),
    (lambda d: (d / "notes.tif").write_text("not a raster") and d / "notes.tif",
     "not a raster GDAL can read"),
    (lambda d: _geotiff(d / "rgb.tif", np.ones((3, 4, 4))), "3 bands"),
    (lambda d: _measures_netcdf(d / "v.nc", np.ones((4, 4)), np.ones((4, 4)), ("VX", "STDX")),
     "hold no VY"),
])
def test_unusable_velocity_files_are_named(tmp_path: Path, make, message: str) -> None:  # noqa: ANN001
    path = make(tmp_path)
    with pytest.raises(VelocityError, match=message) as err:
        velocity_layout(path)
    assert str(path) in str(err.value)


def test_a_velocity_file_without_georeferencing_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plain.tif"
    with rasterio.open(path, "w", driver="GTiff", width=4, height=4, count=1,
                       dtype="float32") as ds:
        ds.write(np.ones((1, 4, 4), "float32"))
    with pytest.raises(VelocityError, match="not georeferenced"):
        velocity_layout(path)
