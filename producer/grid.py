"""The pixel grid of a product: EPSG:3031 at 30 m, aligned to multiples of the pixel size."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from affine import Affine
from rasterio.windows import Window
from shapely.geometry.base import BaseGeometry

from producer.spec import ENCODING

#: Rows read, merged or written at once by the stages that must not hold a whole grid (one row
#: of product tiles: a strip of the Amery grid is ~10 Mpx).
STRIP_ROWS = ENCODING.blocksize


def row_strips(height: int, rows: int = STRIP_ROWS) -> list[tuple[int, int]]:
    """(first, end) row of each strip of ``rows`` rows covering ``height`` rows."""
    return [(r0, min(r0 + rows, height)) for r0 in range(0, height, max(1, rows))]


@dataclass(frozen=True)
class Grid:
    """Where the pixels of a raster lie: a north-up transform, a shape and a CRS."""

    transform: Affine
    width: int
    height: int
    crs: str = ENCODING.crs

    @classmethod
    def from_bounds(
        cls, left: float, bottom: float, right: float, top: float,
        resolution: float = ENCODING.resolution,
    ) -> Grid:
        """The smallest grid aligned to ``resolution`` multiples that covers the bounds."""
        x0 = math.floor(left / resolution) * resolution
        y1 = math.ceil(top / resolution) * resolution
        width = max(1, math.ceil((right - x0) / resolution))
        height = max(1, math.ceil((y1 - bottom) / resolution))
        return cls(Affine(resolution, 0.0, x0, 0.0, -resolution, y1), width, height)

    @classmethod
    def covering(cls, geometry: BaseGeometry, resolution: float = ENCODING.resolution) -> Grid:
        """The aligned grid covering a geometry given in the grid's CRS."""
        return cls.from_bounds(*geometry.bounds, resolution=resolution)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns), as numpy arrays of this grid are shaped."""
        return self.height, self.width

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the grid's CRS."""
        left, top = self.transform.c, self.transform.f
        return (left, top + self.transform.e * self.height,
                left + self.transform.a * self.width, top)

    @property
    def resolution(self) -> tuple[float, float]:
        """Pixel width and height (positive)."""
        return abs(self.transform.a), abs(self.transform.e)

    def holds(self, dataset: Any) -> bool:
        """Whether an open raster (rasterio dataset) lies exactly on this grid: same shape, same
        transform (to float rounding) and, when it has one, the same CRS."""
        if (dataset.height, dataset.width) != self.shape:
            return False
        if not dataset.transform.almost_equals(self.transform):
            return False
        return dataset.crs is None or dataset.crs == self.crs

    def subgrid(self, window: Window) -> Grid:
        """The grid of a window of this one."""
        return Grid(self.transform @ Affine.translation(window.col_off, window.row_off),
                    int(window.width), int(window.height), self.crs)
