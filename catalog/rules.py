"""Validation rule sets for the catalog side of a release (plug into ``icedamage validate``).

Three rule sets, each reporting every problem it finds as ``validation.report.Problem``:

``stac-schema``
    Every STAC object under ``stac/`` validates: core 1.1.0 from pystac's bundled schemas,
    official extensions from a local schema folder (``--schemas DIR`` or the environment variable
    ``ICEDAMAGE_STAC_SCHEMAS``; the folder holds ``schema-map.json`` mapping URLs to files), else
    fetched once and cached (``catalog.schema_fetch``), our product extension from the
    ``schemas`` package.
``catalog-consistency``
    Products ⇔ items, asset hrefs are relative paths inside the release, assets exist with the
    recorded size and checksum, grid / nodata / data type fields (of assets and of the item)
    agree with the files, the item's geometry and bbox are the products' footprint, its
    timestamps agree with its acquisition dates, statistics agree with the type-1 raster, null
    facts are listed as unknown, the demo flag says what the provenance record of the release
    says, the item index (items.parquet and items.ndjson) holds exactly the catalog's items as
    they are.
``release-metadata``
    metadata.ods rows ⇔ items, one row per shelf-year, each row agrees with its product's name
    and (when present) provenance record, acquisition dates agree between metadata.ods,
    provenance and STAC, each shelf has its ROI GeoPackage (valid polygon layer, EPSG:3031) and
    its products lie in the ROI.

A release without a ``stac/`` folder has no catalog yet: the rule sets then report nothing (the
product rules of the validator still apply). One bad file (a truncated raster, a garbled JSON
record, an item pystac cannot read) is reported as a problem of that file; it never aborts a
rule set nor hides the problems of other files.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
import os
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pystac
import shapely
from jsonschema.exceptions import ValidationError, best_match
from jsonschema.validators import validator_for
from pystac.validation import JsonSchemaSTACValidator
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource, Unresolvable
from referencing.jsonschema import DRAFT7
from shapely.geometry import box, shape

import schemas
from catalog.geometry import geojson_and_bbox, grid_footprint
from catalog.gpkg import read_roi
from catalog.ods import OdsRow, read_metadata_table, row_from_name, rows_grouped
from catalog.release import RasterFacts, ShelfYearFiles, file_checksum, raster_facts, scan_release
from catalog.schema_fetch import SchemaFetcher
from catalog.search import FILTER_COLUMNS, OFFSETS_KEY, release_relative
from catalog.stac import item_id, not_applicable_fields
from catalog.stats import count_pixels, damage_stats, is_diffgf_derived, stats_close
from catalog.uncertainty import PAPER_FACTORS, UncertaintyFactors
from producer.provenance import Provenance
from producer.spec import (
    ENCODING,
    ITEMS_NDJSON,
    ITEMS_PARQUET,
    METADATA_ODS,
    STAC_CATALOG_DIR,
    TYPE1,
    TYPE2,
    SpecError,
    roi_geopackage_name,
    summer_window,
)
from validation.report import Problem

SCHEMAS_ENV = "ICEDAMAGE_STAC_SCHEMAS"
SCHEMA_MAP = "schema-map.json"
P = schemas.PREFIX
#: The STAC version of a release's catalog (pystac's bundled core schemas of it are used).
STAC_VERSION = "1.1.0"
_STATS_FIELDS = ("damage_area_km2", "valid_area_km2", "damage_fraction", "damage_area_km2_low",
                 "damage_area_km2_high", "damage_fraction_low", "damage_fraction_high")
#: The statistics that do not depend on the uncertainty factors.
_FACTOR_FREE_STATS = ("damage_area_km2", "valid_area_km2", "damage_fraction")
#: Item geometry and bbox are rounded to 1e-7 degrees by the builder; this leaves room for it.
GEOMETRY_TOLERANCE_DEG = 1e-6
_KINDS = {"Feature": pystac.STACObjectType.ITEM, "Collection": pystac.STACObjectType.COLLECTION,
          "Catalog": pystac.STACObjectType.CATALOG}


# ---------------------------------------------------------------------------------------------
# Offline schema validation
# ---------------------------------------------------------------------------------------------


def schemas_dir_from_env(explicit: Path | None = None) -> Path | None:
    """The local folder of official extension schemas: the argument, else the env variable."""
    if explicit is not None:
        return Path(explicit)
    value = os.environ.get(SCHEMAS_ENV)
    return Path(value) if value else None


def load_schema_map(folder: Path) -> dict[str, dict[str, Any]]:
    """URL -> schema of every file listed in ``<folder>/schema-map.json``."""
    mapping_file = Path(folder) / SCHEMA_MAP
    if not mapping_file.exists():
        raise FileNotFoundError(f"{mapping_file}: no schema map (URL -> file) in the schema folder")
    mapping = json.loads(mapping_file.read_text())
    return {url: json.loads((Path(folder) / rel).read_text()) for url, rel in mapping.items()}


def offline_validator(schemas_folder: Path | None = None) -> JsonSchemaSTACValidator:
    """A pystac validator whose schema cache holds every schema it needs, so none is fetched."""
    validator = JsonSchemaSTACValidator()
    folder = schemas_dir_from_env(schemas_folder)
    if folder is not None:
        for url, schema in load_schema_map(folder).items():
            validator.schema_cache.setdefault(url, schema)
            validator.schema_cache.setdefault(url.rstrip("#"), schema)
    validator.schema_cache.update(schemas.schema_map())
    return validator


class OfflineSchemas:
    """Compiled JSON Schema validators over one registry of the schemas at hand.

    The registry starts from the offline cache (core, the local folder, ours); an extension
    schema, or a ``$ref`` target, that none of them holds comes from ``fetcher`` (the user's cache,
    else the network: ``catalog.schema_fetch``), if one is given. pystac's validator rebuilds its
    registry and re-checks the schema on every call; compiling each schema once keeps validating
    a release of hundreds of items fast.
    """

    def __init__(self, schemas_folder: Path | None = None,
                 fetcher: SchemaFetcher | None = None) -> None:
        self.pystac = offline_validator(schemas_folder)
        self.cache = self.pystac.schema_cache
        self.fetcher = fetcher
        self.registry = Registry(retrieve=self._retrieve).with_resources(
            [(url, Resource.from_contents(schema, default_specification=DRAFT7))
             for url, schema in self.cache.items()])
        self._compiled: dict[str, Any] = {}
        #: schemas whose ``$ref`` targets could not be had, and why
        self.unresolvable: dict[str, str] = {}

    def available(self, uri: str) -> bool:
        """Whether schema ``uri`` is at hand, fetching it if it is not and a fetcher may."""
        if uri in self.cache:
            return True
        schema = self.fetcher.get(uri) if self.fetcher is not None else None
        if schema is None:
            return False
        self.cache[uri] = schema
        self.registry = self.registry.with_resource(
            uri, Resource.from_contents(schema, default_specification=DRAFT7))
        return True

    def unavailable_reason(self, uri: str) -> str:
        """Why ``uri`` could not be had, or could not be used (for the warning)."""
        if uri in self.unresolvable:
            return self.unresolvable[uri]
        if self.fetcher is not None and uri in self.fetcher.reasons:
            return self.fetcher.reasons[uri]
        return "no local schema folder holds it"

    def _retrieve(self, uri: str) -> Resource:
        """A ``$ref`` target outside the registry, through the fetcher."""
        schema = self.fetcher.get(uri) if self.fetcher is not None else None
        if schema is None:
            raise NoSuchResource(ref=uri)
        return Resource.from_contents(schema, default_specification=DRAFT7)

    def core_uri(self, data: dict[str, Any]) -> str | None:
        """The core schema URL of a STAC dict (None when its ``type`` names no STAC object)."""
        kind = _KINDS.get(data.get("type"))  # type: ignore[arg-type]
        if kind is None:
            return None
        return self.pystac.schema_uri_map.get_object_schema_uri(
            kind, str(data.get("stac_version", STAC_VERSION)))

    def error(self, data: dict[str, Any], uri: str) -> ValidationError | None:
        """The most specific error of ``data`` against schema ``uri``, or None when valid."""
        if uri not in self._compiled:
            schema = self.cache[uri]
            self._compiled[uri] = validator_for(schema)(schema, registry=self.registry)
        errors = list(self._compiled[uri].iter_errors(data))
        return _deepest(best_match(errors)) if errors else None


def _wrong_kind(errors: list[ValidationError]) -> bool:
    """Whether a oneOf/anyOf branch failed on its discriminator: a ``type`` member whose const
    or enum does not match (the branch is for another kind of object or geometry)."""
    return any(list(e.relative_path) == ["type"] and e.validator in ("const", "enum")
               for e in errors)


def _own_branches(context: list[ValidationError]) -> list[ValidationError]:
    """The errors of a oneOf/anyOf that belong to the branches meant for the instance.

    An item that misses required product fields fails both the item branch (the fields) and
    the collection branch (``type`` is not "Collection"); the latter says nothing useful, so
    branches whose ``type`` discriminator fails are dropped (unless every branch does).
    """
    branches: dict[object, list[ValidationError]] = {}
    for error in context:
        key = error.relative_schema_path[0] if error.relative_schema_path else None
        branches.setdefault(key, []).append(error)
    kept = [e for group in branches.values() if not _wrong_kind(group) for e in group]
    return kept or list(context)


def _deepest(error: ValidationError) -> ValidationError:
    """The leaf error with the longest path (an anyOf over Item/Collection hides the cause),
    looking only into the branches meant for the instance's own kind."""
    leaves, stack = [], [error]
    while stack:
        current = stack.pop()
        if current.context:
            stack.extend(_own_branches(list(current.context)))
        else:
            leaves.append(current)
    return max(leaves, key=lambda e: len(e.absolute_path)) if leaves else error


