"""Fields of our STAC extension that may be null may also be missing, and mean the same.

stac-geoparquet readers (rustac, ``stac_table_to_items``) treat a null and a missing key alike
and may drop a null property: an item read back from items.parquet by standard tools must
still validate against our extension schema, and every reader of item properties (search,
stats, the catalog rules) must take a missing nullable field exactly as null.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pyarrow.parquet as pq
import pystac
import pytest
import stac_geoparquet.arrow as sga
from typer.testing import CliRunner

import schemas
from catalog.build import catalog_release, reindex, saved_item_paths
from catalog.rules import (
    CatalogConsistencyRules,
    ReleaseMetadataRules,
    StacSchemaRules,
)
from catalog.search import NULLABLE_FILTER_COLUMNS, search, write_index
from catalog.stac import CatalogSettings, build_collection, nullable_fields
from catalog.stats import catalog_factors, catalogued_stats, item_factors
from catalog.uncertainty import PAPER_FACTORS
from producer.cli import build_app
from producer.spec import ITEMS_NDJSON, ITEMS_PARQUET
from tests.conftest import STAC_SCHEMAS
from tests.release_factory import DEFAULT_SHELF_YEARS, ShelfYear, build_release

SCHEMAS = Path(os.environ.get("ICEDAMAGE_STAC_SCHEMAS") or STAC_SCHEMAS)
P = schemas.PREFIX
DOC = Path(__file__).resolve().parents[1] / "docs" / "stac-extension.md"
#: A map restored with a classical fill whose factor is not known: null upper bounds.
FILL = ShelfYear("Larsen B", 2006, ("LE07",), "FillNodata")
#: The fields v1.0.0 once required although their value may be null.
ONCE_REQUIRED_NULLABLE = {f"{P}{name}" for name in (
    "restoration", "acquisition_dates", "demo", "damage_fraction", "damage_area_km2_high",
    "damage_fraction_low", "damage_fraction_high")}


def _schema() -> dict[str, Any]:
    return schemas.load_schema()


def _required() -> list[str]:
    return _schema()["anyOf"][0]["properties"]["properties"]["allOf"][0]["required"]


def _fields() -> set[str]:
    return set(_schema()["definitions"]["fields"]["properties"])


def _messages(errors: Any) -> list[str]:
    return [text for error in errors
            for text in (error.message, *_messages(error.context or ()))]


def _extension_errors(data: dict) -> list[str]:
    """Errors of a STAC dict against our extension schema alone (as packaged), with those of
    the anyOf branches (Item, Collection) under them."""
    return _messages(jsonschema.Draft7Validator(_schema()).iter_errors(data))


def _without_nulls(props: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Properties without their null members whose name starts with ``prefix``."""
    return {k: v for k, v in props.items() if v is not None or not k.startswith(prefix)}


def _saved_items(root: Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text())
            for path in saved_item_paths(root / "stac" / "catalog.json")]


def _pystac_items(root: Path) -> list[pystac.Item]:
    catalog = pystac.Catalog.from_file(str(root / "stac" / "catalog.json"))
    return sorted(catalog.get_items(recursive=True), key=lambda i: i.id)


