"""Validation rule sets for the catalog side of a release (plug into ``icedamage validate``).

Three rule sets, each reporting every problem it finds as ``validation.report.Problem``:

``stac-schema``
    Every STAC object under ``stac/`` validates: core 1.1.0 from pystac's bundled schemas,
    official extensions from a local schema folder (``--schemas DIR`` or the environment variable
    ``ICEDAMAGE_STAC_SCHEMAS``; the folder holds ``schema-map.json`` mapping URLs to files), else
    fetched once and cached (``catalog.schema_fetch``), our product extension from the
    ``schemas`` package.
``catalog-consistency``
    Products ⇔ items, assets exist with the recorded size and checksum, grid / nodata / data type
    fields agree with the files, statistics agree with the type-1 raster, null facts are listed as
    unknown, the demo flag is set wherever the provenance says the source was demo, the item index
    holds exactly the catalog's items.
``release-metadata``
    metadata.ods rows ⇔ items, acquisition dates agree between metadata.ods, provenance and STAC,
    each shelf has its ROI GeoPackage (valid polygon, EPSG:3031) and its products lie in the ROI.

A release without a ``stac/`` folder has no catalog yet: the rule sets then report nothing (the
product rules of the validator still apply).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pystac
from jsonschema.exceptions import ValidationError, best_match
from jsonschema.validators import validator_for
from pystac.serialization import identify_stac_object_type
from pystac.validation import JsonSchemaSTACValidator
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource, Unresolvable
from referencing.jsonschema import DRAFT7
from shapely.geometry import box

import schemas
from catalog.gpkg import read_roi
from catalog.ods import read_metadata_ods, rows_by_key
from catalog.release import RasterFacts, ShelfYearFiles, file_checksum, raster_facts, scan_release
from catalog.schema_fetch import SchemaFetcher
from catalog.stac import item_id
from catalog.stats import count_pixels, damage_stats, is_diffgf_derived, stats_close
from catalog.uncertainty import UncertaintyFactors
from producer.spec import (
    ENCODING,
    ITEMS_PARQUET,
    METADATA_ODS,
    STAC_CATALOG_DIR,
    TYPE1,
    TYPE2,
    roi_geopackage_name,
)
from validation.report import Problem

SCHEMAS_ENV = "ICEDAMAGE_STAC_SCHEMAS"
SCHEMA_MAP = "schema-map.json"
P = schemas.PREFIX
_STATS_FIELDS = ("damage_area_km2", "valid_area_km2", "damage_fraction", "damage_area_km2_low",
                 "damage_area_km2_high", "damage_fraction_low", "damage_fraction_high")


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
        """The core schema URL of a STAC dict."""
        kind = identify_stac_object_type(data)
        return self.pystac.schema_uri_map.get_object_schema_uri(kind, data["stac_version"])

    def error(self, data: dict[str, Any], uri: str) -> ValidationError | None:
        """The most specific error of ``data`` against schema ``uri``, or None when valid."""
        if uri not in self._compiled:
            schema = self.cache[uri]
            self._compiled[uri] = validator_for(schema)(schema, registry=self.registry)
        errors = list(self._compiled[uri].iter_errors(data))
        return _deepest(best_match(errors)) if errors else None


def _deepest(error: ValidationError) -> ValidationError:
    """The leaf error with the longest path (an anyOf over Item/Collection hides the cause)."""
    leaves, stack = [], [error]
    while stack:
        current = stack.pop()
        if current.context:
            stack.extend(current.context)
        else:
            leaves.append(current)
    return max(leaves, key=lambda e: len(e.absolute_path)) if leaves else error


def _json_or_none(path: Path) -> dict[str, Any] | None:
    """A JSON object file's content, or None when it is not a JSON object."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def has_catalog(release_dir: Path) -> bool:
    """Whether the release has been cataloged (its root catalog exists)."""
    return (Path(release_dir) / STAC_CATALOG_DIR / "catalog.json").exists()