def _json_or_none(path: Path) -> dict[str, Any] | None:
    """A JSON object file's content, or None when it is not a JSON object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _message(error: BaseException, limit: int = 200) -> str:
    """``Type: message`` of an exception, first line only, shortened for the report."""
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}"[:limit]


def has_catalog(release_dir: Path) -> bool:
    """Whether the release has been cataloged (its root catalog exists)."""
    return (Path(release_dir) / STAC_CATALOG_DIR / "catalog.json").exists()


def stac_files(release_dir: Path) -> list[Path]:
    """Every STAC JSON file of the release's catalog folder.

    Dot-files and dot-folders (the catalog's own ``.build.json`` state) are not STAC objects
    and are left out.
    """
    folder = Path(release_dir) / STAC_CATALOG_DIR
    return sorted(p for p in folder.rglob("*.json")
                  if not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _rel(release_dir: Path, path: Path) -> str:
    """``path`` relative to the release root, POSIX style (lexically first, so a file reached
    through a linked folder keeps its place in the release; then with links resolved)."""
    root, target = Path(os.path.abspath(release_dir)), Path(os.path.abspath(path))
    for base, where in ((root, target), (root.resolve(), Path(path).resolve())):
        try:
            return where.relative_to(base).as_posix()
        except ValueError:
            continue
    return str(path)


def _href_target(base: Path, href: str) -> tuple[Path | None, str]:
    """(local file an href names, what kind of href it is) for an href written in a file of
    folder ``base``: "relative", "absolute" (a path), "file-url" or "remote" (no local file).
    """
    parts = urllib.parse.urlsplit(href)
    if len(parts.scheme) > 1:  # one letter is a Windows drive ("C:/..."), an absolute path
        if parts.scheme.lower() != "file":
            return None, "remote"
        return Path(os.path.normpath(urllib.parse.unquote(parts.path))), "file-url"
    if os.path.isabs(href) or len(parts.scheme) == 1:
        return Path(os.path.normpath(href)), "absolute"
    return Path(os.path.normpath(base / href)), "relative"


def _inside(root: Path, path: Path) -> bool:
    """Whether a (normalised, absolute) path lies inside the release root."""
    return path == root or root in path.parents


def _same_file(a: Path | None, b: Path) -> bool:
    """Whether two paths name the same file, with ``..`` and links resolved on both sides."""
    return a is not None and a.resolve() == b.resolve()


def _guarded(where: str, problems: Iterator[Problem]) -> Iterator[Problem]:
    """The problems of one check, and one ``catalog-check-failed`` problem naming ``where``
    if the check raises: an unexpected error in one file must not abort the rule set."""
    try:
        yield from problems
    except Exception as error:  # noqa: BLE001 - reported as a problem of that file
        yield Problem(where, "catalog-check-failed", _message(error),
                      "checks that run to the end (the other files were still checked)")


@dataclass
class StacSchemaRules:
    """Every STAC object validates against core 1.1.0 and its extensions.

    Extension schemas come from the local folder, else (``fetch``) from the user's cache or the
    network (``catalog.schema_fetch``; ``ICEDAMAGE_OFFLINE=1`` forbids the network).
    """

    schemas_folder: Path | None = None
    fetch: bool = True
    name: str = "stac-schema"

    def check(self, release_dir: Path) -> Iterator[Problem]:
        """Validate each catalog, collection and item file; each file's problems on its own."""
        files = stac_files(release_dir) if has_catalog(release_dir) else []
        if not files:
            return
        checker = OfflineSchemas(self.schemas_folder,
                                 SchemaFetcher() if self.fetch else None)
        unavailable: dict[str, str] = {}
        for path in files:
            rel = _rel(release_dir, path)
            data = _json_or_none(path)
            if data is None:
                yield Problem(rel, "stac-json-invalid", "not JSON", "a STAC JSON object")
                continue
            try:
                yield from self._file_problems(checker, data, rel, unavailable)
            except Exception as error:  # noqa: BLE001 - one odd file must not stop the others
                yield Problem(rel, "stac-schema", f"not validated: {_message(error)}",
                              f"a STAC {STAC_VERSION} object the schemas apply to")
        for url, first in sorted(unavailable.items()):
            yield Problem(first, "stac-schema-unavailable",
                          f"{url} not validated: {checker.unavailable_reason(url)}",
                          f"the schema at hand: online, in the user cache, or in a local "
                          f"folder (--schemas DIR or {SCHEMAS_ENV})", "warning")

    @staticmethod
    def _file_problems(checker: OfflineSchemas, data: dict[str, Any], rel: str,
                       unavailable: dict[str, str]) -> Iterator[Problem]:
        """Schema problems of one STAC file.

        A missing or other ``stac_version`` is a problem of its own; the object is then
        validated as the STAC 1.1.0 object it should be, so its other problems still show.
        A missing or unknown ``type`` leaves only the extension schemas to apply.
        """
        version = data.get("stac_version")
        if version != STAC_VERSION:
            yield Problem(rel, "stac-schema",
                          "stac_version missing" if "stac_version" not in data
                          else f"stac_version = {version!r}",
                          f"stac_version {STAC_VERSION!r}, the release's STAC version")
            data = {**data, "stac_version": STAC_VERSION}
        if data.get("type") not in _KINDS:
            yield Problem(rel, "stac-schema",
                          "type missing" if "type" not in data else f"type = {data['type']!r}",
                          f"type {' | '.join(repr(k) for k in _KINDS)}")
            if not _looks_like_item(data):
                return  # no kind of STAC object to validate it as
            data = {**data, "type": "Feature"}  # an item that lost its type: validate the rest
        core = checker.core_uri(data)
        declared = data.get("stac_extensions", [])
        if not isinstance(declared, list) or not all(isinstance(u, str) for u in declared):
            yield Problem(rel, "stac-schema", f"stac_extensions = {declared!r}"[:200],
                          "a list of extension schema URLs")
            declared = []
        missing = [u for u in declared if not checker.available(u)]
        if core is not None and not checker.available(core):
            missing.append(core)
        for url in missing:
            unavailable.setdefault(url, rel)
        for uri in (core, *(u for u in declared if u not in missing)):
            if uri is None or uri in missing or uri in checker.unresolvable:
                continue
            try:
                error = checker.error(data, uri)
            except Unresolvable as err:  # a schema it refers to could not be had
                checker.unresolvable[uri] = f"its reference {err.ref} could not be had"
                unavailable.setdefault(uri, rel)
                continue
            if error is not None:
                where = "/".join(str(p) for p in error.absolute_path) or "(root)"
                yield Problem(rel, "stac-schema", f"{where}: {error.message[:200]}",
                              f"valid against {uri}")


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
        return _href_target(self.path.parent, asset.href)[0]


def _looks_like_item(data: dict[str, Any]) -> bool:
    """A STAC item, or a file that is one but lost its ``type`` (stac-schema reports that)."""
    if data.get("type") == "Feature":
        return True
    return "type" not in data and isinstance(data.get("properties"), dict) and "assets" in data


def read_items(release_dir: Path) -> tuple[list[LoadedItem], list[Problem]]:
    """Items of the release's catalog folder, and a ``stac-item-invalid`` problem for each
    item file pystac cannot read.

    Files are read one by one, so a broken link or a broken item hides no other item. An item
    without ``stac_version`` or ``type`` (reported by stac-schema) is read as the STAC
    1.1.0 item it should be, so the consistency checks still see its content.
    """
    items, problems = [], []
    for path in stac_files(release_dir):
        data = _json_or_none(path)
        if data is None or not _looks_like_item(data):
            continue
        lenient = copy.deepcopy(data) | {"type": "Feature", "stac_version": STAC_VERSION}
        try:
            item = pystac.Item.from_dict(lenient, href=str(path), preserve_dict=False,
                                         migrate=False)
        except Exception as error:  # noqa: BLE001 - pystac raises many kinds on bad items
            problems.append(Problem(_rel(release_dir, path), "stac-item-invalid",
                                    _message(error), "a STAC item that pystac reads"))
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
        rel = _rel(root, path)
        links = (_json_or_none(path) or {}).get("links", [])
        for link in links if isinstance(links, list) else []:
            href = link.get("href", "") if isinstance(link, dict) else None
            if not isinstance(href, str) or link.get("rel") == "self":
                continue  # a malformed link is stac-schema's business
            target, kind = _href_target(path.parent, href)
            if target is None:
                continue
            if kind != "relative" or not _inside(root, target):
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


def _record_of(entry: LoadedItem, by_folder: dict[Path, tuple[Provenance | None, bool]]
               ) -> tuple[Provenance | None, bool] | None:
    """The provenance record of the shelf-year whose products an item's assets point at, so
    an item under another id (a copy pointing at demo products) is still checked."""
    for asset in entry.item.assets.values():
        path, _ = _href_target(entry.path.parent, asset.href)
        if path is not None and path.parent.resolve() in by_folder:
            return by_folder[path.parent.resolve()]
    return None


@dataclass
class CatalogConsistencyRules:
    """Products ⇔ items, files ⇔ asset and item fields, statistics, unknowns, demo flag, dates,
    item index."""

    name: str = "catalog-consistency"
    check_stats: bool = True

    def check(self, release_dir: Path) -> Iterator[Problem]:
        """Every consistency problem between the catalog and the files of the release."""
        root = Path(release_dir).resolve()  # "a/../b" and links: one spelling of every path
        if not has_catalog(root):
            return
        loaded, unreadable = read_items(root)
        yield from unreadable
        by_id = {entry.item.id: entry for entry in loaded
                 if _hashable(entry.item.id)}  # a malformed id is stac-schema's finding
        found = scan_release(root)
        yield from self._products_have_items(root, found, by_id)
        records: dict[str, tuple[Provenance | None, bool]] = {}
        by_folder: dict[Path, tuple[Provenance | None, bool]] = {}
        for files in found:
            prov, error = files.provenance_or_error()
            if error is not None:
                yield Problem(_rel(root, files.auxiliary["provenance"]),
                              "catalog-file-unreadable", error[:200],
                              "a provenance record (JSON) as the producer writes it")
            by_folder.setdefault(files.folder.resolve(), (prov, error is None))
            try:
                records.setdefault(item_id(files.name), (prov, error is None))
            except SpecError:
                continue  # an unregistered shelf: product-without-item says so
        for entry in loaded:
            record = _record_of(entry, by_folder) or records.get(str(entry.item.id))
            yield from _guarded(_rel(root, entry.path),
                                self._item_problems(root, entry, record))
        yield from _guarded(ITEMS_PARQUET, _index_problems(root, loaded))
        yield from broken_links(root)

    def _products_have_items(self, release_dir: Path, found: list[ShelfYearFiles],
                             by_id: dict[str, LoadedItem]) -> Iterator[Problem]:
        for files in found:
            product = files.damage_map or files.damage
            try:
                identifier = item_id(files.name)
            except SpecError as error:  # an unregistered shelf has no item id
                yield Problem(_rel(release_dir, product), "product-without-item",
                              f"no STAC item: {error}"[:200],
                              "a product of a registered shelf, with its item in the catalog")
                continue
            entry = by_id.get(identifier)
            if entry is None:
                yield Problem(_rel(release_dir, product), "product-without-item",
                              "no STAC item", f"item {identifier!r} in the catalog")
                continue
            for key, path in ((TYPE1.key, files.damage_map), (TYPE2.key, files.damage)):
                if path is not None and not _same_file(entry.asset_path(key), path):
                    yield Problem(_rel(release_dir, path), "product-without-item",
                                  f"item {entry.item.id} asset {key} -> {entry.asset_path(key)}",
                                  f"asset {key} pointing at this file")

    def _item_problems(self, root: Path, entry: LoadedItem,
                       record: tuple[Provenance | None, bool] | None) -> Iterator[Problem]:
        """Problems of one item; ``record`` is its shelf-year's provenance as the release scan
        found it, and whether it read (None when the release holds no product of the item)."""
        rel = _rel(root, entry.path)
        item = entry.item
        facts_of: dict[str, RasterFacts] = {}
        unreadable: set[str] = set()
        for key, asset in item.assets.items():
            path, kind = _href_target(entry.path.parent, asset.href)
            inside = path is not None and _inside(root, path)
            if kind != "relative" or not inside:
                yield Problem(rel, "asset-href", f"assets.{key}.href = {asset.href} ({kind}"
                              f"{'' if inside or path is None else ', outside the release'})",
                              "a path relative to the item file, inside the release")
            if path is None:
                continue
            if not path.exists():
                yield Problem(rel, "asset-missing", f"assets.{key} -> {asset.href}",
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
                    yield Problem(_rel(root, path), "catalog-file-unreadable",
                                  f"does not open: {_message(error)}"[:200],
                                  f"a readable raster (assets.{key} of {item.id} not checked)")
                    continue
                yield from _grid_problems(rel, f"assets.{key}", asset.extra_fields,
                                          facts_of[key])
        yield from _footprint_problems(rel, item, facts_of)
        yield from _unknown_problems(rel, item)
        yield from _datetime_problems(rel, entry.data)
        if record is not None:
            yield from _demo_problems(rel, item, *record)
        if self.check_stats and TYPE1.key not in unreadable:
            yield from _stats_problems(root, rel, entry)


def _file_problems(root: Path, rel: str, key: str, asset: pystac.Asset,
                   path: Path) -> Iterator[Problem]:
    """An asset's recorded size and checksum against its file."""
    size, checksum = asset.extra_fields.get("file:size"), asset.extra_fields.get("file:checksum")
    if size != path.stat().st_size:
        yield Problem(rel, "asset-size", f"assets.{key} file:size = {size}",
                      f"{path.stat().st_size} ({_rel(root, path)})")
    actual = file_checksum(path)
    if checksum != actual:
        yield Problem(rel, "asset-checksum", f"assets.{key} file:checksum = {checksum}",
                      f"{actual} ({_rel(root, path)})")


def _footprint_problems(rel: str, item: pystac.Item,
                        facts_of: dict[str, RasterFacts]) -> Iterator[Problem]:
    """The item's own grid fields, geometry and bbox are those of its footprint product.

    As the catalog builds them: the type-2 file (full ROI) when the item has one, else the
    type-1 file; its grid rectangle in EPSG:3031, reprojected (``catalog.geometry``).
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
                      f"{[round(v, 6) for v in bbox]} ({source})")
    try:
        found_shape = shape(item.geometry) if item.geometry else None
    except Exception:  # noqa: BLE001 - not a GeoJSON geometry: stac-schema says why
        found_shape = None
    want = shape(geometry)
    if found_shape is None or found_shape.is_empty or \
            shapely.hausdorff_distance(found_shape, want) > GEOMETRY_TOLERANCE_DEG:
        found = (f"geometry with bounds {tuple(round(v, 4) for v in found_shape.bounds)}"
                 if found_shape is not None and not found_shape.is_empty else
                 f"geometry = {item.geometry}"[:200])
        yield Problem(rel, "item-geometry-mismatch", found,
                      f"bounds {tuple(round(v, 4) for v in want.bounds)} ({source})")


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
    items = {entry.item.id: entry for entry in loaded if _hashable(entry.item.id)}
    try:
        schema = pq.read_schema(parquet)
        columns = [c for c in ("id", *INDEX_COLUMNS) if c in schema.names]
        rows = pq.read_table(parquet, columns=columns).to_pylist()
    except Exception as error:  # noqa: BLE001 - arrow/OS errors all mean unreadable
        yield Problem(ITEMS_PARQUET, "index-unreadable", _message(error),
                      "a stac-geoparquet file")
        return
    ids = [row.get("id") for row in rows]
    if set(ids) != set(items):
        yield Problem(ITEMS_PARQUET, "index-stale",
                      f"extra {sorted(set(ids) - set(items), key=str)}, "
                      f"missing {sorted(set(items) - set(ids))}",
                      "exactly the catalog's items")
    absent = [c for c in INDEX_COLUMNS if c not in columns]
    if absent:
        yield Problem(ITEMS_PARQUET, "index-stale", f"no column(s) {absent}",
                      "the columns search filters on")
    for row in rows:
        entry = items.get(row.get("id"))
        if entry is None:
            continue
        for column in columns[1:]:
            found = _index_value_problem(column, row[column], entry.data)
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
    raw = path.read_bytes()
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
                          f"the item as saved ({_rel(root, entry.path)})")


def _unknown_problems(rel: str, item: pystac.Item) -> Iterator[Problem]:
    """Null product fields must be listed in icedamage:unknown, and listed fields must be null."""
    props = item.properties
    unknown = props.get(f"{P}unknown", [])
    listed = {k for k in unknown if isinstance(k, str)} if isinstance(unknown, list) else set()
    exempt = not_applicable_fields(props)
    all_nulls = {k for k, v in props.items() if k.startswith(P) and v is None}
    nulls = all_nulls - exempt
    if nulls - listed:
        yield Problem(rel, "unknown-not-listed", f"null {sorted(nulls - listed)}",
                      f"listed in {P}unknown")
    # a not-applicable null listed as unknown (catalogs built before the rule) is harmless
    if listed - all_nulls:
        yield Problem(rel, "unknown-not-null", f"listed {sorted(listed - all_nulls)} have values",
                      f"only null fields in {P}unknown")


def _demo_problems(rel: str, item: pystac.Item, prov: Provenance | None,
                   read: bool) -> Iterator[Problem]:
    """Products made from the demo source must say so (they must never pass for real data).

    The provenance record is the one the release holds for the item's shelf-year (found by the
    release scan), not whatever the item's provenance asset points at: an item that drops that
    asset must not hide a demo record. Without a record, demo is unknown (null). ``read`` is
    False when the record exists but does not read (reported on its own).
    """
    if not read:
        return
    flag = item.properties.get(f"{P}demo")
    if prov is None:
        if flag is not None:
            yield Problem(rel, "demo-flag", f"{P}demo = {flag} but the release holds no "
                          "provenance record of this shelf-year",
                          f"{P}demo = null, listed in {P}unknown")
        return
    if prov.source == "demo" and flag is not True:
        yield Problem(rel, "demo-flag", f"{P}demo = {flag} but provenance source is demo",
                      f"{P}demo = true")
    if prov.source != "demo" and flag is True:
        yield Problem(rel, "demo-flag", f"{P}demo = true but provenance source is {prov.source}",
                      f"{P}demo = false")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _stats_problems(root: Path, rel: str, entry: LoadedItem) -> Iterator[Problem]:
    """The item's area / fraction numbers equal a fresh computation on its type-1 file.

    Without usable uncertainty factors in the item (stac-schema reports them missing), the
    numbers that do not depend on them (area, valid area, fraction) are still checked.
    """
    path = entry.asset_path(TYPE1.key)
    props = entry.item.properties
    if path is None or not path.exists() or not _inside(root, path):
        return
    try:
        counts = count_pixels(path)
    except Exception as error:  # noqa: BLE001 - any GDAL failure means unreadable
        yield Problem(_rel(root, path), "catalog-file-unreadable",
                      f"pixels do not read: {_message(error)}"[:200],
                      f"a readable raster (statistics of {entry.item.id} not checked)")
        return
    restored = is_diffgf_derived(path)
    lower, upper = props.get(f"{P}lambda_lower"), props.get(f"{P}lambda_upper")
    if _number(lower) and _number(upper) and upper:
        upper_restored = props.get(f"{P}lambda_upper_restored")
        factors = UncertaintyFactors(
            lower, upper, (upper_restored / upper) if restored and _number(upper_restored)
            and upper_restored else 1.0)
        fields = _STATS_FIELDS
    else:
        factors, fields = PAPER_FACTORS, _FACTOR_FREE_STATS
    fresh = damage_stats(props.get(f"{P}shelf"), props.get(f"{P}year"), counts, restored,
                         factors)
    for field in fields:
        want, found = getattr(fresh, field), props.get(f"{P}{field}")
        if not (found is None or _number(found)) or not stats_close(found, want, rel=1e-6):
            yield Problem(rel, "item-stats-mismatch", f"{P}{field} = {found}",
                          f"{want} (computed from {path.name})")


# ---------------------------------------------------------------------------------------------
# metadata.ods and ROI GeoPackages
# ---------------------------------------------------------------------------------------------


def _hashable(value: Any) -> bool:
    """Whether a value can key a dict (a list or dict in an item's field cannot: the schema
    rule set reports such an item)."""
    try:
        hash(value)
    except TypeError:
        return False
    return True


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
                 if _hashable(key := (e.item.properties.get(f"{P}shelf"),
                                      e.item.properties.get(f"{P}year")))}
        yield from _guarded(METADATA_ODS, self._ods_problems(root, found, items))
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
            yield from _guarded(name, _shelf_roi_problems(release_dir, name, group))


def _dates_of(prov: Provenance) -> list[str]:
    """The acquisition dates of a provenance record's scenes, sorted, as ISO text."""
    return sorted(s.acquired.isoformat() for s in prov.scenes)


def _item_dates_problems(release_dir: Path, entry: LoadedItem, prov: Provenance | None,
                         rows: list[OdsRow]) -> Iterator[Problem]:
    """The item's acquisition dates come from the provenance record, else from metadata.ods:
    dates that neither gives are invented."""
    dates_stac = entry.item.properties.get(f"{P}acquisition_dates") or []
    rel = _rel(release_dir, entry.path)
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
                yield Problem(_rel(release_dir, path), "catalog-file-unreadable",
                              f"does not open: {_message(error)}"[:200],
                              f"a readable raster (not checked against {name})")
                continue
            if not allowed.contains(footprint) or not footprint.intersects(roi):
                yield Problem(_rel(release_dir, path), "product-outside-roi",
                              f"bounds {tuple(round(v) for v in footprint.bounds)}",
                              f"within the ROI of {name} {tuple(round(v) for v in roi.bounds)}")


def catalog_rule_sets(schemas_folder: Path | None = None) -> list[Any]:
    """The catalog's rule sets, for the validator's registry."""
    return [StacSchemaRules(schemas_folder), CatalogConsistencyRules(), ReleaseMetadataRules()]


# Factories for the validator's registry (``validation.engine.register_rule_set`` and the
# ``icedamage.rule_sets`` entry points): each takes the run's options, which the catalog rules do
# not need; the schema folder comes from ICEDAMAGE_STAC_SCHEMAS (``validate --schemas`` sets it).


def stac_schema_rule_set(options: object = None) -> StacSchemaRules:
    """Factory of the ``stac-schema`` rule set."""
    return StacSchemaRules()


def catalog_consistency_rule_set(options: object = None) -> CatalogConsistencyRules:
    """Factory of the ``catalog-consistency`` rule set."""
    return CatalogConsistencyRules()


def release_metadata_rule_set(options: object = None) -> ReleaseMetadataRules:
    """Factory of the ``release-metadata`` rule set."""
    return ReleaseMetadataRules()


RULE_SET_FACTORIES = (stac_schema_rule_set, catalog_consistency_rule_set,
                      release_metadata_rule_set)


def register_catalog_rule_sets() -> None:
    """Add the catalog's rule sets to every default validation run."""
    from validation.engine import register_rule_set

    for factory in RULE_SET_FACTORIES:
        register_rule_set(factory)
