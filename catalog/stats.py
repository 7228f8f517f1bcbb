"""Damage area, shelf area and damage fraction with uncertainty bounds, as the authors compute them.

The authors' time-series analysis (see ../shared/reference/README.md) reads each type-1
``*_damage_map.tif``: valid pixels are those != nodata, damage pixels are value 1, area is pixels
times |a·e| of the transform, fraction = damage area / valid area, and a map is DiffGF-derived when
its path contains "diffgf" (any case). Bounds multiply by λ_min / λ_max (× λ_restoration for
DiffGF-derived maps), fractions clipped to [0, 1]. The same numbers feed the STAC items and
``icedamage stats``; rasters are read block by block so a full-size shelf never sits in memory.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import rasterio

from catalog.uncertainty import UncertaintyFactors
from producer.spec import RELEASED_RESTORATION, TYPE1

M2_PER_KM2 = 1e6


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
    """Areas, fraction and their bounds from pixel counts (pure)."""
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
