"""The ROI GeoPackage of a shelf in a release: which outline ``produce`` maps, and writing one.

The release root holds one ``<Shelf>_ROI.gpkg`` per shelf (paper, section 4: "the ROIs used for
imagery download are provided as GeoPackage files"), and the products of a shelf are made on
the grid covering that outline (``icedamage validate`` checks it: ``roi-grid-mismatch``). So
``produce`` maps, in this order:

1. ``--roi FILE`` (a GeoPackage whose ``shelf``/``name`` column picks the shelf, or a single
   feature when the run maps one shelf), refused when the release already holds another
   outline for the shelf; after the first shelf-year produced with it, it is written into the
   release;
2. the release's own ``<Shelf>_ROI.gpkg`` (e.g. the official outline of a published release),
   which must be in EPSG:3031 as ``icedamage validate`` requires;
3. the registry's default ROI (``producer.shelves``), which ``icedamage catalog`` writes.

An outline other than the registry's enters the inputs digest by its normalised geometry, so
a replaced ROI redoes the shelf's years while the default (written back by the catalog) and a
file rewritten with the same outline do not.

Reading a GeoPackage (``read_roi_frame``, ``read_outline``) is shared with the catalog
(``catalog.gpkg.read_roi``), so that ``produce`` and ``validate`` take the same layer.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import shapely
from shapely.geometry.base import BaseGeometry

from producer.shelves import roi_polygon, shelf_key
from producer.spec import ENCODING, roi_geopackage_name

if TYPE_CHECKING:
    import geopandas as gpd

#: The GeoPackage layer holding the ROI.
LAYER = "roi"
#: Two outlines are the same when their symmetric difference is at most this share of the area
#: (a GeoPackage round trip, a reprojection's rounding).
SAME_OUTLINE_SHARE = 1e-6
#: ... or when neither boundary strays farther than this (m) from the other: a tenth of a 30 m
#: pixel, more than the chords of a densified lon/lat box stray from its parallels (the
#: registry's, drawn with 64 points an edge: up to 1.6 m on Thwaites), so a copy of an
#: outline kept in EPSG:4326 (densified on reading) is still the same outline.
SAME_OUTLINE_DISTANCE_M = 3.0
#: Where an outline came from when it is the registry's.
DEFAULT_ORIGIN = "default"
#: The grid (m) an outline is snapped to before it is hashed: 1/3000 of the 30 m pixel (no map
#: can tell), 10^5 times the noise of a 3031 → 4326 → 3031 round trip (≤ 40 nm), so such
#: copies hash alike (but for a coordinate that close to a snapping boundary: ~1e-5 each).
DIGEST_PRECISION_M = 0.01
#: Longest edge (degrees) of an outline in a geographic CRS before it is reprojected: its edges
#: are straight in longitude/latitude (a GIS's or Earth Engine's planar rectangle), so a
#: parallel must stay a curve in EPSG:3031, not a chord (at 66°S a 0.01° step strays ~1 cm).
GEOGRAPHIC_SEGMENT_DEG = 0.01
#: Columns that name the shelf of a feature, in order of preference (any case).
SHELF_COLUMNS = ("shelf", "name")
_COLUMNS_TEXT = " or ".join(repr(c) for c in SHELF_COLUMNS)
#: A trailing part of a shelf name that a column value may add ("Larsen B Ice Shelf").
_NAME_SUFFIX = shelf_key("Ice Shelf")
#: Layer geometry types (GDAL's names, without " Z" / " M") that hold ROI outlines.
POLYGON_TYPES = ("Polygon", "MultiPolygon")
_GENERIC_TYPES = ("Unknown", "Geometry", "GeometryCollection")


def roi_frame(shelf: str, polygon: BaseGeometry, source: str) -> gpd.GeoDataFrame:
    """A one-row frame (shelf, source, geometry) in EPSG:3031."""
    import geopandas as gpd

    return gpd.GeoDataFrame({"shelf": [shelf], "source": [source]}, geometry=[polygon],
                            crs=ENCODING.crs)


#: The ``last_change`` of every GeoPackage we write (GDAL's ``OGR_CURRENT_DATE``).
GPKG_TIME = "2000-01-01T00:00:00.000Z"


@contextlib.contextmanager
def _fixed_gpkg_time() -> Iterator[None]:
    """GDAL stamps a new GeoPackage's ``gpkg_contents.last_change`` with the wall clock, so
    the same outline gave other bytes each time (and a new checksum in the collection); a
    fixed stamp makes the file depend on its outline only."""
    import pyogrio

    before = pyogrio.get_gdal_config_option("OGR_CURRENT_DATE")
    pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": GPKG_TIME})
    try:
        yield
    finally:
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": before})


def write_roi_geopackage(release_dir: Path, shelf: str, polygon: BaseGeometry,
                         source: str) -> Path:
    """Write ``<release>/<Shelf>_ROI.gpkg`` atomically."""
    path = Path(release_dir) / roi_geopackage_name(shelf)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".roi-", dir=path.parent) as tmp_dir:
        tmp = Path(tmp_dir) / path.name  # GDAL wants the .gpkg extension and no existing file
        with _fixed_gpkg_time():
            roi_frame(shelf, polygon, source).to_file(tmp, driver="GPKG", layer=LAYER,
                                                      engine="pyogrio")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    return path


def same_outline(a: BaseGeometry, b: BaseGeometry) -> bool:
    """Whether two ROI outlines cover the same ground: up to ``SAME_OUTLINE_SHARE`` of their
    area, or each within ``SAME_OUTLINE_DISTANCE_M`` of the other (Hausdorff distance)."""
    area = max(a.area, b.area, 1.0)
    if a.symmetric_difference(b).area <= SAME_OUTLINE_SHARE * area:
        return True
    reach = SAME_OUTLINE_DISTANCE_M
    return bool(a.buffer(reach, quad_segs=2).contains(b)
                and b.buffer(reach, quad_segs=2).contains(a))


def outline_sha256(polygon: BaseGeometry) -> str:
    """A digest of an outline that does not depend on vertex order, ring start, Z values or
    coordinate noise below ``DIGEST_PRECISION_M`` (a reprojection round trip)."""
    snapped = shapely.set_precision(shapely.force_2d(polygon), DIGEST_PRECISION_M)
    return hashlib.sha256(shapely.normalize(snapped).wkb).hexdigest()


def release_roi_file(release_dir: Path, shelf: str) -> Path:
    """Where a release keeps the ROI GeoPackage of ``shelf``."""
    return Path(release_dir) / roi_geopackage_name(shelf)


# --- reading a GeoPackage: the layer, the shelf's features, the outline in EPSG:3031 ----------

def _is_polygonal(geometry_type: object) -> bool:
    """Whether a layer's declared geometry type is (Multi)Polygon, with Z / M variants."""
    return isinstance(geometry_type, str) and geometry_type.split(" ")[0] in POLYGON_TYPES


