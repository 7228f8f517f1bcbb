"""Catalog a release folder: thumbnails, metadata.ods, ROI GeoPackages, STAC catalog, item index.

The I/O layer around the pure builders of ``catalog.stac``. Every file is written through a
temporary file (the STAC folder through a temporary folder swapped in at the end), so an
interrupted run leaves the previous catalog intact. The item index (items.parquet +
items.ndjson, at the release root) is written after the catalog is swapped in, so the catalog's
build state (``stac/.build.json``) is completed last: it then records the sha256 of both index
files. A run interrupted in between leaves a state without that record, which the next run
rebuilds and ``search`` refuses. Re-running rebuilds nothing when no product changed, the
settings are the same, every file the last run wrote is still there and the index is the one
written with the catalog, unless forced; it finds so before reading metadata.ods, whose size
and mtime the build state records. A rebuild reads again only the files that changed since the
last run (``catalog.file_facts``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

import numpy as np
import pystac
import rasterio
import yaml
from PIL import Image

import schemas
from catalog.file_facts import FILE_FACTS, FileFacts
from catalog.gpkg import ensure_roi_geopackage
from catalog.ods import (
    OdsRow,
    read_metadata_ods,
    row_from_name,
    rows_by_key,
    write_metadata_ods,
)
from catalog.release import ShelfYearFiles, scan_release, unparsed_files
from catalog.search import (
    BUILD_STATE,
    index_digests,
    read_build_state,
    release_relative,
    write_index,
)
from catalog.stac import (
    COLLECTION_ID,
    CatalogSettings,
    FileRef,
    ItemInputs,
    build_catalog,
    build_collection,
    build_item,
    item_id,
    make_file_links_relative,
)
from catalog.stats import file_stats, reading_raster
from catalog.uncertainty import UncertaintyFactors
from producer.shelves import get_shelf
from producer.spec import (
    AUXILIARY_RASTERS,
    ENCODING,
    ITEMS_NDJSON,
    ITEMS_PARQUET,
    METADATA_ODS,
    RELEASE_METADATA,
    STAC_CATALOG_DIR,
    TYPE1,
    TYPE2,
    ProductName,
    roi_geopackage_name,
    shelf_year_dir,
)
from producer.writer import atomic_path, scan_cache

THUMBNAIL_MAX_SIDE = 512

#: Progress callback: (what is being done, steps done, steps in all).
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class CatalogResult:
    """What a catalog run did."""

    catalog: Path
    items: int
    skipped: bool
    metadata_written: bool
    unknown_items: dict[str, list[str]]
    """Item id -> unknown fields, for items that have any."""
    left_out: tuple[Path, ...] = ()
    """GeoTIFFs in shelf-year folders whose names are not product names (not cataloged)."""
    unpaired: tuple[Path, ...] = ()
    """Type 1 maps cataloged without their type 2 partner."""


def software_version() -> str:
    """The installed icedamage version (processing:software)."""
    try:
        return metadata.version("icedamage")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def release_yaml(release_dir: Path) -> dict:
    """release.yaml at the release root, or {} when there is none.

    Text that is not UTF-8 or not YAML is a ``ValueError`` naming the file and where it
    breaks (the parser's first line), so ``catalog`` prints one line, not a parser traceback.
    """
    path = Path(release_dir) / RELEASE_METADATA
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text (byte {error.object[error.start]:#04x} at "
                         f"offset {error.start}); save it as UTF-8 YAML") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(f"{path}: not valid YAML{where} ({problem})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


# ---------------------------------------------------------------------------------------------
# Thumbnails
# ---------------------------------------------------------------------------------------------


def thumbnail_pixels(path: Path, max_side: int = THUMBNAIL_MAX_SIDE) -> np.ndarray:
    """RGBA quicklook of a type-1 map: classes in their colour hints, nodata transparent (a
    map rasterio cannot read: a ValueError naming it)."""
    with reading_raster(path), rasterio.open(path) as src:
        scale = max(1.0, max(src.width, src.height) / max_side)
        shape = (max(1, round(src.height / scale)), max(1, round(src.width / scale)))
        band = src.read(1, out_shape=shape)  # nearest: overviews and decimation keep classes
    rgba = np.zeros((*band.shape, 4), dtype=np.uint8)
    for cls in TYPE1.classes:
        if cls.nodata:
            continue
        colour = [int(cls.color_hint[i:i + 2], 16) for i in (0, 2, 4)]
        rgba[band == cls.value] = [*colour, 255]
    return rgba


def write_thumbnail(damage_map: Path, target: Path, force: bool = False) -> Path:
    """Write the PNG quicklook of a type-1 map, leaving an existing file that already holds it
    untouched (its mtime counts in the catalog's build state); ``force`` rewrites it."""
    encoded = io.BytesIO()
    Image.fromarray(thumbnail_pixels(damage_map), mode="RGBA").save(encoded, format="PNG")
    if not force and target.is_file() and target.read_bytes() == encoded.getvalue():
        return target
    with atomic_path(target) as tmp:
        tmp.write_bytes(encoded.getvalue())
    return target


# ---------------------------------------------------------------------------------------------
# Collecting the facts of each shelf-year
# ---------------------------------------------------------------------------------------------


def _file_ref(path: Path, facts: FileFacts) -> FileRef:
    return FileRef(path, path.stat().st_size, facts.checksum(path))


def item_inputs(files: ShelfYearFiles, factors: UncertaintyFactors,
                ods_row: OdsRow | None, thumbnail: Path | None,
                facts: FileFacts) -> ItemInputs:
    """Read everything the item builder needs for one shelf-year (files unchanged since the
    last run through what it kept, ``facts``)."""
    if files.damage_map is None:
        raise FileNotFoundError(f"{files.folder / files.name.filename}: the type 1 product is "
                                "missing; statistics and the item need it")
    rasters = {}
    for role, path in ((TYPE1.key, files.damage_map), (TYPE2.key, files.damage),
                       *((role, files.auxiliary.get(role)) for role in AUXILIARY_RASTERS)):
        if path is not None:
            with reading_raster(path):  # a damaged file: one line naming it
                rasters[role] = facts.raster(path)
    refs = {}
    if thumbnail is not None:
        refs["thumbnail"] = _file_ref(thumbnail, facts)
    if "provenance" in files.auxiliary:
        refs["provenance"] = _file_ref(files.auxiliary["provenance"], facts)
    with reading_raster(files.damage_map):
        counts = facts.pixel_counts(files.damage_map)
    stats = file_stats(files.damage_map, files.name.shelf, files.name.year, factors, counts)
    return ItemInputs(files.name, rasters, stats, refs, files.provenance, ods_row)


def current_thumbnail(damage_map: Path, target: Path, facts: FileFacts,
                      force: bool = False) -> Path:
    """The PNG quicklook of a type-1 map, rendered unless the last run made ``target`` from
    this same map and it is untouched since (``force``: rendered and rewritten)."""
    if force or not facts.thumbnail_current(damage_map, target):
        write_thumbnail(damage_map, target, force)
        facts.made_thumbnail(damage_map, target)
    return target


def ods_rows(release_dir: Path, found: list[ShelfYearFiles],
             force: bool = False) -> tuple[list[OdsRow], bool]:
    """The rows metadata.ods should hold, and whether to (re)write the file.

    Rows come from provenance records. A shelf-year without one keeps the row of an existing
    metadata.ods (e.g. the published release's own file), completed from its file name; if
    there is no file either, the row holds only what the file names say. The file is written
    when it is missing or its rows differ from these (a shelf-year added or removed, a
    provenance record changed, an authors' row completed), so an existing file is left
    untouched as long as it already says everything; ``force`` rewrites it only when every row
    comes from provenance (never an authors' file that is up to date).
    """
    path = Path(release_dir) / METADATA_ODS
    current = rows_by_key(read_metadata_ods(path)) if path.exists() else None
    existing = current or {}
    rows, all_provenance = [], True
    for files in found:
        prov = files.provenance
        all_provenance &= prov is not None
        key = (files.name.shelf, files.name.year)
        rows.append(row_from_name(files.name, prov) if prov is not None or key not in existing
                    else completed_row(existing[key], files.name))
    return rows, current != rows_by_key(rows) or (force and all_provenance)


def completed_row(kept: OdsRow, name: ProductName) -> OdsRow:
    """A kept row (an authors' file, which may have only shelf, year and dates) with the facts
    its product's file name gives where the row has none, so that the rewritten file, which
    holds all our columns, does not contradict the products with empty cells."""
    named = row_from_name(name, None)
    return replace(
        kept, damage_map_file=kept.damage_map_file or named.damage_map_file,
        damage_file=kept.damage_file or named.damage_file,
        sensors=kept.sensors or named.sensors,
        restoration=kept.restoration or named.restoration)


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------


#: Raise when the builder writes items differently for the same inputs, so that a catalog
#: built by earlier code is rebuilt rather than kept as "up to date" (the extension schema's
#: text counts too).
CATALOG_FORMAT = 5


def _state_digest(release_dir: Path, found: list[ShelfYearFiles], factors: UncertaintyFactors,
                  settings: CatalogSettings) -> str:
    """Digest of the inputs of a catalog run (file sizes and mtimes, factors, settings, the
    catalog format and our STAC extension schema) and of the files it leaves that an item or
    the collection describes (thumbnails, ROI GeoPackages, which a user may replace): taken
    after a run has written them, so editing any of them makes the catalog out of date."""
    parts = [factors.to_json(), json.dumps([settings.license, settings.software_version,
                                            settings.dataset_version]),
             f"format:{CATALOG_FORMAT}", json.dumps(schemas.load_schema(), sort_keys=True)]
    described: list[Path | None] = []
    for files in found:
        described += [files.damage_map, files.damage, *files.auxiliary.values()]
        if files.damage_map is not None:
            described.append(files.folder / files.name.auxiliary("thumbnail"))
    described += [release_dir / roi_geopackage_name(shelf)
                  for shelf in sorted({f.name.shelf for f in found})]
    for path in dict.fromkeys(described):  # a thumbnail the scan found is listed twice
        if path is not None and path.exists():
            stat = path.stat()
            parts.append(f"{path.relative_to(release_dir)}:{stat.st_size}:{stat.st_mtime_ns}")
    ods = release_dir / METADATA_ODS
    if ods.exists():
        parts.append(f"ods:{ods.stat().st_size}:{ods.stat().st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _umask() -> int:
    """The process's umask (only readable by setting it; set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_build_state(stac_dir: Path, inputs: str | None,
                      index: dict[str, str] | None, stac: str | None = None,
                      software: str | None = None, factors: str | None = None) -> None:
    """Write a catalog folder's build state atomically: the digest of the run's inputs, the
    sha256 of the item index written with the catalog (None: not written yet, so not up to
    date and not to be searched), the digest of the STAC JSON files it was made from, the
    icedamage version that built the catalog (the items name the software that made each
    map, which may be older, or none for the authors' maps) and the uncertainty factors it
    was built with (``UncertaintyFactors.to_json``: what a re-run without --factors keeps)."""
    with atomic_path(Path(stac_dir) / BUILD_STATE) as tmp:
        tmp.write_text(json.dumps({"inputs": inputs, "index": index, "stac": stac,
                                   "software": software, "factors": factors},
                                  sort_keys=True) + "\n")


def built_factors(release_dir: Path) -> UncertaintyFactors | None:
    """The uncertainty factors the release's catalog was last built with, as its build state
    records them; None when it records none (not cataloged, or by an earlier version)."""
    text = (read_build_state(Path(release_dir) / STAC_CATALOG_DIR) or {}).get("factors")
    if not isinstance(text, str):
        return None
    try:
        return UncertaintyFactors.from_json(text, where=f"{release_dir}/stac/{BUILD_STATE}")
    except ValueError:
        return None


def stac_digest(stac_dir: Path) -> str:
    """sha256 over the paths and bytes of a catalog folder's STAC JSON files (not its hidden
    state files), so a truncated or edited item is not taken for an up-to-date catalog."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(stac_dir).rglob("*.json") if not p.name.startswith(".")):
        digest.update(path.relative_to(stac_dir).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def forget_index(stac_dir: Path) -> None:
    """Mark a catalog folder's item index as not yet written (before the index at the release
    root stops matching it), keeping the recorded inputs."""
    saved = read_build_state(stac_dir) or {}
    write_build_state(stac_dir, saved.get("inputs"), None, software=saved.get("software"),
                      factors=saved.get("factors"))


def reindex(release_dir: Path) -> tuple[Path, Path]:
    """Rewrite the item index from the saved catalog, then record its digests in the build
    state (last, so that only a complete index is ever recorded as the catalog's)."""
    release_dir = Path(release_dir)
    stac = release_dir / STAC_CATALOG_DIR
    paths = write_index(release_dir, index_dicts(release_dir, stac / "catalog.json"))
    saved = read_build_state(stac) or {}
    write_build_state(stac, saved.get("inputs"), index_digests(release_dir), stac_digest(stac),
                      saved.get("software"), saved.get("factors"))
    return paths


def save_catalog(root: pystac.Catalog, release_dir: Path, state: str,
                 file_facts: str | None = None, software: str | None = None,
                 factors: str | None = None) -> Path:
    """Save self-contained with relative hrefs into ``<release>/stac``, swapping folders.

    The build state saved with it records the inputs ``state`` but no item index yet: the
    caller completes it with ``reindex`` once the index is written. ``file_facts``: what the
    run read from each file (``catalog.file_facts``), kept with the catalog for the next run.
    """
    final = release_dir / STAC_CATALOG_DIR
    # no dot in the staging name: pystac would take a dotted folder name for a file name
    staging = Path(tempfile.mkdtemp(prefix=f"_{STAC_CATALOG_DIR}_staging_", dir=release_dir))
    try:
        root.normalize_hrefs(str(staging))
        root.make_all_asset_hrefs_relative()
        make_file_links_relative(root)
        root.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
        write_build_state(staging, state, None, software=software, factors=factors)
        if file_facts is not None:
            (staging / FILE_FACTS).write_text(file_facts)
        # mkdtemp makes the folder private (0700); the catalog is to be served as is
        staging.chmod(0o777 & ~_umask())
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f"_{STAC_CATALOG_DIR}_old_", dir=release_dir))
            os.replace(final, old / STAC_CATALOG_DIR)
        os.replace(staging, final)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return final / "catalog.json"


def saved_item_paths(catalog_json: Path) -> list[Path]:
    """The item JSON files of a saved self-contained catalog, in link order: its relative
    ``child`` and ``item`` links followed as files (for 260 items, pystac's resolution of the
    same links into objects took 1.3 s of a 6 s rebuild)."""
    items, todo = [], [Path(catalog_json)]
    while todo:
        path = todo.pop(0)
        for link in json.loads(path.read_text()).get("links", []):
            if link.get("rel") in ("child", "item") and "://" not in link.get("href", "://"):
                target = Path(os.path.normpath(path.parent / link["href"]))
                (todo if link["rel"] == "child" else items).append(target)
    return items


def index_dicts(release_dir: Path, catalog_json: Path) -> list[dict]:
    """Item dicts of the saved catalog with hrefs relative to the release root."""
    return [release_relative(json.loads(path.read_text()), path, release_dir)
            for path in saved_item_paths(catalog_json)]


#: Fields and link relations that the publisher writes into a saved catalog (DOIs, citation,
#: version links); a rebuild keeps them so re-cataloging never loses a published DOI.
PUBLISHER_FIELDS = ("sci:doi", "sci:citation", "sci:publications")
PUBLISHER_RELS = frozenset({"alternate", "cite-as", "doi", "latest-version",
                            "predecessor-version", "related", "successor-version", "via"})
#: Extension schemas that come with those fields (scientific, alternate assets).
PUBLISHER_EXTENSIONS = ("/scientific/", "/alternate-assets/")


def _saved_objects(stac_dir: Path) -> dict[str, dict]:
    """Saved collection and item dicts by id (empty when there is no catalog yet)."""
    saved = {}
    for path in stac_dir.rglob("*.json") if stac_dir.exists() else ():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and data.get("type") in ("Collection", "Feature"):
            saved[f"{data['type']}:{data.get('id')}"] = data
    return saved


def _same_file(old_asset: dict, new_asset: pystac.Asset | None) -> bool:
    """Whether a saved asset and its rebuilt one hold the same file content."""
    return new_asset is not None and old_asset.get("file:checksum") == \
        new_asset.extra_fields.get("file:checksum")


def _carry(target: pystac.Collection | pystac.Item, old: dict) -> None:
    """Copy what the publisher saved into ``old`` onto the rebuilt ``target``, as far as it
    still holds: an asset's Zenodo alternate only while its file is unchanged, an item's DOI,
    citation and record links only while none of its files changed (a re-produced map is not
    the one the record holds)."""
    saved_assets = old.get("assets", {})
    if isinstance(target, pystac.Item) and not all(
            _same_file(asset, target.assets.get(key)) for key, asset in saved_assets.items()
            if "file:checksum" in asset):
        for key, asset in saved_assets.items():
            if "alternate" in asset and _same_file(asset, target.assets.get(key)):
                target.assets[key].extra_fields["alternate"] = asset["alternate"]
        _carry_extensions(target, old, only=("/alternate-assets/",) if any(
            "alternate" in a.extra_fields for a in target.assets.values()) else ())
        return
    fields = old.get("properties", {}) if old.get("type") == "Feature" else old
    where = target.properties if isinstance(target, pystac.Item) else target.extra_fields
    for key in PUBLISHER_FIELDS:
        if key in fields:
            where[key] = fields[key]
    for link in old.get("links", []):
        # only remote links are the publisher's (the catalog's own links are relative paths)
        if link.get("rel") in PUBLISHER_RELS and "://" in link.get("href", ""):
            target.add_link(pystac.Link.from_dict(link))
    for key, asset in saved_assets.items():
        if "alternate" in asset and _same_file(asset, target.assets.get(key)):
            target.assets[key].extra_fields["alternate"] = asset["alternate"]
    _carry_extensions(target, old, PUBLISHER_EXTENSIONS)


def _carry_extensions(target: pystac.Collection | pystac.Item, old: dict,
                      only: tuple[str, ...]) -> None:
    """Add the saved extension schemas matching ``only`` (the publisher's) to ``target``."""
    extensions = [u for u in old.get("stac_extensions", []) if any(part in u for part in only)]
    target.stac_extensions = [*target.stac_extensions,
                              *(u for u in extensions if u not in target.stac_extensions)]


def carry_publisher_fields(stac_dir: Path, collection: pystac.Collection,
                           items: list[pystac.Item]) -> None:
    """Copy DOIs, citations and version links the publisher saved into the rebuilt objects."""
    saved = _saved_objects(stac_dir)
    if f"Collection:{collection.id}" in saved:
        _carry(collection, saved[f"Collection:{collection.id}"])
    for item in items:
        if f"Feature:{item.id}" in saved:
            _carry(item, saved[f"Feature:{item.id}"])


def catalog_outputs(release_dir: Path, found: list[ShelfYearFiles]) -> list[Path]:
    """Every file a catalog run leaves in the release: STAC JSON files, metadata.ods, ROI
    GeoPackages, thumbnails and the item index (what "up to date" requires to exist)."""
    stac = release_dir / STAC_CATALOG_DIR
    outputs = [stac / "catalog.json", stac / COLLECTION_ID / "collection.json",
               release_dir / METADATA_ODS, release_dir / ITEMS_PARQUET,
               release_dir / ITEMS_NDJSON]
    for shelf in sorted({f.name.shelf for f in found}):
        outputs.append(release_dir / roi_geopackage_name(shelf))
    for files in found:
        identifier = item_id(files.name)
        outputs.append(stac / COLLECTION_ID / identifier / f"{identifier}.json")
        if files.damage_map is not None:
            outputs.append(files.folder / files.name.auxiliary("thumbnail"))
    return outputs


def _up_to_date(release_dir: Path, found: list[ShelfYearFiles], state: str) -> bool:
    """Whether the last run had these inputs, finished (its build state records the item
    index it wrote, and that index is still the one there) and every file it wrote is still
    there, its STAC JSON files as it left them."""
    saved = read_build_state(release_dir / STAC_CATALOG_DIR)
    if not saved or saved.get("inputs") != state or not isinstance(saved.get("index"), dict):
        return False
    if not all(p.exists() for p in catalog_outputs(release_dir, found)):
        return False
    return (saved["index"] == index_digests(release_dir)
            and saved.get("stac") == stac_digest(release_dir / STAC_CATALOG_DIR))


def catalog_release(release_dir: Path, factors: UncertaintyFactors,
                    license: str | None = None, force: bool = False,
                    progress: Progress | None = None) -> CatalogResult:
    """Build every catalog file of a release; see the module docstring."""
    release_dir = Path(release_dir).resolve()
    report = progress or (lambda _text, _done, _total: None)
    done = 0

    def step(text: str) -> None:
        nonlocal done
        report(text, done, total)
        done += 1

    found = scan_release(release_dir)
    if not found:
        raise FileNotFoundError(f"{release_dir}: no product files under <Shelf>/<YYYY>/")
    seen: dict[tuple[str, int], Path] = {}
    for files in found:
        get_shelf(files.name.shelf)  # an unregistered shelf is an error naming the valid ones
        where = files.folder.relative_to(release_dir)
        if where != shelf_year_dir(files.name.shelf, files.name.year):
            # e.g. totten/2016 on a case-sensitive disk: provenance and ROI would not be found
            raise ValueError(f"{files.folder}: the products of {files.name.shelf} "
                             f"{files.name.year} belong in "
                             f"{shelf_year_dir(files.name.shelf, files.name.year)}, not {where}; "
                             "move the folder")
        key = (files.name.shelf, files.name.year)
        product = files.damage_map or files.damage
        if key in seen:
            raise ValueError(f"{product} and {seen[key]}: two products for {key[0]} {key[1]}; "
                             "a shelf-year has exactly one map (one STAC item)")
        seen[key] = product
    meta = release_yaml(release_dir)
    chosen_license = license or meta.get("license") or CatalogSettings.license
    if not re.fullmatch(r"[\w\-.+]+", str(chosen_license)):
        raise ValueError(f"license {chosen_license!r} is not an SPDX identifier "
                         "(e.g. CC-BY-4.0); STAC 1.1 requires one, or 'other'")
    settings = CatalogSettings(license=str(chosen_license),
                               software_version=software_version(),
                               dataset_version=str(meta["version"]) if meta.get("version")
                               else None)
    shelves = sorted({f.name.shelf for f in found})
    total = len(found) + len(shelves) + 3
    catalog_json = release_dir / STAC_CATALOG_DIR / "catalog.json"
    if not force and _up_to_date(release_dir, found,
                                 _state_digest(release_dir, found, factors, settings)):
        # Decided before metadata.ods is read (pandas' odf reader: 1.4 s of a 1.65 s re-run at
        # 260 rows). Safe: the last run left metadata.ods holding the rows these inputs give
        # (it writes the file whenever its rows differ, then records the state), and the
        # state covers everything those rows come from: the product file names, the
        # provenance records' and metadata.ods's own size and mtime.
        step(f"{METADATA_ODS} is up to date")
        return CatalogResult(catalog_json, len(found), True, False, {},
                             *_left_out(release_dir, found))
    rows, write_ods = ods_rows(release_dir, found, force)
    ods_path = release_dir / METADATA_ODS
    row_of = rows_by_key(rows)
    facts = FileFacts.load(release_dir / STAC_CATALOG_DIR, release_dir,
                           settings.software_version, fresh=force)
    items = []
    # each raster is read once (pixel counts, thumbnail): GDAL's default cache would only
    # keep its decoded tiles (``scan_cache``); the cap is restored on leaving
    with scan_cache():
        for files in found:
            step(f"{files.name.shelf} {files.name.year}")
            thumb = None
            if files.damage_map is not None:
                thumb = current_thumbnail(files.damage_map,
                                          files.folder / files.name.auxiliary("thumbnail"),
                                          facts, force)
            inputs = item_inputs(files, factors,
                                 row_of.get((files.name.shelf, files.name.year)), thumb, facts)
            items.append(build_item(inputs, settings))
    release_files = {}
    for shelf in shelves:
        step(f"ROI GeoPackage of {shelf}")
        ensure_roi_geopackage(release_dir, shelf)
        release_files[f"roi-{get_shelf(shelf).slug}"] = _file_ref(
            release_dir / roi_geopackage_name(shelf), facts)
    # written once every map has been read: a run that fails on a map leaves it as it was
    step(f"writing {METADATA_ODS}" if write_ods else f"{METADATA_ODS} is up to date")
    if write_ods:
        write_metadata_ods(ods_path, rows)
    if ods_path.exists():
        release_files = {"metadata": _file_ref(ods_path, facts), **release_files}
    collection = build_collection(items, settings, release_files)
    carry_publisher_fields(release_dir / STAC_CATALOG_DIR, collection, items)
    catalog = build_catalog(collection, items)
    step("saving the STAC catalog")
    state = _state_digest(release_dir, found, factors, settings)  # with what it wrote above
    catalog_json = save_catalog(catalog, release_dir, state, facts.to_json(),
                                settings.software_version, factors.to_json())
    step("writing the item index")
    reindex(release_dir)
    report("done", total, total)
    unknown = {i.id: i.properties["icedamage:unknown"] for i in items
               if i.properties["icedamage:unknown"]}
    return CatalogResult(catalog_json, len(items), False, write_ods, unknown,
                         *_left_out(release_dir, found))


def _left_out(release_dir: Path, found: list[ShelfYearFiles]
              ) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    """(GeoTIFFs not cataloged as their names are no product names, type 1 maps without their
    type 2): what the command warns about, as ``validate`` would refuse the release."""
    return (tuple(unparsed_files(release_dir, found)),
            tuple(f.damage_map for f in found if f.damage is None and f.damage_map is not None))


__all__ = ["ENCODING", "CatalogResult", "catalog_release", "thumbnail_pixels", "write_thumbnail"]
