"""Multi-temporal consistency of each shelf's damage maps (paper 2.5.2 and 3.2.5, Tables 6–7).

Cloud cover makes the acquisition dates of the maps differ from year to year, and illumination,
geometry and surface state differ with them, so a change between two maps is partly a change
of the data. The paper measures how consistent temporally adjacent maps are, assuming damage
mostly changes gradually:

- **Damage density** on a 900 m grid: for each cell, the damage share of its 30 × 30 pixels of
  the type-1 map (no resampling). We count the share of the cell's *valid* pixels and keep a
  cell when at least ``MIN_VALID_SHARE`` of it lies on the effective extent (the paper does not
  say how it treats cells cut by the extent's edge). Cells are fixed in EPSG:3031 (multiples
  of 900 m), so maps on different grids of a shelf share them.
- **Pairs**: each map with the next map of the same shelf (the series may skip years); Δt is
  the time between their main scenes' acquisition dates (the catalog's item datetimes, else
  the provenance records, else 1 January of each summer's second calendar year).
- **Metrics** over the cells valid in both maps: Spearman's rank correlation r_s (Eq. 10;
  average ranks for ties), Lin's concordance correlation coefficient ρ_c (Eq. 11, population
  moments) and the RMSE of the densities (Eq. 12). Each shelf is summarised by the medians over
  its pairs, as in the paper's tables.
- **Lagrangian correction** (Eq. 13) with an ice-velocity product (``--velocity``: MEaSUREs'
  VX/VY, or a two-band vx/vy raster in EPSG:3031): the earlier map's cells are advected to the
  later map's time, x + v(x)·Δt, with v sampled bilinearly at the cell centres. A cell moved
  onto the same target as others is averaged with them; a target no cell reaches, and cells
  moved off the map or without a known velocity, are left out — as the paper notes for Dotson,
  where ice flowing out of the extent shrinks the compared set. Both the corrected and the
  uncorrected metrics are reported (Tables 6 and 7).

Reading is strip by strip (rows of whole cells), so memory holds the 900 m grid, not the map.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio
from affine import Affine
from numpy.typing import NDArray
from rasterio.windows import Window

from producer.grid import Grid
from producer.spec import ENCODING, TYPE1

if TYPE_CHECKING:
    from catalog.release import ShelfYearFiles

#: Side of the density cells (paper 2.5.2), in metres.
CELL_M = 900.0
#: A cell's density counts when at least this share of its pixels is valid (on the extent).
MIN_VALID_SHARE = 0.5
#: Pixels per cell side at the products' resolution.
CELL_PX = round(CELL_M / ENCODING.resolution)
#: Cell rows read at once (a strip of CELL_PX × STRIP_CELLS pixel rows).
STRIP_CELLS = 16
#: Fewest common cells for which the metrics are computed.
MIN_CELLS = 3

DAMAGE = next(c.value for c in TYPE1.classes if c.name == "damage")


@dataclass(frozen=True)
class DensityMap:
    """A map's damage density on the fixed 900 m cells of EPSG:3031 (NaN: not counted)."""

    shelf: str
    year: int
    date: dt.date
    """The main scene's acquisition date (what Δt is measured between)."""
    row0: int
    """Global row of ``density[0]``: cell rows are ``floor(-y / CELL_M)``."""
    col0: int
    """Global column of ``density[:, 0]``: ``floor(x / CELL_M)``."""
    density: NDArray[np.float64]

    @property
    def cell_grid(self) -> Grid:
        """The cells as a grid (for sampling a velocity product at their centres)."""
        rows, cols = self.density.shape
        transform = Affine(CELL_M, 0.0, self.col0 * CELL_M, 0.0, -CELL_M, -self.row0 * CELL_M)
        return Grid(transform, cols, rows)


@dataclass(frozen=True)
class PairMetrics:
    """Agreement of two density maps over their common cells (NaN: too few cells)."""

    cells: int
    spearman: float
    ccc: float
    rmse: float


@dataclass(frozen=True)
class PairConsistency:
    """One temporally adjacent pair of a shelf's maps."""

    shelf: str
    earlier: int
    later: int
    dt_years: float
    plain: PairMetrics
    corrected: PairMetrics | None = None
    """With the earlier map advected to the later one's date (None: no velocity given)."""

    def as_row(self) -> dict[str, object]:
        """One table row."""
        row: dict[str, object] = {"shelf": self.shelf, "earlier": self.earlier,
                                  "later": self.later, "dt_years": round(self.dt_years, 4)}
        for prefix, metrics in (("", self.plain), ("lagrangian_", self.corrected)):
            if metrics is None:
                continue
            row |= {f"{prefix}cells": metrics.cells, f"{prefix}spearman": metrics.spearman,
                    f"{prefix}ccc": metrics.ccc, f"{prefix}rmse": metrics.rmse}
        return row


