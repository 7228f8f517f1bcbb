"""Multi-temporal consistency of damage density (paper 2.5.2): density, metrics, advection."""

from __future__ import annotations

import dataclasses
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

from catalog.ods import OdsRow, write_metadata_ods
from catalog.temporal import (
    CELL_M,
    CELL_PX,
    DensityMap,
    PairConsistency,
    PairMetrics,
    advected,
    concordance,
    density_map,
    medians_row,
    pair_metrics,
    release_consistency,
    series_pairs,
    shelf_summaries,
)
from producer.cli import build_app
from producer.grid import Grid
from producer.provenance import provenance_path
from producer.spec import METADATA_ODS, TYPE1, build_name
from producer.velocity import VelocityError, components_on_grid, velocity_layout
from producer.writer import write_products
from tests.release_factory import ShelfYear, fixture_provenance

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
    # Brunt has one map: said, so nobody takes its absence from the tables for a pass
    assert _one_line("Brunt: 1 type 1 map, no pair to compare") in _one_line(result.stderr)


def test_narrow_tables_fold_values_instead_of_cutting_them() -> None:
    """At 80 columns the Lagrangian pair row read "0.7…": values must stay whole."""
    import io

    from rich.console import Console

    from catalog.commands import _table

    headers = [f"c{i}" for i in range(11)]
    cells = ["Totten", "2019→2020", *(f"0.{i}23456" for i in range(9))]
    table = _table(*headers)
    table.add_row(*cells)
    console = Console(file=io.StringIO(), width=60)
    console.print(table)
    text = console.file.getvalue()
    assert "…" not in text
    digits = sum(ch.isdigit() for ch in "".join(headers + cells))
    assert sum(ch.isdigit() for ch in text) == digits  # folded onto more lines, none lost


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



# ---------------------------------------------------------------------------------------------
# Review fixes: dates, velocity coverage, the later map's frame, outputs, early option errors
# ---------------------------------------------------------------------------------------------


def _series(root: Path, years: tuple[int, ...], cells: int = 6) -> Grid:
    """Small Totten maps of the same field for ``years`` (no provenance, no catalog)."""
    grid = _grid(cells * CELL_PX, cells * CELL_PX)
    rng = np.random.default_rng(3)
    share = np.kron(rng.random((cells, cells)) * 0.6, np.ones((CELL_PX, CELL_PX)))
    for year in years:
        damage = rng.random(grid.shape) < share
        write_products(root, "Totten", year, ("LC08",), None, damage, np.ones(grid.shape, bool),
                       grid)
    return grid


def _ods_row(year: int, main_date: dt.date | None) -> OdsRow:
    name = build_name(("LC08",), "Totten", year, None, TYPE1)
    return OdsRow("Totten", year, name.filename, name.partner().filename, ("LC08",), None,
                  main_scene_date=main_date)


def _invoke(*args: object) -> object:
    return CliRunner().invoke(build_app(), ["temporal-consistency", *map(str, args)],
                              env={"COLUMNS": "200"})


def _one_line(text: str) -> str:
    """Console text without its whitespace: rich folds long paths anywhere (at 80 columns under
    xdist), so texts are compared with every space and line break taken out of both."""
    return "".join(text.split())


def test_dates_come_from_metadata_ods_and_a_stand_in_is_warned_about(tmp_path: Path) -> None:
    """Without provenance or catalog, metadata.ods's main_scene_date sets Δt; a map with no
    date anywhere takes the stand-in, and stderr says so, naming the map."""
    release = tmp_path / "release"
    _series(release, (2018, 2019, 2020))
    write_metadata_ods(release / METADATA_ODS, [_ods_row(2018, dt.date(2018, 11, 20)),
                                                _ods_row(2019, dt.date(2020, 2, 18)),
                                                _ods_row(2020, None)])
    table = tmp_path / "pairs.csv"
    result = _invoke(release, "--out", table)
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(table).to_dict("records")
    assert [(r["earlier_date"], r["later_date"], r["date_source"]) for r in rows] == [
        ("2018-11-20", "2020-02-18", "metadata.ods"),
        ("2020-02-18", "2021-01-01", "metadata.ods/stand-in")]
    assert rows[0]["dt_years"] == pytest.approx(455 / 365.25, abs=1e-4)
    stderr = _one_line(result.stderr)
    assert stderr.count(_one_line("stand-in date")) == 1  # once, for the one map without a date
    assert _one_line("LC08_Totten_2020_damage_map.tif: Δt uses the stand-in date 2021-01-01") \
        in stderr
    assert _one_line("no main_scene_date for Totten 2020 in metadata.ods") in stderr