def stac_files(release_dir: Path) -> list[Path]:
    """Every STAC JSON file of the release's catalog folder."""
    return sorted((Path(release_dir) / STAC_CATALOG_DIR).rglob("*.json"))


def _rel(release_dir: Path, path: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(release_dir).resolve()).as_posix()
    except ValueError:
        return str(path)


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
        """Validate each catalog, collection and item file."""
        files = stac_files(release_dir) if has_catalog(release_dir) else []
        if not files:
            return
        checker = OfflineSchemas(self.schemas_folder,
                                 SchemaFetcher() if self.fetch else None)
        unavailable: dict[str, str] = {}
        for path in files:
            data = _json_or_none(path)
            if data is None:
                yield Problem(_rel(release_dir, path), "stac-json-invalid", "not JSON",
                              "a STAC JSON object")
                continue
            if "stac_version" not in data:
                continue
            missing = [u for u in data.get("stac_extensions", [])
                       if not checker.available(u)]
            for url in missing:
                unavailable.setdefault(url, _rel(release_dir, path))
            extensions = [u for u in data.get("stac_extensions", []) if u not in missing]
            for uri in (checker.core_uri(data), *extensions):
                if uri is None or uri in checker.unresolvable:
                    continue
                try:
                    error = checker.error(data, uri)
                except Unresolvable as err:  # a schema it refers to could not be had
                    checker.unresolvable[uri] = f"its reference {err.ref} could not be had"
                    unavailable.setdefault(uri, _rel(release_dir, path))
                    continue
                if error is not None:
                    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
                    yield Problem(_rel(release_dir, path), "stac-schema",
                                  f"{where}: {error.message[:200]}", f"valid against {uri}")
        for url, first in sorted(unavailable.items()):
            yield Problem(first, "stac-schema-unavailable",
                          f"{url} not validated: {checker.unavailable_reason(url)}",
                          f"the schema at hand: online, in the user cache, or in a local "
                          f"folder (--schemas DIR or {SCHEMAS_ENV})", "warning")


# ---------------------------------------------------------------------------------------------
# Catalog consistency
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedItem:
    """An item read from the catalog, with its file."""

    item: pystac.Item
    path: Path

    def asset_path(self, key: str) -> Path | None:
        """Absolute path of a local asset (None for a missing key or a remote href)."""
        asset = self.item.assets.get(key)
        if asset is None or "://" in asset.href:
            return None
        return Path(os.path.normpath(self.path.parent / asset.href))


def load_items(release_dir: Path) -> list[LoadedItem]:
    """Items of the release's catalog folder, read file by file so a broken link hides none."""
    items = []
    for path in stac_files(release_dir):
        data = _json_or_none(path)
        if data is not None and data.get("type") == "Feature":
            items.append(LoadedItem(pystac.Item.from_dict(data, href=str(path),
                                                          preserve_dict=False), path))
    return items


def broken_links(release_dir: Path) -> Iterator[Problem]:
    """Relative links of catalog objects whose target file does not exist."""
    for path in stac_files(release_dir):
        for link in (_json_or_none(path) or {}).get("links", []):
            href = link.get("href", "")
            if "://" in href or link.get("rel") == "self":
                continue
            target = Path(os.path.normpath(path.parent / href))
            if not target.exists():
                yield Problem(_rel(release_dir, path), "catalog-link-broken",
                              f"{link.get('rel')} -> {href}", "an existing file")


def _grid_problems(rel: str, key: str, asset: pystac.Asset, facts: RasterFacts) -> list[Problem]:
    fields = asset.extra_fields
    problems = []
    expected = {
        "proj:shape": [facts.grid.height, facts.grid.width],
        "proj:transform": list(facts.grid.transform)[:6],
        "proj:code": f"EPSG:{facts.epsg}" if facts.epsg else None,
        "data_type": facts.data_type,
        "nodata": facts.nodata,
    }
    for field, want in expected.items():
        found = fields.get(field)
        if field == "proj:transform" and found is not None and len(found) >= 6:
            same = all(abs(a - b) < 1e-6 for a, b in zip(found[:6], want, strict=True))
        elif field == "nodata":
            same = (found is None and want is None) or (
                found is not None and want is not None and float(found) == float(want))
        else:
            same = found == want
        if not same:
            problems.append(Problem(rel, "item-grid-mismatch", f"assets.{key}.{field} = {found}",
                                    f"{want} (from the file)"))
    return problems


