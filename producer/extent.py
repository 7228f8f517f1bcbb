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

Pixels whose centre lies inside the polygon belong to the extent (rasterio.features).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from rasterio import features
from shapely.geometry import box, mapping
from shapely.geometry.base import BaseGeometry

from producer.grid import Grid
from producer.spec import ENCODING, SpecError

#: Inward buffer of the default extent, as a share of the ROI bounding box's smaller side.
DEFAULT_SHRINK = 0.05


class ExtentError(SpecError):
    """An extent file or polygon that cannot give a shelf-year's extent."""


def read_extent(path: Path, shelf: str, year: int) -> BaseGeometry:
    """The extent polygon of one shelf-year from a GeoPackage (columns shelf, year), in EPSG:3031.

    Several rows of the same shelf-year are united. Missing columns, no CRS or no matching row
    are errors that name the file.
    """
    import geopandas as gpd

    path = Path(path)
    if not path.exists():
        raise ExtentError(f"{path}: extent file not found")
    frame = gpd.read_file(path)
    missing = [c for c in ("shelf", "year") if c not in frame.columns]
    if missing:
        raise ExtentError(f"{path}: missing column(s) {missing}; an extent file needs one row "
                          "per shelf-year with columns 'shelf' and 'year'")
    if frame.crs is None:
        raise ExtentError(f"{path}: layer has no CRS; expected {ENCODING.crs} or any defined CRS")
    rows = frame[(frame["shelf"] == shelf) & (frame["year"].astype(int) == int(year))]
    if rows.empty:
        raise ExtentError(f"{path}: no row with shelf == {shelf!r} and year == {year}")
    geometry = rows.to_crs(ENCODING.crs).geometry.union_all()
    if geometry.is_empty:
        raise ExtentError(f"{path}: the extent of {shelf} {year} is an empty geometry")
    return geometry


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
