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
  the time between their main scenes' acquisition dates: the catalog's item datetimes, else
  the provenance records, else metadata.ods's ``main_scene_date``, else 1 January of each
  summer's second calendar year (a stand-in, warned about per map, as is a provenance record
  that cannot be read). Each pair row gives both dates and where they came from.
- **Metrics** over the cells valid in both maps: Spearman's rank correlation r_s (Eq. 10;
  average ranks for ties), Lin's concordance correlation coefficient ρ_c (Eq. 11, population
  moments) and the RMSE of the densities (Eq. 12). Each shelf is summarised by the medians over
  its pairs, as in the paper's tables; a pair without a value of a metric (too few common
  cells, or r_s of a constant map) is left out of that metric's median only, so each median
  comes with its own count of pairs (``n_spearman``, ``n_ccc``, ``n_rmse``).
- **Lagrangian correction** (Eq. 13) with an ice-velocity product (``--velocity``: MEaSUREs'
  VX/VY, or a two-band vx/vy raster in EPSG:3031): the earlier map's cells are advected to the
  later map's time, x + v(x)·Δt, with v sampled bilinearly at the cell centres, and placed on
  the later map's cells. A cell moved onto the same target as others is averaged with them; a
  target no cell reaches, and cells moved off the later map or without a known velocity, are
  left out of the Lagrangian metrics (only) — as the paper notes for Dotson, where ice flowing
  out of the extent shrinks the compared set. A velocity product that covers none of a
  shelf's cells is an error, one that covers less than ``MIN_VELOCITY_SHARE`` of them a
  warning. Both the corrected and the uncorrected metrics are reported (Tables 6 and 7).

Reading is strip by strip (rows of whole cells), so memory holds the 900 m grid, not the map.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio
from affine import Affine
from numpy.typing import NDArray
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window

from producer.grid import Grid
from producer.spec import ENCODING, METADATA_ODS, TYPE1, is_year_dir

if TYPE_CHECKING:
    from catalog.release import ShelfYearFiles
    from producer.velocity import VelocityLayout

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
#: Below this share of a shelf's advected cells with a known velocity, a warning says so.
MIN_VELOCITY_SHARE = 0.95
#: Table formats of ``--out`` (by extension).
TABLE_SUFFIXES = (".csv", ".ods")

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
    date_source: str = "given"
    """Where ``date`` came from: catalog, provenance, metadata.ods or stand-in."""

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
    earlier_date: dt.date | None = None
    later_date: dt.date | None = None
    date_source: str = ""
    """Where the dates came from (``DensityMap.date_source``): one source, or the earlier's and
    the later's joined by "/" when they differ (e.g. ``provenance/stand-in``)."""
    velocity_cells: tuple[int, int] | None = None
    """(cells of the earlier map with a known velocity, cells of the earlier map counted)."""

    @property
    def velocity_share(self) -> float:
        """The share of the earlier map's cells with a known velocity (NaN: none counted)."""
        if not self.velocity_cells or not self.velocity_cells[1]:
            return math.nan
        return self.velocity_cells[0] / self.velocity_cells[1]

    def as_row(self) -> dict[str, object]:
        """One table row (dates as ISO text, empty when unknown)."""
        row: dict[str, object] = {
            "shelf": self.shelf, "earlier": self.earlier, "later": self.later,
            "earlier_date": self.earlier_date.isoformat() if self.earlier_date else "",
            "later_date": self.later_date.isoformat() if self.later_date else "",
            "date_source": self.date_source, "dt_years": round(self.dt_years, 4)}
        for prefix, metrics in (("", self.plain), ("lagrangian_", self.corrected)):
            if metrics is None:
                continue
            row |= {f"{prefix}cells": metrics.cells, f"{prefix}spearman": metrics.spearman,
                    f"{prefix}ccc": metrics.ccc, f"{prefix}rmse": metrics.rmse}
        if self.corrected is not None and self.velocity_cells is not None:
            row["lagrangian_velocity_share"] = round(self.velocity_share, 4)
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


def _unreadable(path: Path, error: RasterioIOError) -> ValueError:
    """The error for a map rasterio cannot read (GDAL's own reason, when it gave one)."""
    cause = error.__cause__ or error.__context__  # "Read failed": GDAL's reason is the cause
    detail = cause if cause is not None and str(cause) else error
    return ValueError(f"{path}: cannot be read as a GeoTIFF (rasterio: {detail}); the file is "
                      "truncated or damaged — restore it or re-run produce for this shelf-year")


