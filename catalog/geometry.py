"""EPSG:3031 footprints as GeoJSON geometries in EPSG:4326 that stay right near the pole and 180°.

A rectangle in polar stereographic coordinates is a curved shape in longitude/latitude, so its
edges are densified before reprojection: each edge gets as many vertices as it needs for the
straight longitude/latitude segments between them (what GeoJSON and every search over it take
an edge to be) to stay within ``TOLERANCE_M`` (1 m) of the true edge, so the geometry contains
the raster's footprint to within that tolerance and overshoots it by no more. The count grows
with an edge's length and curvature in longitude/latitude (about 590 vertices for Amery's
620 km × 455 km grid, 175 for Totten's, 30 for a 30 km demo grid).

In EPSG:3031 the antimeridian is the ray x = 0, y < 0 and the meridian 0° the ray x = 0, y > 0;
splitting the footprint into its x ≥ 0 and x ≤ 0 halves gives two pieces that each map to a
continuous longitude range ([0, 180] and [-180, 0]). Pieces that meet at 0° are merged again;
pieces that meet at ±180° stay a MultiPolygon, and the bbox then wraps (west > east) as RFC 7946
says. A footprint that contains the pole becomes a polar cap (all longitudes, up to its
northernmost latitude). A footprint whose boundary touches the pole (a corner or an edge through
it) is also split at y = 0, so the pole is a vertex of each piece; there it becomes the stretch
of the -90° parallel between the meridians of its two edges.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import shapely
from pyproj import Transformer
from shapely import box
from shapely.geometry import MultiPolygon, Point, Polygon, mapping
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from producer.spec import ENCODING

#: How far (metres, in EPSG:3031) a straight longitude/latitude segment of a footprint's
#: geometry may depart from the footprint's true edge: the raster's footprint lies inside the
#: geometry to within this distance (a pixel is 30 m).
TOLERANCE_M = 1.0
#: Points of each segment (as fractions of it) where its departure is measured; the departure
#: of a short segment is a smooth bump, largest near its middle.
_PROBES = np.array([0.25, 0.5, 0.75])
#: Each segment is refined to this share of the tolerance, a margin for the departure between
#: the probes.
_TARGET = 0.9
#: Refinement rounds at most (each one divides every segment still too far by the factor its
#: departure asks for, so two or three rounds suffice away from the pole).
_MAX_ROUNDS = 30
_HALF_PLANE = 1e8
_ROUND = 7


@cache
def _to_lonlat() -> Transformer:
    return Transformer.from_crs(ENCODING.crs, "EPSG:4326", always_xy=True)


@cache
def _to_polar() -> Transformer:
    return Transformer.from_crs("EPSG:4326", ENCODING.crs, always_xy=True)


def _departure(start: np.ndarray, end: np.ndarray, t0: np.ndarray,
               t1: np.ndarray) -> np.ndarray:
    """How far (metres) the straight lon/lat segment between the points at ``t0`` and ``t1``
    of the EPSG:3031 edge ``start``-``end`` strays from that edge, per segment (its largest
    distance at the probes).

    Longitudes are unwrapped across 180° (the antimeridian split puts a vertex there, which
    only shortens the segments), and the pole, which has no longitude, takes its neighbour's:
    a segment from the pole runs along a meridian.
    """
    edge = end - start
    p0, p1 = start + t0[:, None] * edge, start + t1[:, None] * edge
    lon0, lat0 = (np.asarray(v, float) for v in _to_lonlat().transform(p0[:, 0], p0[:, 1]))
    lon1, lat1 = (np.asarray(v, float) for v in _to_lonlat().transform(p1[:, 0], p1[:, 1]))
    lon0 = np.where((p0[:, 0] == 0) & (p0[:, 1] == 0), lon1, lon0)
    lon1 = np.where((p1[:, 0] == 0) & (p1[:, 1] == 0), lon0, lon1)
    lon1 = lon0 + (lon1 - lon0 + 180.0) % 360.0 - 180.0
    lon = lon0[:, None] + _PROBES * (lon1 - lon0)[:, None]
    lat = lat0[:, None] + _PROBES * (lat1 - lat0)[:, None]
    x, y = _to_polar().transform(lon.ravel(), lat.ravel())
    dx, dy = np.asarray(x) - start[0], np.asarray(y) - start[1]
    distance = np.abs(edge[0] * dy - edge[1] * dx) / np.hypot(edge[0], edge[1])
    return distance.reshape(-1, len(_PROBES)).max(axis=1)


def _edge_fractions(start: np.ndarray, end: np.ndarray, tolerance_m: float) -> np.ndarray:
    """Sorted fractions (0 … 1) of an EPSG:3031 edge at which to put vertices so that every
    lon/lat segment between them stays within ``tolerance_m`` of the edge.

    A segment too far is divided into k equal parts, k from its departure (which falls with
    the square of a segment's length), and the parts are checked again.
    """
    fractions = np.array([0.0, 1.0])
    target = _TARGET * tolerance_m
    for _ in range(_MAX_ROUNDS):
        departure = _departure(start, end, fractions[:-1], fractions[1:])
        far = departure > target
        if not far.any():
            break
        added = [np.linspace(t0, t1, max(2, int(np.ceil(1.05 * np.sqrt(d / target)))) + 1)[1:-1]
                 for t0, t1, d in zip(fractions[:-1][far], fractions[1:][far], departure[far],
                                      strict=True)]
        fractions = np.sort(np.concatenate([fractions, *added]))
    return fractions


def _densify_ring(coords: np.ndarray, tolerance_m: float) -> np.ndarray:
    """A closed EPSG:3031 ring with vertices added along each edge (``_edge_fractions``)."""
    parts = []
    for start, end in zip(coords[:-1], coords[1:], strict=True):
        if np.array_equal(start, end):
            continue
        fractions = _edge_fractions(start, end, tolerance_m)
        parts.append(start + fractions[:-1, None] * (end - start))
    parts.append(coords[-1:])
    return np.vstack(parts)


def densify(footprint: BaseGeometry, tolerance_m: float = TOLERANCE_M) -> BaseGeometry:
    """An EPSG:3031 (Multi)Polygon with enough vertices on each edge that straight lon/lat
    segments between its reprojected vertices stay within ``tolerance_m`` of the edge."""
    polygons = []
    for part in getattr(footprint, "geoms", [footprint]):
        rings = [_densify_ring(np.asarray(r.coords, dtype=float), tolerance_m)
                 for r in (part.exterior, *part.interiors)]
        polygons.append(Polygon(rings[0], rings[1:]))
    return polygons[0] if len(polygons) == 1 else MultiPolygon(polygons)


def _lonlat(x: np.ndarray, y: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Lon/lat of EPSG:3031 points of one half (side +1: x ≥ 0, -1: x ≤ 0), ±180 on that side."""
    lon, lat = _to_lonlat().transform(x, y)
    lon = np.where(np.isclose(np.abs(lon), 180.0), 180.0 * side, lon)
    lon = np.where(x == 0, np.where(y >= 0, 0.0, 180.0 * side), lon)
    return np.round(lon, _ROUND), np.round(lat, _ROUND)


def _project_ring(coords: np.ndarray, side: int) -> list[tuple[float, float]]:
    """A closed EPSG:3031 ring in lon/lat; a vertex at the pole (which has no longitude) becomes
    the stretch of the -90° parallel between the meridians of the edges meeting there."""
    points = coords[:-1]
    lon, lat = _lonlat(points[:, 0], points[:, 1], side)
    at_pole = (points[:, 0] == 0) & (points[:, 1] == 0)
    out: list[tuple[float, float]] = []
    for i in range(len(points)):
        if not at_pole[i]:
            out.append((float(lon[i]), float(lat[i])))
            continue
        # straight lines through the pole are meridians: the neighbours' longitudes are theirs
        for j in (i - 1, (i + 1) % len(points)):
            if not at_pole[j] and (not out or out[-1] != (float(lon[j]), -90.0)):
                out.append((float(lon[j]), -90.0))
    return [*out, out[0]]


def _project(geometry: BaseGeometry, side: int) -> BaseGeometry:
    """Reproject the polygons of one half (side +1: x ≥ 0, -1: x ≤ 0) to lon/lat."""
    polygons = []
    for part in getattr(geometry, "geoms", [geometry]):
        if isinstance(part, Polygon) and part.area > 0:
            rings = [_project_ring(np.asarray(r.coords), side)
                     for r in (part.exterior, *part.interiors)]
            polygons.append(Polygon(rings[0], rings[1:]))
    return unary_union(polygons)


def _touches_pole(geometry: BaseGeometry) -> bool:
    return geometry.boundary.distance(Point(0.0, 0.0)) == 0


def footprint_lonlat(footprint: BaseGeometry, tolerance_m: float = TOLERANCE_M) -> BaseGeometry:
    """An EPSG:3031 polygon as an EPSG:4326 (Multi)Polygon, split at the antimeridian, whose
    straight lon/lat edges stay within ``tolerance_m`` of the footprint's edges.

    Exterior rings run counterclockwise, as RFC 7946 requires: EPSG:3031 → lon/lat flips
    orientation, and tools that repair antimeridian geometries (the ``antimeridian`` package
    under stactools, with ``force_south_pole``) read a clockwise ring as the rest of the globe.
    """
    return shapely.orient_polygons(_footprint_lonlat(footprint, tolerance_m))


def _footprint_lonlat(footprint: BaseGeometry, tolerance_m: float) -> BaseGeometry:
    dense = densify(footprint, tolerance_m)
    if dense.contains(Point(0.0, 0.0)):
        lat_max = max(_to_lonlat().transform(x, y)[1] for x, y in dense.exterior.coords)
        return box(-180.0, -90.0, 180.0, round(lat_max, _ROUND))
    # a boundary through the pole is cut at y = 0 too, which puts a vertex exactly on the pole
    rows = ((-_HALF_PLANE, 0.0), (0.0, _HALF_PLANE)) if _touches_pole(dense) else \
        ((-_HALF_PLANE, _HALF_PLANE),)
    pieces = []
    for side in (1, -1):
        xmin, xmax = (0.0, _HALF_PLANE) if side == 1 else (-_HALF_PLANE, 0.0)
        for ymin, ymax in rows:
            piece = dense.intersection(box(xmin, ymin, xmax, ymax))
            if not piece.is_empty and piece.area > 0:
                pieces.append(_project(piece, side))
    merged = unary_union(pieces)
    return merged.buffer(0) if not merged.is_valid else merged


def lon_span(intervals: list[tuple[float, float]]) -> tuple[float, float]:
    """(west, east) of the shortest arc of longitudes covering every interval.

    Intervals are (west, east) with west ≤ east, or west > east for one wrapping across 180°.
    The arc is the complement of the widest gap between the covered stretches; west > east when
    it crosses 180°, (-180, 180) when there is no gap.
    """
    flat: list[tuple[float, float]] = []
    for west, east in intervals:
        flat.extend([(west, 180.0), (-180.0, east)] if west > east else [(west, east)])
    merged: list[list[float]] = []
    for west, east in sorted(flat):
        if merged and west <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], east)
        else:
            merged.append([west, east])
    # gap i lies after merged[i]; the last one wraps across 180° to merged[0]
    gaps = [merged[i + 1][0] - merged[i][1] for i in range(len(merged) - 1)]
    gaps.append(merged[0][0] + 360.0 - merged[-1][1])
    widest = max(range(len(gaps)), key=lambda i: gaps[i])
    if gaps[widest] <= 0:
        return -180.0, 180.0
    if widest == len(merged) - 1:
        return merged[0][0], merged[-1][1]
    return merged[widest + 1][0], merged[widest][1]


def bbox_of(geometry: BaseGeometry) -> list[float]:
    """RFC 7946 bbox: [west, south, east, north], wrapping (west > east) across 180°.

    The longitudes are the shortest arc covering every part, so a MultiPolygon split at 180°
    together with parts elsewhere (a shelf's footprints of several years) is covered whole.
    """
    _, miny, _, maxy = geometry.bounds
    parts = getattr(geometry, "geoms", [geometry])
    west, east = lon_span([(p.bounds[0], p.bounds[2]) for p in parts if not p.is_empty])
    return [west, miny, east, maxy]


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
