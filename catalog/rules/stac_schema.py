"""The ``stac-schema`` rule set: every STAC object of a release validates against its schemas
(offline where a schema folder is given)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema.exceptions import ValidationError, best_match
from jsonschema.validators import validator_for
from pystac.validation import JsonSchemaSTACValidator
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource, Unresolvable
from referencing.jsonschema import DRAFT7

import schemas
from catalog.rules.common import (
    SCHEMA_MAP,
    SCHEMAS_ENV,
    STAC_KINDS,
    STAC_VERSION,
    checks_catalog,
    looks_like_item,
    read_json,
    rel_path,
    short_message,
    stac_files,
)
from catalog.schema_fetch import SchemaFetcher
from validation.report import Problem

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
        kind = STAC_KINDS.get(data.get("type"))  # type: ignore[arg-type]
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
        files = stac_files(release_dir) if checks_catalog(release_dir) else []
        if not files:
            return
        checker = OfflineSchemas(self.schemas_folder,
                                 SchemaFetcher() if self.fetch else None)
        unavailable: dict[str, str] = {}
        for path in files:
            rel = rel_path(release_dir, path)
            data, why = read_json(path)
            if data is None:
                yield Problem(rel, "stac-json-invalid", str(why), "a STAC JSON object")
                continue
            try:
                yield from self._file_problems(checker, data, rel, unavailable)
            except Exception as error:  # noqa: BLE001 - one odd file must not stop the others
                yield Problem(rel, "stac-schema", f"not validated: {short_message(error)}",
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
        if data.get("type") not in STAC_KINDS:
            yield Problem(rel, "stac-schema",
                          "type missing" if "type" not in data else f"type = {data['type']!r}",
                          f"type {' | '.join(repr(k) for k in STAC_KINDS)}")
            if not looks_like_item(data):
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
