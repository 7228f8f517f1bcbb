"""What a release folder holds: shelf and year folders, product files, everything else.

One walk of the folder tree, shared by the rule sets, so that each of them judges the same view
of the release. Nothing here decides what is wrong; it only sorts entries (the layout rules
report what does not fit). Paths are reported relative to the release root, POSIX style.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from producer.shelves import SHELVES
from producer.spec import (
    AUXILIARY_SUFFIXES,
    ITEMS_NDJSON,
    ITEMS_PARQUET,
    METADATA_ODS,
    PRODUCT_TYPES,
    PUBLISH_STATE_DIR,
    RECORD_MANIFEST,
    RELEASE_METADATA,
    RELEASE_NOTES,
    ROI_GEOPACKAGE_SUFFIX,
    STAC_CATALOG_DIR,
    TYPE1,
    TYPE2,
    ProductName,
    SpecError,
    check_shelf_name_safe,
    is_year_dir,
    parse_name,
)

#: Files the release root may hold beside the shelf folders (globs, relative to the root).
ROOT_FILE_GLOBS: tuple[str, ...] = (
    METADATA_ODS, f"*{ROI_GEOPACKAGE_SUFFIX}", ITEMS_PARQUET, ITEMS_NDJSON, RELEASE_NOTES,
    RELEASE_METADATA, RECORD_MANIFEST,
)
#: Folders the release root may hold whose content other tools own (catalog, publisher).
ROOT_DIRS: tuple[str, ...] = (STAC_CATALOG_DIR, PUBLISH_STATE_DIR)


@dataclass(frozen=True)
class ProductFile:
    """A file in a year folder whose name parses as a product name."""

    path: Path
    rel: str
    name: ProductName

    @property
    def folder(self) -> str:
        """The year folder holding the file, relative to the root."""
        return self.rel.rsplit("/", 1)[0]


@dataclass(frozen=True)
class Entry:
    """A file or folder of the release, relative to the root."""

    rel: str
    is_dir: bool
    broken: str | None = None
    """Why a symbolic link does not resolve (a loop, a missing target); None for the rest."""


@dataclass
class YearFolder:
    """One ``<Shelf>/<YYYY-ish>/`` folder and what it holds."""

    rel: str
    shelf: str
    year: str
    products: list[ProductFile] = field(default_factory=list)
    misnamed: list[tuple[str, str]] = field(default_factory=list)
    """(rel, why) of files with a product suffix whose name does not parse."""
    others: list[Entry] = field(default_factory=list)
    """Everything else: auxiliary files, strays, sub-folders."""


@dataclass
class Inventory:
    """The release as the rule sets see it, allowed entries already left out."""

    root: Path
    root_others: list[Entry] = field(default_factory=list)
    """Root entries that are neither allowed nor possible shelf folders."""
    shelf_dirs: list[str] = field(default_factory=list)
    """Root folders with a name that could be a shelf (registered or not)."""
    shelf_others: list[Entry] = field(default_factory=list)
    """Entries of shelf folders that are not year folders (4 digits)."""
    years: list[YearFolder] = field(default_factory=list)
    roi_files: list[str] = field(default_factory=list)
    """Root ``*_ROI.gpkg`` files (allowed by name; whose shelf they name is the layout rules'
    concern)."""

    @property
    def products(self) -> list[ProductFile]:
        """Every product file of every year folder, in path order."""
        return [p for y in self.years for p in y.products]


def matches_any(rel: str, globs: Iterable[str], is_dir: bool = False) -> bool:
    """Whether a root-relative POSIX path matches one of the globs (``*`` crosses ``/``).

    A folder also matches as ``rel/``, so ``scratch/*`` (everything inside) allows the
    ``scratch`` folder itself, not only its content.
    """
    names = (rel, f"{rel}/") if is_dir else (rel,)
    return any(fnmatch.fnmatchcase(name, g) for g in globs for name in names)


def _root_allowed(name: str, is_dir: bool) -> bool:
    """Whether the spec allows this entry at the release root (catalog and publish files)."""
    return name in ROOT_DIRS if is_dir else matches_any(name, ROOT_FILE_GLOBS)


def _entry(item: os.DirEntry[str], prefix: str) -> Entry:
    """One folder entry; symbolic links are followed, and one that does not resolve (a loop,
    a missing target) is marked broken instead of raising."""
    rel = f"{prefix}{item.name}"
    try:
        is_dir = item.is_dir()
        if item.is_symlink():
            os.stat(item.path)  # resolve it: ELOOP or ENOENT here, not in a rule set later
    except OSError as exc:
        return Entry(rel, False, broken=exc.strerror or type(exc).__name__)
    return Entry(rel, is_dir)


def _entries(folder: Path, prefix: str, allow: Sequence[str]) -> list[Entry]:
    """Sorted entries of a folder, minus those the user allowed."""
    with os.scandir(folder) as it:
        found = [_entry(e, prefix) for e in it]
    return sorted((e for e in found if not matches_any(e.rel, allow, e.is_dir)),
                  key=lambda e: e.rel)


def product_suffix(filename: str) -> bool:
    """Whether a file name ends like a product of either type."""
    return filename.endswith(tuple(t.suffix for t in PRODUCT_TYPES))


def _is_year_dir(entry: Entry) -> bool:
    return entry.is_dir and is_year_dir(entry.rel.rsplit("/", 1)[1])


def _shelf_safe(name: str) -> bool:
    try:
        check_shelf_name_safe(name)
    except SpecError:
        return False
    return True


def scan_year(root: Path, rel: str, shelf: str, year: str, allow: Sequence[str]) -> YearFolder:
    """Sort a year folder's entries into products, misnamed products and others."""
    folder = YearFolder(rel, shelf, year)
    for entry in _entries(root / rel, f"{rel}/", allow):
        filename = entry.rel.rsplit("/", 1)[1]
        if entry.is_dir or entry.broken or not product_suffix(filename):
            folder.others.append(entry)
            continue
        try:
            folder.products.append(ProductFile(root / entry.rel, entry.rel, parse_name(filename)))
        except SpecError as exc:
            folder.misnamed.append((entry.rel, str(exc)))
    return folder


def scan_release(root: Path, allow: Sequence[str] = ()) -> Inventory:
    """Walk ``root`` two levels deep (``<Shelf>/<YYYY>/``) and sort what is there.

    A root folder counts as a shelf folder when its name is registered, or when it is a safe
    name holding at least one year folder (an unregistered shelf); other root folders are
    left to the layout rules as strays, without looking inside.
    """
    inventory = Inventory(root)
    for entry in _entries(root, "", allow):
        if not entry.broken and _root_allowed(entry.rel, entry.is_dir):
            if not entry.is_dir and entry.rel.endswith(ROI_GEOPACKAGE_SUFFIX):
                inventory.roi_files.append(entry.rel)
            continue
        subs = _entries(root / entry.rel, f"{entry.rel}/", allow) \
            if entry.is_dir and _shelf_safe(entry.rel) else None
        if subs is None or not (entry.rel in SHELVES or any(_is_year_dir(s) for s in subs)):
            inventory.root_others.append(entry)
            continue
        inventory.shelf_dirs.append(entry.rel)
        for sub in subs:
            year = sub.rel.rsplit("/", 1)[1]
            if sub.is_dir and is_year_dir(year):
                inventory.years.append(scan_year(root, sub.rel, entry.rel, year, allow))
            else:
                inventory.shelf_others.append(sub)
    return inventory


def auxiliary_stem(filename: str) -> str | None:
    """The product stem an auxiliary file name claims, or None if it is not auxiliary-shaped."""
    for suffix in AUXILIARY_SUFFIXES.values():
        if filename.endswith(suffix) and len(filename) > len(suffix):
            return filename[: -len(suffix)]
    return None


@dataclass(frozen=True)
class Pair:
    """The two files of one product stem in one folder (either may be missing)."""

    damage_map: ProductFile | None
    damage: ProductFile | None

    def files(self) -> list[ProductFile]:
        """The files present, type 1 first."""
        return [f for f in (self.damage_map, self.damage) if f is not None]


def pairs_of(folder: YearFolder) -> list[Pair]:
    """The folder's products grouped by stem: a pair where both types share it."""
    by_stem: dict[str, dict[str, ProductFile]] = {}
    for product in folder.products:
        by_stem.setdefault(product.name.stem, {})[product.name.product_type.key] = product
    return [Pair(files.get(TYPE1.key), files.get(TYPE2.key))
            for _, files in sorted(by_stem.items())]
