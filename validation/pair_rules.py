"""Pair rules: the two product types of a shelf-year share a grid and agree on damage.

Type 1 is type 2 refined to the effective ice-shelf extent (paper, section 2.4.2), so wherever
type 1 is not nodata, type 1 says damage exactly where type 2 does. The consistency tally is fed
the same windows as the value tallies, so each file is read once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import rasterio

from producer.spec import TYPE1, TYPE2
from validation.raster_rules import Buffers
from validation.report import Problem

GRID = "pair-grid"
DAMAGE = "pair-damage"


def _same_transform(a: rasterio.Affine, b: rasterio.Affine) -> bool:
    return all(math.isclose(x, y, rel_tol=0, abs_tol=1e-6) for x, y in zip(a, b, strict=True))


def grid_problems(rel1: str, src1: rasterio.io.DatasetReader, rel2: str,
                  src2: rasterio.io.DatasetReader) -> list[Problem]:
    """Differences in CRS, transform or shape between the type 1 and type 2 files."""
    partner = rel2.rsplit("/", 1)[1]
    differences = []
    if src1.crs != src2.crs:
        differences.append(f"CRS {src1.crs} vs {src2.crs}")
    if not _same_transform(src1.transform, src2.transform):
        differences.append(f"transform {tuple(src1.transform)[:6]} vs "
                           f"{tuple(src2.transform)[:6]}")
    if src1.shape != src2.shape:
        differences.append(f"shape {src1.shape} vs {src2.shape}")
    if not differences:
        return []
    return [Problem(rel1, GRID, f"{'; '.join(differences)} (vs {partner})",
                    "the same CRS, transform and shape in both product types")]


def disagrees(value1: int, value2: int) -> bool:
    """Whether a type 1 and a type 2 pixel value contradict each other (the pair rule)."""
    return value1 != TYPE1.nodata and (value1 == TYPE1.damage) != (value2 == TYPE2.damage)


def difference_code() -> int | None:
    """K with: for class values, ``(type1 - type2) mod 256 == K`` exactly where they disagree.

    Derived from the spec's class sets (for 0/1/255 against 0/255 it is 1), so a clean window
    pair is checked with one wrapping subtraction instead of five comparisons. None if the
    encodings ever stop allowing such a code.
    """
    bad, good = set(), set()
    for value1 in TYPE1.values:
        for value2 in TYPE2.values:
            (bad if disagrees(value1, value2) else good).add((value1 - value2) % 256)
    return next(iter(bad)) if len(bad) == 1 and not bad & good else None


_CODE = difference_code()


@dataclass
class PairTally:
    """Pixels where type 1 (inside the extent) and type 2 disagree about damage."""

    damage_outside: int = 0
    """Type 1 says damage, type 2 does not."""
    missed: int = 0
    """Type 2 says damage, type 1 says background."""

    def __post_init__(self) -> None:
        self._buffers = Buffers()

    def _surely_consistent(self, type1: np.ndarray, type2: np.ndarray) -> bool:
        """Fast exact test for windows holding only class values (see ``difference_code``)."""
        if _CODE is None or type1.dtype != np.uint8 or type2.dtype != np.uint8:
            return False
        diff = np.subtract(type1, type2, out=self._buffers.get("diff", type1.shape, np.uint8))
        np.bitwise_xor(diff, np.uint8(_CODE), out=diff)
        return bool(diff.size == 0 or diff.min() != 0)

    def update(self, type1: np.ndarray, type2: np.ndarray, classes_only: bool = False) -> None:
        """Add one window of both files (same window, same shape).

        ``classes_only`` says both windows hold only their type's class values (the value
        tallies found no other value), which allows the fast path.
        """
        if classes_only and self._surely_consistent(type1, type2):
            return
        inside = np.not_equal(type1, TYPE1.nodata, out=self._buffers.get("in", type1.shape, bool))
        damage1 = np.equal(type1, TYPE1.damage, out=self._buffers.get("d1", type1.shape, bool))
        disagree = np.equal(type2, TYPE2.damage, out=self._buffers.get("d2", type1.shape, bool))
        np.not_equal(damage1, disagree, out=disagree)
        np.logical_and(disagree, inside, out=disagree)
        if not disagree.any():
            return
        outside = int(np.count_nonzero(disagree & damage1))
        self.damage_outside += outside
        self.missed += int(np.count_nonzero(disagree)) - outside

    def problems(self, rel1: str, rel2: str) -> list[Problem]:
        """A problem naming the type 1 file if any pixel disagreed."""
        if not (self.damage_outside or self.missed):
            return []
        partner = rel2.rsplit("/", 1)[1]
        return [Problem(
            rel1, DAMAGE,
            f"{self.damage_outside} px damage ({TYPE1.damage}) here where {partner} is not "
            f"damage; {self.missed} px background here where {partner} is damage "
            f"({TYPE2.damage})",
            f"inside the extent (not {TYPE1.nodata}): type 1 = {TYPE1.damage} exactly where "
            f"type 2 = {TYPE2.damage}")]
