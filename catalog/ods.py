"""metadata.ods at the release root: the acquisition dates and scenes of every shelf-year.

Section 4 of the paper says the release root holds a ``metadata.ods`` recording the acquisition
dates of the imagery used. Ours has a ``Summary`` sheet with one row per shelf-year and one sheet
per shelf holding that shelf's rows, so a user can trace each map back to its scenes. It is
written with pandas' odf engine (odfpy) through a temporary file, and read back by the validator
and when cataloging a release that has no provenance records.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from xml.parsers.expat import ExpatError
from xml.sax import SAXException

import pandas as pd
from odf.element import Element

from producer.provenance import Provenance
from producer.spec import TYPE2, ProductName
from producer.writer import atomic_path

SUMMARY_SHEET = "Summary"
LIST_SEPARATOR = "; "
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)


@dataclass(frozen=True)
class OdsRow:
    """One shelf-year of metadata.ods; empty tuples / None where a fact is unknown."""

    shelf: str
    year: int
    damage_map_file: str
    damage_file: str
    sensors: tuple[str, ...]
    restoration: str | None
    acquisition_dates: tuple[dt.date, ...] = ()
    scene_ids: tuple[str, ...] = ()
    scene_sensors: tuple[str, ...] = ()
    main_scene: str | None = None
    main_scene_date: dt.date | None = None
    extra: tuple[tuple[str, str], ...] = ()
    """Cells of columns of the file that are none of ours (an authors' ``Notes``), as
    (header, text): kept when the catalog rewrites the file."""


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(OdsRow) if f.name != "extra")
#: Other spellings of our columns in a file written by hand (normalised names).
_ALIASES = {"sensor": "sensors", "acquisition_date": "acquisition_dates",
            "date": "acquisition_dates", "dates": "acquisition_dates", "scene_id": "scene_ids",
            "scene_sensor": "scene_sensors"}
_LIST_COLUMNS = ("sensors", "acquisition_dates", "scene_ids", "scene_sensors")


def row_from_name(name: ProductName, provenance: Provenance | None) -> OdsRow:
    """The row of a shelf-year from its product name and, when present, its provenance."""
    base = dict(shelf=name.shelf, year=name.year, damage_map_file=name.filename,
                damage_file=name.partner().filename if name.product_type is not TYPE2
                else name.filename, sensors=name.sensors, restoration=name.restoration)
    if provenance is None:
        return OdsRow(**base)
    scenes = sorted(provenance.scenes, key=lambda s: s.acquired)
    main = provenance.main_scene
    return OdsRow(**base, acquisition_dates=tuple(s.acquired for s in scenes),
                  scene_ids=tuple(s.scene_id for s in scenes),
                  scene_sensors=tuple(s.sensor for s in scenes),
                  main_scene=main.scene_id, main_scene_date=main.acquired)


def _cell(row: OdsRow, column: str) -> object:
    value = getattr(row, column)
    if column in _LIST_COLUMNS:
        return LIST_SEPARATOR.join(str(v) for v in value)
    if isinstance(value, dt.date):
        return value.isoformat()
    return "" if value is None else value


def rows_sorted(rows: list[OdsRow]) -> list[OdsRow]:
    """Rows in file order: by shelf, then year."""
    return sorted(rows, key=lambda r: (r.shelf, r.year))


def rows_frame(rows: list[OdsRow]) -> pd.DataFrame:
    """A table of rows in the column order of the file: ours, then any other columns the rows
    carry (in the order first met)."""
    ordered = rows_sorted(rows)
    extra = list(dict.fromkeys(header for r in ordered for header, _ in r.extra))
    return pd.DataFrame([{**{c: _cell(r, c) for c in COLUMNS},
                          **{h: "" for h in extra}, **dict(r.extra)} for r in ordered],
                        columns=[*COLUMNS, *extra])


def write_metadata_ods(path: Path, rows: list[OdsRow]) -> Path:
    """Write the Summary sheet and one sheet per shelf, atomically."""
    frame = rows_frame(rows)
    with atomic_path(Path(path)) as tmp:
        with _own_namespaces(), pd.ExcelWriter(tmp, engine="odf") as writer:
            frame.to_excel(writer, sheet_name=SUMMARY_SHEET, index=False)
            for shelf in sorted(frame["shelf"].unique()):
                frame[frame["shelf"] == shelf].to_excel(
                    writer, sheet_name=shelf_sheet_name(shelf), index=False)
        _fix_zip_times(tmp)
    return Path(path)


@contextlib.contextmanager
def _own_namespaces() -> Iterator[None]:
    """odfpy keeps the namespaces its elements used in one dict shared by every document of the
    process and declares them all: a file written after a read, or after another write, gained
    declarations, so the same rows gave other bytes. The write starts from an empty dict, and
    the process's dict is given back afterwards (with what the write added), so another
    odfpy document open meanwhile still declares every prefix it uses."""
    before = dict(Element.namespaces)
    Element.namespaces.clear()
    try:
        yield
    finally:
        Element.namespaces.update(before)


#: The time stamped on every member of metadata.ods: the earliest a zip can hold.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def _fix_zip_times(path: Path) -> None:
    """Stamp every member with one fixed time, so the same rows give the same bytes.

    odfpy stamps members with the wall clock: a `catalog --force` that changed nothing gave
    metadata.ods, and through its `file:checksum` the collection, new bytes, and a release
    published again a "changed" file. Member order and compression (the uncompressed
    `mimetype` first, as ODF requires) are kept.
    """
    with zipfile.ZipFile(path) as source:
        members = [(info, source.read(info)) for info in source.infolist()]
    with zipfile.ZipFile(path, "w") as target:
        for info, data in members:
            stamped = zipfile.ZipInfo(info.filename, date_time=_ZIP_TIME)
            stamped.compress_type = info.compress_type
            stamped.external_attr = info.external_attr
            target.writestr(stamped, data)


def _split(text: object) -> tuple[str, ...]:
    if text is None or (isinstance(text, float) and pd.isna(text)):
        return ()
    return tuple(p.strip() for p in re.split(r"[;,]", str(text)) if p.strip())


#: The columns that name a row (shelf-year) rather than say something of it.
_KEYS = ("shelf", "year")
#: A date in a cell: ISO 8601, optionally with a time of day and a UTC offset (how a
#: spreadsheet date cell reads as text); several in a cell may be separated by anything but
#: other text.
_DATE_IN_CELL = re.compile(
    r"(\d{4}-\d{2}-\d{2})(?:[ T](?:[01]\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:\.\d+)?)?"
    r"(?:Z|[+-](?:[01]\d|2[0-3]):?[0-5]\d)?)?", re.ASCII)
_DATE_SEPARATORS = re.compile(r"[\s;,]*")


def _dates(text: object, column: str) -> tuple[dt.date, ...]:
    """The dates of a cell (separated by ``;``, ``,``, spaces, line breaks or nothing, as
    pandas joins a cell's lines); ValueError for text that is not YYYY-MM-DD: 11/12/2000 could
    be day first or month first, so it is refused rather than guessed, or dropped."""
    cell = "" if text is None or (isinstance(text, float) and pd.isna(text)) else str(text)
    dates, end = [], 0
    for match in _DATE_IN_CELL.finditer(cell):
        if not _DATE_SEPARATORS.fullmatch(cell[end:match.start()]):
            break
        try:
            dates.append(dt.date.fromisoformat(match[1]))
        except ValueError:
            raise ValueError(f"{column} {match[0]!r} is not a date as YYYY-MM-DD") from None
        end = match.end()
    rest = cell[end:]
    if not _DATE_SEPARATORS.fullmatch(rest):
        bad = next(p for p in re.split(r"[;,\n]", rest) if p.strip())
        raise ValueError(f"{column} {bad.strip()!r} is not a date as YYYY-MM-DD")
    return tuple(dates)


def _text(value: object) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    text = str(value).strip()
    return text or None


def _year(value: object) -> int:
    number = float(str(value).strip())
    if not number.is_integer():
        raise ValueError
    return int(number)


def _row(record: dict[str, object], extra: dict[str, str]) -> OdsRow:
    """A row from its cells by normalised column name; ``extra``: original header of each
    column that is none of ours."""
    try:
        year = _year(record["year"])
    except (ValueError, OverflowError):
        raise ValueError(f"year {record['year']!r} is not a year") from None
    main_date = _dates(record.get("main_scene_date"), "main_scene_date")
    return OdsRow(
        shelf=str(record["shelf"]).strip(),
        year=year,
        damage_map_file=_text(record.get("damage_map_file")) or "",
        damage_file=_text(record.get("damage_file")) or "",
        sensors=_split(record.get("sensors")),
        restoration=_text(record.get("restoration")),
        acquisition_dates=_dates(record.get("acquisition_dates"), "acquisition_dates"),
        scene_ids=_split(record.get("scene_ids")),
        scene_sensors=_split(record.get("scene_sensors")),
        main_scene=_text(record.get("main_scene")),
        main_scene_date=main_date[0] if main_date else None,
        extra=tuple((header, text) for column, header in extra.items()
                    if (text := _text(record.get(column))) is not None),
    )


#: What pandas' odf reader (odfpy, zipfile, the XML parsers) raises for a file that is not a
#: readable OpenDocument spreadsheet: garbage, a truncated zip, a zip without its manifest or
#: content, XML that does not parse, a document without a table.
_UNREADABLE_ODS = (zipfile.BadZipFile, zipfile.LargeZipFile, KeyError, IndexError, EOFError,
                   ValueError, SAXException, ExpatError)


def read_sheets(path: Path) -> dict[str, pd.DataFrame]:
    """Every sheet of metadata.ods by name, cells as the text written.

    A file that is not a readable spreadsheet is a ``ValueError`` naming it and what the
    reader found, so ``catalog`` prints one line instead of a zipfile/odfpy traceback (an
    ``OSError``, e.g. a folder under that name, passes unchanged: it names the file itself).
    """
    try:
        # cells are text as written: pandas would read a scene id "NaN", "NA" or "null" as
        # missing
        return pd.read_excel(path, sheet_name=None, engine="odf", dtype=str,
                             keep_default_na=False)
    except _UNREADABLE_ODS as error:
        detail = str(error).strip().strip('"') or "no detail"
        raise ValueError(f"{path}: not a readable OpenDocument spreadsheet "
                         f"({type(error).__name__}: {detail}); restore it, or delete it to "
                         "have `icedamage catalog` write it from the provenance "
                         "records") from None


def sheet_table(path: Path, sheet: str,
                frame: pd.DataFrame) -> tuple[list[OdsRow], frozenset[str]]:
    """The rows of one sheet and its columns (normalised names); ValueError naming the file
    and sheet when it lacks a ``year`` column, or a ``shelf`` column and is not named for a
    shelf (an authors' sheet per shelf), and naming the row and column of a cell that does
    not read."""
    names = {c: _normalised(c) for c in frame.columns}
    frame = frame.rename(columns=names)
    if "shelf" not in frame.columns and (shelf := _sheet_shelf(sheet)) is not None:
        frame = frame.assign(shelf=shelf)
    missing = [c for c in ("shelf", "year") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: sheet {sheet!r} lacks column(s) {missing}; "
                         f"expected {list(COLUMNS)}")
    extra = {name: str(header).strip() for header, name in names.items()
             if name not in COLUMNS}
    rows = []
    for number, record in enumerate(frame.to_dict("records"), start=2):  # row 1: the header
        has_data = any(_text(record.get(c)) for c in COLUMNS if c not in _KEYS)
        shelf, year = _text(record.get("shelf")), _text(record.get("year"))
        if not has_data and (shelf is None or year is None):
            continue  # blank, or a note in a column of the authors' (shelf filled in or not)
        if shelf is None:  # a merged or filled-down shelf cell reads empty
            raise ValueError(f"{path}: sheet {sheet!r}, row {number} (year {year}): the shelf "
                             "cell is empty; write the shelf in every row")
        try:
            rows.append(_row(record, extra))
        except ValueError as error:
            raise ValueError(f"{path}: sheet {sheet!r}, row {number} "
                             f"({_text(record.get('shelf'))} {_text(record.get('year'))}): "
                             f"{error}") from None
    return rows, frozenset(str(c) for c in frame.columns)


def _normalised(header: object) -> str:
    """A column's name as matched: case and spaces ignored, other spellings of ours mapped."""
    name = str(header).strip().lower().replace(" ", "_")
    return _ALIASES.get(name, name)


def _sheet_shelf(sheet: str) -> str | None:
    """The released name of the shelf a sheet is named for, if any."""
    from producer.shelves import SHELVES, shelf_key

    return next((name for name in SHELVES if shelf_key(name) == shelf_key(sheet)), None)


def shelf_sheet_name(shelf: str) -> str:
    """The name of a shelf's own sheet (spreadsheets allow 31 characters)."""
    return shelf[:31]


def table_of(path: Path, sheets: dict[str, pd.DataFrame]
             ) -> tuple[list[OdsRow], frozenset[str]]:
    """The rows and columns of metadata.ods from its sheets: the Summary sheet, or every sheet
    when there is none (an authors' file)."""
    chosen = {SUMMARY_SHEET: sheets[SUMMARY_SHEET]} if SUMMARY_SHEET in sheets else sheets
    rows: list[OdsRow] = []
    columns: set[str] = set()
    for sheet, frame in chosen.items():
        sheet_rows, sheet_columns = sheet_table(path, sheet, frame)
        rows.extend(sheet_rows)
        columns.update(sheet_columns)
    return rows, frozenset(columns)


def read_metadata_table(path: Path) -> tuple[list[OdsRow], frozenset[str]]:
    """The rows of metadata.ods and the columns its sheet(s) have (normalised names).

    The validator needs the columns as well as the rows: an empty cell in a column the file has
    is a fact that contradicts the product, while a column the file lacks altogether (an
    authors' file with only shelf, year and dates) leaves that fact unknown.
    """
    return table_of(path, read_sheets(path))


def read_metadata_ods(path: Path) -> list[OdsRow]:
    """The rows of metadata.ods (Summary sheet, or every sheet when there is none).

    Column names are matched case-insensitively with spaces as underscores. A missing ``shelf``
    or ``year`` column is an error naming the file and sheet; other missing columns read as
    unknown.
    """
    return read_metadata_table(path)[0]


def rows_by_key(rows: list[OdsRow]) -> dict[tuple[str, int], OdsRow]:
    """Rows keyed by (shelf, year); of duplicate rows the last wins (see ``rows_grouped``)."""
    return {(r.shelf, r.year): r for r in rows}


def rows_grouped(rows: list[OdsRow]) -> dict[tuple[str, int], list[OdsRow]]:
    """Every row keyed by (shelf, year), in file order, so duplicates stay visible.

    metadata.ods holds one row per shelf-year; ``rows_by_key`` silently keeps only the last of
    duplicates, which would let a contradicting row pass the validator unseen.
    """
    grouped: dict[tuple[str, int], list[OdsRow]] = {}
    for row in rows:
        grouped.setdefault((row.shelf, row.year), []).append(row)
    return grouped
