"""ROI GeoPackages at the release root: one per shelf, EPSG:3031, with the outline's source.

The paper ships the ROIs used for imagery download as GeoPackages. We write one file per shelf,
named by ``producer.spec.roi_geopackage_name``, holding one polygon feature with the attributes
``shelf`` and ``source`` (where the outline comes from). An existing file (e.g. the official
outline of a published release) is kept unless the caller forces a rewrite.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import geopandas as gpd
from shapely.geometry.base import BaseGeometry

from producer.shelves import get_shelf, roi_polygon
from producer.spec import ENCODING, roi_geopackage_name

LAYER = "roi"
DEFAULT_SOURCE_NOTE = "approximate default ROI box of icedamage"


def roi_frame(shelf: str, polygon: BaseGeometry, source: str) -> gpd.GeoDataFrame:
    """A one-row frame (shelf, source, geometry) in EPSG:3031."""
    return gpd.GeoDataFrame({"shelf": [shelf], "source": [source]}, geometry=[polygon],
                            crs=ENCODING.crs)


def default_roi(shelf: str) -> tuple[BaseGeometry, str]:
    """The registry's ROI of a shelf and a source text that says it is approximate."""
    record = get_shelf(shelf)
    return roi_polygon(shelf), f"{DEFAULT_SOURCE_NOTE}: {record.source}"


def write_roi_geopackage(release_dir: Path, shelf: str, polygon: BaseGeometry,
                         source: str) -> Path:
    """Write ``<release>/<Shelf>_ROI.gpkg`` atomically."""
    path = Path(release_dir) / roi_geopackage_name(shelf)
    with tempfile.TemporaryDirectory(prefix=".roi-", dir=path.parent) as tmp_dir:
        tmp = Path(tmp_dir) / path.name  # GDAL wants the .gpkg extension and no existing file
        roi_frame(shelf, polygon, source).to_file(tmp, driver="GPKG", layer=LAYER,
                                                  engine="pyogrio")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    return path


def ensure_roi_geopackage(release_dir: Path, shelf: str, force: bool = False) -> Path:
    """The shelf's GeoPackage, written from the default ROI when missing (or forced)."""
    path = Path(release_dir) / roi_geopackage_name(shelf)
    if path.exists() and not force:
        return path
    polygon, source = default_roi(shelf)
    return write_roi_geopackage(release_dir, shelf, polygon, source)


def read_roi(path: Path) -> gpd.GeoDataFrame:
    """The features of a ROI GeoPackage (for validation and tests)."""
    return gpd.read_file(path, engine="pyogrio")
