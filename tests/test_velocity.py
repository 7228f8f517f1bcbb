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
from producer.velocity import (
    VelocityError,
    VelocityLayout,
    components_on_grid,
    crs_difference,
    speed_on_grid,
    velocity_layout,
    velocity_source,
)

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


#: MEaSUREs' own grid mapping (NSIDC-0484 v2): CF polar stereographic 71°S on the WGS84
#: semi-axes, no WKT; GDAL reads it as an unnamed datum on the WGS84 ellipsoid.
MEASURES_MAPPING = {
    "grid_mapping_name": "polar_stereographic", "latitude_of_projection_origin": -90.0,
    "standard_parallel": -71.0, "straight_vertical_longitude_from_pole": 0.0,
    "false_easting": 0.0, "false_northing": 0.0, "semi_major_axis": 6378137.0,
    "inverse_flattening": 298.257223563}


def _netcdf(path: Path, variables: dict[str, np.ndarray],
            mapping: dict[str, object] | None = None) -> Path:
    """A classic NetCDF of 2-D variables on the 450 m grid ``COARSE`` (CF grid mapping, x/y in
    m); by default the mapping embeds EPSG:3031's WKT too."""
    if mapping is None:
        crs = CRS.from_epsg(3031)
        mapping = {**crs.to_cf(), "crs_wkt": crs.to_wkt()}
    rows, cols = next(iter(variables.values())).shape
    x = COARSE.c + 450.0 * (np.arange(cols) + 0.5)
    y = COARSE.f - 450.0 * (np.arange(rows) + 0.5)
    attrs = {"grid_mapping": "polar_stereographic"}
    xr.Dataset(
        {**{name: (("y", "x"), values.astype("f4"), attrs) for name, values in variables.items()},
         "polar_stereographic": ((), 0, mapping)},
        coords={"x": ("x", x, {"standard_name": "projection_x_coordinate", "units": "m"}),
                "y": ("y", y, {"standard_name": "projection_y_coordinate", "units": "m"})},
    ).to_netcdf(path, engine="scipy")
    return path


def _measures_netcdf(path: Path, vx: np.ndarray, vy: np.ndarray,
                     variables: tuple[str, str] = ("VX", "VY")) -> Path:
    """A NetCDF laid out as MEaSUREs distributes its velocity (CF grid mapping, x/y in m)."""
    return _netcdf(path, {variables[0]: vx, variables[1]: vy})


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
     "hold no VY .* and no V"),
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


# ---------------------------------------------------------------------------------------------
# Damaged files: named VelocityErrors, never GDAL's own exceptions
# ---------------------------------------------------------------------------------------------

