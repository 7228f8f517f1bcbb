"""ROI GeoPackages at the release root: one per shelf, EPSG:3031, with the outline's source.

The paper ships the ROIs used for imagery download as GeoPackages. We write one file per shelf,
named by ``producer.spec.roi_geopackage_name``, holding one polygon feature with the attributes
``shelf`` and ``source`` (where the outline comes from). An existing file (e.g. the official
outline of a published release) is kept unless the caller forces a rewrite.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
from shapely.geometry.base import BaseGeometry

from producer.roi_files import read_roi_frame, write_roi_geopackage
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


def read_roi(path: Path) -> gpd.GeoDataFrame:
    """The ROI polygons of a GeoPackage: the features of its ROI layer, as stored.

    The layer is the one ``produce`` maps (``producer.roi_files.roi_layer``: the polygon
    layer, or of several the one named as the ROI), so that ``validate`` checks the outline the
    maps were made on. A file with no such layer is a ``ValueError`` naming the file and the
    layers it has.
    """
    try:
        return read_roi_frame(Path(path))
    except ValueError as err:
        raise ValueError(f"{Path(path).name}: {err}") from None