def test_dates_are_taken_catalog_then_provenance_then_ods_then_stand_in(tmp_path: Path) -> None:
    """The order of the date sources, and an unreadable provenance record is warned about
    (naming it and the map) instead of being silently ignored."""
    release = tmp_path / "release"
    _series(release, (2017, 2018, 2019, 2020))
    for year in (2018, 2019, 2020):
        name = build_name(("LC08",), "Totten", year, None, TYPE1)
        record = fixture_provenance(ShelfYear("Totten", year, ("LC08",))).to_json()
        provenance_path(release, name).write_text(record if year == 2018 else record[:40])
    write_metadata_ods(release / METADATA_ODS, [_ods_row(y, dt.date(y, 12, 1))
                                                for y in (2017, 2018, 2019)])
    messages: list[str] = []
    pairs = release_consistency(release, {("Totten", 2017): "2017-12-24T10:00:00Z"},
                                warn=messages.append)
    assert [(p.earlier_date, p.later_date, p.date_source) for p in pairs] == [
        (dt.date(2017, 12, 24), dt.date(2018, 12, 10), "catalog/provenance"),
        (dt.date(2018, 12, 10), dt.date(2019, 12, 1), "provenance/metadata.ods"),
        (dt.date(2019, 12, 1), dt.date(2021, 1, 1), "metadata.ods/stand-in")]
    assert len(messages) == 2  # one per map with an unreadable record
    assert "2019_damage_map.tif: provenance record" in messages[0]
    assert "_provenance.json unreadable" in messages[0] and "main_scene_date" in messages[0]
    assert "2020_damage_map.tif: Δt uses the stand-in date 2021-01-01" in messages[1]
    assert "_provenance.json unreadable" in messages[1]


def _velocity_over(path: Path, left: float, right: float, top: float, bottom: float) -> Path:
    """A two-band velocity (500 m/yr east) over a box, NaN nowhere inside it."""
    width, height = round((right - left) / 450), round((top - bottom) / 450)
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=2,
                       dtype="float32", crs="EPSG:3031",
                       transform=Affine(450.0, 0.0, left, 0.0, -450.0, top)) as ds:
        ds.write(np.stack([np.full((height, width), 500.0), np.zeros((height, width))])
                 .astype("float32"))
    return path


def test_a_velocity_that_misses_the_shelf_is_an_error(tmp_path: Path) -> None:
    release = tmp_path / "release"
    _series(release, (2019, 2020))
    far = _velocity_over(tmp_path / "far.tif", X0 - 500_000, X0 - 400_000, Y0, Y0 - 100_000)
    result = _invoke(release, "--velocity", far)
    assert result.exit_code == 1
    message = _one_line(result.stderr)
    assert _one_line(f"--velocity {far}: no velocity at any of the 36 cells of Totten's maps") \
        in message
    assert "Traceback" not in result.output


def test_a_velocity_that_covers_part_of_the_shelf_is_warned_about(tmp_path: Path) -> None:
    release = tmp_path / "release"
    grid = _series(release, (2019, 2020))
    left, bottom, right, top = grid.bounds
    half = _velocity_over(tmp_path / "half.tif", left - 1800, left + 3 * CELL_M, top + 1800,
                          bottom - 1800)  # the western three of six cell columns
    table = tmp_path / "pairs.csv"
    result = _invoke(release, "--velocity", half, "--out", table)
    assert result.exit_code == 0, result.output
    (row,) = pd.read_csv(table).to_dict("records")
    assert 0 < row["lagrangian_velocity_share"] < 0.95
    assert row["lagrangian_cells"] < row["cells"]  # uncovered: out of the Lagrangian set only
    message = _one_line(result.stderr)
    assert _one_line(f"--velocity {half} has a velocity at "
                     f"{row['lagrangian_velocity_share']:.1%} of Totten's cells") in message


