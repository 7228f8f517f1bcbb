"""Damage area, shelf area and damage fraction with uncertainty bounds, as the authors compute them.

The authors' time-series analysis (see ../shared/reference/README.md) reads each type-1
``*_damage_map.tif``: valid pixels are those != nodata, damage pixels are value 1, area is pixels
times |a·e| of the transform, fraction = damage area / valid area, and a map is DiffGF-derived when
its path contains "diffgf" (any case). Areas are thus map areas in EPSG:3031, not true ground
areas: polar stereographic is true to area only at 71°S (its areal scale is ~1.05 at 64°S and
~0.95 at 85°S); we keep the authors' numbers so they compare with the paper's. Fractions are
ratios within one map and unaffected. Bounds multiply by λ_min / λ_max (× λ_restoration for
DiffGF-derived maps), fractions clipped to [0, 1]. The same numbers feed the STAC items and
``icedamage stats``; rasters are read block by block so a full-size shelf never sits in memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pystac
import rasterio

import schemas
from catalog.uncertainty import UncertaintyFactors
from producer.spec import ENCODING, RELEASED_RESTORATION, TYPE1, SpecError, parse_name

M2_PER_KM2 = 1e6
P = schemas.PREFIX


@dataclass(frozen=True)
class PixelCounts:
    """Counts of one type-1 raster and the area of one of its pixels."""

    damage_pixels: int
    valid_pixels: int
    pixel_area_m2: float


@dataclass(frozen=True)
class DamageStats:
    """Per shelf-year numbers of Fig. 11, with the factors used for their bounds."""

    shelf: str
    year: int
    diffgf_derived: bool
    """Whether λ_restoration applies: the map is DiffGF-derived by the authors' file-name rule
    (a FillNodata-restored map is not; its restoration shows in the item's fields)."""
    damage_pixels: int
    valid_pixels: int
    damage_area_km2: float
    valid_area_km2: float
    damage_fraction: float | None
    damage_area_km2_low: float
    damage_area_km2_high: float
    damage_fraction_low: float | None
    damage_fraction_high: float | None
    lambda_lower: float
    lambda_upper: float
    lambda_upper_restored: float | None

    @property
    def measured(self) -> bool:
        """Whether the map has any valid pixel, i.e. whether its damage numbers mean anything.

        A map with no valid pixel (empty extent, all NoData) counts 0 damage pixels, but that is
        "not observed", not "no damage": tables and plots must not show it as 0 km².
        """
        return self.valid_pixels > 0

    def as_row(self) -> dict[str, object]:
        """A flat dict for tables (CSV / ODS); damage area and its bounds are None (an empty
        cell) for a map with no valid pixel, like the fraction, so the year reads as missing.

        The fields themselves keep the pixel-count numbers (0 km²): the STAC items record those
        (the extension schema requires a number there) and validation recomputes them.
        """
        row = asdict(self)
        if not self.measured:
            row.update(damage_area_km2=None, damage_area_km2_low=None,
                       damage_area_km2_high=None)
        return row


def is_diffgf_derived(path: Path | str) -> bool:
    """Whether a map was made from DiffGF-restored imagery (its upper bound then takes the
    restoration factor K).

    A product name (``producer.spec.parse_name``) says it by its restoration token: exactly the
    released method, so another method whose name merely contains "DiffGF" is not DiffGF.
    Only for a file whose name does not parse does the authors' rule apply (their time-series
    code: DiffGF-derived when the path contains "diffgf", any case), so files named as they
    name them are still read as they read them. That fallback looks at the file name only (not
    parent folders): a release under a folder that contains the word is not misread.
    """
    name = Path(path).name
    try:
        return parse_name(name).restoration == RELEASED_RESTORATION
    except SpecError:
        return RELEASED_RESTORATION.lower() in name.lower()  # the authors' rule


def count_pixels(path: Path) -> PixelCounts:
    """Damage and valid pixel counts of a type-1 raster, read block by block."""
    damage = valid = 0
    with rasterio.open(path) as src:
        nodata = src.nodata if src.nodata is not None else TYPE1.nodata
        for _, window in src.block_windows(1):
            block = src.read(1, window=window)
            valid += int(np.count_nonzero(block != nodata))
            damage += int(np.count_nonzero(block == TYPE1.damage))
        area = abs(src.transform.a * src.transform.e)
    return PixelCounts(damage, valid, area)


def damage_stats(shelf: str, year: int, counts: PixelCounts, diffgf_derived: bool,
                 factors: UncertaintyFactors) -> DamageStats:
    """Areas, fraction and their bounds from pixel counts (pure).

    Areas are pixel counts × the EPSG:3031 cell area (not true ground area; see the module).
    """
    damage_km2 = counts.damage_pixels * counts.pixel_area_m2 / M2_PER_KM2
    valid_km2 = counts.valid_pixels * counts.pixel_area_m2 / M2_PER_KM2
    fraction = damage_km2 / valid_km2 if counts.valid_pixels else None
    area_low, area_high = factors.bounds(damage_km2, diffgf_derived)
    frac_low, frac_high = (factors.bounds(fraction, diffgf_derived, fraction=True)
                           if fraction is not None else (None, None))
    return DamageStats(
        shelf=shelf, year=year, diffgf_derived=diffgf_derived,
        damage_pixels=counts.damage_pixels, valid_pixels=counts.valid_pixels,
        damage_area_km2=damage_km2, valid_area_km2=valid_km2, damage_fraction=fraction,
        damage_area_km2_low=area_low, damage_area_km2_high=area_high,
        damage_fraction_low=frac_low, damage_fraction_high=frac_high,
        lambda_lower=factors.lambda_min, lambda_upper=factors.lambda_max,
        lambda_upper_restored=factors.lambda_upper_restored if diffgf_derived else None,
    )


def file_stats(path: Path, shelf: str, year: int, factors: UncertaintyFactors) -> DamageStats:
    """Stats of one type-1 product file."""
    return damage_stats(shelf, year, count_pixels(path), is_diffgf_derived(path), factors)


def stats_close(a: float | None, b: float | None, rel: float = 1e-9) -> bool:
    """Equality of two stats values that tolerates float rounding and None."""
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)


