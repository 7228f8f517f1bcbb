"""Multi-temporal consistency of damage density (paper 2.5.2): density, metrics, advection."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy.stats import spearmanr
from typer.testing import CliRunner

from catalog.temporal import (
    CELL_M,
    CELL_PX,
    DensityMap,
    advected,
    concordance,
    density_map,
    pair_metrics,
)
from producer.cli import build_app
from producer.grid import Grid
from producer.velocity import VelocityError, components_on_grid, velocity_layout
from producer.writer import write_products

#: A cell-aligned corner inside Totten's ROI region of EPSG:3031 (multiples of 900 m).
X0, Y0 = 2_250_000.0 - 2_250_000.0 % CELL_M, -1_100_700.0
DAY = dt.date(2021, 1, 1)


def _grid(rows: int, cols: int, dx_px: int = 0, dy_px: int = 0) -> Grid:
    return Grid(Affine(30.0, 0.0, X0 + 30 * dx_px, 0.0, -30.0, Y0 - 30 * dy_px), cols, rows)


def _brute_density(damage: np.ndarray, extent: np.ndarray, grid: Grid) -> dict:
    """Density per global cell, pixel by pixel (the definition, slowly)."""
    counts: dict[tuple[int, int], list[int]] = {}
    rows, cols = damage.shape
    for i in range(rows):
        for j in range(cols):
            if not extent[i, j]:
                continue
            x = grid.transform.c + 30 * j
            y = grid.transform.f - 30 * i
            key = (math.floor(-y / CELL_M), math.floor(x / CELL_M))
            entry = counts.setdefault(key, [0, 0])
            entry[0] += int(damage[i, j])
            entry[1] += 1
    return {k: d / v for k, (d, v) in counts.items() if v >= 0.5 * CELL_PX * CELL_PX}


@settings(max_examples=15, deadline=None)
@given(rows=st.integers(20, 75), cols=st.integers(20, 75), dx=st.integers(0, 29),
       dy=st.integers(0, 29), seed=st.integers(0, 2**16))
def test_density_counts_each_900m_cell_of_the_map(tmp_path_factory: pytest.TempPathFactory,
                                                  rows: int, cols: int, dx: int, dy: int,
                                                  seed: int) -> None:
    """Whatever the map's offset from the 900 m cells, each cell's density is its damage share
    of its valid pixels (kept when at least half of it is valid)."""
    rng = np.random.default_rng(seed)
    damage = rng.random((rows, cols)) < 0.2
    extent = rng.random((rows, cols)) < 0.9
    grid = _grid(rows, cols, dx, dy)
    root = tmp_path_factory.mktemp("density")
    written = write_products(root, "Totten", 2021, ("LC08",), None, damage, extent, grid)
    density = density_map(written.damage_map, "Totten", 2021, DAY)
    want = _brute_density(damage, extent, grid)
    got = {(density.row0 + r, density.col0 + c): density.density[r, c]
           for r, c in zip(*np.nonzero(np.isfinite(density.density)), strict=True)}
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value)


def test_a_map_off_the_30m_multiples_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "odd.tif"
    with rasterio.open(path, "w", driver="GTiff", width=40, height=40, count=1, dtype="uint8",
                       crs="EPSG:3031", nodata=255,
                       transform=Affine(30.0, 0.0, X0 + 15, 0.0, -30.0, Y0)) as ds:
        ds.write(np.zeros((1, 40, 40), np.uint8))
    with pytest.raises(ValueError, match="straddle the 900 m cells"):
        density_map(path, "Totten", 2021, DAY)


def _density(values: np.ndarray, row0: int = 100, col0: int = 200) -> DensityMap:
    return DensityMap("Totten", 2021, DAY, row0, col0, np.asarray(values, float))


def test_metrics_follow_the_papers_formulas() -> None:
    rng = np.random.default_rng(1)
    x = rng.random((6, 7))
    same = pair_metrics(_density(x), _density(x))
    assert (same.cells, same.spearman, same.ccc, same.rmse) == (42, pytest.approx(1.0),
                                                                 pytest.approx(1.0), 0.0)
    offset = pair_metrics(_density(x), _density(x + 0.1))
    assert offset.spearman == pytest.approx(1.0) and offset.rmse == pytest.approx(0.1)
    # Eq. 11 with population moments: 2 cov / (var x + var y + (mean x - mean y)^2)
    assert offset.ccc == pytest.approx(2 * x.var() / (2 * x.var() + 0.01)) and offset.ccc < 1
    y = rng.random((6, 7))
    other = pair_metrics(_density(x), _density(y))
    assert other.spearman == pytest.approx(spearmanr(x.ravel(), y.ravel()).statistic)


def test_only_cells_valid_in_both_maps_count() -> None:
    a = np.arange(20, dtype=float).reshape(4, 5) / 20
    b = a.copy()
    a[0, :] = np.nan
    b[:, 0] = np.nan
    metrics = pair_metrics(_density(a), _density(b, row0=101, col0=200))  # b one row lower
    assert metrics.cells == 3 * 5 - 3  # rows 101..103, 5 columns; b knows none in column 200
    assert pair_metrics(_density(a[:1]), _density(b[:1])).cells == 0  # no common cell
    assert math.isnan(pair_metrics(_density(a[:1]), _density(b[:1])).spearman)


@given(st.lists(st.integers(0, CELL_PX * CELL_PX), min_size=3, max_size=30))
def test_concordance_is_one_only_for_identical_values(values: list[int]) -> None:
    x = np.array(values) / (CELL_PX * CELL_PX)  # densities are shares of a cell's pixels
    if np.ptp(x) == 0:
        assert math.isnan(concordance(x, x))
    else:
        assert concordance(x, x) == pytest.approx(1.0)
        assert concordance(x, x + 0.5) < 1.0


def test_advection_moves_each_cell_by_its_velocity() -> None:
    values = np.arange(1, 13, dtype=float).reshape(3, 4) / 13
    earlier = _density(values)
    east, north = np.full(values.shape, 2 * CELL_M), np.full(values.shape, CELL_M)
    moved = advected(earlier, east, north, 1.0)  # two cells east, one north, in a year
    assert np.isnan(moved.density[2, :]).all() and np.isnan(moved.density[:, :2]).all()
    assert moved.density[:2, 2:] == pytest.approx(values[1:, :2])
    # the first column moves one cell east onto the second, which stays: averaged there
    first_column = np.where(np.arange(4) == 0, CELL_M, 0.0)[None, :].repeat(3, axis=0)
    merged = advected(earlier, first_column, np.zeros(values.shape), 1.0)
    assert merged.density[:, 1] == pytest.approx((values[:, 0] + values[:, 1]) / 2)
    assert np.isnan(merged.density[:, 0]).all()
    # a cell without a known velocity goes nowhere
    east[:] = np.nan
    assert np.isnan(advected(earlier, east, north, 1.0).density).all()


# ---------------------------------------------------------------------------------------------
# The command on a release
# ---------------------------------------------------------------------------------------------


def _velocity_file(path: Path, grid: Grid, vx: float, vy: float, bands: int = 2,
                   crs: str = "EPSG:3031") -> Path:
    """A constant velocity over the grid's area, at 450 m (MEaSUREs' resolution)."""
    left, bottom, right, top = grid.bounds
    width, height = int((right - left) // 450) + 4, int((top - bottom) // 450) + 4
    planes = np.stack([np.full((height, width), vx), np.full((height, width), vy)])[:bands]
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=bands,
                       dtype="float32", crs=crs,
                       transform=Affine(450.0, 0.0, left - 900, 0.0, -450.0, top + 900)) as ds:
        ds.write(planes.astype("float32"))
    return path


def _shifted_release(root: Path) -> Grid:
    """Totten 2019 and 2020 where 2020 is 2019 moved two cells east and one north."""
    cells = 12
    grid = _grid(cells * CELL_PX, cells * CELL_PX)
    rng = np.random.default_rng(7)
    share = rng.random((cells + 4, cells + 4)) * 0.6  # a density per cell, a margin around
    noise = rng.random(((cells + 4) * CELL_PX, (cells + 4) * CELL_PX))
    field = noise < np.kron(share, np.ones((CELL_PX, CELL_PX)))
    extent = np.ones(grid.shape, bool)
    earlier = field[2 * CELL_PX:(cells + 2) * CELL_PX, 2 * CELL_PX:(cells + 2) * CELL_PX]
    # what lies at earlier's cell (r, c) lies at later's (r - 1, c + 2): 2 cells E, 1 N
    later = field[3 * CELL_PX:(cells + 3) * CELL_PX, 0:cells * CELL_PX]
    write_products(root, "Totten", 2019, ("LC08",), None, earlier, extent, grid)
    write_products(root, "Totten", 2020, ("LC08",), None, later, extent, grid)
    write_products(root, "Brunt", 2020, ("LC08",), None, earlier[:CELL_PX, :CELL_PX],
                   extent[:CELL_PX, :CELL_PX], _grid(CELL_PX, CELL_PX))  # one map: no pair
    return grid


def test_lagrangian_correction_recovers_advected_damage(tmp_path: Path) -> None:
    release = tmp_path / "release"
    grid = _shifted_release(release)
    velocity = _velocity_file(tmp_path / "v.tif", grid, 2 * CELL_M, CELL_M)  # m/yr
    table, plot = tmp_path / "pairs.ods", tmp_path / "pairs.png"
    result = CliRunner().invoke(build_app(), [
        "temporal-consistency", str(release), "--velocity", str(velocity), "--out", str(table),
        "--plot", str(plot)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    pairs = pd.read_excel(table, sheet_name="Pairs", engine="odf")
    medians = pd.read_excel(table, sheet_name="Medians", engine="odf")
    (pair,) = pairs.to_dict("records")
    assert (pair["shelf"], pair["earlier"], pair["later"]) == ("Totten", 2019, 2020)
    assert pair["lagrangian_spearman"] == pytest.approx(1.0)
    assert pair["lagrangian_ccc"] == pytest.approx(1.0)
    assert pair["lagrangian_rmse"] == pytest.approx(0.0, abs=1e-12)
    assert pair["lagrangian_cells"] == 10 * 11  # what moved off or in at the edges is left out
    assert pair["spearman"] < 0.5 and pair["rmse"] > 0.1  # uncorrected: another place
    assert list(medians["shelf"]) == ["Totten"]
    assert Image.open(plot).size[0] > 500
    assert "temporally adjacent pairs (L: Lagrangian)" in result.output  # both sets shown


def test_velocity_for_advection_must_be_components_in_epsg3031(tmp_path: Path) -> None:
    grid = _grid(60, 60)
    cells = Grid(Affine(CELL_M, 0.0, X0, 0.0, -CELL_M, Y0), 2, 2)
    vx, vy = components_on_grid(velocity_layout(_velocity_file(tmp_path / "v.tif", grid,
                                                               300.0, -400.0)), cells)
    assert vx == pytest.approx(300.0) and vy == pytest.approx(-400.0)
    with pytest.raises(VelocityError, match="needs the velocity components"):
        components_on_grid(velocity_layout(
            _velocity_file(tmp_path / "speed.tif", grid, 500.0, 0.0, bands=1)), cells)
    with pytest.raises(VelocityError, match="give them in EPSG:3031"):
        components_on_grid(velocity_layout(
            _velocity_file(tmp_path / "v3413.tif", grid, 1.0, 1.0, crs="EPSG:3413")), cells)


def test_a_release_without_a_pair_is_an_error(tmp_path: Path) -> None:
    release = tmp_path / "release"
    write_products(release, "Totten", 2019, ("LC08",), None, np.zeros((60, 60), bool),
                   np.ones((60, 60), bool), _grid(60, 60))
    result = CliRunner().invoke(build_app(), ["temporal-consistency", str(release)])
    assert result.exit_code == 1
    assert "no shelf with two type 1 maps" in " ".join(result.output.split())