@dataclass
class CatalogConsistencyRules:
    """Products ⇔ items, files ⇔ asset fields, statistics, unknowns, demo flag, item index."""

    name: str = "catalog-consistency"
    check_stats: bool = True

    def check(self, release_dir: Path) -> Iterator[Problem]:
        """Every consistency problem between the catalog and the files of the release."""
        release_dir = Path(release_dir)
        if not has_catalog(release_dir):
            return
        loaded = load_items(release_dir)
        by_id = {entry.item.id: entry for entry in loaded}
        found = scan_release(release_dir)
        yield from self._products_have_items(release_dir, found, by_id)
        for entry in loaded:
            yield from self._item_problems(release_dir, entry, found)
        yield from self._index_problems(release_dir, set(by_id))
        yield from broken_links(release_dir)

    def _products_have_items(self, release_dir: Path, found: list[ShelfYearFiles],
                             by_id: dict[str, LoadedItem]) -> Iterator[Problem]:
        for files in found:
            product = files.damage_map or files.damage
            entry = by_id.get(item_id(files.name))
            if entry is None:
                yield Problem(_rel(release_dir, product), "product-without-item",
                              "no STAC item", f"item {item_id(files.name)!r} in the catalog")
                continue
            for key, path in ((TYPE1.key, files.damage_map), (TYPE2.key, files.damage)):
                if path is not None and entry.asset_path(key) != path:
                    yield Problem(_rel(release_dir, path), "product-without-item",
                                  f"item {entry.item.id} asset {key} -> {entry.asset_path(key)}",
                                  f"asset {key} pointing at this file")

    def _item_problems(self, release_dir: Path, entry: LoadedItem,
                       found: list[ShelfYearFiles]) -> Iterator[Problem]:
        rel = _rel(release_dir, entry.path)
        item = entry.item
        for key, asset in item.assets.items():
            path = entry.asset_path(key)
            if path is None:
                continue
            if not path.exists():
                yield Problem(rel, "asset-missing", f"assets.{key} -> {asset.href}",
                              "an existing file")
                continue
            size, checksum = asset.extra_fields.get("file:size"), \
                asset.extra_fields.get("file:checksum")
            if size != path.stat().st_size:
                yield Problem(rel, "asset-size", f"assets.{key} file:size = {size}",
                              f"{path.stat().st_size} ({_rel(release_dir, path)})")
            actual = file_checksum(path)
            if checksum != actual:
                yield Problem(rel, "asset-checksum", f"assets.{key} file:checksum = {checksum}",
                              f"{actual} ({_rel(release_dir, path)})")
            if path.suffix == ".tif":
                yield from _grid_problems(rel, key, asset, raster_facts(path, checksum=False))
        yield from _unknown_problems(rel, item)
        yield from _demo_problems(rel, entry)
        if self.check_stats:
            yield from _stats_problems(rel, entry)

    def _index_problems(self, release_dir: Path, ids: set[str]) -> Iterator[Problem]:
        parquet = release_dir / ITEMS_PARQUET
        if not parquet.exists():
            yield Problem(ITEMS_PARQUET, "index-missing", "no file",
                          "the stac-geoparquet item index written by `icedamage catalog`")
            return
        try:
            with duckdb.connect() as con:
                indexed = {r[0] for r in con.execute("SELECT id FROM read_parquet(?)",
                                                     [str(parquet)]).fetchall()}
        except duckdb.Error as error:
            yield Problem(ITEMS_PARQUET, "index-unreadable", str(error).splitlines()[0][:200],
                          "a stac-geoparquet file")
            return
        if indexed != ids:
            yield Problem(ITEMS_PARQUET, "index-stale",
                          f"extra {sorted(indexed - ids)}, missing {sorted(ids - indexed)}",
                          "exactly the catalog's items")


