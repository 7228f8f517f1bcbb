"""The ``catalog-consistency`` rule set: the catalog, its item index and the products on disk
say the same thing."""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pystac
import shapely
from pyproj import Transformer
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from catalog.build import CATALOG_FORMAT, _state_digest, built_factors
from catalog.geometry import TOLERANCE_M, geojson_and_bbox, grid_footprint
from catalog.release import (
    RasterFacts,
    ShelfYearFiles,
    file_checksum,
    raster_facts,
    scan_release,
    tagged_source,
)
from catalog.rules.common import (
    FACTOR_FREE_STATS,
    GEOMETRY_TOLERANCE_DEG,
    STAC_VERSION,
    STATS_FIELDS,
    P,
    catalog_inputs,
    catalog_outputs,
    checks_catalog,
    guarded,
    has_catalog,
    href_target,
    is_hashable,
    is_inside,
    looks_like_item,
    read_json_or_none,
    rel_path,
    resolved,
    same_file,
    short_message,
    stac_files,
)
from catalog.search import (
    FILTER_COLUMNS,
    NULLABLE_FILTER_COLUMNS,
    OFFSETS_KEY,
    read_build_state,
    release_relative,
)
from catalog.stac import (
    CatalogSettings,
    classes_of,
    item_id,
    not_applicable_fields,
    nullable_fields,
)
from catalog.stats import count_pixels, damage_stats, item_factors, map_restoration, stats_close
from catalog.uncertainty import PAPER_FACTORS
from producer.provenance import Provenance
from producer.spec import (
    CONSTELLATION,
    ENCODING,
    ITEMS_NDJSON,
    ITEMS_PARQUET,
    PRODUCT_TYPES,
    SENSORS,
    SOURCE_TAG,
    STAC_CATALOG_DIR,
    TYPE1,
    TYPE2,
    ProductName,
    SpecError,
    is_demo_source,
    normalise_source,
    summer_window,
)
from validation.report import Problem

# ---------------------------------------------------------------------------------------------
# Catalog consistency
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedItem:
    """An item read from the catalog, with its file and the JSON object as the file holds it."""

    item: pystac.Item
    path: Path
    data: dict[str, Any]

    def asset_path(self, key: str) -> Path | None:
        """Local path an asset's href names, relative or not (None for a missing key or a
        remote URL); whether such an href is allowed is checked apart (``asset-href``)."""
        asset = self.item.assets.get(key)
        if asset is None:
            return None
        return href_target(self.path.parent, asset.href)[0]


def read_items(release_dir: Path) -> tuple[list[LoadedItem], list[Problem]]:
    """Items of the release's catalog folder, and a ``stac-item-invalid`` problem for each
    item file pystac cannot read.

    Files are read one by one, so a broken link or a broken item hides no other item. An item
    without ``stac_version`` or ``type`` (reported by stac-schema) is read as the STAC
    1.1.0 item it should be, so the consistency checks still see its content.
    """
    items, problems = [], []
    for path in stac_files(release_dir):
        data = read_json_or_none(path)
        if data is None or not looks_like_item(data):
            continue
        lenient = copy.deepcopy(data) | {"type": "Feature", "stac_version": STAC_VERSION}
        try:
            item = pystac.Item.from_dict(lenient, href=str(path), preserve_dict=False,
                                         migrate=False)
        except Exception as error:  # noqa: BLE001 - pystac raises many kinds on bad items
            problems.append(Problem(rel_path(release_dir, path), "stac-item-invalid",
                                    short_message(error), "a STAC item that pystac reads"))
            continue
        items.append(LoadedItem(item, path, data))
    return items, problems


def load_items(release_dir: Path) -> list[LoadedItem]:
    """The items pystac can read (see ``read_items``, which also says which it cannot)."""
    return read_items(release_dir)[0]


_LINK_EXPECTED = "a path relative to this file, inside the release (or a remote URL)"


def broken_links(release_dir: Path) -> Iterator[Problem]:
    """Links of catalog objects that leave the release, or whose target file does not exist.

    Remote links (the publisher's DOIs) are allowed; a local link must be a relative path that
    stays inside the release (``link-href``), or moving or publishing the release breaks it.
    """
    root = Path(release_dir)
    for path in stac_files(root):
        rel = rel_path(root, path)
        links = (read_json_or_none(path) or {}).get("links", [])
        for link in links if isinstance(links, list) else []:
            href = link.get("href", "") if isinstance(link, dict) else None
            if not isinstance(href, str) or link.get("rel") == "self":
                continue  # a malformed link is stac-schema's business
            target, kind = href_target(path.parent, href)
            if target is None:
                continue
            if kind != "relative" or not is_inside(root, target):
                yield Problem(rel, "link-href", f"{link.get('rel')} -> {href}", _LINK_EXPECTED)
            if not target.exists():
                yield Problem(rel, "catalog-link-broken", f"{link.get('rel')} -> {href}",
                              "an existing file")


def _grid_problems(rel: str, where: str, fields: dict[str, Any], facts: RasterFacts,
                   names: Iterable[str] = ("proj:shape", "proj:transform", "proj:code",
                                           "data_type", "nodata")) -> list[Problem]:
    """Grid fields (``where`` says whose: an asset's, the item's properties) against a file."""
    problems = []
    expected = {
        "proj:shape": [facts.grid.height, facts.grid.width],
        "proj:transform": list(facts.grid.transform)[:6],
        "proj:code": f"EPSG:{facts.epsg}" if facts.epsg else None,
        "data_type": facts.data_type,
        "nodata": facts.nodata,
    }
    for field in names:
        want, found = expected[field], fields.get(field)
        if field == "proj:transform" and isinstance(found, list) and len(found) >= 6:
            same = all(isinstance(a, int | float) and abs(a - b) < 1e-6
                       for a, b in zip(found[:6], want, strict=True))
        elif field == "nodata":
            same = (found is None and want is None) or (
                isinstance(found, int | float) and want is not None
                and float(found) == float(want))
        else:
            same = found == want
        if not same:
            problems.append(Problem(rel, "item-grid-mismatch", f"{where}.{field} = {found}",
                                    f"{want} (from {facts.path.name})"))
    return problems


