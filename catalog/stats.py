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
from producer.spec import ENCODING, RELEASED_RESTORATION, TYPE1

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
    restored: bool
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

    def as_row(self) -> dict[str, object]:
        """A flat dict for tables (CSV / ODS)."""
        return asdict(self)


def is_diffgf_derived(path: Path | str) -> bool:
    """The authors' rule: a file is DiffGF-derived when its name contains "diffgf" (any case).

    Only the file name is looked at (not parent folders), so a release stored under a folder
    that happens to contain the word is not misread.
    """
    return RELEASED_RESTORATION.lower() in Path(path).name.lower()


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


def damage_stats(shelf: str, year: int, counts: PixelCounts, restored: bool,
                 factors: UncertaintyFactors) -> DamageStats:
    """Areas, fraction and their bounds from pixel counts (pure).

    Areas are pixel counts × the EPSG:3031 cell area (not true ground area; see the module).
    """
    damage_km2 = counts.damage_pixels * counts.pixel_area_m2 / M2_PER_KM2
    valid_km2 = counts.valid_pixels * counts.pixel_area_m2 / M2_PER_KM2
    fraction = damage_km2 / valid_km2 if counts.valid_pixels else None
    area_low, area_high = factors.bounds(damage_km2, restored)
    frac_low, frac_high = (factors.bounds(fraction, restored, fraction=True)
                           if fraction is not None else (None, None))
    return DamageStats(
        shelf=shelf, year=year, restored=restored,
        damage_pixels=counts.damage_pixels, valid_pixels=counts.valid_pixels,
        damage_area_km2=damage_km2, valid_area_km2=valid_km2, damage_fraction=fraction,
        damage_area_km2_low=area_low, damage_area_km2_high=area_high,
        damage_fraction_low=frac_low, damage_fraction_high=frac_high,
        lambda_lower=factors.lambda_min, lambda_upper=factors.lambda_max,
        lambda_upper_restored=factors.lambda_upper_restored if restored else None,
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

#: Okabe-Ito colour-blind-safe palette (black first dropped; it is kept for a tenth shelf).
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7",
             "#000000", "#999999")


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
        restored = upper_restored is not None
        lambdas = factors or UncertaintyFactors(
            props[f"{P}lambda_lower"], props[f"{P}lambda_upper"],
            upper_restored / props[f"{P}lambda_upper"] if restored else 1.0)
        rows.append(damage_stats(props[f"{P}shelf"], int(props[f"{P}year"]), counts, restored,
                                 lambdas))
    return sorted(rows, key=lambda s: (s.shelf, s.year))


def stats_frame(rows: list[DamageStats]):  # noqa: ANN201 - pandas is imported lazily
    """The stats as a pandas DataFrame (one row per shelf-year)."""
    import pandas as pd

    return pd.DataFrame([r.as_row() for r in rows])


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


def plot_stats(rows: list[DamageStats], path: Path) -> Path:
    """Fig. 11 style: damage area and fraction per shelf over time, uncertainty bands shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from producer.writer import atomic_path

    shelves = sorted({r.shelf for r in rows})
    fig, (ax_area, ax_frac) = plt.subplots(2, 1, figsize=(9, 7), sharex=True,
                                           constrained_layout=True)
    for index, shelf in enumerate(shelves):
        colour = OKABE_ITO[index % len(OKABE_ITO)]
        series = [r for r in rows if r.shelf == shelf]
        years = [r.year for r in series]
        ax_area.plot(years, [r.damage_area_km2 for r in series], "o-", color=colour,
                     label=shelf, markersize=4)
        ax_area.fill_between(years, [r.damage_area_km2_low for r in series],
                             [r.damage_area_km2_high for r in series], color=colour, alpha=0.25,
                             linewidth=0)
        if len(series) == 1:  # a band needs two summers; show a lone one's bounds as a bar
            ax_area.vlines(years, series[0].damage_area_km2_low, series[0].damage_area_km2_high,
                           color=colour, alpha=0.5, linewidth=6)
        fr = [(r.year, r.damage_fraction * 100, r.damage_fraction_low * 100,
               r.damage_fraction_high * 100) for r in series if r.damage_fraction is not None]
        if fr:
            ax_frac.plot([f[0] for f in fr], [f[1] for f in fr], "o-", color=colour,
                         markersize=4)
            ax_frac.fill_between([f[0] for f in fr], [f[2] for f in fr], [f[3] for f in fr],
                                 color=colour, alpha=0.25, linewidth=0)
            if len(fr) == 1:
                ax_frac.vlines([fr[0][0]], fr[0][2], fr[0][3], color=colour, alpha=0.5,
                               linewidth=6)
    ax_area.set_ylabel("Damage area (km²)")
    ax_frac.set_ylabel("Damage fraction (%)")
    ax_frac.set_xlabel("Austral summer (year it starts)")
    ax_frac.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_area.legend(loc="upper left", fontsize=8, ncols=2, frameon=False)
    for axis in (ax_area, ax_frac):
        axis.grid(alpha=0.3)
    ax_area.set_title("Surface damage with uncertainty bounds (λ_min, λ_max, × λ_DiffGF)")
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return Path(path)