def _is_generic(geometry_type: object) -> bool:
    """Whether a layer declares no particular geometry type (GDAL's "Unknown" / "Geometry")."""
    return isinstance(geometry_type, str) and geometry_type.split(" ")[0] in _GENERIC_TYPES


def _holds_only_polygons(path: Path, layer: str) -> bool:
    """Whether a layer of no declared type has features, all of them (Multi)Polygons."""
    import geopandas as gpd

    frame = gpd.read_file(path, layer=layer, engine="pyogrio")
    kinds = set(frame.geometry.dropna().geom_type)
    return bool(kinds) and kinds <= set(POLYGON_TYPES)


def _names_the_roi(layer: str) -> bool:
    """Whether a layer's name says it is the ROI: a word ``roi``/``rois`` in it ("roi",
    "Totten_ROI", "ROIs 2024"), as ``write_roi_geopackage`` and most hand-made files name it."""
    return any(word in ("roi", "rois") for word in re.split(r"[\W_]+", layer.lower()))


def roi_layer(path: Path) -> str:
    """The layer of a GeoPackage that holds the ROI polygons; ValueError saying why none is
    (the caller names the file).

    A GeoPackage may hold other layers besides the ROI (labels as points, QGIS's non-spatial
    ``layer_styles`` table, a grounding line, ...) in any order, and GDAL's default is the
    first layer, so the layer is chosen: the one declared (Multi)Polygon (a layer of no
    declared type counts when all its features are polygons); of several, the one whose name
    says ROI (``_names_the_roi``). Several polygon layers and none, or more than one, named so
    is ambiguous: a wrong guess would map another outline.
    """
    import pyogrio  # imports geopandas: only when a file is read (a skipping re-run reads none)

    layers = [(str(name), kind) for name, kind in pyogrio.list_layers(path)]
    polygonal = [name for name, kind in layers if _is_polygonal(kind)]
    if not polygonal:
        polygonal = [name for name, kind in layers
                     if _is_generic(kind) and _holds_only_polygons(path, name)]
    if not polygonal:
        listed = ", ".join(f"{name} ({kind or 'no geometry'})" for name, kind in layers)
        raise ValueError(f"no polygon layer (layers: {listed or 'none'})")
    if len(polygonal) == 1:
        return polygonal[0]
    named = [name for name in polygonal if _names_the_roi(name)]
    if len(named) == 1:
        return named[0]
    raise ValueError(
        f"{len(polygonal)} polygon layers ({', '.join(repr(n) for n in polygonal)}) and "
        f"{'several' if named else 'none'} named as the ROI (a word 'roi' in the layer name); "
        "which one is the ROI is ambiguous: keep only the ROI layer in the file, or name it "
        f"{LAYER!r}")


