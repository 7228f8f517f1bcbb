"""ROI GeoPackages at the release root: one per shelf, EPSG:3031, with the outline's source.

The paper ships the ROIs used for imagery download as GeoPackages. We write one file per shelf,
named by ``producer.spec.roi_geopackage_name``, holding one polygon feature with the attributes
``shelf`` and ``source`` (where the outline comes from). An existing file (e.g. the official
outline of a published release) is kept unless the caller forces a rewrite.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import pandas as pd
import pyogrio
from shapely.geometry.base import BaseGeometry

from producer.roi_files import write_roi_geopackage
from producer.shelves import get_shelf, roi_polygon
from producer.spec import roi_geopackage_name

DEFAULT_SOURCE_NOTE = "approximate default ROI box of icedamage"


def default_roi(shelf: str) -> tuple[BaseGeometry, str]:
    """The registry's ROI of a shelf and a source text that says it is approximate."""
    record = get_shelf(shelf)
    return roi_polygon(shelf), f"{DEFAULT_SOURCE_NOTE}: {record.source}"


def ensure_roi_geopackage(release_dir: Path, shelf: str, force: bool = False) -> Path:
    """The shelf's GeoPackage, written from the default ROI when missing (or forced)."""
    path = Path(release_dir) / roi_geopackage_name(shelf)
    if path.exists() and not force:
        return path
    polygon, source = default_roi(shelf)
    return write_roi_geopackage(release_dir, shelf, polygon, source)


_POLYGON_TYPES = ("Polygon", "MultiPolygon")


def _is_polygonal(geometry_type: object) -> bool:
    """Whether a layer's declared geometry type is (Multi)Polygon, with Z / M variants."""
    return isinstance(geometry_type, str) and geometry_type.split(" ")[0] in _POLYGON_TYPES


def _is_generic(geometry_type: object) -> bool:
    """Whether a layer declares no particular geometry type (GDAL's "Unknown" / "Geometry")."""
    return isinstance(geometry_type, str) and \
        geometry_type.split(" ")[0] in ("Unknown", "Geometry", "GeometryCollection")


def read_roi(path: Path) -> gpd.GeoDataFrame:
    """The ROI polygons of a GeoPackage: the features of its polygon layer(s), in one frame.

    A GeoPackage may hold other layers besides the ROI (labels as points, QGIS's non-spatial
    ``layer_styles`` table, ...) in any order, and GDAL's default is the first layer, so the
    layers declared (Multi)Polygon are read; a layer of no declared type counts when all its
    features are polygons. Several polygon layers are combined (they must share a CRS). A file
    without any polygon layer is a ``ValueError`` that lists the layers it has.
    """
    layers = [(str(name), kind) for name, kind in pyogrio.list_layers(path)]
    frames = [gpd.read_file(path, layer=name, engine="pyogrio")
              for name, kind in layers if _is_polygonal(kind)]
    if not frames:
        generic = [gpd.read_file(path, layer=name, engine="pyogrio")
                   for name, kind in layers if _is_generic(kind)]
        frames = [f for f in generic
                  if not f.empty and set(f.geometry.geom_type) <= set(_POLYGON_TYPES)]
    if not frames:
        listed = ", ".join(f"{name} ({kind or 'no geometry'})" for name, kind in layers)
        raise ValueError(f"{Path(path).name}: no polygon layer (layers: {listed or 'none'})")
    crs = frames[0].crs
    if any(f.crs != crs for f in frames[1:]):
        raise ValueError(f"{Path(path).name}: its polygon layers are in different CRSs")
    if len(frames) == 1:
        return frames[0]
    return gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs=crs)
