"""What the catalog rule sets share: constants, reading JSON, paths and hrefs inside a release,
and a guard that turns one bad file into a problem instead of an aborted rule set."""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pystac

import schemas
from producer.spec import (
    ITEMS_NDJSON,
    ITEMS_PARQUET,
    METADATA_ODS,
    ROI_GEOPACKAGE_SUFFIX,
    STAC_CATALOG_DIR,
)
from validation.report import Problem

SCHEMAS_ENV = "ICEDAMAGE_STAC_SCHEMAS"
SCHEMA_MAP = "schema-map.json"
P = schemas.PREFIX
#: The STAC version of a release's catalog (pystac's bundled core schemas of it are used).
STAC_VERSION = "1.1.0"
STATS_FIELDS = ("damage_area_km2", "valid_area_km2", "damage_fraction", "damage_area_km2_low",
                "damage_area_km2_high", "damage_fraction_low", "damage_fraction_high")
#: The statistics that do not depend on the uncertainty factors.
FACTOR_FREE_STATS = ("damage_area_km2", "valid_area_km2", "damage_fraction")
#: Item geometry and bbox are rounded to 1e-7 degrees by the builder; this leaves room for it.
GEOMETRY_TOLERANCE_DEG = 1e-6
STAC_KINDS = {"Feature": pystac.STACObjectType.ITEM,
              "Collection": pystac.STACObjectType.COLLECTION,
              "Catalog": pystac.STACObjectType.CATALOG}


def read_json(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A JSON object file's content, or None and why it is none: the file does not read (a
    link loop, no permission), is not JSON, or holds something else than an object."""
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        return None, f"does not read: {short_message(error)}"
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, "not JSON"
    return (data, None) if isinstance(data, dict) else (None, "not a JSON object")


def read_json_or_none(path: Path) -> dict[str, Any] | None:
    """A JSON object file's content, or None when it is not a JSON object."""
    return read_json(path)[0]


def short_message(error: BaseException, limit: int = 200) -> str:
    """``Type: message`` of an exception, first line only, shortened for the report."""
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}"[:limit]


def has_catalog(release_dir: Path) -> bool:
    """Whether the release has been cataloged (its root catalog exists)."""
    return (Path(release_dir) / STAC_CATALOG_DIR / "catalog.json").exists()


def catalog_outputs(release_dir: Path) -> list[str]:
    """The files only ``icedamage catalog`` writes that the release holds (links that do not
    resolve count: a file was meant to be there): any file under ``stac/``, the item index.

    Without ``stac/catalog.json`` beside them, the catalog is broken (deleted, half copied),
    not missing: its rule sets must still run.
    """
    root = Path(release_dir)
    found = [f"{STAC_CATALOG_DIR}/"] if _holds_a_file(root / STAC_CATALOG_DIR) else []
    return found + [name for name in (ITEMS_PARQUET, ITEMS_NDJSON)
                    if os.path.lexists(root / name)]


def catalog_inputs(release_dir: Path) -> list[str]:
    """The catalog files a user may place before cataloging, which ``icedamage catalog`` reads
    and keeps: metadata.ods (scene facts without provenance) and ROI GeoPackages (official
    outlines)."""
    root = Path(release_dir)
    rois = sorted(p.name for p in root.glob(f"*{ROI_GEOPACKAGE_SUFFIX}"))
    return ([METADATA_ODS] if os.path.lexists(root / METADATA_ODS) else []) + rois


def _holds_a_file(folder: Path) -> bool:
    """Whether a folder holds anything but folders, however deep (a link counts as a file)."""
    return any(names for _, _, names in os.walk(folder))


def checks_catalog(release_dir: Path) -> bool:
    """Whether the catalog rule sets look into a release: it has its root catalog, or files
    only a catalog run writes (then the catalog is broken, and its remains are checked)."""
    return has_catalog(release_dir) or bool(catalog_outputs(release_dir))


def resolved(path: Path) -> Path:
    """``path`` with ``..`` and links resolved; a link that does not resolve (a loop, which
    ``Path.resolve`` raises RuntimeError on in Python 3.11) or a path that cannot be looked at
    stays as it is, made absolute and normalised, so that comparing paths never raises."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError):
        return Path(os.path.abspath(path))


def stac_files(release_dir: Path) -> list[Path]:
    """Every STAC JSON file of the release's catalog folder.

    Dot-files and dot-folders (the catalog's own ``.build.json`` state) are not STAC objects
    and are left out.
    """
    folder = Path(release_dir) / STAC_CATALOG_DIR
    return sorted(p for p in folder.rglob("*.json")
                  if not any(part.startswith(".") for part in p.relative_to(folder).parts))


def rel_path(release_dir: Path, path: Path) -> str:
    """``path`` relative to the release root, POSIX style (lexically first, so a file reached
    through a linked folder keeps its place in the release; then with links resolved)."""
    root, target = Path(os.path.abspath(release_dir)), Path(os.path.abspath(path))
    for base, where in ((root, target), (resolved(root), resolved(Path(path)))):
        try:
            return where.relative_to(base).as_posix()
        except ValueError:
            continue
    return str(path)


def href_target(base: Path, href: str) -> tuple[Path | None, str]:
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


def is_inside(root: Path, path: Path) -> bool:
    """Whether a (normalised, absolute) path lies inside the release root."""
    return path == root or root in path.parents


def same_file(a: Path | None, b: Path) -> bool:
    """Whether two paths name the same file, with ``..`` and links resolved on both sides (a
    link that does not resolve is compared as written)."""
    return a is not None and resolved(a) == resolved(b)


def guarded(where: str, problems: Iterator[Problem]) -> Iterator[Problem]:
    """The problems of one check, and one ``catalog-check-failed`` problem naming ``where``
    if the check raises: an unexpected error in one file must not abort the rule set."""
    try:
        yield from problems
    except Exception as error:  # noqa: BLE001 - reported as a problem of that file
        yield Problem(where, "catalog-check-failed", short_message(error),
                      "checks that run to the end (the other files were still checked)")


def looks_like_item(data: dict[str, Any]) -> bool:
    """A STAC item, or a file that is one but lost its ``type`` (stac-schema reports that)."""
    if data.get("type") == "Feature":
        return True
    return "type" not in data and isinstance(data.get("properties"), dict) and "assets" in data


def is_hashable(value: Any) -> bool:
    """Whether a value can key a dict (a list or dict in an item's field cannot: the schema
    rule set reports such an item)."""
    try:
        hash(value)
    except TypeError:
        return False
    return True