def read_roi_frame(path: Path, fid_as_index: bool = False) -> gpd.GeoDataFrame:
    """The features of a GeoPackage's ROI layer (``roi_layer``), as stored (its CRS);
    ValueError when no layer is the ROI (the caller names the file)."""
    import geopandas as gpd

    return gpd.read_file(path, layer=roi_layer(path), engine="pyogrio",
                         fid_as_index=fid_as_index)


def shelf_name_key(value: object) -> str | None:
    """A column value compared loosely to a shelf name: ``shelf_key`` without a trailing
    "Ice Shelf" ("Larsen_B", " larsen b ", "Larsen B Ice Shelf" are "Larsen B")."""
    if not isinstance(value, str) or not value.strip():
        return None
    key = shelf_key(value)
    return key.removesuffix(_NAME_SUFFIX) or key


def shelf_column(frame: gpd.GeoDataFrame) -> str | None:
    """The column naming each feature's shelf (``SHELF_COLUMNS`` in that order, any case:
    "Shelf", "NAME"; a GeoPackage's column names are unique regardless of case), or None."""
    by_lower = {c.lower(): c for c in frame.columns if isinstance(c, str)}
    return next((by_lower[c] for c in SHELF_COLUMNS if c in by_lower), None)


def _feature(frame: gpd.GeoDataFrame, index: object, column: str | None) -> str:
    """How an error names a feature: its GeoPackage fid, and its shelf value if any."""
    named = "" if column is None else f" ({column} = {frame.at[index, column]!r})"
    return f"feature fid {index}{named}"


def _shelf_rows(frame: gpd.GeoDataFrame, shelf: str,
                run_shelves: Collection[str] | None) -> tuple[gpd.GeoDataFrame, str | None]:
    """The features outlining ``shelf`` and the column that said so (None: the file's one
    unnamed feature, taken only when the run maps that one shelf)."""
    column = shelf_column(frame)
    if column is not None:
        rows = frame[frame[column].map(shelf_name_key) == shelf_name_key(shelf)]
        if rows.empty:
            held = sorted({str(v) for v in frame[column].dropna()})
            raise ValueError(
                f"no feature whose {column!r} is {shelf!r} (compared loosely: case, spaces, "
                "'_', '-' and a trailing 'Ice Shelf' ignored); the column holds "
                f"{', '.join(repr(v) for v in held) or 'no names'}")
        return rows, column
    if len(frame) != 1:
        raise ValueError(f"{len(frame)} features and no column {_COLUMNS_TEXT} to pick "
                         f"{shelf!r}; add a 'shelf' column")
    others = {shelf_key(s) for s in run_shelves or ()} - {shelf_key(shelf)}
    if others:
        raise ValueError(
            f"one feature and no column {_COLUMNS_TEXT} saying which shelf it outlines, "
            f"but the run maps {len(others) + 1} shelves; an unnamed outline is taken "
            "only for a run of one shelf: add a 'shelf' column, or run the shelves one by one")
    return frame, None


def _check_valid(rows: gpd.GeoDataFrame, column: str | None) -> None:
    """ValueError naming the first feature that is not a valid polygon, and why: a
    self-crossing ring breaks every overlay later (GEOS's TopologyException)."""
    for index, geometry in rows.geometry.items():
        if geometry.geom_type not in POLYGON_TYPES:
            raise ValueError(f"{_feature(rows, index, column)} is a {geometry.geom_type}, not "
                             "a polygon")
        if not geometry.is_valid:
            raise ValueError(
                f"{_feature(rows, index, column)} is not a valid polygon "
                f"({shapely.is_valid_reason(geometry)}); repair it (shapely.make_valid, or "
                "QGIS's Fix Geometries) and give the file again")


def _in_polar(rows: gpd.GeoDataFrame) -> BaseGeometry:
    """The union of the features, 2D, in EPSG:3031; a geographic outline's edges are
    densified first (``GEOGRAPHIC_SEGMENT_DEG``), as ``lonlat_box_3031`` draws the registry's."""
    geometry = rows.geometry.force_2d()
    if rows.crs.is_geographic:
        geometry = geometry.segmentize(GEOGRAPHIC_SEGMENT_DEG)
    outline = geometry.to_crs(ENCODING.crs).union_all()
    if not outline.is_valid:
        raise ValueError(f"the outline is not a valid polygon in {ENCODING.crs} "
                         f"({shapely.is_valid_reason(outline)}); does it cross the "
                         "antimeridian or the pole?")
    return outline


