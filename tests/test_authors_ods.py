"""A release that mixes the authors' maps and metadata.ods with maps we produced: the catalog
keeps what the authors' file says, completes it, refuses what it cannot read, and writes
nothing when a run fails."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from typer.testing import CliRunner

from catalog.build import catalog_release
from catalog.ods import OdsRow, read_metadata_ods, write_metadata_ods
from catalog.rules.consistency import CatalogConsistencyRules
from catalog.rules.release_metadata import ReleaseMetadataRules
from catalog.uncertainty import PAPER_FACTORS
from producer.cli import build_app
from producer.spec import METADATA_ODS
from tests.release_factory import ShelfYear, build_release

AUTHORS = (ShelfYear("Totten", 2016, ("LC08",)),)
OURS = (ShelfYear("Totten", 2021, ("LC08", "LC09")),)


def _authors_ods(path: Path, cells: dict[str, object], shelf_column: bool = True) -> None:
    """An authors-style metadata.ods: a sheet per shelf, their own column names."""
    row = {**({"Shelf": "Totten"} if shelf_column else {}), "Year": 2016, **cells}
    with pd.ExcelWriter(path, engine="odf") as writer:
        pd.DataFrame([row]).to_excel(writer, sheet_name="Totten", index=False)


def _mixed(tmp_path: Path, cells: dict[str, object], shelf_column: bool = True) -> Path:
    root = build_release(tmp_path / "release", AUTHORS, with_provenance=False)
    _authors_ods(root / METADATA_ODS, cells, shelf_column)
    build_release(root, OURS)  # one shelf-year we produced, with its provenance record
    return root


def _problems(root: Path) -> set[str]:
    return {p.rule for rules in (CatalogConsistencyRules(), ReleaseMetadataRules())
            for p in rules.check(root)}


@pytest.mark.parametrize("shelf_column", [True, False], ids=["shelf-column", "sheet-per-shelf"])
def test_authors_rows_are_completed_and_their_columns_kept(tmp_path: Path,
                                                           shelf_column: bool) -> None:
    """The rewritten file used to keep the authors' rows with our file-name and sensor cells
    empty (14 ods-* errors, publish refused) and to drop their Notes column."""
    root = _mixed(tmp_path, {"Acquisition dates": "2016-12-05", "Notes": "hand-checked"},
                  shelf_column)
    result = catalog_release(root, PAPER_FACTORS)
    assert result.metadata_written
    rows = {(r.shelf, r.year): r for r in read_metadata_ods(root / METADATA_ODS)}
    authors = rows[("Totten", 2016)]
    assert authors.acquisition_dates == (dt.date(2016, 12, 5),)
    assert authors.damage_map_file == "LC08_Totten_2016_damage_map.tif"
    assert authors.damage_file == "LC08_Totten_2016_damage.tif"
    assert authors.sensors == ("LC08",)
    assert authors.extra == (("Notes", "hand-checked"),)
    assert rows[("Totten", 2021)].scene_ids  # ours: from the provenance record
    assert _problems(root) == set()
    assert catalog_release(root, PAPER_FACTORS).skipped


def test_a_date_that_is_not_iso_is_refused_naming_the_cell(tmp_path: Path) -> None:
    """11/12/2000 (day or month first?) used to be dropped: the rewritten file lost it."""
    root = _mixed(tmp_path, {"Acquisition dates": "05/12/2016"})
    original = (root / METADATA_ODS).read_bytes()
    with pytest.raises(ValueError, match=r"sheet 'Totten', row 2 \(Totten 2016\): "
                                         r"acquisition_dates '05/12/2016' is not a date"):
        catalog_release(root, PAPER_FACTORS)
    assert (root / METADATA_ODS).read_bytes() == original
    assert not (root / "stac").exists()


def test_a_run_that_fails_on_a_map_leaves_metadata_ods_as_it_was(tmp_path: Path) -> None:
    root = _mixed(tmp_path, {"Acquisition dates": "2016-12-05"})
    original = (root / METADATA_ODS).read_bytes()
    broken = root / "Totten" / "2016" / "LC08_Totten_2016_damage_map.tif"
    broken.write_bytes(broken.read_bytes()[:2000])
    with pytest.raises(ValueError, match="LC08_Totten_2016_damage_map.tif"):
        catalog_release(root, PAPER_FACTORS)
    assert (root / METADATA_ODS).read_bytes() == original


def test_files_left_out_of_the_catalog_are_named(tmp_path: Path) -> None:
    """A misnamed map used to vanish from STAC, search and stats without a word."""
    root = build_release(tmp_path / "release", OURS)
    folder = root / "Totten" / "2021"
    (folder / "LC8_Totten_2021_damage_map.tif").write_bytes(
        (folder / "LC08_LC09_Totten_2021_damage_map.tif").read_bytes())
    (folder / "LC08_LC09_Totten_2021_damage.tif").unlink()
    result = CliRunner().invoke(build_app(), ["catalog", str(root)])
    assert result.exit_code == 0, result.output
    said = "".join(result.output.split())
    assert "LC8_Totten_2021_damage_map.tif:notcataloged" in said
    assert "LC08_LC09_Totten_2021_damage_map.tif:catalogedwithoutitstype2partner" in said
    again = CliRunner().invoke(build_app(), ["catalog", str(root)])  # up to date: still said
    assert "LC8_Totten_2021_damage_map.tif:notcataloged" in "".join(again.output.split())


@given(days=st.lists(st.dates(dt.date(1990, 1, 1), dt.date(2100, 12, 31)), min_size=1,
                    max_size=3),
       time=st.sampled_from(["", " 00:00:00", "T00:00:00", " 00:00:00.000", " 13:41:07",
                             "T09:30", "T00:00:00Z", " 00:00:00+00:00", "T23:59:59-0300"]),
       separator=st.sampled_from(["; ", ", ", " ", "\n", ""]))
def test_iso_date_cells_read_as_dates(days: list[dt.date], time: str, separator: str) -> None:
    """With or without a time of day, separated as people and pandas write them (a cell's
    lines are joined with nothing between them)."""
    from catalog.ods import _dates

    assume(separator or "." not in time)  # 00:00:00.0002000-01-01: where would it end?
    cell = separator.join(f"{day.isoformat()}{time}" for day in days)
    assert _dates(cell, "acquisition_dates") == tuple(days)


@given(text=st.sampled_from(["11/12/2000", "20051203", "2005-13-01", "2005-12-3", "Dec 3 2005",
                             "2005-12-03; 11/12/2005", "12005-12-03", "2005-12-03 noon",
                             "2005-12-03 99:99:99", "2005-12-03T25:61", "38689"]))
def test_other_date_spellings_are_refused(text: str) -> None:
    from catalog.ods import _dates

    with pytest.raises(ValueError, match="not a date as YYYY-MM-DD"):
        _dates(text, "acquisition_dates")


def test_blank_and_note_rows_of_a_sheet_per_shelf_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "m.ods"
    with pd.ExcelWriter(path, engine="odf") as writer:
        pd.DataFrame([{"Year": 2016, "Acquisition dates": "2016-12-05", "Notes": None},
                      {"Year": None, "Acquisition dates": None, "Notes": None},
                      {"Year": None, "Acquisition dates": None,
                       "Notes": "dates from the USGS archive"}]
                     ).to_excel(writer, sheet_name="Totten", index=False)
    [row] = read_metadata_ods(path)
    assert (row.shelf, row.year, row.acquisition_dates) == ("Totten", 2016,
                                                            (dt.date(2016, 12, 5),))
    # but a row with dates and no year is an error naming it, not dropped
    with pd.ExcelWriter(path, engine="odf") as writer:
        pd.DataFrame([{"Year": 2016, "Acquisition dates": "2016-12-05"},
                      {"Year": None, "Acquisition dates": "2017-01-15"}]
                     ).to_excel(writer, sheet_name="Totten", index=False)
    with pytest.raises(ValueError, match=r"sheet 'Totten', row 3 .*year .* is not a year"):
        read_metadata_ods(path)
    # a Summary row with data and an empty shelf cell (merged, filled down) is named, not lost
    with pd.ExcelWriter(path, engine="odf") as writer:
        pd.DataFrame([{"Shelf": "Totten", "Year": 2016, "Acquisition dates": "2016-12-05"},
                      {"Shelf": None, "Year": 2017, "Acquisition dates": "2017-12-07"}]
                     ).to_excel(writer, sheet_name="Summary", index=False)
    with pytest.raises(ValueError, match=r"sheet 'Summary', row 3 \(year 2017\): the shelf "
                                         r"cell is empty"):
        read_metadata_ods(path)


def test_writing_leaves_other_odfpy_documents_whole(tmp_path: Path) -> None:
    """The write used to clear odfpy's process-wide namespace list: a document built before it
    and saved after it lost a prefix declaration (dc: of a note's author: unbound prefix)."""
    import io
    import xml.sax
    from zipfile import ZipFile

    from odf.dc import Creator
    from odf.office import Annotation
    from odf.opendocument import OpenDocumentText
    from odf.text import P

    document = OpenDocumentText()
    note = Annotation()
    note.addElement(Creator(text="a reviewer"))
    note.addElement(P(text="a note"))
    paragraph = P(text="text")
    paragraph.addElement(note)
    document.text.addElement(paragraph)
    write_metadata_ods(tmp_path / "m.ods", [OdsRow("Totten", 2016, "a_damage_map.tif",
                                                   "a_damage.tif", ("LC08",), None)])
    document.save(str(tmp_path / "other.odt"))
    parser = xml.sax.make_parser()
    parser.setFeature(xml.sax.handler.feature_namespaces, True)
    with ZipFile(tmp_path / "other.odt") as odt:
        parser.parse(io.BytesIO(odt.read("content.xml")))  # every prefix bound


def test_extra_columns_round_trip(tmp_path: Path) -> None:
    rows = [OdsRow("Totten", 2016, "a_damage_map.tif", "a_damage.tif", ("LC08",), None,
                   extra=(("Notes", "x"), ("Checked by", "A. B."))),
            OdsRow("Totten", 2017, "b_damage_map.tif", "b_damage.tif", ("LC08",), None)]
    write_metadata_ods(tmp_path / "m.ods", rows)
    assert read_metadata_ods(tmp_path / "m.ods") == rows


def test_items_name_the_software_that_made_the_map(tmp_path: Path) -> None:
    """The authors' items said icedamage made them; ours now name the software the provenance
    records (which may be older than the catalog's)."""
    import json

    root = _mixed(tmp_path, {"Acquisition dates": "2016-12-05"})
    catalog_release(root, PAPER_FACTORS)
    items = root / "stac" / "antarctic-ice-shelf-surface-damage"
    authors = json.loads((items / "totten-2016" / "totten-2016.json").read_text())
    ours = json.loads((items / "totten-2021" / "totten-2021.json").read_text())
    assert "processing:software" not in authors["properties"]
    assert ours["properties"]["processing:software"] == {"icedamage": "test"}
    assert _problems(root) == set()  # the rules still know the catalog's own version
