"""The registry of released ice shelves and their regions of interest (ROIs).

The official ROIs ship with the released dataset as GeoPackages, which this project does not
have. Every default ROI is a longitude/latitude box (edges along the graticule, densified in
EPSG:3031). Thwaites' is the authors' own: the rectangle of their published Earth Engine script.
The others are APPROXIMATE, built from the shelf's gazetteer position (SCAR Composite Gazetteer
of Antarctica / USGS GNIS) and half-widths that we estimated to enclose the shelf, its front and
its grounding zone as in the paper's Fig. 4. The ``source`` field says which. Replace them with
the official outlines with ``load_roi_geopackage``: ``produce --roi FILE``, or the release's own
``<Shelf>_ROI.gpkg`` (``producer.roi_files``).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from pyproj import Transformer
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from producer.spec import ENCODING, SpecError, check_shelf_name_safe


@dataclass(frozen=True)
class ShelfRecord:
    """A registered shelf: released name, lon/lat ROI box, and where the numbers come from."""

    name: str
    lon_min: float
    lon_max: float
    lat_min: float
    lat_max: float
    source: str
    #: (lon_min, lon_max, lat_min, lat_max) around the shelf itself, where the ROI reaches well
    #: beyond it: the default effective extent is built from it rather than from the ROI.
    shelf_box: tuple[float, float, float, float] | None = None

    @property
    def slug(self) -> str:
        """Lower-case, hyphenated name for identifiers (STAC ids, keys)."""
        return self.name.lower().replace(" ", "-").replace("_", "-")


_GAZ = "SCAR Composite Gazetteer of Antarctica / USGS GNIS position"
_AUTHORS_ROI = (
    "the authors' published Earth Engine script (tly-code/surface-damage-seg, "
    "landsat_daily_composite_export_GEE.js): its roiRegion ee.Geometry.Rectangle([-111.69132190, "
    "-76.38148504, -101.92339670, -73.91560727], null, false), planar lon/lat edges, exported to "
    "Thwaites_download as LC08_Thwaites_composite_*; it also covers Crosson and parts of Dotson "
    "and Pine Island"
)
SHELVES: dict[str, ShelfRecord] = {
    r.name: r
    for r in (
        ShelfRecord("Amery", 67.0, 75.0, -73.6, -68.6,
                    f"{_GAZ} 69°45'S 71°00'E; box spans the ~550 km shelf to the grounding line"),
        ShelfRecord("Amery_front", 69.0, 75.0, -71.0, -68.6,
                    f"{_GAZ} 69°45'S 71°00'E; frontal ~240 km of Amery (paper, section 5)"),
        ShelfRecord("Brunt", -28.5, -22.5, -76.2, -74.9,
                    f"{_GAZ} 75°30'S 25°00'W; box includes the Stancomb-Wills junction"),
        ShelfRecord("Crosson", -111.0, -107.5, -75.6, -74.6,
                    f"{_GAZ} 75°04'S 109°25'W"),
        ShelfRecord("Dotson", -114.5, -110.5, -75.1, -73.9,
                    f"{_GAZ} 74°24'S 112°22'W"),
        ShelfRecord("Holmes", 125.8, 128.4, -67.3, -66.3,
                    f"{_GAZ} Holmes Glacier tongue 66°47'S 127°10'E"),
        ShelfRecord("Larsen B", -62.9, -59.8, -66.3, -64.8,
                    f"{_GAZ} Larsen B remnant (SCAR Inlet) 65°30'S 61°30'W"),
        ShelfRecord("Pine Island", -102.8, -98.8, -75.6, -74.6,
                    f"{_GAZ} Pine Island Glacier ice shelf 75°10'S 100°00'W"),
        ShelfRecord("Thwaites", -111.69132190, -101.92339670, -76.38148504, -73.91560727,
                    _AUTHORS_ROI,
                    # the authors' ROI also holds Crosson and parts of Dotson and Pine Island:
                    # the default extent keeps to the Thwaites Glacier Tongue and eastern shelf
                    # (gazetteer 75°00'S 106°50'W)
                    shelf_box=(-108.8, -104.0, -75.6, -74.3)),
        ShelfRecord("Totten", 114.5, 117.6, -67.6, -66.4,
                    f"{_GAZ} Totten Glacier ice shelf 67°00'S 116°20'E"),
    )
}


class UnknownShelfError(SpecError):
    """A shelf name that is not registered; the message lists the valid names."""


def get_shelf(name: str) -> ShelfRecord:
    """The registered shelf of that released name, or an error that lists the valid names."""
    check_shelf_name_safe(name)
    try:
        return SHELVES[name]
    except KeyError:
        hint = closest_shelf_name(name)
        raise UnknownShelfError(
            f"shelf {name!r} is not registered"
            + (f" (did you mean {hint!r}?)" if hint else "")
            + "; valid names: " + ", ".join(repr(n) for n in SHELVES)
        ) from None


def released_name(name: str) -> str:
    """The registered name that ``name`` spells loosely (case, spaces, '_' and '-' ignored), for
    names users type as filters ("larsen_b" → "Larsen B"); else ``UnknownShelfError`` with the
    likely name. Paths and file names keep matching exactly (``get_shelf``)."""
    for registered in SHELVES:
        if shelf_key(registered) == shelf_key(name):
            return registered
    return get_shelf(name).name  # raises, naming the valid names


def parse_shelves(text: str) -> list[str]:
    """Released names from ``--shelf``: one name, a comma list, or ``all`` (registry order);
    each typed loosely (``released_name``), repeats dropped, the given order kept."""
    if text.strip().lower() == "all":
        return list(SHELVES)
    names: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            raise UnknownShelfError(f"--shelf {text!r}: empty item in the list")
        name = released_name(part)
        if name not in names:
            names.append(name)
    return names


def shelf_key(name: str) -> str:
    """A shelf name compared loosely: case, spaces, '_', '-' ignored ("Larsen B" ~ "Larsen_B")."""
    return re.sub(r"[\s_\-]+", "", name).lower()


def closest_shelf_name(name: str) -> str | None:
    """The registered name a mistyped one most likely meant, if any is close.

    Names are matched exactly everywhere (they are folder names); this only feeds error
    messages.
    """
    by_key = {shelf_key(n): n for n in SHELVES}
    if shelf_key(name) in by_key:
        return by_key[shelf_key(name)]
    close = difflib.get_close_matches(shelf_key(name), list(by_key), n=1, cutoff=0.75)
    return by_key[close[0]] if close else None


@cache
def _to_polar() -> Transformer:
    return Transformer.from_crs("EPSG:4326", ENCODING.crs, always_xy=True)


def lonlat_box_3031(lon_min: float, lon_max: float, lat_min: float, lat_max: float,
                    points_per_edge: int = 64) -> Polygon:
    """A lon/lat box as a densified polygon in EPSG:3031 (edges follow the graticule)."""
    lons = np.linspace(lon_min, lon_max, points_per_edge)
    lats = np.linspace(lat_min, lat_max, points_per_edge)
    ring_lon = np.concatenate([lons, np.full_like(lats, lon_max), lons[::-1],
                               np.full_like(lats, lon_min)])
    ring_lat = np.concatenate([np.full_like(lons, lat_min), lats,
                               np.full_like(lons, lat_max), lats[::-1]])
    x, y = _to_polar().transform(ring_lon, ring_lat)
    return Polygon(zip(x, y, strict=True))


def box_polygon_3031(shelf: ShelfRecord, points_per_edge: int = 64) -> Polygon:
    """The shelf's ROI box as a densified polygon in EPSG:3031."""
    return lonlat_box_3031(shelf.lon_min, shelf.lon_max, shelf.lat_min, shelf.lat_max,
                           points_per_edge)