def _check_georeferenced(src: rasterio.DatasetReader, path: Path) -> None:
    """Refuse a map without a CRS or transform; a damaged file often opens as one (its tags are
    lost), so its first pixel is read first, and a read failure is reported as such."""
    if src.crs is not None and not src.transform.is_identity:
        return
    src.read(1, window=Window(0, 0, 1, 1))  # RasterioIOError: the file is damaged
    raise ValueError(f"{path}: not georeferenced (no CRS or no transform); a type 1 map is in "
                     f"EPSG:3031 on a {ENCODING.resolution:g} m grid")


def density_map(path: Path, shelf: str, year: int, date: dt.date,
                date_source: str = "given") -> DensityMap:
    """The damage density of a type-1 map on the 900 m cells, read by strips of cell rows;
    ValueError naming the file when rasterio cannot read it or it is not on the 30 m grid."""
    try:
        return _density_map(path, shelf, year, date, date_source)
    except RasterioIOError as error:
        raise _unreadable(path, error) from None


def _density_map(path: Path, shelf: str, year: int, date: dt.date,
                 date_source: str) -> DensityMap:
    """``density_map`` without the translation of rasterio's errors."""
    with warnings.catch_warnings():  # said in words by _check_georeferenced
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        src = rasterio.open(path)
    with src:
        _check_georeferenced(src, path)
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
    return DensityMap(shelf, year, date, row0, col0, density, date_source)


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
             dt_years: float, frame: DensityMap | None = None) -> DensityMap:
    """The earlier map with each cell moved by its velocity over ``dt_years`` (Eq. 13): the
    cell centre x goes to x + v(x)·Δt, its density to the cell that point falls in (averaged
    where several arrive). ``vx``, ``vy`` are per year along EPSG:3031's x and y axes, sampled
    at the cell centres (``earlier.cell_grid``).

    The result lies on ``frame``'s cells (the later map's: the ice moves into its extent, which
    may reach beyond the earlier map's), by default the earlier map's own; cells moved off the
    frame are dropped."""
    frame = earlier if frame is None else frame
    rows, cols = earlier.density.shape
    r, c = np.mgrid[0:rows, 0:cols]
    x = (earlier.col0 + c + 0.5) * CELL_M + vx * dt_years
    y = -(earlier.row0 + r + 0.5) * CELL_M + vy * dt_years
    moved = np.isfinite(earlier.density) & np.isfinite(x) & np.isfinite(y)
    target_r = np.floor(-y[moved] / CELL_M).astype(np.int64) - frame.row0
    target_c = np.floor(x[moved] / CELL_M).astype(np.int64) - frame.col0
    f_rows, f_cols = frame.density.shape
    inside = (target_r >= 0) & (target_r < f_rows) & (target_c >= 0) & (target_c < f_cols)
    flat = target_r[inside] * f_cols + target_c[inside]
    size = f_rows * f_cols
    total = np.bincount(flat, weights=earlier.density[moved][inside], minlength=size)
    count = np.bincount(flat, minlength=size)
    density = np.full(size, np.nan)
    np.divide(total, count, out=density, where=count > 0)
    return dataclasses.replace(earlier, row0=frame.row0, col0=frame.col0,
                               density=density.reshape(f_rows, f_cols))


# ---------------------------------------------------------------------------------------------
# A release
# ---------------------------------------------------------------------------------------------

#: Velocity components (vx, vy) on a grid, e.g. ``producer.velocity.components_on_grid``.
Velocity = Callable[[Grid], tuple[NDArray[np.floating], NDArray[np.floating]]]
#: Where a message that does not stop the assessment goes (the command: stderr).
Warn = Callable[[str], None]


def _warn_default(message: str) -> None:
    """Library callers without a ``warn`` get Python warnings."""
    warnings.warn(message, UserWarning, stacklevel=3)


def summer_date(year: int) -> dt.date:
    """The date standing for a summer without a known acquisition date (mid-summer)."""
    return dt.date(year + 1, 1, 1)


