"""Item index files (stac-geoparquet + ndjson) and search over them with plain DuckDB.

The catalog step writes ``items.parquet`` (stac-geoparquet) and ``items.ndjson`` at the release
root, with asset hrefs relative to the release root so the folder can move. ``search`` filters
with SQL over the parquet's ordinary columns (shelf, year, sensors, restoration, fraction and the
bbox struct) and then tests exact geometry with shapely, so no DuckDB extension is ever
downloaded (extensions fail offline). Results come back as pystac Items whose asset hrefs are
absolute paths, ready for odc-stac.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pystac
import stac_geoparquet.arrow as sga
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

import schemas
from catalog.geometry import bbox_3031_to_lonlat, lonlat_bbox_geometry
from producer.spec import ENCODING, ITEMS_NDJSON, ITEMS_PARQUET, SENSOR_ORDER, STAC_CATALOG_DIR
from producer.writer import atomic_path

P = schemas.PREFIX


class SearchError(ValueError):
    """Bad search input (unknown sensor, malformed bbox, missing index); message says which."""


# ---------------------------------------------------------------------------------------------
# Writing the index
# ---------------------------------------------------------------------------------------------


def release_relative(item_dict: dict[str, Any], item_path: Path, release_dir: Path) -> dict:
    """A saved item's dict with asset hrefs relative to the release root and no links."""
    out = dict(item_dict)
    out["links"] = []
    assets = {}
    for key, asset in item_dict["assets"].items():
        href = asset["href"]
        if "://" not in href and not posixpath.isabs(href):
            absolute = os.path.normpath(item_path.parent / href)
            href = Path(os.path.relpath(absolute, release_dir)).as_posix()
        assets[key] = {**asset, "href": href}
    out["assets"] = assets
    return out


def write_index(release_dir: Path, items: Sequence[dict[str, Any]]) -> tuple[Path, Path]:
    """Write items.parquet (stac-geoparquet) and items.ndjson, atomically."""
    release_dir = Path(release_dir)
    parquet, ndjson = release_dir / ITEMS_PARQUET, release_dir / ITEMS_NDJSON
    ordered = sorted(items, key=lambda d: d["id"])
    with atomic_path(ndjson) as tmp:
        tmp.write_text("".join(json.dumps(d, sort_keys=True) + "\n" for d in ordered))
    with atomic_path(parquet) as tmp:
        reader = sga.parse_stac_items_to_arrow(ordered)
        sga.to_parquet(reader.read_all(), tmp)
    return parquet, ndjson


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
    """(items.parquet, release root) for a release folder, a catalog.json or the parquet file."""
    source = Path(source)
    if source.is_file() and source.suffix == ".parquet":
        return source, source.parent
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
    raise SearchError(f"{source}: no {ITEMS_PARQUET} found; run `icedamage catalog` on the "
                      "release first")


def query_geometry(query: Query) -> BaseGeometry | None:
    """The lon/lat geometry that results must intersect (bbox and/or intersects), or None."""
    geoms: list[BaseGeometry] = []
    if query.bbox is not None:
        if len(query.bbox) != 4:
            raise SearchError(f"bbox needs 4 numbers (minx,miny,maxx,maxy), got {query.bbox}")
        crs = query.bbox_crs.upper()
        if crs in ("EPSG:4326", "OGC:CRS84", "CRS84"):
            geoms.append(lonlat_bbox_geometry(query.bbox))
        elif crs == ENCODING.crs:
            minx, miny, maxx, maxy = query.bbox
            if minx >= maxx or miny >= maxy:
                raise SearchError(f"bbox {query.bbox} in {ENCODING.crs} must have min < max")
            geoms.append(bbox_3031_to_lonlat(query.bbox))
        else:
            raise SearchError(f"bbox_crs {query.bbox_crs!r} is not EPSG:4326 or {ENCODING.crs}")
    if query.intersects is not None:
        geometry = query.intersects.get("geometry", query.intersects)
        try:
            geoms.append(shape(geometry))
        except (KeyError, ValueError, TypeError, AttributeError) as error:
            raise SearchError(f"intersects is not a GeoJSON geometry: {error}") from error
    if not geoms:
        return None
    result = geoms[0]
    for extra in geoms[1:]:
        result = result.intersection(extra)
    return result


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
        unknown = sorted(set(query.sensors) - set(SENSOR_ORDER))
        if unknown:
            raise SearchError(f"unknown sensor(s) {unknown}; valid: {list(SENSOR_ORDER)}")
        where.append(f'list_has_any("{P}sensors", ?::VARCHAR[])')
        params.append(list(query.sensors))
    if query.restored is not None:
        where.append(f'"{P}restoration" IS {"NOT " if query.restored else ""}NULL')
    if query.min_fraction is not None:
        where.append(f'"{P}damage_fraction" >= ?')
        params.append(float(query.min_fraction))
    if geometry is not None and not geometry.is_empty:
        minx, miny, maxx, maxy = geometry.bounds
        where.append("bbox.ymin <= ? AND bbox.ymax >= ? AND "
                     "(bbox.xmin > bbox.xmax OR (bbox.xmin <= ? AND bbox.xmax >= ?))")
        params.extend([maxy, miny, maxx, minx])
    return (" WHERE " + " AND ".join(where)) if where else "", params


def _absolute(item: dict[str, Any], release_dir: Path) -> dict[str, Any]:
    for asset in item.get("assets", {}).values():
        href = asset["href"]
        if "://" not in href and not posixpath.isabs(href):
            asset["href"] = str((release_dir / href).resolve())
    return item


def run_query(parquet: Path, release_dir: Path, query: Query) -> list[pystac.Item]:
    """Items of the index matching every filter of the query, sorted by id."""
    geometry = query_geometry(query)
    clause, params = _sql(query, geometry)
    with duckdb.connect() as con:
        relation = con.sql(f"SELECT * FROM read_parquet(?){clause} ORDER BY id",
                           params=[str(parquet), *params])
        table = (relation.to_arrow_table() if hasattr(relation, "to_arrow_table")
                 else relation.arrow())  # DuckDB < 1.4 names it arrow()
    if table.num_rows == 0:
        return []
    items = []
    for record in sga.stac_table_to_items(table):
        if geometry is not None and not shape(record["geometry"]).intersects(geometry):
            continue
        items.append(pystac.Item.from_dict(_absolute(record, release_dir), preserve_dict=False))
    return items


def search(source: Path | str, shelves: Iterable[str] | None = None, year: int | None = None,
           year_from: int | None = None, year_to: int | None = None,
           sensors: Iterable[str] | None = None, restored: bool | None = None,
           bbox: Sequence[float] | None = None, bbox_crs: str = "EPSG:4326",
           intersects: dict[str, Any] | None = None,
           min_fraction: float | None = None) -> list[pystac.Item]:
    """Items of a cataloged release (folder, catalog.json or items.parquet) matching the filters."""
    parquet, release_dir = locate_index(Path(source))
    query = Query(
        shelves=tuple(shelves) if shelves else None, year=year, year_from=year_from,
        year_to=year_to, sensors=tuple(sensors) if sensors else None, restored=restored,
        bbox=tuple(float(v) for v in bbox) if bbox is not None else None,  # type: ignore[arg-type]
        bbox_crs=bbox_crs, intersects=intersects, min_fraction=min_fraction,
    )
    return run_query(parquet, release_dir, query)