def shelf_box_polygon(name: str) -> Polygon | None:
    """The registered box around the shelf itself (EPSG:3031), for shelves whose ROI reaches
    well beyond them; None where the ROI is the shelf's own box."""
    shelf = get_shelf(name)
    return None if shelf.shelf_box is None else lonlat_box_3031(*shelf.shelf_box)


def roi_polygon(name: str, roi_file: Path | None = None) -> BaseGeometry:
    """A shelf's ROI in EPSG:3031: from ``roi_file`` (a GeoPackage) if given, else the default."""
    shelf = get_shelf(name)
    if roi_file is not None:
        return load_roi_geopackage(roi_file, shelf.name)
    return box_polygon_3031(shelf)


def load_roi_geopackage(path: Path, shelf: str) -> BaseGeometry:
    """The ROI polygon of ``shelf`` from a GeoPackage, reprojected to EPSG:3031; ValueError
    naming the file and the rule it breaks.

    The reading rules (which layer, a ``shelf``/``name`` column picking the shelf loosely or a
    single feature, valid polygons, densified reprojection) are ``producer.roi_files``' own,
    shared with ``produce`` and the catalog, so that every reader takes the same outline.
    """
    from producer.roi_files import read_outline  # it builds on this registry: import at use

    return read_outline(Path(path), get_shelf(shelf).name)