def read_outline(path: Path, shelf: str, what: str = "ROI GeoPackage", *,
                 run_shelves: Collection[str] | None = None,
                 in_release: bool = False) -> BaseGeometry:
    """The outline of ``shelf`` in a GeoPackage, in EPSG:3031; ValueError naming ``what`` the
    file is, the file and the rule it breaks.

    The layer is ``roi_layer``'s; a ``shelf``/``name`` column (any case) picks the shelf's
    features by name compared loosely, else the file's single feature is the shelf's when
    ``run_shelves`` (the shelves of the run, if known) holds no other shelf. Every feature
    must be a valid polygon, the file must have a CRS (EPSG:3031 when ``in_release``: the
    release's ROI files are, ``validate``'s rule ``roi-crs``), and the outline must overlap
    the shelf's registered ROI (a file of another shelf, or coordinates in the wrong CRS).
    """
    try:
        frame = read_roi_frame(Path(path), fid_as_index=True)
    except ValueError as err:
        raise ValueError(f"{what} {path}: {err}") from None
    except Exception as err:  # noqa: BLE001 - pyogrio/GDAL raise their own kinds on bad files
        raise ValueError(f"{what} {path}: not a GeoPackage of ROI polygons ({err})") from None
    if frame.crs is None:
        raise ValueError(f"{what} {path}: its ROI layer has no CRS; expected {ENCODING.crs} "
                         "or any defined CRS")
    epsg = frame.crs.to_epsg()
    if in_release and epsg != ENCODING.epsg:
        crs = f"EPSG:{epsg}" if epsg else frame.crs.name
        raise ValueError(
            f"{what} {path}: in {crs}, but a release's ROI files are in {ENCODING.crs} "
            "(icedamage validate's rule roi-crs); move it out of the release "
            "and give it as --roi, which writes it back in EPSG:3031")
    frame = frame[~(frame.geometry.isna() | frame.geometry.is_empty)]
    if frame.empty:
        raise ValueError(f"{what} {path}: its ROI layer holds no feature with a geometry")
    try:
        rows, column = _shelf_rows(frame, shelf, run_shelves)
        _check_valid(rows, column)
        outline = _in_polar(rows)
    except ValueError as err:
        raise ValueError(f"{what} {path}: {err}") from None
    if not outline.intersects(roi_polygon(shelf)):
        raise ValueError(
            f"{what} {path}: the outline of {shelf} does not overlap the registered ROI of "
            f"{shelf} (producer.shelves), and an ROI must hold its shelf: an outline of "
            "another shelf, or a CRS that does not match the coordinates?")
    return outline


def produce_roi(release_dir: Path, shelf: str, given: Path | None = None, *,
                run_shelves: Collection[str] | None = None) -> tuple[BaseGeometry, str]:
    """The outline ``produce`` maps for ``shelf`` and where it comes from (``file:NAME``,
    ``release:NAME`` or ``DEFAULT_ORIGIN``); ValueError when ``given`` disagrees with the
    release's own file or either cannot be read.

    ``run_shelves`` are the shelves of the run (``read_outline``: an unnamed outline is one
    shelf's). A ``given`` outline the same as the release's (``same_outline``) is the
    release's, so that a copy with rounding noise leaves the inputs digest as it was.
    """
    kept = release_roi_file(release_dir, shelf)
    in_release = (read_outline(kept, shelf, "ROI GeoPackage", in_release=True)
                  if kept.is_file() else None)
    if given is not None:
        outline = read_outline(given, shelf, "--roi", run_shelves=run_shelves)
        if in_release is not None:
            if not same_outline(outline, in_release):
                raise ValueError(
                    f"--roi {given}: the release {release_dir} holds {kept.name} with another "
                    f"outline of {shelf}; a release's maps are made on its own ROI, so replace "
                    "or remove that file first (its products were made on it)")
            outline = in_release
        return outline, f"file:{Path(given).name}"
    if in_release is not None:
        return in_release, f"release:{kept.name}"
    return roi_polygon(shelf), DEFAULT_ORIGIN


def is_default_outline(shelf: str, outline: BaseGeometry) -> bool:
    """Whether an outline is the registry's ROI of the shelf (e.g. written back by the
    catalog), which leaves the inputs digest as it was: the same outline to the centimetre
    (``outline_sha256``), not merely ``same_outline``. An outline within a few metres of it
    still rasterises to other ROI pixels, and its maps are made on it, so it must count as
    its own (its digest then says which outline the maps were made on)."""
    return outline_sha256(outline) == outline_sha256(roi_polygon(shelf))