# ---------------------------------------------------------------------------------------------
# Density
# ---------------------------------------------------------------------------------------------


def _cell_offsets(transform: Affine, path: Path) -> tuple[int, int]:
    """(rows, columns) of pixels between the top-left cell corner and the map's origin; refuses
    a map whose pixels are not 30 m squares on 30 m multiples (they would straddle cells)."""
    res = ENCODING.resolution
    x0, y0 = transform.c / res, -transform.f / res
    if (transform.a, transform.e, transform.b, transform.d) != (res, -res, 0.0, 0.0) or \
            not (float(x0).is_integer() and float(y0).is_integer()):
        raise ValueError(f"{path}: not on a north-up {res:g} m grid aligned to {res:g} m "
                         f"multiples (transform {tuple(transform)[:6]}); its pixels would "
                         f"straddle the {CELL_M:g} m cells")
    return int(y0) % CELL_PX, int(x0) % CELL_PX


def _cell_counts(block: NDArray[np.uint8], nodata: int
                 ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(damage, valid) pixel counts per cell of a block of whole cells (padding is nodata)."""
    rows, cols = block.shape[0] // CELL_PX, block.shape[1] // CELL_PX
    valid = block != nodata
    damage = valid & (block == DAMAGE)
    shape = (rows, CELL_PX, cols, CELL_PX)
    return (damage.reshape(shape).sum(axis=(1, 3), dtype=np.int64),
            valid.reshape(shape).sum(axis=(1, 3), dtype=np.int64))


def density_map(path: Path, shelf: str, year: int, date: dt.date) -> DensityMap:
    """The damage density of a type-1 map on the 900 m cells, read by strips of cell rows."""
    with rasterio.open(path) as src:
        top, left = _cell_offsets(src.transform, path)
        # padding around the map, and the map's own nodata, are not counted (type 1: 255)
        fill = int(src.nodata) if src.nodata is not None else int(TYPE1.nodata or 255)
        cols = math.ceil((left + src.width) / CELL_PX)
        rows = math.ceil((top + src.height) / CELL_PX)
        damage = np.zeros((rows, cols), np.int64)
        valid = np.zeros((rows, cols), np.int64)
        for first in range(0, rows, STRIP_CELLS):
            last = min(rows, first + STRIP_CELLS)
            r0 = max(0, first * CELL_PX - top)
            r1 = min(src.height, last * CELL_PX - top)
            block = np.full(((last - first) * CELL_PX, cols * CELL_PX), fill, np.uint8)
            pixels = src.read(1, window=Window(0, r0, src.width, r1 - r0))
            offset = r0 + top - first * CELL_PX
            block[offset:offset + pixels.shape[0], left:left + src.width] = pixels
            damage[first:last], valid[first:last] = _cell_counts(block, fill)
        x0, y0 = src.transform.c, src.transform.f
    counted = valid >= MIN_VALID_SHARE * CELL_PX * CELL_PX
    density = np.full(damage.shape, np.nan)
    density[counted] = damage[counted] / valid[counted]
    row0 = round(-y0 / ENCODING.resolution) // CELL_PX
    col0 = round(x0 / ENCODING.resolution) // CELL_PX
    return DensityMap(shelf, year, date, row0, col0, density)


# ---------------------------------------------------------------------------------------------
# Metrics and advection (pure)
# ---------------------------------------------------------------------------------------------


def _aligned(a: DensityMap, b: DensityMap) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The densities of both maps on the cells both have, flattened (NaN kept)."""
    r0, c0 = max(a.row0, b.row0), max(a.col0, b.col0)
    r1 = min(a.row0 + a.density.shape[0], b.row0 + b.density.shape[0])
    c1 = min(a.col0 + a.density.shape[1], b.col0 + b.density.shape[1])
    if r1 <= r0 or c1 <= c0:
        return np.empty(0), np.empty(0)

    def take(m: DensityMap) -> NDArray[np.float64]:
        return m.density[r0 - m.row0:r1 - m.row0, c0 - m.col0:c1 - m.col0].ravel()

    return take(a), take(b)


def concordance(x: NDArray[np.float64], y: NDArray[np.float64]) -> float:
    """Lin's concordance correlation coefficient (Eq. 11, population moments); NaN when both
    are constant and equal (no variation to agree on)."""
    mx, my = x.mean(), y.mean()
    flat_x, flat_y = np.ptp(x) == 0, np.ptp(y) == 0  # exactly 0, not a rounding residue
    vx, vy = 0.0 if flat_x else x.var(), 0.0 if flat_y else y.var()
    cov = 0.0 if flat_x or flat_y else ((x - mx) * (y - my)).mean()
    denominator = vx + vy + (0.0 if flat_x and flat_y and x[0] == y[0] else (mx - my) ** 2)
    return float(2 * cov / denominator) if denominator > 0 else math.nan


def pair_metrics(a: DensityMap, b: DensityMap) -> PairMetrics:
    """r_s, ρ_c and RMSE of two density maps over the cells valid in both."""
    from scipy.stats import spearmanr

    x, y = _aligned(a, b)
    both = np.isfinite(x) & np.isfinite(y)
    x, y = x[both], y[both]
    cells = int(x.size)
    if cells < MIN_CELLS:
        return PairMetrics(cells, math.nan, math.nan, math.nan)
    rmse = float(np.sqrt(np.mean((x - y) ** 2)))
    constant = np.ptp(x) == 0 or np.ptp(y) == 0
    rank = math.nan if constant else float(spearmanr(x, y).statistic)
    return PairMetrics(cells, rank, concordance(x, y), rmse)


def advected(earlier: DensityMap, vx: NDArray[np.floating], vy: NDArray[np.floating],
             dt_years: float) -> DensityMap:
    """The earlier map with each cell moved by its velocity over ``dt_years`` (Eq. 13): the
    cell centre x goes to x + v(x)·Δt, its density to the cell that point falls in (averaged
    where several arrive). ``vx``, ``vy`` are per year along EPSG:3031's x and y axes, sampled
    at the cell centres (``earlier.cell_grid``)."""
    rows, cols = earlier.density.shape
    r, c = np.mgrid[0:rows, 0:cols]
    x = (earlier.col0 + c + 0.5) * CELL_M + vx * dt_years
    y = -(earlier.row0 + r + 0.5) * CELL_M + vy * dt_years
    moved = np.isfinite(earlier.density) & np.isfinite(x) & np.isfinite(y)
    target_r = np.floor(-y[moved] / CELL_M).astype(np.int64) - earlier.row0
    target_c = np.floor(x[moved] / CELL_M).astype(np.int64) - earlier.col0
    inside = (target_r >= 0) & (target_r < rows) & (target_c >= 0) & (target_c < cols)
    flat = target_r[inside] * cols + target_c[inside]
    total = np.bincount(flat, weights=earlier.density[moved][inside], minlength=rows * cols)
    count = np.bincount(flat, minlength=rows * cols)
    density = np.full(rows * cols, np.nan)
    np.divide(total, count, out=density, where=count > 0)
    return dataclasses.replace(earlier, density=density.reshape(rows, cols))


# ---------------------------------------------------------------------------------------------
# A release
# ---------------------------------------------------------------------------------------------

#: Velocity components (vx, vy) on a grid, e.g. ``producer.velocity.components_on_grid``.
Velocity = Callable[[Grid], tuple[NDArray[np.floating], NDArray[np.floating]]]


def summer_date(year: int) -> dt.date:
    """The date standing for a summer without a known acquisition date (mid-summer)."""
    return dt.date(year + 1, 1, 1)


def series_pairs(maps: Sequence[DensityMap], velocity: Velocity | None = None
                 ) -> list[PairConsistency]:
    """Metrics of each temporally adjacent pair of one shelf's density maps (sorted by year)."""
    ordered = sorted(maps, key=lambda m: m.year)
    pairs = []
    for earlier, later in zip(ordered, ordered[1:], strict=False):
        dt_years = (later.date - earlier.date).days / 365.25
        corrected = None
        if velocity is not None:
            vx, vy = velocity(earlier.cell_grid)
            corrected = pair_metrics(advected(earlier, vx, vy, dt_years), later)
        pairs.append(PairConsistency(earlier.shelf, earlier.year, later.year, dt_years,
                                     pair_metrics(earlier, later), corrected))
    return pairs


def release_consistency(release_dir: Path, dates: Mapping[tuple[str, int], str] | None = None,
                        velocity: Velocity | None = None, shelves: Iterable[str] = (),
                        progress: Callable[[int, int], None] | None = None
                        ) -> list[PairConsistency]:
    """The pairs of every shelf of a release (or of ``shelves``) with at least two type-1 maps.

    ``dates`` maps (shelf, year) to the main scene's ISO date (e.g. the catalog's item
    datetimes); else the provenance record's, else ``summer_date``."""
    from catalog.release import scan_release

    wanted = set(shelves)
    maps = [f for f in scan_release(release_dir) if f.damage_map is not None
            and (not wanted or f.name.shelf in wanted)]
    densities: dict[str, list[DensityMap]] = {}
    for done, found in enumerate(maps, start=1):
        assert found.damage_map is not None
        key = (found.name.shelf, found.name.year)
        date = _date_of(found, (dates or {}).get(key))
        densities.setdefault(key[0], []).append(density_map(found.damage_map, *key, date))
        if progress is not None:
            progress(done, len(maps))
    return [pair for shelf in sorted(densities)
            for pair in series_pairs(densities[shelf], velocity)]


def _date_of(found: ShelfYearFiles, given: str | None) -> dt.date:
    """A shelf-year's main-scene date: the one given, else its provenance record's, else the
    summer's stand-in."""
    if given:
        return dt.date.fromisoformat(given[:10])
    record, _ = found.provenance_or_error()
    if record is not None:
        return record.main_scene.acquired
    return summer_date(found.name.year)


@dataclass(frozen=True)
class ShelfSummary:
    """The medians over a shelf's pairs (a row of the paper's Tables 6 and 7)."""

    shelf: str
    pairs: int
    plain: tuple[float, float, float]
    """Median r_s, ρ_c, RMSE without correction."""
    corrected: tuple[float, float, float] | None


def _medians(metrics: Sequence[PairMetrics]) -> tuple[float, float, float]:
    def median(values: Iterable[float]) -> float:
        finite = [v for v in values if math.isfinite(v)]
        return float(np.median(finite)) if finite else math.nan

    return (median(m.spearman for m in metrics), median(m.ccc for m in metrics),
            median(m.rmse for m in metrics))


def shelf_summaries(pairs: Sequence[PairConsistency]) -> list[ShelfSummary]:
    """Per shelf, the medians of the metrics over its pairs."""
    summaries = []
    for shelf in sorted({p.shelf for p in pairs}):
        own = [p for p in pairs if p.shelf == shelf]
        corrected = [p.corrected for p in own if p.corrected is not None]
        summaries.append(ShelfSummary(shelf, len(own), _medians([p.plain for p in own]),
                                      _medians(corrected) if corrected else None))
    return summaries


def write_consistency_table(pairs: Sequence[PairConsistency], path: Path) -> Path:
    """The pairs as CSV or ODS (by extension, atomically); ODS gets a sheet of the medians."""
    import pandas as pd

    from catalog.stats import write_table

    frame = pd.DataFrame([p.as_row() for p in pairs])
    medians = pd.DataFrame([
        {"shelf": s.shelf, "pairs": s.pairs,
         **dict(zip(("spearman", "ccc", "rmse"), s.plain, strict=True)),
         **(dict(zip(("lagrangian_spearman", "lagrangian_ccc", "lagrangian_rmse"),
                     s.corrected, strict=True)) if s.corrected else {})}
        for s in shelf_summaries(pairs)])
    return write_table(Path(path), {"Pairs": frame, "Medians": medians})


def consistency_figure(pairs: Sequence[PairConsistency]):  # noqa: ANN201 - matplotlib lazily
    """r_s, ρ_c and RMSE of each pair against the later year, one line per shelf (dashed:
    without correction when a velocity was given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from catalog.stats import shelf_styles

    shelves = sorted({p.shelf for p in pairs})
    styles = shelf_styles(shelves)
    figure, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True, constrained_layout=True)
    names = ("Spearman r_s", "Lin's CCC ρ_c", "RMSE of density")
    for axis, name, field in zip(axes, names, ("spearman", "ccc", "rmse"), strict=True):
        for shelf in shelves:
            own = [p for p in pairs if p.shelf == shelf]
            years = [p.later for p in own]
            style = styles[shelf]
            corrected = [p.corrected for p in own if p.corrected is not None]
            if corrected:
                axis.plot(years, [getattr(m, field) for m in corrected], color=style.colour,
                          marker=style.marker, label=f"{shelf} (Lagrangian)")
            axis.plot(years, [getattr(p.plain, field) for p in own], color=style.colour,
                      marker=style.marker, linestyle="--" if corrected else "-",
                      fillstyle="none" if corrected else "full",
                      label=f"{shelf}{' (uncorrected)' if corrected else ''}")
        axis.set_ylabel(name)
        axis.grid(alpha=0.3)
    axes[-1].set_xlabel("later summer of the pair")
    axes[-1].xaxis.get_major_locator().set_params(integer=True)
    axes[0].legend(fontsize="small", ncol=2)
    figure.suptitle(f"Multi-temporal consistency of damage density ({CELL_M:g} m cells)")
    return figure


def plot_consistency(pairs: Sequence[PairConsistency], path: Path) -> Path:
    """Write ``consistency_figure`` as a PNG (atomically)."""
    import matplotlib.pyplot as plt

    from producer.writer import atomic_path

    figure = consistency_figure(pairs)
    with atomic_path(Path(path)) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)
    return Path(path)
