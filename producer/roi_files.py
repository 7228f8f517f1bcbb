"""The ROI GeoPackage of a shelf in a release: which outline ``produce`` maps, and writing one.

The release root holds one ``<Shelf>_ROI.gpkg`` per shelf (paper, section 4: "the ROIs used for
imagery download are provided as GeoPackage files"), and the products of a shelf are made on
the grid covering that outline (``icedamage validate`` checks it: ``roi-grid-mismatch``). So
``produce`` maps, in this order:

1. ``--roi FILE`` (a GeoPackage whose ``shelf``/``name`` column picks the shelf, or a single
   feature), refused when the release already holds another outline for the shelf; after the
   first shelf-year produced with it, it is written into the release;
2. the release's own ``<Shelf>_ROI.gpkg`` (e.g. the official outline of a published release);
3. the registry's default ROI (``producer.shelves``), which ``icedamage catalog`` writes.

An outline other than the registry's enters the inputs digest by its normalised geometry, so
a replaced ROI redoes the shelf's years while the default (written back by the catalog) and a
file rewritten with the same outline do not.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import shapely
from shapely.geometry.base import BaseGeometry

from producer.shelves import load_roi_geopackage, roi_polygon
from producer.spec import ENCODING, SpecError, roi_geopackage_name

if TYPE_CHECKING:
    import geopandas as gpd

#: The GeoPackage layer holding the ROI.
LAYER = "roi"
#: Two outlines are the same when their symmetric difference is at most this share of the area
#: (a GeoPackage round trip, a reprojection's rounding).
SAME_OUTLINE_SHARE = 1e-6
#: Where an outline came from when it is the registry's.
DEFAULT_ORIGIN = "default"


def roi_frame(shelf: str, polygon: BaseGeometry, source: str) -> gpd.GeoDataFrame:
    """A one-row frame (shelf, source, geometry) in EPSG:3031."""
    import geopandas as gpd

    return gpd.GeoDataFrame({"shelf": [shelf], "source": [source]}, geometry=[polygon],
                            crs=ENCODING.crs)


def write_roi_geopackage(release_dir: Path, shelf: str, polygon: BaseGeometry,
                         source: str) -> Path:
    """Write ``<release>/<Shelf>_ROI.gpkg`` atomically."""
    path = Path(release_dir) / roi_geopackage_name(shelf)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".roi-", dir=path.parent) as tmp_dir:
        tmp = Path(tmp_dir) / path.name  # GDAL wants the .gpkg extension and no existing file
        roi_frame(shelf, polygon, source).to_file(tmp, driver="GPKG", layer=LAYER,
                                                  engine="pyogrio")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    return path


def same_outline(a: BaseGeometry, b: BaseGeometry) -> bool:
    """Whether two ROI outlines cover the same ground (up to ``SAME_OUTLINE_SHARE``)."""
    area = max(a.area, b.area, 1.0)
    return a.symmetric_difference(b).area <= SAME_OUTLINE_SHARE * area


def outline_sha256(polygon: BaseGeometry) -> str:
    """A digest of an outline that does not depend on vertex order or ring start."""
    return hashlib.sha256(shapely.normalize(polygon).wkb).hexdigest()


def release_roi_file(release_dir: Path, shelf: str) -> Path:
    """Where a release keeps the ROI GeoPackage of ``shelf``."""
    return Path(release_dir) / roi_geopackage_name(shelf)


def read_outline(path: Path, shelf: str, what: str) -> BaseGeometry:
    """The shelf's outline from a GeoPackage, or ValueError naming the file and ``what`` it is."""
    try:
        outline = load_roi_geopackage(Path(path), shelf)
    except (SpecError, OSError, ValueError) as err:
        raise ValueError(f"{what} {path}: {err}") from None
    except Exception as err:  # noqa: BLE001 - pyogrio/GDAL raise their own kinds on bad files
        raise ValueError(f"{what} {path}: not a GeoPackage of ROI polygons ({err})") from None
    if outline.is_empty or outline.geom_type not in ("Polygon", "MultiPolygon"):
        raise ValueError(f"{what} {path}: the outline of {shelf} is {outline.geom_type}, not a "
                         "polygon")
    return outline


def produce_roi(release_dir: Path, shelf: str, given: Path | None = None
                ) -> tuple[BaseGeometry, str]:
    """The outline ``produce`` maps for ``shelf`` and where it comes from (``file:NAME``,
    ``release:NAME`` or ``DEFAULT_ORIGIN``); ValueError when ``given`` disagrees with the
    release's own file or either cannot be read."""
    kept = release_roi_file(release_dir, shelf)
    in_release = read_outline(kept, shelf, "ROI GeoPackage") if kept.is_file() else None
    if given is not None:
        outline = read_outline(given, shelf, "--roi")
        if in_release is not None and not same_outline(outline, in_release):
            raise ValueError(
                f"--roi {given}: the release {release_dir} holds {kept.name} with another "
                f"outline of {shelf}; a release's maps are made on its own ROI, so replace or "
                "remove that file first (its products were made on it)")
        return outline, f"file:{Path(given).name}"
    if in_release is not None:
        return in_release, f"release:{kept.name}"
    return roi_polygon(shelf), DEFAULT_ORIGIN


def is_default_outline(shelf: str, outline: BaseGeometry) -> bool:
    """Whether an outline is the registry's ROI of the shelf (e.g. written back by the
    catalog), which leaves the inputs digest as it was."""
    return same_outline(outline, roi_polygon(shelf))