def _pair_source(earlier: DensityMap, later: DensityMap) -> str:
    """The pair's date source: one, or both joined by "/" when they differ."""
    if earlier.date_source == later.date_source:
        return earlier.date_source
    return f"{earlier.date_source}/{later.date_source}"


def series_pairs(maps: Sequence[DensityMap], velocity: Velocity | None = None
                 ) -> list[PairConsistency]:
    """Metrics of each temporally adjacent pair of one shelf's density maps (sorted by year);
    with a velocity, also with the earlier map advected onto the later map's cells."""
    ordered = sorted(maps, key=lambda m: m.year)
    pairs = []
    for earlier, later in zip(ordered, ordered[1:], strict=False):
        dt_years = (later.date - earlier.date).days / 365.25
        corrected, coverage = None, None
        if velocity is not None:
            vx, vy = velocity(earlier.cell_grid)
            counted = np.isfinite(earlier.density)
            known = counted & np.isfinite(vx) & np.isfinite(vy)
            coverage = (int(known.sum()), int(counted.sum()))
            corrected = pair_metrics(advected(earlier, vx, vy, dt_years, frame=later), later)
        pairs.append(PairConsistency(earlier.shelf, earlier.year, later.year, dt_years,
                                     pair_metrics(earlier, later), corrected,
                                     earlier.date, later.date, _pair_source(earlier, later),
                                     coverage))
    return pairs


def check_velocity_coverage(shelf: str, pairs: Sequence[PairConsistency], velocity_name: str,
                            warn: Warn) -> None:
    """ValueError when the velocity covers none of the shelf's advected cells (its Lagrangian
    metrics would all be n/a: the wrong file or region); a warning with the covered share when
    it covers less than ``MIN_VELOCITY_SHARE`` of them (uncovered cells leave the Lagrangian
    metrics only)."""
    known = sum(p.velocity_cells[0] for p in pairs if p.velocity_cells)
    counted = sum(p.velocity_cells[1] for p in pairs if p.velocity_cells)
    if counted == 0:
        return
    if known == 0:
        raise ValueError(
            f"{velocity_name}: no velocity at any of the {counted} cells of {shelf}'s maps (the "
            f"file does not cover {shelf}, or holds no values there), so no Lagrangian metric "
            f"can be computed; give a product that covers {shelf}, or leave it out with --shelf")
    if known < MIN_VELOCITY_SHARE * counted:
        warn(f"{velocity_name} has a velocity at {known / counted:.1%} of {shelf}'s cells "
             f"({known} of the {counted} cells of its earlier maps); the others are left out "
             "of the Lagrangian metrics only")


def release_consistency(release_dir: Path, dates: Mapping[tuple[str, int], str] | None = None,
                        velocity: Velocity | None = None, shelves: Iterable[str] = (),
                        progress: Callable[[int, int], None] | None = None,
                        warn: Warn | None = None, velocity_name: str = "the velocity product"
                        ) -> list[PairConsistency]:
    """The pairs of every shelf of a release (or of ``shelves``) with at least two type-1 maps.

    ``dates`` maps (shelf, year) to the main scene's ISO date (e.g. the catalog's item
    datetimes); else the provenance record's, else metadata.ods's ``main_scene_date``, else
    ``summer_date``. ``warn`` gets one message per map that takes the stand-in or has an
    unreadable provenance record, and per shelf that the velocity covers only partly
    (``check_velocity_coverage``; ``velocity_name`` names the product in its messages). A
    folder that looks like a shelf or shelf-year folder rather than a release root is a
    ValueError saying so."""
    from catalog.release import scan_release

    warn = warn or _warn_default
    wanted = set(shelves)
    found = [f for f in scan_release(release_dir) if f.damage_map is not None]
    if not found:
        _refuse_non_root(Path(release_dir))
    by_shelf: dict[str, list[ShelfYearFiles]] = {}
    for item in found:
        if not wanted or item.name.shelf in wanted:
            by_shelf.setdefault(item.name.shelf, []).append(item)
    series = {shelf: items for shelf, items in by_shelf.items() if len(items) >= 2}
    total = sum(len(items) for items in series.values())
    ods_dates = functools.cache(lambda: _ods_main_dates(Path(release_dir) / METADATA_ODS))
    pairs: list[PairConsistency] = []
    done = 0
    for shelf in sorted(series):
        densities = []
        for item in series[shelf]:
            assert item.damage_map is not None
            key = (shelf, item.name.year)
            date, source = _date_of(item, (dates or {}).get(key), ods_dates, warn)
            densities.append(density_map(item.damage_map, *key, date, source))
            done += 1
            if progress is not None:
                progress(done, total)
        own = series_pairs(densities, velocity)
        if velocity is not None:
            check_velocity_coverage(shelf, own, velocity_name, warn)
        pairs.extend(own)
    return pairs


