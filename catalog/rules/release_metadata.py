"""The ``release-metadata`` rule set: metadata.ods and the ROI GeoPackages agree with the
products, their provenance records and the STAC items."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shapely.geometry import box

from catalog.gpkg import read_roi
from catalog.ods import (
    SUMMARY_SHEET,
    OdsRow,
    read_sheets,
    row_from_name,
    rows_grouped,
    sheet_table,
    shelf_sheet_name,
    table_of,
)
from catalog.release import RasterFacts, ShelfYearFiles, raster_facts
from catalog.rules.common import (
    P,
    checks_catalog,
    guarded,
    is_hashable,
    rel_path,
    resolved,
    short_message,
)
from catalog.rules.consistency import LoadedItem, load_items, scan_or_problem
from producer.grid import Grid
from producer.provenance import Provenance
from producer.roi_files import shelf_column, shelf_name_key
from producer.spec import (
    ENCODING,
    METADATA_ODS,
    RELEASE_METADATA,
    roi_geopackage_name,
    summer_window,
)
from publish.metadata import load_release_yaml
from validation.report import Problem

# ---------------------------------------------------------------------------------------------
# metadata.ods and ROI GeoPackages
# ---------------------------------------------------------------------------------------------

ShelfYear = tuple[Any, Any]


@dataclass
class ReleaseMetadataRules:
    """metadata.ods ⇔ items, products and provenance; provenance records are plausible for
    their products; one valid EPSG:3031 GeoPackage per shelf whose grid the products use;
    release.yaml reads."""

    name: str = "release-metadata"

    def check(self, release_dir: Path) -> Iterator[Problem]:
        """Every problem of metadata.ods, the provenance records, the ROI GeoPackages and
        release.yaml."""
        root = resolved(Path(release_dir))
        yield from guarded(RELEASE_METADATA, _release_yaml_problems(root))
        if not checks_catalog(root):
            return
        found, failure = scan_or_problem(root)
        if failure is not None:
            return  # catalog-consistency reports it
        # items pystac cannot read are reported by catalog-consistency
        items = {key: e for e in load_items(root)
                 if is_hashable(key := (e.item.properties.get(f"{P}shelf"),
                                      e.item.properties.get(f"{P}year")))}
        yield from guarded(METADATA_ODS, self._ods_problems(root, found, items))
        for files in found:
            prov = files.provenance_or_error()[0]  # an unreadable one: catalog-consistency
            if prov is not None:
                record = rel_path(root, files.auxiliary["provenance"])
                yield from guarded(record, _provenance_plausibility(record, files, prov))
                yield from guarded(record, _provenance_grid_problems(root, files, prov))
        yield from self._gpkg_problems(root, found)

    def _ods_problems(self, release_dir: Path, found: list[ShelfYearFiles],
                      items: dict[ShelfYear, LoadedItem]) -> Iterator[Problem]:
        path = release_dir / METADATA_ODS
        if not path.exists():
            yield Problem(METADATA_ODS, "ods-missing", "no file",
                          "metadata.ods with one row per shelf-year")
            return
        try:
            sheets = read_sheets(path)
            rows, columns = table_of(path, sheets)
        except Exception as error:  # noqa: BLE001 - odfpy/zip/pandas errors all mean unreadable
            yield Problem(METADATA_ODS, "ods-unreadable", f"{type(error).__name__}: {error}",
                          "readable metadata.ods")
            return
        products: dict[ShelfYear, ShelfYearFiles] = {}
        for files in found:
            products.setdefault((files.name.shelf, files.name.year), files)
        grouped = rows_grouped(rows)
        for key in sorted(set(grouped) & set(items), key=str):
            # a record that does not read is reported by catalog-consistency
            files = products.get(key)
            prov = files.provenance_or_error()[0] if files is not None else None
            yield from _item_dates_problems(release_dir, items[key], prov, grouped[key])
        yield from _table_problems(release_dir, METADATA_ODS, rows, columns, items, products)
        if SUMMARY_SHEET in sheets:  # our layout: a sheet per shelf repeats its rows
            yield from _shelf_sheet_problems(release_dir, path, sheets, items, products)

    def _gpkg_problems(self, release_dir: Path,
                       found: list[ShelfYearFiles]) -> Iterator[Problem]:
        by_shelf: dict[str, list[ShelfYearFiles]] = {}
        for files in found:
            by_shelf.setdefault(files.name.shelf, []).append(files)
        for shelf, group in sorted(by_shelf.items()):
            name = roi_geopackage_name(shelf)
            yield from guarded(name, _shelf_roi_problems(release_dir, name, group))


def _release_yaml_problems(root: Path) -> Iterator[Problem]:
    """release.yaml, when the release has one, reads as the publisher reads it
    (``publish.metadata.load_release_yaml``): ``icedamage catalog`` takes the licence and
    version from it and ``icedamage publish`` the deposition metadata."""
    path = root / RELEASE_METADATA
    if not os.path.lexists(path):
        return
    try:
        load_release_yaml(path)
    except (ValueError, OSError) as error:  # MetadataError, and text that is not UTF-8
        found = "; ".join(getattr(error, "problems", None) or [short_message(error)])
        yield Problem(RELEASE_METADATA, "release-yaml-invalid", found[:300],
                      "a YAML mapping of deposition metadata (title, creators, description, "
                      "license, keywords, paper_doi), as `icedamage publish` reads it")


def _table_problems(release_dir: Path, label: str, rows: list[OdsRow],
                    columns: frozenset[str], items: dict[ShelfYear, LoadedItem],
                    products: dict[ShelfYear, ShelfYearFiles],
                    shelf: str | None = None) -> Iterator[Problem]:
    """Rows of one table of metadata.ods (``label`` says which: the file, or one of its
    sheets) against the items and products, restricted to one shelf's when ``shelf`` is
    given: one row per shelf-year with an item, each row saying what its product's name and
    provenance record say."""
    mine = {k: v for k, v in items.items() if shelf is None or k[0] == shelf}
    grouped = rows_grouped(rows)
    for key, group in sorted(grouped.items(), key=str):
        if len(group) > 1:
            yield Problem(label, "ods-row-duplicate",
                          f"{len(group)} rows for {key[0]} {key[1]}", "one row per shelf-year")
    for key in sorted(set(mine) - set(grouped), key=str):
        yield Problem(label, "ods-row-missing", f"no row for {key[0]} {key[1]}",
                      f"a row for item {mine[key].item.id}")
    for key in sorted(set(grouped) - set(mine), key=str):
        yield Problem(label, "ods-row-extra", f"row for {key[0]} {key[1]}",
                      "a catalog item for every row" if shelf is None else
                      f"only rows of {shelf} with a catalog item")
    for key in sorted(set(grouped) & (set(mine) | set(products)), key=str):
        if shelf is not None and key[0] != shelf:
            continue
        files, entry = products.get(key), mine.get(key)
        # a record that does not read is reported by catalog-consistency
        prov = files.provenance_or_error()[0] if files is not None else None
        where = f"{label} row {key[0]} {key[1]}"
        for row in grouped[key]:
            if entry is not None:
                yield from _row_dates_problems(where, row, entry, prov)
            if prov is None:  # with a record: the record's own check (and the comparison)
                yield from _row_summer_problems(where, row)
            if files is not None:
                yield from _row_product_problems(where, row, files, prov, columns)


def _shelf_sheet_problems(release_dir: Path, path: Path, sheets: dict[str, Any],
                          items: dict[ShelfYear, LoadedItem],
                          products: dict[ShelfYear, ShelfYearFiles]) -> Iterator[Problem]:
    """Each shelf's own sheet (beside Summary) is there and holds what Summary must hold for
    that shelf: a reader who opens the Totten sheet reads its dates and file names there.
    The shelves are those the release holds products of (an item or row naming another shelf
    is reported as such, not as a missing sheet)."""
    shelves = sorted({str(k[0]) for k in products})
    for shelf in shelves:
        sheet = shelf_sheet_name(shelf)
        if sheet not in sheets:
            yield Problem(METADATA_ODS, "ods-sheet-missing",
                          f"no sheet {sheet!r} (sheets: {', '.join(map(str, sheets))})",
                          f"a sheet {sheet!r} with the rows of {shelf}, beside {SUMMARY_SHEET}")
            continue
        label = f"{METADATA_ODS} sheet {sheet}"
        try:
            rows, columns = sheet_table(path, sheet, sheets[sheet])
        except ValueError as error:
            yield Problem(label, "ods-unreadable", str(error)[:300],
                          f"the columns of {SUMMARY_SHEET}")
            continue
        yield from _table_problems(release_dir, label, rows, columns, items, products, shelf)


def _provenance_plausibility(record: str, files: ShelfYearFiles,
                             prov: Provenance) -> Iterator[Problem]:
    """A provenance record fits its products: every scene was acquired in the summer the
    product name says, by a satellite the name lists, and the record lists the name's sensors.

    The catalog copies the record's dates and scenes into metadata.ods and the STAC item, so
    when all three agree only this check sees a record that cannot be right.
    """
    name = files.name
    outside = _outside_summer(name.year, (s.acquired for s in prov.scenes))
    if outside:
        yield Problem(record, "acquisition-dates", f"scene dates {outside}",
                      _summer_text(name.year, f"of {name.filename}"))
    strays = sorted({s.sensor for s in prov.scenes} - set(name.sensors))
    if strays:
        yield Problem(record, "provenance-sensors", f"scenes of {strays}",
                      f"scenes of the sensors of {name.filename} only: {list(name.sensors)}")
    if tuple(prov.sensors) != tuple(name.sensors):
        yield Problem(record, "provenance-sensors", f"sensors = {list(prov.sensors)}",
                      f"{list(name.sensors)} (from {name.filename})")


def _outside_summer(year: int, dates: Iterable[dt.date]) -> list[str]:
    """The dates (ISO text, sorted, once each) outside the austral summer named ``year``
    (``producer.spec.summer_window``, the product spec's one definition of it)."""
    first, last = summer_window(year)
    return sorted({d.isoformat() for d in dates if not first <= d <= last})


def _summer_text(year: int, whose: str) -> str:
    """What ``acquisition-dates`` expects of dates of the summer named ``year``."""
    first, last = summer_window(year)
    return (f"dates in the summer {year}/{year + 1} {whose} "
            f"({first.isoformat()} .. {last.isoformat()})")


def _row_summer_problems(where: str, row: OdsRow) -> Iterator[Problem]:
    """A row's acquisition dates lie in the summer its year names.

    Checked for shelf-years without a provenance record (the authors' maps, whose dates only
    metadata.ods gives): the catalog takes their items' dates and time range from the row, so
    a date of another summer, a winter or a year to come would pass into STAC and search
    unseen (with a record, ``_provenance_plausibility`` checks the record and the row is
    compared with it).
    """
    outside = _outside_summer(row.year, row.acquisition_dates)
    if outside:
        yield Problem(where, "acquisition-dates", f"acquisition_dates {outside}",
                      _summer_text(row.year, f"that the row's year {row.year} names"))


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


def _recorded_grid(prov: Provenance) -> tuple[list[float], int, int] | None:
    """The grid a provenance record says the maps were made on (``parameters["grid"]``:
    transform, width, height), or None when it records none (records of other tools, tests)."""
    grid = prov.parameters.get("grid")
    if not isinstance(grid, list | tuple) or len(grid) < 3:
        return None
    transform, width, height = grid[:3]
    if not (isinstance(transform, list | tuple) and len(transform) >= 6
            and all(isinstance(v, int | float) for v in transform[:6])
            and isinstance(width, int) and isinstance(height, int)):
        return None
    return [float(v) for v in transform[:6]], width, height


def _provenance_grid_problems(root: Path, files: ShelfYearFiles,
                              prov: Provenance) -> Iterator[Problem]:
    """Both products are on the grid their provenance record says the producer made them on:
    a product cropped or re-gridded after production (then re-cataloged) is not the map the
    record describes."""
    recorded = _recorded_grid(prov)
    if recorded is None:
        return
    transform, width, height = recorded
    record = files.auxiliary["provenance"].name
    for path in (files.damage_map, files.damage):
        if path is None:
            continue
        try:
            grid = raster_facts(path, checksum=False).grid
        except Exception:  # noqa: BLE001 - unreadable: reported with the ROI checks
            continue
        same = (grid.width, grid.height) == (width, height) and all(
            abs(a - b) < 1e-6 for a, b in zip(list(grid.transform)[:6], transform, strict=True))
        if not same:
            yield Problem(rel_path(root, path), "provenance-grid",
                          f"{grid.width} x {grid.height} px, transform "
                          f"{[round(v, 3) for v in list(grid.transform)[:6]]}",
                          f"{width} x {height} px, transform {[round(v, 3) for v in transform]}"
                          f" (the grid {record} records)")


def _shelf_roi_problems(release_dir: Path, name: str,
                        group: list[ShelfYearFiles]) -> Iterator[Problem]:
    """One shelf's ROI GeoPackage: present, EPSG:3031, valid polygon(s) of that shelf, the ROI
    its products were made for."""
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
    column = shelf_column(frame)  # as produce reads it: any case, names compared loosely
    if column is not None:
        others = sorted({str(v) for v in frame[column]
                         if shelf_name_key(v) != shelf_name_key(shelf)})
        if others:
            yield Problem(name, "roi-shelf", f"{column} = {', '.join(others)}",
                          f"{shelf} on every feature (the file's shelf)")
    roi = frame.geometry.union_all()
    yield from _outside_roi(release_dir, name, roi, group)


def _roi_grid(prov: Provenance, side: int, shelf: str, roi: Any) -> tuple[Grid, str]:
    """The grid the producer maps for an ROI, and what it is: the ROI's aligned 30 m covering
    grid (``producer.grid.Grid.covering``: type 2 maps the full ROI), except for the demo
    source, which by design renders only a square window centred in the ROI
    (``producer.sources.demo.DemoSource.grid``; ``side`` px, as its record says)."""
    if not prov.demo:
        return Grid.covering(roi), "the grid covering the ROI (type 2 maps the full ROI)"
    from producer.sources.demo import DemoSource  # rendering code: imported only when needed

    return (DemoSource(max(side, 64)).grid(shelf, roi),
            f"the demo source's {side} px window centred in the ROI")


def _roi_grid_problem(release_dir: Path, name: str, roi: Any, files: ShelfYearFiles,
                      facts: RasterFacts) -> Iterator[Problem]:
    """Type 2 is on the grid the producer maps for the ROI of ``name`` (``_roi_grid``) to
    within one pixel a side: a map of a part of the ROI, or an ROI replaced after production,
    would otherwise pass for the full-ROI map (the ROI itself may be any valid polygon, such
    as an official outline).

    Checked where the shelf-year's provenance record says which grid the maps were made on
    (every record ``produce`` writes; ``provenance-grid`` checks the products are on it).
    Products without such a record (releases made by other tools, older records) are held
    to ``product-outside-roi`` only.
    """
    prov = files.provenance_or_error()[0]
    recorded = _recorded_grid(prov) if prov is not None else None
    if prov is None or recorded is None:
        return
    grid, what = _roi_grid(prov, max(recorded[1:]), files.name.shelf, roi)
    bounds, want = facts.grid.bounds, grid.bounds
    if any(abs(a - b) > ENCODING.resolution for a, b in zip(bounds, want, strict=True)):
        yield Problem(rel_path(release_dir, facts.path), "roi-grid-mismatch",
                      f"bounds {tuple(round(v) for v in bounds)} "
                      f"({facts.grid.width} x {facts.grid.height} px)",
                      f"{what} of {name}: bounds {tuple(round(v) for v in want)} "
                      f"({grid.width} x {grid.height} px), within one pixel a side")


def _outside_roi(release_dir: Path, name: str, roi: Any,
                 group: Iterable[ShelfYearFiles]) -> Iterator[Problem]:
    """Products lie in the ROI (grid inside the ROI's bounds, one pixel of slack, overlapping
    it) and type 2 covers it (``_roi_grid_problem``).

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
                facts = raster_facts(path, checksum=False)
            except Exception as error:  # noqa: BLE001 - any GDAL failure means unreadable
                yield Problem(rel_path(release_dir, path), "catalog-file-unreadable",
                              f"does not open: {short_message(error)}"[:200],
                              f"a readable raster (not checked against {name})")
                continue
            footprint = box(*facts.grid.bounds)
            if not allowed.contains(footprint) or not footprint.intersects(roi):
                yield Problem(rel_path(release_dir, path), "product-outside-roi",
                              f"bounds {tuple(round(v) for v in footprint.bounds)}",
                              f"within the ROI of {name} {tuple(round(v) for v in roi.bounds)}")
            elif path == files.damage:
                yield from _roi_grid_problem(release_dir, name, roi, files, facts)