def _truncated(path: Path, share: float = 1 / 3) -> Path:
    """``path`` cut to ``share`` of its size, as an interrupted download leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * share)])
    return path


def _truncated_measures(tmp_path: Path) -> Path:
    """A classic NetCDF (MEaSUREs' format) cut to a third: its y coordinates are lost, GDAL
    opens it with a geotransform of y pixel size 0."""
    vx = np.full((80, 100), 300.0)
    return _truncated(_measures_netcdf(tmp_path / "cut.nc", vx, vx.copy()))


def test_a_truncated_netcdf_is_refused_before_any_year(tmp_path: Path) -> None:
    path = _truncated_measures(tmp_path)
    with pytest.raises(VelocityError, match="cannot be inverted") as err:
        velocity_layout(path)
    assert str(path) in str(err.value)


def test_a_truncated_geotiff_is_refused_before_any_year(tmp_path: Path) -> None:
    path = _truncated(_geotiff(tmp_path / "cut.tif", np.ones((1, 200, 200))), 0.5)
    with pytest.raises(VelocityError, match="cannot be read") as err:
        velocity_layout(path)
    assert str(path) in str(err.value)


def test_gdal_errors_while_reading_name_the_file(tmp_path: Path) -> None:
    """Whatever slipped past the layout's checks: GDAL's CPLE_* errors (no RasterioError, so
    uncaught by ``produce``) become VelocityErrors naming the file."""
    path = _truncated_measures(tmp_path)
    name = f'NETCDF:"{path}":VX'
    layout = VelocityLayout(path, (name, f'NETCDF:"{path}":VY'), (1,))
    with pytest.raises(VelocityError, match="cannot be read") as err, \
            speed_on_grid(layout, GRID) as rows:
        rows(0, 10)
    assert str(path) in str(err.value)
    with pytest.raises(VelocityError, match="cannot be read") as err:
        components_on_grid(layout, GRID)
    assert str(path) in str(err.value)


def test_the_speed_file_is_opened_only_when_read(tmp_path: Path) -> None:
    """A plan that needs no speed (a full-coverage scene) does not touch the file."""
    path = _geotiff(tmp_path / "speed.tif", np.full((1, 20, 20), 100.0))
    layout = velocity_layout(path)
    path.unlink()
    with speed_on_grid(layout, GRID) as rows, pytest.raises(VelocityError, match=str(path)):
        rows(0, 10)


# ---------------------------------------------------------------------------------------------
# Negative one-band speeds: an undeclared fill or a lone component
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("values", [
    np.where(np.arange(20) < 10, -9999.0, 50.0) * np.ones((20, 1)),  # undeclared -9999 fill
    np.linspace(-800.0, 800.0, 400).reshape(20, 20),  # a signed vx band given alone
])
def test_negative_one_band_speed_is_refused(tmp_path: Path, values: np.ndarray) -> None:
    path = _geotiff(tmp_path / "speed.tif", values[None])
    with pytest.raises(VelocityError, match="negative values in a one-band speed raster: "
                                            "declare its nodata.*or give both vx and vy"
                       ) as err, speed_on_grid(velocity_layout(path), GRID) as rows:
        rows(0, 60)
    assert str(path) in str(err.value)


def test_negative_components_make_a_speed(tmp_path: Path) -> None:
    vx, vy = np.full((20, 20), -300.0), np.full((20, 20), -400.0)
    assert _read(_geotiff(tmp_path / "vxvy.tif", np.stack([vx, vy]))) == pytest.approx(500.0)


# ---------------------------------------------------------------------------------------------
# NetCDF variants: speed only, subdataset syntax, MEaSUREs' own grid mapping
# ---------------------------------------------------------------------------------------------

def test_a_speed_only_netcdf_reads_its_v_variable(tmp_path: Path) -> None:
    """ITS_LIVE mosaics and speed-only MEaSUREs products: ``v`` (any case) beside its error."""
    speed = np.full((20, 20), 500.0)
    path = _netcdf(tmp_path / "itslive.nc", {"v": speed, "v_error": np.full((20, 20), 5.0)})
    layout = velocity_layout(path)
    assert not layout.components and layout.datasets[0].endswith(":v")
    assert _read(path) == pytest.approx(500.0)
    with pytest.raises(VelocityError, match="speed only"):
        components_on_grid(layout, GRID)


def test_components_are_preferred_to_the_speed_variable(tmp_path: Path) -> None:
    vx, vy = np.full((20, 20), 300.0), np.full((20, 20), -400.0)
    path = _netcdf(tmp_path / "itslive.nc", {"v": np.full((20, 20), 1.0), "vx": vx, "vy": vy})
    layout = velocity_layout(path)
    assert layout.components and _read(path) == pytest.approx(500.0)


@pytest.mark.parametrize("quoted", [True, False])
def test_a_netcdf_variable_in_gdal_subdataset_syntax(tmp_path: Path, quoted: bool) -> None:
    path = _netcdf(tmp_path / "v.nc", {"v": np.full((20, 20), 500.0),
                                       "v_error": np.full((20, 20), 5.0)})
    argument = f'NETCDF:"{path}":v_error' if quoted else f"NETCDF:{path}:v_error"
    assert velocity_source(argument) == (path, "v_error")
    assert _read(argument) == pytest.approx(5.0)


@pytest.mark.parametrize(("variable", "message"), [
    ("VX", "one velocity component"), ("w", "no variable 'w'")])
def test_unusable_netcdf_variables_are_named(tmp_path: Path, variable: str, message: str
                                             ) -> None:
    path = _measures_netcdf(tmp_path / "v.nc", np.ones((4, 4)), np.ones((4, 4)))
    with pytest.raises(VelocityError, match=message) as err:
        velocity_layout(f'NETCDF:"{path}":{variable}')
    assert str(path) in str(err.value)
    with pytest.raises(VelocityError, match="no such file"):
        velocity_layout(f'NETCDF:"{tmp_path / "missing.nc"}":v')


def test_measures_own_grid_mapping_is_epsg3031(tmp_path: Path) -> None:
    """MEaSUREs' NetCDF has only the CF polar-stereographic mapping (no WKT): GDAL reads an
    unnamed datum on the WGS84 ellipsoid, the axes of EPSG:3031 all the same."""
    vx, vy = np.full((20, 20), 300.0), np.full((20, 20), -400.0)
    path = _netcdf(tmp_path / "antarctica_ice_velocity_450m_v2.nc", {"VX": vx, "VY": vy},
                   MEASURES_MAPPING)
    with rasterio.open(f'NETCDF:"{path}":VX') as src:
        assert src.crs != rasterio.crs.CRS.from_epsg(3031)  # what hid it: a WKT in the file
    got_vx, got_vy = components_on_grid(velocity_layout(path), GRID)
    assert got_vx == pytest.approx(300.0) and got_vy == pytest.approx(-400.0)
    assert _read(path) == pytest.approx(500.0)


def test_a_grid_mapping_stored_in_single_precision_is_epsg3031(tmp_path: Path) -> None:
    """inverse_flattening as float32 reads 298.25723: refused before as "not EPSG:3031"."""
    single = {k: np.float32(v) if isinstance(v, float) else v
              for k, v in MEASURES_MAPPING.items()}
    vx, vy = np.full((20, 20), 300.0), np.full((20, 20), -400.0)
    path = _netcdf(tmp_path / "v32.nc", {"VX": vx, "VY": vy}, single)
    got_vx, got_vy = components_on_grid(velocity_layout(path), GRID)
    assert got_vx == pytest.approx(300.0) and got_vy == pytest.approx(-400.0)
    assert crs_difference("EPSG:3976", "EPSG:3031") == "lat_ts -70 vs -71"  # still told apart


def test_components_in_another_crs_say_what_differs(tmp_path: Path) -> None:
    path = tmp_path / "v3976.tif"
    with rasterio.open(path, "w", driver="GTiff", width=20, height=20, count=2, dtype="float32",
                       crs="EPSG:3976", transform=COARSE) as ds:
        ds.write(np.ones((2, 20, 20), "float32"))
    with pytest.raises(VelocityError, match=r"components in EPSG:3976, not EPSG:3031 "
                                            r"\(lat_ts -70 vs -71\)"):
        components_on_grid(velocity_layout(path), GRID)
    assert crs_difference("EPSG:32749", "EPSG:3031") == "projection utm vs stere"
    assert crs_difference("EPSG:3031", "EPSG:3031") is None
