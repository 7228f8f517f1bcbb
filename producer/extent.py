"""The effective ice-shelf extent of a shelf-year (paper, 2.4.2), as a mask on the ROI grid.

The paper fixes the grounding line from MEaSUREs and moves the front by hand for every year; we
take those polygons from a GeoPackage of extents (one row per shelf-year: columns ``shelf`` and
``year``, any CRS). Without such a file the extent is a default:

* a source that knows its scene geometry (the demo source's ``extent(shelf, year, grid)``)
  supplies its own floating-ice polygon;
* otherwise the registry's ROI polygon shrunk inwards by ``DEFAULT_SHRINK`` of the smaller side
  of its bounding box (the ROIs are drawn with an outward margin around the shelf, section
  2.1.1), clipped to the grid. This default is an approximation, recorded as such in the
  provenance; pass ``--extent`` for the real thing.

Pixels whose centre lies inside the polygon belong to the extent (rasterio.features). The
products cover the ROI only and there is no imagery beyond it, so an extent reaching outside the
ROI is not fully covered, and a shelf-year whose shelf region is not fully covered has no map
(paper 2.4.1). Only a sliver is tolerated, for GIS imprecision (an extent drawn a pixel past an
approximate ROI): when at most ``MAX_OUTSIDE_ROI_SHARE`` of the extent's area lies outside the
ROI, the extent used is its part inside the ROI, the rest is NoData in the type 1 map and its
share is recorded in the provenance; beyond that the shelf-year is not mapped.
``ShelfArea`` holds a grid's ROI and extent masks bit-packed (2 bits a pixel), rasterized strip
by strip, for grids too big to hold as boolean arrays (Amery: 313 Mpx).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from rasterio import features
from rasterio.windows import Window
from shapely.geometry import box, mapping
from shapely.geometry.base import BaseGeometry

from producer.grid import STRIP_ROWS, Grid, row_strips
from producer.shelves import shelf_key
from producer.spec import ENCODING, SpecError

#: Inward buffer of the default extent, as a share of the ROI bounding box's smaller side.
DEFAULT_SHRINK = 0.05
#: Largest share of an extent's area that may lie outside the ROI and still give a map. The
#: requirement is a fully covered shelf region, and nothing beyond the ROI is imaged; this
#: tolerance only absorbs GIS imprecision (an extent digitised against another outline, a
#: ROI approximated by a box), where the part outside becomes NoData in the type 1 map.
MAX_OUTSIDE_ROI_SHARE = 0.01


class ExtentError(SpecError):
    """An extent file or polygon that cannot give a shelf-year's extent."""


def read_extent(path: Path, shelf: str, year: int) -> BaseGeometry:
    """The extent polygon of one shelf-year from a GeoPackage (columns shelf, year), in EPSG:3031.

    Shelf names match loosely, as everywhere ("Pine_Island" is "Pine Island"). Several rows of
    the same shelf-year are united. An unreadable file, missing columns, no CRS or no matching
    row are errors that name the file.
    """
    path = Path(path)
    frame = read_extents(path)
    same_shelf = frame["shelf"].map(lambda name: isinstance(name, str)
                                    and shelf_key(name) == shelf_key(shelf))
    rows = frame[same_shelf & (frame["year"] == int(year))]
    if rows.empty:
        raise ExtentError(f"{path}: no row with shelf == {shelf!r} and year == {year}")
    geometry = rows.to_crs(ENCODING.crs).geometry.union_all()
    if geometry.is_empty:
        raise ExtentError(f"{path}: the extent of {shelf} {year} is an empty geometry")
    return geometry


def read_extents(path: Path) -> Any:
    """Every row of an extent file (a GeoDataFrame, 'year' as integers), once the file is known
    to be usable: readable by GDAL, with columns 'shelf' and 'year', a CRS and whole years.

    ``produce`` calls it before any work, so a damaged file is one error line naming it rather
    than a GDAL traceback, or a failure of every shelf-year after its scenes are fetched.
    """
    import geopandas as gpd

    path = Path(path)
    if not path.exists():
        raise ExtentError(f"{path}: extent file not found")
    try:
        frame = gpd.read_file(path)
    except Exception as err:  # noqa: BLE001 - pyogrio/GDAL raise their own kinds on bad files
        raise ExtentError(f"{path}: not a readable GeoPackage of extents "
                          f"({_gdal_reason(err)})") from None
    missing = [c for c in ("shelf", "year") if c not in frame.columns]
    if missing:
        raise ExtentError(f"{path}: missing column(s) {missing}; an extent file needs one row "
                          "per shelf-year with columns 'shelf' and 'year'")
    if frame.crs is None:
        raise ExtentError(f"{path}: layer has no CRS; expected {ENCODING.crs} or any defined CRS")
    return frame.assign(year=_years_column(frame, path))


