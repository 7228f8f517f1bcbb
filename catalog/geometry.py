"""EPSG:3031 footprints as GeoJSON geometries in EPSG:4326 that stay right near the pole and 180°.

A rectangle in polar stereographic coordinates is a curved shape in longitude/latitude, so its
edges are densified before reprojection. In EPSG:3031 the antimeridian is the ray x = 0, y < 0
and the meridian 0° the ray x = 0, y > 0; splitting the footprint into its x ≥ 0 and x ≤ 0 halves
gives two pieces that each map to a continuous longitude range ([0, 180] and [-180, 0]). Pieces
that meet at 0° are merged again; pieces that meet at ±180° stay a MultiPolygon, and the bbox
then wraps (west > east) as RFC 7946 says. A footprint that contains the pole becomes a polar cap
(all longitudes, up to its northernmost latitude).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import shapely
from pyproj import Transformer
from shapely import box, segmentize
from shapely.geometry import MultiPolygon, Point, Polygon, mapping
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from producer.spec import ENCODING

#: Finest densification step along footprint edges in metres.
DENSIFY_M = 1000.0
#: Vertex budget of a footprint ring: 128 points keep a 500 km edge (16 km segments) within
#: a few metres of the true curve, and items small enough to search quickly.
MAX_VERTICES = 128
_HALF_PLANE = 1e8
_ROUND = 7


@cache
def _to_lonlat() -> Transformer:
    return Transformer.from_crs(ENCODING.crs, "EPSG:4326", always_xy=True)


@cache
def _to_polar() -> Transformer:
    return Transformer.from_crs("EPSG:4326", ENCODING.crs, always_xy=True)


def _project(geometry: BaseGeometry, side: int) -> BaseGeometry:
    """Reproject one half (side +1: x ≥ 0, -1: x ≤ 0) to lon/lat, pinning ±180 to that side."""
    def fn(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lon, lat = _to_lonlat().transform(np.asarray(x), np.asarray(y))
        lon = np.where(np.isclose(np.abs(lon), 180.0), 180.0 * side, lon)
        lon = np.where(np.asarray(x) == 0, np.where(np.asarray(y) >= 0, 0.0, 180.0 * side), lon)
        return np.round(lon, _ROUND), np.round(lat, _ROUND)

    return shapely.transform(geometry, lambda xy: np.column_stack(fn(xy[:, 0], xy[:, 1])))


def footprint_lonlat(footprint: BaseGeometry, densify_m: float = DENSIFY_M) -> BaseGeometry:
    """An EPSG:3031 polygon as an EPSG:4326 (Multi)Polygon, split at the antimeridian."""
    # at most ~MAX_VERTICES points around the ring, at least one every densify_m metres
    dense = segmentize(footprint, max(densify_m, footprint.length / MAX_VERTICES))
    if dense.contains(Point(0.0, 0.0)):
        lat_max = max(_to_lonlat().transform(x, y)[1] for x, y in dense.exterior.coords)
        return box(-180.0, -90.0, 180.0, round(lat_max, _ROUND))
    pieces = []
    for side in (1, -1):
        half = dense.intersection(box(0.0, -_HALF_PLANE, _HALF_PLANE, _HALF_PLANE)
                                  if side == 1 else
                                  box(-_HALF_PLANE, -_HALF_PLANE, 0.0, _HALF_PLANE))
        if not half.is_empty and half.area > 0:
            pieces.append(_project(half, side))
    merged = unary_union(pieces)
    return merged.buffer(0) if not merged.is_valid else merged


def crosses_antimeridian(geometry: BaseGeometry) -> bool:
    """Whether a lon/lat geometry has parts on both sides of ±180° (touching it)."""
    if not isinstance(geometry, MultiPolygon):
        return False
    bounds = [part.bounds for part in geometry.geoms]
    return any(b[2] >= 180.0 for b in bounds) and any(b[0] <= -180.0 for b in bounds)


def bbox_of(geometry: BaseGeometry) -> list[float]:
    """RFC 7946 bbox: [west, south, east, north], wrapping (west > east) across 180°."""
    minx, miny, maxx, maxy = geometry.bounds
    if crosses_antimeridian(geometry):
        east_parts = [p for p in geometry.geoms if p.bounds[2] >= 180.0]
        west_parts = [p for p in geometry.geoms if p.bounds[0] <= -180.0]
        west = min(p.bounds[0] for p in east_parts)
        east = max(p.bounds[2] for p in west_parts)
        return [west, miny, east, maxy]
    return [minx, miny, maxx, maxy]


def grid_footprint(bounds: tuple[float, float, float, float]) -> Polygon:
    """The EPSG:3031 rectangle of a raster's bounds (left, bottom, right, top)."""
    return box(*bounds)


def geojson_and_bbox(footprint: BaseGeometry) -> tuple[dict, list[float]]:
    """GeoJSON geometry dict and bbox of an EPSG:3031 footprint."""
    lonlat = footprint_lonlat(footprint)
    return mapping(lonlat), bbox_of(lonlat)


def bbox_3031_to_lonlat(bbox: tuple[float, float, float, float]) -> BaseGeometry:
    """A bbox given in EPSG:3031 as a lon/lat geometry (for searches)."""
    return footprint_lonlat(box(*bbox))


def lonlat_bbox_geometry(bbox: tuple[float, float, float, float]) -> BaseGeometry:
    """A lon/lat bbox as a geometry; a wrapping bbox (west > east) becomes two boxes."""
    west, south, east, north = bbox
    if west <= east:
        return box(west, south, east, north)
    return MultiPolygon([box(west, south, 180.0, north), box(-180.0, south, east, north)])


def to_polar(geometry: BaseGeometry) -> BaseGeometry:
    """A lon/lat geometry in EPSG:3031 (densified first so edges follow the graticule)."""
    dense = segmentize(geometry, 0.05)
    return shapely.transform(
        dense, lambda xy: np.column_stack(_to_polar().transform(xy[:, 0], xy[:, 1])))