# ---------------------------------------------------------------------------------------------
# Release-wide table and Fig. 11 style plot
# ---------------------------------------------------------------------------------------------

#: Ten colour-blind-safe colours, one per released shelf: the eight of Okabe & Ito, then
#: grey and Paul Tol's "wine" (darker than any Okabe-Ito red or purple).
SHELF_COLOURS = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7",
                 "#000000", "#999999", "#882255")
#: One marker per shelf as well, so no reader has to tell shelves apart by hue alone.
SHELF_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


@dataclass(frozen=True)
class ShelfStyle:
    """How one shelf is drawn in the time-series plot."""

    colour: str
    marker: str


def shelf_styles(shelves: Iterable[str]) -> dict[str, ShelfStyle]:
    """A distinct style per shelf, the same for a shelf in every figure.

    Released shelves take their place in ``producer.shelves.SHELVES`` (so the ten of them get
    ten colours and ten markers, whichever subset a release holds); other names follow in
    sorted order. Beyond ten, the marker shifts by one per round of colours, so (colour,
    marker) pairs stay distinct up to 100 shelves.
    """
    from producer.shelves import SHELVES

    wanted = set(shelves)
    order = list(SHELVES) + sorted(wanted - set(SHELVES))
    styles = {}
    for index, shelf in enumerate(order):
        if shelf in wanted:
            marker = SHELF_MARKERS[(index + index // len(SHELF_COLOURS)) % len(SHELF_MARKERS)]
            styles[shelf] = ShelfStyle(SHELF_COLOURS[index % len(SHELF_COLOURS)], marker)
    return styles


def year_limits(years: Iterable[int]) -> tuple[float, float]:
    """x-axis limits of the time series: one year of margin each side of the years shown.

    Matplotlib's own margins turn a single year into a ±100-year axis; this keeps a one-year
    release readable and the same rule for every release.
    """
    years = list(years)
    if not years:
        raise ValueError("no years to plot")
    return min(years) - 1.0, max(years) + 1.0


def yearly_series(rows: list[DamageStats], value: Callable[[DamageStats], float | None],
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(years, values) of one shelf's rows over every year from its first to its last.

    A year without a product, or whose map has no valid pixel, or whose ``value`` is None, is
    NaN: matplotlib breaks lines and bands there instead of joining the years either side (a
    missing year must not look like a trend, nor a 0).
    """
    by_year = {r.year: r for r in rows}
    years = np.arange(min(by_year), max(by_year) + 1)
    values = np.full(years.shape, np.nan)
    for k, year in enumerate(years.tolist()):
        row = by_year.get(year)
        got = value(row) if row is not None and row.measured else None
        if got is not None:
            values[k] = got
    return years, values


def release_stats(release_dir: Path, factors: UncertaintyFactors,
                  progress: Callable[[int, int], None] | None = None) -> list[DamageStats]:
    """Stats of every type-1 product of a release, sorted by shelf and year (``progress`` sees
    the maps counted so far and their total)."""
    from catalog.release import scan_release

    maps = [f for f in scan_release(release_dir) if f.damage_map is not None]
    rows = []
    for done, found in enumerate(maps, start=1):
        assert found.damage_map is not None
        rows.append(file_stats(found.damage_map, found.name.shelf, found.name.year, factors))
        if progress is not None:
            progress(done, len(maps))
    return sorted(rows, key=lambda s: (s.shelf, s.year))


def catalogued_stats(items: Iterable[pystac.Item],
                     factors: UncertaintyFactors | None = None) -> list[DamageStats]:
    """Stats of cataloged items from the numbers their ``icedamage:`` fields record, sorted by
    shelf and year: for a published record, whose maps are not on disk. Those numbers are what
    ``icedamage catalog`` computed from the pixels (areas are pixel counts × the pixel area), so
    the rows equal ``release_stats`` of the release itself; bounds use ``factors`` when given,
    else the λ the record was cataloged with."""
    rows = []
    for item in items:
        props = item.properties
        pixel_m2 = float(props.get("gsd") or ENCODING.resolution) ** 2
        counts = PixelCounts(round(props[f"{P}damage_area_km2"] * M2_PER_KM2 / pixel_m2),
                             round(props[f"{P}valid_area_km2"] * M2_PER_KM2 / pixel_m2), pixel_m2)
        upper_restored = props.get(f"{P}lambda_upper_restored")
        diffgf_derived = upper_restored is not None
        lambdas = factors or UncertaintyFactors(
            props[f"{P}lambda_lower"], props[f"{P}lambda_upper"],
            upper_restored / props[f"{P}lambda_upper"] if diffgf_derived else 1.0)
        rows.append(damage_stats(props[f"{P}shelf"], int(props[f"{P}year"]), counts,
                                 diffgf_derived, lambdas))
    return sorted(rows, key=lambda s: (s.shelf, s.year))


def stats_frame(rows: list[DamageStats]):  # noqa: ANN201 - pandas is imported lazily
    """The stats as a pandas DataFrame (one row per shelf-year)."""
    import pandas as pd

    return pd.DataFrame([r.as_row() for r in rows])


#: What the console table shows for a map without valid pixels (not "0 km² of damage").
NOT_OBSERVED = "not observed (no valid pixel)"


def console_cells(row: DamageStats) -> tuple[str, str, str]:
    """Damage km² (low-high), shelf km² and fraction % (low-high) as the console shows them;
    a map without valid pixels says so instead of showing 0 km² of damage."""
    if not row.measured or row.damage_fraction is None:
        return NOT_OBSERVED, f"{row.valid_area_km2:.2f}", ""
    low, high = row.damage_fraction_low, row.damage_fraction_high
    fraction = f"{row.damage_fraction * 100:.2f}"
    if low is not None and high is not None:
        fraction += f" ({low * 100:.2f}-{high * 100:.2f})"
    return (f"{row.damage_area_km2:.2f} ({row.damage_area_km2_low:.2f}-"
            f"{row.damage_area_km2_high:.2f})", f"{row.valid_area_km2:.2f}", fraction)


def write_stats_table(rows: list[DamageStats], path: Path) -> Path:
    """Write the table as CSV or ODS (by extension), atomically."""
    import pandas as pd

    from producer.writer import atomic_path

    path = Path(path)
    frame = stats_frame(rows)
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".csv":
            frame.to_csv(tmp, index=False)
        elif path.suffix.lower() == ".ods":
            with pd.ExcelWriter(tmp, engine="odf") as writer:
                frame.to_excel(writer, sheet_name="Statistics", index=False)
        else:
            raise ValueError(f"{path}: table format must be .csv or .ods")
    return path


def _plot_series(axis, years: np.ndarray, series: tuple[np.ndarray, np.ndarray, np.ndarray],
                 style: ShelfStyle, label: str | None) -> None:
    """One shelf on one axis: the values as a line broken at NaN, the bounds as a band.

    A year whose neighbours are both missing has no band to draw (a band needs two adjacent
    years), so its bounds are shown as a bar.
    """
    values, low, high = series
    axis.plot(years, values, linestyle="-", marker=style.marker, color=style.colour, label=label,
              markersize=4)
    axis.fill_between(years, low, high, color=style.colour, alpha=0.25, linewidth=0)
    known = ~np.isnan(values)
    before = np.concatenate(([False], known[:-1]))
    after = np.concatenate((known[1:], [False]))
    lone = known & ~before & ~after
    if lone.any():
        axis.vlines(years[lone], low[lone], high[lone], color=style.colour, alpha=0.5,
                    linewidth=6)


def stats_figure(rows: list[DamageStats]):  # noqa: ANN201 - matplotlib is imported lazily
    """The Fig. 11 style figure (damage area over damage fraction), not yet saved.

    Each shelf has its own colour and marker (``shelf_styles``); maps with no valid pixel and
    years without a product are gaps, not zeros; the x-axis spans the years ±1 with integer
    year ticks. The caller closes the figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, StrMethodFormatter

    if not rows:
        raise ValueError("no stats rows to plot")
    styles = shelf_styles(r.shelf for r in rows)
    fig, (ax_area, ax_frac) = plt.subplots(2, 1, figsize=(9, 7), sharex=True,
                                           constrained_layout=True)
    for shelf in sorted(styles):
        series = [r for r in rows if r.shelf == shelf]
        years, area = yearly_series(series, lambda r: r.damage_area_km2)
        _plot_series(ax_area, years, (
            area, yearly_series(series, lambda r: r.damage_area_km2_low)[1],
            yearly_series(series, lambda r: r.damage_area_km2_high)[1]), styles[shelf], shelf)
        fraction = [yearly_series(series, lambda r, f=field: getattr(r, f))[1] * 100
                    for field in ("damage_fraction", "damage_fraction_low",
                                  "damage_fraction_high")]
        if not np.isnan(fraction[0]).all():
            _plot_series(ax_frac, years, tuple(fraction), styles[shelf], None)
    ax_area.set_ylabel("Damage area (km²)")
    ax_frac.set_ylabel("Damage fraction (%)")
    ax_frac.set_xlabel("Austral summer (year it starts)")
    ax_frac.set_xlim(*year_limits(r.year for r in rows))
    ax_frac.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    ax_frac.xaxis.set_major_formatter(StrMethodFormatter("{x:.0f}"))
    ax_area.legend(loc="upper left", fontsize=8, ncols=2, frameon=False)
    for axis in (ax_area, ax_frac):
        axis.grid(alpha=0.3)
    ax_area.set_title("Surface damage with uncertainty bounds (λ_min, λ_max, × λ_DiffGF)")
    return fig


def plot_stats(rows: list[DamageStats], path: Path) -> Path:
    """Write the Fig. 11 style figure (``stats_figure``) as a PNG, atomically."""
    fig = stats_figure(rows)  # selects the Agg backend before pyplot is imported here
    import matplotlib.pyplot as plt

    from producer.writer import atomic_path

    try:
        with atomic_path(Path(path)) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
    finally:
        plt.close(fig)
    return Path(path)
