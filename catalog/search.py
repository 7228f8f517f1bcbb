"""Item index files (stac-geoparquet + ndjson) and search over them with plain DuckDB.

The catalog step writes ``items.parquet`` (stac-geoparquet) and ``items.ndjson`` at the release
root, with asset hrefs relative to the release root so the folder can move. ``search`` filters
with SQL over the parquet's ordinary columns (shelf, year, sensors, restoration, fraction and the
bbox struct) and then tests exact geometry with shapely, so no DuckDB extension is ever
downloaded (extensions fail offline). Results come back as pystac Items whose asset hrefs are
absolute paths, ready for odc-stac.

The two index files and the catalog are written in separate steps, so each records what it
belongs with: the parquet holds the sha256 of the items.ndjson written with it, and the
catalog's build state (``stac/.build.json``, written last by ``catalog.build``) the sha256 of
both. A search refuses an index that does not match (an interrupted ``icedamage catalog`` or
publish write-back) rather than serve items that differ from the catalog.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import posixpath
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pystac
import shapely
import stac_geoparquet.arrow as sga
from shapely.errors import ShapelyError
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

import schemas
from catalog.geometry import bbox_3031_to_lonlat, lonlat_bbox_geometry
from catalog.stac import not_applicable_fields
from producer.provenance import file_sha256
from producer.shelves import released_name
from producer.spec import (
    ENCODING,
    ITEMS_NDJSON,
    ITEMS_PARQUET,
    SENSOR_ORDER,
    STAC_CATALOG_DIR,
    SpecError,
)
from producer.writer import atomic_path

P = schemas.PREFIX
#: Parquet file-metadata key holding each item's byte span in items.ndjson.
OFFSETS_KEY = "icedamage:ndjson_offsets"
#: Parquet file-metadata key holding the sha256 of the items.ndjson written with the parquet.
NDJSON_SHA256_KEY = "icedamage:ndjson_sha256"
#: The catalog's build state in ``stac/``: the run's inputs and, once the item index is written,
#: its files' sha256 under ``"index"`` (``None`` while the index is still to be written).
BUILD_STATE = ".build.json"
#: The item index files, as the build state names them.
INDEX_FILES = (ITEMS_PARQUET, ITEMS_NDJSON)
#: Rows per parquet row group: statistics let DuckDB skip groups, while each group's metadata
#: (the item schema is wide) costs time; 1024 was fastest for 10,000 items.
ROW_GROUP_ROWS = 1024


class SearchError(ValueError):
    """Bad search input (unknown sensor, malformed bbox, missing index); message says which."""


#: How a published record may be named (``publish.remote.parse_record_ref``), for messages.
RECORD_FORMS = ("https://zenodo.org/records/<number>, zenodo:<number> or "
                "10.5281/zenodo.<number>")


def not_a_record(source: str) -> SearchError | None:
    """The error for a source that reads as a URL (``scheme://``) but names no published
    record, or None. Why: taken for a local path it would be reported through ``Path``, which
    turns ``https://host/x`` into ``https:/host/x``; the user's text is kept instead."""
    if "://" not in source:
        return None
    return SearchError(f"{source}: not a published record this command reads (give "
                       f"{RECORD_FORMS}), nor a local release")


# ---------------------------------------------------------------------------------------------
# Writing the index
# ---------------------------------------------------------------------------------------------


def _release_href(href: str, item_path: Path, release_dir: Path) -> str:
    """A local href of a saved item, relative to the release root (remote hrefs unchanged)."""
    if "://" in href or posixpath.isabs(href):
        return href
    absolute = os.path.normpath(item_path.parent / href)
    return Path(os.path.relpath(absolute, release_dir)).as_posix()


def release_relative(item_dict: dict[str, Any], item_path: Path, release_dir: Path) -> dict:
    """A saved item's dict as items.ndjson holds it: hrefs relative to the release root.

    The only link kept is ``rel=collection`` (STAC requires it whenever an item names its
    collection), pointing at the collection file from the release root where items.ndjson
    lies; the catalog's other links only make sense beside the item's own JSON file. An item
    without a collection link loses its ``collection`` field rather than become invalid.
    """
    out = dict(item_dict)
    out["links"] = [{**link, "href": _release_href(link["href"], item_path, release_dir)}
                    for link in item_dict.get("links", []) if link.get("rel") == "collection"]
    if not out["links"]:
        out.pop("collection", None)
    out["assets"] = {key: {**asset, "href": _release_href(asset["href"], item_path, release_dir)}
                     for key, asset in item_dict["assets"].items()}
    return out


def write_index(release_dir: Path, items: Sequence[dict[str, Any]]) -> tuple[Path, Path]:
    """Write items.parquet (stac-geoparquet) and items.ndjson, atomically.

    The parquet's file metadata also records where each line of items.ndjson starts
    (``icedamage:ndjson_offsets``, little-endian int64, base64), so a search reads only the
    matching items' JSON instead of decoding every column of the parquet, and the sha256 of that
    items.ndjson (``icedamage:ndjson_sha256``), so a search can tell the pair apart from one left
    half-rewritten (each file is replaced atomically, but not both at once); readers that do not
    know the keys ignore them.
    """
    release_dir = Path(release_dir)
    parquet, ndjson = release_dir / ITEMS_PARQUET, release_dir / ITEMS_NDJSON
    # Rows sorted by shelf and year in row groups: the min/max statistics of each group then
    # let DuckDB skip most of the file for the usual shelf / year filters. The ndjson lines
    # follow the same order, so parquet row n is line n.
    ordered = sorted(items, key=lambda d: (str(d["properties"].get(f"{P}shelf")),
                                           d["properties"].get(f"{P}year") or 0, d["id"]))
    lines = [(json.dumps(d, sort_keys=True) + "\n").encode() for d in ordered]
    offsets = np.concatenate([[0], np.cumsum([len(line) for line in lines])]).astype("<i8")
    text = b"".join(lines)
    with atomic_path(ndjson) as tmp:
        tmp.write_bytes(text)
    table = sga.parse_stac_items_to_arrow(ordered).read_all()
    batches = pa.RecordBatchReader.from_batches(
        table.schema, table.to_batches(max_chunksize=ROW_GROUP_ROWS))
    with atomic_path(parquet) as tmp:
        sga.to_parquet(batches, tmp)
        written = pq.read_table(tmp)
        extra = {OFFSETS_KEY: base64.b64encode(offsets.tobytes()),
                 NDJSON_SHA256_KEY: hashlib.sha256(text).hexdigest()}
        pq.write_table(written.replace_schema_metadata({**written.schema.metadata, **extra}),
                       tmp, row_group_size=ROW_GROUP_ROWS)
    return parquet, ndjson




def index_digests(release_dir: Path) -> dict[str, str]:
    """The sha256 of the item index files a release holds, by file name (what the catalog's
    build state records, so that an index and a catalog written apart can be matched)."""
    return {name: file_sha256(Path(release_dir) / name) for name in INDEX_FILES
            if (Path(release_dir) / name).is_file()}


def read_build_state(stac_dir: Path) -> dict[str, Any] | None:
    """The build state saved in a catalog folder; None when there is none, ``{}`` when it does
    not read as a JSON object (then nothing it would say can be trusted)."""
    path = Path(stac_dir) / BUILD_STATE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return state if isinstance(state, dict) else {}


# ---------------------------------------------------------------------------------------------
# Searching
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """Search filters; None means "any"."""

    shelves: tuple[str, ...] | None = None
    year: int | None = None
    year_from: int | None = None
    year_to: int | None = None
    sensors: tuple[str, ...] | None = None
    restored: bool | None = None
    bbox: tuple[float, float, float, float] | None = None
    bbox_crs: str = "EPSG:4326"
    intersects: dict[str, Any] | None = None
    min_fraction: float | None = None


def locate_index(source: Path) -> tuple[Path, Path]:
    """(items.parquet, release root) for a release folder, a catalog.json, the parquet file
    or the items.ndjson beside it."""
    source = Path(source)
    if source.is_file() and source.suffix == ".parquet":
        return source, source.parent
    if source.is_file() and source.name == ITEMS_NDJSON and \
            (source.parent / ITEMS_PARQUET).exists():
        return source.parent / ITEMS_PARQUET, source.parent
    if source.is_file() and source.name.endswith(".json"):
        # <release>/stac/catalog.json (or deeper): walk up to the folder holding the index
        for parent in source.parents:
            if (parent / ITEMS_PARQUET).exists():
                return parent / ITEMS_PARQUET, parent
    if source.is_dir() and (source / ITEMS_PARQUET).exists():
        return source / ITEMS_PARQUET, source
    if source.is_dir() and source.name == STAC_CATALOG_DIR and \
            (source.parent / ITEMS_PARQUET).exists():
        return source.parent / ITEMS_PARQUET, source.parent
    if source.is_file() and source.suffix not in (".json", ".parquet") and \
            source.name != ITEMS_NDJSON:
        raise SearchError(f"{source}: not a release to search; give the release folder, its "
                          f"stac/catalog.json, {ITEMS_PARQUET} or {ITEMS_NDJSON}")
    raise SearchError(f"{source}: no {ITEMS_PARQUET} found; run `icedamage catalog` on the "
                      "release first")


def _feature_geometry(feature: Any, where: str) -> dict[str, Any]:
    """The geometry dict of a GeoJSON Feature (``where`` names it in errors)."""
    geometry = feature.get("geometry") if isinstance(feature, dict) else None
    if not isinstance(geometry, dict):
        raise SearchError(f"intersects: {where} has no GeoJSON geometry")
    return geometry


def intersects_geometry(value: Any) -> BaseGeometry:
    """A lon/lat shapely geometry from a GeoJSON geometry, Feature or FeatureCollection.

    A FeatureCollection (what QGIS and most GIS export) stands for the union of its features'
    geometries. Anything else is a ``SearchError`` saying what was expected.
    """
    if not isinstance(value, dict):
        raise SearchError("intersects must be a GeoJSON object (a geometry, Feature or "
                          f"FeatureCollection), not a {type(value).__name__}")
    kind = value.get("type")
    if kind == "FeatureCollection":
        features = value.get("features")
        if not isinstance(features, list) or not features:
            raise SearchError("intersects: the FeatureCollection holds no features")
        geometries = [_feature_geometry(f, f"feature {i}") for i, f in enumerate(features)]
    elif kind == "Feature":
        geometries = [_feature_geometry(value, "the Feature")]
    else:
        geometries = [value]
    try:
        shapes = [shape(g) for g in geometries]
        result = unary_union([s if s.is_valid else shapely.make_valid(s) for s in shapes])
    except (ShapelyError, KeyError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise SearchError(f"intersects is not a valid GeoJSON geometry, Feature or "
                          f"FeatureCollection (type {kind!r}): {error}") from None
    if result.is_empty:
        raise SearchError("intersects: the GeoJSON geometry is empty")
    _check_lonlat("intersects", result.bounds, value.get("crs"))
    return result


def _is_lonlat_crs(name: str) -> bool:
    """Whether a legacy GeoJSON ``crs`` name (RFC 7946 drops the member) is WGS 84 longitude/
    latitude in any of its spellings (CRS84, EPSG:4326 as URN or OGC URL, ...). EPSG:4326's
    official axis order is latitude first, but GeoJSON writers put longitude first regardless."""
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        crs = CRS.from_user_input(name)
    except CRSError:
        return False
    return (crs.is_geographic and len(crs.axis_info) == 2 and crs.ellipsoid is not None
            and crs.ellipsoid.name == "WGS 84")


def _check_lonlat(what: str, bounds: Sequence[float], crs: Any = None) -> None:
    """Refuse coordinates that are not longitude/latitude: a legacy ``crs`` member naming
    another CRS, or values outside [-180, 180] × [-90, 90] (metres in EPSG:3031, 0–360
    longitudes), which would otherwise match nothing without a word."""
    if crs is not None:
        name = str(crs.get("properties", {}).get("name", "")) if isinstance(crs, dict) else ""
        if not _is_lonlat_crs(name):
            raise SearchError(f"{what}: the GeoJSON declares crs {name or crs!r}; give its "
                              "coordinates in longitude/latitude (RFC 7946), or a box in "
                              f"{ENCODING.crs} with --bbox-crs {ENCODING.crs}")
    west, south, east, north = bounds
    if all(-180 <= v <= 180 for v in (west, east)) and all(-90 <= v <= 90 for v in (south, north)):
        return
    hint = (f"; metres in {ENCODING.crs}? use --bbox-crs {ENCODING.crs} with --bbox"
            if max(abs(v) for v in bounds) > 360 else
            "; longitudes from 0 to 360? subtract 360 from those above 180")
    raise SearchError(f"{what}: coordinates {tuple(round(v, 6) for v in bounds)} are not "
                      f"longitude/latitude (longitude -180..180, latitude -90..90){hint}")


def query_geometry(query: Query) -> BaseGeometry | None:
    """The lon/lat geometry that results must intersect (bbox and/or intersects), or None."""
    geoms: list[BaseGeometry] = []
    if query.bbox is not None:
        if len(query.bbox) != 4:
            raise SearchError(f"bbox needs 4 numbers (minx,miny,maxx,maxy), got {query.bbox}")
        crs = query.bbox_crs.upper()
        if crs in ("EPSG:4326", "OGC:CRS84", "CRS84"):
            west, south, east, north = query.bbox
            _check_lonlat(f"bbox {list(query.bbox)}", (min(west, east), south, max(west, east),
                                                       north))
            if south > north:
                raise SearchError(f"bbox {list(query.bbox)}: south ({south}) is above north "
                                  f"({north}); the order is west,south,east,north")
            geoms.append(lonlat_bbox_geometry(query.bbox))
        elif crs == ENCODING.crs:
            minx, miny, maxx, maxy = query.bbox
            if minx >= maxx or miny >= maxy:
                raise SearchError(f"bbox {query.bbox} in {ENCODING.crs} must have min < max")
            geoms.append(bbox_3031_to_lonlat(query.bbox))
        else:
            raise SearchError(f"bbox_crs {query.bbox_crs!r} is not EPSG:4326 or {ENCODING.crs}")
    if query.intersects is not None:
        geoms.append(intersects_geometry(query.intersects))
    if not geoms:
        return None
    result = geoms[0]
    for extra in geoms[1:]:
        result = result.intersection(extra)
    return result


def sensor_tokens(names: Iterable[str]) -> tuple[str, ...]:
    """Sensor filters as the spec's tokens, in any case (``lc08`` is LC08); a name that is no
    sensor is a ``SearchError`` listing the valid ones, not an empty result."""
    given = tuple(names)
    tokens = tuple(str(name).strip().upper() for name in given)
    unknown = sorted({name for name, token in zip(given, tokens, strict=True)
                      if token not in SENSOR_ORDER})
    if unknown:
        raise SearchError(f"unknown sensor(s) {unknown}; valid: {list(SENSOR_ORDER)}")
    return tokens


def checked_fraction(value: float) -> float:
    """A damage-fraction filter as a float in [0, 1]; anything else is a ``SearchError``.

    Fractions in the catalog run from 0 to 1, so ``15`` (meant as 15 %) would match nothing
    without a word; the error says so.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SearchError(f"min_fraction {value!r} is not a number (a fraction 0–1)") from None
    if not 0.0 <= number <= 1.0:  # NaN fails too
        hint = (f" ({number:g} % is {number / 100:g})" if 1.0 < number <= 100.0 else "")
        raise SearchError(f"min_fraction {value!r} is outside 0–1: it is a fraction 0–1, not "
                          f"a percentage{hint}")
    return number


def _sql(query: Query, geometry: BaseGeometry | None) -> tuple[str, list[Any]]:
    """WHERE clause and parameters of the plain-column filters (coarse bbox included)."""
    where, params = [], []
    if query.shelves:
        where.append(f'"{P}shelf" IN (' + ", ".join("?" for _ in query.shelves) + ")")
        params.extend(query.shelves)
    if query.year is not None:
        where.append(f'"{P}year" = ?')
        params.append(query.year)
    if query.year_from is not None:
        where.append(f'"{P}year" >= ?')
        params.append(query.year_from)
    if query.year_to is not None:
        where.append(f'"{P}year" <= ?')
        params.append(query.year_to)
    if query.sensors:
        sensors = sensor_tokens(query.sensors)
        where.append(f'list_has_any("{P}sensors", ?::VARCHAR[])')
        params.append(list(sensors))
    if query.restored is not None:
        where.append(f'"{P}restoration" IS {"NOT " if query.restored else ""}NULL')
    if query.min_fraction is not None:
        where.append(f'"{P}damage_fraction" >= ?')
        params.append(checked_fraction(query.min_fraction))
    if geometry is not None and not geometry.is_empty:
        minx, miny, maxx, maxy = geometry.bounds
        where.append("bbox.ymin <= ? AND bbox.ymax >= ? AND "
                     "(bbox.xmin > bbox.xmax OR (bbox.xmin <= ? AND bbox.xmax >= ?))")
        params.extend([maxy, miny, maxx, minx])
    return (" WHERE " + " AND ".join(where)) if where else "", params


@cache
def _connection() -> duckdb.DuckDBPyConnection:
    """One in-memory DuckDB per process, caching parquet metadata between searches."""
    con = duckdb.connect()
    con.execute("SET parquet_metadata_cache = true")
    return con


HrefResolver = Callable[[str], str]
"""Maps a release-relative asset href to where the file is (a local path, a record's URL)."""


def local_hrefs(release_dir: Path) -> HrefResolver:
    """Relative hrefs as absolute paths under a local release folder."""
    root = str(Path(release_dir).resolve())
    return lambda href: posixpath.normpath(posixpath.join(root, href))


def _absolute(item: dict[str, Any], resolve: HrefResolver) -> dict[str, Any]:
    """Resolve the release-relative hrefs of an indexed item (assets and its collection link).

    An item from an index written before the collection link was kept loses its
    ``collection`` field, which STAC allows only together with such a link.
    """
    for entry in (*item.get("assets", {}).values(), *item.get("links", [])):
        href = entry["href"]
        if "://" not in href and not posixpath.isabs(href):
            entry["href"] = resolve(href)
    if not any(link.get("rel") == "collection" for link in item.get("links", [])):
        item.pop("collection", None)
    return item


def _exact(table: pa.Table, geometry: BaseGeometry | None) -> pa.Table:
    """Rows whose geometry really intersects the query geometry (vectorised shapely)."""
    if geometry is None or table.num_rows == 0:
        return table
    shapes = shapely.from_wkb(table["geometry"].to_numpy(zero_copy_only=False))
    return table.filter(pa.array(shapely.intersects(shapes, geometry)))


def _version(path: Path) -> tuple[int, int, int]:
    """(inode, mtime, size) of a file: a new version of it (atomic replace) changes them."""
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


@lru_cache(maxsize=16)
def _sha256_of(path: str, _version: tuple[int, int, int]) -> str:
    """sha256 of one version of a file (cached: a process searching again reads it once)."""
    return file_sha256(Path(path))


def _ndjson_offsets(parquet: Path, ndjson: Path) -> np.ndarray | None:
    """Line offsets of items.ndjson when the index records them and they fit the file.

    An index that records the sha256 of its items.ndjson and finds another file there is
    refused (``SearchError``): one of the two was left behind by an interrupted write, and
    reading either would serve items that are not the catalog's. Older indexes without the
    digest fall back to the size check (and then to decoding the parquet).
    """
    if not ndjson.exists():
        return None
    stat = parquet.stat()
    offsets, digest = _index_metadata(str(parquet), stat.st_mtime_ns, stat.st_size)
    if digest is not None and _sha256_of(str(ndjson), _version(ndjson)) != digest:
        raise SearchError(f"{ndjson} is not the file {parquet} was written with (one of the two "
                          "is left from an interrupted write); run `icedamage catalog` on the "
                          "release to rebuild the item index")
    if offsets is None or int(offsets[-1]) != ndjson.stat().st_size:
        return None
    return offsets


@lru_cache(maxsize=8)
def _index_metadata(parquet: str, _mtime_ns: int, _size: int
                    ) -> tuple[np.ndarray | None, str | None]:
    """(line offsets, items.ndjson sha256) an index file records, None for those it does not
    (cached per file version within a process)."""
    with _connection().cursor() as con:
        rows = dict(con.execute(
            "SELECT key, value FROM parquet_kv_metadata(?) WHERE key IN (?, ?)",
            [parquet, OFFSETS_KEY, NDJSON_SHA256_KEY]).fetchall())
    offsets = rows.get(OFFSETS_KEY.encode())
    digest = rows.get(NDJSON_SHA256_KEY.encode())
    return (np.frombuffer(base64.b64decode(offsets), dtype="<i8") if offsets is not None
            else None, digest.decode() if digest is not None else None)


def check_index(parquet: Path, release_dir: Path) -> None:
    """Refuse (``SearchError`` naming the files) an item index that is not the one the
    release's STAC catalog was saved with.

    The catalog's build state records the sha256 of items.parquet and items.ndjson once both
    are written; a state whose record is still empty (an interrupted ``icedamage catalog`` or
    publish write-back) or holds other digests means the index may describe another catalog.
    A release without a build state (an index on its own, an unpacked record) or whose state
    predates the record (an older icedamage; its next ``catalog`` run rebuilds) is not checked
    here; a missing items.ndjson is allowed (the parquet is decoded instead).
    """
    parquet, release_dir = Path(parquet), Path(release_dir)
    marker = release_dir / STAC_CATALOG_DIR / BUILD_STATE
    if parquet != release_dir / ITEMS_PARQUET or not marker.is_file():
        return
    ndjson = release_dir / ITEMS_NDJSON
    versions = tuple(_version(p) if p.exists() else None for p in (marker, parquet, ndjson))
    problem = _index_problem(str(release_dir), versions)
    if problem is not None:
        raise SearchError(f"{parquet} and {ndjson} do not match the STAC catalog in "
                          f"{marker.parent}: {problem}; run `icedamage catalog {release_dir}` "
                          "to rebuild them")


@lru_cache(maxsize=8)
def _index_problem(release_dir: str, _versions: tuple[Any, ...]) -> str | None:
    """Why a release's index is not the one its build state records, or None (cached per
    version of the three files within a process)."""
    root = Path(release_dir)
    state = read_build_state(root / STAC_CATALOG_DIR)
    if state is not None and "index" not in state:
        return None  # a catalog from before the index was recorded: the pairing check remains
    recorded = (state or {}).get("index")
    if not isinstance(recorded, dict):
        return (f"{BUILD_STATE} records no item index written with this catalog (an "
                "interrupted `icedamage catalog` or publish write-back?)")
    differ = [name for name in INDEX_FILES if (root / name).is_file()
              and recorded.get(name) != _sha256_of(str(root / name), _version(root / name))]
    if differ:
        return (f"{' and '.join(differ)} differ from the file(s) {BUILD_STATE} records (left by "
                "an interrupted write, or changed since)")
    return None


def _read_lines(ndjson: Path, offsets: np.ndarray, rows: list[int]) -> list[dict[str, Any]]:
    with open(ndjson, "rb") as handle:
        records = []
        for row in rows:
            handle.seek(int(offsets[row]))
            records.append(json.loads(handle.read(int(offsets[row + 1] - offsets[row]))))
    return records


#: Columns the filters use; a search keeps them in an in-memory table per index file.
FILTER_COLUMNS = ("id", f'"{P}shelf"', f'"{P}year"', f'"{P}sensors"', f'"{P}restoration"',
                  f'"{P}damage_fraction"', "bbox", "geometry", "file_row_number")
#: Filter columns of fields that may be null, with their SQL types: an index written from items
#: that leave such a field out everywhere (their nulls dropped, which means the same) has no
#: column for it, and a search reads it as all null (not a missing-column error).
NULLABLE_FILTER_COLUMNS = {f"{P}restoration": "VARCHAR", f"{P}damage_fraction": "DOUBLE"}


@lru_cache(maxsize=8)
def _absent_columns(parquet: str, _mtime_ns: int, _size: int) -> tuple[str, ...]:
    """The nullable filter columns an index file lacks (cached per file version)."""
    names = set(pq.read_schema(parquet).names)
    return tuple(column for column in NULLABLE_FILTER_COLUMNS if column not in names)


def _parquet_source(parquet: Path, row_numbers: bool = False) -> tuple[str, tuple[str, ...]]:
    """A DuckDB relation over an index file (one ``?`` parameter: its path) in which every
    filter column exists, a lacking nullable one as NULL; and the columns so added."""
    stat = parquet.stat()
    absent = _absent_columns(str(parquet), stat.st_mtime_ns, stat.st_size)
    read = "read_parquet(?, file_row_number = true)" if row_numbers else "read_parquet(?)"
    if not absent:
        return read, ()
    filled = ", ".join(f'NULL::{NULLABLE_FILTER_COLUMNS[c]} AS "{c}"' for c in absent)
    return f"(SELECT *, {filled} FROM {read})", absent


@lru_cache(maxsize=8)
def _filter_table(parquet: str, _mtime_ns: int, _size: int) -> str:
    """Name of an in-memory table holding the filter columns of one index file version.

    Binding ``read_parquet`` to the wide item schema costs more than the filtering itself, so
    the narrow columns are loaded once per process and file version and queried from memory.
    """
    name = "idx_" + hashlib.sha1(f"{parquet}:{_mtime_ns}:{_size}".encode()).hexdigest()[:16]
    source, _ = _parquet_source(Path(parquet), row_numbers=True)
    with _connection().cursor() as con:
        con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT {', '.join(FILTER_COLUMNS)} "
                    f"FROM {source}", [parquet])
    return name


def _select(source: str, clause: str, params: list[Any], columns: str) -> pa.Table:
    with _connection().cursor() as con:
        relation = con.sql(f"SELECT {columns} FROM {source}{clause} ORDER BY id",
                           params=params)
        return (relation.to_arrow_table() if hasattr(relation, "to_arrow_table")
                else relation.arrow())  # DuckDB < 1.4 names it arrow()


#: Timestamp properties, which the columnar round trip spells with microseconds.
DATETIME_FIELDS = frozenset({"datetime", "start_datetime", "end_datetime", "created", "updated"})


def _strip_nulls(value: Any) -> Any:
    """``value`` without null members of the objects it holds, at any depth."""
    if isinstance(value, dict):
        return {k: _strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_nulls(v) for v in value]
    return value


def _kept_null(key: str, props: dict[str, Any]) -> bool:
    """Whether a null property is one the item really has (not one a column filled in)."""
    return (key == "datetime" or key in props.get(f"{P}unknown", ())
            or key in not_applicable_fields(props))


def drop_filled_nulls(record: dict[str, Any]) -> dict[str, Any]:
    """An item dict read from items.parquet (by stac-geoparquet's ``stac_table_to_items`` or
    our search) without the nulls the columnar round trip added for fields it never had.

    A parquet column exists for every field any item has, so an item decoded from the parquet
    gets nulls for the others: a multi-sensor item's ``platform``, ``nodata`` of classification
    classes that are not nodata, and the restoration fields (``icedamage:restoration_model``,
    ``icedamage:restoration_weights_sha256``, ``icedamage:restored_fraction``,
    ``icedamage:lambda_restoration``, ``icedamage:lambda_upper_restored``) of a map not
    restored. Those fail the schemas and are
    not the catalog's item. Nulls an item really holds are kept: ``datetime`` (a range
    instead), ``icedamage:`` fields listed in its ``icedamage:unknown`` and those whose null
    means "does not apply" (``catalog.stac.not_applicable_fields``: ``icedamage:restoration``,
    the fractions of a map with no valid pixel, the model of a classical fill). The values of
    product fields (scene records) are kept as they are, and timestamps get the catalog's
    spelling back. Use it on each dict before validating or comparing items read that way::

        items = [drop_filled_nulls(d) for d in stac_table_to_items(pq.read_table(path))]

    Returns a new dict; ``record`` is not changed.
    """
    props = record.get("properties", {})
    record = {k: _strip_nulls(v) for k, v in record.items()
              if k != "properties" and v is not None}
    record["properties"] = {
        k: (v if k.startswith(P) else _strip_nulls(v)) for k, v in props.items()
        if v is not None or _kept_null(k, props)}
    for key in DATETIME_FIELDS & record["properties"].keys():
        if isinstance(record["properties"][key], str):  # the catalog's spelling, not +.000000
            record["properties"][key] = pystac.utils.datetime_to_str(
                pystac.utils.str_to_datetime(record["properties"][key]))
    return record


def run_query(parquet: Path, resolve: HrefResolver, query: Query) -> list[pystac.Item]:
    """Items of the index matching every filter of the query, sorted by id.

    Filters run in DuckDB on the plain filter columns (kept in memory per index file), the
    exact geometry test in shapely; the matching items are then read from items.ndjson at the
    offsets the index records, or decoded from the parquet when those are missing or stale.
    """
    geometry = query_geometry(query)
    clause, params = _sql(query, geometry)
    offsets = _ndjson_offsets(parquet, parquet.parent / ITEMS_NDJSON)
    if offsets is not None:
        stat = parquet.stat()
        source = _filter_table(str(parquet), stat.st_mtime_ns, stat.st_size)
        columns = "id, file_row_number" + (", geometry" if geometry is not None else "")
        table = _exact(_select(source, clause, params, columns), geometry)
        records = _read_lines(parquet.parent / ITEMS_NDJSON, offsets,
                              table["file_row_number"].to_pylist())
    else:
        source, added = _parquet_source(parquet)
        # the file's columns, not those added for the filters
        excluded = ", ".join(f'"{c}"' for c in added)
        columns = f"* EXCLUDE ({excluded})" if added else "*"
        table = _select(source, clause, [str(parquet), *params], columns)
        records = [drop_filled_nulls(r) for r in sga.stac_table_to_items(_exact(table, geometry))]
    return [pystac.Item.from_dict(_absolute(record, resolve), preserve_dict=False,
                                  migrate=False)
            for record in records]


def released_names(shelves: Iterable[str]) -> list[str]:
    """Shelf filters as released names; a name no shelf has is an error, not an empty result
    (public: the ``search`` command checks its ``--shelf`` options with it before any work)."""
    try:
        return [released_name(name) for name in shelves]
    except SpecError as error:
        raise SearchError(str(error)) from None


def _values(value: str | Iterable[str] | None) -> tuple[str, ...] | None:
    """A filter given as one string or several, as a tuple (a string is one value, not a
    sequence of characters); None or empty means "any"."""
    if value is None:
        return None
    values = (value,) if isinstance(value, str) else tuple(value)
    return values or None


def search(source: Path | str, shelves: str | Iterable[str] | None = None,
           year: int | None = None, year_from: int | None = None, year_to: int | None = None,
           sensors: str | Iterable[str] | None = None, restored: bool | None = None,
           bbox: Sequence[float] | None = None, bbox_crs: str = "EPSG:4326",
           intersects: dict[str, Any] | None = None,
           min_fraction: float | None = None,
           progress: Callable[[str, int, int], None] | None = None) -> list[pystac.Item]:
    """Items of a cataloged release matching the filters.

    ``shelves`` and ``sensors`` take one name or several. ``intersects`` is a GeoJSON
    geometry, Feature or FeatureCollection (the union of its features) in EPSG:4326.
    ``source`` is a local release (its folder, stac/catalog.json or items.parquet; asset hrefs
    become absolute paths) or a published record (``https://zenodo.org/records/<id>``,
    ``zenodo:<id>``, a Zenodo DOI; its item index is fetched once, and asset hrefs point into
    the record, readable in place over HTTP — see ``publish.remote``). ``progress(key, done,
    total)`` sees that fetch.
    """
    parquet, resolve = _index_of(source, progress)
    shelf_names, sensor_names = _values(shelves), _values(sensors)
    query = Query(
        shelves=tuple(released_names(shelf_names)) if shelf_names else None, year=year,
        year_from=year_from, year_to=year_to, sensors=sensor_names, restored=restored,
        bbox=tuple(float(v) for v in bbox) if bbox is not None else None,  # type: ignore[arg-type]
        bbox_crs=bbox_crs, intersects=intersects, min_fraction=min_fraction,
    )
    return run_query(parquet, resolve, query)


def _index_of(source: Path | str, progress: Callable[[str, int, int], None] | None = None
              ) -> tuple[Path, HrefResolver]:
    """The items.parquet to search and how its relative hrefs resolve (``progress`` sees the
    bytes of a published record's index arrive, the first time)."""
    if isinstance(source, str):
        from publish.remote import RemoteError, parse_record_ref, record_index

        ref = parse_record_ref(source)
        if ref is not None:
            try:
                index = record_index(ref, progress=progress)
            except RemoteError as error:
                raise SearchError(str(error)) from None
            return index.parquet, index.href
        if (error := not_a_record(source)) is not None:
            raise error
    parquet, release_dir = locate_index(Path(source))
    check_index(parquet, release_dir)
    return parquet, local_hrefs(release_dir)