def _unknown_problems(rel: str, item: pystac.Item) -> Iterator[Problem]:
    """Null product fields must be listed in icedamage:unknown, and listed fields must be null."""
    props = item.properties
    listed = set(props.get(f"{P}unknown", []))
    exempt = {f"{P}restoration"}
    if props.get(f"{P}valid_area_km2") == 0:
        exempt |= {f"{P}damage_fraction", f"{P}damage_fraction_low", f"{P}damage_fraction_high"}
    nulls = {k for k, v in props.items() if k.startswith(P) and v is None} - exempt
    if nulls - listed:
        yield Problem(rel, "unknown-not-listed", f"null {sorted(nulls - listed)}",
                      f"listed in {P}unknown")
    if listed - nulls:
        yield Problem(rel, "unknown-not-null", f"listed {sorted(listed - nulls)} have values",
                      f"only null fields in {P}unknown")


def _demo_problems(rel: str, entry: LoadedItem) -> Iterator[Problem]:
    """Products made from the demo source must say so (they must never pass for real data)."""
    path = entry.asset_path("provenance")
    if path is None or not path.exists():
        return
    try:
        source = json.loads(path.read_text()).get("source")
    except json.JSONDecodeError:
        return
    flag = entry.item.properties.get(f"{P}demo")
    if source == "demo" and flag is not True:
        yield Problem(rel, "demo-flag", f"{P}demo = {flag} but provenance source is demo",
                      f"{P}demo = true")
    if source != "demo" and flag is True:
        yield Problem(rel, "demo-flag", f"{P}demo = true but provenance source is {source}",
                      f"{P}demo = false")


def _stats_problems(rel: str, entry: LoadedItem) -> Iterator[Problem]:
    """The item's area / fraction numbers equal a fresh computation on its type-1 file."""
    path = entry.asset_path(TYPE1.key)
    props = entry.item.properties
    if path is None or not path.exists() or f"{P}lambda_lower" not in props:
        return
    restored = is_diffgf_derived(path)
    upper_restored = props.get(f"{P}lambda_upper_restored")
    factors = UncertaintyFactors(
        props[f"{P}lambda_lower"], props[f"{P}lambda_upper"],
        (upper_restored / props[f"{P}lambda_upper"]) if restored and upper_restored else 1.0)
    fresh = damage_stats(props[f"{P}shelf"], props[f"{P}year"], count_pixels(path), restored,
                         factors)
    for field in _STATS_FIELDS:
        want = getattr(fresh, field)
        if not stats_close(props.get(f"{P}{field}"), want, rel=1e-6):
            yield Problem(rel, "item-stats-mismatch", f"{P}{field} = {props.get(P + field)}",
                          f"{want} (computed from {path.name})")


# ---------------------------------------------------------------------------------------------
# metadata.ods and ROI GeoPackages
# ---------------------------------------------------------------------------------------------