def rules_found(root: Path) -> set[tuple[str, str]]:
    rule_sets = [StacSchemaRules(SCHEMAS), CatalogConsistencyRules(), ReleaseMetadataRules()]
    return {(p.rule, p.file) for rs in rule_sets for p in rs.check(root)}


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two cataloged releases (never modify): ``full``, with provenance, restored maps (DiffGF,
    and FillNodata without a known factor: null upper bounds); ``bare``, without provenance
    (the published v1: scenes, dates, models unknown) and without restored maps (so no item
    has an ``icedamage:restoration`` value)."""
    base = tmp_path_factory.mktemp("nulls")
    full = build_release(base / "full" / "release", (*DEFAULT_SHELF_YEARS, FILL))
    bare = build_release(base / "bare" / "release",
                         tuple(s for s in DEFAULT_SHELF_YEARS if s.restoration is None),
                         with_provenance=False)
    for root in (full, bare):
        catalog_release(root, PAPER_FACTORS)
    return {"full": full, "bare": bare}


@pytest.fixture(scope="module")
def dropped(releases: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
            ) -> dict[str, Path]:
    """Copies of ``releases`` whose saved items leave out every null ``icedamage:`` field (as
    a stac-geoparquet round trip does), with the item index rewritten from them (never
    modify)."""
    out = {}
    for kind, root in releases.items():
        copy_root = Path(shutil.copytree(root, tmp_path_factory.mktemp(f"dropped-{kind}")
                                         / "release"))
        for path in saved_item_paths(copy_root / "stac" / "catalog.json"):
            data = json.loads(path.read_text())
            data["properties"] = _without_nulls(data["properties"], P)
            path.write_text(json.dumps(data, indent=2))
        reindex(copy_root)
        out[kind] = copy_root
    return out


# --------------------------------------------------------------------------------------------
# The schema: nullable fields are optional, the others still required
# --------------------------------------------------------------------------------------------


def test_every_item_validates_with_its_nulls_left_out(releases: dict[str, Path]) -> None:
    """Every item of a cataloged release, with all its null properties removed (and its
    nulls as stac-geoparquet's reader fills them and a reader then drops them), is valid
    against our extension schema; the fields once required though nullable are among those
    left out."""
    left_out: set[str] = set()
    for root in releases.values():
        saved = _saved_items(root)
        read_back = list(sga.stac_table_to_items(pq.read_table(root / ITEMS_PARQUET)))
        assert saved and len(read_back) == len(saved)
        for data in [*saved, *read_back]:
            assert _extension_errors(data) == [], data["id"]
            stripped = copy.deepcopy(data)
            stripped["properties"] = _without_nulls(data["properties"])
            left_out |= data["properties"].keys() - stripped["properties"].keys()
            assert _extension_errors(stripped) == [], data["id"]
    assert {f"{P}restoration", f"{P}acquisition_dates", f"{P}damage_area_km2_high",
            f"{P}damage_fraction_high"} <= left_out


def test_required_fields_are_the_ones_never_null() -> None:
    """Only fields whose schema refuses null are required, and each such field is."""
    nullable = nullable_fields()
    assert nullable >= ONCE_REQUIRED_NULLABLE
    assert not set(_required()) & nullable
    assert set(_required()) == _fields() - nullable
    assert set(NULLABLE_FILTER_COLUMNS) <= nullable  # search fills only those when absent


@pytest.mark.parametrize("field", sorted(_fields() - nullable_fields()))
def test_a_missing_non_nullable_field_still_fails(releases: dict[str, Path], field: str) -> None:
    """A required (never null) field left out is refused, nulls removed or not."""
    for data in _saved_items(releases["full"]):
        for props in (data["properties"], _without_nulls(data["properties"])):
            broken = {**data, "properties": {k: v for k, v in props.items() if k != field}}
            errors = _extension_errors(broken)
            assert any(field in text for text in errors), (data["id"], errors)


def test_null_for_a_non_nullable_field_still_fails(releases: dict[str, Path]) -> None:
    data = _saved_items(releases["full"])[0]
    for field in sorted(_fields() - nullable_fields()):
        broken = copy.deepcopy(data)
        broken["properties"][field] = None
        assert _extension_errors(broken) != [], field


def test_icedamage_fields_are_refused_at_the_features_top_level(releases: dict[str, Path]
                                                                ) -> None:
    """``icedamage:`` fields belong in ``properties`` (or assets); at the Feature's top level
    even a valid value is refused, while our items and collection stay valid."""
    item = _saved_items(releases["full"])[0]
    assert not [k for k in item if k.startswith(P)]
    for key, value in ((f"{P}year", "x"), (f"{P}year", 2005), (f"{P}typo", 1)):
        assert _extension_errors({**item, key: value}) != [], key
    collection = json.loads(next((releases["full"] / "stac").rglob("collection.json"))
                            .read_text())
    assert not [k for k in collection if k.startswith(P)]
    assert _extension_errors(collection) == []


def test_the_doc_table_lists_every_field_with_its_nullability() -> None:
    """docs/stac-extension.md lists every field of the schema; bold (required) exactly the
    ones never null, and "or null" in the type of each nullable one."""
    rows: dict[str, tuple[bool, str]] = {}
    for cell, kind in re.findall(r"^\|\s*([^|]*icedamage:[^|]*?)\s*\|\s*([^|]*?)\s*\|",
                                 DOC.read_text(), flags=re.M):
        for name in (n.strip() for n in cell.split(",")):
            bold, bare = name.startswith("**"), name.strip("*")
            if "/" in bare:  # icedamage:damage_fraction_low/high
                stem, tail = bare.split("/")
                names = [stem, stem.rsplit("_", 1)[0] + "_" + tail]
            else:
                names = [bare]
            rows |= {n: (bold, kind) for n in names}
    assert set(rows) == _fields()
    for name, (bold, kind) in rows.items():
        nullable = name in nullable_fields()
        assert bold == (name in _required()), name
        assert nullable == kind.endswith("or null"), (name, kind)


# --------------------------------------------------------------------------------------------
# Readers take a missing nullable field as null
# --------------------------------------------------------------------------------------------


def test_catalog_rules_accept_items_without_their_nulls(releases: dict[str, Path],
                                                        dropped: dict[str, Path]) -> None:
    """``icedamage validate``'s catalog rule sets (schemas, consistency with the products,
    provenance and index, ``icedamage:unknown``) find nothing in items that leave out their
    null fields, as in the items written with them."""
    for kind in releases:
        assert rules_found(releases[kind]) == set(), kind
        left_out = [k for d in _saved_items(dropped[kind]) for k in
                    d["properties"][f"{P}unknown"] if k not in d["properties"]]
        assert left_out, kind  # unknown lists fields the items leave out
        assert rules_found(dropped[kind]) == set(), kind
    # the bare release's index then has no restoration column (no item has that field)
    assert f"{P}restoration" not in pq.read_schema(dropped["bare"] / ITEMS_PARQUET).names


def _found(root: Path, **query: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(item.id, _without_nulls(item.properties)) for item in search(root, **query)]


QUERIES: list[dict[str, Any]] = [
    {}, {"restored": True}, {"restored": False}, {"min_fraction": 0.0},
    {"min_fraction": 0.02}, {"shelves": "Larsen B", "restored": False},
    {"year_from": 2005, "sensors": "LE07"}, {"shelves": ["Totten"], "year": 2021},
]


@pytest.mark.parametrize("kind", ["full", "bare"])
def test_search_finds_the_same_items_without_their_nulls(releases: dict[str, Path],
                                                         dropped: dict[str, Path], kind: str,
                                                         tmp_path: Path) -> None:
    """Search gives the same items (ids, and properties but for the nulls) from an index of
    items without their nulls, read from items.ndjson or decoded from the parquet, also when
    no item holds a field the filters use (no column for it)."""
    undecoded = Path(shutil.copytree(dropped[kind], tmp_path / "release"))
    (undecoded / ITEMS_NDJSON).unlink()  # search decodes the parquet instead
    for query in QUERIES:
        want = _found(releases[kind], **query)
        assert _found(dropped[kind], **query) == want, query
        assert _found(undecoded, **query) == want, query
    assert {i for i, _ in _found(releases[kind], restored=True)} == (
        {"larsen-b-2005", "larsen-b-2006", "amery-front-2012"} if kind == "full" else set())


def test_search_reads_an_index_without_a_nullable_column(releases: dict[str, Path],
                                                         tmp_path: Path) -> None:
    """An index written from items that all leave out a field the filters use (here the
    fraction, null for a map without valid pixels, and restoration) searches as all null."""
    items = [d for d in _saved_items(releases["full"]) if not d["properties"][f"{P}restoration"]]
    nulled = copy.deepcopy(items)
    for data in nulled:
        for name in ("damage_fraction", "damage_fraction_low", "damage_fraction_high"):
            data["properties"][f"{P}{name}"] = None
    with_nulls, without = tmp_path / "with", tmp_path / "without"
    for root in (with_nulls, without):
        root.mkdir()
    write_index(with_nulls, nulled)
    write_index(without, [{**d, "properties": _without_nulls(d["properties"], P)}
                          for d in nulled])
    names = pq.read_schema(without / ITEMS_PARQUET).names
    assert f"{P}damage_fraction" not in names and f"{P}restoration" not in names
    for root in (with_nulls, without):
        index = root / ITEMS_PARQUET
        assert [i.id for i in search(index, restored=False)] == sorted(d["id"] for d in items)
        assert search(index, restored=True) == [] and search(index, min_fraction=0.0) == []
        (root / ITEMS_NDJSON).unlink()
        assert [i.id for i in search(index, restored=False)] == sorted(d["id"] for d in items)
        assert search(index, min_fraction=0.0) == []


def test_stats_are_the_same_without_the_nulls(releases: dict[str, Path],
                                              dropped: dict[str, Path], tmp_path: Path) -> None:
    """The statistics of items (their factors, the catalog's factors, the rows computed from
    their numbers, ``icedamage stats`` of the release) do not change when the items leave out
    their null fields; nor does the collection built from them."""
    runner = CliRunner()
    for kind in releases:
        original, stripped = _pystac_items(releases[kind]), _pystac_items(dropped[kind])
        assert [i.id for i in original] == [i.id for i in stripped]
        for a, b in zip(original, stripped, strict=True):
            assert item_factors(a.properties) == item_factors(b.properties), a.id
        assert catalog_factors(original) == catalog_factors(stripped)
        assert catalogued_stats(original) == catalogued_stats(stripped)
        assert catalogued_stats(original, PAPER_FACTORS) == catalogued_stats(stripped,
                                                                             PAPER_FACTORS)
        tables = []
        for root in (releases[kind], dropped[kind]):
            out = tmp_path / f"{kind}-{len(tables)}.csv"
            result = runner.invoke(build_app(), ["stats", str(root), "--out", str(out)])
            assert result.exit_code == 0, result.output
            tables.append(out.read_text())
        assert tables[0] == tables[1]
        settings = CatalogSettings(software_version="test")
        assert build_collection(original, settings, {}).to_dict() == \
            build_collection(stripped, settings, {}).to_dict()
    fill = next(i for i in _pystac_items(dropped["full"]) if i.id == "larsen-b-2006")
    assert f"{P}damage_area_km2_high" not in fill.properties
    (row,) = [r for r in catalogued_stats([fill])]
    assert row.damage_area_km2_high is None and row.damage_area_km2_low is not None