def test_advected_cells_land_on_the_later_maps_cells() -> None:
    """The later map reaches further east than the earlier one; ice moving there is compared
    with it, not dropped at the earlier map's edge."""
    values = np.arange(1, 13, dtype=float).reshape(3, 4) / 13
    earlier = _density(values)
    later = _density(np.full((3, 6), np.nan))
    later.density[:, 2:] = values  # what was at earlier column c is at later column c + 2
    east = np.full(values.shape, 2 * CELL_M)
    moved = advected(earlier, east, np.zeros(values.shape), 1.0, frame=later)
    assert (moved.row0, moved.col0, moved.density.shape) == (100, 200, (3, 6))
    assert moved.density[:, 2:] == pytest.approx(values)
    dated = dataclasses.replace(later, year=2022, date=DAY + dt.timedelta(days=365))
    (pair,) = series_pairs([earlier, dated], lambda grid: (np.full(grid.shape, 2 * CELL_M),
                                                           np.zeros(grid.shape)))
    assert pair.corrected is not None and pair.corrected.cells == 12
    assert pair.corrected.rmse == pytest.approx(0.0, abs=1e-9)


def test_a_csv_table_gets_its_medians_beside_it(tmp_path: Path) -> None:
    release = tmp_path / "release"
    _series(release, (2018, 2019, 2020))
    table = tmp_path / "pairs.csv"
    result = _invoke(release, "--out", table)
    assert result.exit_code == 0, result.output
    medians = pd.read_csv(tmp_path / "pairs_medians.csv").to_dict("records")
    assert [(m["shelf"], m["pairs"], m["n_spearman"], m["n_ccc"], m["n_rmse"])
            for m in medians] == [("Totten", 2, 2, 2, 2)]
    pairs = pd.read_csv(table)
    assert medians[0]["rmse"] == pytest.approx(pairs["rmse"].median())
    assert _one_line(f"wrote {tmp_path / 'pairs_medians.csv'}") in _one_line(result.output)


@pytest.mark.parametrize("case", ["xlsx", "speed", "epsg3413"])
def test_option_errors_come_before_any_map_is_read(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   case: str) -> None:
    calls: list[object] = []
    monkeypatch.setattr("catalog.temporal.release_consistency",
                        lambda *args, **kwargs: calls.append(args) or [])
    grid = _grid(60, 60)
    args: list[object] = [tmp_path]
    if case == "xlsx":
        args += ["--out", tmp_path / "t.xlsx"]
        expected = "table format must be .csv or .ods"
    elif case == "speed":
        args += ["--velocity", _velocity_file(tmp_path / "s.tif", grid, 500.0, 0.0, bands=1)]
        expected = "needs the velocity components"
    else:
        args += ["--velocity", _velocity_file(tmp_path / "v.tif", grid, 1.0, 1.0,
                                              crs="EPSG:3413")]
        expected = "give them in EPSG:3031"
    result = _invoke(*args)
    assert result.exit_code == 2  # bad usage: refused before any work
    assert _one_line(expected) in _one_line(result.output) and calls == []


def test_each_median_counts_its_own_pairs() -> None:
    """A pair without r_s (NaN) leaves r_s's median only; the counts say so."""
    metrics = [PairMetrics(100, s, s - 0.05, r) for s, r in
               ((0.8, 0.1), (0.9, 0.05), (0.7, 0.2), (math.nan, 0.3))]
    pairs = [PairConsistency("Totten", 2000 + i, 2001 + i, 1.0, m, m)
             for i, m in enumerate(metrics)]
    (summary,) = shelf_summaries(pairs)
    assert summary.plain == pytest.approx((0.8, 0.75, 0.15))
    assert summary.plain_counts == (3, 3, 4) and summary.corrected_counts == (3, 3, 4)
    row = medians_row(summary)
    assert (row["pairs"], row["n_spearman"], row["n_ccc"], row["n_rmse"],
            row["lagrangian_n_spearman"]) == (4, 3, 3, 4, 3)


def test_a_shelf_folder_is_not_a_release_root(tmp_path: Path) -> None:
    release = tmp_path / "release"
    _series(release, (2019, 2020), cells=2)
    result = _invoke(release / "Totten")
    assert result.exit_code == 1
    message = _one_line(result.output)
    assert _one_line("Totten: not a release root") in message
    assert _one_line("looks like a shelf folder") in message
    assert _one_line(f"give its parent, {release.resolve()}") in message


def test_a_truncated_map_is_reported_as_unreadable(tmp_path: Path) -> None:
    written = write_products(tmp_path, "Totten", 2021, ("LC08",), None,
                             np.zeros((60, 60), bool), np.ones((60, 60), bool), _grid(60, 60))
    path = written.damage_map
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ValueError, match="cannot be read as a GeoTIFF") as raised:
        density_map(path, "Totten", 2021, DAY)
    assert str(path) in str(raised.value) and "transform" not in str(raised.value)