@dataclass
class ReleaseMetadataRules:
    """metadata.ods ⇔ items and provenance; one valid EPSG:3031 GeoPackage per shelf."""

    name: str = "release-metadata"

    def check(self, release_dir: Path) -> Iterator[Problem]:
        """Every problem of metadata.ods and the ROI GeoPackages."""
        release_dir = Path(release_dir)
        if not has_catalog(release_dir):
            return
        found = scan_release(release_dir)
        items = {(e.item.properties.get(f"{P}shelf"), e.item.properties.get(f"{P}year")): e
                 for e in load_items(release_dir)}
        yield from self._ods_problems(release_dir, found, items)
        yield from self._gpkg_problems(release_dir, found)

    def _ods_problems(self, release_dir: Path, found: list[ShelfYearFiles],
                      items: dict[tuple[Any, Any], LoadedItem]) -> Iterator[Problem]:
        path = release_dir / METADATA_ODS
        if not path.exists():
            yield Problem(METADATA_ODS, "ods-missing", "no file",
                          "metadata.ods with one row per shelf-year")
            return
        try:
            rows = rows_by_key(read_metadata_ods(path))
        except Exception as error:  # noqa: BLE001 - odfpy/zip/pandas errors all mean unreadable
            yield Problem(METADATA_ODS, "ods-unreadable", f"{type(error).__name__}: {error}",
                          "readable metadata.ods")
            return
        for key in sorted(set(items) - set(rows), key=str):
            yield Problem(METADATA_ODS, "ods-row-missing", f"no row for {key[0]} {key[1]}",
                          f"a row for item {items[key].item.id}")
        for key in sorted(set(rows) - set(items), key=str):
            yield Problem(METADATA_ODS, "ods-row-extra", f"row for {key[0]} {key[1]}",
                          "a catalog item for every row")
        provenance = {(f.name.shelf, f.name.year): f.provenance for f in found}
        for key in sorted(set(rows) & set(items), key=str):
            row, entry = rows[key], items[key]
            dates_ods = [d.isoformat() for d in row.acquisition_dates]
            dates_stac = entry.item.properties.get(f"{P}acquisition_dates") or []
            prov = provenance.get(key)
            where = f"{METADATA_ODS} row {key[0]} {key[1]}"
            if dates_ods and sorted(dates_ods) != sorted(dates_stac):
                yield Problem(where, "acquisition-dates", f"ods {dates_ods}",
                              f"STAC {entry.item.id} {dates_stac}")
            if prov is not None:
                dates_prov = sorted(s.acquired.isoformat() for s in prov.scenes)
                if sorted(dates_ods) != dates_prov:
                    yield Problem(where, "acquisition-dates", f"ods {dates_ods}",
                                  f"provenance {dates_prov}")
                if sorted(dates_stac) != dates_prov:
                    yield Problem(_rel(release_dir, entry.path), "acquisition-dates",
                                  f"STAC {dates_stac}", f"provenance {dates_prov}")
            damage_map = entry.asset_path(TYPE1.key)
            if damage_map is not None and row.damage_map_file and \
                    row.damage_map_file != damage_map.name:
                yield Problem(where, "ods-file-name", row.damage_map_file, damage_map.name)

    def _gpkg_problems(self, release_dir: Path,
                       found: list[ShelfYearFiles]) -> Iterator[Problem]:
        by_shelf: dict[str, list[ShelfYearFiles]] = {}
        for files in found:
            by_shelf.setdefault(files.name.shelf, []).append(files)
        for shelf, group in sorted(by_shelf.items()):
            name = roi_geopackage_name(shelf)
            path = release_dir / name
            if not path.exists():
                yield Problem(name, "roi-missing", "no file", f"ROI GeoPackage of {shelf}")
                continue
            try:
                frame = read_roi(path)
            except Exception as error:  # noqa: BLE001 - any GDAL failure means unreadable
                yield Problem(name, "roi-invalid", f"unreadable: {error}", "a GeoPackage")
                continue
            epsg = frame.crs.to_epsg() if frame.crs is not None else None
            if epsg != ENCODING.epsg:
                yield Problem(name, "roi-crs", f"EPSG:{epsg}", ENCODING.crs)
                continue
            if frame.empty or not frame.geometry.is_valid.all() or \
                    not set(frame.geometry.geom_type) <= {"Polygon", "MultiPolygon"}:
                yield Problem(name, "roi-invalid", f"{len(frame)} feature(s), types "
                              f"{sorted(set(frame.geometry.geom_type))}", "valid polygon(s)")
                continue
            roi = frame.geometry.union_all()
            yield from _outside_roi(release_dir, name, roi, group)


def _outside_roi(release_dir: Path, name: str, roi: Any,
                 group: Iterable[ShelfYearFiles]) -> Iterator[Problem]:
    """Products lie in the ROI: grid inside the ROI's bounds (one pixel of slack), overlapping."""
    minx, miny, maxx, maxy = roi.bounds
    slack = ENCODING.resolution
    allowed = box(minx - slack, miny - slack, maxx + slack, maxy + slack)
    for files in group:
        path = files.damage or files.damage_map
        footprint = box(*raster_facts(path, checksum=False).grid.bounds)
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