def _refuse_non_root(folder: Path) -> None:
    """ValueError when a folder without maps found looks like a shelf folder (``<YYYY>/``
    folders in it) or a shelf-year folder (a year folder holding GeoTIFFs): the command wants
    the release root above them."""
    if not folder.is_dir():
        return
    resolved = folder.resolve()
    if any(p.is_dir() and is_year_dir(p.name) for p in folder.iterdir()):
        raise ValueError(f"{folder}: not a release root (a release root holds <Shelf>/<YYYY>/ "
                         f"folders); it looks like a shelf folder — give its parent, "
                         f"{resolved.parent} (with --shelf {resolved.name!r} for this shelf)")
    if is_year_dir(resolved.name) and any(folder.glob("*.tif")):
        raise ValueError(f"{folder}: not a release root (a release root holds <Shelf>/<YYYY>/ "
                         "folders); it looks like a shelf-year folder — give "
                         f"{resolved.parent.parent}")


def _ods_main_dates(path: Path) -> tuple[dict[tuple[str, int], dt.date], str | None]:
    """metadata.ods's main_scene_date per (shelf, year), and why there are none when the file is
    missing or unreadable (then only a reason in the stand-in warnings, not an error: the dates
    are a fallback)."""
    from catalog.ods import read_metadata_ods

    if not path.is_file():
        return {}, f"no {METADATA_ODS} at the release root"
    try:
        rows = read_metadata_ods(path)
    except Exception as error:  # noqa: BLE001 - any failure (zip, XML, cells) means no dates
        return {}, f"{path} unreadable ({type(error).__name__}: {error})"
    return {(r.shelf, r.year): r.main_scene_date for r in rows
            if r.main_scene_date is not None}, None


def _date_of(found: ShelfYearFiles, given: str | None,
             ods_dates: Callable[[], tuple[dict[tuple[str, int], dt.date], str | None]],
             warn: Warn) -> tuple[dt.date, str]:
    """A shelf-year's main-scene date and its source: the one given (the catalog's), else its
    provenance record's, else metadata.ods's, else the summer's stand-in. An unreadable
    provenance record and the stand-in are each said (once, naming the map and why): Δt would
    otherwise be silently off by weeks."""
    if given:
        return dt.date.fromisoformat(given[:10]), "catalog"
    record, error = found.provenance_or_error()
    if record is not None:
        return record.main_scene.acquired, "provenance"
    shelf, year = found.name.shelf, found.name.year
    provenance = ("no provenance record" if error is None else
                  f"provenance record {found.auxiliary.get('provenance')} unreadable ({error})")
    by_key, ods_problem = ods_dates()
    date = by_key.get((shelf, year))
    if date is not None:
        if error is not None:
            warn(f"{found.damage_map}: {provenance}; Δt uses {METADATA_ODS}'s main_scene_date "
                 f"{date.isoformat()}")
        return date, METADATA_ODS
    ods = ods_problem or f"no main_scene_date for {shelf} {year} in {METADATA_ODS}"
    stand_in = summer_date(year)
    warn(f"{found.damage_map}: Δt uses the stand-in date {stand_in.isoformat()} (1 January of "
         f"the summer) — no catalog item date, {provenance}, {ods}")
    return stand_in, "stand-in"


@dataclass(frozen=True)
class ShelfSummary:
    """The medians over a shelf's pairs (a row of the paper's Tables 6 and 7).

    A pair without a value of a metric (too few common cells; r_s of a constant map) is left
    out of that metric's median only, so each median has its own count of pairs: ``pairs`` is
    all of them, ``plain_counts`` and ``corrected_counts`` those behind each median."""

    shelf: str
    pairs: int
    plain: tuple[float, float, float]
    """Median r_s, ρ_c, RMSE without correction."""
    corrected: tuple[float, float, float] | None
    plain_counts: tuple[int, int, int] = (0, 0, 0)
    """Pairs behind each median of ``plain`` (r_s, ρ_c, RMSE)."""
    corrected_counts: tuple[int, int, int] | None = None
    """Pairs behind each median of ``corrected``."""


