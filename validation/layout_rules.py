"""Layout rules: folders, file names, pairs and stray files of a release (section 4 of the paper).

A release holds ``<Shelf>/<YYYY>/`` folders with registered shelf names and four-digit years;
each year folder holds exactly the two product files of one shelf-year, named for that folder's
shelf and year and agreeing on sensors and restoration token, plus auxiliary files sharing
their stem. The root may hold the catalog and publish files named in the spec (an ROI
GeoPackage only for a registered shelf) and whatever the user allows with globs. Everything
else is reported.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from producer.shelves import SHELVES
from producer.spec import (
    AUXILIARY_SUFFIXES,
    ROI_GEOPACKAGE_SUFFIX,
    SENSOR_ORDER,
    TYPE1,
    TYPE2,
    restoration_token,
)
from validation.inventory import (
    ROOT_DIRS,
    ROOT_FILE_GLOBS,
    Entry,
    Inventory,
    ProductFile,
    YearFolder,
    auxiliary_stem,
    pairs_of,
    scan_release,
)
from validation.report import Problem

UNREGISTERED_SHELF = "layout-unregistered-shelf"
STRAY_FILE = "layout-stray-file"
STRAY_FOLDER = "layout-stray-folder"
YEAR_FOLDER = "layout-year-folder"
EMPTY_FOLDER = "layout-empty-folder"
NAME_SYNTAX = "layout-name-syntax"
SHELF_MISMATCH = "layout-shelf-mismatch"
YEAR_MISMATCH = "layout-year-mismatch"
PARTNER_MISSING = "layout-partner-missing"
PAIR_SENSORS = "layout-pair-sensors"
PAIR_RESTORATION = "layout-pair-restoration"
PAIR_NAME = "layout-pair-name"
MULTIPLE_PRODUCTS = "layout-multiple-products"
BROKEN_LINK = "layout-broken-link"
NO_PRODUCTS = "layout-no-products"
UNUSED_ROI = "layout-unused-roi"

_SHELF_LIST = ", ".join(repr(n) for n in SHELVES)
_ROOT_ALLOWED = ", ".join([*ROOT_FILE_GLOBS, *(f"{d}/" for d in ROOT_DIRS)])


def _stray(rel: str, is_dir: bool, expected: str) -> Problem:
    kind, rule = ("folder", STRAY_FOLDER) if is_dir else ("file", STRAY_FILE)
    return Problem(rel, rule, f"unexpected {kind}", expected)


def _broken(entry: Entry) -> Problem:
    """A symbolic link that does not resolve: nothing behind it can be checked or published."""
    return Problem(entry.rel, BROKEN_LINK, f"symbolic link that does not resolve "
                   f"({entry.broken})", "a file or folder, or a link to an existing one")


def _unexpected(entry: Entry, expected: str) -> Problem:
    """A broken link, else a stray file or folder."""
    return _broken(entry) if entry.broken else _stray(entry.rel, entry.is_dir, expected)


def release_problems(inventory: Inventory) -> Iterator[Problem]:
    """A release without a single product file (an empty folder, a wrong path) never passes."""
    if not inventory.products:
        yield Problem(".", NO_PRODUCTS, "no product files in any <Shelf>/<YYYY>/ folder",
                      f"at least one shelf-year (*{TYPE1.suffix} and *{TYPE2.suffix})")


def root_problems(inventory: Inventory) -> Iterator[Problem]:
    """Root entries that are neither shelf folders nor allowed files, and unregistered shelves."""
    for entry in inventory.root_others:
        yield _unexpected(entry, f"only <Shelf>/ folders and {_ROOT_ALLOWED} at the release root")
    for shelf in inventory.shelf_dirs:
        if shelf not in SHELVES:
            yield Problem(shelf, UNREGISTERED_SHELF, f"shelf folder {shelf!r}",
                          f"a registered shelf: {_SHELF_LIST}")
    for entry in inventory.shelf_others:
        if entry.broken:
            yield _broken(entry)
        elif entry.is_dir:
            yield Problem(entry.rel, YEAR_FOLDER, f"folder {entry.rel.rsplit('/', 1)[1]!r}",
                          "a four-digit year folder <YYYY>")
        else:
            yield _stray(entry.rel, False, "only <YYYY>/ folders inside a shelf folder")
    for shelf in inventory.shelf_dirs:
        if not any(y.shelf == shelf for y in inventory.years) and not any(
                e.rel.startswith(f"{shelf}/") for e in inventory.shelf_others):
            yield Problem(shelf, EMPTY_FOLDER, "empty shelf folder", "at least one <YYYY>/ folder",
                          severity="warning")


def roi_problems(inventory: Inventory) -> Iterator[Problem]:
    """Root ROI GeoPackages that name no registered shelf (strays: the catalog writes one per
    registered shelf, ``<Shelf>_ROI.gpkg`` with the released spelling), and, as a warning,
    those of a registered shelf that has no products in the release (an ROI of another
    release, or products left out; a misnamed product counts as one, it is reported itself)."""
    with_products = {folder.shelf for folder in inventory.years
                     if folder.products or folder.misnamed}
    for rel in inventory.roi_files:
        shelf = rel[: -len(ROI_GEOPACKAGE_SUFFIX)]
        if shelf not in SHELVES:
            yield Problem(rel, STRAY_FILE, f"ROI GeoPackage of {shelf!r}, not a registered shelf",
                          f"<Shelf>{ROI_GEOPACKAGE_SUFFIX} of a registered shelf: {_SHELF_LIST}")
        elif shelf not in with_products:
            yield Problem(rel, UNUSED_ROI, f"ROI GeoPackage of {shelf!r}, which has no products "
                          "in this release",
                          f"<Shelf>{ROI_GEOPACKAGE_SUFFIX} only for shelves the release holds",
                          severity="warning")


def name_problems(folder: YearFolder) -> Iterator[Problem]:
    """Product names that do not parse, or that name another shelf or year than their folder."""
    for rel, why in folder.misnamed:
        yield Problem(rel, NAME_SYNTAX, why, "a product name of the spec")
    for product in folder.products:
        if product.name.shelf != folder.shelf:
            yield Problem(product.rel, SHELF_MISMATCH, f"shelf {product.name.shelf!r} in the name",
                          f"{folder.shelf!r}, the shelf folder holding it")
        if f"{product.name.year:04d}" != folder.year:
            yield Problem(product.rel, YEAR_MISMATCH, f"year {product.name.year} in the name",
                          f"{folder.year}, the year folder holding it")


def _describe(product: ProductFile) -> tuple[str, str]:
    """(sensors, restoration token) of a product as written in its name."""
    token = restoration_token(product.name.restoration) or "no restoration token"
    return "_".join(product.name.sensors), token


def _mismatch(type1: ProductFile, type2: ProductFile) -> Iterator[Problem]:
    """How the only type 1 and the only type 2 file of a folder disagree."""
    (s1, r1), (s2, r2) = _describe(type1), _describe(type2)
    partner = type2.rel.rsplit("/", 1)[1]
    if s1 != s2:
        yield Problem(type1.rel, PAIR_SENSORS, f"sensors {s1} here, {s2} in {partner}",
                      f"the same sensors in both product types (order {'_'.join(SENSOR_ORDER)})")
    if r1 != r2:
        yield Problem(type1.rel, PAIR_RESTORATION, f"{r1} here, {r2} in {partner}",
                      "the same restoration token in both product types")
    if s1 == s2 and r1 == r2:
        yield Problem(type1.rel, PAIR_NAME, f"partner named {partner}",
                      f"{type1.name.partner().filename}")


def pair_problems(folder: YearFolder) -> Iterator[Problem]:
    """Missing or disagreeing partners, and more than one shelf-year product in a folder."""
    pairs = pairs_of(folder)
    singles1 = [p.damage_map for p in pairs if p.damage is None and p.damage_map is not None]
    singles2 = [p.damage for p in pairs if p.damage_map is None and p.damage is not None]
    if len(singles1) == 1 and len(singles2) == 1:
        yield from _mismatch(singles1[0], singles2[0])
    else:
        for single in (*singles1, *singles2):
            other = TYPE2 if single.name.product_type is TYPE1 else TYPE1
            yield Problem(single.rel, PARTNER_MISSING,
                          f"no type {other.number} file {single.name.partner().filename}",
                          "both product types for each shelf-year")
    if not folder.products and not folder.misnamed:
        yield Problem(folder.rel, EMPTY_FOLDER, "no product files",
                      f"one *{TYPE1.suffix} and one *{TYPE2.suffix}", severity="warning")
    stems = sorted({p.name.stem for p in folder.products})
    if len(stems) > 1 and not (len(singles1) == 1 and len(singles2) == 1 and len(pairs) == 2):
        yield Problem(folder.rel, MULTIPLE_PRODUCTS, f"{len(stems)} products: {', '.join(stems)}",
                      "the two files of one product per shelf-year folder")


def other_problems(folder: YearFolder) -> Iterator[Problem]:
    """Sub-folders and files that are neither products nor auxiliary files of a product."""
    stems = {p.name.stem for p in folder.products}
    suffixes = ", ".join(AUXILIARY_SUFFIXES.values())
    for entry in folder.others:
        filename = entry.rel.rsplit("/", 1)[1]
        if entry.broken:
            yield _broken(entry)
        elif entry.is_dir:
            yield _stray(entry.rel, True, "no folders inside a year folder")
        elif auxiliary_stem(filename) not in stems:
            yield _stray(entry.rel, False,
                         f"only the two products and auxiliary files <product stem>{{{suffixes}}}")


@dataclass(frozen=True)
class LayoutRules:
    """Folder layout, names, pairs and stray files."""

    allow: tuple[str, ...] = ()
    name: str = "layout"

    def check(self, release_dir: Path) -> Iterator[Problem]:
        """Every layout problem of the release."""
        inventory = scan_release(Path(release_dir), self.allow)
        yield from release_problems(inventory)
        yield from root_problems(inventory)
        yield from roi_problems(inventory)
        for folder in inventory.years:
            yield from name_problems(folder)
            yield from pair_problems(folder)
            yield from other_problems(folder)


def layout_rules(allow: Sequence[str] = ()) -> LayoutRules:
    """The layout rule set with the user's extra allow-list globs."""
    return LayoutRules(tuple(allow))