@dataclass(frozen=True)
class ShelfYearRecord:
    """A shelf-year's products as the release scan found them, with its provenance record
    (None without one, or when it does not read) and whether that record read."""

    files: ShelfYearFiles
    provenance: Provenance | None
    read: bool


def _record_of(entry: LoadedItem, by_folder: dict[Path, ShelfYearRecord]
               ) -> ShelfYearRecord | None:
    """The shelf-year whose products an item's assets point at, so an item under another id
    (a copy pointing at demo products) is still checked against them."""
    for asset in entry.item.assets.values():
        path, _ = href_target(entry.path.parent, asset.href)
        if path is not None and resolved(path.parent) in by_folder:
            return by_folder[resolved(path.parent)]
    return None


def scan_or_problem(root: Path) -> tuple[list[ShelfYearFiles], Problem | None]:
    """The shelf-years of a release, or a problem saying why the release could not be walked
    (a folder without permission: the layout rules report what they find there)."""
    try:
        return scan_release(root), None
    except OSError as error:
        return [], Problem(".", "catalog-check-failed", short_message(error),
                           "a release folder the catalog checks can walk")


def catalog_missing_problems(root: Path, found: list[ShelfYearFiles]) -> Iterator[Problem]:
    """``stac/catalog.json`` is there, or the release is plainly not cataloged yet.

    Files only a catalog run writes (anything under ``stac/``, the item index) without the
    root catalog are a broken catalog (an error: its remains are still checked). A release with
    products and none of them is not cataloged yet, which is a normal step before
    ``icedamage catalog`` (a warning: it is not ready to publish); metadata.ods and ROI
    GeoPackages alone do not make a catalog, as a user may supply them for the catalog run.
    """
    if has_catalog(root):
        return
    where = f"{STAC_CATALOG_DIR}/catalog.json"
    outputs, inputs = catalog_outputs(root), catalog_inputs(root)
    if outputs:
        yield Problem(where, "catalog-missing",
                      f"no root catalog, but the release holds {', '.join(outputs + inputs)}",
                      "the root catalog written with them: re-run `icedamage catalog --force`")
    elif found:
        held = f" (it holds only {', '.join(inputs)})" if inputs else ""
        yield Problem(where, "catalog-missing", f"not cataloged: no STAC catalog and no item "
                      f"index{held}", "a cataloged release before publishing: run "
                      "`icedamage catalog` (STAC catalog, item index, metadata.ods, ROI "
                      "GeoPackages)", "warning")


