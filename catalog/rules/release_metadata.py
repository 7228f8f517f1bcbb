"""The ``release-metadata`` rule set: metadata.ods and the ROI GeoPackages agree with the
products, their provenance records and the STAC items."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shapely.geometry import box

from catalog.gpkg import read_roi
from catalog.ods import OdsRow, read_metadata_table, row_from_name, rows_grouped
from catalog.release import ShelfYearFiles, raster_facts, scan_release
from catalog.rules.common import P, guarded, has_catalog, is_hashable, rel_path, short_message
from catalog.rules.consistency import LoadedItem, load_items
from producer.provenance import Provenance
from producer.spec import (
    ENCODING,
    METADATA_ODS,
    roi_geopackage_name,
)
from validation.report import Problem

# ---------------------------------------------------------------------------------------------
# metadata.ods and ROI GeoPackages
# ---------------------------------------------------------------------------------------------


@dataclass
class ReleaseMetadataRules:
    """metadata.ods ⇔ items, products and provenance; one valid EPSG:3031 GeoPackage per shelf."""

    name: str = "release-metadata"

    def check(self, release_dir: Path) -> Iterator[Problem]:
        """Every problem of metadata.ods and the ROI GeoPackages."""
        root = Path(release_dir).resolve()
        if not has_catalog(root):
            return
        found = scan_release(root)
        # items pystac cannot read are reported by catalog-consistency
        items = {key: e for e in load_items(root)
                 if is_hashable(key := (e.item.properties.get(f"{P}shelf"),
                                      e.item.properties.get(f"{P}year")))}
        yield from guarded(METADATA_ODS, self._ods_problems(root, found, items))
        yield from self._gpkg_problems(root, found)

    def _ods_problems(self, release_dir: Path, found: list[ShelfYearFiles],
                      items: dict[tuple[Any, Any], LoadedItem]) -> Iterator[Problem]:
        path = release_dir / METADATA_ODS
        if not path.exists():
            yield Problem(METADATA_ODS, "ods-missing", "no file",
                          "metadata.ods with one row per shelf-year")
            return
        try:
            rows, columns = read_metadata_table(path)
        except Exception as error:  # noqa: BLE001 - odfpy/zip/pandas errors all mean unreadable
            yield Problem(METADATA_ODS, "ods-unreadable", f"{type(error).__name__}: {error}",
                          "readable metadata.ods")
            return
        grouped = rows_grouped(rows)
        for key, group in sorted(grouped.items(), key=str):
            if len(group) > 1:
                yield Problem(METADATA_ODS, "ods-row-duplicate",
                              f"{len(group)} rows for {key[0]} {key[1]}", "one row per shelf-year")
        for key in sorted(set(items) - set(grouped), key=str):
            yield Problem(METADATA_ODS, "ods-row-missing", f"no row for {key[0]} {key[1]}",
                          f"a row for item {items[key].item.id}")
        for key in sorted(set(grouped) - set(items), key=str):
            yield Problem(METADATA_ODS, "ods-row-extra", f"row for {key[0]} {key[1]}",
                          "a catalog item for every row")
        products: dict[tuple[str, int], ShelfYearFiles] = {}
        for files in found:
            products.setdefault((files.name.shelf, files.name.year), files)
        for key in sorted(set(grouped) & (set(items) | set(products)), key=str):
            files, entry = products.get(key), items.get(key)
            # a record that does not read is reported by catalog-consistency
            prov = files.provenance_or_error()[0] if files is not None else None
            where = f"{METADATA_ODS} row {key[0]} {key[1]}"
            if entry is not None:
                yield from _item_dates_problems(release_dir, entry, prov, grouped[key])
            for row in grouped[key]:
                if entry is not None:
                    yield from _row_dates_problems(where, row, entry, prov)
                if files is not None:
                    yield from _row_product_problems(where, row, files, prov, columns)

    def _gpkg_problems(self, release_dir: Path,
                       found: list[ShelfYearFiles]) -> Iterator[Problem]:
        by_shelf: dict[str, list[ShelfYearFiles]] = {}
        for files in found:
            by_shelf.setdefault(files.name.shelf, []).append(files)
        for shelf, group in sorted(by_shelf.items()):
            name = roi_geopackage_name(shelf)
            yield from guarded(name, _shelf_roi_problems(release_dir, name, group))


def _dates_of(prov: Provenance) -> list[str]:
    """The acquisition dates of a provenance record's scenes, sorted, as ISO text."""
    return sorted(s.acquired.isoformat() for s in prov.scenes)