def _gdal_reason(err: Exception) -> str:
    """The first clause of a GDAL/pyogrio error, on one line (GDAL appends hints after ';')."""
    text = " ".join(str(err).split(";")[0].split()).rstrip(".")
    return text or type(err).__name__


def polygonal(geometry: BaseGeometry) -> BaseGeometry:
    """An extent drawn by hand made valid (a self-crossing ring, a bow-tie) and kept to its
    areas; GIS tools draw such polygons, and overlay operations refuse them."""
    if geometry.is_valid:
        return geometry
    import shapely

    fixed = shapely.make_valid(geometry)
    parts = [g for g in getattr(fixed, "geoms", [fixed]) if g.area > 0]
    return shapely.union_all(parts) if parts else fixed


def _years_column(frame: Any, path: Path) -> Any:
    """The 'year' column as integers; a value that is not a whole year names its row."""
    import pandas as pd

    years = pd.to_numeric(frame["year"], errors="coerce")
    bad = years.isna() | (years.notna() & (years != years.round()))
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise ExtentError(f"{path}: row {row + 1}, column 'year' is "
                          f"{frame['year'].iloc[row]!r}; expected a year such as 2021")
    return years.astype(int)


def share_outside(extent: BaseGeometry, roi: BaseGeometry) -> float:
    """The share of the extent's area that lies outside the ROI (0 when it lies within).

    The products cover the ROI only: there is no imagery beyond it, so that part of the shelf
    region is not covered. Up to ``MAX_OUTSIDE_ROI_SHARE`` it is NoData in the type 1 map and
    the provenance records the share; beyond it the shelf-year is not mapped.
    """
    if extent.is_empty or extent.area == 0:
        return 0.0
    return float(extent.difference(roi).area / extent.area)


def default_extent(roi: BaseGeometry, grid: Grid, shrink: float = DEFAULT_SHRINK) -> BaseGeometry:
    """The ROI shrunk inwards by ``shrink`` of its bounding box's smaller side, within the grid."""
    left, bottom, right, top = roi.bounds
    inner = roi.buffer(-shrink * min(right - left, top - bottom))
    return inner.intersection(box(*grid.bounds))


def extent_mask(geometry: BaseGeometry, grid: Grid) -> NDArray[np.bool_]:
    """True for grid pixels whose centre lies inside ``geometry`` (EPSG:3031)."""
    if geometry.is_empty:
        return np.zeros(grid.shape, bool)
    return features.geometry_mask([mapping(geometry)], out_shape=grid.shape,
                                  transform=grid.transform, invert=True)


def roi_mask(roi: BaseGeometry, grid: Grid) -> NDArray[np.bool_]:
    """True for grid pixels inside the ROI polygon."""
    return extent_mask(roi, grid)


class ShelfArea:
    """The ROI and extent masks of a grid, bit-packed by rows (rasterized strip by strip).

    The same pixels as ``roi_mask`` / ``extent_mask`` (pixel centres inside), in an eighth of
    the memory of one boolean array each, without ever building a whole-grid array.
    """

    def __init__(self, roi: BaseGeometry, extent: BaseGeometry, grid: Grid,
                 strip_rows: int = STRIP_ROWS) -> None:
        self.grid = grid
        self._roi = np.empty((grid.height, (grid.width + 7) // 8), np.uint8)
        self._extent = np.empty_like(self._roi)
        self.outside_share = share_outside(extent, roi)
        """Share of the extent's area outside the ROI: NoData in the type 1 map up to
        ``MAX_OUTSIDE_ROI_SHARE``, no map beyond (see ``covered_by_roi``)."""
        self.extent_pixels = 0
        """Pixels inside both the extent and the ROI: the valid pixels of the type 1 map."""
        for r0, r1 in row_strips(grid.height, strip_rows):
            sub = grid.subgrid(Window(0, r0, grid.width, r1 - r0))
            roi_strip = roi_mask(roi, sub)
            self._roi[r0:r1] = np.packbits(roi_strip, axis=1)
            strip = extent_mask(extent, sub) & roi_strip
            self._extent[r0:r1] = np.packbits(strip, axis=1)
            self.extent_pixels += int(np.count_nonzero(strip))

    @property
    def covered_by_roi(self) -> bool:
        """Whether the extent lies inside the ROI up to ``MAX_OUTSIDE_ROI_SHARE`` of its area:
        otherwise the shelf region is not fully covered (nothing is imaged beyond the ROI)."""
        return self.outside_share <= MAX_OUTSIDE_ROI_SHARE

    def rows(self, r0: int, r1: int) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
        """(roi, extent within the ROI) of rows r0:r1."""
        width = self.grid.width
        return (np.unpackbits(self._roi[r0:r1], axis=1, count=width).view(bool),
                np.unpackbits(self._extent[r0:r1], axis=1, count=width).view(bool))