@dataclass
class CatalogConsistencyRules:
    """Products ⇔ items, files ⇔ asset and item fields, statistics, unknowns, demo flag, dates,
    item index."""

    name: str = "catalog-consistency"
    check_stats: bool = True

    def check(self, release_dir: Path) -> Iterator[Problem]:
        """Every consistency problem between the catalog and the files of the release."""
        root = resolved(Path(release_dir))  # "a/../b" and links: one spelling of every path
        found, failure = scan_or_problem(root)
        if failure is not None:
            yield failure
            return
        yield from catalog_missing_problems(root, found)
        if not checks_catalog(root):
            return
        loaded, unreadable = read_items(root)
        yield from unreadable
        by_id = {entry.item.id: entry for entry in loaded
                 if is_hashable(entry.item.id)}  # a malformed id is stac-schema's finding
        yield from self._products_have_items(root, found, by_id)
        records: dict[str, ShelfYearRecord] = {}
        by_folder: dict[Path, ShelfYearRecord] = {}
        for files in found:
            prov, error = files.provenance_or_error()
            if error is not None:
                yield Problem(rel_path(root, files.auxiliary["provenance"]),
                              "catalog-file-unreadable", error[:200],
                              "a provenance record (JSON) as the producer writes it")
            record = ShelfYearRecord(files, prov, error is None)
            by_folder.setdefault(resolved(files.folder), record)
            if prov is not None:
                yield from guarded(rel_path(root, files.auxiliary["provenance"]),
                                   _source_tag_problems(root, files, prov))
            try:
                records.setdefault(item_id(files.name), record)
            except SpecError:
                continue  # an unregistered shelf: product-without-item says so
        code_note = _CodeNote(root, found, loaded)
        for entry in loaded:
            record = _record_of(entry, by_folder) or records.get(str(entry.item.id))
            yield from guarded(rel_path(root, entry.path),
                               self._item_problems(root, entry, record, code_note))
        for collection in sorted((root / STAC_CATALOG_DIR).glob("*/collection.json")):
            yield from guarded(rel_path(root, collection),
                               _collection_asset_problems(root, collection))
        yield from guarded(ITEMS_PARQUET, _index_problems(root, loaded))
        yield from guarded(STAC_CATALOG_DIR, broken_links(root))

    def _products_have_items(self, release_dir: Path, found: list[ShelfYearFiles],
                             by_id: dict[str, LoadedItem]) -> Iterator[Problem]:
        for files in found:
            product = files.damage_map or files.damage
            try:
                identifier = item_id(files.name)
            except SpecError as error:  # an unregistered shelf has no item id
                yield Problem(rel_path(release_dir, product), "product-without-item",
                              f"no STAC item: {error}"[:200],
                              "a product of a registered shelf, with its item in the catalog")
                continue
            entry = by_id.get(identifier)
            if entry is None:
                yield Problem(rel_path(release_dir, product), "product-without-item",
                              "no STAC item", f"item {identifier!r} in the catalog")
                continue
            for key, path in ((TYPE1.key, files.damage_map), (TYPE2.key, files.damage)):
                if path is not None and not same_file(entry.asset_path(key), path):
                    yield Problem(rel_path(release_dir, path), "product-without-item",
                                  f"item {entry.item.id} asset {key} -> {entry.asset_path(key)}",
                                  f"asset {key} pointing at this file")

    def _item_problems(self, root: Path, entry: LoadedItem, record: ShelfYearRecord | None,
                       code_note: _CodeNote) -> Iterator[Problem]:
        """Problems of one item; ``record`` is its shelf-year as the release scan found it
        (None when the release holds no product of the item)."""
        rel = rel_path(root, entry.path)
        item = entry.item
        facts_of: dict[str, RasterFacts] = {}
        unreadable: set[str] = set()
        for key, asset in item.assets.items():
            path, kind = href_target(entry.path.parent, asset.href)
            inside = path is not None and is_inside(root, path)
            if kind != "relative" or not inside:
                yield Problem(rel, "asset-href", f"assets.{key}.href = {asset.href} ({kind}"
                              f"{'' if inside or path is None else ', outside the release'})",
                              "a path relative to the item file, inside the release")
            if path is None:
                continue
            if not path.exists():
                dangling = " (a link that does not resolve)" if path.is_symlink() else ""
                yield Problem(rel, "asset-missing", f"assets.{key} -> {asset.href}{dangling}",
                              "an existing file")
                continue
            if not inside:
                continue  # not a file of this release: nothing more to compare it with
            yield from _file_problems(root, rel, key, asset, path)
            if path.suffix == ".tif":
                try:
                    facts_of[key] = raster_facts(path, checksum=False)
                except Exception as error:  # noqa: BLE001 - any GDAL failure means unreadable
                    unreadable.add(key)
                    yield Problem(rel_path(root, path), "catalog-file-unreadable",
                                  f"does not open: {short_message(error)}"[:200],
                                  f"a readable raster (assets.{key} of {item.id} not checked)")
                    continue
                yield from _grid_problems(rel, f"assets.{key}", asset.extra_fields,
                                          facts_of[key])
        yield from _classes_problems(rel, item, code_note)
        yield from _footprint_problems(rel, item, facts_of, code_note)
        yield from _unknown_problems(rel, item)
        yield from _datetime_problems(rel, entry.data)
        if record is not None:
            tagged = tagged_source(facts_of[k] for k in (TYPE1.key, TYPE2.key) if k in facts_of)
            yield from _demo_problems(rel, item, record.provenance, record.read, tagged)
            yield from _name_problems(rel, item, record.files.name)
            if record.provenance is not None:
                yield from _provenance_problems(rel, item, record.provenance,
                                                record.files.auxiliary["provenance"].name)
        if self.check_stats and TYPE1.key not in unreadable:
            yield from _stats_problems(root, rel, entry, code_note)


#: A field that an item must not hold (STAC's ``platform`` of a map from several satellites).
_ABSENT = object()


def name_fields(name: ProductName) -> dict[str, Any]:
    """The item fields that a product name decides, as ``catalog.stac.build_item`` writes
    them from the spec's sensors: shelf, year, sensors, restoration, whether the imagery is
    SLC-off, and STAC's platform (one satellite only), constellation and instruments."""
    return {
        f"{P}shelf": name.shelf,
        f"{P}year": name.year,
        f"{P}sensors": list(name.sensors),
        f"{P}restoration": name.restoration,
        f"{P}slc_off": any(SENSORS[t].slc_off_in(name.year) for t in name.sensors),
        "platform": SENSORS[name.sensors[0]].platform if len(name.sensors) == 1 else _ABSENT,
        "constellation": CONSTELLATION,
        "instruments": sorted({SENSORS[t].instrument for t in name.sensors}),
    }


def _name_problems(rel: str, item: pystac.Item, name: ProductName) -> Iterator[Problem]:
    """Fields the product name decides say what the name of the item's products says (an
    item edited after cataloging must not describe other satellites, restoration or year)."""
    props = item.properties
    for field, want in name_fields(name).items():
        # a missing field that may be null is null (icedamage:restoration: not restored)
        found = props.get(field, None if field in nullable_fields() else _ABSENT)
        if found is _ABSENT and want is _ABSENT:
            continue
        if found is _ABSENT or want is _ABSENT or type(found) is not type(want) \
                or found != want:
            shown = "absent" if found is _ABSENT else json.dumps(found)
            wanted = "absent (the map merges several satellites)" if want is _ABSENT \
                else json.dumps(want)
            yield Problem(rel, "item-name-mismatch", f"{field} = {shown}",
                          f"{wanted} (from {name.filename})")


def provenance_fields(prov: Provenance, restored: bool) -> dict[str, Any]:
    """The item fields a provenance record decides, as ``catalog.stac`` writes them: scene
    source, segmentation model and weights hash, main scene, each scene's id, sensor, date
    and role and, for a restored map, the restoration model, its hash and restored share."""
    fields: dict[str, Any] = {
        f"{P}source": prov.source,
        f"{P}model": prov.segmentation.name,
        f"{P}model_weights_sha256": prov.segmentation.weights_sha256,
        f"{P}main_scene": prov.main_scene.scene_id,
        f"{P}scenes": [_scene_key(s.scene_id, s.sensor, s.acquired.isoformat(), s.role)
                       for s in sorted(prov.scenes, key=lambda s: s.acquired)],
    }
    if restored:
        model = prov.restoration_model
        fields[f"{P}restoration_model"] = model.name if model else None
        fields[f"{P}restoration_weights_sha256"] = model.weights_sha256 if model else None
        fields[f"{P}restored_fraction"] = prov.parameters.get("restored_extent_fraction")
    return fields