def _item_dates_problems(release_dir: Path, entry: LoadedItem, prov: Provenance | None,
                         rows: list[OdsRow]) -> Iterator[Problem]:
    """The item's acquisition dates come from the provenance record, else from metadata.ods:
    dates that neither gives are invented."""
    dates_stac = entry.item.properties.get(f"{P}acquisition_dates") or []
    rel = rel_path(release_dir, entry.path)
    if prov is not None:
        if sorted(dates_stac) != _dates_of(prov):
            yield Problem(rel, "acquisition-dates", f"STAC {dates_stac}",
                          f"provenance {_dates_of(prov)}")
    elif dates_stac and not any(row.acquisition_dates for row in rows):
        yield Problem(rel, "acquisition-dates", f"STAC {dates_stac}",
                      "no dates: the release holds no provenance record of this shelf-year "
                      f"and its {METADATA_ODS} row gives none")


def _row_dates_problems(where: str, row: OdsRow, entry: LoadedItem,
                        prov: Provenance | None) -> Iterator[Problem]:
    """A row's acquisition dates agree with the item's and the provenance record's."""
    dates_ods = [d.isoformat() for d in row.acquisition_dates]
    dates_stac = entry.item.properties.get(f"{P}acquisition_dates") or []
    if dates_ods and sorted(dates_ods) != sorted(dates_stac):
        yield Problem(where, "acquisition-dates", f"ods {dates_ods}",
                      f"STAC {entry.item.id} {dates_stac}")
    if prov is not None and sorted(dates_ods) != _dates_of(prov):
        yield Problem(where, "acquisition-dates", f"ods {dates_ods}",
                      f"provenance {_dates_of(prov)}")


def _cell(value: object) -> str:
    """A row value as metadata.ods shows it (lists joined with "; ", empty as "(empty)")."""
    if isinstance(value, tuple):
        value = "; ".join(str(v) for v in value)
    elif isinstance(value, dt.date):
        value = value.isoformat()
    return "(empty)" if value in (None, "") else str(value)


def _row_product_problems(where: str, row: OdsRow, files: ShelfYearFiles,
                          prov: Provenance | None, columns: frozenset[str]) -> Iterator[Problem]:
    """A row says what its product's name and provenance record say.

    File names, sensors and restoration come from the product name; scene ids, scene sensors
    and the main scene from the provenance record when the release holds one. A column the
    file lacks altogether (an authors' file with only shelf, year and dates) is unknown, not
    wrong; an empty cell in a column it has is compared like any value. Without a provenance
    record the scene columns are checked against each other and the product's sensors.
    """
    want = row_from_name(files.name, prov)
    source = files.name.filename
    for column in ("damage_map_file", "damage_file"):
        if column in columns and getattr(row, column) != getattr(want, column):
            yield Problem(where, "ods-file-name", f"{column} = {_cell(getattr(row, column))}",
                          f"{getattr(want, column)} (the product in the release)")
    for column in ("sensors", "restoration"):
        found, expected = getattr(row, column), getattr(want, column)
        if column == "sensors":  # a set: "LC09; LC08" names the same satellites
            found, expected = set(found), set(expected)
        if column in columns and found != expected:
            yield Problem(where, "ods-row-mismatch", f"{column} = {_cell(getattr(row, column))}",
                          f"{_cell(getattr(want, column))} (from {source})")
    if prov is not None:
        record = files.auxiliary["provenance"].name
        for column in ("scene_ids", "scene_sensors", "main_scene", "main_scene_date"):
            found, expected = getattr(row, column), getattr(want, column)
            if column in ("scene_ids", "scene_sensors"):  # the order of equal dates may vary
                found, expected = tuple(sorted(found)), tuple(sorted(expected))
            if column in columns and found != expected:
                yield Problem(where, "ods-row-mismatch",
                              f"{column} = {_cell(getattr(row, column))}",
                              f"{_cell(getattr(want, column))} (from {record})")
        return
    stray = [s for s in row.scene_sensors if s not in files.name.sensors]
    if stray:
        yield Problem(where, "ods-row-mismatch", f"scene_sensors = {_cell(row.scene_sensors)}",
                      f"only sensors of {source}: {_cell(files.name.sensors)}")
    if row.main_scene and row.scene_ids and row.main_scene not in row.scene_ids:
        yield Problem(where, "ods-row-mismatch", f"main_scene = {row.main_scene}",
                      f"one of scene_ids {_cell(row.scene_ids)}")
    if row.main_scene_date and row.acquisition_dates and \
            row.main_scene_date not in row.acquisition_dates:
        yield Problem(where, "ods-row-mismatch",
                      f"main_scene_date = {_cell(row.main_scene_date)}",
                      f"one of acquisition_dates {_cell(row.acquisition_dates)}")