def _medians(metrics: Sequence[PairMetrics]
             ) -> tuple[tuple[float, float, float], tuple[int, int, int]]:
    """Median r_s, ρ_c and RMSE over the pairs with a value of each, and how many those are."""
    def median(values: Iterable[float]) -> tuple[float, int]:
        finite = [v for v in values if math.isfinite(v)]
        return (float(np.median(finite)) if finite else math.nan), len(finite)

    (rs, n_rs), (ccc, n_ccc), (rmse, n_rmse) = (
        median(getattr(m, field) for m in metrics) for field in ("spearman", "ccc", "rmse"))
    return (rs, ccc, rmse), (n_rs, n_ccc, n_rmse)


def shelf_summaries(pairs: Sequence[PairConsistency]) -> list[ShelfSummary]:
    """Per shelf, the medians of the metrics over its pairs, with the pairs behind each."""
    summaries = []
    for shelf in sorted({p.shelf for p in pairs}):
        own = [p for p in pairs if p.shelf == shelf]
        plain, plain_counts = _medians([p.plain for p in own])
        corrected = [p.corrected for p in own if p.corrected is not None]
        lagrangian, lagrangian_counts = _medians(corrected) if corrected else (None, None)
        summaries.append(ShelfSummary(shelf, len(own), plain, lagrangian, plain_counts,
                                      lagrangian_counts))
    return summaries


_METRICS = ("spearman", "ccc", "rmse")


def medians_row(summary: ShelfSummary) -> dict[str, object]:
    """A shelf's medians as a table row: each median beside the count of pairs behind it
    (``n_spearman``, ``n_ccc``, ``n_rmse``; ``lagrangian_`` ones with a velocity)."""
    row: dict[str, object] = {"shelf": summary.shelf, "pairs": summary.pairs}
    for prefix, values, counts in (("", summary.plain, summary.plain_counts),
                                   ("lagrangian_", summary.corrected, summary.corrected_counts)):
        if values is None or counts is None:
            continue
        for name, value, count in zip(_METRICS, values, counts, strict=True):
            row |= {f"{prefix}{name}": value, f"{prefix}n_{name}": count}
    return row


def check_table_path(path: Path) -> None:
    """ValueError unless ``--out`` names a table format we write (checked before any map is
    read, so a typo does not cost the whole assessment)."""
    if Path(path).suffix.lower() not in TABLE_SUFFIXES:
        raise ValueError(f"--out {path}: table format must be "
                         f"{' or '.join(TABLE_SUFFIXES)} (by the file's extension)")


def check_velocity(layout: VelocityLayout) -> None:
    """VelocityError unless the velocity file can advect the maps (components, in EPSG:3031):
    ``components_on_grid`` on one 900 m cell, so its rules run before any map is read."""
    from producer.velocity import components_on_grid

    components_on_grid(layout, Grid(Affine(CELL_M, 0.0, 0.0, 0.0, -CELL_M, 0.0), 1, 1))


def medians_csv_path(path: Path) -> Path:
    """Where a CSV ``--out`` gets its medians: ``<stem>_medians.csv`` beside it."""
    path = Path(path)
    return path.with_name(f"{path.stem}_medians{path.suffix}")


def write_consistency_table(pairs: Sequence[PairConsistency], path: Path) -> list[Path]:
    """The pairs as CSV or ODS (by extension, atomically); the medians (the paper's Tables
    6–7) as an ODS sheet, or for CSV as ``medians_csv_path`` beside it. Returns the files."""
    import pandas as pd

    from catalog.stats import write_table

    path = Path(path)
    check_table_path(path)
    frame = pd.DataFrame([p.as_row() for p in pairs])
    medians = pd.DataFrame([medians_row(s) for s in shelf_summaries(pairs)])
    if path.suffix.lower() == ".ods":
        return [write_table(path, {"Pairs": frame, "Medians": medians})]
    return [write_table(path, {"Pairs": frame}),
            write_table(medians_csv_path(path), {"Medians": medians})]


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