def _scene_key(*values: Any) -> str:
    """A scene as ``id (sensor, date, role)``, how both sides of the comparison are shown."""
    return f"{values[0]} ({', '.join(str(v) for v in values[1:])})"


def _item_scenes(value: Any) -> Any:
    """An item's ``icedamage:scenes`` in the form ``provenance_fields`` gives them (the value
    as it is when it is not a list of scene objects: stac-schema reports that)."""
    if not isinstance(value, list) or not all(isinstance(s, dict) for s in value):
        return value
    return [_scene_key(s.get("id"), s.get("sensor"), s.get("acquired"), s.get("role"))
            for s in sorted(value, key=lambda s: str(s.get("acquired")))]


def _provenance_problems(rel: str, item: pystac.Item, prov: Provenance,
                         record: str) -> Iterator[Problem]:
    """Fields that come from the shelf-year's provenance record say what it says: which
    models (by weights hash) made the map, from which scenes, with which main scene."""
    props = item.properties
    restored = props.get(f"{P}restoration") is not None
    for field, want in provenance_fields(prov, restored).items():
        found = props.get(field)
        if field == f"{P}scenes":
            found = _item_scenes(found)
        if not _same_value(found, want):
            yield Problem(rel, "item-provenance-mismatch", f"{field} = {found}"[:300],
                          f"{want} (from {record})"[:300])


def _classes_problems(rel: str, item: pystac.Item, code_note: _CodeNote) -> Iterator[Problem]:
    """``classification:classes`` of both products are the classes the spec gives their values,
    built as the catalog builds them (``catalog.stac.classes_of``): a reader that trusts an
    edited class list reads damage as background."""
    for kind in PRODUCT_TYPES:
        asset = item.assets.get(kind.key)
        if asset is None:
            continue
        want = [c.to_dict() for c in classes_of(kind)]
        found = asset.extra_fields.get("classification:classes")
        if found != want:
            yield Problem(rel, "item-classes", f"assets.{kind.key}.classification:classes = "
                          f"{_classes_text(found)}"[:300],
                          f"{_classes_text(want)} (the spec's classes of type {kind.number})"
                          f"{code_note.text()}"[:400])


def _classes_text(classes: Any) -> str:
    """Classes shown as ``value=name`` pairs (what differs is nearly always there)."""
    if not isinstance(classes, list):
        return json.dumps(classes)[:200]
    return "[" + ", ".join(f"{c.get('value')}={c.get('name')}" if isinstance(c, dict)
                           else json.dumps(c) for c in classes) + "]"


def _collection_asset_problems(root: Path, path: Path) -> Iterator[Problem]:
    """The collection's own assets (metadata.ods, the ROI GeoPackages) against their files, as
    the items' assets are: a replaced ROI GeoPackage leaves a stale checksum that a download
    check would fail on."""
    data = read_json_or_none(path)
    assets = data.get("assets") if isinstance(data, dict) else None
    if not isinstance(assets, dict):
        return  # a collection that does not read is stac-schema's finding
    rel = rel_path(root, path)
    for key, fields in assets.items():
        if not isinstance(fields, dict) or not isinstance(fields.get("href"), str):
            continue
        asset = pystac.Asset.from_dict(fields)
        target, kind = href_target(path.parent, asset.href)
        if target is None or kind != "relative" or not is_inside(root, target):
            yield Problem(rel, "asset-href", f"assets.{key}.href = {asset.href} ({kind})",
                          "a path relative to the collection file, inside the release")
            continue
        if not target.exists():
            yield Problem(rel, "asset-missing", f"assets.{key} -> {asset.href}",
                          "an existing file")
            continue
        yield from _file_problems(root, rel, key, asset, target)


def _file_problems(root: Path, rel: str, key: str, asset: pystac.Asset,
                   path: Path) -> Iterator[Problem]:
    """An asset's recorded size and checksum against its file (one that does not read, e.g.
    without permission, is reported as such)."""
    size, checksum = asset.extra_fields.get("file:size"), asset.extra_fields.get("file:checksum")
    try:
        actual_size, actual = path.stat().st_size, file_checksum(path)
    except OSError as error:
        yield Problem(rel_path(root, path), "catalog-file-unreadable",
                      f"does not read: {short_message(error)}"[:200],
                      f"a readable file (assets.{key} size and checksum not checked)")
        return
    if size != actual_size:
        yield Problem(rel, "asset-size", f"assets.{key} file:size = {size}",
                      f"{actual_size} ({rel_path(root, path)})")
    if checksum != actual:
        yield Problem(rel, "asset-checksum", f"assets.{key} file:checksum = {checksum}",
                      f"{actual} ({rel_path(root, path)}; `icedamage catalog --force` hashes "
                      "every file again)")