def _shelf_roi_problems(release_dir: Path, name: str,
                        group: list[ShelfYearFiles]) -> Iterator[Problem]:
    """One shelf's ROI GeoPackage: present, EPSG:3031, valid polygon(s), holding its products."""
    shelf = group[0].name.shelf
    path = release_dir / name
    if not path.exists():
        yield Problem(name, "roi-missing", "no file", f"ROI GeoPackage of {shelf}")
        return
    try:
        frame = read_roi(path)
    except Exception as error:  # noqa: BLE001 - any GDAL failure means unreadable
        yield Problem(name, "roi-invalid", f"unreadable: {error}",
                      "a GeoPackage with a polygon layer")
        return
    epsg = frame.crs.to_epsg() if frame.crs is not None else None
    if epsg != ENCODING.epsg:
        yield Problem(name, "roi-crs", f"EPSG:{epsg}", ENCODING.crs)
        return
    if frame.empty or not frame.geometry.is_valid.all() or \
            not set(frame.geometry.geom_type) <= {"Polygon", "MultiPolygon"}:
        yield Problem(name, "roi-invalid", f"{len(frame)} feature(s), types "
                      f"{sorted(set(frame.geometry.geom_type))}", "valid polygon(s)")
        return
    roi = frame.geometry.union_all()
    yield from _outside_roi(release_dir, name, roi, group)


def _outside_roi(release_dir: Path, name: str, roi: Any,
                 group: Iterable[ShelfYearFiles]) -> Iterator[Problem]:
    """Products lie in the ROI: grid inside the ROI's bounds (one pixel of slack), overlapping.

    Both products of a shelf-year are checked (they should share one grid; pair-grid says when
    they do not). A product that does not open is reported and the others still checked.
    """
    minx, miny, maxx, maxy = roi.bounds
    slack = ENCODING.resolution
    allowed = box(minx - slack, miny - slack, maxx + slack, maxy + slack)
    for files in group:
        for path in (files.damage, files.damage_map):
            if path is None:
                continue
            try:
                footprint = box(*raster_facts(path, checksum=False).grid.bounds)
            except Exception as error:  # noqa: BLE001 - any GDAL failure means unreadable
                yield Problem(rel_path(release_dir, path), "catalog-file-unreadable",
                              f"does not open: {short_message(error)}"[:200],
                              f"a readable raster (not checked against {name})")
                continue
            if not allowed.contains(footprint) or not footprint.intersects(roi):
                yield Problem(rel_path(release_dir, path), "product-outside-roi",
                              f"bounds {tuple(round(v) for v in footprint.bounds)}",
                              f"within the ROI of {name} {tuple(round(v) for v in roi.bounds)}")