class _CodeNote:
    """Whether the catalog was built by this version's catalog code, asked once per run and
    only when an item disagrees with what the current builder makes of its files.

    The build state (``stac/.build.json``) records a digest of a catalog run's inputs and of
    the builder's ``CATALOG_FORMAT``; the digest this code computes for the same files (with the
    paper's uncertainty factors and the catalog's licence and software version) differs when
    the catalog was built by older code (or from other files or factors). Then the fix is to
    rebuild the catalog, ``--force`` making sure it is.
    """

    def __init__(self, root: Path, found: list[ShelfYearFiles],
                 loaded: list[LoadedItem]) -> None:
        self.root, self.found, self.loaded = root, found, loaded
        self._text: str | None = None

    def text(self) -> str:
        """A sentence to append to an ``expected`` text ("" when the catalog is current or
        the question cannot be answered)."""
        if self._text is None:
            self._text = self._compute()
        return self._text

    def _compute(self) -> str:
        recorded = (read_build_state(self.root / STAC_CATALOG_DIR) or {}).get("inputs")
        if not isinstance(recorded, str) or not self.loaded:
            return ""
        try:
            factors = built_factors(self.root) or PAPER_FACTORS  # as it was built
            current = _state_digest(self.root, self.found, factors, self._settings())
        except Exception:  # noqa: BLE001 - an unreadable file: no answer, reported elsewhere
            return ""
        if current == recorded:
            return ""
        return ("; the catalog's build state (stac/.build.json) does not match this "
                f"version's catalog code (format {CATALOG_FORMAT}) and these files: it was "
                "built by older code (or from other files or factors); rebuild it with "
                "`icedamage catalog --force`")

    def _settings(self) -> CatalogSettings:
        """The settings the catalog was built with, as its collection and items state them."""
        props = self.loaded[0].item.properties
        collections = sorted((self.root / STAC_CATALOG_DIR).glob("*/collection.json"))
        collection = read_json_or_none(collections[0]) if collections else None
        return CatalogSettings(
            license=str((collection or {}).get("license", CatalogSettings.license)),
            software_version=self._catalog_software(),
            dataset_version=str(props["version"]) if props.get("version") else None)

    def _catalog_software(self) -> str:
        """The icedamage version that built the catalog: its build state's, else (a catalog
        built before the state recorded it) the one its items named."""
        software = (read_build_state(self.root / STAC_CATALOG_DIR) or {}).get("software")
        if isinstance(software, str):
            return software
        for loaded in self.loaded:
            named = loaded.item.properties.get("processing:software")
            if isinstance(named, dict) and "icedamage" in named:
                return str(named["icedamage"])
        return "unknown"


#: Longest longitude/latitude segment (degrees) when a geometry is measured in EPSG:3031:
#: a straight lon/lat segment this short and its EPSG:3031 image differ by millimetres.
_MEASURE_STEP_DEG = 0.01


@cache
def _to_polar() -> Transformer:
    return Transformer.from_crs("EPSG:4326", ENCODING.crs, always_xy=True)


def _in_metres(geometry: BaseGeometry) -> BaseGeometry:
    """A lon/lat geometry in EPSG:3031, its straight lon/lat segments (what GeoJSON means)
    kept as the curves they are there by densifying them first."""
    dense = shapely.segmentize(geometry, _MEASURE_STEP_DEG)

    def project(xy: np.ndarray) -> np.ndarray:
        return np.column_stack(_to_polar().transform(xy[:, 0], xy[:, 1]))

    return shapely.transform(dense, project)


def _projects(geometry: BaseGeometry) -> bool:
    """Whether every vertex of a lon/lat geometry projects to EPSG:3031 (finite metres); the
    points of its densified segments then do too, lying between vertices in lon/lat."""
    xy = shapely.get_coordinates(geometry)
    return bool(np.isfinite(np.column_stack(_to_polar().transform(xy[:, 0], xy[:, 1]))).all())


def geometry_distance_m(found: BaseGeometry, want: BaseGeometry) -> float:
    """The largest distance (metres, in EPSG:3031) between two lon/lat geometries' outlines
    (infinite when one does not project, e.g. latitudes beyond the pole).

    Identical geometries (same type, same vertices in the same order: what the catalog builder
    writes and this rule rebuilds) are 0 m apart without measuring; the measure densifies both
    outlines and takes their Hausdorff distance, quadratic in vertices (~350 ms for Amery's
    item). Any other pair, however close, is measured.
    """
    try:
        if not want.is_empty and shapely.equals_exact(found, want, tolerance=0) and \
                _projects(want):
            return 0.0
        distance = float(shapely.hausdorff_distance(_in_metres(found), _in_metres(want)))
    except Exception:  # noqa: BLE001 - shapely/pyproj errors on coordinates that make no sense
        return math.inf
    return distance if math.isfinite(distance) else math.inf


def _footprint_problems(rel: str, item: pystac.Item, facts_of: dict[str, RasterFacts],
                        code_note: _CodeNote) -> Iterator[Problem]:
    """The item's own grid fields, geometry and bbox are those of its footprint product.

    As the catalog builds them: the type-2 file (full ROI) when the item has one, else the
    type-1 file; its grid rectangle in EPSG:3031, reprojected (``catalog.geometry``). The
    geometry may differ from the builder's by the builder's own tolerance
    (``catalog.geometry.TOLERANCE_M``): a catalog built by older code, which placed its
    vertices otherwise, still describes the footprint.
    """
    key = TYPE2.key if TYPE2.key in item.assets else TYPE1.key
    facts = facts_of.get(key)
    if facts is None:
        return  # no such file, or unreadable: reported already
    yield from _grid_problems(rel, "properties", item.properties, facts,
                              ("proj:shape", "proj:transform", "proj:code"))
    geometry, bbox = geojson_and_bbox(grid_footprint(facts.grid.bounds))
    source = f"footprint of {facts.path.name}"
    found_bbox = item.bbox
    if not (isinstance(found_bbox, list) and len(found_bbox) == len(bbox) and all(
            isinstance(a, int | float) and abs(a - b) <= GEOMETRY_TOLERANCE_DEG
            for a, b in zip(found_bbox, bbox, strict=True))):
        yield Problem(rel, "item-geometry-mismatch", f"bbox = {found_bbox}",
                      f"{[round(v, 6) for v in bbox]} ({source}){code_note.text()}")
    try:
        found_shape = shape(item.geometry) if item.geometry else None
    except Exception:  # noqa: BLE001 - not a GeoJSON geometry: stac-schema says why
        found_shape = None
    want = shape(geometry)
    vertices = f"{shapely.get_num_coordinates(want)} vertices"
    if found_shape is None or found_shape.is_empty:
        yield Problem(rel, "item-geometry-mismatch", f"geometry = {item.geometry}"[:200],
                      f"the {source} ({vertices}){code_note.text()}")
        return
    distance = geometry_distance_m(found_shape, want)
    if distance > TOLERANCE_M:
        far = "does not project to EPSG:3031" if math.isinf(distance) else \
            f"up to {distance:,.1f} m from the footprint"
        yield Problem(rel, "item-geometry-mismatch",
                      f"geometry of {shapely.get_num_coordinates(found_shape)} vertices, {far} "
                      f"(bounds {tuple(round(v, 4) for v in found_shape.bounds)})",
                      f"the {source} as the catalog builds it ({vertices}, bounds "
                      f"{tuple(round(v, 4) for v in want.bounds)}), within {TOLERANCE_M:g} m"
                      f"{code_note.text()}")


def _at(day: dt.date, end: bool = False) -> dt.datetime:
    """Start (00:00:00) or end (23:59:59) of a day in UTC, as the catalog writes timestamps."""
    return dt.datetime.combine(day, dt.time(23, 59, 59) if end else dt.time(0, 0, 0),
                               tzinfo=dt.UTC)


def _datetime_problems(rel: str, data: dict[str, Any]) -> Iterator[Problem]:
    """``start_datetime``/``end_datetime`` span the acquisition dates (the summer when they are
    unknown) and ``datetime`` is the main scene's date (one of the acquisition dates)."""
    props = data.get("properties")
    if not isinstance(props, dict):
        return
    try:
        dates = sorted(dt.date.fromisoformat(str(d))
                       for d in props.get(f"{P}acquisition_dates") or [])
    except (TypeError, ValueError):
        return  # not dates: stac-schema reports them
    stamps: dict[str, dt.datetime | None] = {}
    for key in ("datetime", "start_datetime", "end_datetime"):
        value = props.get(key)
        try:
            stamps[key] = pystac.utils.str_to_datetime(value) if value is not None else None
        except (TypeError, ValueError):
            yield Problem(rel, "item-datetime", f"{key} = {value!r}", "an RFC 3339 timestamp")
            return
    year = props.get(f"{P}year")
    if dates:
        span, why = (_at(dates[0]), _at(dates[-1], end=True)), \
            f"{P}acquisition_dates {dates[0]} .. {dates[-1]}"
    elif isinstance(year, int) and not isinstance(year, bool):
        first, last = summer_window(year)
        span, why = (_at(first), _at(last, end=True)), \
            f"the summer {year}/{year + 1} (no acquisition dates)"
    else:
        return
    for key, want in zip(("start_datetime", "end_datetime"), span, strict=True):
        if stamps[key] != want:
            yield Problem(rel, "item-datetime", f"{key} = {props.get(key)}",
                          f"{pystac.utils.datetime_to_str(want)} ({why})")
    when, main = stamps["datetime"], _main_scene_date(props)
    if main is not None and when != _at(main):
        yield Problem(rel, "item-datetime", f"datetime = {props.get('datetime')}",
                      f"{pystac.utils.datetime_to_str(_at(main))} (the main scene "
                      f"{props.get(P + 'main_scene')})")
    elif main is None and when is not None and dates and when not in {_at(d) for d in dates}:
        yield Problem(rel, "item-datetime", f"datetime = {props.get('datetime')}",
                      f"one of {P}acquisition_dates {[d.isoformat() for d in dates]} at 00:00:00Z")


def _main_scene_date(props: dict[str, Any]) -> dt.date | None:
    """The acquisition date of the scene ``icedamage:main_scene`` names, when the item's scene
    records hold it."""
    main, scenes = props.get(f"{P}main_scene"), props.get(f"{P}scenes")
    if main is None or not isinstance(scenes, list):
        return None
    for scene in scenes:
        if isinstance(scene, dict) and scene.get("id") == main:
            try:
                return dt.date.fromisoformat(str(scene.get("acquired")))
            except ValueError:
                return None
    return None


def _same_value(found: Any, want: Any) -> bool:
    """Equality of index and item values that tolerates float rounding (not bool vs int)."""
    numbers = (int, float)
    if isinstance(found, numbers) and isinstance(want, numbers) and \
            not isinstance(found, bool) and not isinstance(want, bool):
        return math.isclose(found, want, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(found, list | tuple) and isinstance(want, list | tuple):
        return len(found) == len(want) and all(
            _same_value(a, b) for a, b in zip(found, want, strict=True))
    return bool(found == want)


#: The item index columns that ``icedamage search`` filters on (see ``catalog.search``).
INDEX_COLUMNS = tuple(c.strip('"') for c in FILTER_COLUMNS
                      if c.strip('"') not in ("id", "file_row_number"))


def _index_value_problem(column: str, value: Any, data: dict[str, Any]) -> str | None:
    """What differs between an index cell and the item it indexes (None when they agree)."""
    if column == "geometry":
        try:
            found = shapely.from_wkb(value) if value is not None else None
            want = shape(data["geometry"]) if data.get("geometry") else None
        except Exception:  # noqa: BLE001 - an undecodable cell is stale
            return "geometry does not decode"
        if found is None or want is None:
            return None if found is want else "geometry differs"
        same = found.is_empty == want.is_empty and (
            found.is_empty or shapely.hausdorff_distance(found, want) <= 1e-9)
        return None if same else \
            f"geometry bounds {tuple(round(v, 4) for v in found.bounds)}"
    if column == "bbox":
        bbox = data.get("bbox")
        want_box = dict(zip(("xmin", "ymin", "xmax", "ymax"), bbox, strict=True)) \
            if isinstance(bbox, list) and len(bbox) == 4 else bbox
        found_box = {k: value.get(k) for k in ("xmin", "ymin", "xmax", "ymax")} \
            if isinstance(value, dict) else value
        return None if _same_value(found_box, want_box) or found_box == want_box else \
            f"bbox = {found_box}"
    want = (data.get("properties") or {}).get(column)
    return None if _same_value(value, want) else f"{column} = {value}"


def _index_problems(root: Path, loaded: list[LoadedItem]) -> Iterator[Problem]:
    """items.parquet holds exactly the catalog's items with the values search filters on, and
    items.ndjson (which search reads the results from) holds each item as it is saved."""
    parquet = root / ITEMS_PARQUET
    if not parquet.exists():
        yield Problem(ITEMS_PARQUET, "index-missing", "no file",
                      "the stac-geoparquet item index written by `icedamage catalog`")
        return
    items = {entry.item.id: entry for entry in loaded if is_hashable(entry.item.id)}
    try:
        schema = pq.read_schema(parquet)
        columns = [c for c in ("id", *INDEX_COLUMNS) if c in schema.names]
        rows = pq.read_table(parquet, columns=columns).to_pylist()
    except Exception as error:  # noqa: BLE001 - arrow/OS errors all mean unreadable
        yield Problem(ITEMS_PARQUET, "index-unreadable", short_message(error),
                      "a stac-geoparquet file")
        return
    ids = [row.get("id") for row in rows]
    if set(ids) != set(items):
        yield Problem(ITEMS_PARQUET, "index-stale",
                      f"extra {sorted(set(ids) - set(items), key=str)}, "
                      f"missing {sorted(set(items) - set(ids))}",
                      "exactly the catalog's items")
    # a column of a field that may be null is left out of an index whose items all leave the
    # field out (which means null): search reads it as null, and so does this check
    absent = [c for c in INDEX_COLUMNS if c not in columns and c not in NULLABLE_FILTER_COLUMNS]
    if absent:
        yield Problem(ITEMS_PARQUET, "index-stale", f"no column(s) {absent}",
                      "the columns search filters on")
    for row in rows:
        entry = items.get(row.get("id"))
        if entry is None:
            continue
        for column in INDEX_COLUMNS:
            if column not in columns and column not in NULLABLE_FILTER_COLUMNS:
                continue
            found = _index_value_problem(column, row.get(column), entry.data)
            if found is not None:
                want = entry.data.get(column) if column in ("bbox", "geometry") else \
                    (entry.data.get("properties") or {}).get(column)
                yield Problem(ITEMS_PARQUET, "index-stale", f"row {entry.item.id}: {found}"[:200],
                              f"{str(want)[:100]} (item {entry.item.id})")
    yield from _ndjson_problems(root, ids, items, schema.metadata or {})


def _ndjson_problems(root: Path, ids: list[Any], items: dict[str, LoadedItem],
                     metadata: dict[bytes, bytes]) -> Iterator[Problem]:
    """items.ndjson: one line per item, equal to the saved item (hrefs relative to the release
    root), in the parquet's row order when the parquet records the line offsets search uses."""
    path = root / ITEMS_NDJSON
    if not path.exists():
        yield Problem(ITEMS_NDJSON, "index-missing", "no file",
                      f"{ITEMS_NDJSON} beside {ITEMS_PARQUET} (search reads the items from it; "
                      "without it every search decodes the whole parquet)", "warning")
        return
    try:
        raw = path.read_bytes()
    except OSError as error:  # a folder, no permission
        yield Problem(ITEMS_NDJSON, "index-unreadable", f"does not read: {short_message(error)}",
                      "one STAC item (JSON) per line")
        return
    records = []
    for number, line in enumerate(raw.splitlines(), start=1):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            record = None
        if not isinstance(record, dict):
            yield Problem(ITEMS_NDJSON, "index-unreadable", f"line {number} is not a JSON object",
                          "one STAC item (JSON) per line")
            return
        records.append(record)
    line_ids = [r.get("id") for r in records]
    if sorted(line_ids, key=str) != sorted(items):
        yield Problem(ITEMS_NDJSON, "index-stale",
                      f"extra {sorted(set(line_ids) - set(items), key=str)}, missing "
                      f"{sorted(set(items) - set(line_ids))}", "exactly the catalog's items")
    offsets = metadata.get(OFFSETS_KEY.encode())
    if offsets is not None and line_ids != ids:
        yield Problem(ITEMS_NDJSON, "index-stale", "lines not in the parquet's row order",
                      f"line n = row n of {ITEMS_PARQUET} (search reads them by offset)")
    for number, record in enumerate(records, start=1):
        entry = items.get(record.get("id"))
        if entry is None:
            continue
        want = release_relative(entry.data, entry.path, root)
        if record != want:
            found_props, want_props = record.get("properties") or {}, want.get("properties") or {}
            keys = sorted({k for k in record.keys() | want.keys()
                           if k != "properties" and record.get(k) != want.get(k)} | {
                f"properties.{k}" for k in found_props.keys() | want_props.keys()
                if found_props.get(k) != want_props.get(k)})
            yield Problem(ITEMS_NDJSON, "index-stale",
                          f"line {number} ({entry.item.id}) differs in {keys[:5]}"[:200],
                          f"the item as saved ({rel_path(root, entry.path)})")


def _unknown_problems(rel: str, item: pystac.Item) -> Iterator[Problem]:
    """Null product fields must be listed in icedamage:unknown, and listed fields must be null
    (or missing, which means null for a field that may be null)."""
    props = item.properties
    unknown = props.get(f"{P}unknown", [])
    listed = {k for k in unknown if isinstance(k, str)} if isinstance(unknown, list) else set()
    exempt = not_applicable_fields(props)
    nulls = {k for k, v in props.items() if k.startswith(P) and v is None} - exempt
    if nulls - listed:
        yield Problem(rel, "unknown-not-listed", f"null {sorted(nulls - listed)}",
                      f"listed in {P}unknown")
    # a not-applicable null listed as unknown (catalogs built before the rule) is harmless
    valued = {k for k in listed if props.get(k) is not None}
    if valued:
        yield Problem(rel, "unknown-not-null", f"listed {sorted(valued)} have values",
                      f"only null fields in {P}unknown")


def _demo_problems(rel: str, item: pystac.Item, prov: Provenance | None,
                   read: bool, tagged: str | None = None) -> Iterator[Problem]:
    """Products made from the demo source must say so (they must never pass for real data).

    The provenance record is the one the release holds for the item's shelf-year (found by the
    release scan), not whatever the item's provenance asset points at: an item that drops that
    asset must not hide a demo record. Without a record, the products' ``SOURCE_TAG``
    (``tagged``) decides, and without either demo is unknown (null). ``read`` is False when the
    record exists but does not read (reported on its own).
    """
    if not read:
        return
    flag = item.properties.get(f"{P}demo")
    if prov is None:
        want = is_demo_source(tagged) if tagged is not None else None
        if flag is not want:
            yield Problem(rel, "demo-flag", f"{P}demo = {flag} but the release holds no "
                          "provenance record of this shelf-year and its products' "
                          f"{SOURCE_TAG} tag says {tagged!r}",
                          f"{P}demo = {json.dumps(want)}"
                          + (f", listed in {P}unknown" if want is None else ""))
        return
    if prov.demo and flag is not True:
        yield Problem(rel, "demo-flag", f"{P}demo = {flag} but provenance source is "
                      f"{prov.source}", f"{P}demo = true")
    if not prov.demo and flag is True:
        yield Problem(rel, "demo-flag", f"{P}demo = true but provenance source is {prov.source}",
                      f"{P}demo = false")


def _source_tag_problems(root: Path, files: ShelfYearFiles,
                         prov: Provenance) -> Iterator[Problem]:
    """Both products' ``SOURCE_TAG`` names the scene source their provenance record names.

    The catalog and the demo-flag rule read the record when there is one, and the tags only
    without it: a record saying gee beside maps tagged demo would pass demo maps for real ones
    (and the reverse would hide real maps). An untagged product (the published v1, releases
    written before the tag) has nothing to compare; one that does not open is reported by the
    raster rules.
    """
    record = rel_path(root, files.auxiliary["provenance"])
    for path in (files.damage_map, files.damage):
        if path is None:
            continue
        try:
            tag = raster_facts(path, checksum=False).source
        except Exception:  # noqa: BLE001 - any GDAL failure: unreadable, reported elsewhere
            continue
        if tag is not None and normalise_source(tag) != normalise_source(prov.source):
            yield Problem(rel_path(root, path), "source-tag",
                          f"{SOURCE_TAG} = {tag!r} but its provenance record {record} says "
                          f"source = {prov.source!r}",
                          f"the record's source and the {SOURCE_TAG} tag of both products "
                          "naming the same scene source (re-produce the shelf-year)")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _stats_problems(root: Path, rel: str, entry: LoadedItem,
                   code_note: _CodeNote | None = None) -> Iterator[Problem]:
    """The item's area / fraction numbers equal a fresh computation on its type-1 file.

    Without usable uncertainty factors in the item (stac-schema reports them missing), the
    numbers that do not depend on them (area, valid area, fraction) are still checked.
    """
    path = entry.asset_path(TYPE1.key)
    props = entry.item.properties
    if path is None or not path.exists() or not is_inside(root, path):
        return
    try:
        counts = count_pixels(path)
    except Exception as error:  # noqa: BLE001 - any GDAL failure means unreadable
        yield Problem(rel_path(root, path), "catalog-file-unreadable",
                      f"pixels do not read: {short_message(error)}"[:200],
                      f"a readable raster (statistics of {entry.item.id} not checked)")
        return
    # the factors the item records (its restoration factor included; none known for its
    # method: no upper bound), applied to the restoration its file name says; the upper factor
    # it records must be the one they give
    factors = item_factors(props)
    fields = (*STATS_FIELDS, "lambda_upper_restored") if factors is not None \
        else FACTOR_FREE_STATS
    fresh = damage_stats(props.get(f"{P}shelf"), props.get(f"{P}year"), counts,
                         map_restoration(path), factors or PAPER_FACTORS)
    for field in fields:
        want, found = getattr(fresh, field), props.get(f"{P}{field}")
        if not (found is None or _number(found)) or not stats_close(found, want, rel=1e-6):
            yield Problem(rel, "item-stats-mismatch", f"{P}{field} = {found}",
                          f"{'null' if want is None else want} (computed from {path.name})"
                          f"{code_note.text() if code_note is not None else ''}"[:400])
